"""`POST /v1/embeddings` and `GET /v1/models`, OpenAI compatible, errors in OpenAI's envelope;
`GET /v1/traffic` (docs/api/traffic.md), errors in `{"detail": ...}` as the control plane's.

An embedding request is counted twice in the same place: in the Prometheus metrics, and in the
router's traffic recorder under the same plain served name and the revision that served it
(`ServedBy`); names that do not exist are counted in neither traffic series.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from greenroom.auth.deps import CurrentPrincipal
from greenroom.auth.service import Principal
from greenroom.deps import DbSession
from greenroom.edge import EMBEDDINGS_PATH
from greenroom.errors import INTERNAL_ERROR, GreenroomError, ModelNotFoundError
from greenroom.metrics import Metrics
from greenroom.serving import traffic
from greenroom.serving.items import EmbeddingResult
from greenroom.serving.router import RevisionRoute, Router, ServedBy
from greenroom.serving.schemas import EmbeddingRequest, TrafficRead, parse_embedding_request

api_router = APIRouter()
log = logging.getLogger("greenroom.serving")

OPENAI_PATH_PREFIXES = ("/v1/embeddings", "/v1/models")
EMBEDDING_SPACE_HEADER = "x-embedding-space"
CACHE_HEADER = "x-cache"  # `<inputs answered from the cache>/<inputs>`, on every 200
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_OPENAI_CODES = {401: "invalid_api_key"}


# async: FastAPI runs plain `def` dependencies in its threadpool, a hop per request
async def get_router(request: Request) -> Router:
    return request.app.state.router


RouterDep = Annotated[Router, Depends(get_router)]


@api_router.post(
    "/v1/embeddings",
    tags=["embeddings"],
    responses={
        404: {"description": "No live deployment serves the model"},
        429: {"description": "The model's queue, or the caller's share of it, is full"},
        503: {"description": "No ready replica right now"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
        }
    },
)
async def create_embeddings(request: Request, principal: CurrentPrincipal) -> Response:
    """Embed strings or token-id lists with the live revision of a served name."""
    return await answer_embeddings(request, principal)


async def embeddings_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /v1/embeddings` as a plain ASGI app, which the edge calls once it has authenticated
    the request and checked its scope (`EdgeMiddleware`'s `shortcuts`): FastAPI's routing,
    dependencies and exception layers cost about a fifth of the API process's CPU on a
    single-sentence request. Errors are answered here, in OpenAI's envelope as the app's
    handlers answer them; a body over its limit is the edge's to answer."""
    try:
        response = await answer_embeddings(Request(scope, receive), scope["state"]["principal"])
    except GreenroomError as exc:
        response = openai_error_of(exc)
    except StarletteHTTPException:
        raise  # the edge's 413
    except Exception:
        log.exception("unhandled error on %s", EMBEDDINGS_PATH)
        response = openai_error(500, INTERNAL_ERROR)
    await response(scope, receive, send)


async def answer_embeddings(request: Request, principal: Principal) -> Response:
    state = request.app.state
    router: Router = state.router
    metrics: Metrics = state.metrics
    started = time.perf_counter()
    label = "unknown"
    served_by = ServedBy()
    try:
        # the body limit was enforced while it streamed in (greenroom.edge)
        body = await request.body()
        payload = parse_embedding_request(body, max_items=state.settings.max_input_items)
        # a pinned name counts under its served name: label sets never grow with revision ids
        label = payload.model.partition("@")[0]
        result = await router.embed(
            payload.model,
            payload.inputs(),
            dimensions=payload.dimensions,
            principal=principal.id,
            served_by=served_by,
        )
    except GreenroomError as exc:
        if isinstance(exc, ModelNotFoundError):
            label = "unknown"  # unknown names must not grow label sets
        metrics.requests.labels(label, str(exc.status_code)).inc()
        _record_failure(router, label, served_by, exc.status_code)
        raise
    except Exception:  # answered 500: an error of the traffic too
        _record_failure(router, label, served_by, 500)
        raise
    latency_s = time.perf_counter() - started
    return Response(
        content=render_embeddings(payload, result),
        media_type="application/json",
        headers={
            EMBEDDING_SPACE_HEADER: result.embedding_space,
            CACHE_HEADER: f"{result.cached}/{len(result.vectors)}",
        },
        # counted once the response is sent: off the request's latency
        background=BackgroundTask(
            _count_success, router, metrics, label, served_by, result, latency_s
        ),
    )


