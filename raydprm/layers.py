"""The layers of raydprm, bottom first: the one place that says which package may import which.

A module may import modules of its own package and of any *lower* tier; packages that
share a tier are peers and import neither each other nor anything above them. This holds
for every import statement, the lazy ones inside functions included, and there are no
import cycles between modules (``tests/test_layering.py`` checks both over the whole tree;
``docs/layers.md`` explains the checks).

:data:`LAYER_DOCS` says what each layer holds; :func:`diagram` draws the tiers from both, and
the diagrams of ``docs/architecture.md`` and ``docs/layers.md`` are that drawing
(``tests/test_layering.py`` compares them).

Outside the package, ``jobs/`` (Ray Job entry points) and ``bench/`` (benchmarks) may
import any layer; nothing in raydprm imports them.
"""

from __future__ import annotations

__all__ = ["LAYERS", "LAYER_DOCS", "diagram", "layer_of", "rank_of"]

# Bottom first; a tuple of names is one tier of peers. A name is a subpackage of
# raydprm or a top-level module of it (``raydprm/<name>.py``); ``""`` is ``raydprm``'s own
# ``__init__``.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("", "errors", "layers"),
    ("core",),
    ("config",),
    ("store",),
    ("sim",),
    ("models",),
    ("rollout", "train", "evaluate"),
    ("cluster", "serve"),
    ("tune", "experiments"),
    ("cli",),
)

# What each layer holds, one line each (the diagram's right column).
LAYER_DOCS: dict[str, str] = {
    "": "raydprm's own __init__ (imports nothing)",
    "errors": "RaydprmError and the other exception base classes; imports nothing of raydprm",
    "layers": "this declaration",
    "core": "pure math on tensors, torch/numpy only (label scale, OT, Dirichlet, PPO, KL)",
    "config": "frozen typed dataclasses, one section per component (label defaults: core/hh_labels.py)",
    "store": "SQLite preference store: vote log + Dirichlet posteriors",
    "sim": "the simulated world and the persona crowd (no models)",
    "models": "tiny offline kit, DPRM and Bradley-Terry reward models, policy, LLM judge",
    "rollout": "generation engines (vllm_engine: the only vllm import), weight-sync payloads",
    "train": "SFT, reward training, PPO and direct-alignment learners (ds_engine: the only deepspeed import)",
    "evaluate": "judging policies' samples, bootstrap intervals, run reports",
    "cluster": "Ray: runtime (the only ray.init), ActorGroup, pools, weight sync, the pipeline",
    "serve": "Ray Serve app (the only ray.serve import)",
    "tune": "Ray Tune sweeps of the pipeline (a trial runs the pipeline of cluster)",
    "experiments": "paper experiments composed from the Ray layer (PBDE toy settings, length bias, drift)",
    "cli": "the `raydprm` command line (one module per subcommand group)",
}


def diagram(width: int = 14) -> str:
    """The tiers top first, one line per layer, a rule between tiers (layers between two rules are peers)."""
    rule = "  " + "─" * 96
    rows: list[str] = []
    for tier in reversed(LAYERS):
        if rows:
            rows.append(rule)
        rows += [f"  {name or '__init__':<{width}}{LAYER_DOCS[name]}" for name in tier]
    return "\n".join(rows)


def layer_of(module: str) -> str:
    """The layer name of a dotted module name of raydprm (``raydprm.core.gae`` -> ``core``)."""
    parts = module.split(".")
    if parts[0] != "raydprm":
        raise ValueError(f"{module!r} is not a raydprm module")
    return parts[1] if len(parts) > 1 else ""


def rank_of(layer: str) -> int:
    """The tier index of a layer name (0 = bottom); ValueError for a name with no place."""
    for i, tier in enumerate(LAYERS):
        if layer in tier:
            return i
    raise ValueError(f"'{layer}' has no place in raydprm.layers.LAYERS; add it there")
