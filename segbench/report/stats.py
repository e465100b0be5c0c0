"""Mean and spread over seeds (sample std, standard error, or the half-width of a 95% t interval) and how one is
written in a table; paired differences against a baseline over the seeds both share.

Standard error is the default spread (DomainBed reports mean ± standard error over trials): std describes how runs
scatter, se how precisely the mean is known, ci95 (t_{0.975, n-1} * s / sqrt(n)) the interval a reviewer checks.
se is the textbook s / sqrt(n) with the sample std s (ddof=1); DomainBed's collect_results divides np.std (ddof=0)
by sqrt(n), smaller by sqrt((n-1)/n) (0.82 for 3 seeds), so its ± and ours differ for the same numbers.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

DASH = "–"  # an empty cell: not measured, or undefined (class absent from ground truth and prediction)
STATS = ("se", "std", "ci95")
DEFAULT_STAT = "se"
STAT_NAMES = {"std": "sample std", "se": "standard error", "ci95": "half-width of the 95% t interval"}


def t_quantile(n: int, level: float = 0.95) -> float:
    """t_{(1+level)/2, n-1}: the factor of a two-sided `level` interval over n values (scipy, imported when needed)."""
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, n - 1))


@dataclass(frozen=True)
class Agg:
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values) -> "Agg":
        """NaNs (undefined IoUs) are left out; std is the sample std (n-1), 0 for a single seed (its CSV cell stays
        empty)."""
        vals = [float(v) for v in values if v is not None and not math.isnan(v)]
        if not vals:
            return cls(math.nan, math.nan, 0)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))

    @property
    def se(self) -> float:
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan

    @property
    def ci95(self) -> float:
        """Half-width of the 95% t interval of the mean; NaN for fewer than two values."""
        return t_quantile(self.n) * self.se if self.n > 1 else math.nan

    def spread(self, stat: str) -> float:
        if stat not in STATS:
            raise ValueError(f"unknown statistic {stat!r}: one of {', '.join(STATS)}")
        return getattr(self, stat)

    def md(self, stat: str = DEFAULT_STAT, with_spread: bool = True, n_expected: int | None = None) -> str:
        """`64.5`, `64.5 ± 0.3`, and `(n=2)` when fewer seeds than the table's usual count made it in."""
        if self.n == 0:
            return DASH
        text = f"{self.mean:.1f} ± {self.spread(stat):.1f}" if with_spread and self.n > 1 else f"{self.mean:.1f}"
        if n_expected is not None and self.n != n_expected:
            text += f" (n={self.n})"
        return text

    def csv(self, stat: str = DEFAULT_STAT) -> list[str]:
        """mean, std, n, and the table's statistic when it is not the std (so the CSV says what the table shows). A
        single seed has no sample std: its spread columns are empty, not 0."""
        extra = [] if stat == "std" else [f"{self.spread(stat):.2f}" if self.n > 1 else ""]
        if self.n == 0:
            return ["", "", *extra, "0"]
        return [f"{self.mean:.2f}", f"{self.std:.2f}" if self.n > 1 else "", *extra, str(self.n)]


def csv_fields(stat: str) -> list[str]:
    """The spread and count column names that follow a mean in the CSV files, matching `Agg.csv`."""
    return ["std", "n"] if stat == "std" else ["std", stat, "n"]


def stat_phrase(stat: str, n: int) -> str:
    """The footer's words: 'mean ± standard error over 3 seeds'."""
    return f"mean ± {STAT_NAMES[stat]} over {n} seeds"


@dataclass(frozen=True)
class Paired:
    """Mean of per-seed differences (row - baseline) with its paired 95% t interval; lo/hi NaN when n < 2."""
    diff: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, row: dict[int, float], baseline: dict[int, float]) -> "Paired":
        """`row`, `baseline`: seed -> value; only the seeds both scored (and defined) are paired."""
        seeds = sorted(s for s in set(row) & set(baseline)
                       if not (math.isnan(row[s]) or math.isnan(baseline[s])))
        diffs = Agg.of(row[s] - baseline[s] for s in seeds)
        half = diffs.ci95
        return cls(diffs.mean, diffs.mean - half, diffs.mean + half, diffs.n)

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.n > 1 and (self.lo > 0 or self.hi < 0)

    def md(self) -> str:
        if self.n == 0:
            return DASH
        if self.n == 1:
            return f"{self.diff:+.1f} (n=1)"
        return f"{self.diff:+.1f} [{self.lo:+.1f}, {self.hi:+.1f}]" + ("*" if self.significant else "")
