"""Per-token threshold tuning on a fold's validation slice, with the backtest engine.

The grid comes from the validation slice's own predictions (quantiles of |P(+1) − P(−1)| and of
the auxiliary probabilities), so it adapts to how confident a model is without looking at any
test row. Every combination is backtested at the tuning fee with the run's other knobs; the
highest after-fee Sharpe with at least `min_trades` entries wins and is frozen for the test block.
The number of combinations and the variance of their Sharpe ratios are kept for the deflated
Sharpe ratio.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from mscale.backtest import Rules, prepare_bars, sweep, threshold_grid
from mscale.backtest.metrics import HOURS_PER_YEAR, deflated_benchmark, probabilistic_sharpe

NEVER = 2.0  # a signal threshold no score can pass: the token stays flat
SIGNAL_QUANTILES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)
FILTER_QUANTILES = (0.0, 0.5, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Tuned:
    """Thresholds chosen on a validation slice, and what the search saw."""

    theta_long: float
    theta_short: float
    theta_vol: float
    theta_volm: float
    val_sharpe: float  # NaN when no combination traded enough: then the token stays flat
    val_trades: int
    n_configs: int
    sharpe_var: float  # variance of the finite (annualised) Sharpe ratios of all combinations tried
    val_rows: int  # hours of the validation slice the search ran on

    def as_dict(self) -> dict:
        return asdict(self)

    def deflated(self) -> tuple[float, float]:
        """(PSR, DSR) of the chosen set's validation Sharpe: the probability it beats 0, and beats
        the best of `n_configs` trials by luck (Bailey & López de Prado), on the slice the
        selection ran on. Normal returns assumed: the search keeps only running sums."""
        if not math.isfinite(self.val_sharpe) or self.val_rows < 2:
            return math.nan, math.nan
        sr = self.val_sharpe / math.sqrt(HOURS_PER_YEAR)
        benchmark = deflated_benchmark(self.n_configs, self.sharpe_var)
        return (probabilistic_sharpe(sr, 0.0, 3.0, self.val_rows),
                probabilistic_sharpe(sr, 0.0, 3.0, self.val_rows, benchmark))


def _grid(values: np.ndarray, quantiles: tuple[float, ...], clip: tuple[float, float]) -> list[float]:
    if len(values) == 0:
        return [clip[0]]
    q = np.quantile(values, quantiles)
    return sorted({float(np.clip(round(x, 6), *clip)) for x in q})


def tune_thresholds(
    val_predictions: pa.Table,
    prices: pa.Table,
    *,
    rules: Rules,
    fee_bps: float,
    fill: str = "close",
    slippage: float | str | None = None,
    min_trades: int = 5,
) -> Tuned:
    """Thresholds maximising after-fee Sharpe on `val_predictions` (one token's validation rows),
    with the same knobs, fill and slippage as the out-of-sample backtest."""
    bars = prepare_bars(val_predictions, prices)
    magnitude = np.abs(bars.score)
    longs = _grid(magnitude, SIGNAL_QUANTILES, (0.0, 2.0))
    shorts = [NEVER] if rules.long_only else longs
    vols = _grid(bars.aux["p_vol_high"], FILTER_QUANTILES, (0.0, 1.0)) if rules.use_vol else [0.5]
    volms = _grid(bars.aux["p_volm_up"], FILTER_QUANTILES, (0.0, 1.0)) if rules.use_volm else [0.5]
    combos = threshold_grid(longs, shorts, vols, volms)
    # the run's own knobs and costs (thresholds come from the combinations)
    result = sweep(bars, combos, rules=rules, fee_bps=fee_bps, fill=fill, slippage=slippage)
    finite = result.sharpe[np.isfinite(result.sharpe)]
    variance = float(finite.var(ddof=1)) if len(finite) > 1 else 0.0
    best = result.best(min_trades=min_trades)
    if best is None:
        return Tuned(NEVER, NEVER, 0.5, 0.5, math.nan, 0, len(combos), variance, bars.n)
    tl, ts, tv, tvm = (float(x) for x in combos[best])
    return Tuned(tl, ts, tv, tvm, float(result.sharpe[best]), int(result.n_trades[best]), len(combos), variance, bars.n)
