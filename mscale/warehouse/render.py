"""Render the `sql/` templates into SQL text.

One SELECT per file; the file name is the relation name; folders are layers built in LAYERS order.
Values from the user reach SQL only through the filters here: symbols are validated against the
contract's pattern, paths and timestamps are quoted by us, numbers are checked ints or finite floats.
"""

from __future__ import annotations

import functools

import hashlib
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2

from mscale.config import Config, LabelSettings
from mscale.errors import MscaleError
from mscale.schema import validate_symbol

LAYERS = (
    "sources",
    "staging",
    "features/hourly",
    "features/minute",
    "features/cross",
    "features/time",
    "features/normalise",
    "features/extra",
    "marts",
    "labels",
    "fills",
    "checks",
)
FEATURE_LAYERS = tuple(layer for layer in LAYERS if layer.startswith("features/")) + ("marts",)
MACROS_FILE = "macros/functions.sql"


@dataclass(frozen=True)
class Model:
    """One template: `name` is the relation it defines, `layer` its folder under sql/."""

    name: str
    layer: str
    path: Path


def discover(sql_dir: Path, extra_dirs: tuple[Path, ...] = ()) -> list[Model]:
    """Every template under `sql_dir`, in build order (layer order, then file name), plus the
    feature files in `extra_dirs` (a research folder's `features/extra/`) as members of the
    `features/extra` layer, after the project's own."""
    sql_dir = Path(sql_dir)
    if not (sql_dir / "sources").is_dir():
        raise MscaleError(f"no SQL templates under {sql_dir}: reinstall mscale (its wheel ships them) or run it from the checkout")
    models = []
    for layer in LAYERS:
        for path in sorted((sql_dir / layer).glob("*.sql")):
            models.append(Model(path.stem, layer, path))
        if layer == "features/extra":
            for folder in extra_dirs:
                for path in sorted(Path(folder).glob("*.sql")):
                    models.append(Model(path.stem, layer, path))
    seen: dict[str, Path] = {}
    for m in models:
        if m.name in seen:
            raise MscaleError(f"{m.path} defines {m.name}, which {seen[m.name]} already defines; rename the file")
        seen[m.name] = m.path
    return models


