"""Where a run's crowd comes from, and the judge that evaluates its policies.

``pipeline.crowd = sim`` (the default): the simulated personas vote on world items and on the
SFT policy's samples, and the same personas judge the trained policies (exactly: each persona's
label distribution is known).

``pipeline.crowd = store``: the votes already in the store at ``store.path`` (e.g. an imported
real crowd, its rater groups as personas) are the crowd. Items are split by item id
(:func:`raydprm.store.heldout_mask`, ``pipeline.gold_fraction`` held out):
the reward model trains on the training part; a **gold judge** -- a second reward model of the
same kind (a DPRM with the run's reward settings, group-conditioned so that every rater group
judges), trained on the held-out part -- evaluates the policies, as in the proxy/gold setup of
reward-overoptimisation studies (Gao et al. 2023). The gold judge is a learned model, not people,
and the report says so.

Everything here runs on the driver, in the store actor or in one Ray task; the pipeline's
``_collect`` calls :func:`sim_collect` or :func:`store_collect_stage`, its ``_ppo``
:func:`ppo_prompts` (a store crowd's PPO samples the store's training prompts), its ``_evaluate``
an :class:`EvalJudge`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raydprm.cluster.stage_tasks import reward_task
from raydprm.config import Config
from raydprm.errors import RaydprmError

__all__ = ["GOLD_SPLIT_SEED", "sim_collect", "store_collect", "store_collect_stage", "group_labels", "export_digest",
           "ppo_prompts", "store_ppo_prompts", "gold_reward_config", "train_gold", "reward_fit", "gold_verdict", "JUDGE_DESCRIPTION", "EvalJudge"]

GOLD_SPLIT_SEED = 0  # the item-id split does not depend on the run's seed: every run holds out the same items
JUDGE_DESCRIPTION = ("a gold reward model (a group-conditioned DPRM of the same kind as the run's reward model) trained "
                     "on {items} held-out items of the store '{store}' that no policy's reward model saw; its verdicts "
                     "are a learned model's predictions of what the rater groups would say, not the raters' votes.")


def group_labels(data) -> dict[str, list[float]]:
    """Each group's own label distribution over the items of a store export: its votes summed
    over items, normalised (groups without votes are left out)."""
    out: dict[str, list[float]] = {}
    rows = data["persona_counts"] if len(data) else []
    totals: dict[str, np.ndarray] = {}
    for row in rows:
        for g, c in row.items():
            if c is not None:
                totals[g] = totals.get(g, 0) + np.asarray(c, dtype=np.float64)
    for g, t in totals.items():
        if float(np.sum(t)) > 0:
            out[g] = (t / t.sum()).tolist()
    return out


def export_digest(data) -> str:
    """The digest of a store export's (prompt, response, target) rows: what the reward stage reads."""
    rows = json.dumps([list(data[c]) for c in ("prompt", "response", "target")])
    return hashlib.sha256(rows.encode()).hexdigest()


