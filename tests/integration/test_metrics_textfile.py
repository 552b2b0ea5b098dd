"""`once` from cron writes its metrics for node_exporter's textfile collector (`metrics_textfile`), atomically."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.lab]


def test_once_writes_the_textfile_and_a_dry_run_does_not(lab, dataset, vmsnapd_env):
    env = vmsnapd_env
    textfile = env.root / "textfile_collector" / "vmsnapd.prom"
    textfile.parent.mkdir()
    env.daemon["metrics_textfile"] = str(textfile)
    env.datasets[dataset.name] = {"hourly": 1, "daily": 0, "monthly": 0, "domain": "none"}

    env.run("once", "--dry-run")
    assert not textfile.exists()

    env.run("once")
    samples = {(s.name, s.labels.get("dataset"), s.labels.get("period")): s.value
               for f in text_string_to_metric_families(textfile.read_text()) for s in f.samples}
    assert samples[("vmsnapd_snapshots_taken_total", dataset.name, None)] == 1
    assert samples[("vmsnapd_snapshots", dataset.name, "hourly")] == 1
    assert ("vmsnapd_last_snapshot_timestamp_seconds", dataset.name, "hourly") in samples
    pool = dataset.name.split("/")[0]
    ratio = [v for (name, _, _), v in samples.items() if name == "vmsnapd_pool_capacity_ratio"]
    assert ratio and all(0 <= v <= 1 for v in ratio), pool
    assert [p.name for p in textfile.parent.iterdir()] == ["vmsnapd.prom"]  # no temporary file left
