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

DEFAULT_BASE_URL = "https://data-api.binance.vision"  # the public market-data host
DEFAULT_ARCHIVE_URL = "https://data.binance.vision"


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


@dataclass(frozen=True)
class Config:
    project_root: Path
    data_dir: Path
    warehouse: Path
    market: str = "spot"
    quiet: bool = False
    ingest: IngestSettings = field(default_factory=IngestSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)

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
        return self.project_root / "sql"

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
    for k, v in list(values.items()):
        if isinstance(v, list):
            values[k] = tuple(v)
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

    for key in ("data_dir", "warehouse", "market"):
        if key in raw and not isinstance(raw[key], str):
            raise MscaleError(f"{toml_path}: {key} must be a string, got {raw[key]!r}")
    known = {"data_dir", "warehouse", "market", "ingest", "features"}
    if set(raw) - known:
        raise MscaleError(f"{toml_path} has unknown keys {sorted(set(raw) - known)}: known keys are {sorted(known)}")

    def pick(flag, env, key, default) -> Path:
        """Flags and env vars are relative to the working directory, mscale.toml to the project root."""
        if flag is not None:
            return Path.cwd() / flag
        if os.environ.get(env):
            return Path.cwd() / os.environ[env]
        return root / raw.get(key, default)

    data = pick(data_dir, "MSCALE_DATA_DIR", "data_dir", "data")
    wh = pick(warehouse, "MSCALE_WAREHOUSE", "warehouse", "warehouse/mscale.duckdb")
    mk = market or raw.get("market", "spot")
    if mk not in ("spot", "um"):
        raise MscaleError(f"unknown market {mk!r}: use spot or um")
    cfg = Config(
        project_root=root,
        data_dir=data.resolve(),
        warehouse=wh.resolve(),
        market=mk,
        quiet=quiet,
        ingest=_section(raw, IngestSettings, "ingest", ingest or {}),
        features=_section(raw, FeatureSettings, "features", features or {}),
    )
    _validate(cfg)
    return cfg


_MEMORY_RE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


def _validate(cfg: Config) -> None:
    """One-line errors for settings of the wrong type or range, before anything runs."""
    f, i = cfg.features, cfg.ingest

    def whole(name: str, value: Any, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MscaleError(f"{name} must be a whole number >= {low}, got {value!r}")

    whole("threads", f.threads, 1)
    whole("z_window", f.z_window, 2)
    whole("minute_lag_hours", f.minute_lag_hours, 0)
    whole("pace_ms", i.pace_ms, 0)
    whole("max_retries", i.max_retries, 0)
    if not isinstance(f.memory_limit, str) or not _MEMORY_RE.match(f.memory_limit.strip()):
        raise MscaleError(f"memory_limit {f.memory_limit!r} is not a size; use e.g. 4GB or 512MB")
    if not isinstance(i.timeout_s, (int, float)) or i.timeout_s <= 0:
        raise MscaleError(f"timeout_s must be a positive number of seconds, got {i.timeout_s!r}")
    for name in ("start", "end"):
        value = getattr(f, name)
        if value is not None and not (isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)):
            raise MscaleError(f"features {name} must be a date YYYY-MM-DD, got {value!r}")
