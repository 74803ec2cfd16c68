"""Reports: the ingestion / data-quality report (`mscale report`, `ingestion.py`) and a run's
charts (`charts.py`) and self-contained HTML page (`html.py`, `templates/report.html.j2`)."""

from mscale.report.ingestion import build_report, flat_row, format_report, iso_utc, symbol_report, write_report

__all__ = ["build_report", "flat_row", "format_report", "iso_utc", "symbol_report", "write_report"]
