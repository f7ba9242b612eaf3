"""What each stage of a run reads, declared once: its stage key is built from these config
fields and inputs only, so a change elsewhere leaves the stage done.

A stage reads whole sections (``"ppo.*"``) or single fields (``"models.policy"``); a section
read minus the fields of :data:`OPERATIONAL`, which say where or how long something runs
(CPUs per actor, replicas, batch layout, timeouts, transports whose result is verified bitwise)
but never what is computed. A field added to a read section later counts as read until it is
declared operational: an unneeded rerun is safe, a wrongly skipped stage is not. Some fields
are read only when a gate field is set (the drift keys when ``pipeline.live_votes > 0``, a
comparison's policies and seeds when ``pipeline.policies`` is not empty).

``KEY_VERSION`` names this scheme; a run directory whose records were keyed otherwise (whole
sections, SHA-256 directory digests) cannot be matched stage by stage, so ``--resume`` refuses
it in one line (:func:`check_key_version`) instead of silently redoing every stage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydprm.cluster.drift import DRIFT_KEYS
from raydprm.cluster.run_state import stage_key
from raydprm.errors import RaydprmError

__all__ = ["KEY_VERSION", "NOT_READ", "OPERATIONAL", "READS", "Reads", "check_key_version", "key_of", "read_fields",
           "stage_config"]

KEY_VERSION = 2

# Fields that change where, with how many processes or how long a stage runs, never its numbers:
# sampling is seeded per (prompt, sample), so the tokens are the same whatever the replicas and batch
# layout (rollout.sampling.request_seed; their logprobs are not bit for bit, so PPO reads the layout
# when it trains on them); a weight sync is probed against the learner's logprobs whatever its transport.
OPERATIONAL = frozenset({
    "rollout.num_replicas", "rollout.num_cpus", "rollout.batch_size", "rollout.vllm_multiprocessing",
    "rollout.gpu_memory_utilization", "rollout.kv_cache_memory_mb", "rollout.weight_sync", "rollout.sync_timeout_s",
    "rollout.bucket_mb", "rollout.probe_tolerance", "rollout.probe_length",
    "reward.num_replicas", "reward.actor_num_cpus", "reward.model_dir",
    "engine.num_cpus_per_worker", "engine.dist_timeout_s", "engine.ds_jit_ops",
    "store.synchronous", "store.max_text_chars",
})

# Fields no stage reads, beyond OPERATIONAL: where the run lives and logs, where tiny models are cached,
# checkpoint cadence (a resume is exact), placement, and the sections of other commands. A test fails
# when a field is in neither a stage's reads nor here, so a new field gets declared where it belongs.
NOT_READ = frozenset({
    "serve.*", "ray.*", "run.name", "run.output_dir", "run.device", "run.log_level", "models.cache_dir",
    "models.tokenizer", "models.trust_remote_code", "pipeline.checkpoint_every", "pipeline.keep_checkpoints",
    "pipeline.layout", "pipeline.placement_timeout_s", "pipeline.store_num_cpus",
    "run.loggers", "run.tracking_uri", "run.experiment",  # where metrics are logged (declared before they land)
})

# what PPO maximises over a group-conditioned reward model's groups (reward.objective*): PPO's readout only
_GROUP_OBJECTIVE = ("reward.objective", "reward.objective_tau", "reward.objective_alpha", "reward.objective_kappa")
_ROLLOUT = ("rollout.*", "models.dtype")  # a pool of generators samples: what and with which weights' dtype
# where the crowd's votes come from (simulated or a store's) and the gold judge's share: every stage after SFT
_CROWD_SOURCE = ("pipeline.crowd", "pipeline.gold_fraction")
# vLLM batches requests as its scheduler and KV cache allow: no promise of the same tokens across layouts
_VLLM_LAYOUT = ("rollout.engine=vllm", ("rollout.num_replicas", "rollout.batch_size", "rollout.gpu_memory_utilization",
                                        "rollout.kv_cache_memory_mb", "rollout.vllm_multiprocessing"))


@dataclass(frozen=True)
class Reads:
    """The config fields (``section.*`` or ``section.field``) and the named inputs a stage reads;
    ``gated``: (gate, fields read only when the gate holds: ``section.field`` is truthy, or
    ``section.field=value`` equals ``value``); ``unread``: fields
    of a section read that this stage does not read (besides :data:`OPERATIONAL`)."""

    fields: tuple[str, ...]
    inputs: tuple[str, ...]
    gated: tuple[tuple[str, tuple[str, ...]], ...] = ()
    unread: tuple[str, ...] = ()


READS: dict[str, Reads] = {
    # the tiny policy learns the world: its model and the SFT settings (never the reward backbone)
    "sft": Reads(("run.seed", "models.policy", "sft.*"), ()),
    # the SFT policy samples, the crowd votes, the store exports
    # (reward.group_weights: the export's targets are that mixture of the groups, crowd DPO's P(a > b))
    "collect": Reads(("run.seed", *_ROLLOUT, "crowd.*", "store.*", "labels.*", *_CROWD_SOURCE,
                      "reward.group_weights"), ("sft",),
                     (_VLLM_LAYOUT,)),
    # the reward model trains on the export (the scalar readout is PPO's, not training's: the group
    # objectives weigh a group-conditioned model's per-group rewards when PPO scores, never in training)
    "reward": Reads(("run.seed", "models.reward_backbone", "reward.*", "labels.*", *_CROWD_SOURCE), ("data",),
                    unread=("reward.scalar", "reward.cvar_alpha", "reward.kappa", *_GROUP_OBJECTIVE)),
    # PPO: the generators sample, the reward replicas score (reward.* of the readout; the model is an
    # input), the learner trains, the population's E[r] of every step is recorded
    "ppo": Reads(("run.seed", *_ROLLOUT, "ppo.*", "engine.*", "reward.*", "labels.*", "crowd.*", "pipeline.live_votes",
                  *_CROWD_SOURCE),
                 ("sft", "reward"),
                 (("pipeline.live_votes", tuple(f"pipeline.{k}" for k in DRIFT_KEYS) + ("store.*",)),
                  # the engines' logprobs (equal tokens, float rounding of the batch layout) become PPO's
                  ("ppo.use_rollout_logprobs", ("rollout.num_replicas", "rollout.batch_size")), _VLLM_LAYOUT)),
    # direct alignment: its loss and optimisation (align.*) on the learner group's engine (engine.*)
    "align": Reads(("run.seed", "align.*", "engine.*", "labels.*"), ("sft", "data")),
    # every policy and the SFT policy sample the held-out prompts; the population judges
    "evaluate": Reads(("run.seed", *_ROLLOUT, "crowd.*", "labels.*", "pipeline.eval_prompts", "pipeline.eval_seeds",
                       "pipeline.bootstrap", "pipeline.tie_margin", "pipeline.policies", *_CROWD_SOURCE),
                      ("sft", "policy"),
                      (("pipeline.policies", ("pipeline.seeds", "ppo.steps", "align.steps")), _VLLM_LAYOUT)),
}


def _kind(stage: str) -> str:
    """``<name>/seed<k>/ppo`` -> ``ppo``."""
    return stage.rsplit("/", 1)[-1]


def read_fields(stage: str, c: Mapping[str, Any]) -> list[str]:
    """The dotted config fields ``stage`` reads under the config dict ``c`` (``Config.to_dict()``); a
    declared field this config does not have (an older or newer raydprm's) is left out."""
    reads = READS[_kind(stage)]
    specs = list(reads.fields)
    for gate, more in reads.gated:
        field, _, want = gate.partition("=")
        sec, name = field.split(".", 1)
        value = c[sec].get(name)
        if (str(value) == want) if want else value:
            specs += more
    out: list[str] = []
    for spec in specs:
        sec, name = spec.split(".", 1)
        if name == "*":
            names = [f"{sec}.{k}" for k in c[sec] if f"{sec}.{k}" not in OPERATIONAL | set(reads.unread)]
        else:
            names = [spec] if name in c[sec] else []
        out += [n for n in names if n not in out]
    return sorted(out)


def stage_config(stage: str, c: Mapping[str, Any]) -> dict[str, Any]:
    """``{dotted field: value}`` of what ``stage`` reads (the record's ``config``), with the key scheme."""
    out: dict[str, Any] = {"key_version": KEY_VERSION}
    for f in read_fields(stage, c):
        sec, name = f.split(".", 1)
        out[f] = c[sec][name]
    return out


def key_of(stage: str, c: Mapping[str, Any], inputs: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """(stage key, the config it hashes). ``inputs`` must be exactly the stage's declared inputs (an
    evaluate's ``policy`` inputs are named ``<prefix>policy``, one per trained policy)."""
    declared = set(READS[_kind(stage)].inputs)
    names = {n.rsplit("/", 1)[-1] for n in inputs}
    if names - declared:
        raise ValueError(f"stage {stage!r} declares inputs {sorted(declared)}, got {sorted(inputs)}")
    config = stage_config(stage, c)
    return stage_key(stage, config, inputs), config


def check_key_version(run_dir: str | Path) -> None:
    """Refuse, in one line, to resume a run directory whose finished stages were keyed by an older
    scheme (their keys can never match, so every stage would silently run again)."""
    run_dir = Path(run_dir)
    p = run_dir / "state.json"
    if not p.is_file():
        return
    for stage in json.loads(p.read_text()).get("stages", {}):
        rec_path = run_dir / stage / "record.json"
        if not rec_path.is_file():
            continue
        rec = json.loads(rec_path.read_text())
        if rec.get("config", {}).get("key_version") != KEY_VERSION:
            raise RaydprmError(
                f"run directory '{run_dir}' was written by an older raydprm (stage '{stage}' keyed by whole config "
                f"sections and SHA-256 digests, not stage key v{KEY_VERSION}): its stages cannot be matched; start a "
                "new run (run.name=<another name>) with this version or resume it with the version that wrote it")
