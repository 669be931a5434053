"""The OpenAI-compatible embeddings request (docs/api/embeddings.md), with its bounds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from greenroom.errors import InvalidRequestError

MAX_TOKEN_ID = 2**31 - 1  # above any vocabulary; the model's own bound is checked when routed
MAX_DIMENSIONS = 65536
MAX_MODEL_CHARS = 256
MAX_USER_CHARS = 256

# strict: JSON integers only (no 1.0, no true)
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID, strict=True)]
EmbeddingInput = str | list[str] | list[TokenId] | list[list[TokenId]]

# What each bounded field must be, said the same way whichever bound it broke.
FIELD_RULES = {
    "model": f"it must be a string of 1 to {MAX_MODEL_CHARS} characters",
    "dimensions": f"it must be a positive integer of at most {MAX_DIMENSIONS}",
    "user": f"it must be a string of at most {MAX_USER_CHARS} characters",
}
TOKEN_ID_RULE = f"token ids must be integers from 0 to {MAX_TOKEN_ID}"
INPUT_RULE = (
    "it must be a string, a list of strings, a list of token ids or a list of token-id lists "
    f"({TOKEN_ID_RULE})"
)
CONSTRAINT_ERRORS = frozenset({"greater_than_equal", "less_than_equal"})


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=MAX_DIMENSIONS)
    user: str | None = Field(default=None, max_length=MAX_USER_CHARS)

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
    return request


def _first_problem(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    error = _most_telling(errors)
    if error["type"] == "json_invalid":
        return f"The request body is not valid JSON: {error['msg']}."
    where = str(error["loc"][0]) if error["loc"] else "body"
    if where in FIELD_RULES and error["type"] != "missing":
        return f"Invalid '{where}': {FIELD_RULES[where]}."
    if where == "input" and error["type"] in CONSTRAINT_ERRORS:
        return f"Invalid 'input': {TOKEN_ID_RULE}."
    if where == "input" and error["type"] != "value_error":
        return f"Invalid 'input': {INPUT_RULE}."
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"Invalid '{where}': {message}."


def _most_telling(errors: list[Any]) -> Any:
    """The error to report: a broken bound before a type mismatch. `input` is a union, so
    pydantic reports one error per shape it tried; the bound says what is really wrong."""
    return next((e for e in errors if e["type"] in CONSTRAINT_ERRORS), errors[0])


# ----- GET /v1/traffic (docs/api/traffic.md) ----------------------------------------------------


class TrafficPointRead(BaseModel):
    """One 10-s bucket of one (served name, revision), summed over every API process."""

    t: int = Field(description="the bucket's start, epoch seconds (a multiple of resolution_s)")
    requests: int = Field(description="requests answered in the bucket, errors included")
    errors: int = Field(description="requests not answered 200")
    inputs: int = Field(description="inputs embedded by the answered requests")
    latency_counts: list[int] = Field(
        description="answered requests per latency bucket: one per bound of latency_bounds_ms "
        "(at most that many ms, above the previous one), then one above the last bound"
    )
    latency_sum_ms: float = Field(description="the sum of the answered requests' latencies")
    p50_ms: float | None = Field(
        description="median latency estimated from latency_counts; null with no answers"
    )
    p99_ms: float | None = Field(
        description="99th percentile estimated from latency_counts; null with no answers"
    )
    batch_counts: list[int] = Field(
        description="batches per size bucket of batch_size_bounds, then one above the last bound"
    )
    batches: int = Field(description="batches sent to the revision's replicas")
    queue_depth_max: int = Field(description="the most inputs seen waiting in the queue")


class TrafficSeriesRead(BaseModel):
    served_name: str
    revision_id: str
    points: list[TrafficPointRead] = Field(
        description="ascending by t; only buckets with something in them"
    )


class TrafficRead(BaseModel):
    """The traffic of the last `window_s` seconds, per served name and revision."""

    resolution_s: int = Field(description="the length of a bucket in seconds (10)")
    window_s: int
    now: float = Field(description="the server's time of the answer, epoch seconds")
    processes: int = Field(description="API processes whose traffic is in the answer")
    latency_bounds_ms: list[int]
    batch_size_bounds: list[int]
    series: list[TrafficSeriesRead]
