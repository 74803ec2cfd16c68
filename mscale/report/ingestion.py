"""The ingestion / data-quality report: one record per symbol, written as JSON and CSV.

What a report states, per symbol and per interval (1m and 1h):
- rows, first/last open_time (ISO 8601 UTC), expected bars from first to last open_time
  inclusive, bars present and missing, and the largest gaps (runs of missing bars);
- sanity violations, each counted on its own: `low > min(open, close)`, `high < max(open, close)`,
  `volume < 0`, `taker_buy_base > volume`, open_time off the interval grid, `close_time` other
  than `open_time + interval`. A comparison with a NULL field is not a violation (min/max over
  open and close skip a NULL one);
- zero-volume bars (halts) and the longest runs of consecutive zero-volume bars;
- duplicates dropped on ingestion and the sources, both summed from shard metadata, and the
  source anomalies that normalisation removed on import (close times that were not
  open + interval - 1 ms, timestamps in µs, repeated rows), per shard and in total;
- how many hourly bars came from each source (exchange, import, resampled, ...);
- a reconciliation of each hourly bar against the minute bars inside its hour, for the hours
  whose 60 minutes are all present and whose bar did not come from those minutes (a resampled
  or synthetic bar would only compare the minutes with themselves): such bars are counted as
  skipped, with the reason, never compared.

Nothing here modifies data; `write_report` is the only function that writes, and it writes
atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mscale.config import Config
from mscale.schema import INTERVAL_MS, KLINE_SCHEMA, validate_symbol
from mscale.store import (
    ANOMALY_KEYS,
    DERIVED_SOURCES,
    META_DUPLICATES,
    META_SOURCE,
    SOURCE_COLUMN,
    UNKNOWN_SOURCE,
    dedupe_sorted,
    list_shards,
    read_klines,
    shard_anomalies,
    shard_metadata,
    symbols_with_data,
    write_text_atomic,
)

log = logging.getLogger(__name__)

REPORT_JSON = "ingestion_report.json"
REPORT_CSV = "ingestion_report.csv"

MINUTE_MS = INTERVAL_MS["1m"]
HOUR_MS = INTERVAL_MS["1h"]
MINUTES_PER_HOUR = HOUR_MS // MINUTE_MS

PRICE_RTOL = 1e-12
VOLUME_RTOL = 1e-9

VIOLATIONS = (
    "low_above_open_or_close",
    "high_below_open_or_close",
    "negative_volume",
    "taker_buy_above_volume",
    "open_time_off_grid",
    "close_time_not_open_plus_interval",
)
# (field, relative tolerance); trades are integers and compared exactly.
RECONCILED_FIELDS: tuple[tuple[str, float], ...] = (
    ("open", PRICE_RTOL),
    ("high", PRICE_RTOL),
    ("low", PRICE_RTOL),
    ("close", PRICE_RTOL),
    ("volume", VOLUME_RTOL),
    ("quote_volume", VOLUME_RTOL),
    ("trades", 0.0),
    ("taker_buy_base", VOLUME_RTOL),
    ("taker_buy_quote", VOLUME_RTOL),
)
CSV_FIRST_FEW = 3


def iso_utc(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC with a `Z` suffix (`2023-03-24T12:40:00Z`)."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds" if ms % 1000 else "seconds").replace("+00:00", "Z")


def _ms(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).cast(pa.int64()).to_numpy()


def _f64(table: pa.Table, name: str) -> np.ndarray:
    """A float column as numpy with NULL -> NaN (so every comparison with it is False)."""
    return table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)


def _gaps(open_ms: np.ndarray, step: int, top: int) -> tuple[int, int, list[dict[str, Any]]]:
    """(number of gaps, bars missing, the `top` largest gaps) of sorted unique open times.

    A gap is a run of missing bars: `start`/`end` are the first and last missing open_time
    (inclusive), `bars` how many, `prev_open_time`/`next_open_time` the bars present around it.
    Largest first; ties by earlier start.
    """
    if len(open_ms) < 2:
        return 0, 0, []
    missing = np.diff(open_ms) // step - 1
    idx = np.flatnonzero(missing > 0)
    if len(idx) == 0:
        return 0, 0, []
    order = idx[np.lexsort((open_ms[idx], -missing[idx]))][:top]
    largest = [
        {
            "start": iso_utc(int(open_ms[i] + step)),
            "end": iso_utc(int(open_ms[i] + step * missing[i])),
            "bars": int(missing[i]),
            "prev_open_time": iso_utc(int(open_ms[i])),
            "next_open_time": iso_utc(int(open_ms[i + 1])),
        }
        for i in order
    ]
    return len(idx), int(missing[idx].sum()), largest


def _zero_volume_runs(open_ms: np.ndarray, volume: np.ndarray, step: int, top: int) -> list[dict[str, Any]]:
    """The `top` longest runs of consecutive zero-volume bars (consecutive in time, no gap inside)."""
    zero = volume == 0
    if not zero.any():
        return []
    # A new run starts at a zero bar whose predecessor is not a zero bar one step earlier.
    contiguous = np.concatenate([[False], (np.diff(open_ms) == step) & zero[:-1]])
    run_id = np.cumsum(zero & ~contiguous)
    ids = run_id[zero]
    starts = np.flatnonzero(zero & ~contiguous)
    lengths = np.bincount(ids)[1:]
    order = np.lexsort((starts, -lengths))[:top]
    return [
        {
            "start": iso_utc(int(open_ms[starts[k]])),
            "end": iso_utc(int(open_ms[starts[k] + lengths[k] - 1])),
            "bars": int(lengths[k]),
        }
        for k in order
    ]


def _violations(table: pa.Table, step: int) -> dict[str, int]:
    o, h, lo, c = (_f64(table, k) for k in ("open", "high", "low", "close"))
    v, tb = _f64(table, "volume"), _f64(table, "taker_buy_base")
    ot, ct = _ms(table, "open_time"), _ms(table, "close_time")
    with np.errstate(invalid="ignore"):
        counts = {
            # fmin/fmax skip a NULL side: low > close still counts when open is NULL.
            "low_above_open_or_close": lo > np.fmin(o, c),
            "high_below_open_or_close": h < np.fmax(o, c),
            "negative_volume": v < 0,
            "taker_buy_above_volume": tb > v,
            "open_time_off_grid": ot % step != 0,
            "close_time_not_open_plus_interval": ct != ot + step,
        }
    return {k: int(np.count_nonzero(counts[k])) for k in VIOLATIONS}


def _interval_section(table: pa.Table, step: int, top: int) -> tuple[dict[str, Any], pa.Table]:
    """The per-interval part of a report, and the table sorted and deduplicated by open_time
    (keeping a `source` column when the input has one)."""
    rows = table.num_rows
    typed = table.select(KLINE_SCHEMA.names).cast(KLINE_SCHEMA)
    if SOURCE_COLUMN in table.column_names:
        typed = typed.append_column(SOURCE_COLUMN, table.column(SOURCE_COLUMN).cast(pa.string()))
    table, dup_rows = dedupe_sorted(typed)
    ot = _ms(table, "open_time")
    first = int(ot[0]) if len(ot) else None
    last = int(ot[-1]) if len(ot) else None
    expected = (last - first) // step + 1 if len(ot) else 0
    n_gaps, missing, largest = _gaps(ot, step, top)
    volume = _f64(table, "volume")
    section = {
        "rows": rows,
        "duplicate_open_times": dup_rows,  # repeated open_times in the rows read (shards have none)
        "first_open_time": iso_utc(first),
        "last_open_time": iso_utc(last),
        "expected": int(expected),
        "present": int(len(ot)),
        "missing": int(missing),
        "pct_missing": round(100.0 * missing / expected, 6) if expected else None,
        "gaps": n_gaps,
        "largest_gaps": largest,
        "violations": _violations(table, step),
        "zero_volume": int(np.count_nonzero(volume == 0)),
        "longest_zero_volume_runs": _zero_volume_runs(ot, volume, step, top),
    }
    if SOURCE_COLUMN in table.column_names:
        names, counts = np.unique(np.asarray(table.column(SOURCE_COLUMN).fill_null(UNKNOWN_SOURCE).to_pylist(), dtype=object),
                                  return_counts=True)
        section["sources"] = {str(n): int(c) for n, c in zip(names, counts)}
    return section, table


def _close(a: np.ndarray, b: np.ndarray, rtol: float) -> np.ndarray:
    """Elementwise |a - b| <= rtol * max(|a|, |b|); a NULL (NaN) on either side counts as equal."""
    with np.errstate(invalid="ignore"):
        ok = np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b))
    return ok | np.isnan(a) | np.isnan(b)


def _minute_aggregates(minutes: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(hour start ms, minutes present, per-field aggregates) of sorted unique minute bars.

    Computed independently of `mscale.resample` (numpy, not SQL) so the reconciliation also checks
    the resampler: first open / last close by open_time, max high, min low, NULL-ignoring sums
    that are NULL (NaN) when every value in the hour is NULL.
    """
    ot = _ms(minutes, "open_time")
    hour = ot - ot % HOUR_MS
    starts = np.flatnonzero(np.concatenate([[True], hour[1:] != hour[:-1]]))
    ends = np.concatenate([starts[1:], [len(ot)]]) - 1
    counts = ends - starts + 1
    agg: dict[str, np.ndarray] = {}
    agg["open"] = _f64(minutes, "open")[starts]
    agg["close"] = _f64(minutes, "close")[ends]
    agg["high"] = np.fmax.reduceat(_f64(minutes, "high"), starts)
    agg["low"] = np.fmin.reduceat(_f64(minutes, "low"), starts)
    for name in ("volume", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote"):
        x = _f64(minutes, name)
        valid = ~np.isnan(x)
        s = np.add.reduceat(np.where(valid, x, 0.0), starts)
        agg[name] = np.where(np.add.reduceat(valid.astype(np.int64), starts) > 0, s, np.nan)
    return hour[starts], counts, agg


SKIP_REASONS = {
    "hours_skipped_derived_from_minutes": "derived from these minutes (resampled or synthetic): "
                                          "comparing them would compare the minutes with themselves",
    "hours_skipped_unknown_source": "of unknown source (written before mscale recorded each bar's source, "
                                    "by several writers): they may be derived from these minutes",
}


def _reconcile(minutes: pa.Table, hours: pa.Table) -> dict[str, Any]:
    """Compare every hourly bar whose hour has all 60 minutes against those minutes, unless the
    bar came from those minutes.

    When `hours` has a `source` column, bars whose source is resampled or synthetic (derived from
    the minutes) or unknown are skipped first and counted with their reason; without the column
    the caller vouches that no bar came from the minutes. A field is compared when both sides are
    non-NULL (a source without, e.g., quote volume is not contradicted by one that has it). Prices
    must agree to a relative 1e-12, volumes to 1e-9, trades exactly.
    """
    if SOURCE_COLUMN in hours.column_names:
        source = np.asarray(hours.column(SOURCE_COLUMN).fill_null(UNKNOWN_SOURCE).to_pylist(), dtype=object)
        derived = np.isin(source, list(DERIVED_SOURCES))
        unknown = source == UNKNOWN_SOURCE
    else:
        derived = unknown = np.zeros(hours.num_rows, dtype=bool)
    result: dict[str, Any] = {
        "hourly_bars": int(hours.num_rows),
        "hours_compared": 0,
        "hours_skipped_derived_from_minutes": int(np.count_nonzero(derived)),
        "hours_skipped_unknown_source": int(np.count_nonzero(unknown)),
        "hours_skipped_incomplete": 0,  # 1..59 minutes present
        "hours_skipped_no_minutes": 0,
        "mismatching_hours": 0,
        "mismatches": [],
    }
    hours = hours.filter(pa.array(~(derived | unknown)))
    hour_ot = _ms(hours, "open_time")
    if len(hour_ot) == 0:
        return result
    if minutes.num_rows:
        m_hour, m_count, m_agg = _minute_aggregates(minutes)
    else:
        m_hour, m_count, m_agg = np.empty(0, np.int64), np.empty(0, np.int64), {}
    pos = np.searchsorted(m_hour, hour_ot)
    found = pos < len(m_hour)
    found[found] = m_hour[pos[found]] == hour_ot[found]
    count = np.zeros(len(hour_ot), dtype=np.int64)
    count[found] = m_count[pos[found]]
    complete = count == MINUTES_PER_HOUR
    result["hours_skipped_no_minutes"] = int(np.count_nonzero(count == 0))
    result["hours_skipped_incomplete"] = int(np.count_nonzero((count > 0) & ~complete))
    result["hours_compared"] = int(np.count_nonzero(complete))
    if not complete.any():
        return result
    idx_h = np.flatnonzero(complete)
    idx_m = pos[idx_h]
    bad: dict[str, np.ndarray] = {}
    for name, rtol in RECONCILED_FIELDS:
        hv = _f64(hours, name)[idx_h]
        mv = m_agg[name][idx_m]
        bad[name] = ~_close(hv, mv, rtol)
    any_bad = np.zeros(len(idx_h), dtype=bool)
    for b in bad.values():
        any_bad |= b
    mismatches = []
    for k in np.flatnonzero(any_bad):
        fields = [name for name, _ in RECONCILED_FIELDS if bad[name][k]]
        h_i, m_i = idx_h[k], idx_m[k]
        mismatches.append(
            {
                "open_time": iso_utc(int(hour_ot[h_i])),
                "fields": fields,
                "hourly": {f: hours.column(f)[int(h_i)].as_py() for f in fields},
                "minutes": {f: _py(m_agg[f][m_i], f) for f in fields},
            }
        )
    result["mismatching_hours"] = len(mismatches)
    result["mismatches"] = mismatches
    return result


def _py(x: float, field: str) -> float | int | None:
    if np.isnan(x):
        return None
    return int(x) if field == "trades" else float(x)


def symbol_report(
    minutes: pa.Table,
    hours: pa.Table,
    *,
    symbol: str,
    sources: list[str],
    duplicates_dropped: int,
    top_gaps: int = 5,
    anomalies: dict[str, Any] | None = None,
) -> dict:
    """The data-quality record of one symbol from its 1m and 1h tables (KLINE_SCHEMA, either empty;
    `hours` may carry each bar's `source`).

    Pure: reads only its arguments. Tables need not be sorted; repeated open_times are counted
    (`duplicate_open_times`) and the last row of each is used. `sources` and `duplicates_dropped`
    come from shard metadata; a "synthetic" source sets `synthetic: true`. `anomalies` (from
    `shard_anomalies`, as `_shard_meta` sums them) is reported as `source_anomalies`. Gaps and
    zero-volume runs list the `top_gaps` largest, largest first. The reconciliation compares only
    hours with all 60 minutes present whose bar did not come from the minutes (skipped hours are
    counted by reason, never flagged).
    """
    validate_symbol(symbol)
    m_section, m_table = _interval_section(minutes, MINUTE_MS, top_gaps)
    h_section, h_table = _interval_section(hours, HOUR_MS, top_gaps)
    srcs = sorted({s for s in sources if s})
    return {
        "symbol": symbol,
        "sources": srcs,
        "synthetic": "synthetic" in srcs,
        "duplicates_dropped": int(duplicates_dropped),
        "source_anomalies": anomalies or _no_anomalies(),
        "minutes": m_section,
        "hours": h_section,
        "reconciliation": _reconcile(m_table, h_table),
    }


def _no_anomalies() -> dict[str, Any]:
    return {**{k: 0 for k in ANOMALY_KEYS}, "by_shard": {}}


def _shard_meta(cfg: Config, symbol: str) -> tuple[list[str], int, dict[str, Any]]:
    """(sources, duplicates dropped, source anomalies) of a symbol's shards, from their metadata.

    Anomalies are summed per shard over the files imported into it (`by_shard` lists the shards
    with any) and in total; the duplicates an import dropped count in both."""
    sources: set[str] = set()
    dups = 0
    anomalies = _no_anomalies()
    for interval in ("1m", "1h"):
        for shard in list_shards(cfg.market_dir, interval, symbol):
            meta = shard_metadata(shard.path)
            sources.update(s for s in meta.get(META_SOURCE, b"").decode().split(",") if s)
            try:
                dups += int(meta.get(META_DUPLICATES, b"0"))
            except ValueError:
                log.warning("%s: unreadable %s in its metadata; counted as 0", shard.path, META_DUPLICATES.decode())
            per_shard = {k: 0 for k in ANOMALY_KEYS}
            for counts in shard_anomalies(shard.path).values():
                for k in ANOMALY_KEYS:
                    per_shard[k] += counts[k]
            dups += per_shard["duplicates_dropped"]
            if any(per_shard.values()):
                anomalies["by_shard"][shard.path.name] = per_shard
                for k in ANOMALY_KEYS:
                    anomalies[k] += per_shard[k]
    return sorted(sources), dups, anomalies


def build_report(cfg: Config, symbols: list[str] | None = None) -> list[dict]:
    """One `symbol_report` per symbol, sorted by symbol, read from the shards under `cfg.market_dir`.

    `symbols=None` means every symbol with minute or hourly shards. Read-only.
    """
    if symbols is None:
        todo = sorted(set(symbols_with_data(cfg.market_dir, "1m")) | set(symbols_with_data(cfg.market_dir, "1h")))
    else:
        todo = sorted({validate_symbol(s) for s in symbols})
    reports = []
    for symbol in todo:
        minutes = read_klines(cfg.market_dir, "1m", symbol)
        hours = read_klines(cfg.market_dir, "1h", symbol, with_source=True)
        if minutes.num_rows == 0 and hours.num_rows == 0:
            log.warning("%s: no shards under %s", symbol, cfg.market_dir)
        sources, dups, anomalies = _shard_meta(cfg, symbol)
        rep = symbol_report(minutes, hours, symbol=symbol, sources=sources, duplicates_dropped=dups, anomalies=anomalies)
        log.info(
            "%s: %d minutes (%s%% missing), %d hours, %d mismatching hours",
            symbol,
            rep["minutes"]["rows"],
            rep["minutes"]["pct_missing"],
            rep["hours"]["rows"],
            rep["reconciliation"]["mismatching_hours"],
        )
        reports.append(rep)
    return reports


def _gap_text(gaps: list[dict[str, Any]]) -> str:
    return ";".join(f"{g['start']}..{g['end']}({g['bars']})" for g in gaps[:CSV_FIRST_FEW])


def flat_row(rep: dict) -> dict[str, Any]:
    """One CSV row of a report: counts, plus the first few gaps and mismatches as text."""
    row: dict[str, Any] = {
        "symbol": rep["symbol"],
        "synthetic": rep["synthetic"],
        "sources": ";".join(rep["sources"]),
        "duplicates_dropped": rep["duplicates_dropped"],
    }
    anomalies = rep.get("source_anomalies") or _no_anomalies()
    row.update({f"source_{k}": anomalies[k] for k in ANOMALY_KEYS})
    row["hour_sources"] = ";".join(f"{k}={v}" for k, v in sorted(rep["hours"].get("sources", {}).items()))
    for prefix, key in (("minute", "minutes"), ("hour", "hours")):
        s = rep[key]
        row.update(
            {
                f"{prefix}_rows": s["rows"],
                f"{prefix}_first_open_time": s["first_open_time"] or "",
                f"{prefix}_last_open_time": s["last_open_time"] or "",
                f"{prefix}_expected": s["expected"],
                f"{prefix}_missing": s["missing"],
                f"{prefix}_pct_missing": "" if s["pct_missing"] is None else s["pct_missing"],
                f"{prefix}_gaps": s["gaps"],
                f"{prefix}_largest_gaps": _gap_text(s["largest_gaps"]),
                f"{prefix}_zero_volume": s["zero_volume"],
                f"{prefix}_longest_zero_volume_runs": _gap_text(s["longest_zero_volume_runs"]),
                f"{prefix}_duplicate_open_times": s["duplicate_open_times"],
            }
        )
        row.update({f"{prefix}_{k}": v for k, v in s["violations"].items()})
    r = rep["reconciliation"]
    row.update(
        {
            "recon_hours_compared": r["hours_compared"],
            "recon_hours_skipped_derived_from_minutes": r.get("hours_skipped_derived_from_minutes", 0),
            "recon_hours_skipped_unknown_source": r.get("hours_skipped_unknown_source", 0),
            "recon_hours_skipped_incomplete": r["hours_skipped_incomplete"],
            "recon_hours_skipped_no_minutes": r["hours_skipped_no_minutes"],
            "recon_mismatching_hours": r["mismatching_hours"],
            "recon_first_mismatches": ";".join(
                f"{m['open_time']}:{'|'.join(m['fields'])}" for m in r["mismatches"][:CSV_FIRST_FEW]
            ),
        }
    )
    return row


def write_report(cfg: Config, reports: list[dict]) -> tuple[Path, Path]:
    """Write `ingestion_report.json` (everything) and `.csv` (one flat row per symbol) atomically.

    Both files are under `cfg.reports_dir`; each is either the previous version or the complete
    new one. Returns (json path, csv path).
    """
    json_path = Path(cfg.reports_dir) / REPORT_JSON
    csv_path = Path(cfg.reports_dir) / REPORT_CSV
    doc = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "market": cfg.market,
        "symbols": reports,
    }
    write_text_atomic(json_path, json.dumps(doc, indent=2) + "\n")
    rows = [flat_row(r) for r in reports]
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(csv_path, buf.getvalue())
    log.info("wrote %s and %s (%d symbols)", json_path, csv_path, len(reports))
    return json_path, csv_path


