"""Train a reward model on crowd preferences: the DPRM with the OT loss or the paper's
baselines (Wasserstein, cross-entropy), or the Bradley-Terry scalar model on pairs.

Losses (``reward.loss`` picks one from :data:`REWARD_OBJECTIVES`):

    ot           OT_M(mu_theta, t)   with the named cost M (``reward.cost``; exact or
                                     Sinkhorn solver, ``reward.ot_method``)      (DPRM_OT)
    wasserstein  W_1(mu_theta, t)    on label positions, i.e. OT with the ordinal cost
                                     |i - j| (1-D closed form)                     (DPRM_W)
    ce           -sum_i t_i log mu_theta,i                                        (DPRM_C)
    bt           -log sigmoid(s(chosen) - s(rejected)) on pairs from the same crowd (BT-RM;
                                     the "bt" loss of raydprm.core.pairwise_loss)

With ``reward.conditioning = group`` the distributional losses train a group-conditioned
DPRM (:class:`~raydprm.models.dprm.GroupDPRM`) on every rater group's posterior instead of
the population's: the loss is the mean of loss(mu_g(x), t_g(x)) over the (item, group) cells
with votes, t_g the group's Dirichlet posterior mean (:class:`GroupObjective`).

One training loop (:func:`train_reward`) serves both families; what differs (the model
kind, the rows of a batch and their loss, the held-out metrics, the selection score) is
a :class:`RewardObjective`: :class:`DistributionalObjective` for the DPRM losses,
:class:`PairwiseObjective` for the pairwise ones.

Evaluation on held-out items (every ``reward.eval_every`` steps or once per epoch):
mean OT distance under ``reward.cost`` (the same yardstick for every variant), CE,
expected-reward error, top-label ECE, per persona; for BT pairwise accuracy and the
rank correlation of its score with the crowd's expected reward. The best evaluation is
kept in ``<out>/best``, the latest in ``<out>/last``; training stops after
``reward.patience`` evaluations without improvement. Scalars go to TensorBoard under
``reward/...`` and to ``<out>/metrics.jsonl``.

Data parallel: if ``torch.distributed`` is initialised (Ray Train's TorchTrainer does it,
see ``raydprm.cluster.reward_train``), the model is wrapped in DDP and each rank takes
its slice of every global batch; every rank evaluates (so that early stopping agrees)
and rank 0 writes checkpoints and logs. This module imports no Ray.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from raydprm.core.label_scale import LabelScale
from raydprm.core.pairwise_loss import pairwise_loss, reduce_pairs
from raydprm.errors import RaydprmError
from raydprm.models.reward_models import REWARD_MODELS, load_reward_model
from raydprm.train.reward_data import (
    PairExamples,
    RewardExamples,
    examples_from_dataset,
    pairs_from_targets,
    split_examples,
)
from raydprm.train.reward_metrics import distribution_metrics, group_fit, spearman

__all__ = ["LOSSES", "REWARD_OBJECTIVES", "DISTRIBUTIONAL_LOSSES", "RewardObjective", "DistributionalObjective",
           "GroupObjective", "PairwiseObjective", "objective_for", "RewardTrainResult", "resolve_cost", "make_loss", "train_reward", "train_reward_kwargs",
           "evaluate_reward_model", "evaluate_checkpoint", "select_device"]


# --------------------------------------------------------------------------- losses


def resolve_cost(cost: str, scale: LabelScale) -> torch.Tensor:
    """A cost matrix (L, L) by name (``raydprm.core.cost.COST_NAMES``) or from a .npy /
    .yaml / .json file holding an L x L matrix (validated)."""
    from raydprm.core.cost import COST_NAMES, cost_matrix, validate_cost

    if cost in COST_NAMES and cost != "custom":
        try:
            return cost_matrix(cost, scale)
        except ValueError as e:
            raise RaydprmError(f"reward.cost = {cost!r}: {e}") from None
    p = Path(cost)
    if not p.is_file():
        raise RaydprmError(f"reward.cost = {cost!r} is neither a cost name "
                           f"({', '.join(c for c in COST_NAMES if c != 'custom')}) nor an existing matrix file")
    try:
        if p.suffix == ".npy":
            m = np.load(p)
        else:
            import yaml

            m = np.asarray(yaml.safe_load(p.read_text()), dtype=np.float64)
        return validate_cost(m, scale.num_labels).to(torch.float64)
    except (ValueError, TypeError) as e:
        raise RaydprmError(f"reward.cost file '{p}': {e}") from None


def _ot_loss(logits, target, cost, method, **kw):
    from raydprm.core.ot_loss import ot_loss

    out = ot_loss(logits, target, cost, method=method, from_logits=True, reduction="mean", **kw)
    return out[0] if isinstance(out, tuple) else out


DistributionalLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _ot(reward_cfg, scale: LabelScale) -> DistributionalLoss:
    M = resolve_cost(reward_cfg.cost, scale)
    if reward_cfg.ot_method == "sinkhorn":
        kw = dict(eps=reward_cfg.sinkhorn_eps, max_iter=reward_cfg.sinkhorn_iters, tol=reward_cfg.sinkhorn_tol)
        return lambda z, t: _ot_loss(z, t, M.to(z.device), "sinkhorn", **kw)
    return lambda z, t: _ot_loss(z, t, M.to(z.device), "exact")


def _wasserstein(reward_cfg, scale: LabelScale) -> DistributionalLoss:
    from raydprm.core.cost import cost_matrix

    M = cost_matrix("ordinal", scale)  # W1 on label positions (the paper's DPRM_W)
    return lambda z, t: _ot_loss(z, t, M.to(z.device), "wasserstein")


def _ce(reward_cfg, scale: LabelScale) -> DistributionalLoss:
    from raydprm.core.cost import cost_matrix

    M = cost_matrix("ordinal", scale)  # unused by CE; the API takes a cost
    return lambda z, t: _ot_loss(z, t, M.to(z.device), "ce")


# reward.loss -> builder of the distributional loss (logits (B, L), target (B, L)) -> scalar
DISTRIBUTIONAL_LOSSES: dict[str, Callable[[Any, LabelScale], DistributionalLoss]] = {
    "ot": _ot,  # (DPRM_OT)
    "wasserstein": _wasserstein,  # (DPRM_W)
    "ce": _ce,  # (DPRM_C)
}


def make_loss(reward_cfg, scale: LabelScale) -> DistributionalLoss:
    """The distributional training loss of ``reward_cfg.loss``: (logits (B, L), target (B, L)) -> scalar."""
    build = DISTRIBUTIONAL_LOSSES.get(reward_cfg.loss)
    if build is None:
        raise RaydprmError(f"reward.loss = {reward_cfg.loss!r} is not a distributional loss; "
                           f"choose one of {', '.join(DISTRIBUTIONAL_LOSSES)}")
    return build(reward_cfg, scale)


# --------------------------------------------------------------------------- helpers


def select_device(device: str = "auto") -> torch.device:
    """The learners' device choice (:func:`raydprm.train.rank.select_device`) for ``run.device``."""
    from raydprm.train.rank import select_device as rank_device  # lazily: the rank base imports the engines

    return rank_device(device, key="run.device")


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _seed_all(seed: int) -> None:
    from raydprm.train.rank import set_seed  # the learners' rank base: python, numpy and torch RNGs

    set_seed(seed)


