"""bench/tep.py on the Tennessee Eastman data in ../shared/data/tep (skipped when absent).

The data are not in the repo (licence: ../shared/data/tep/LICENSE); the core kernel tests do
not need them.  These check the protocol (d00.dat is stored transposed) and that the real
kernel, learned on d00.dat only, keeps its stated budget on d00_te.dat within the factor the
warm-up allows while detecting the plainly detectable faults.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "tep.py"
_spec = importlib.util.spec_from_file_location("bench_tep", _PATH)
assert _spec is not None and _spec.loader is not None
tep = importlib.util.module_from_spec(_spec)
sys.modules["bench_tep"] = tep
_spec.loader.exec_module(tep)


def test_missing_data_is_a_clear_skip_not_a_failure(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["tep.py", "--data", str(tmp_path)])
    assert tep.main() == 0
    assert "skipped" in capsys.readouterr().err
    with pytest.raises(tep.DataMissing):
        tep.load(tmp_path)


@pytest.fixture(scope="module")
def data():
    if not (tep.DEFAULT_DATA / "d00.dat").is_file():
        pytest.skip(f"Tennessee Eastman data not found in {tep.DEFAULT_DATA}")
    return tep.load(tep.DEFAULT_DATA)


def test_the_training_file_is_read_transposed(data) -> None:
    assert data["d00"].shape == (500, 52)
    assert data["d00_te"].shape == (960, 52) and data["d21_te"].shape == (960, 52)


def test_a_one_percent_budget_on_unseen_normal_data_and_the_easy_faults(data) -> None:
    few = {k: v for k, v in data.items() if k in ("d00", "d00_te", "d01_te", "d06_te")}
    alarm, info = tep.alarms(few["d00"], few["d00_te"], tep.group_settings(0.01, 2))
    assert info["method"] == "budget" and info["lags"] == 2
    # the warm-up is 25 h of a process whose 48 h test run is wider: within a factor 3
    assert alarm.mean() <= 0.03
    for f in ("d01_te", "d06_te"):  # a step in the A/C feed ratio, the loss of A feed
        a, _ = tep.alarms(few["d00"], few[f], tep.group_settings(0.01, 2))
        assert a[tep.FAULT_START :].mean() > 0.95
        assert a[: tep.FAULT_START].mean() <= 0.05  # before the fault: as normal
