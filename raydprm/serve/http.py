"""The reward service's HTTP surface as a plain FastAPI app (no Ray).

Routes:

- ``POST /score``  ``{"items": [{"prompt", "response"}, ...]}`` -> per item the label
  distribution keyed by label name, the expected reward, the configured scalar reward
  and the entropy.
- ``POST /votes``  ``{"votes": [{"prompt", "response", "label", "persona"?, "vote_id"?}]}``
  with ``Authorization: Bearer <token>``; 401 without a valid token (always, when no token
  is configured: ingestion is then off).
- ``GET /healthz``, ``GET /labels``.

The app is built around two async callables so that the same routes run in-process
(tests, ``TestClient``) and inside the Ray Serve deployment (``app.py``), where scoring
goes through ``serve.batch`` and votes through the store actor.

Bad requests never reach the model: malformed JSON -> 400, validation errors -> 422,
each with ``{"error": "<field>: <problem>", "errors": [{"field", "message"}]}``.
"""

import hashlib
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

__all__ = ["build_http_app", "field_name", "check_bearer", "token_digest"]

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


def token_digest(token: str) -> str:
    """SHA-256 hex digest of a bearer token ('' for no token)."""
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


def check_bearer(header: str | None, digest: str) -> bool:
    """True if ``header`` is ``Bearer <token>`` with sha256(token) == ``digest`` (constant-time)."""
    if not header or not digest:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token_digest(value.strip()), digest)


def _error(status: int, errors: list[dict[str, str]], headers: dict[str, str] | None = None) -> JSONResponse:
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    if len(errors) > 5:
        summary += f"; ... ({len(errors)} problems)"
    return JSONResponse(status_code=status, content={"error": summary, "errors": errors}, headers=headers)


def build_http_app(schemas: Schemas, label_names: Sequence[str], rewards: Sequence[float], scalar: str,
                   model_name: str, score_fn: ScoreFn, votes_fn: VotesFn | None, token_sha256: str,
                   max_body_bytes: int = 64 << 20) -> FastAPI:
    """The FastAPI app. ``score_fn`` maps [(prompt, response)] to per-item result dicts;
    ``votes_fn`` ingests validated votes (None: the store is not attached -> 503);
    ``token_sha256``: digest of the bearer token of /votes (see :func:`token_digest`; ''
    = no token configured -> every /votes is 401); ``max_body_bytes``: larger bodies
    are refused with 413 before parsing."""
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

    async def parse(request: Request, model):
        """The request body validated as ``model``, or the 4xx response that says why not.

        Parsed by hand (not by FastAPI's body binding) so that malformed JSON is a 400
        whatever the Content-Type, and so that /votes can authenticate before parsing."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return None, _error(413, [{"field": "body", "message": f"body of {declared} bytes is larger than "
                                       f"the {max_body_bytes} bytes this server accepts"}])
        raw = await request.body()
        if len(raw) > max_body_bytes:
            return None, _error(413, [{"field": "body", "message": f"body of {len(raw)} bytes is larger than "
                                       f"the {max_body_bytes} bytes this server accepts"}])
        if not raw.strip():
            return None, _error(422, [{"field": "body", "message": "a JSON object body is required"}])
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return None, _error(400, [{"field": "body", "message": f"malformed JSON body ({e})"}])
        try:
            return model.model_validate(data), None
        except ValidationError as e:
            return None, _error(422, [{"field": field_name(err.get("loc", ())), "message": str(err.get("msg"))}
                                      for err in e.errors()])

    @app.post("/score", response_model=ScoreResponse,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": ScoreRequest.model_json_schema()}}}})
    async def score(request: Request):
        req, err = await parse(request, ScoreRequest)
        if err is not None:
            return err
        results = await score_fn([(it.prompt, it.response) for it in req.items])
        return ScoreResponse(results=results)

    @app.post("/votes", response_model=VotesResponse,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": VotesRequest.model_json_schema()}}}})
    async def votes(request: Request):
        # Authenticate before reading the body: an unauthenticated caller learns nothing
        # about the schema, and its body is never parsed.
        if not token_sha256:  # no token configured: no token is valid
            return _error(401, [{"field": "authorization", "message": "vote ingestion is off: no token is "
                                 "configured (set serve.auth_token or $RAYDPRM_SERVE_TOKEN on the server)"}],
                          headers={"WWW-Authenticate": "Bearer"})
        if not check_bearer(request.headers.get("authorization"), token_sha256):
            return _error(401, [{"field": "authorization", "message": "a valid 'Bearer <token>' is required"}],
                          headers={"WWW-Authenticate": "Bearer"})
        req, err = await parse(request, VotesRequest)
        if err is not None:
            return err
        if votes_fn is None:
            return _error(503, [{"field": "votes", "message": "no preference store is attached to this server"}])
        out = await votes_fn(list(req.votes))
        return VotesResponse(**out)

    return app
