"""The fairness-mitigated decision: one score threshold per group of the sensitive attributes.

``GroupRule`` is what a mitigated model version stores and what serving applies after scoring
(its thresholds as plain data, a fallback group ``__other__`` for cells too small to get a rule of
their own). ``group_keys`` names each row's group: the intersection of all sensitive attributes.
Found by the search in :mod:`rtml.evaluate.fairsearch`; light to import (numpy, pandas inside).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

OTHER = "__other__"  # the pooled group of the cells too small to get a rule of their own

NEVER, ALWAYS = 2.0, -1.0  # thresholds outside [0, 1]: select no row / every row of the group


def group_keys(sensitive: pd.DataFrame) -> np.ndarray:
    """One key per row: the intersection of all sensitive attributes ("age_group=45+ & marital_status=single")."""
    import numpy as np

    cols = list(sensitive.columns)
    if not cols:
        return np.full(len(sensitive), OTHER, dtype=object)
    keys = f"{cols[0]}=" + sensitive[cols[0]].astype(str).reset_index(drop=True)
    for c in cols[1:]:
        keys = keys + " & " + f"{c}=" + sensitive[c].astype(str).reset_index(drop=True)
    return keys.to_numpy(dtype=object)


class GroupRule:
    """Deterministic group-specific decisions: label 1 when ``score >= thresholds[group]``.

    fairlearn's ThresholdOptimizer decides at random: a row of group g is selected with probability
    ``p0*[s > t0] + p1*[s > t1]`` (its ``_pmf_predict``). A served decision must depend neither on
    randomness nor on the row's place in a batch, so each group gets ONE threshold: the score above
    which the optimizer's expected share of the group's training rows is selected. On the training
    scores this reproduces the optimizer's selection rate per group (the quantity demographic parity
    is about) up to one row; rounding its probability at 0.5 instead would snap each group to one of
    the two interpolated thresholds and lose parity (on the credit demo: worst-attribute holdout
    disparate impact 0.80 on average over 8 seeds, vs 0.86 with these thresholds).
    Rows of a group without a rule of its own (small cells, groups unseen in training) use ``fallback``.
    """

    def __init__(
        self, attributes: list[str], thresholds: dict[str, float], fallback: str, meta: dict | None = None
    ) -> None:
        self.attributes = list(attributes)
        self.thresholds = {str(g): float(t) for g, t in thresholds.items()}
        if fallback not in self.thresholds:
            raise ValueError(f"fallback group {fallback!r} has no rule")
        self.fallback = fallback
        self.meta = dict(meta or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "attributes": self.attributes,
            "thresholds": self.thresholds,
            "fallback": self.fallback,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupRule:
        return cls(data["attributes"], data["thresholds"], data["fallback"], data.get("meta"))

    def keys(self, sensitive: pd.DataFrame) -> np.ndarray:
        """The rule's group of each row (the fallback group for a group without a rule)."""
        import numpy as np

        keys = group_keys(sensitive[self.attributes])
        return np.where(np.isin(keys, list(self.thresholds)), keys, self.fallback)

    def row_thresholds(self, keys: np.ndarray) -> np.ndarray:
        import numpy as np
        import pandas as pd

        fb = self.thresholds[self.fallback]
        series = pd.Series(np.asarray(keys, dtype=object), dtype=object)
        return series.map(self.thresholds).fillna(fb).to_numpy(dtype=float)

    def decide(self, scores: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """0/1 decisions (int64) for scores of rows with these group keys."""
        import numpy as np

        return (np.asarray(scores, dtype=float) >= self.row_thresholds(keys)).astype(np.int64)

    def describe(self) -> dict[str, str]:
        """A readable form per group for the reports."""
        out = {}
        for g, t in self.thresholds.items():
            rate = (self.meta.get("target_selection_rate") or {}).get(g)
            text = "never" if t >= NEVER else "always" if t <= ALWAYS else f">= {t:.4f}"
            out[g] = text + ("" if rate is None else f" (selects {rate:.3f} of the group in training)")
        return out
