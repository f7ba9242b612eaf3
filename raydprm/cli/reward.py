"""`raydprm reward train|eval`: train the reward model on the preference store and evaluate it.

    raydprm reward train [--config F] [--simulate] [key=value ...]
    raydprm reward eval  [--config F] [--model DIR] [--simulate] [key=value ...]

Data: the export of the preference store at ``store.path`` (default
``<run_dir>/store.db``); the label scale is the store's (a conflicting ``labels.*`` is refused). ``--simulate`` first fills the store with votes of the
simulated crowd (``crowd.*``; idempotent). The trained model goes to
``<run_dir>/reward/{best,last}`` with metrics.jsonl, TensorBoard logs (``tb/``) and
result.json; ``reward.num_workers > 1`` trains with Ray Train.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from raydprm.cli.common import add_config_args, check_model_refs, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reward", help="Train / evaluate the distributional reward model (DPRM) or the BT baseline.",
                       description="Reward model on the preference store: losses ot | wasserstein | ce | bt "
                       "(reward.loss), held-out OT distance, CE, expected-reward error, ECE, per persona.")
    rsub = p.add_subparsers(dest="reward_cmd", metavar="ACTION", required=True)
    t = rsub.add_parser("train", help="Train on the store's export; writes <run_dir>/reward/{best,last}.")
    _common(t)
    t.add_argument("--out", default=None, help="Output directory (default <run_dir>/reward).")
    t.add_argument("--smoke", action="store_true",
                   help="Tiny run for tests: 48 simulated items, 1 epoch, implies --simulate.")
    t.set_defaults(handler=_train)
    e = rsub.add_parser("eval", help="Evaluate a trained reward model on every item of the store's export.")
    _common(e)
    e.add_argument("--model", default=None, help="Model directory (default reward.model_dir or <run_dir>/reward/best).")
    e.set_defaults(handler=_eval)


def _common(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--simulate", action="store_true",
                   help="Fill the store with simulated crowd votes first (crowd.n_items, crowd.votes_per_item).")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")


def _store_path(cfg) -> Path:
    return Path(cfg.store.path) if cfg.store.path else cfg.run.run_dir / "store.db"


def _load_data(cfg, simulate: bool):
    from raydprm.errors import RaydprmError
    from raydprm.store import PreferenceStore
    from raydprm.train.reward_data import simulate_store_export

    path = _store_path(cfg)
    if simulate:
        return simulate_store_export(path, crowd_cfg=cfg.crowd, store_cfg=cfg.store, labels_cfg=cfg.labels,
                                     seed=cfg.run.seed)
    if not path.is_file():
        raise RaydprmError(f"preference store '{path}' does not exist: add votes first, or pass --simulate "
                           "to fill it from the simulated crowd")
    # training only reads the store; its labels must be the model's (labels.names)
    with PreferenceStore.from_config(cfg.store, cfg.labels, path=str(path), readonly=True) as store:
        mixture = cfg.crowd.mixture or None
        return store.export(mixture, smoothing=cfg.store.smoothing)


def _train(args: argparse.Namespace) -> int:
    from raydprm.config import save_config
    from raydprm.models.dprm import label_scale_from_config
    from raydprm.train.reward_data import config_with_store_labels

    cfg = config_from_args(args)
    if args.smoke:
        cfg = cfg.override(["crowd.n_items=48", "crowd.votes_per_item=6", "reward.epochs=1",
                            "reward.batch_size=16"])
    if not (args.simulate or args.smoke):  # an existing store's label scale is the model's
        cfg = config_with_store_labels(cfg, _store_path(cfg))
    check_model_refs(cfg, "models.reward_backbone")
    data = _load_data(cfg, args.simulate or args.smoke)
    scale = label_scale_from_config(cfg.labels)
    out = Path(args.out) if args.out else cfg.run.run_dir / "reward"
    save_config(cfg, out)
    kw = dict(scale=scale, reward_cfg=cfg.reward, backbone=cfg.models.reward_backbone, out_dir=out,
              seed=cfg.run.seed, cache_dir=cfg.models.cache_dir or None, dtype=cfg.models.dtype,
              trust_remote_code=cfg.models.trust_remote_code, progress=not args.no_progress)
    from raydprm.cluster.reward_train import train_reward_auto

    use_gpu = cfg.run.device == "cuda"
    # stdout carries the JSON result alone: libraries that print there (DeepSpeed's logger, imported by
    # accelerate when a model is saved) write to stderr instead
    with contextlib.redirect_stdout(sys.stderr):
        if cfg.reward.num_workers > 1:  # Ray Train workers: attach to (or start) Ray through the one runtime
            from raydprm.cluster.runtime import Resources, ray_session

            need = Resources(cpu=cfg.reward.num_workers * cfg.reward.actor_num_cpus,
                             gpu=cfg.reward.num_workers if use_gpu else 0)
            with ray_session(cfg.ray, need, what="raydprm reward train"):
                res = train_reward_auto(data, use_gpu=use_gpu, cpus_per_worker=cfg.reward.actor_num_cpus, **kw)
        else:
            res = train_reward_auto(data, device=cfg.run.device, **kw)
    print(json.dumps({"loss": cfg.reward.loss, "best_dir": str(res.best_dir), "steps": res.steps,
                      "epochs": res.epochs, "stopped_early": res.stopped_early,
                      "seconds": round(res.seconds, 2), "best_eval": res.best_metrics}, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from raydprm.errors import RaydprmError
    from raydprm.models.dprm import label_scale_from_config
    from raydprm.train.reward import evaluate_checkpoint
    from raydprm.train.reward_data import config_with_store_labels

    cfg = config_from_args(args)
    if not args.simulate:
        cfg = config_with_store_labels(cfg, _store_path(cfg))
    model = Path(args.model or cfg.reward.model_dir or cfg.run.run_dir / "reward" / "best")
    check_model_refs(cfg, "models.reward_backbone")
    if not model.is_dir():
        raise RaydprmError(f"reward model directory '{model}' does not exist; train one with `raydprm reward train`")
    data = _load_data(cfg, args.simulate)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON result alone
        metrics = evaluate_checkpoint(model, data, label_scale_from_config(cfg.labels), cfg.reward.cost,
                                      cfg.reward.bt_pairs_per_item, cfg.run.seed)
    print(json.dumps({"model": str(model), "items": len(data), **metrics}, indent=2))
    return 0