def sql_string(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def sql_paths(paths: Any) -> str:
    """A glob string or a list of absolute file paths, as a DuckDB literal."""
    if isinstance(paths, (str, Path)):
        return sql_string(str(paths))
    return "[" + ", ".join(sql_string(str(p)) for p in paths) + "]"


def sql_values(symbols: Any) -> str:
    return ", ".join(sql_string(validate_symbol(s)) for s in symbols)


def sql_ts(value: datetime) -> str:
    """A UTC timestamptz literal; naive datetimes are taken as UTC."""
    if not isinstance(value, datetime):
        raise MscaleError(f"expected a datetime, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return f"timestamptz '{value.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}+00'"


def sql_float(value: Any) -> str:
    """A finite number as a DOUBLE literal that round-trips exactly (an exponent makes DuckDB read
    it as DOUBLE, not DECIMAL)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise MscaleError(f"expected a finite number, got {value!r}")
    text = repr(float(value))
    return text if "e" in text else text + "e0"


def sql_literal(value: Any) -> str:
    """None, an int, a finite float or a string as a SQL literal. (`mscale features` stores its
    tables through literals, not Python parameters or Arrow tables built from Python values: both
    import pandas, about 0.3 s, the first time in a process.)"""
    if value is None:
        return "null"
    if isinstance(value, str):
        return sql_string(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return sql_float(value)


class _QuietBytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja's cache of compiled templates on disk, keyed by each template's name and checked
    against its source (an edited template is compiled afresh); a cache file it cannot read or
    write is skipped, never an error."""

    def load_bytecode(self, bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # noqa: BLE001 - a damaged cache file: compile instead
            bucket.reset()

    def dump_bytecode(self, bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


_ENVIRONMENT_OPTIONS = dict(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiling the templates is about 0.15 s of every process that renders them all (`mscale
    features`); the cache, in a private folder of the user's temp directory, saves most of it.
    Its files are named for jinja's version and the environment's options too: compiled code
    depends on them, and Jinja checks only the source."""
    tag = hashlib.sha256(repr((jinja2.__version__, sorted((k, repr(v)) for k, v in _ENVIRONMENT_OPTIONS.items()))).encode())
    try:
        return _QuietBytecodeCache(pattern=f"__mscale_{tag.hexdigest()[:12]}_%s.cache")
    except (OSError, RuntimeError):  # no usable temp directory
        return None


@functools.lru_cache(maxsize=16)
def environment(sql_dir: Path) -> jinja2.Environment:
    """The Jinja environment of `sql_dir`, one per folder and process: it keeps the compiled
    templates (compiling them is most of a render) and recompiles a template whose file changed."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(sql_dir)), bytecode_cache=_bytecode_cache(),
                             **_ENVIRONMENT_OPTIONS)
    env.filters.update(sql_paths=sql_paths, sql_values=sql_values, sql_ts=sql_ts, sql_float=sql_float)
    return env


@dataclass(frozen=True)
class RenderParams:
    """Everything a template may use. None / empty means "no restriction"."""

    minute_files: Any = ()  # glob string or list of paths
    hourly_files: Any = ()
    symbols: tuple[str, ...] = ()
    minute_from: datetime | None = None  # open_time bounds of the minutes read
    minute_to: datetime | None = None
    hourly_from: datetime | None = None
    hourly_to: datetime | None = None
    out_from: datetime | None = None  # mart rows with out_from < ts <= out_to
    out_to: datetime | None = None
    minute_windows: tuple[int, ...] = (5, 15, 60)
    z_window: int = 168
    minute_lag_hours: int = 0
    check_sample_rows: int = 500
    # False where the staged minutes only feed windows that order them themselves (the cached minute
    # buckets): the staging sort is then work done twice
    sort_staged: bool = True
    # the feature bench's core-only mode: feat_min__buckets ends at its hour buckets (the CONTRACT §5
    # core columns), without the trailing week's volume reference that only burst and pressure read
    # (DuckDB computes a window whose columns nothing reads)
    buckets_core_only: bool = False
    # the labels view ([labels] in mscale.toml; see LabelSettings)
    horizons: tuple[int, ...] = LabelSettings.horizons
    horizon: int = LabelSettings.horizon
    epsilon_vol_mult: float = LabelSettings.epsilon_vol_mult
    epsilon_window: int = LabelSettings.epsilon_window
    vol_window: int = LabelSettings.vol_window
    volm_quantile: float = LabelSettings.volm_quantile
    volm_days: int = LabelSettings.volm_days
    volm_min_days: int = LabelSettings.volm_min_days
    range_factor: float = LabelSettings.range_factor
    big_move_mult: float = LabelSettings.big_move_mult
    extra_models: tuple[str, ...] = field(default=())

    def context(self) -> dict[str, Any]:
        for w in self.minute_windows:
            if not isinstance(w, int) or w < 1 or w > 60 or 60 % w:
                raise MscaleError(f"minute window {w!r} must be a whole divisor of 60 minutes, e.g. 5, 15, 60")
        if 60 not in self.minute_windows or 15 not in self.minute_windows:
            raise MscaleError("minute_windows must include 15 and 60 (the contract's core columns use them)")
        for name in ("z_window", "minute_lag_hours", "check_sample_rows"):
            v, low = getattr(self, name), 0 if name == "minute_lag_hours" else 2
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise MscaleError(f"{name} must be a whole number >= {low}, got {v!r}")
        for s in self.symbols:
            validate_symbol(s)
        self.label_settings().validate()
        ctx = {k: getattr(self, k) for k in self.__dataclass_fields__}
        ctx["minute_windows"] = sorted(self.minute_windows)
        ctx["horizons"] = sorted(set(self.horizons))
        return ctx

    def label_settings(self) -> LabelSettings:
        """The labels part of these parameters, as the settings object that validates them."""
        return LabelSettings(**{f.name: getattr(self, f.name) for f in fields(LabelSettings)})


def params_from_config(cfg: Config, **overrides: Any) -> RenderParams:
    f = cfg.features

    def day(value: str | None) -> datetime | None:
        if not value:
            return None
        try:
            return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        except ValueError:
            raise MscaleError(f"features date {value!r} is not YYYY-MM-DD") from None

    base = dict(
        minute_files=str(cfg.minute_dir / "binance_*_1m_*.parquet"),
        hourly_files=str(cfg.hourly_dir / "binance_*_1h_*.parquet"),
        symbols=tuple(f.symbols),
        out_from=day(f.start),
        out_to=day(f.end),
        minute_windows=tuple(f.minute_windows),
        z_window=f.z_window,
        minute_lag_hours=f.minute_lag_hours,
        **asdict(cfg.labels),
    )
    base.update(overrides)
    return RenderParams(**base)


def render(env: jinja2.Environment, model: Model, params: RenderParams) -> str:
    """The model's SQL. A file outside the environment's sql/ (a research folder's own feature) is
    compiled from its text, so it imports `macros/...` from sql/ like the project's files."""
    root = Path(env.loader.searchpath[0])
    try:
        if model.path.is_relative_to(root):
            template = env.get_template(model.path.relative_to(root).as_posix())
        else:
            template = env.from_string(model.path.read_text())
        return template.render(**params.context())
    except jinja2.UndefinedError as e:
        raise MscaleError(f"{model.path}: {e}; templates may only use the parameters in RenderParams") from None
    except jinja2.TemplateSyntaxError as e:
        raise MscaleError(f"{e.filename or model.path}:{e.lineno}: template syntax error: {e.message}") from None


def sql_fingerprint(sql_dir: Path, params: RenderParams, extra_dirs: tuple[Path, ...] = ()) -> str:
    """Hash of every template (and of the feature files in `extra_dirs`) and the parameters that
    shape results (not the file lists)."""
    h = hashlib.sha256()
    for path in sorted(Path(sql_dir).rglob("*.sql")):
        h.update(path.relative_to(sql_dir).as_posix().encode())
        h.update(path.read_bytes())
    for folder in extra_dirs:
        for path in sorted(Path(folder).glob("*.sql")):
            h.update(f"extra:{path.name}".encode())
            h.update(path.read_bytes())
    h.update(repr((sorted(params.minute_windows), params.z_window, params.minute_lag_hours)).encode())
    return h.hexdigest()[:16]
