"""The one prefix matcher of lm: how many leading token ids two sequences share.

Every cache that is reused for a new prompt (lm.engine's, lm.spans', the slots and the prefix cache of
lm.serve) keeps the token ids whose keys and values it holds, and reuses the longest common prefix of those
and the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of a and b (lists or tuples of token ids)."""
    a, b = tuple(a), tuple(b)  # slices of two tuples compare in C; a list never equals a tuple
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]: bisect
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
