"""Arguments shared by subcommands: ``--config FILE`` and ``key.sub=value`` overrides."""

from __future__ import annotations

import argparse
import os
import sys
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
    cfg = load_config(args.config, args.overrides)  # a bad value first, then one that cannot apply
    check_applied(args)
    return cfg


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


# environment switches of the libraries' own bars; set in this process, inherited by the Ray workers a
# local cluster starts and forwarded to an attached one (cluster.runtime forwards HF_*)
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub, and transformers ("Loading weights")
             "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets ("Saving the dataset", "Creating json ...")
             "TQDM_DISABLE": "1"}  # any other tqdm bar that does not pass disable= itself


def quiet_progress() -> None:
    """``--no-progress``: no progress bar anywhere, the libraries' included. The environment switches
    cover libraries imported later and every Ray worker; the libraries already imported here are told
    through their own APIs (their switch is read at import)."""
    os.environ.update(QUIET_ENV)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        from datasets.utils import disable_progress_bars as ds_disable

        ds_disable()


def applies(parser: argparse.ArgumentParser, *keys: str) -> None:
    """Declare that a read-only command applies only the config keys (or whole sections, ``store``)
    in ``keys``: :func:`config_from_args` then refuses an override it would silently ignore
    (``store stats labels.names=[...]`` cannot change the store it reads). Keys of a ``--config``
    file are not refused: one file serves every command."""
    parser.set_defaults(applies=tuple(keys))


def check_applied(args: argparse.Namespace) -> None:
    """Refuse the overrides of a command that declared (:func:`applies`) what it applies."""
    keys = getattr(args, "applies", None)
    if keys is None:
        return
    for item in getattr(args, "overrides", []):
        key = item.split("=", 1)[0].strip()
        if not any(key == k or key.startswith(k + ".") for k in keys):
            raise ConfigError(f"{getattr(args, 'command_name', 'this command')} only reads and cannot apply "
                              f"'{key}' (it applies {', '.join(keys) or 'no setting'}); drop the override")
