"""Deterministic pairwise (all-pairs) case generation shared by the test files."""
from __future__ import annotations

from itertools import combinations


def pairwise(factors: dict[str, list]) -> list[dict]:
    """A small list of cases in which every pair of values of every two factors appears.

    Greedy and deterministic: start each case from the first uncovered pair, then give each
    remaining factor the value that covers the most uncovered pairs.
    """
    names = list(factors)
    uncovered = {(i, a, j, b)
                 for i, j in combinations(range(len(names)), 2)
                 for a in range(len(factors[names[i]]))
                 for b in range(len(factors[names[j]]))}
    cases = []
    while uncovered:
        i, a, j, b = min(uncovered)
        chosen = {i: a, j: b}
        for k in range(len(names)):
            if k in chosen:
                continue

            def gain(v, k=k):
                return sum(((min(k, m), v if k < m else c, max(k, m), c if k < m else v) in uncovered)
                           for m, c in chosen.items())
            chosen[k] = max(range(len(factors[names[k]])), key=gain)
        for p, q in combinations(sorted(chosen), 2):
            uncovered.discard((p, chosen[p], q, chosen[q]))
        cases.append({names[k]: factors[names[k]][v] for k, v in chosen.items()})
    return cases
