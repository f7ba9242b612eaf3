"""The reward service's HTTP surface as a plain FastAPI app (no Ray).

Routes:

- ``POST /score``  ``{"items": [{"prompt", "response"}, ...]}`` -> per item the label
  distribution keyed by label name, the expected reward, the configured scalar reward
  and the entropy; a group-conditioned DPRM adds ``groups``: each rater group's
  distribution and expected reward (the population's is their mixture, under the request's
  optional ``"weights": {group: weight}``, else the served ones; unknown groups -> 400).
- ``POST /votes``  ``{"votes": [{"prompt", "response", "label", "persona"?, "vote_id"?}]}``
  with ``Authorization: Bearer <token>``; 401 without a valid token (always, when no token
  is configured: ingestion is then off).
- ``GET /healthz``, ``GET /labels``.

The app is built around two async callables so that the same routes run in-process
(tests, ``TestClient``) and inside the Ray Serve deployment (``app.py``), where scoring
goes through ``serve.batch`` and votes through the store actor.

Bad requests never reach the model, and every answer is JSON
``{"error": "<field>: <problem>", "errors": [{"field", "message"}]}``:

- a body over ``max_body_bytes`` -> 413, found while streaming it in (a chunked body
  without Content-Length is not read past the limit);
- malformed JSON, JSON nested deeper than ``max_json_depth``, integers of more than
  ``max_int_digits`` digits, NaN/Infinity literals -> 400;
- a body that does not match the schema -> 422; a refused vote -> 400;
- the preference store not reachable -> 503;
- anything unexpected (a bug) -> 500 with a JSON body and an error id, the traceback in
  the server log under that id (:class:`CatchAll`), never plain text.
"""

import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from raydprm.errors import RaydprmError
from raydprm.serve.schemas import HealthResponse, LabelsResponse, Schemas, ScoreResponse, VotesResponse

__all__ = ["build_http_app", "field_name", "check_bearer", "token_digest", "parse_json", "json_depth",
           "BadJSON", "Unavailable", "CatchAll", "BodyLimit", "proxy_middlewares", "BODY_LIMIT_ENV"]

BODY_LIMIT_ENV = "RAYDPRM_SERVE_MAX_BODY_BYTES"

log = logging.getLogger("raydprm.serve")

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


class BadJSON(ValueError):
    """A request body that is not acceptable JSON (malformed, too deep, a too-long number)."""


class Unavailable(RaydprmError):
    """A backend the request needs (the preference store) is not reachable: 503."""


class RefusedVote(RaydprmError):
    """The store refused a vote of the request: 400 naming the field (``votes[i].persona``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def refused_vote(err: Any, votes: Sequence[Any]) -> RefusedVote:
    """The 400 a client sees for the store's :class:`~raydprm.store.votes.VoteError` on ``votes``
    (the request's votes): the request's field (``votes[i]``, ``votes[i].persona``) and the rule,
    without the vote id the server made up. An unknown persona names the store's groups (a store
    created by ``raydprm store import`` holds only its imported groups, not ``anonymous``, the
    default of a vote without ``persona``)."""
    from raydprm.store.votes import name_list

    i = int(err.index)
    field = f"votes[{i}]" + (f".{err.field}" if err.field else "")
    if err.rule == "known persona" and 0 <= i < len(votes):
        persona = getattr(votes[i], "persona", None)
        default = " (the default of a vote without 'persona')" if persona == "anonymous" else ""
        return RefusedVote(field, f"persona {persona!r}{default} is not a rater group of the preference store; "
                                  f"its groups: {name_list(err.known)}; name one of them in 'persona'; nothing of "
                                  "this batch was written")
    return RefusedVote(field, f"refused by rule '{err.rule}': {err.detail}; nothing of this batch was written")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # a JSON string literal (unrolled loop)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = np.full(256, -1, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1


def json_depth(raw: bytes, limit: int) -> int:
    """The deepest nesting of arrays/objects in the JSON text ``raw`` (brackets inside strings
    do not count), or a first count past ``limit`` once it is exceeded. Vectorised: a 50 MB
    body takes well under a second, whatever its shape."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth, deepest = 0, 0
    for i in range(0, len(brackets), 1 << 20):
        c = np.cumsum(_STEP[np.frombuffer(brackets[i:i + (1 << 20)], dtype=np.uint8)], dtype=np.int64) + depth
        deepest = max(deepest, int(c.max()))
        if deepest > limit:
            return deepest
        depth = int(c[-1])
    return deepest


def parse_json(raw: bytes, max_depth: int = 16, max_int_digits: int = 32) -> Any:
    """``json.loads`` with bounds: nesting depth, integer length, no NaN/Infinity. Raises
    :class:`BadJSON` naming the problem (never RecursionError or a bare ValueError)."""
    # fewer brackets than the limit cannot nest deeper (the common case: no scan)
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(raw, max_depth) > max_depth:
        raise BadJSON(f"JSON nested more than {max_depth} levels deep")

    def parse_int(text: str) -> int:
        if len(text.lstrip("-")) > max_int_digits:
            raise BadJSON(f"a JSON integer has {len(text.lstrip('-'))} digits; at most {max_int_digits} are "
                          "accepted")
        return int(text)

    def parse_constant(name: str) -> float:
        raise BadJSON(f"'{name}' is not a JSON number")

    try:
        return json.loads(raw, parse_int=parse_int, parse_constant=parse_constant)
    except BadJSON:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadJSON(f"malformed JSON body ({e})") from None
    except (RecursionError, ValueError) as e:  # belt and braces: the bounds above should catch these
        raise BadJSON(f"unreadable JSON body ({type(e).__name__})") from None


