"""Progress lines from libvirt's job information (pure formatting; the poller is exercised on a terminal only)."""
from __future__ import annotations

import io

from vmsnapd.progress import describe_block_job, describe_job, progress_on_tty


def test_save_job_shows_bytes_total_and_rate():
    line = describe_job("web", {"type": 2, "memory_processed": 512 << 20, "memory_total": 2 << 30,
                                "memory_bps": 300 << 20})
    assert line == "web: RAM 512.0 MiB of 2.0 GiB (25%), 300.0 MiB/s"


def test_no_job_no_line():
    assert describe_job("web", {"type": 0}) is None and describe_job("web", {}) is None
    assert describe_block_job("web", "vda", {}) is None


def test_block_commit_shows_its_share():
    assert describe_block_job("web", "vda", {"type": 4, "cur": 3 << 20, "end": 12 << 20, "bandwidth": 0}) == \
        "web: commit vda 3.0 MiB of 12.0 MiB (25%)"


def test_nothing_is_written_when_the_output_is_not_a_terminal():
    out = io.StringIO()
    with progress_on_tty("test:///default", ["web"], out=out):
        pass
    assert out.getvalue() == ""
