"""`python -m mscale.train` (`mscale train`): parse the flags, load the config, run the research
pipeline (`mscale.research.pipeline`), print its summary and the run folder.

Flags override the same keys of `mscale.toml` `[train]`; see doc/training.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# --- command line ------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The train flags (each overrides the same key of mscale.toml [train])."""
    a = p.add_argument
    a("--model", choices=["logistic", "lgbm", "histgb"], help="classifier (default lgbm)")
    a("--features", choices=["hourly", "multiscale"], help="feature set (default multiscale)")
    a("--columns", help="comma-separated feature columns instead of a feature set")
    a("--compare", action="store_true", default=None, help="run hourly and multiscale on the same folds and compare them")
    a("--fit", choices=["per_token", "pooled"], help="one model per token (default) or one over all tokens")
    a("--split-mode", choices=["walk_forward", "final_fold", "dates"],
      help="walk_forward (default): expanding window, n test blocks; final_fold: the last block only; dates: --train/--tune/--oos")
    a("--n-splits", type=int, help="walk-forward test folds (default 5)")
    a("--embargo-h", type=int, help="hours between a training label's end and its evaluation block (default: the longest label horizon, max(horizon, vol_window))")
    a("--val-fraction", type=float, help="fraction of each training block kept for tuning, 0..1 (default 0.2)")
    a("--train", dest="train_range", help="dates mode: YYYY-MM-DD→YYYY-MM-DD")
    a("--tune", dest="tune_range", help="dates mode: the validation (tuning) range")
    a("--oos", dest="oos_range", help="dates mode: the out-of-sample range, e.g. 2024-07-01→end")
    a("--symbols", nargs="+", help="tokens to train on (default: every symbol in the features mart)")
    a("--start", help="first UTC day of data (decision times after it)")
    a("--end", help="last day boundary of data (decision times up to it)")
    a("--fees", help="fee tiers, e.g. gross,VIP9,VIP4 or taker=10")
    a("--tune-fee", help="the tier thresholds are tuned at (default VIP9)")
    a("--fill", help="fill price: close | next_minute | twap_<N>m (default close)")
    a("--slippage", help="slippage: bps per side, cs (Corwin-Schultz) or ar (Abdi-Ranaldo) half-spread (default none)")
    a("--filter", choices=["none", "vol", "volm", "both"],
      help="trade only when the auxiliary models expect high volatility (vol), a volume surge (volm) or both")
    a("--filter-exit", action="store_true", default=None, help="also close an open position when its filter stops passing")
    a("--long-only", action="store_true", default=None, help="take long positions only, flat instead of short")
    a("--min-hold", type=int, help="hourly bars a position is held at least before it may change (0 or 1: no constraint)")
    a("--cooldown", type=int, help="hourly bars that stay flat after every exit (default 0)")
    a("--max-trades-per-day", type=int, help="entries (flips included) per UTC day at most")
    a("--min-trades", type=int, help="minimum entries of a tuned threshold set on the validation slice (default 5)")
    a("--seed", type=int, help="random seed of the models and the bootstrap (default 0)")
    a("--threads", type=int, help="models fitted at once, one thread each (default 2)")
    a("--executor", choices=["local", "dask"],
      help="where the (fold x token x task) fits run: local threads, or tasks on a Dask cluster; results are "
      "identical (default [train] executor, local; doc/scale-out.md)")
    a("--scheduler", metavar="ADDRESS",
      help="with --executor dask: the scheduler, e.g. tcp://head:8786 (default: a local cluster of --threads processes)")
    a("--shuffle-labels", action="store_true", default=None, help="sanity mode: train on permuted labels")
    a("--no-aux", dest="aux", action="store_false", default=None, help="direction model only, no vol_high / volm_up models")
    a("--out", help="runs folder (default _exp/ in the project root)")


_FLAG_KEYS = {
    "model": "model", "features": "features", "compare": "compare", "fit": "fit", "split_mode": "split_mode",
    "n_splits": "n_splits", "embargo_h": "embargo_h", "val_fraction": "val_fraction", "train_range": "train",
    "tune_range": "tune", "oos_range": "oos", "start": "start", "end": "end", "tune_fee": "tune_fee", "fill": "fill",
    "slippage": "slippage", "filter": "filter", "filter_exit": "filter_exit", "long_only": "long_only",
    "min_hold": "min_hold", "cooldown": "cooldown", "max_trades_per_day": "max_trades_per_day",
    "min_trades": "min_trades", "seed": "seed", "threads": "threads", "shuffle_labels": "shuffle_labels", "aux": "aux",
    "executor": "executor", "scheduler": "scheduler",
}


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """[train] settings given on the command line."""
    out = {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items() if getattr(args, flag, None) is not None}
    if getattr(args, "columns", None):
        out["columns"] = tuple(c.strip() for c in args.columns.split(",") if c.strip())
    if getattr(args, "fees", None):
        out["fees"] = tuple(f.strip() for f in args.fees.split(",") if f.strip())
    if getattr(args, "symbols", None):
        out["symbols"] = tuple(s.strip().upper() for v in args.symbols for s in v.split(",") if s.strip())
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m mscale.train ARGS` is `mscale train ARGS`."""
    from mscale.cli import main as cli

    return cli(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