class CatchAll:
    """ASGI middleware: an exception that escapes the app becomes a logged 500 with a JSON
    body (an error id to find the traceback in the server log), never a plain-text page."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception:
            eid = uuid.uuid4().hex[:12]
            log.exception("unexpected error %s in %s %s", eid, scope.get("method"), scope.get("path"))
            if started:  # the answer is half sent: nothing better to do than end it
                return
            body = json.dumps({"error": f"server: internal error {eid} (logged on the server)",
                               "errors": [{"field": "server", "message": f"internal error {eid}"}]}).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def _json_message(status: int, message: str) -> tuple[dict, dict]:
    body = json.dumps({"error": f"body: {message}", "errors": [{"field": "body", "message": message}]}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


class BodyLimit:
    """ASGI middleware for the HTTP *proxy* in front of the replicas: a request body larger
    than ``max_body_bytes`` gets a 413 JSON answer as soon as the limit is crossed, and the
    rest of the body is never read.

    Needed because Ray Serve's proxy reads each request body eagerly into an unbounded
    queue, whatever the replica consumes; the replica's own streaming limit
    (:func:`build_http_app`) bounds what it parses, this bounds what the proxy holds. When
    the limit is crossed the app behind is told the client disconnected, and whatever it
    answers is dropped. Installed through Serve's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
    (see :func:`proxy_middlewares`)."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app, self.limit = app, int(max_body_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            for message in _json_message(413, f"body of {int(declared)} bytes is larger than the {self.limit} "
                                              "bytes this server accepts"):
                await send(message)
            return
        size, refused = 0, False

        async def limited_receive():
            nonlocal size, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    refused = True
                    for m in _json_message(413, f"body of more than {self.limit} bytes is larger than this "
                                                "server accepts"):
                        await send(m)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


def proxy_middlewares() -> list:
    """The middlewares of Serve's HTTP proxy (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH =
    raydprm.serve.http:proxy_middlewares``): the body limit from ``$RAYDPRM_SERVE_MAX_BODY_BYTES``."""
    import os

    from starlette.middleware import Middleware

    limit = os.environ.get(BODY_LIMIT_ENV, "")
    return [Middleware(BodyLimit, max_body_bytes=int(limit))] if limit.isdigit() else []


def _error(status: int, errors: list[dict[str, str]], headers: dict[str, str] | None = None) -> JSONResponse:
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    if len(errors) > 5:
        summary += f"; ... ({len(errors)} problems)"
    return JSONResponse(status_code=status, content={"error": summary, "errors": errors}, headers=headers)


def build_http_app(schemas: Schemas, label_names: Sequence[str], rewards: Sequence[float], scalar: str,
                   model_name: str, score_fn: ScoreFn, votes_fn: VotesFn | None, token_sha256: str,
                   max_body_bytes: int = 64 << 20, max_json_depth: int = 16, max_int_digits: int = 32,
                   health_fn: Callable[[], Awaitable[str | None]] | None = None) -> FastAPI:
    """The FastAPI app. ``score_fn`` maps [(prompt, response)] to per-item result dicts;
    ``votes_fn`` ingests validated votes (None: the store is not attached -> 503);
    ``token_sha256``: digest of the bearer token of /votes (see :func:`token_digest`; ''
    = no token configured -> every /votes is 401); ``max_body_bytes``: larger bodies
    are refused with 413 without reading past the limit; ``max_json_depth`` and
    ``max_int_digits`` bound the JSON parser (400 beyond); ``health_fn`` says what is broken
    (the store actor died: /healthz answers 503 naming it) or None."""
    app = FastAPI(title="raydprm reward service", version="1")
    app.add_middleware(CatchAll)
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
        return _error(400, [{"field": exc.field if isinstance(exc, RefusedVote) else "body", "message": str(exc)}])

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return _error(503, [{"field": "server", "message": str(exc)}])

    @app.get("/healthz", response_model=HealthResponse, responses={503: {"description": "a dependency is down"}})
    async def healthz():
        problem = await health_fn() if health_fn is not None else None
        if problem:  # a load balancer must stop sending votes here: not "ok"
            return JSONResponse(status_code=503, content={"status": "unavailable", "model": model_name,
                                                          "labels": len(label_names), "error": problem})
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
        # Read the body as it streams in and stop at the limit: a chunked body has no
        # Content-Length to refuse up front, and must not be buffered whole first.
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return None, _error(413, [{"field": "body", "message": f"body of more than {max_body_bytes} "
                                           "bytes is larger than this server accepts"}])
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            return None, _error(422, [{"field": "body", "message": "a JSON object body is required"}])
        try:
            data = parse_json(raw, max_json_depth, max_int_digits)
        except BadJSON as e:
            return None, _error(400, [{"field": "body", "message": str(e)}])
        try:
            return model.model_validate(data), None
        except ValidationError as e:
            return None, _error(422, [{"field": field_name(err.get("loc", ())), "message": str(err.get("msg"))}
                                      for err in e.errors()])

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True,  # groups: only when there are
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": ScoreRequest.model_json_schema()}}}})
    async def score(request: Request):
        req, err = await parse(request, ScoreRequest)
        if err is not None:
            return err
        pairs = [(it.prompt, it.response) for it in req.items]
        results = await (score_fn(pairs) if req.weights is None else score_fn(pairs, weights=req.weights))
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
