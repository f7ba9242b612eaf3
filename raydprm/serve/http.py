"""The reward service's HTTP surface as a plain FastAPI app (no Ray).

Routes:

- ``POST /score``  ``{"items": [{"prompt", "response"}, ...]}`` -> per item the label
  distribution keyed by label name, the expected reward, the configured scalar reward
  and the entropy.
- ``POST /votes``  ``{"votes": [{"prompt", "response", "label", "persona"?, "vote_id"?}]}``
  with ``Authorization: Bearer <token>``; 401 without a valid token, 503 when no token
  is configured (ingestion is then off).
- ``GET /healthz``, ``GET /labels``.

The app is built around two async callables so that the same routes run in-process
(tests, ``TestClient``) and inside the Ray Serve deployment (``app.py``), where scoring
goes through ``serve.batch`` and votes through the store actor.

Bad requests never reach the model: malformed JSON -> 400, validation errors -> 422,
each with ``{"error": "<field>: <problem>", "errors": [{"field", "message"}]}``.
"""

import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from raydprm.errors import RaydprmError
from raydprm.serve.schemas import HealthResponse, LabelsResponse, Schemas, ScoreResponse, VotesResponse

__all__ = ["build_http_app", "field_name", "check_bearer"]

ScoreFn = Callable[[list[tuple[str, str]]], Awaitable[list[dict[str, Any]]]]
VotesFn = Callable[[list[Any]], Awaitable[dict[str, int]]]


def field_name(loc: Sequence[Any]) -> str:
    """('body', 'items', 0, 'prompt') -> 'items[0].prompt'; ('body',) -> 'body'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "header", "path") and len(parts) > 1:
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def check_bearer(header: str | None, token: str) -> bool:
    """True if ``header`` is ``Bearer <token>`` (constant-time compare)."""
    if not header or not token:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _error(status: int, errors: list[dict[str, str]], headers: dict[str, str] | None = None) -> JSONResponse:
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    if len(errors) > 5:
        summary += f"; ... ({len(errors)} problems)"
    return JSONResponse(status_code=status, content={"error": summary, "errors": errors}, headers=headers)


def build_http_app(schemas: Schemas, label_names: Sequence[str], rewards: Sequence[float], scalar: str,
                   model_name: str, score_fn: ScoreFn, votes_fn: VotesFn | None, token: str) -> FastAPI:
    """The FastAPI app. ``score_fn`` maps [(prompt, response)] to per-item result dicts;
    ``votes_fn`` ingests validated votes (None: the store is not attached -> 503)."""
    app = FastAPI(title="raydprm reward service", version="1")
    ScoreRequest, VotesRequest = schemas.ScoreRequest, schemas.VotesRequest

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        bad_json = [e for e in errs if e.get("type") == "json_invalid"]
        if bad_json:
            ctx = bad_json[0].get("ctx") or {}
            msg = f"malformed JSON body ({ctx.get('error', bad_json[0].get('msg'))})"
            return _error(400, [{"field": "body", "message": msg}])
        out = []
        for e in errs:
            loc = tuple(e.get("loc", ()))
            msg = str(e.get("msg", "invalid"))
            if e.get("type") == "missing" and loc == ("body",):
                msg = "a JSON object body is required"
            out.append({"field": field_name(loc), "message": msg})
        return _error(422, out)

    @app.exception_handler(RaydprmError)
    async def _user_error(request: Request, exc: RaydprmError) -> JSONResponse:
        return _error(400, [{"field": "body", "message": str(exc)}])

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok", model=model_name, labels=len(label_names))

    @app.get("/labels", response_model=LabelsResponse)
    async def labels() -> LabelsResponse:
        return LabelsResponse(labels=list(label_names), rewards=list(rewards), scalar=scalar)

    @app.post("/score", response_model=ScoreResponse)
    async def score(req: ScoreRequest) -> ScoreResponse:  # type: ignore[valid-type]
        results = await score_fn([(it.prompt, it.response) for it in req.items])
        return ScoreResponse(results=results)

    @app.post("/votes", response_model=VotesResponse)
    async def votes(request: Request):
        # Authenticate before reading the body: an unauthenticated caller learns nothing
        # about the schema, and its body is never parsed.
        if not token:
            return _error(503, [{"field": "authorization", "message":
                                 "vote ingestion is off: set serve.auth_token or $RAYDPRM_SERVE_TOKEN"}])
        if not check_bearer(request.headers.get("authorization"), token):
            return _error(401, [{"field": "authorization", "message": "a valid 'Bearer <token>' is required"}],
                          headers={"WWW-Authenticate": "Bearer"})
        raw = await request.body()
        try:
            data = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _error(400, [{"field": "body", "message": f"malformed JSON body ({e})"}])
        if data is None:
            return _error(422, [{"field": "body", "message": "a JSON object body is required"}])
        try:
            req = VotesRequest.model_validate(data)
        except ValidationError as e:
            return _error(422, [{"field": field_name(err.get("loc", ())), "message": str(err.get("msg"))}
                                for err in e.errors()])
        if votes_fn is None:
            return _error(503, [{"field": "votes", "message": "no preference store is attached to this server"}])
        out = await votes_fn(list(req.votes))
        return VotesResponse(**out)

    return app
