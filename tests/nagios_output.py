"""A strict parser of Nagios plugin output (Monitoring Plugins Development Guidelines, "Plugin Output" and
"Performance data"), for tests: anything a Nagios/Icinga core would misread raises ValueError.

    TEXT [| PERFDATA]\\n[LONG TEXT lines…[| PERFDATA]]
    PERFDATA: 'label'=value[UOM];[warn];[crit];[min];[max]   (space separated; trailing ';' fields may go)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UOMS = ("", "s", "ms", "us", "%", "B", "KB", "MB", "TB", "c")
NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
RANGE = re.compile(rf"@?(?:(?:{NUMBER}|~):)?(?:{NUMBER})?")
LABEL = re.compile(r"'((?:[^']|'')+)'|([^'= ]+)")
VALUE = re.compile(rf"({NUMBER}|U)([a-zA-Z%]*)")
STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


@dataclass
class Perf:
    label: str
    value: float | None
    uom: str
    warn: str
    crit: str
    min: float | None
    max: float | None


@dataclass
class PluginOutput:
    text: str
    long_text: list[str]
    perfdata: list[Perf]


def _perf_item(label: str, data: str) -> Perf:
    fields = data.split(";")
    if len(fields) > 5:
        raise ValueError(f"{label}: more than 5 fields")
    fields += [""] * (5 - len(fields))
    value = VALUE.fullmatch(fields[0])
    if not value or value.group(2) not in UOMS or (value.group(1) == "U" and value.group(2)):
        raise ValueError(f"{label}: bad value/unit {fields[0]!r}")
    for limit in fields[1:3]:
        if not RANGE.fullmatch(limit):
            raise ValueError(f"{label}: bad threshold range {limit!r}")
    for bound in fields[3:5]:
        if bound and not re.fullmatch(NUMBER, bound):
            raise ValueError(f"{label}: bad min/max {bound!r}")
    return Perf(label, None if value.group(1) == "U" else float(value.group(1)), value.group(2),
                fields[1], fields[2], float(fields[3]) if fields[3] else None,
                float(fields[4]) if fields[4] else None)


def _perf_items(text: str) -> list[Perf]:
    items, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = LABEL.match(text, pos)
        if not match or text[match.end():match.end() + 1] != "=":
            raise ValueError(f"bad performance label at {text[pos:]!r}")
        label = match.group(1).replace("''", "'") if match.group(1) is not None else match.group(2)
        end = text.find(" ", match.end())
        end = len(text) if end < 0 else end
        items.append(_perf_item(label, text[match.end() + 1:end]))
        pos = end + 1
        while pos < len(text) and text[pos] == " ":
            pos += 1
    labels = [p.label for p in items]
    if len(labels) != len(set(labels)):
        raise ValueError(f"duplicate performance labels: {labels}")
    return items


def parse(stdout: str, returncode: int) -> PluginOutput:
    if returncode not in STATES:
        raise ValueError(f"exit status {returncode} is not a plugin state")
    if not stdout.endswith("\n") or not stdout.strip():
        raise ValueError("output must be at least one line ending in a newline")
    first, *rest = stdout[:-1].split("\n")
    if first.count("|") > 1:
        raise ValueError("more than one '|' on the first line")
    text, _, perf = first.partition("|")
    if not text.strip():
        raise ValueError("empty status text")
    perfdata = _perf_items(perf) if perf else []
    long_text = []
    in_perf = False
    for line in rest:
        if in_perf:
            perfdata += _perf_items(line)
            continue
        line_text, sep, line_perf = line.partition("|")
        long_text.append(line_text)
        if sep:
            in_perf = True
            perfdata += _perf_items(line_perf)
    return PluginOutput(text.strip(), long_text, perfdata)
