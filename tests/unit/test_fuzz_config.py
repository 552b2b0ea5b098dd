"""Property-based tests of the config loader: whatever the bytes, the outcome is a Config or a ConfigError.

Three sources of input: byte-level mutations of the shipped samples (config/valid/*.toml, config/vmsnapd.toml),
structural mutations of their parsed tables (keys, values, nesting) written back as TOML, and random documents.
A Config that comes out must also resolve (the daemon does that right after loading).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import tomllib
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsnapd.config import (
    POLICY_KEYS,
    Config,
    ConfigError,
    DaemonSettings,
    DatasetTable,
    Hooks,
    config_roots,
    load_config,
    parse_config,
    resolve,
    table_policy,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "config" / "valid").glob("*.toml")) + [ROOT / "config" / "vmsnapd.toml"]
SAMPLE_BYTES = [path.read_bytes() for path in SAMPLES]
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KNOWN_KEYS = sorted({*POLICY_KEYS, *DaemonSettings.model_fields, *DatasetTable.model_fields, *Hooks.model_fields,
                     "daemon", "templates", "datasets", "hooks"})
INTERESTING_STRINGS = ["auto", "none", "overlay", "pause", "zstd", "fail", "continue", "disk-only", "required",
                       "/var/lib/vmsnapd", "relative/path", "rpool/VM", "rpool//VM", "-r", "a@b", "production",
                       "127.0.0.1:9810", "[::1]:9810", "::1:9810", "[::1]:0", "\0", "/x\0y", "a\nb", "\x7f", "",
                       "qemu:///system", "é", "\u2028", "x" * 300]
TOKENS = [b"[", b"]", b"[[", b"]]", b"{", b"}", b"=", b'"', b"'", b'"""', b"'''", b"\\", b"\\u0000", b"\x00",
          b"\xff", b"\xc3", b"\n", b"\r\n", b"\t", b"#", b".", b",", b"inf", b"nan", b"-inf", b"1e999", b"-1",
          b"0", b"99999999999999999999", b"true", b"1979-05-27T07:32:00Z", b"datasets", b"templates", b"hooks",
          b'"rpool/VM"', b"recursive = true", b"use_template", b"[datasets.\"x/y\"]", b"[templates.t]"]


# -- the one property ------------------------------------------------------------------------------------------


def assert_config_or_config_error(load) -> None:
    try:
        config = load()
    except ConfigError as exc:
        assert exc.errors, "a ConfigError says what is wrong"
        assert all(isinstance(e, str) and e and "\n" not in e for e in exc.errors), exc.errors
        assert str(exc)
        return
    assert isinstance(config, Config)
    # What the daemon does next with a loaded config must not raise either.
    names = sorted(config.datasets)
    existing = names + [f"{name}/child" for name in names] + [f"{name}/child/grandchild" for name in names]
    resolve(config, existing)
    config_roots(config)
    for name in names:
        table_policy(config, name)


class _File:
    """One private file rewritten per example (hypothesis does not mix with function-scoped fixtures)."""

    def __init__(self) -> None:
        self.directory = tempfile.TemporaryDirectory(prefix="vmsnapd-fuzz-")
        self.path = Path(self.directory.name) / "vmsnapd.toml"

    def load(self, data: bytes) -> Config:
        self.path.write_bytes(data)
        os.chmod(self.path, 0o600)
        return load_config(self.path)


FILE = _File()


# -- byte mutations of the samples -----------------------------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("insert"), st.floats(0, 1), st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 40)),
    st.tuples(st.just("replace"), st.floats(0, 1), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("repeat-line"), st.floats(0, 1), st.integers(1, 3)),
    st.tuples(st.just("nest"), st.floats(0, 1), st.integers(1, 3000)),
)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    for kind, where, arg in ops:
        at = int(where * len(data))
        if kind == "insert":
            data = data[:at] + arg + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + arg:]
        elif kind == "replace":
            data = data[:at] + arg + data[at + len(arg):]
        elif kind == "repeat-line":
            lines = data.split(b"\n")
            index = int(where * (len(lines) - 1))
            data = b"\n".join(lines[:index] + [lines[index]] * (arg + 1) + lines[index + 1:])
        else:  # nest: a value becomes a deeply nested array (or, with no value in the file, the whole rest)
            values = [index + 2 for index in range(len(data)) if data.startswith(b"= ", index)]
            at = values[int(where * (len(values) - 1))] if values else at
            end = data.find(b"\n", at) if b"\n" in data[at:] else len(data)
            data = data[:at] + b"[" * arg + data[at:end] + b"]" * arg + data[end:]
    return data


@FUZZ
@given(sample=st.sampled_from(SAMPLE_BYTES), ops=st.lists(mutation, min_size=1, max_size=6))
def test_byte_mutations_of_the_samples(sample, ops):
    assert_config_or_config_error(lambda: FILE.load(mutate(sample, ops)))


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(data):
    assert_config_or_config_error(lambda: FILE.load(data))


# -- structural mutations: keys, values and nesting ------------------------------------------------------------

toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, 7, 59, 60, 99, 100, 65535, 2**31]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(INTERESTING_STRINGS),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.datetimes(timezones=st.just(timezone.utc)) | st.dates() | st.times(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
keys = st.sampled_from(KNOWN_KEYS) | st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)


