"""Mean, sample std and count over seeds, and how one is written in a table."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

DASH = "–"  # an empty cell: not measured, or undefined (class absent from ground truth and prediction)


@dataclass(frozen=True)
class Agg:
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values) -> "Agg":
        """NaNs (undefined IoUs) are left out; std is the sample std (n-1), 0 for a single seed."""
        vals = [float(v) for v in values if v is not None and not math.isnan(v)]
        if not vals:
            return cls(math.nan, math.nan, 0)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))

    def md(self, with_std: bool = True, n_expected: int | None = None) -> str:
        """`64.5`, `64.5 ± 0.3`, and `(n=2)` when fewer seeds than the table's usual count made it in."""
        if self.n == 0:
            return DASH
        text = f"{self.mean:.1f} ± {self.std:.1f}" if with_std and self.n > 1 else f"{self.mean:.1f}"
        if n_expected is not None and self.n != n_expected:
            text += f" (n={self.n})"
        return text

    def csv(self) -> list[str]:
        if self.n == 0:
            return ["", "", "0"]
        return [f"{self.mean:.2f}", f"{self.std:.2f}", str(self.n)]
