"""The layers of raydprm, bottom first: the one place that says which package may import which.

A module may import modules of its own package and of any *lower* tier; packages that
share a tier are peers and import neither each other nor anything above them. This holds
for every import statement, the lazy ones inside functions included, and there are no
import cycles between modules (``tests/test_layering.py`` checks both over the whole tree;
``docs/layers.md`` explains the checks).

* ``errors`` (and this file): the exception base classes; import nothing of raydprm.
* ``core``: pure math on tensors, torch/numpy only (the label scale, OT, Dirichlet, PPO).
* ``config``: the typed config tree; reads label defaults from ``core.label_scale``.
* ``store``: the preference store (sqlite + Dirichlet posteriors).
* ``sim``: the simulated world and crowd (no models).
* ``models``: the tiny kit, the reward models, the policy; the LLM judge (it loads one).
* ``rollout`` | ``train`` | ``evaluate``: generation engines and weight sync | trainers (reward,
  SFT, PPO) | judging policies' samples, bootstrap intervals, run reports.
* ``cluster`` | ``serve``: the Ray layer (actors and the pipeline, HTTP serving); ``doctor``, their
  peer without Ray: the GPU acceptance check (rollout + train paths on one machine).
* ``tune`` | ``experiments``: runs that compose the Ray layer (a Tune trial runs the
  pipeline of ``cluster``, so tuning sits above it).
* ``cli``: the ``raydprm`` command (imports anything below it).

Outside the package, ``jobs/`` (Ray Job entry points) and ``bench/`` (benchmarks) may
import any layer; nothing in raydprm imports them.
"""

from __future__ import annotations

__all__ = ["LAYERS", "layer_of", "rank_of"]

# Bottom first; a tuple of names is one tier of peers. A name is a subpackage of
# raydprm or a top-level module of it (``raydprm/<name>.py``); ``""`` is ``raydprm``'s own
# ``__init__``. A package not written yet (``experiments``) has its place already.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("", "errors", "layers"),
    ("core",),
    ("config",),
    ("store",),
    ("sim",),
    ("models",),
    ("rollout", "train", "evaluate"),
    ("cluster", "serve", "doctor"),
    ("tune", "experiments"),
    ("cli",),
)


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