def sim_prompts(cfg: Config) -> list[str]:
    """The world prompts whose SFT samples the simulated crowd votes on (half of ``crowd.n_items``)."""
    from raydprm.sim.world import prompts as world_prompts

    return world_prompts(cfg.crowd.n_items // 2, seed=cfg.run.seed + 7)


def sim_collect(cfg: Config, run_dir: Path, sampled: list[tuple[str, str]], *, placement: Any,
                bar: Callable[..., Any], rel: Callable[[str], str]) -> tuple[dict[str, Any], str]:
    """The collect stage of the simulated crowd: the personas vote on world items and on the SFT
    policy's ``sampled`` (prompt, response) pairs (so the reward model has seen the kind of text
    PPO will ask it to score), through the store actor (on ``placement``); the export is saved as
    ``collect/data``. Returns the stage's outputs (paths made relative by ``rel``) and its console line."""
    from raydprm.cluster.store_actor import StoreClient
    from raydprm.sim.personas import Population, simulated_items
    from raydprm.store import PreferenceStore

    store_path = cfg.store.path or str(run_dir / "store.db")
    if not cfg.store.path:  # a redone collect starts from an empty store, never adds to old votes
        for suffix in ("", "-wal", "-shm"):
            Path(store_path + suffix).unlink(missing_ok=True)
    n_policy = cfg.crowd.n_items // 2
    items = simulated_items(cfg.crowd.n_items - n_policy, seed=cfg.run.seed)
    items += [(p, text) for p, text in sampled if text.strip()]
    crowd = Population.from_config(cfg.crowd)
    votes = crowd.simulate_votes(items, cfg.crowd.votes_per_item, seed=cfg.run.seed)
    # the crowd's personas are the store's rater groups: registered before the store actor opens it
    PreferenceStore.from_config(cfg.store, cfg.labels, default_path=store_path, personas=crowd.names).close()
    store = StoreClient.create(cfg.store, cfg.labels, default_path=store_path, num_cpus=cfg.pipeline.store_num_cpus,
                               placement=placement)
    try:
        progress = bar(total=len(votes), desc="collect: votes", unit="vote")
        for i in range(0, len(votes), 1000):
            store.add_votes(votes[i:i + 1000])
            progress.update(len(votes[i:i + 1000]))
        progress.close()
        # targets under reward.group_weights when given (the population crowd DPO and the metrics see)
        data, n_votes = store.export(dict(cfg.reward.group_weights) or None, cfg.store.smoothing), store.count_votes()
    finally:
        store.shutdown()
    data_dir = run_dir / "collect" / "data"
    data.save_to_disk(str(data_dir))
    msg = f"  {n_votes} votes on {len(data)} items ({len(items) - n_policy} world, SFT samples) -> {store_path}"
    return {"store": rel(store_path), "votes": n_votes, "items": len(data), "data": rel(str(data_dir)),
            "group_labels": group_labels(data), "digest": export_digest(data)}, msg


def store_collect(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """The collect stage of a store crowd: export the store (read-only), split its items by id,
    save ``collect/data`` (training part) and ``collect/heldout`` (the gold judge's part)."""
    from raydprm.store import PreferenceStore, heldout_mask

    with PreferenceStore.from_config(cfg.store, cfg.labels, readonly=True) as store:
        data, n_votes = store.export(dict(cfg.reward.group_weights) or None, cfg.store.smoothing), store.count_votes()
    if len(data) < 4:
        raise RaydprmError(f"store '{cfg.store.path}' has {len(data)} items with votes; a run on a store needs at "
                           "least 4 (some to train the reward model on, some for the gold judge)")
    held = heldout_mask(data["item_id"], cfg.pipeline.gold_fraction, GOLD_SPLIT_SEED)
    if held.all() or not held.any():  # a tiny store: move one item across so that both parts exist
        held[0] = not held[0]
    train, heldout = data.select(np.flatnonzero(~held)), data.select(np.flatnonzero(held))
    out = {}
    for name, part in (("data", train), ("heldout", heldout)):
        d = run_dir / "collect" / name
        part.save_to_disk(str(d))
        out[name] = str(d)
    return {"votes": n_votes, "items": len(train), "heldout_items": len(heldout), "paths": out,
            "group_labels": group_labels(train), "heldout_group_labels": group_labels(heldout),
            "digest": hashlib.sha256((export_digest(train) + export_digest(heldout)).encode()).hexdigest()}


def store_collect_stage(cfg: Config, run_dir: Path, rel: Callable[[str], str]) -> tuple[dict[str, Any], str]:
    """The collect stage's outputs (paths made relative by ``rel``) and its console line, for a store crowd."""
    out = store_collect(cfg, run_dir)
    msg = (f"  {out['votes']} votes from {cfg.store.path}: {out['items']} items to train on, "
           f"{out['heldout_items']} held out for the gold judge; groups {', '.join(out['group_labels'])}")
    return {"store": rel(cfg.store.path), "votes": out["votes"], "items": out["items"],
            "heldout_items": out["heldout_items"], "data": rel(out["paths"]["data"]),
            "heldout": rel(out["paths"]["heldout"]), "group_labels": out["group_labels"],
            "heldout_group_labels": out["heldout_group_labels"], "digest": out["digest"]}, msg


def store_ppo_prompts(data, tokenizer, max_prompt_tokens: int, total: int, seed: int) -> tuple[list[str], int, int]:
    """PPO's prompts with a store crowd: the distinct prompts of the store's training part ``data``
    that the generators accept (at most ``max_prompt_tokens`` tokens, counted as the engines count
    them: :func:`~raydprm.rollout.engine.encode_prompts`), ``total`` of them in a seeded order, a
    fresh order per pass. Returns (prompts, distinct prompts kept, distinct prompts dropped)."""
    from raydprm.rollout.engine import encode_prompts

    distinct = list(dict.fromkeys(data["prompt"]))
    ids = encode_prompts(tokenizer, distinct, max_prompt_tokens=sys.maxsize)
    kept = [p for p, t in zip(distinct, ids, strict=True) if len(t) <= max_prompt_tokens]
    if not kept:
        raise RaydprmError(f"none of the {len(distinct)} prompts of the store's training part fits in "
                           f"rollout.max_prompt_tokens={max_prompt_tokens} (the shortest has "
                           f"{min(map(len, ids), default=0)} tokens); raise rollout.max_prompt_tokens")
    rng, out = np.random.default_rng(seed), []
    while len(out) < total:
        out += [kept[i] for i in rng.permutation(len(kept))]
    return out[:total], len(kept), len(distinct) - len(kept)


def ppo_prompts(cfg: Config, policy_dir: str, data_dir: str, total: int) -> tuple[list[str], dict[str, int], str | None]:
    """The ``total`` prompts PPO samples, step t's ``n`` at ``[t*n, (t+1)*n)`` (the data position is the
    step): the world's (``crowd = sim``), or the store's training part (:func:`store_ppo_prompts`, the
    prompts its reward model learned to score; ``data_dir``: the collect stage's ``data``). Also the
    PPO stage's record entries and its console line ({} and None for the world's)."""
    if cfg.pipeline.crowd == "sim":
        from raydprm.sim.world import prompts as world_prompts

        return world_prompts(total, seed=cfg.run.seed + 1), {}, None
    import datasets

    from raydprm.models.policy import load_tokenizer

    m = cfg.rollout.max_prompt_tokens
    prompts, kept, dropped = store_ppo_prompts(datasets.load_from_disk(data_dir), load_tokenizer(policy_dir), m,
                                               total, seed=cfg.run.seed + 1)
    return prompts, {"prompts": kept, "prompts_dropped": dropped}, \
        f"  PPO samples {kept} prompts of the store's training part; {dropped} dropped (over {m} tokens)"


def gold_reward_config(cfg: Config):
    """The gold judge's reward settings: the run's, group-conditioned, objective ``population``
    (a judge reports what each group says; it optimises nothing), a distributional loss (OT if the
    run's reward model is Bradley-Terry), scored under the held-out vote shares."""
    r = cfg.reward
    return dataclasses.replace(r, conditioning="group", objective="population", group_weights={},
                               loss=r.loss if r.loss != "bt" else "ot")


def train_gold(cfg: Config, heldout_dir: str, data_digest: str, out_dir: Path,
               task_options: dict[str, Any]) -> dict[str, Any]:
    """Train the gold judge on the held-out part (once: a gold model whose inputs are unchanged is reused)."""
    key = hashlib.sha256(json.dumps({"reward": dataclasses.asdict(gold_reward_config(cfg)),
                                     "labels": cfg.to_dict()["labels"], "seed": cfg.run.seed,
                                     "backbone": cfg.models.reward_backbone, "data": data_digest},
                                    sort_keys=True, default=str).encode()).hexdigest()
    done = out_dir / "gold.json"
    if done.is_file():
        rec = json.loads(done.read_text())
        if rec.get("key") == key and Path(rec["best_dir"]).is_dir():
            return rec
    gold_cfg = dataclasses.replace(cfg, reward=gold_reward_config(cfg))  # the run's reward training, gold settings
    out = ray.get(reward_task.options(**task_options).remote(gold_cfg, heldout_dir, str(out_dir)))
    rec = {"key": key, **out}
    done.write_text(json.dumps(rec, default=str))
    return rec


def reward_fit(model_dir: str, heldout, cfg: Config) -> dict[str, dict[str, float]]:
    """Per-group held-out fit (OT under reward.cost, W1, CE, ECE, reward error) of a trained reward
    model on held-out items; {} for a model without label distributions (Bradley-Terry)."""
    from raydprm.core.label_scale import LabelScale
    from raydprm.models.reward_models import load_reward_model
    from raydprm.train.reward import evaluate_reward_model, resolve_cost
    from raydprm.train.reward_data import examples_from_dataset

    scale = LabelScale.from_config(cfg.labels)
    model = load_reward_model(model_dir, scale)
    if model.kind == "bt":
        return {}
    ex = examples_from_dataset(heldout, scale.num_labels)
    return evaluate_reward_model(model, ex, scale, resolve_cost(cfg.reward.cost, scale)).get("persona", {})


def gold_verdict(report: dict[str, Any]) -> str:
    """One paragraph: which policy the judge rates highest, and which differences to vanilla are
    resolved (95% interval excludes 0), population-wide and for the worst group."""
    pol = report["policies"]
    best = max(pol, key=lambda n: pol[n]["expected_reward"])
    parts = [f"The judge rates {best} highest (E[r] {pol[best]['expected_reward']:.3f} "
             f"[{pol[best]['expected_reward_ci95'][0]:.3f}, {pol[best]['expected_reward_ci95'][1]:.3f}])."]
    for key, h in report.get("head_to_head", {}).items():
        d = h.get("expected_reward_diff")
        if not d or not key.endswith("_vs_vanilla"):
            continue
        lo, hi = d["ci95"]
        word = "better than" if lo > 0 else "worse than" if hi < 0 else "not resolved from"
        parts.append(f"{key.replace('_vs_vanilla', '')} is {word} vanilla by {d['mean']:+.3f} [{lo:.3f}, {hi:.3f}].")
    for n, p in pol.items():
        if "worst_group" in p:
            w = p["worst_group"]
            parts.append(f"{n}: worst group {w['group']} at {w['expected_reward']:.3f}, disparity {p['disparity']:.3f}.")
    return " ".join(parts)


class EvalJudge:
    """The evaluate stage's judge and the prompts it judges on: the simulated population on the
    world's evaluation prompts (``crowd = sim``), or the learned gold judge on the held-out items'
    prompts (``crowd = store``: it knows their kind of text). ``reference`` is each group's own
    label distribution for the report (of the training items, or of the held-out items the gold
    judge learned from). ``col`` is the collect stage's outputs, paths relative to ``run_dir``."""

    def __init__(self, cfg: Config, run_dir: Path, col: dict[str, Any]) -> None:
        from raydprm.cluster.run_plan import eval_prompts

        self.cfg, self.run_dir, self.col = cfg, run_dir, col
        self.heldout = None
        if cfg.pipeline.crowd == "store":
            import datasets

            self.heldout = datasets.load_from_disk(str(run_dir / col["heldout"]))
            self.prompts = list(dict.fromkeys(self.heldout["prompt"]))[:cfg.pipeline.eval_prompts]
        else:
            self.prompts = eval_prompts(cfg)
        self.reference = col.get("group_labels" if self.heldout is None else "heldout_group_labels")
        self.gold: dict[str, Any] | None = None
        self._model: Any = None

    def load(self, task_options: dict[str, Any]) -> None:
        """Make the judge ready: the population, or the gold judge trained once on the held-out items
        (a Ray task with ``task_options``; a gold model whose inputs are unchanged is reused)."""
        from raydprm.models.dprm import label_scale_from_config
        from raydprm.models.reward_models import load_reward_model
        from raydprm.sim.personas import Population

        cfg = self.cfg
        if self.heldout is None:
            self._model = Population.from_config(cfg.crowd)
            return
        self.gold = train_gold(cfg, str(self.run_dir / self.col["heldout"]), self.col["digest"],
                               self.run_dir / "gold", task_options)
        self._model = load_reward_model(self.gold["best_dir"], label_scale_from_config(cfg.labels))

    def __call__(self, texts: list[list[str]], kl: np.ndarray | None = None):
        """The verdict (:class:`raydprm.evaluate.judge.Judged`) on ``texts[s][n]``, the answer to prompt n under seed s."""
        from raydprm.evaluate.judge import judge_samples, judge_with_model

        if self.heldout is None:
            return judge_samples(self._model, self.cfg.labels.rewards, self.prompts, texts, kl=kl)
        return judge_with_model(self._model, self.prompts, texts, kl=kl)

    def report_blocks(self, report: dict[str, Any], rewards: dict[str, tuple[dict[str, Any] | None, Config]],
                      rel: Callable[[str], str]) -> dict[str, Any]:
        """The report's ``reward_fit`` (when any) and, for the gold judge, its ``judge`` block.
        ``rewards``: each trained reward model's name -> (its reward stage's record or None, its config).
        A model's per-group held-out fit is measured on the gold judge's held-out items with a store
        crowd, else read from the reward stage's own held-out split."""
        fit = {}
        for name, (rec, cfg) in rewards.items():
            if rec is None:
                continue
            out = rec["outputs"]
            if self.heldout is not None:
                per = reward_fit(str(self.run_dir / out["best_dir"]), self.heldout, cfg)
            else:
                per = out.get("best_metrics", {}).get("persona", {})
            if per:
                fit[name] = per
        blocks: dict[str, Any] = {"reward_fit": fit} if fit else {}
        if self.gold is not None:
            n, gold = len(self.heldout), self.gold
            blocks["judge"] = {"kind": "gold_model", "learned_model": True, "model": rel(gold["best_dir"]),
                               "heldout_items": n, "fit": gold["best_metrics"].get("persona", {}),
                               "description": JUDGE_DESCRIPTION.format(items=n, store=self.cfg.store.path),
                               "verdict": gold_verdict(report)}
        return blocks
