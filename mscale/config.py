"""One frozen configuration object, loaded once and passed down.

Precedence for every setting: command-line flag > environment variable > `mscale.toml` > default.
Paths are made absolute here, once, so nothing downstream depends on the working directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mscale.errors import MscaleError
from mscale.names import MARKETS

DEFAULT_BASE_URL = "https://data-api.binance.vision"  # the public market-data host
DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
# each market's views live in their own warehouse file (relative to the project root)
DEFAULT_WAREHOUSE = {"spot": "warehouse/mscale.duckdb", "um": "warehouse/mscale_um.duckdb"}
# the SQL templates: the checkout's top-level sql/ (editable install), or the copy a wheel ships
_CHECKOUT_SQL = Path(__file__).resolve().parents[1] / "sql"
_PACKAGED_SQL = Path(__file__).resolve().parent / "_sql"


@dataclass(frozen=True)
class IngestSettings:
    base_url: str = DEFAULT_BASE_URL
    archive_url: str = DEFAULT_ARCHIVE_URL
    pace_ms: int = 250  # pause between REST calls
    timeout_s: float = 10.0
    max_retries: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    weight_limit: int = 6000  # Binance's per-minute request weight for market data
    weight_slowdown: float = 0.8  # slow down once this share of the limit is used


@dataclass(frozen=True)
class FeatureSettings:
    minute_windows: tuple[int, ...] = (5, 15, 60)
    z_window: int = 168  # hourly rows in a rolling z-score, current row excluded
    minute_lag_hours: int = 0
    symbols: tuple[str, ...] = ()  # empty = every symbol with data
    # date range of the published features, as hourly bars opened on days start .. end - 1,
    # i.e. decision times start < ts <= end (YYYY-MM-DD, UTC); None = unbounded
    start: str | None = None
    end: str | None = None
    memory_limit: str = "4GB"
    threads: int = 2
    # where the cache's blocks run: "local" (threads of this process) or "dask" (tasks on the
    # cluster at `scheduler`, e.g. "tcp://head:8786"; empty = a local cluster of `threads` processes)
    executor: str = "local"
    scheduler: str = ""


@dataclass(frozen=True)
class LabelSettings:
    """The `labels` view (CONTRACT §7, doc/labels.md); every threshold in it is past-only."""

    horizons: tuple[int, ...] = (1, 4, 24)  # forward-return horizons H in hours: fwd_ret_{H}h
    horizon: int = 1  # the H of y_dir and y_big_move; one of `horizons`
    epsilon_vol_mult: float = 0.175  # y_dir's flat band: mult x sqrt(horizon) x trailing hourly stddev (doc/labels.md)
    epsilon_window: int = 168  # hours of trailing hourly returns behind that stddev
    vol_window: int = 24  # Wv of fwd_rv_{Wv}h
    volm_quantile: float = 0.8  # y_volm_up: the same-hour volume quantile ...
    volm_days: int = 30  # ... over the previous volm_days days ...
    volm_min_days: int = 20  # ... NULL with fewer bars than this
    range_factor: float = 1.5  # y_range_exp: next bar's log range > factor x trailing 24 h mean
    big_move_mult: float = 2.0  # y_big_move: |fwd_ret| > mult x sqrt(horizon) x trailing hourly stddev

    def validate(self) -> None:
        """One-line MscaleError for a setting of the wrong type or range."""

        def whole(name: str, value: Any, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MscaleError(f"labels {name} must be a whole number >= {low}, got {value!r}")

        def positive(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise MscaleError(f"labels {name} must be a positive number, got {value!r}")

        if not isinstance(self.horizons, (tuple, list)) or not self.horizons:
            raise MscaleError(f"labels horizons must be a non-empty list of hours, got {self.horizons!r}")
        for h in self.horizons:
            whole("horizons", h, 1)
        whole("horizon", self.horizon, 1)
        if self.horizon not in self.horizons:
            raise MscaleError(f"labels horizon must be one of horizons {list(self.horizons)}, got {self.horizon!r}")
        whole("epsilon_window", self.epsilon_window, 2)
        whole("vol_window", self.vol_window, 1)
        whole("volm_days", self.volm_days, 1)
        whole("volm_min_days", self.volm_min_days, 1)
        if self.volm_min_days > self.volm_days:
            raise MscaleError(f"labels volm_min_days ({self.volm_min_days}) must be <= volm_days ({self.volm_days})")
        positive("epsilon_vol_mult", self.epsilon_vol_mult)
        positive("range_factor", self.range_factor)
        positive("big_move_mult", self.big_move_mult)
        q = self.volm_quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 1:
            raise MscaleError(f"labels volm_quantile must be a number in [0, 1], got {q!r}")


@dataclass(frozen=True)
class TrainSettings:
    """`python -m mscale.train` (section `[train]`; flags override each key). doc/training.md."""

    model: str = "lgbm"  # logistic | lgbm | histgb
    features: str = "multiscale"  # hourly | multiscale
    columns: tuple[str, ...] = ()  # explicit feature columns instead of a feature set
    compare: bool = False  # run hourly and multiscale on the same folds and compare them
    fit: str = "per_token"  # per_token | pooled
    split_mode: str = "walk_forward"  # walk_forward | final_fold | dates
    n_splits: int = 5
    embargo_h: int | None = None  # None: max(labels.horizon, labels.vol_window)
    val_fraction: float = 0.2
    train: str | None = None  # dates mode: "YYYY-MM-DD→YYYY-MM-DD" (inclusive UTC days)
    tune: str | None = None
    oos: str | None = None  # "YYYY-MM-DD→end" allowed
    symbols: tuple[str, ...] = ()  # empty: every symbol in the features mart
    start: str | None = None  # decision times start < ts <= end (YYYY-MM-DD, UTC)
    end: str | None = None
    fees: tuple[str, ...] = ("gross", "VIP9", "VIP4")  # fee tiers: names or NAME=BPS
    tune_fee: str = "VIP9"  # the tier thresholds are tuned at
    fill: str = "close"  # close | next_minute | twap_<N>m
    slippage: str | None = None  # None, bps per side, cs or ar
    filter: str = "none"  # none | vol | volm | both
    filter_exit: bool = False
    long_only: bool = False
    min_hold: int = 0
    cooldown: int = 0
    max_trades_per_day: int | None = None
    min_trades: int = 5  # a tuned threshold set must trade at least this often on the validation slice
    vol_high_quantile: float = 0.8  # y_vol_high: fwd_rv above this quantile of the fold's training rows
    seed: int = 0
    threads: int = 2
    shuffle_labels: bool = False  # sanity mode: train on permuted labels (OOS skill must vanish)
    aux: bool = True  # train the vol_high and volm_up models beside the direction model
    block_h: int = 168  # the comparison's bootstrap block length in hours
    executor: str = "local"  # where the fits run: "local" threads, or "dask" tasks (results identical)
    scheduler: str = ""  # with executor "dask": the scheduler's address; empty = a local cluster of `threads` processes

    def validate(self) -> None:
        """One-line MscaleError for a setting of the wrong type or choice (the backtest knobs are
        checked by mscale.backtest when the run starts)."""
        choices = {"model": ("logistic", "lgbm", "histgb"), "features": ("hourly", "multiscale"),
                   "fit": ("per_token", "pooled"), "split_mode": ("walk_forward", "final_fold", "dates")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise MscaleError(f"train {name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name, low in (("n_splits", 1), ("min_trades", 0), ("seed", 0), ("threads", 1), ("block_h", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MscaleError(f"train {name} must be a whole number >= {low}, got {value!r}")
        if self.embargo_h is not None and (isinstance(self.embargo_h, bool) or not isinstance(self.embargo_h, int) or self.embargo_h < 0):
            raise MscaleError(f"train embargo_h must be a whole number of hours >= 0, got {self.embargo_h!r}")
        for name in ("val_fraction", "vol_high_quantile"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise MscaleError(f"train {name} must be a number between 0 and 1, got {value!r}")
        for name in ("compare", "filter_exit", "long_only", "shuffle_labels", "aux"):
            if not isinstance(getattr(self, name), bool):
                raise MscaleError(f"train {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)):
                raise MscaleError(f"train {name} must be a date YYYY-MM-DD, got {value!r}")
        if not self.aux and self.filter != "none":
            raise MscaleError(f"filter {self.filter!r} needs the auxiliary models: drop --no-aux or use --filter none")
        if self.split_mode == "dates" and not (self.train and self.tune and self.oos):
            raise MscaleError("split mode dates needs --train, --tune and --oos date ranges, e.g. --oos 2024-07-01→end")


@dataclass(frozen=True)
class Config:
    project_root: Path
    data_dir: Path
    warehouse: Path
    market: str = "spot"
    quiet: bool = False
    ingest: IngestSettings = field(default_factory=IngestSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    labels: LabelSettings = field(default_factory=LabelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    exp_dir: Path | None = None  # experiment runs (CONTRACT §10); None = <project root>/_exp

    @property
    def runs_dir(self) -> Path:
        return self.exp_dir or self.project_root / "_exp"

    @property
    def market_dir(self) -> Path:
        """Root of this market's shards: spot in the data dir, USDⓈ-M futures under `um/`."""
        return self.data_dir if self.market == "spot" else self.data_dir / "um"

    @property
    def minute_dir(self) -> Path:
        return self.market_dir / "minute"

    @property
    def hourly_dir(self) -> Path:
        return self.market_dir / "hourly"

    @property
    def reports_dir(self) -> Path:
        return self.market_dir / "reports"

    @property
    def derived_dir(self) -> Path:
        return self.market_dir / "derived"

    @property
    def sql_dir(self) -> Path:
        """The project's `sql/` when the root has one (the checkout), else the installed package's
        copy (a wheel ships it as `mscale/_sql`; an editable install reads the checkout's `sql/`)."""
        for candidate in (self.project_root / "sql", _PACKAGED_SQL, _CHECKOUT_SQL):
            if (candidate / "sources").is_dir():
                return candidate
        return self.project_root / "sql"

    @property
    def extra_feature_dirs(self) -> tuple[Path, ...]:
        """A research folder's own feature files (`features/extra/*.sql` beside mscale.toml), built
        and audited like the files in `sql/features/extra/`."""
        folder = self.project_root / "features" / "extra"
        return (folder,) if folder.is_dir() and folder != self.sql_dir / "features" / "extra" else ()

    def with_features(self, **changes: Any) -> "Config":
        return replace(self, features=replace(self.features, **changes))

    def with_ingest(self, **changes: Any) -> "Config":
        return replace(self, ingest=replace(self.ingest, **changes))


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding `mscale.toml` or the project's `sql/`;
    else the checkout this package was installed from; else `start`."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "mscale.toml").is_file() or (d / "sql" / "sources").is_dir():
            return d
    installed = Path(__file__).resolve().parents[1]
    if (installed / "sql" / "sources").is_dir():
        return installed
    return start