def format_report(reports: list[dict]) -> str:
    """A plain-text table, one line per symbol, for the terminal."""
    header = (
        "symbol", "src", "1m rows", "1m first", "1m last", "missing", "gaps", "largest gap",
        "dups", "viol", "zero-vol", "1h rows", "recon ok/cmp/skip",
    )  # fmt: skip
    if not reports:
        return "no symbols with data"
    lines: list[tuple[str, ...]] = [header]
    for rep in reports:
        m, h, r = rep["minutes"], rep["hours"], rep["reconciliation"]
        largest = m["largest_gaps"][0] if m["largest_gaps"] else None
        viol = sum(m["violations"].values()) + sum(h["violations"].values())
        skipped = r["hours_skipped_incomplete"] + r["hours_skipped_no_minutes"] + sum(r.get(k, 0) for k in SKIP_REASONS)
        lines.append(
            (
                rep["symbol"],
                "synthetic" if rep["synthetic"] else (",".join(rep["sources"]) or "-"),
                f"{m['rows']:,}",
                (m["first_open_time"] or "-")[:16].replace("T", " "),
                (m["last_open_time"] or "-")[:16].replace("T", " "),
                "-" if m["pct_missing"] is None else f"{m['pct_missing']:.3f}%",
                str(m["gaps"]),
                f"{largest['bars']}m @ {largest['start'][:16].replace('T', ' ')}" if largest else "-",
                str(rep["duplicates_dropped"]),
                str(viol),
                str(m["zero_volume"]),
                f"{h['rows']:,}",
                f"{r['hours_compared'] - r['mismatching_hours']}/{r['hours_compared']}/{skipped}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [note for rep in reports for note in _notes(rep)]
    return "\n".join(out + ([""] + notes if notes else []))


def _notes(rep: dict) -> list[str]:
    """Lines under the table: what normalisation removed from the sources, and the hours the
    reconciliation skipped because of where their bars came from."""
    out = []
    a = rep.get("source_anomalies") or _no_anomalies()
    found = [
        f"{a[key]:,} {text}"
        for key, text in (
            ("close_time_not_open_plus_interval_minus_1ms", "close time not open + interval - 1 ms"),
            ("timestamps_in_us", "timestamp in µs"),
            ("duplicates_dropped", "repeated row dropped"),
        )
        if a.get(key)
    ]
    if found:
        out.append(f"{rep['symbol']}: normalised on import: {', '.join(found)} "
                   f"(in {', '.join(sorted(a['by_shard']))})")
    r = rep["reconciliation"]
    for key, why in SKIP_REASONS.items():
        if r.get(key):
            out.append(f"{rep['symbol']}: reconciliation skipped {r[key]:,} hourly bars {why}")
    return out