class _Logger:
    """TensorBoard + metrics.jsonl on rank 0; a no-op elsewhere."""

    def __init__(self, out_dir: Path | None, tb_dir: Path | None, active: bool):
        self.active = active and out_dir is not None
        self.writer = None
        self.jsonl = None
        if self.active:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(out_dir / "metrics.jsonl", "a")
            if tb_dir is not None:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(tb_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _flatten(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flatten(f"{prefix}{k}/", v))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    return out


# --------------------------------------------------------------------------- objectives


class RewardObjective(ABC):
    """What one reward-model family brings to the shared training loop.

    ``kind``: the reward model it trains (a key of ``REWARD_MODELS``); ``n_train``: rows
    of one epoch; :meth:`batch_loss`: the loss of some of those rows; :meth:`evaluate`:
    held-out metrics; :meth:`selection`: the score (lower is better) that picks the best
    checkpoint and drives early stopping.
    """

    kind: ClassVar[str] = ""
    n_train: int = 0

    @abstractmethod
    def batch_loss(self, model, train_module: torch.nn.Module, idx: np.ndarray, dev: torch.device) -> torch.Tensor:
        """Scalar loss of training rows ``idx`` (``train_module`` is ``model`` or its DDP wrapper)."""

    @abstractmethod
    def evaluate(self, model) -> dict[str, Any]:
        """Held-out metrics of ``model``."""

    @staticmethod
    @abstractmethod
    def selection(metrics: dict[str, Any]) -> float:
        """Lower is better."""

    def model_kwargs(self) -> dict[str, Any]:
        """Extra arguments of the model's ``from_backbone`` (the groups of a group-conditioned one)."""
        return {}


class DistributionalObjective(RewardObjective):
    """A DPRM trained on the crowd's label distributions with a loss of :data:`DISTRIBUTIONAL_LOSSES`."""

    kind = "dprm"

    def __init__(self, reward_cfg, scale: LabelScale, train_ex: RewardExamples, eval_ex: RewardExamples,
                 eval_cost: torch.Tensor, seed: int = 0, pairs: PairExamples | None = None):
        self.scale, self.train_ex, self.eval_ex, self.eval_cost = scale, train_ex, eval_ex, eval_cost
        self.loss_fn = make_loss(reward_cfg, scale)
        self.targets = train_ex.targets.float()
        self.n_train = len(train_ex)

    def batch_loss(self, model, train_module, idx, dev):
        ex = self.train_ex
        enc = model.backbone.tokenize([ex.prompts[i] for i in idx], [ex.responses[i] for i in idx])
        z = train_module(enc["input_ids"].to(dev), enc["attention_mask"].to(dev))  # (B, L)
        return self.loss_fn(z, self.targets[idx].to(dev))

    def evaluate(self, model):
        return self.metrics(model, self.eval_ex, self.scale, self.eval_cost)

    @staticmethod
    def metrics(model, data: RewardExamples, scale: LabelScale, cost: torch.Tensor, pairs: PairExamples | None = None,
                batch_size: int = 64) -> dict[str, Any]:
        """Distribution metrics of a DPRM (see ``reward_metrics``), overall and per persona."""
        rewards = scale.reward_tensor()
        res = model.score(data.prompts, data.responses, batch_size=batch_size)
        mu = res.distribution.double()  # (N, L)
        out = distribution_metrics(mu, data.targets, rewards, cost)
        out["rank_corr"] = spearman(res.expected.tolist(), (data.targets.double() @ rewards).tolist())
        per = group_fit(mu, data.persona_names, data.persona_counts, rewards, cost, _w1_cost(scale))
        if per:
            out["persona"] = per
        return out

    @staticmethod
    def selection(metrics):
        return metrics["ot_distance"]  # held-out OT distance


def _w1_cost(scale: LabelScale) -> torch.Tensor:
    from raydprm.core.cost import cost_matrix

    return cost_matrix("ordinal", scale)  # W1 on label positions, |i - j|


class GroupObjective(DistributionalObjective):
    """A group-conditioned DPRM (``reward.conditioning = group``) trained on each rater group's
    posterior with a loss of :data:`DISTRIBUTIONAL_LOSSES`:

        loss = (1 / |C|) sum_{(n, g) in C} loss(mu_g(x_n), t_g(x_n)),   C = cells with votes of g on x_n.

    Selection: the held-out OT distance of the groups' predictions to their vote frequencies,
    averaged over groups weighted by votes (``group_ot_distance``)."""

    kind = "group_dprm"

    def __init__(self, reward_cfg, scale: LabelScale, train_ex: RewardExamples, eval_ex: RewardExamples,
                 eval_cost: torch.Tensor, seed: int = 0, pairs: PairExamples | None = None):
        if train_ex.persona_counts is None or not train_ex.persona_names:
            train_ex.group_targets()  # the one error message for data without per-group counts
        voted_groups = [n for g, n in enumerate(train_ex.persona_names) if float(train_ex.persona_counts[g].sum()) > 0]
        train_ex = RewardExamples(train_ex.prompts, train_ex.responses, train_ex.targets, voted_groups,
                                  _align_counts(train_ex, voted_groups))
        eval_ex = RewardExamples(eval_ex.prompts, eval_ex.responses, eval_ex.targets, voted_groups,
                                 _align_counts(eval_ex, voted_groups))
        super().__init__(reward_cfg, scale, train_ex, eval_ex, eval_cost, seed, pairs)
        t, voted = train_ex.group_targets()
        self.group_t, self.voted = t.float(), voted  # (N, G, L), (N, G)
        self.groups, self.shares = list(train_ex.persona_names), train_ex.group_shares()

    def model_kwargs(self) -> dict[str, Any]:
        return {"groups": self.groups, "group_weights": self.shares}

    def batch_loss(self, model, train_module, idx, dev):
        ex = self.train_ex
        enc = model.backbone.tokenize([ex.prompts[i] for i in idx], [ex.responses[i] for i in idx])
        z = train_module(enc["input_ids"].to(dev), enc["attention_mask"].to(dev))  # (B, G, L)
        sel = self.voted[idx].to(dev)  # (B, G) cells with votes
        return self.loss_fn(z[sel], self.group_t[idx].to(dev)[sel])  # mean over the voted cells

    @staticmethod
    def metrics(model, data: RewardExamples, scale: LabelScale, cost: torch.Tensor, pairs: PairExamples | None = None,
                batch_size: int = 64) -> dict[str, Any]:
        """The mixture's distribution metrics against the population targets, and each group's fit."""
        rewards = scale.reward_tensor()
        res = model.score(data.prompts, data.responses, batch_size=batch_size)
        out = distribution_metrics(res.distribution.double(), data.targets, rewards, cost)
        out["rank_corr"] = spearman(res.expected.tolist(), (data.targets.double() @ rewards).tolist())
        per = group_fit(res.group_distribution.double(), model.groups,
                        _align_counts(data, model.groups), rewards, cost, _w1_cost(scale))
        out["persona"] = per
        v = sum(p["votes"] for p in per.values())
        out["group_ot_distance"] = sum(p["ot_distance"] * p["votes"] for p in per.values()) / v if v else float("nan")
        return out

    @staticmethod
    def selection(metrics):
        return metrics["group_ot_distance"]


def _align_counts(data: RewardExamples, groups: list[str]) -> torch.Tensor | None:
    """Counts (G, N, L) of ``data`` in the order of a model's ``groups`` (zeros for a group the data lacks)."""
    if data.persona_counts is None:
        return None
    L = data.targets.shape[-1]
    out = torch.zeros(len(groups), len(data), L, dtype=torch.float64)
    for g, name in enumerate(groups):
        if name in data.persona_names:
            out[g] = data.persona_counts[data.persona_names.index(name)].double()
    return out


class PairwiseObjective(RewardObjective):
    """A scalar reward model trained on (chosen, rejected) pairs with a loss of the
    pairwise-loss registry (``raydprm.core.pairwise_loss``; ``reward.loss`` names it).

    Pairs are drawn from the crowd's label distributions of the items
    (``reward.bt_pairs_per_item`` per item), or split off ``pairs`` when given.
    """

    kind = "bt"

    def __init__(self, reward_cfg, scale: LabelScale, train_ex: RewardExamples, eval_ex: RewardExamples,
                 eval_cost: torch.Tensor, seed: int = 0, pairs: PairExamples | None = None):
        self.scale, self.eval_ex = scale, eval_ex
        self.loss_fn = pairwise_loss(reward_cfg.loss)
        if pairs is None:
            self.train_pairs = pairs_from_targets(train_ex, scale.rewards, reward_cfg.bt_pairs_per_item, seed)
            self.eval_pairs = pairs_from_targets(eval_ex, scale.rewards, reward_cfg.bt_pairs_per_item, seed + 1)
        else:
            perm = np.random.default_rng(seed).permutation(len(pairs))
            k = max(1, int(round(reward_cfg.eval_fraction * len(pairs))))
            self.train_pairs, self.eval_pairs = pairs.subset(sorted(perm[k:])), pairs.subset(sorted(perm[:k]))
        self.n_train = len(self.train_pairs)
        if self.n_train == 0:
            raise RaydprmError("no Bradley-Terry pairs could be drawn (all items have the same reward?)")

    def batch_loss(self, model, train_module, idx, dev):
        sub = self.train_pairs.subset(idx)
        n = len(sub)
        enc = model.backbone.tokenize(sub.chosen_prompts + sub.rejected_prompts, sub.chosen + sub.rejected)
        s = train_module(enc["input_ids"].to(dev), enc["attention_mask"].to(dev))  # (2n,)
        per_pair, _ = self.loss_fn(s[:n], s[n:])  # BT: -log sigma(s_c - s_r), (n,)
        return reduce_pairs(per_pair)

    def evaluate(self, model):
        return self.metrics(model, self.eval_ex, self.scale, None, self.eval_pairs)

    @staticmethod
    def metrics(model, data: RewardExamples, scale: LabelScale, cost: torch.Tensor | None = None,
                pairs: PairExamples | None = None, batch_size: int = 64) -> dict[str, Any]:
        """Rank correlation of the score with the crowd's expected reward; on ``pairs`` the
        pairwise accuracy and the held-out Bradley-Terry loss."""
        target_er = (data.targets.double() @ scale.reward_tensor()).tolist()
        out: dict[str, Any] = {}
        s = model.score(data.prompts, data.responses, batch_size=batch_size)
        out["rank_corr"] = spearman(s.tolist(), target_er)
        if pairs is not None and len(pairs):
            sc = model.score(pairs.chosen_prompts, pairs.chosen, batch_size=batch_size)
            sr = model.score(pairs.rejected_prompts, pairs.rejected, batch_size=batch_size)
            out["pair_accuracy"] = float((sc - sr > 0).double().mean())
            out["bt_loss"] = float(reduce_pairs(pairwise_loss("bt")(sc, sr)[0]))
        return out

    @staticmethod
    def selection(metrics):
        return metrics.get("bt_loss", -metrics.get("rank_corr", 0.0))  # held-out BT loss


# reward.loss -> the objective that trains with it (the registry the loop dispatches on)
REWARD_OBJECTIVES: dict[str, type[RewardObjective]] = {
    **dict.fromkeys(DISTRIBUTIONAL_LOSSES, DistributionalObjective),
    "bt": PairwiseObjective,
}
LOSSES = tuple(REWARD_OBJECTIVES)
# reward-model kind -> its objective (evaluating a loaded checkpoint)
_OBJECTIVE_OF_KIND: dict[str, type[RewardObjective]] = {o.kind: o for o in (*REWARD_OBJECTIVES.values(),
                                                                            GroupObjective)}


def objective_for(reward_cfg) -> type[RewardObjective]:
    """The objective of ``reward.loss`` under ``reward.conditioning`` (group: the group-conditioned DPRM)."""
    if reward_cfg.loss not in REWARD_OBJECTIVES:
        raise RaydprmError(f"reward.loss = {reward_cfg.loss!r}; choose one of {', '.join(REWARD_OBJECTIVES)}")
    cls = REWARD_OBJECTIVES[reward_cfg.loss]
    if getattr(reward_cfg, "conditioning", "none") == "group":
        if cls is not DistributionalObjective:
            raise RaydprmError(f"reward.conditioning = 'group' needs a distributional loss "
                               f"({', '.join(DISTRIBUTIONAL_LOSSES)}), not reward.loss = {reward_cfg.loss!r}")
        return GroupObjective
    return cls


@torch.no_grad()
def evaluate_reward_model(model, data: RewardExamples, scale: LabelScale, cost: torch.Tensor,
                          pairs: PairExamples | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Held-out metrics of a DPRM or BT model (see ``reward_metrics``); BT gets pairwise ones."""
    objective = _OBJECTIVE_OF_KIND[getattr(model, "kind", DistributionalObjective.kind)]
    return objective.metrics(model, data, scale, cost, pairs, batch_size)


# --------------------------------------------------------------------------- training


@dataclass
class RewardTrainResult:
    """Where the trained model is and how it did."""

    best_dir: Path | None
    last_dir: Path | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    epochs: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    model: Any = field(default=None, repr=False)  # the final in-memory model (not necessarily the best)

    def to_dict(self) -> dict[str, Any]:
        return {"best_dir": str(self.best_dir) if self.best_dir else None,
                "last_dir": str(self.last_dir) if self.last_dir else None,
                "best_metrics": self.best_metrics, "steps": self.steps, "epochs": self.epochs,
                "stopped_early": self.stopped_early, "seconds": self.seconds, "history": self.history}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RewardTrainResult:
        """Inverse of :meth:`to_dict` (e.g. the ``result.json`` a remote run wrote); no model."""
        return cls(best_dir=Path(d["best_dir"]) if d.get("best_dir") else None,
                   last_dir=Path(d["last_dir"]) if d.get("last_dir") else None,
                   best_metrics=d["best_metrics"], history=d.get("history", []), steps=d["steps"],
                   epochs=d["epochs"], stopped_early=d["stopped_early"], seconds=d["seconds"])


def train_reward_kwargs(cfg, out_dir: str | os.PathLike[str] | None, progress: bool = True) -> dict[str, Any]:
    """The keyword arguments of :func:`train_reward` for a root ``Config`` (the one
    conversion: label scale, reward section, backbone and its loading options, seed,
    device); add the data and call ``train_reward(data, **kwargs)``."""
    return dict(scale=LabelScale.from_config(cfg.labels), reward_cfg=cfg.reward, backbone=cfg.models.reward_backbone,
                out_dir=out_dir, seed=cfg.run.seed, device=cfg.run.device, cache_dir=cfg.models.cache_dir or None,
                dtype=cfg.models.dtype, trust_remote_code=cfg.models.trust_remote_code, progress=progress)


def train_reward(data, *, scale: LabelScale, reward_cfg, backbone: str, out_dir: str | os.PathLike[str] | None,
                 seed: int = 0, device: str = "auto", cache_dir: str | None = None, dtype: str = "float32",
                 trust_remote_code: bool = False, eval_data: RewardExamples | None = None,
                 pairs: PairExamples | None = None, tb_dir: str | os.PathLike[str] | None = "default",
                 on_eval: Callable[[dict[str, Any]], None] | None = None,
                 progress: bool = True, init: Any = None) -> RewardTrainResult:
    """Train a reward model on ``data`` (a store export ``datasets.Dataset`` or
    :class:`RewardExamples`) with ``reward_cfg`` (a ``RewardConfig``).

    ``eval_data``: held-out items (default: a seeded ``reward.eval_fraction`` split).
    ``pairs``: explicit pairs for a pairwise loss (default: drawn from the crowd's label
    distributions of the training items, ``reward.bt_pairs_per_item`` per item).
    ``on_eval(record)`` is called on every rank after each evaluation (Ray Train reports
    from it). ``init``: fine-tune this reward model (a saved model's directory, or a model,
    which is copied) instead of a fresh one on ``backbone`` (the pipeline's refresh of the
    DPRM from the store). Returns a :class:`RewardTrainResult`; ``best_dir`` holds the best model.
    """
    t0 = time.perf_counter()
    rank, world = _dist_info()
    objective_cls = objective_for(reward_cfg)
    if not isinstance(data, RewardExamples):
        data = examples_from_dataset(data, scale.num_labels)
    if eval_data is None:
        train_ex, eval_ex = split_examples(data, reward_cfg.eval_fraction, seed)
    else:
        train_ex, eval_ex = data, eval_data
    eval_cost = resolve_cost(reward_cfg.cost, scale)
    objective = objective_cls(reward_cfg, scale, train_ex, eval_ex, eval_cost, seed, pairs)
    n_train = objective.n_train

    dev = select_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", torch.cuda.current_device())
    _seed_all(seed)
    if init is None:
        model = REWARD_MODELS[objective.kind].from_backbone(backbone, scale, reward_cfg.max_length, cache_dir, dtype,
                                                            trust_remote_code, seed=seed, **objective.model_kwargs())
    else:
        model = load_reward_model(init, scale, dtype=dtype) if isinstance(init, (str, os.PathLike)) \
            else copy.deepcopy(init)
        if model.kind == GroupObjective.kind and getattr(model, "groups", None) != getattr(objective, "groups", None):
            raise RaydprmError(f"the model to fine-tune has groups {model.groups}; the data has "
                               f"{getattr(objective, 'groups', None)}")
        if model.kind != objective.kind:
            raise RaydprmError(f"reward.loss = {reward_cfg.loss!r} trains a '{objective.kind}' reward model; the model "
                               f"to fine-tune is a '{model.kind}' one")
    model.to(dev)
    train_module: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_module = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=reward_cfg.lr, weight_decay=reward_cfg.weight_decay)

    bs = reward_cfg.batch_size
    if bs < world:
        raise RaydprmError(f"reward.batch_size = {bs} is smaller than reward.num_workers = {world}")
    steps_per_epoch = max(1, math.ceil(n_train / bs))
    total = steps_per_epoch * reward_cfg.epochs
    eval_every = reward_cfg.eval_every or steps_per_epoch
    out = Path(out_dir) if out_dir is not None else None
    tb = None
    if out is not None and tb_dir is not None:
        tb = out / "tb" if tb_dir == "default" else Path(tb_dir)
    log = _Logger(out, tb, active=rank == 0)
    best_dir = out / "best" if out is not None else None
    last_dir = out / "last" if out is not None else None

    history: list[dict[str, Any]] = []
    best_score, best_metrics, bad_evals, step, stopped = math.inf, {}, 0, 0, False
    rng = np.random.default_rng(seed)
    bar = tqdm(total=total, desc=f"reward[{reward_cfg.loss}]", disable=not progress or rank != 0,
               dynamic_ncols=True)
    epoch = 0
    try:
        for epoch in range(1, reward_cfg.epochs + 1):
            order = rng.permutation(n_train)  # same on every rank (same seed)
            for b in range(steps_per_epoch):
                batch = order[b * bs:(b + 1) * bs]
                if len(batch) < world:  # a short last batch: wrap around so that every rank gets an item
                    batch = np.concatenate([batch, order[:world - len(batch)]])
                idx = batch[rank::world]  # this rank's slice of the global batch
                model.train()
                loss = objective.batch_loss(model, train_module, idx, dev)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = None
                if reward_cfg.grad_clip > 0:
                    gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), reward_cfg.grad_clip))
                opt.step()
                step += 1
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    raise RaydprmError(f"reward training diverged at step {step} (loss = {lv}); lower reward.lr")
                scal = {"reward/train_loss": lv, "reward/lr": reward_cfg.lr, "reward/epoch": epoch}
                if gnorm is not None:
                    scal["reward/grad_norm"] = gnorm
                log.scalars(step, scal)
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.4f}", epoch=epoch)
                if step % eval_every == 0 or step == total:
                    with torch.no_grad():
                        metrics = objective.evaluate(model)
                    score = objective.selection(metrics)
                    improved = score < best_score - 1e-9
                    record = {"step": step, "epoch": epoch, "train_loss": lv, "eval": metrics,
                              "improved": improved}
                    history.append(record)
                    log.scalars(step, _flatten("reward/eval_", metrics))
                    if improved:
                        best_score, best_metrics, bad_evals = score, metrics, 0
                        if rank == 0 and best_dir is not None:
                            model.save(best_dir)
                    else:
                        bad_evals += 1
                    if rank == 0 and last_dir is not None:
                        model.save(last_dir)
                        torch.save({"optimizer": opt.state_dict(), "step": step, "epoch": epoch},
                                   last_dir / "trainer_state.pt")
                    if on_eval is not None:
                        on_eval(record)
                    if reward_cfg.patience and bad_evals >= reward_cfg.patience:
                        stopped = True
                        break
            if stopped:
                break
    finally:
        bar.close()
        log.close()
    result = RewardTrainResult(best_dir=best_dir, last_dir=last_dir, best_metrics=best_metrics, history=history,
                               steps=step, epochs=epoch, stopped_early=stopped,
                               seconds=time.perf_counter() - t0, model=model)
    if rank == 0 and out is not None:
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def load_examples_for_eval(data, scale: LabelScale) -> RewardExamples:
    """A store export or records -> examples (all of them: eval uses every item given)."""
    if isinstance(data, RewardExamples):
        return data
    return examples_from_dataset(data, scale.num_labels)


def evaluate_checkpoint(model_dir: str | os.PathLike[str], data, scale: LabelScale, cost: str = "reward_gap",
                        pairs_per_item: int = 4, seed: int = 0) -> dict[str, Any]:
    """Load a saved reward model and evaluate it on every item of ``data``."""
    ex = load_examples_for_eval(data, scale)
    model = load_reward_model(model_dir, scale)
    pairs = pairs_from_targets(ex, scale.rewards, pairs_per_item, seed) if model.kind == "bt" else None
    return evaluate_reward_model(model, ex, scale, resolve_cost(cost, scale), pairs)

