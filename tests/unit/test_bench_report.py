"""bench/report.py: the ratio table of `make bench` from the benchmarks' JSON files (canned here), rows other
benchmarks contribute, and a clear exit when there is nothing to report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPORT = Path(__file__).resolve().parents[2] / "bench" / "report.py"


def _run(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPORT), str(folder)], capture_output=True, text=True, timeout=120)


def _pause_row(method: str, median: float, classic: float) -> dict:
    return {"memory_mib": 1024, "method": method, "median_ms": median, "max_ms": median * 2,
            "vs_classic": median / classic, "wall_s": 1.0, "dump_mib": 200}


def test_table_has_every_benchmarks_rows(tmp_path):
    (tmp_path / "pause.json").write_text(json.dumps({"guests": [], "table": [
        _pause_row("overlay/live", 170, 839), _pause_row("classic scripts", 839, 839)]}))
    (tmp_path / "consistency.json").write_text(json.dumps({"results": [], "consistent": 49, "total": 50}))
    (tmp_path / "scale.json").write_text(json.dumps({"ratios": [
        {"benchmark": "scale", "what": "pass vs sanoid", "value": "0.25x", "goal": "<= 0.3x"}]}))
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("1024 MiB overlay/live" in line and "0.20x classic" in line and "<= 40 ms" in line for line in lines)
    assert any("49/50" in line for line in lines)
    assert any("pass vs sanoid" in line and "0.25x" in line and "<= 0.3x" in line for line in lines)
    assert lines[-1].startswith(("plot: ", "no plot: matplotlib"))  # the PNG, or why not


def test_nothing_to_report_is_a_clear_error(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    proc = _run(tmp_path)
    assert proc.returncode == 1
    assert "no benchmark results" in proc.stderr and "cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr
