"""The backtest engine: predictions -> positions -> fee-aware PnL, trades, metrics, pooled portfolio.

Public surface (doc/backtest.md):
- `run_backtest(predictions, prices, *, rules, fees, fill, slippage, trials, trials_sharpe_var)`
- `Rules` (thresholds, filters, risk knobs), `parse_fees`, `DEFAULT_FEES`
- `prepare_bars` + `sweep` / `threshold_grid` for threshold tuning
- `load_prices` (the warehouse's `fills` view) in `mscale.backtest.market`
"""

from mscale.backtest.costs import DEFAULT_FEES, parse_fees
from mscale.backtest.engine import BacktestResult, run_backtest
from mscale.backtest.inputs import Bars, prepare_bars
from mscale.backtest.rules import Rules
from mscale.backtest.sweep import SweepResult, sweep, threshold_grid

__all__ = [
    "DEFAULT_FEES",
    "BacktestResult",
    "Bars",
    "Rules",
    "SweepResult",
    "parse_fees",
    "prepare_bars",
    "run_backtest",
    "sweep",
    "threshold_grid",
]
