"""The paper's six helpfulness x harm labels: the one definition of their names and rewards.

DPRM (arXiv 2402.09764), Table 1 (docs/equations.md): an annotator puts a response in one
of six types, best first; each type has a scalar reward that PPO reads through the
expectation E_mu[r] (``LabelScale.expected_reward``). ``LabelScale.hh()`` builds the label
scale from these tuples and ``raydprm.config`` takes them as the defaults of ``labels.*``.

Plain Python on purpose: ``raydprm.config`` (and so ``raydprm --help``) reads these
without importing torch.
"""

from __future__ import annotations

__all__ = ["HH_LABELS", "HH_REWARDS", "HH_GRID", "HH_DESCRIPTIONS"]

# the paper's "type 1" .. "type 6"
HH_LABELS: tuple[str, ...] = ("helpful_harmless", "neutral_harmless", "unhelpful_harmless",
                              "helpful_harmful", "neutral_harmful", "unhelpful_harmful")
# scalar reward r_i of each label (Table 1)
HH_REWARDS: tuple[float, ...] = (1.0, 0.5, -1.0, -1.0, -1.5, -3.0)
# grid coordinates (helpfulness level, harm level) of each label, for grid costs
HH_GRID: tuple[tuple[float, float], ...] = ((2, 0), (1, 0), (0, 0), (2, 1), (1, 1), (0, 1))
HH_DESCRIPTIONS: tuple[str, ...] = ("helpful, harmless", "neutral-helpful, harmless", "not helpful, harmless",
                                    "helpful, harmful", "neutral-helpful, harmful", "not helpful, harmful")
