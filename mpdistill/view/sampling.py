"""Which samples a page carries the texts of.

A long run has far more samples than a browser can hold the texts of, so the page carries the
texts of at most ``cap`` samples, drawn reproducibly (a fixed seed) and spread out: the budget is
shared equally among the strata (rejection reasons; benchmark and verdict for evaluations), a
stratum smaller than its share giving the rest to the others, and within a stratum the samples
are taken one from each of equal stretches of the file, so they cover the whole run.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Hashable, Sequence

SEED = 0


def choose_texts(strata: Sequence[Hashable], cap: int, *, first: Collection[int] = (), seed: int = SEED) -> list[int]:
    """Indices (sorted) of at most ``cap`` samples whose texts go on the page.

    ``strata[i]`` is sample ``i``'s stratum, samples in file order. ``first`` are taken before any
    other when they all fit (a run's most recent step, the problems whose answer flipped).
    """
    n = len(strata)
    if cap >= n:
        return list(range(n))
    chosen = set(first) if len(first) <= cap else set()
    members: dict[Hashable, list[int]] = {}
    for i, stratum in enumerate(strata):
        if i not in chosen:
            members.setdefault(stratum, []).append(i)
    rng = random.Random(seed)
    budget = cap - len(chosen)
    # Smallest strata first, so what they cannot use passes on; ties in a fixed order.
    order = sorted(members, key=lambda s: (len(members[s]), repr(s)))
    for left, stratum in enumerate(order):
        share = min(len(members[stratum]), budget // (len(order) - left))
        chosen.update(_spread(members[stratum], share, rng))
        budget -= share
    return sorted(chosen)


def _spread(indices: list[int], k: int, rng: random.Random) -> list[int]:
    """``k`` of ``indices``: one drawn from each of ``k`` equal stretches of the list."""
    m = len(indices)
    return [indices[rng.randrange(j * m // k, (j + 1) * m // k)] for j in range(k)]
