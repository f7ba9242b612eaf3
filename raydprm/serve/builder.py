"""The reward service as a Serve *application builder*: settings as one plain dict.

Config-driven deployments (a KubeRay RayService's ``serveConfigV2``, ``serve deploy``,
``serve run config.yaml``) name an ``import_path`` and pass ``args``; Serve calls the builder
with that dict and deploys the application it returns::

    applications:
      - name: raydprm
        route_prefix: /
        import_path: raydprm.serve.builder:app_builder
        args:
          config: /home/ray/raydprm/my.yaml          # optional raydprm config file
          overrides: [run.output_dir=/mnt/raydprm/runs, run.name=kuberay, serve.num_cpus=2]
          model_dir: /mnt/raydprm/runs/kuberay/reward/best   # optional
          store_actor: raydprm-preference-store      # optional: a running store actor

``overrides`` is a list of ``key=value`` strings (as on the command line) or a mapping of
dotted keys to values. ``model_dir`` defaults to ``reward.model_dir``, then
``<run.output_dir>/<run.name>/reward/best`` — where a run writes its reward model. Without
``store_actor``, ``/votes`` answers 503. The bearer token for ``/votes`` comes from
``$RAYDPRM_SERVE_TOKEN`` on the node that builds the application (mount it from a Secret),
so it never appears in the deployment config. ``serve.host`` and ``serve.port`` do not apply
here: the HTTP proxy belongs to whoever runs Serve (``http_options`` of the Serve config).

Every mistake in ``args`` raises :class:`ConfigError` with one line naming the key.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raydprm.config import Config, load_config
from raydprm.errors import ConfigError

__all__ = ["BuilderArgs", "app_builder", "parse_builder_args", "resolve_builder_args"]

_KEYS = ("config", "overrides", "model_dir", "store_actor", "store_namespace")


@dataclass(frozen=True)
class BuilderArgs:
    """The validated ``args`` of :func:`app_builder` (empty string = not given)."""

    config: str = ""
    overrides: tuple[str, ...] = ()
    model_dir: str = ""
    store_actor: str = ""
    store_namespace: str = ""


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"serve builder: args.{key} must be a string, got {type(value).__name__} {value!r}")
    return value


def _overrides(value: Any) -> tuple[str, ...]:
    if isinstance(value, Mapping):
        out = []
        for k, v in value.items():
            if not isinstance(k, str) or not k or any(not p for p in k.split(".")):
                raise ConfigError(f"serve builder: args.overrides has a key {k!r} that is not a dotted config key")
            # JSON is YAML flow syntax, so apply_overrides reads the value back unchanged
            out.append(f"{k}={json.dumps(v)}")
        return tuple(out)
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"serve builder: args.overrides[{i}] = {item!r} must be a 'key.sub=value' string")
        return tuple(value)
    raise ConfigError("serve builder: args.overrides must be a list of 'key.sub=value' strings or a mapping of "
                      f"dotted keys to values, got {type(value).__name__}")


def parse_builder_args(args: Mapping[str, Any] | None) -> BuilderArgs:
    """Check the dict Serve passes to :func:`app_builder`; unknown keys and wrong types fail."""
    if args is None:
        return BuilderArgs()
    if not isinstance(args, Mapping):
        raise ConfigError(f"serve builder: args must be a mapping of {', '.join(_KEYS)}, got {type(args).__name__}")
    for key in args:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"serve builder: unknown key args.{key}{hint} (keys: {', '.join(_KEYS)})")
    kw: dict[str, Any] = {}
    for key in ("config", "model_dir", "store_actor", "store_namespace"):
        if args.get(key) is not None:
            kw[key] = _string(key, args[key])
    if args.get("overrides") is not None:
        kw["overrides"] = _overrides(args["overrides"])
    return BuilderArgs(**kw)


def resolve_builder_args(args: Mapping[str, Any] | None) -> tuple[BuilderArgs, Config, str]:
    """Validated args, the config they describe, and the reward model directory to serve."""
    a = parse_builder_args(args)
    cfg = load_config(a.config or None, a.overrides)
    model_dir = a.model_dir or cfg.reward.model_dir or str(cfg.run.run_dir / "reward" / "best")
    return a, cfg, model_dir


def app_builder(args: dict[str, Any]):
    """Serve's entry point (``import_path: raydprm.serve.builder:app_builder``): the bound
    reward application described by ``args`` (see the module docstring)."""
    # Imported here so that validating args needs neither Ray Serve nor the model stack.
    from raydprm.models.dprm import label_scale_from_config
    from raydprm.serve.app import build_app

    a, cfg, model_dir = resolve_builder_args(args)
    return build_app(model_dir, label_scale_from_config(cfg.labels), cfg.reward, cfg.serve,
                     store_actor=a.store_actor or None, store_namespace=a.store_namespace or cfg.ray.namespace)
