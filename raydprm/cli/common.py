"""Arguments shared by subcommands: ``--config FILE`` and ``key.sub=value`` overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

from raydprm.config import Config, load_config, secret_keys
from raydprm.errors import ConfigError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", default=None,
                   help="YAML config file (see `raydprm config show`).")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="Config overrides, e.g. ppo.beta=0.1 rollout.engine=vllm")


def config_from_args(args: argparse.Namespace) -> Config:
    """The config of a command: ``--config`` file + ``key=value`` overrides. Secrets are refused
    as overrides: a command line shows in ``ps`` and in shell history."""
    for item in args.overrides:
        key = item.split("=", 1)[0].strip()
        if key in secret_keys():
            raise ConfigError(f"override '{key}=...' puts a secret on the command line (visible in `ps`); set it "
                              f"in a config file, or for serve.auth_token use $RAYDPRM_SERVE_TOKEN or "
                              f"serve.auth_token_file")
    return load_config(args.config, args.overrides)


def ensure_run_dir(cfg: Config) -> Path:
    """Create ``<run.output_dir>/<run.name>`` or say in one line why it cannot be."""
    d = cfg.run.run_dir
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run directory '{d}' (run.output_dir = '{cfg.run.output_dir}', "
                          f"run.name = '{cfg.run.name}'): {e.strerror or e}") from None
    return d


def check_model_refs(cfg: Config, *keys: str, **given: str | None) -> None:
    """Refuse model references that name a local path which does not exist, before any work
    (a kit name or a hub name such as 'org/model' is left to the loader). ``keys``: dotted
    config keys (``models.policy``); ``given``: flag name -> value (``model=args.model``)."""
    refs = [(f"config key '{k}'", getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1])) for k in keys]
    refs += [(f"--{k.replace('_', '-')}", v) for k, v in given.items() if v]
    for where, ref in refs:
        if ref and ref.startswith(("/", "./", "../", "~")) and not Path(ref).expanduser().exists():
            raise ConfigError(f"{where} = '{ref}': no such model directory")