def toml_string(text: str) -> str:
    # A JSON string literal is a TOML basic string once DEL (which TOML wants escaped) is escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def to_toml(value: Any) -> str:
    """TOML for any value tomllib can return; tables are written inline so the whole file is `key = value` lines."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(to_toml(item) for item in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {to_toml(v)}" for k, v in value.items()) + "}"


def document(table: dict[str, Any]) -> str:
    return "".join(f"{toml_string(key)} = {to_toml(value)}\n" for key, value in table.items())


def test_the_writer_round_trips_the_samples():
    """The structural fuzzing below writes what it mutates with to_toml; unmutated it must give the same config."""
    for sample in SAMPLES:
        raw = tomllib.loads(sample.read_text())
        assert tomllib.loads(document(raw)) == raw
        assert parse_config(document(raw)) == parse_config(sample.read_text())


@st.composite
def mutated_tables(draw) -> dict[str, Any]:
    raw = tomllib.loads(draw(st.sampled_from(SAMPLE_BYTES)).decode())
    for _ in range(draw(st.integers(1, 4))):
        node: Any = raw
        while True:  # walk down a random path of tables and arrays, then change something there
            children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            children = [(k, v) for k, v in children if isinstance(v, (dict, list))]
            if not children or draw(st.booleans()):
                break
            node = draw(st.sampled_from(children))[1]
        action = draw(st.sampled_from(["set", "delete", "nest", "rename"]))
        existing = list(node) if isinstance(node, dict) else list(range(len(node)))
        if action == "set" or not existing:
            value = draw(toml_values)
            if isinstance(node, dict):
                node[draw(keys)] = value
            else:
                node.append(value)
        elif action == "delete":
            del node[draw(st.sampled_from(existing))]
        elif action == "nest":
            key = draw(st.sampled_from(existing))
            for _ in range(draw(st.integers(1, 300))):
                node[key] = [node[key]] if draw(st.booleans()) else {"x": node[key]}
        elif isinstance(node, dict):
            key = draw(st.sampled_from(existing))
            node[draw(keys)] = node.pop(key)
    return raw


@FUZZ
@given(table=mutated_tables())
def test_structural_mutations_of_the_samples(table):
    try:
        text = document(table)
    except RecursionError:  # the writer's own limit, not vmsnapd's
        return
    assert_config_or_config_error(lambda: parse_config(text, "mutated.toml"))
    assert_config_or_config_error(lambda: FILE.load(text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(table=st.dictionaries(keys, toml_values, max_size=4)
       | st.fixed_dictionaries({}, optional={
           "daemon": st.dictionaries(st.sampled_from(sorted(DaemonSettings.model_fields)), toml_scalars, max_size=4),
           "templates": st.dictionaries(keys, st.dictionaries(st.sampled_from(POLICY_KEYS), toml_values, max_size=3),
                                        max_size=2),
           "datasets": st.dictionaries(st.sampled_from(["rpool", "rpool/VM", "rpool/VM/a", "tank/x"]) | keys,
                                       st.dictionaries(st.sampled_from(sorted(DatasetTable.model_fields)),
                                                       toml_values, max_size=4), max_size=3),
       }))
def test_random_documents(table):
    assert_config_or_config_error(lambda: parse_config(document(table), "random.toml"))


# -- import-sanoid: a sanoid.conf of any content --------------------------------------------------------------

SANOID_LINES = ["[rpool/VM]", "[template_x]", "[template_default]", "[version]", "path = tank/x", "use_template = x",
                "use_template = production,x", "hourly = 3", "hourly = -1", "hourly = abc", "hourly = \u0663",
                "hourly = 99999999999999999999999", "recursive = yes", "recursive = zfs", "autosnap = no",
                "process_children_only = yes", "pre_snapshot_script = /bin/x", "pre_snapshot_script = ",
                "script_timeout = 5", "script_timeout = inf", "script_timeout = nan", "no_inconsistent_snapshot = yes",
                "skip_children = yes", "frequent_period = 0", "daily_hour = 99", "=", "[", "]", "[template_]",
                "[a b]", "[\0]", "x = \0", "# c", ""]


@FUZZ
@given(lines=st.lists(st.sampled_from(SANOID_LINES) | st.text(max_size=10), max_size=12))
def test_import_sanoid_gives_toml_or_a_config_error(lines):
    from vmsnapd.sanoid_import import sanoid_import

    try:
        result = sanoid_import("\n".join(lines)).toml
    except ConfigError as exc:
        assert exc.errors and all("\n" not in error for error in exc.errors), exc.errors
        return
    assert isinstance(parse_config(result), Config)


# -- metrics_listen: one parser for the validator and the server -----------------------------------------------


@FUZZ
@given(value=st.text(max_size=30) | st.tuples(st.sampled_from(["[::1]", "[", "]", "::", "127.0.0.1", "host", ":"]),
                                               st.text("[]:0123456789.abcdef%", max_size=12)).map("".join))
def test_parse_listen_gives_host_and_port_or_value_error(value):
    import ipaddress

    from vmsnapd.config import parse_listen

    try:
        host, port = parse_listen(value)
    except ValueError:
        return
    assert 1 <= port <= 65535 and host and "\0" not in host
    written_host, _, written_port = value.rpartition(":")
    assert written_host == (f"[{host}]" if ":" in host else host) and int(written_port) == port
    if ":" in host:
        ipaddress.IPv6Address(host)


@FUZZ
@given(host=st.ip_addresses(), port=st.integers(1, 65535))
def test_parse_listen_reads_every_ip_address(host, port):
    from vmsnapd.config import parse_listen

    text = f"[{host}]:{port}" if host.version == 6 else f"{host}:{port}"
    assert parse_listen(text) == (str(host), port)
