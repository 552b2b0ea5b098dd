"""journald native protocol: encoding, fields, the memfd path for big records, the stderr fallback, the target rule.

A datagram socket of our own stands in for /run/systemd/journal/socket; the lab test against a real
systemd-journald is tests/integration/test_journald.py.
"""
from __future__ import annotations

import io
import logging
import os
import socket
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapd import logsetup
from vmsnapd.logsetup import NOTICE, JournalHandler, encode_entry, fields, log_fields


def decode_pairs(data: bytes) -> list[tuple[str, bytes]]:
    """The journal's side of the native protocol (systemd.io JOURNAL_NATIVE_PROTOCOL), for checking ours."""
    out: list[tuple[str, bytes]] = []
    while data:
        line_end = data.index(b"\n")
        line = data[:line_end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            out.append((key.decode(), value))
            data = data[line_end + 1:]
        else:
            (size,) = struct.unpack("<Q", data[line_end + 1:line_end + 9])
            value = data[line_end + 9:line_end + 9 + size]
            assert data[line_end + 9 + size:line_end + 10 + size] == b"\n"
            out.append((line.decode(), value))
            data = data[line_end + 10 + size:]
    return out


def decode_entry(data: bytes) -> dict[str, bytes]:
    """One value per field (the last); fields with several values: decode_pairs."""
    return dict(decode_pairs(data))


@given(st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True), st.text(max_size=200), max_size=8))
def test_encoding_round_trips_any_value(entry):
    decoded = decode_entry(encode_entry(entry))
    assert decoded == {k: v.encode("utf-8", "replace") for k, v in entry.items()}


@pytest.fixture
def journal(tmp_path):
    path = tmp_path / "socket"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    handler = JournalHandler(str(path))
    logger = logging.getLogger("vmsnapd.test.journal")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, server, handler
    logger.handlers[:] = []
    handler.close()
    server.close()


def receive_pairs(server: socket.socket) -> list[tuple[str, bytes]]:
    data, fds, _flags, _addr = socket.recv_fds(server, 1 << 20, 1)
    if fds:  # the big-record path: an empty datagram with a sealed memfd
        assert data == b""
        with os.fdopen(fds[0], "rb") as memfd:
            memfd.seek(0)  # journald maps it from the start; our write left the shared offset at the end
            data = memfd.read()
    return decode_pairs(data)


def receive(server: socket.socket) -> dict[str, bytes]:
    return dict(receive_pairs(server))


def test_each_record_carries_priority_identifier_and_vmsnapd_fields(journal):
    logger, server, _ = journal
    with log_fields(dataset=["tank/VM/a", "tank/VM/b"], domain="web", snapshot=None, cycle="web-2026"):
        logger.log(NOTICE, "cycle done", extra=fields(pause_ms=85))
        logger.error("cycle failed:\nsecond line")
    logger.warning("outside")
    done, failed, outside = receive(server), receive(server), receive(server)
    assert done["MESSAGE"] == b"cycle done" and done["PRIORITY"] == b"5"
    assert done["SYSLOG_IDENTIFIER"] == b"vmsnapd"
    assert done["VMSNAPD_DOMAIN"] == b"web"
    assert done["VMSNAPD_CYCLE"] == b"web-2026" and done["VMSNAPD_PAUSE_MS"] == b"85"
    assert "VMSNAPD_SNAPSHOT" not in done  # not known: left out, not empty
    assert failed["PRIORITY"] == b"3" and failed["MESSAGE"] == b"cycle failed:\nsecond line"
    assert "VMSNAPD_PAUSE_MS" not in failed and failed["VMSNAPD_DOMAIN"] == b"web"
    assert outside["PRIORITY"] == b"4" and not any(k.startswith("VMSNAPD_D") for k in outside)


def test_fields_do_not_leak_between_threads(journal):
    import threading

    logger, server, _ = journal
    with log_fields(domain="main-thread-vm"):
        t = threading.Thread(target=lambda: logger.warning("from another thread"))
        t.start()
        t.join()
    assert "VMSNAPD_DOMAIN" not in receive(server)


