"""A deterministic split of items into train / held-out parts by their item id.

An item is held out when the hash of (seed, item id) falls below the fraction:

    heldout(i) = int(sha256(f"{seed}:{item_id}")[:8 bytes]) / 2**64 < fraction

so an item's side depends only on its own id, the seed and the fraction: never on the order
of the items, on which other items exist, or on the process (unlike ``hash()`` or a shuffle).
Items added later keep the others' sides; a larger fraction only moves items to held-out.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["heldout_mask", "split_items", "SPLITS"]

SPLITS = ("train", "heldout")


def _check(fraction: float, seed: int) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"heldout fraction must lie in [0, 1], got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"split seed must be an integer, got {seed!r}")


def heldout_mask(item_ids: Sequence[str], fraction: float, seed: int = 0) -> np.ndarray:
    """(I,) bool: True where the item is held out (see the module docstring)."""
    _check(fraction, seed)
    u = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big")
                  for i in item_ids], dtype=np.float64) / 2.0 ** 64  # (I,) uniform in [0, 1)
    return u < fraction


def split_items(item_ids: Sequence[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train ids, held-out ids), each in the given order."""
    m = heldout_mask(item_ids, fraction, seed)
    return [i for i, h in zip(item_ids, m) if not h], [i for i, h in zip(item_ids, m) if h]
