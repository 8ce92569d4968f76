"""Group rates and disparities of bootstrap replicates, from per-group counts: what the fairness gate
reads its intervals from (``rtml.evaluate.fairness``), and what the mitigation search's simulated
holdouts are judged with when the gate reads an interval bound (``rtml.evaluate.fairsearch``).
One definition for both, so that the search simulates the gate it will face. Light: numpy only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def replicate_rates(N, P, S, TP) -> dict[str, np.ndarray]:
    """Selection rate, TPR, FPR and precision per group (last axis) of each replicate; NaN where the
    group has no row (no positive, no negative) in that replicate, precision 0 with no selection."""
    import numpy as np

    N, P, S, TP = (np.asarray(a, dtype=float) for a in (N, P, S, TP))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "selection_rate": np.where(N > 0, S / N, np.nan),
            "tpr": np.where(P > 0, TP / P, np.nan),
            "fpr": np.where(N - P > 0, (S - TP) / (N - P), np.nan),
            "precision": np.where(S > 0, TP / S, 0.0),
        }


def range_over(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) over the masked, finite groups of each replicate (last axis); NaN where fewer than 2."""
    import numpy as np

    m = mask & np.isfinite(values)
    lo = np.where(m, values, np.inf).min(axis=-1)
    hi = np.where(m, values, -np.inf).max(axis=-1)
    ok = m.sum(axis=-1) >= 2
    return np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)


def interval(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval over the replicates (axis 0) of their finite values: (low, high), NaN
    where fewer than 2 replicates are finite."""
    import warnings

    import numpy as np

    v = np.asarray(values, dtype=float)
    finite = np.isfinite(v)
    a = (1 - confidence) / 2
    with warnings.catch_warnings():  # all-NaN columns: no interval
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(np.where(finite, v, np.nan), [a, 1 - a], axis=0)
    two = finite.sum(axis=0) >= 2
    return np.where(two, lo, np.nan), np.where(two, hi, np.nan)


def replicate_disparities(boot: dict[str, np.ndarray], big, tpr_ok, fpr_ok) -> dict[str, np.ndarray]:
    """The disparities of each replicate (``boot``: per-group counts N, P, S, TP, last axis = groups)
    over the groups that qualify for each (``big``: enough rows; ``tpr_ok`` / ``fpr_ok``: also enough
    positives / negatives; masks broadcast against the counts)."""
    import numpy as np

    r = replicate_rates(boot["N"], boot["P"], boot["S"], boot["TP"])
    slo, shi = range_over(r["selection_rate"], big)
    tlo, thi = range_over(r["tpr"], tpr_ok)
    flo, fhi = range_over(r["fpr"], fpr_ok)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "demographic_parity_ratio": np.where(shi > 0, slo / shi, np.nan),
            "demographic_parity_difference": shi - slo,
            "equal_opportunity_difference": thi - tlo,
            "equal_opportunity_ratio": np.where(thi > 0, tlo / thi, np.nan),
            "equalized_odds_difference": np.fmax(thi - tlo, fhi - flo),
        }
