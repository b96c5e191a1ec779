"""Mean ± 95% confidence half-width of per-episode accuracies: the one home of the formula.

Used by the `episodic_accuracy` metric script beside this file (`evaluate.load` copies a script's relative imports
next to it in its module cache) and by `hf_fewshot.evaluation.mean_and_ci95`. It imports only the standard library
and NumPy, so that importing it costs neither `evaluate` nor SciPy.

The rule, for N episode accuracies x_1..x_N:

- N ≥ 30 (`T_INTERVAL_BELOW`): `1.96 · σ / √N` with σ the population standard deviation (ddof=0), as Meta-Dataset
  reports and as hf_fewshot always did;
- 2 ≤ N < 30: the Student-t interval `t_{0.975, N-1} · s / √N` with s the sample standard deviation (ddof=1),
  which the normal approximation undercovers at small N;
- N = 1: no spread can be estimated: the half-width is NaN, with a `RuntimeWarning`;
- N = 0: `ValueError`.

The unit is the input's: percentages in, percentages out (hf_fewshot's convention); fractions in [0, 1] work alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np

#: Below this many episodes the half-width is the Student-t interval; from it on, 1.96 · population std / √N.
T_INTERVAL_BELOW = 30

#: The normal 97.5% quantile used for N ≥ `T_INTERVAL_BELOW` (Meta-Dataset's convention).
Z_975 = 1.96

#: `scipy.stats.t.ppf(0.975, df)` for df = 1 .. T_INTERVAL_BELOW - 2 (index df - 1), tabulated so that the formula
#: needs no SciPy (the tests check the table against SciPy).
T_975 = (
    12.706204736174694,
    4.302652729749462,
    3.1824463052837078,
    2.7764451051977934,
    2.5705818356363146,
    2.4469118511449786,
    2.364624251592784,
    2.306004135204166,
    2.262157162798205,
    2.228138851986274,
    2.200985160091639,
    2.1788128296672284,
    2.1603686564627913,
    2.144786687917804,
    2.131449545559776,
    2.1199052992212546,
    2.1098155778333156,
    2.1009220402410382,
    2.0930240544083087,
    2.085963447265864,
    2.0796138447276795,
    2.0738730679040254,
    2.0686576104190486,
    2.0638985616280245,
    2.0595385527532972,
    2.0555294386428735,
    2.0518305164802846,
    2.0484071417952454,
)


def mean_and_interval(values: Iterable[float]) -> tuple[float, float]:
    """`(mean, half_width)` of the 95% confidence interval of the mean of `values` (rule in the module docstring)."""
    values = np.asarray(list(values), dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        raise ValueError("No accuracies to average.")
    mean = float(values.mean())
    if n == 1:
        warnings.warn(
            "A 95% confidence interval needs at least 2 episodes; with 1 its half-width is NaN.",
            RuntimeWarning,
            stacklevel=2,
        )
        return mean, math.nan
    if n < T_INTERVAL_BELOW:
        return mean, float(T_975[n - 2] * values.std(ddof=1) / math.sqrt(n))
    return mean, float(Z_975 * values.std() / math.sqrt(n))
