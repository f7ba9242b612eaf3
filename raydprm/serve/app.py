"""The reward model as a Ray Serve application (``raydprm serve``).

One deployment, :class:`RewardDeployment`, serves the routes of :mod:`raydprm.serve.http`:

- ``/score`` items are scored through ``serve.batch``: each item of each request is one
  call of the batched method, so concurrent requests share forward passes (up to
  ``serve.max_batch_size`` items, waiting at most ``serve.batch_wait_timeout_s``);
- ``/votes`` goes to the preference store through the store actor (a named Ray actor,
  looked up on first use), after bearer-token authentication.

Replicas take ``serve.num_cpus`` CPUs each (fractions allowed) and autoscale between
``serve.min_replicas`` and ``serve.max_replicas`` on ``serve.target_ongoing_requests``
(with ``serve.upscale_delay_s`` / ``serve.downscale_delay_s``): :func:`deployment_options`
is the one place the config becomes Serve options. This module is the only one that
imports ``ray.serve`` (the CLI starts and stops Serve through :func:`serve_app` and
:func:`shutdown_serve`).
Only a SHA-256 digest of the token reaches the cluster (bind arguments are stored by
the Serve controller), never the token itself.

    app = build_app(model_dir, scale, reward_cfg, serve_cfg, store_actor="preference_store")
    serve_app(app, serve_cfg)            # serve.start + serve.run on serve.host:serve.port
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from ray import serve

from raydprm.core.label_scale import LabelScale
from raydprm.errors import RaydprmError
from raydprm.serve.http import BODY_LIMIT_ENV, Unavailable, refused_vote, token_digest

__all__ = ["RewardDeployment", "build_app", "serve_app", "shutdown_serve", "resolve_token", "token_digest",
           "APP_NAME", "deployment_options", "check_port_free", "proxy_environment"]

APP_NAME = "raydprm"
TOKEN_ENV = "RAYDPRM_SERVE_TOKEN"


def resolve_token(serve_cfg) -> str:
    """The bearer token for ``/votes``: ``serve.auth_token``, else the content of
    ``serve.auth_token_file``, else ``$RAYDPRM_SERVE_TOKEN`` ('' = none)."""
    if serve_cfg.auth_token:
        return serve_cfg.auth_token
    if serve_cfg.auth_token_file:
        p = Path(serve_cfg.auth_token_file).expanduser()
        try:
            token = p.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise RaydprmError(f"cannot read serve.auth_token_file '{p}': {getattr(e, 'strerror', None) or e}") from None
        if not token or any(c.isspace() for c in token):
            raise RaydprmError(f"serve.auth_token_file '{p}' must hold one token (no spaces), got "
                               f"{'nothing' if not token else 'text with spaces'}")
        return token
    return os.environ.get(TOKEN_ENV, "")


def check_port_free(serve_cfg) -> None:
    """Refuse, in one line, a ``serve.host:serve.port`` that something else already listens on
    (Serve's proxy would otherwise fail inside an actor, with pages of traceback)."""
    try:
        infos = socket.getaddrinfo(serve_cfg.host, serve_cfg.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise RaydprmError(f"serve.host '{serve_cfg.host}' does not resolve: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            why = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
            raise RaydprmError(f"serve.host:serve.port {serve_cfg.host}:{serve_cfg.port} {why}; stop what listens "
                               "there or choose another serve.port") from None


@serve.deployment
@serve.ingress()
class RewardDeployment:
    """A DPRM replica behind FastAPI; ``__serve_build_asgi_app__`` builds the routes."""

    def __init__(self, model_dir: str, scale: LabelScale | None, reward_cfg, serve_cfg, token_sha256: str,
                 store_actor: str | None = None, store_namespace: str | None = None, num_threads: int = 1):
        import torch

        from raydprm.models.backbone import read_meta
        from raydprm.models.dprm import DPRM, GroupDPRM
        from raydprm.serve.schemas import make_schemas

        torch.set_num_threads(max(1, num_threads))
        # a group-conditioned DPRM answers for each rater group too; anything else loads as a DPRM
        kind = read_meta(model_dir)[1].get("kind")
        self._model = (GroupDPRM if kind == GroupDPRM.kind else DPRM).load(model_dir, scale)
        self._model.eval()
        self._scale = self._model.scale
        self._names = list(self._scale.names)
        self._reward_cfg = reward_cfg
        self._serve_cfg = serve_cfg
        self._digest = token_sha256
        self._store_name, self._store_ns = store_actor, store_namespace
        self._store = None
        self._model_name = os.path.basename(os.path.normpath(model_dir))
        self._schemas = make_schemas(serve_cfg.max_items, serve_cfg.max_text_chars, tuple(self._names))
        self._score_batch.set_max_batch_size(serve_cfg.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(serve_cfg.batch_wait_timeout_s)

    # --- scoring --------------------------------------------------------------------
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _score_batch(self, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
        c = self._reward_cfg
        prompts = [p for p, _ in items]
        responses = [r for _, r in items]
        # The forward pass runs in a thread so the replica's event loop keeps accepting
        # (and batching) requests meanwhile.
        kw = {"weights": dict(c.group_weights) or None} if self._model.kind == "group_dprm" else {}
        out = await asyncio.to_thread(self._model.score, prompts, responses, c.scalar, c.cvar_alpha, c.kappa,
                                      len(items), **kw)
        return out.to_items(self._names, with_groups=True)

    async def score(self, items: list[tuple[str, str]], weights: dict[str, float] | None = None
                    ) -> list[dict[str, Any]]:
        if weights is None:
            return list(await asyncio.gather(*[self._score_batch(it) for it in items]))
        # a request's own group weights: scored on its own (a batch shares one set of weights)
        if self._model.kind != "group_dprm":
            raise RaydprmError("'weights' re-weights rater groups: the served reward model is not group-conditioned "
                               "(train it with reward.conditioning = group)")
        c = self._reward_cfg
        out = await asyncio.to_thread(self._model.score, [p for p, _ in items], [r for _, r in items], c.scalar,
                                      c.cvar_alpha, c.kappa, len(items), weights=dict(weights))
        return out.to_items(self._names, with_groups=True)

    # --- votes ------------------------------------------------------------------------
    def _store_handle(self):
        import ray

        if self._store is None:
            try:
                self._store = ray.get_actor(self._store_name, namespace=self._store_ns)
            except ValueError:
                raise Unavailable(f"the preference store actor '{self._store_name}' is not running") from None
        return self._store

    async def add_votes(self, votes: list[Any]) -> dict[str, int]:
        import ray

        records = []
        for v in votes:
            records.append({"vote_id": v.vote_id or f"api-{uuid.uuid4().hex}", "prompt": v.prompt,
                            "response": v.response, "persona": v.persona, "label": v.label_index,
                            "source": "serve"})
        try:
            out = await self._store_handle().add_votes.remote(records)
        except ray.exceptions.RayTaskError as e:
            from raydprm.store.votes import VoteError

            cause = getattr(e, "cause", None)
            if isinstance(cause, VoteError):  # the request's field, the store's groups; not our vote id
                raise refused_vote(cause, votes) from None
            if isinstance(cause, RaydprmError):
                raise RaydprmError(str(cause)) from None
            raise
        except ray.exceptions.RayActorError:
            self._store = None  # look it up again next time: it may have been restarted
            raise Unavailable(f"the preference store actor '{self._store_name}' is not reachable") from None
        return {"accepted": int(out.get("added", 0)), "duplicates": int(out.get("duplicates", 0))}

    async def store_health(self) -> str | None:
        """None while the store actor answers (or none is attached), else why /healthz is not ok."""
        import ray

        if not self._store_name:
            return None
        try:
            await asyncio.wait_for(self._store_handle().__ray_ready__.remote(), timeout=5.0)
        except Unavailable as e:
            return str(e)
        except (ray.exceptions.RayActorError, asyncio.TimeoutError):
            self._store = None  # look it up again next time: it may be restarted
            return f"the preference store actor '{self._store_name}' is not reachable"
        return None

    # --- the ASGI app, built on the replica after __init__ -----------------------------------
    def __serve_build_asgi_app__(self):
        from raydprm.serve.http import build_http_app

        app = build_http_app(self._schemas, self._names, list(self._scale.rewards), self._reward_cfg.scalar,
                             self._model_name, self.score, self.add_votes if self._store_name else None,
                             token_sha256=self._digest, max_body_bytes=max_body_bytes(self._serve_cfg),
                             max_json_depth=self._serve_cfg.max_json_depth,
                             max_int_digits=self._serve_cfg.max_int_digits, health_fn=self.store_health)
        return app


def max_body_bytes(serve_cfg) -> int:
    """Largest request body worth parsing: max_items items of two max-length texts, each
    character JSON-escaped at worst (12 bytes for a \\uXXXX surrogate pair), plus slack."""
    return serve_cfg.max_items * (2 * serve_cfg.max_text_chars * 12 + 4096) + 65536


def proxy_environment(serve_cfg) -> dict[str, str]:
    """Environment variables that Serve's HTTP proxy must start with so that it refuses
    oversized bodies without buffering them (:class:`raydprm.serve.http.BodyLimit`). Put them
    in ``os.environ`` before a local Ray instance starts (its workers inherit them); on an
    existing cluster, they belong in the environment its nodes were started with."""
    return {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "raydprm.serve.http.proxy_middlewares",
            BODY_LIMIT_ENV: str(max_body_bytes(serve_cfg))}


def deployment_options(serve_cfg) -> dict[str, Any]:
    """Replica resources and autoscaling of the deployment, all from ``ServeConfig``
    (``serve.min_replicas <= serve.max_replicas`` is checked by the config itself).

    A replica admits up to ``max_ongoing_requests`` at once: enough to fill a
    ``serve.batch`` of ``max_batch_size`` items several times over, and at least twice the
    autoscaling target, so that the queue the autoscaler reads can rise above the target
    (if a replica admitted only ``target`` requests, the load it reports would never
    exceed it and no replica would ever be added)."""
    return {
        "ray_actor_options": {"num_cpus": serve_cfg.num_cpus},
        "autoscaling_config": {"min_replicas": serve_cfg.min_replicas,
                               "initial_replicas": max(1, serve_cfg.min_replicas),
                               "max_replicas": serve_cfg.max_replicas,
                               "target_ongoing_requests": serve_cfg.target_ongoing_requests,
                               "upscale_delay_s": serve_cfg.upscale_delay_s,
                               "downscale_delay_s": serve_cfg.downscale_delay_s},
        "max_ongoing_requests": max(4 * serve_cfg.max_batch_size, 2 * int(serve_cfg.target_ongoing_requests)),
    }


def build_app(model_dir: str, scale: LabelScale | None, reward_cfg, serve_cfg, store_actor: str | None = None,
              store_namespace: str | None = None, token: str | None = None):
    """A bound Serve application for the reward model in ``model_dir``.

    ``token``: the bearer token for /votes (default: :func:`resolve_token`); ``store_actor``:
    name of the running ``PreferenceStoreActor`` (None: /votes answers 503).
    """
    from raydprm.models.dprm import META_FILE

    if not os.path.isfile(os.path.join(model_dir, META_FILE)):
        raise RaydprmError(f"'{model_dir}' is not a trained reward model directory (no {META_FILE}); "
                           "train one with `raydprm reward train` or set reward.model_dir")
    tok = resolve_token(serve_cfg) if token is None else token
    threads = max(1, int(serve_cfg.num_cpus))
    return RewardDeployment.options(**deployment_options(serve_cfg)).bind(
        os.path.abspath(model_dir), scale, reward_cfg, serve_cfg, token_digest(tok), store_actor, store_namespace,
        threads)


def serve_app(app, serve_cfg, name: str = APP_NAME, route_prefix: str = "/"):
    """Start Serve's HTTP proxy on ``serve.host:serve.port`` and deploy ``app`` (non-blocking)."""
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})
    return serve.run(app, name=name, route_prefix=route_prefix)


def shutdown_serve() -> None:
    """Stop every Serve application and the proxy of the connected Ray instance."""
    serve.shutdown()