def _section(raw: dict, cls, name: str, overrides: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    values = dict(raw.get(name, {}))
    unknown = set(values) - known
    if unknown:
        raise MscaleError(f"mscale.toml [{name}] has unknown keys {sorted(unknown)}: known keys are {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    from datetime import date, datetime

    for k, v in list(values.items()):
        if isinstance(v, list):
            values[k] = tuple(v)
        elif isinstance(v, date) and not isinstance(v, datetime):  # unquoted TOML: start = 2024-01-01
            values[k] = v.isoformat()
    return cls(**values)


def load_config(
    *,
    data_dir: str | os.PathLike | None = None,
    warehouse: str | os.PathLike | None = None,
    market: str | None = None,
    quiet: bool = False,
    project_root: str | os.PathLike | None = None,
    ingest: dict[str, Any] | None = None,
    features: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    exp_dir: str | os.PathLike | None = None,
) -> Config:
    """Build the Config from flags (arguments), then env, then `mscale.toml`, then defaults."""
    root = Path(project_root).resolve() if project_root else find_project_root()
    toml_path = root / "mscale.toml"
    raw: dict[str, Any] = {}
    if toml_path.is_file():
        try:
            raw = tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise MscaleError(f"{toml_path} is not valid TOML ({e}); fix or remove it") from None

    for key in ("data_dir", "warehouse", "market", "exp_dir"):
        if key in raw and not isinstance(raw[key], str):
            raise MscaleError(f"{toml_path}: {key} must be a string, got {raw[key]!r}")
    known = {"data_dir", "warehouse", "market", "exp_dir", "ingest", "features", "labels", "train"}
    if set(raw) - known:
        raise MscaleError(f"{toml_path} has unknown keys {sorted(set(raw) - known)}: known keys are {sorted(known)}")

    def pick(flag, env, key, default) -> Path:
        """Flags and env vars are relative to the working directory, mscale.toml to the project root."""
        if flag is not None:
            return Path.cwd() / flag
        if os.environ.get(env):
            return Path.cwd() / os.environ[env]
        return root / raw.get(key, default)

    mk = market or raw.get("market", "spot")
    if mk not in MARKETS:
        where = "--market" if market else f"{toml_path}: market"
        raise MscaleError(f"{where} = {mk!r} is not a market mscale reads: use \"spot\" or \"um\" (USDⓈ-M futures; "
                          "coin-M is not supported)")
    data = pick(data_dir, "MSCALE_DATA_DIR", "data_dir", "data")
    wh = pick(warehouse, "MSCALE_WAREHOUSE", "warehouse", DEFAULT_WAREHOUSE[mk])
    cfg = Config(
        project_root=root,
        data_dir=data.resolve(),
        warehouse=wh.resolve(),
        market=mk,
        quiet=quiet,
        ingest=_section(raw, IngestSettings, "ingest", ingest or {}),
        features=_section(raw, FeatureSettings, "features", features or {}),
        labels=_section(raw, LabelSettings, "labels", {}),
        train=_section(raw, TrainSettings, "train", train or {}),
        exp_dir=(Path.cwd() / exp_dir).resolve() if exp_dir else ((root / raw["exp_dir"]).resolve() if "exp_dir" in raw else None),
    )
    _validate(cfg, raw, toml_path)
    return cfg


def _validate(cfg: Config, raw: dict[str, Any] | None = None, toml_path: Path | None = None) -> None:
    """One-line errors for settings of the wrong type or range, before anything runs: every key
    of [ingest], [features], [labels] and [train] (mscale.config_check)."""
    from mscale.config_check import check_settings

    check_settings(cfg, raw, toml_path)


_MARKET_COMMANDS = r"mscale (?:report|features|sql|train|backtest|audit|resample-hourly|import|ingest|demo-data)\b"


def with_market(text: str, market: str) -> str:
    """`text` (a hint or a next step) with `--market MARKET` after every mscale command it names,
    so a um user copying it stays in um; spot, the default, is left as it is."""
    if market == "spot":
        return text
    return re.sub(rf"({_MARKET_COMMANDS})(?! --market)", rf"\1 --market {market}", text)

