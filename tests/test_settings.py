"""Every key of mscale.toml's [ingest], [features], [labels] and [train] is type- and range-checked
by load_config, before any command does work: one line naming the key, its value and what is
allowed; list-typed keys reject strings."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import REPO
from mscale.config import FeatureSettings, IngestSettings, LabelSettings, TrainSettings, load_config
from mscale.errors import MscaleError

# (section, key, TOML value, a piece of the message that shows the value)
BAD = [
    ("ingest", "base_url", "42", "42"),
    ("ingest", "base_url", '"data-api.binance.vision"', '"data-api.binance.vision"'),
    ("ingest", "archive_url", '["https://data.binance.vision"]', "https://data.binance.vision"),
    ("ingest", "pace_ms", "-1", "-1"),
    ("ingest", "pace_ms", '"250"', '"250"'),
    ("ingest", "timeout_s", "0", "0"),
    ("ingest", "timeout_s", '"x"', '"x"'),
    ("ingest", "max_retries", "true", "true"),
    ("ingest", "backoff_base_s", '"x"', '"x"'),
    ("ingest", "backoff_max_s", "-1.5", "-1.5"),
    ("ingest", "weight_limit", "0", "0"),
    ("ingest", "weight_slowdown", "1.5", "1.5"),
    ("features", "minute_windows", '"5,15,60"', '"5,15,60"'),
    ("features", "minute_windows", "[7, 15, 60]", "[7, 15, 60]"),
    ("features", "minute_windows", "[5, 15]", "[5, 15]"),
    ("features", "z_window", "1", "1"),
    ("features", "minute_lag_hours", "-1", "-1"),
    ("features", "symbols", '"BTCUSDT"', '"BTCUSDT"'),
    ("features", "symbols", '["btcusdt"]', "btcusdt"),
    ("features", "start", '"2024/01/01"', "2024/01/01"),
    ("features", "end", '"2024-02-30"', "2024-02-30"),
    ("features", "memory_limit", "4", "4"),
    ("features", "memory_limit", '"lots"', '"lots"'),
    ("features", "threads", "0", "0"),
    ("features", "executor", '"spark"', '"spark"'),
    ("features", "scheduler", '"head:8786"', '"head:8786"'),
    ("train", "executor", "1", "1"),
    ("train", "scheduler", '["tcp://a:1"]', '["tcp://a:1"]'),
    ("labels", "horizons", '"1,4,24"', '"1,4,24"'),
    ("labels", "horizons", "[0, 1]", "[0, 1]"),
    ("labels", "horizon", '"1"', '"1"'),
    ("labels", "epsilon_vol_mult", "0", "0"),
    ("labels", "epsilon_window", "1", "1"),
    ("labels", "vol_window", "2.5", "2.5"),
    ("labels", "volm_quantile", "1.5", "1.5"),
    ("labels", "volm_days", "0", "0"),
    ("labels", "volm_min_days", "0", "0"),
    ("labels", "range_factor", "-1", "-1"),
    ("labels", "big_move_mult", '"x"', '"x"'),
    ("train", "model", '"xgboost"', "xgboost"),
    ("train", "features", '"all"', "all"),
    ("train", "columns", '"rsi_14"', '"rsi_14"'),
    ("train", "columns", '["rsi 14"]', "rsi 14"),
    ("train", "compare", '"yes"', '"yes"'),
    ("train", "fit", '"global"', "global"),
    ("train", "split_mode", '"kfold"', "kfold"),
    ("train", "n_splits", "0", "0"),
    ("train", "embargo_h", "-1", "-1"),
    ("train", "val_fraction", "1.0", "1.0"),
    ("train", "train", '"2024-01-01"', "2024-01-01"),
    ("train", "tune", "5", "5"),
    ("train", "oos", '"2024-07-01→2024-06-01"', "2024-07-01→2024-06-01"),
    ("train", "symbols", '"BTCUSDT"', '"BTCUSDT"'),
    ("train", "start", '"yesterday"', "yesterday"),
    ("train", "end", "20240101", "20240101"),
    ("train", "fees", '"gross,VIP9"', '"gross,VIP9"'),
    ("train", "fees", '["taker=-1"]', "taker=-1"),
    ("train", "fees", "[]", "[]"),
    ("train", "tune_fee", "5", "5"),
    ("train", "fill", '"vwap"', "vwap"),
    ("train", "slippage", "-1", "-1"),
    ("train", "slippage", '"big"', "big"),
    ("train", "filter", '"all"', "all"),
    ("train", "filter_exit", "1", "1"),
    ("train", "long_only", '"no"', '"no"'),
    ("train", "min_hold", "-1", "-1"),
    ("train", "cooldown", "1.5", "1.5"),
    ("train", "max_trades_per_day", "-1", "-1"),
    ("train", "min_trades", "-1", "-1"),
    ("train", "vol_high_quantile", "1", "1"),
    ("train", "seed", "-1", "-1"),
    ("train", "threads", "0", "0"),
    ("train", "shuffle_labels", "0", "0"),
    ("train", "aux", '"x"', '"x"'),
    ("train", "block_h", "0", "0"),
]

SECTIONS = {"ingest": IngestSettings, "features": FeatureSettings, "labels": LabelSettings, "train": TrainSettings}


def _toml(tmp_path: Path, section: str, body: str) -> Path:
    (tmp_path / "mscale.toml").write_text(f"[{section}]\n{body}\n", encoding="utf-8")
    return tmp_path


def test_every_key_of_every_section_has_a_bad_value_case():
    covered = {(s, k) for s, k, _, _ in BAD}
    missing = [(s, f.name) for s, cls in SECTIONS.items() for f in fields(cls) if (s, f.name) not in covered]
    assert not missing, f"settings without a check case: {missing}"


@pytest.mark.parametrize("section, key, value, shown", BAD, ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD])
def test_a_bad_setting_is_one_line_naming_key_value_and_what_is_allowed(tmp_path, section, key, value, shown):
    root = _toml(tmp_path, section, f"{key} = {value}")
    with pytest.raises(MscaleError) as e:
        load_config(project_root=root)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"[{section}] {key} must be " in msg, msg  # the key, then what is allowed
    assert f"got {shown}" in msg or shown in msg.split("got ", 1)[-1], msg  # the value as written
    assert "mscale.toml" in msg, msg  # where the value came from


def test_cross_key_rules_name_both_keys(tmp_path):
    cases = [
        ("ingest", "backoff_base_s = 10\nbackoff_max_s = 1", "backoff_max_s"),
        ("features", 'start = "2024-03-01"\nend = "2024-01-01"', "start"),
        ("labels", "horizon = 2", "horizon must be one of horizons"),
        ("labels", "volm_min_days = 40", "volm_min_days (40) must be <= volm_days"),
    ]
    for section, body, message in cases:
        with pytest.raises(MscaleError) as e:
            load_config(project_root=_toml(tmp_path, section, body))
        assert message in str(e.value) and "\n" not in str(e.value)


def test_good_settings_pass_and_ints_are_accepted_for_numbers(tmp_path):
    root = tmp_path
    (root / "mscale.toml").write_text(
        '[ingest]\nbase_url = "http://127.0.0.1:8080/"\ntimeout_s = 5\nbackoff_base_s = 0\nweight_slowdown = 1\n'
        '[features]\nsymbols = ["BTCUSDT", "ETHUSDT"]\nminute_windows = [5, 15, 30, 60]\nstart = "2024-01-01"\n'
        'end = "2024-03-01"\nmemory_limit = "512MB"\n'
        '[labels]\nhorizons = [1, 12]\nhorizon = 12\nvolm_quantile = 1\n'
        '[train]\nfees = ["gross", "taker=10"]\ntune_fee = "taker"\nfill = "twap_5m"\nslippage = 2\n'
        'oos = "2024-07-01→end"\nmax_trades_per_day = 3\ncolumns = ["rsi_14", "m_rv_60m"]\n',
        encoding="utf-8",
    )
    cfg = load_config(project_root=root)
    assert cfg.features.symbols == ("BTCUSDT", "ETHUSDT") and cfg.ingest.timeout_s == 5
    assert load_config(project_root=tmp_path / "nothing-here")  # the defaults are valid


def test_a_bad_flag_value_names_the_flag(tmp_path):
    with pytest.raises(MscaleError, match=r"\[features\] threads must be a whole number >= 1, got 0 \(flag --threads\)"):
        load_config(project_root=tmp_path, features={"threads": 0})
    with pytest.raises(MscaleError, match=r"\[ingest\] pace_ms .*got -5 \(flag --pace-ms\)"):
        load_config(project_root=tmp_path, ingest={"pace_ms": -5})


def mscale(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCALE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "mscale", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("section, body, args, key", [
    ("features", 'symbols = "BTCUSDT"', ["features"], "[features] symbols"),
    ("ingest", "base_url = 42", ["ingest", "--symbols", "BTCUSDT", "--start", "2023-08-01", "--end", "2023-08-01",
                                 "--source", "rest"], "[ingest] base_url"),
    ("ingest", 'backoff_base_s = "x"', ["ingest", "--symbols", "BTCUSDT", "--start", "2023-08-01", "--source", "rest"],
     "[ingest] backoff_base_s"),
])
def test_the_command_line_stops_with_one_line_before_any_work(tmp_path, section, body, args, key):
    """The defects of issue 9: an AttributeError, a TypeError, and 'invalid symbol 'B'' after a build line."""
    _toml(tmp_path, section, body)
    result = mscale(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {key} must be "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "data").exists()  # nothing was done


def test_an_unquoted_toml_date_is_the_date_it_says(tmp_path):
    root = _toml(tmp_path, "features", "start = 2024-01-01\nend = 2024-03-01")
    assert load_config(project_root=root).features.start == "2024-01-01"
    root = _toml(tmp_path, "features", "start = 2024-01-01T00:00:00")
    with pytest.raises(MscaleError, match=r"\[features\] start must be a UTC date \"YYYY-MM-DD\""):
        load_config(project_root=root)


def test_an_unknown_market_names_the_key_and_file(tmp_path):
    from mscale.config import load_config
    from mscale.errors import MscaleError

    (tmp_path / "mscale.toml").write_text('market = "cm"\n')
    with pytest.raises(MscaleError, match=r"mscale\.toml: market = 'cm' is not a market .*coin-M is not supported"):
        load_config(project_root=tmp_path)
    with pytest.raises(MscaleError, match=r"^--market = 'xx'"):
        load_config(project_root=tmp_path, market="xx")
