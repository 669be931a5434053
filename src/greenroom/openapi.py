"""The error answers of every operation in the OpenAPI document, in its API family's shape.

Views declare the errors that are theirs (`responses={409: {"description": ...}}`); what every
operation of a kind answers is added here, from the same rules that produce those answers: 401
and 403 on an authenticated route (`auth.policy`, enforced by `edge.EdgeMiddleware`); 413 (the
body limit) and 400 (a body that cannot be decoded) on an operation that takes a body; 404 on
one with path parameters; and the validation error of its family (422 on the `detail` family,
400 elsewhere: `app.py` renders validation errors so). Every error gets its family's body
schema, so response-schema checks (schemathesis, `tests/security/test_api_fuzz.py`) hold for
every answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel

from greenroom.auth.policy import required_scope

ErrorFamily = Literal["openai", "workloads", "detail"]
DESCRIPTIONS = {
    400: "The request is invalid",
    401: "No valid token",
    403: "The token lacks the scope",
    404: "Not found",
    409: "Conflict with the current state",
    413: "The request body is over its limit",
    422: "The request is invalid",
    429: "Overloaded: retry after `Retry-After` seconds",
    500: "Internal error; the server log has the details",
    503: "Nothing can serve the request now",
}


class DetailError(BaseModel):
    """`{"detail": "..."}`: the control-plane APIs' error."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class DetailValidationError(BaseModel):
    """FastAPI's validation error `{"detail": [{loc, msg, type}, ...]}`, or one sentence."""

    detail: list[ValidationIssue] | str


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error envelope (`/v1/embeddings`, `/v1/models`)."""

    error: OpenAIErrorBody


class WorkloadsError(BaseModel):
    """The workloads API's error."""

    code: int
    message: str
    details: str | None = None


FAMILY_MODELS: dict[ErrorFamily, type[BaseModel]] = {
    "openai": OpenAIError,
    "workloads": WorkloadsError,
    "detail": DetailError,
}
MODELS = (*FAMILY_MODELS.values(), DetailValidationError)


def document_errors(app: FastAPI, family_of: Callable[[str], ErrorFamily]) -> None:
    """Make `app.openapi()` list every operation's error answers; `family_of(path)` names the
    family of a path."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in MODELS:
                schemas.update(_schemas(model))
            for path, operations in document.get("paths", {}).items():
                for method, operation in operations.items():
                    _document_operation(method.upper(), path, operation, family_of(path))
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def error_codes(method: str, path: str, operation: dict[str, Any], family: ErrorFamily) -> set[int]:
    """The error codes an operation answers: its own declared ones and those of its kind."""
    responses = operation.get("responses", {})
    codes = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
    codes.discard(422)  # FastAPI adds it to every validated route; re-added below for its family
    parameters = operation.get("parameters", [])
    has_body = "requestBody" in operation
    if required_scope(method, path) is not None:
        codes |= {401, 403}
    if has_body:  # over the limit; or not decodable at all (FastAPI's 400 in every family)
        codes |= {400, 413}
    if any(parameter.get("in") == "path" for parameter in parameters):
        codes.add(404)
    if has_body or parameters or "422" in responses:
        codes.add(422 if family == "detail" else 400)
    return codes


def _document_operation(
    method: str, path: str, operation: dict[str, Any], family: ErrorFamily
) -> None:
    responses = operation.setdefault("responses", {})
    codes = error_codes(method, path, operation, family)
    responses.pop("422", None)
    for code in sorted(codes):
        model = DetailValidationError if family == "detail" and code == 422 else None
        model = model or FAMILY_MODELS[family]
        entry = responses.setdefault(str(code), {})
        entry.setdefault("description", DESCRIPTIONS.get(code, "Error"))
        ref = {"$ref": f"#/components/schemas/{model.__name__}"}
        entry["content"] = {"application/json": {"schema": ref}}


def _schemas(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema and those it refers to, for `components/schemas`."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    return {model.__name__: schema, **definitions}