# async: Starlette runs a plain function's background task in its threadpool, a hop per request
async def _count_success(
    router: Router,
    metrics: Metrics,
    label: str,
    served_by: ServedBy,
    result: EmbeddingResult,
    latency_s: float,
) -> None:
    metrics.requests.labels(label, "200").inc()
    metrics.inputs.labels(label).inc(len(result.vectors))
    metrics.tokens.labels(label).inc(result.prompt_tokens)
    metrics.request_duration.labels(label).observe(latency_s)
    if served_by.revision_id is not None:
        router.traffic.request(
            label,
            served_by.revision_id,
            status=200,
            inputs=len(result.vectors),
            latency_s=latency_s,
        )


def _record_failure(router: Router, label: str, served_by: ServedBy, status: int) -> None:
    """A request that reached a revision and failed; one that reached none (an unknown name, a
    body that does not parse) belongs to no traffic series."""
    if label != "unknown" and served_by.revision_id is not None:
        router.traffic.request(label, served_by.revision_id, status=status)


@api_router.get("/v1/models", tags=["embeddings"])
async def list_models(router: RouterDep, pinned: bool = False) -> JSONResponse:
    """The served names that are live now; with `pinned=true` also the pinned names that answer
    now (`name@live`, `name@<live revision id>`, and while a revision is staged and ready
    `name@staged`, `name@<staged revision id>`)."""
    routes = sorted(router.live_routes().items())
    if pinned:
        routes += list(router.pinned_routes().items())
    data = [
        {"id": name, "object": "model", "created": _created(route), "owned_by": "greenroom"}
        for name, route in routes
    ]
    return JSONResponse({"object": "list", "data": data})


@api_router.get("/v1/traffic", tags=["traffic"], response_model=TrafficRead)
def get_traffic(
    db_session: DbSession,
    served_name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=traffic.MAX_SERVED_NAME_CHARS,
            description="only this served name's series (as on /v1/embeddings, without @)",
        ),
    ] = None,
    window_s: Annotated[
        int,
        Query(
            ge=traffic.WINDOW_MIN_S,
            le=traffic.WINDOW_MAX_S,
            description="how many seconds back, up to the last hour",
        ),
    ] = traffic.HISTORY_S,
) -> TrafficRead:
    """Requests, errors, latency and batch-size histograms and queue depth per served name and
    revision, in 10-s buckets, merged over every API process (docs/api/traffic.md)."""
    return traffic.traffic_history(db_session, window_s=window_s, served_name=served_name)


def _created(route: RevisionRoute) -> int:
    return int(route.live_since or route.added_at)


def render_embeddings(request: EmbeddingRequest, result: EmbeddingResult) -> bytes:
    if request.encoding_format == "base64":
        vectors: list[object] = [
            base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode()
            for vector in result.vectors
        ]
    else:
        vectors = list(result.vectors)
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector}
                for i, vector in enumerate(vectors)
            ],
            "model": request.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PATH_PREFIXES)


def openai_error_of(exc: GreenroomError) -> JSONResponse:
    """A GreenroomError in OpenAI's envelope: an unknown model is `model_not_found` on `model`."""
    code = "model_not_found" if isinstance(exc, ModelNotFoundError) else None
    param = "model" if code else None
    return openai_error(exc.status_code, exc.message, code=code, param=param, headers=exc.headers)


def openai_error(
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    error_type = _OPENAI_TYPES.get(status_code, "server_error")
    code = code or _OPENAI_CODES.get(status_code)
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}},
        status_code=status_code,
        headers=headers,
    )