def test_a_record_too_big_for_a_datagram_goes_through_a_sealed_memfd(journal):
    logger, server, _ = journal
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    big = "x" * 400_000  # beyond the AF_UNIX datagram limit (~212 KiB by default)
    logger.warning(big, extra=fields(domain="big"))
    entry = receive(server)
    assert entry.get("MESSAGE") == big.encode() and entry["VMSNAPD_DOMAIN"] == b"big", "message lost"  # short diff


def test_exception_text_is_part_of_the_message(journal):
    logger, server, _ = journal
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("crashed")
    message = receive(server)["MESSAGE"].decode()
    assert message.startswith("crashed\nTraceback") and "RuntimeError: boom" in message


def test_without_the_socket_lines_go_to_stderr_with_a_priority(tmp_path, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    handler = JournalHandler(str(tmp_path / "no-such-socket"))
    logger = logging.getLogger("vmsnapd.test.fallback")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        logger.error("still seen")
    finally:
        logger.handlers[:] = []
        handler.close()
    assert "<3>vmsnapd.test.fallback: still seen" in err.getvalue()


def test_unknown_field_names_are_refused():
    with pytest.raises(TypeError):
        fields(domian="typo")


@pytest.mark.parametrize("wanted, socket_exists, stderr_is_journal, expected", [
    ("auto", True, True, "journal"),
    ("auto", True, False, "stderr"),   # a terminal, cron, a test capturing stderr
    ("auto", False, True, "stderr"),   # no journald
    ("journal", True, False, "journal"),
    ("journal", False, False, "stderr"),
    ("stderr", True, True, "stderr"),
])
def test_log_target_rule(monkeypatch, wanted, socket_exists, stderr_is_journal, expected):
    monkeypatch.setenv("VMSNAPD_LOG_TARGET", wanted)
    monkeypatch.setattr(logsetup, "journal_listening", lambda: socket_exists)
    monkeypatch.setattr(logsetup, "stderr_is_journal", lambda: stderr_is_journal)
    assert logsetup.log_target() == expected


def test_stderr_is_journal_compares_device_and_inode(tmp_path, monkeypatch):
    f = open(tmp_path / "stream", "w")  # noqa: SIM115 — closed in the finally below, after the fd checks
    try:
        st_ = os.fstat(f.fileno())
        monkeypatch.setattr(sys, "stderr", f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st_.st_dev}:{st_.st_ino}")
        assert logsetup.stderr_is_journal()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st_.st_dev}:{st_.st_ino + 1}")
        assert not logsetup.stderr_is_journal()
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not logsetup.stderr_is_journal()
    finally:
        f.close()


def test_priorities_follow_syslog():
    assert [logsetup.syslog_priority(x) for x in (logging.DEBUG, logging.INFO, NOTICE, logging.WARNING,
                                                 logging.ERROR, logging.CRITICAL)] == [7, 6, 5, 4, 3, 2]
    assert logging.getLevelName(NOTICE) == "NOTICE"


def test_a_socket_file_nobody_listens_on_is_no_journal(tmp_path):
    path = tmp_path / "socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        assert logsetup.journal_listening(str(path))
    assert path.exists() and not logsetup.journal_listening(str(path))  # as after journald stopped


def test_a_list_becomes_one_field_per_item(journal):
    """journalctl matches a field value exactly: each dataset of a VM and each snapshot name is its own value."""
    logger, server, _ = journal
    with log_fields(dataset=["tank/VM/a", "tank/VM/b"], snapshot=["s_hourly", "s_daily"]):
        logger.warning("two of each")
    pairs = receive_pairs(server)
    assert [v for k, v in pairs if k == "VMSNAPD_DATASET"] == [b"tank/VM/a", b"tank/VM/b"]
    assert [v for k, v in pairs if k == "VMSNAPD_SNAPSHOT"] == [b"s_hourly", b"s_daily"]
