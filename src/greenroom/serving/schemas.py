"""The OpenAI-compatible embeddings request (api/embeddings.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from greenroom.errors import InvalidRequestError

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def refuse_empty(cls, value: EmbeddingInput) -> EmbeddingInput:
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            if not value:
                raise ValueError("input must not be empty")
            return value
        if not value:
            raise ValueError("input must not be an empty list")
        if any(len(item) == 0 for item in value):  # type: ignore[arg-type]
            raise ValueError("input must not contain empty strings or empty token lists")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """The input as a list of items: a string or one token list becomes one item."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if isinstance(value[0], int):
            return [value]  # type: ignore[list-item]
        return value  # type: ignore[return-value]


def parse_embedding_request(body: bytes, *, max_items: int) -> EmbeddingRequest:
    try:
        request = EmbeddingRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequestError(_first_problem(exc)) from exc
    count = len(request.inputs())
    if count > max_items:
        raise InvalidRequestError(f"input has {count} items; at most {max_items} are allowed.")
    if request.dimensions is not None and request.dimensions < 1:
        raise InvalidRequestError("dimensions must be a positive integer.")
    return request


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    if error["type"] == "json_invalid":
        return f"The request body is not valid JSON: {error['msg']}."
    where = where.split(".")[0] if where else "body"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"Invalid '{where}': {message}."
