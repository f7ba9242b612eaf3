"""`raydprm serve`: the reward model over HTTP (Ray Serve).

    raydprm serve [--config F] [--model DIR] [--no-store] [--smoke] [key=value ...]

Serves ``POST /score``, ``POST /votes`` (bearer token: ``$RAYDPRM_SERVE_TOKEN``,
``serve.auth_token_file`` or ``serve.auth_token`` in a config file), ``GET /healthz`` and ``GET /labels`` on
``serve.host:serve.port``. Votes go to the preference store at ``store.path`` (default
``<run_dir>/store.db``) through a named store actor started here (or reused if one is
already running). ``--smoke`` starts, checks /healthz and /score once, and stops.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from raydprm.cli.common import add_config_args, config_from_args

STORE_ACTOR_NAME = "raydprm-preference-store"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="Serve the reward model over HTTP (Ray Serve): /score, /votes, /healthz, /labels.",
                       description="Ray Serve deployment of the DPRM with dynamic batching, fractional CPUs per "
                       "replica and autoscaling (serve.*); vote ingestion into the preference store.")
    add_config_args(p)
    p.add_argument("--model", default=None, help="Model directory (default reward.model_dir or <run_dir>/reward/best).")
    p.add_argument("--no-store", action="store_true", help="Do not attach the preference store (/votes answers 503).")
    p.add_argument("--smoke", action="store_true", help="Start, query /healthz and /score once, shut down.")
    p.set_defaults(handler=_serve)


def store_path(cfg) -> Path:
    return (Path(cfg.store.path) if cfg.store.path else cfg.run.run_dir / "store.db").resolve()


def check_store(cfg) -> None:
    """Open (creating it if needed) and close the store in this process first, so that a
    store whose parameters disagree with the config, a read-only or a corrupt file is a
    one-line error here rather than a failed actor."""
    from raydprm.store import PreferenceStore

    PreferenceStore.from_config(cfg.store, cfg.labels, path=str(store_path(cfg))).close()


def start_store_actor(cfg, name: str = STORE_ACTOR_NAME):
    """Start the named preference-store actor on ``store.path``; returns its client
    (keep it: the Serve replicas look the actor up by ``name``)."""
    from raydprm.cluster.store_actor import StoreClient

    return StoreClient.create(cfg.store, cfg.labels, default_path=str(store_path(cfg)), name=name,
                              namespace=cfg.ray.namespace, get_if_exists=True)


def _serve(args: argparse.Namespace) -> int:
    from raydprm.errors import RaydprmError
    from raydprm.models.dprm import label_scale_from_config
    from raydprm.serve.app import (
        build_app,
        check_port_free,
        proxy_environment,
        resolve_token,
        serve_app,
        shutdown_serve,
    )
    from raydprm.train.reward_data import config_with_store_labels

    cfg = config_from_args(args)
    if not args.no_store:  # the store's label scale is the served one (a conflicting labels.* is refused)
        cfg = config_with_store_labels(cfg, store_path(cfg))
    model = Path(args.model or cfg.reward.model_dir or cfg.run.run_dir / "reward" / "best")
    if not model.is_dir():
        raise RaydprmError(f"reward model directory '{model}' does not exist; train one with `raydprm reward train`")
    token = resolve_token(cfg.serve)
    # everything that can be checked before Ray starts is checked here, each in one line
    import ray

    if not ray.is_initialized():  # in a running session the port may be Serve's own proxy (serve.run reuses it)
        check_port_free(cfg.serve)
    if not args.no_store:
        check_store(cfg)
    import os

    os.environ.update(proxy_environment(cfg.serve))  # inherited by the Serve proxy of a local Ray
    from raydprm.cluster.runtime import Resources, connect

    # reuses a Ray session the caller already has; SIGTERM/SIGINT unwind through `finally`
    runtime = connect(cfg.ray, Resources(cpu=cfg.serve.num_cpus * cfg.serve.min_replicas), what="raydprm serve")
    store = None
    try:
        store = None if args.no_store else start_store_actor(cfg)  # held while serving
        app = build_app(str(model), label_scale_from_config(cfg.labels), cfg.reward, cfg.serve,
                        store_actor=None if args.no_store else STORE_ACTOR_NAME,
                        store_namespace=cfg.ray.namespace, token=token)
        serve_app(app, cfg.serve)
        url = f"http://{cfg.serve.host}:{cfg.serve.port}"
        print(f"raydprm serve: {url}  (/score, /votes{'' if token else ' [off: no token]'}, /healthz, /labels)",
              flush=True)
        if args.smoke:
            import httpx

            with httpx.Client(base_url=url, timeout=60) as c:
                h = c.get("/healthz")
                s = c.post("/score", json={"items": [{"prompt": "Q: how do I boil an egg ?\nA:",
                                                      "response": " put it in boiling water for eight minutes ."}]})
            print(json.dumps({"healthz": h.json(), "score": s.json()}, indent=2))
            return 0 if h.status_code == 200 and s.status_code == 200 else 1
        while True:  # serve until interrupted
            time.sleep(3600)
    finally:
        try:
            shutdown_serve()
        finally:
            if store is not None:
                store.shutdown()
            runtime.close()
