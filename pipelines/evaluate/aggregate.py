"""Judge scores -> the benchmarks' published aggregates, driven by the rubric's shape.

- OpenVE-Bench (``capped_by``): each score is capped by the instruction-compliance score
  (an edit that ignores the instruction cannot earn fidelity or quality for it);
  ``overall`` is the mean of the three capped scores, all on 1-5.
- ReCo-Bench (``groups``): each group is the geometric mean of its three 0-10 sub-scores
  (one zero zeroes the group), ``overall`` the arithmetic mean of the groups.
- VIE-Bench (neither): the 0-10 instruction-following and quality scores as given.

Keys are ``<rubric>.<name>`` so several rubrics fit one map column of the results table.
"""

from __future__ import annotations

import math

from sama.judging import Rubric


def geometric_mean(values: list[float]) -> float:
    if any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def aggregate(rubric: Rubric, scores: dict[str, float]) -> dict[str, float]:
    """Published aggregates of one validated answer's raw ``scores``."""
    name = rubric.task
    missing = [c for c in rubric.names() if c not in scores]
    if missing:
        raise KeyError(f"{rubric.version}: scores lack {missing}")
    if rubric.capped_by:
        cap = scores[rubric.capped_by]
        capped = {c: min(scores[c], cap) for c in rubric.names()}
        out = {f"{name}.{c}": v for c, v in capped.items()}
        out[f"{name}.overall"] = sum(capped.values()) / len(capped)
        return out
    if rubric.groups:
        groups = {g: geometric_mean([scores[c] for c in members]) for g, members in rubric.groups}
        out = {f"{name}.{g}": v for g, v in groups.items()}
        out[f"{name}.overall"] = sum(groups.values()) / len(groups)
        return out
    return {f"{name}.{c}": float(scores[c]) for c in rubric.names()}
