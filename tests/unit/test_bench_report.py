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


def test_the_scale_benchmarks_goal_rows_reach_the_table(tmp_path, monkeypatch):
    """bench/_scale.write_results puts a copy with the goal rows into BENCH_OUT, where report.py finds it."""
    sys.path.insert(0, str(REPORT.parent))
    try:
        import _scale
    finally:
        sys.path.remove(str(REPORT.parent))
    monkeypatch.setattr(_scale, "RESULTS", tmp_path / "history")
    monkeypatch.setenv("BENCH_OUT", str(tmp_path / "out"))
    rows = [("pass wall time (s)", "2.4", "16.0", "6.70x", "<= 1.5x", "NOT met"),
            ("cycle time median (s)", "1.7", "14.4", "", "", "")]
    ratios = _scale.goal_rows(rows, lambda r: f"{r[3]} (1 guest {r[1]}, 8 guests {r[2]})", 4)
    kept = _scale.write_results("many_vms", {"wall": 16.0}, ratios)

    assert kept.parent == tmp_path / "history" and json.loads(kept.read_text())["wall"] == 16.0
    proc = _run(tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if "pass wall time" in x]
    assert "many_vms" in line and "6.70x (1 guest 2.4, 8 guests 16.0)" in line and "<= 1.5x (NOT met)" in line
    assert "cycle time median" not in proc.stdout  # no goal: not a row of the common table
