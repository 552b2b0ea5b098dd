"""sanoid itself as the oracle for the resolved policy: run Debian's sanoid 2.1 with `--readonly --debug` against a
fake `zfs` (fake_zfs.py) and read its Data::Dumper view of each dataset; run `vmsnapd config check --json` on the
imported TOML against the same fake datasets; compare the two in vmsnapd's terms.

The translation here is written independently of vmsnapd/sanoid_import.py (Perl truthiness, word splitting with
shlex), so a wrong import cannot agree with itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SANOID = shutil.which("sanoid") or ("/usr/sbin/sanoid" if Path("/usr/sbin/sanoid").exists() else None)
PERIODS = ("frequently", "hourly", "daily", "weekly", "monthly", "yearly")
SCHEDULE = ("hourly_min", "daily_hour", "daily_min", "weekly_wday", "weekly_hour", "weekly_min", "monthly_mday",
            "monthly_hour", "monthly_min", "yearly_mon", "yearly_mday", "yearly_hour", "yearly_min")
THRESHOLDS = tuple(f"{p}_{level}" for p in PERIODS for level in ("warn", "crit"))
HOOKS = {"pre_snapshot_script": "pre_snapshot", "post_snapshot_script": "post_snapshot",
         "pruning_script": "post_prune"}

_TOKEN = re.compile(r"\s*('(?:[^'\\]|\\.)*'|-?\d+(?:\.\d+)?|=>|[{}\[\],;=]|\$VAR1|undef)")


def parse_dumper(text: str) -> Any:
    """The value of `$VAR1 = …;` in Data::Dumper output (hashes, arrays, quoted strings, numbers)."""
    start = text.index("$VAR1 = ") + len("$VAR1 = ")
    tokens: list[str] = []
    position = start
    depth = 0
    while True:
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot parse Data::Dumper output at {text[position:position + 40]!r}")
        token = match[1]
        position = match.end()
        if token == ";" and depth == 0:
            break
        depth += token in "{[" and len(token) == 1
        depth -= token in "}]" and len(token) == 1
        tokens.append(token)
    value, rest = _value(tokens)
    assert not rest, rest
    return value


def _value(tokens: list[str]) -> tuple[Any, list[str]]:
    head, rest = tokens[0], tokens[1:]
    if head == "{":
        result: dict[str, Any] = {}
        while rest[0] != "}":
            key, rest = _value(rest)
            assert rest[0] == "=>", rest[:3]
            result[key], rest = _value(rest[1:])
            if rest[0] == ",":
                rest = rest[1:]
        return result, rest[1:]
    if head == "[":
        items = []
        while rest[0] != "]":
            item, rest = _value(rest)
            items.append(item)
            if rest[0] == ",":
                rest = rest[1:]
        return items, rest[1:]
    if head.startswith("'"):
        return re.sub(r"\\(.)", r"\1", head[1:-1]), rest
    if head == "undef":
        return None, rest
    return head, rest  # a number, kept as Perl's text


def _bin_dir(workdir: Path, datasets: list[str]) -> dict[str, str]:
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "zfs").unlink(missing_ok=True)
    (bin_dir / "zfs").symlink_to(HERE / "fake_zfs.py")
    (workdir / "datasets.txt").write_text("".join(f"{name}\n" for name in datasets))
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "FAKE_ZFS_DATASETS": str(workdir / "datasets.txt")}


def sanoid_configs(conf: str, datasets: list[str], workdir: Path) -> dict[str, dict[str, Any]]:
    """sanoid's resolved configuration, by dataset path (sanoid's own `--debug` dump)."""
    confdir = workdir / "sanoid"
    confdir.mkdir(exist_ok=True)
    (confdir / "sanoid.conf").write_text(conf)
    result = subprocess.run(
        [SANOID, "--configdir", str(confdir), "--cache-dir", str(workdir / "cache"), "--run-dir",
         str(workdir / "run"), "--readonly", "--debug"],
        env=_bin_dir(workdir, datasets), capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0 or "$VAR1" not in result.stdout:
        raise AssertionError(f"sanoid failed ({result.returncode}): {result.stderr}{result.stdout[-2000:]}")
    configs = parse_dumper(result.stdout)
    by_path: dict[str, dict[str, Any]] = {}
    for _label, settings in configs.items():
        assert settings["path"] not in by_path, f"sanoid configures {settings['path']} twice"
        by_path[settings["path"]] = settings
    return by_path


def vmsnapd_policies(toml_text: str, datasets: list[str], workdir: Path) -> dict[str, dict[str, Any]]:
    """`vmsnapd config check --json` on the TOML, against the same fake datasets."""
    path = workdir / "vmsnapd.toml"
    path.write_text(toml_text)
    path.chmod(0o644)
    result = subprocess.run([sys.executable, "-m", "vmsnapd", "-c", str(path), "config", "check", "--json"],
                            env=_bin_dir(workdir, datasets), capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise AssertionError(f"vmsnapd config check failed ({result.returncode}): {result.stderr}")
    report = json.loads(result.stdout)
    assert report["source"] == "datasets that exist now", report["source"]  # the fake zfs answered
    return report["datasets"]


def _perl_true(value: Any) -> bool:
    return value not in (None, "", "0")


def _int(value: Any) -> int:
    """Perl's numeric value of a string that starts with digits (`24  # a day` is 24, as for sanoid)."""
    match = re.match(r"\s*(\d+)", value) if isinstance(value, str) else None
    assert match, f"not a number for Perl: {value!r}"
    return int(match[1])


def sanoid_view(settings: dict[str, Any], zfs_child: bool) -> dict[str, Any]:
    """sanoid's settings of one dataset in vmsnapd's words (what the import must reproduce)."""
    view: dict[str, Any] = {key: _int(settings[key]) for key in PERIODS + SCHEDULE}
    view["autoprune"] = _perl_true(settings["autoprune"]) and _int(settings["prune_defer"]) < 100
    view["prune_defer"] = _int(settings["prune_defer"]) % 100
    if not zfs_child:  # under `recursive = zfs` the parent's `zfs snapshot -r` takes the child's snapshots
        view["autosnap"] = _perl_true(settings["autosnap"])
    if view["frequently"]:
        view["frequent_period"] = _int(settings["frequent_period"])
    hooks = {hook: shlex.split(settings.get(key) or "") for key, hook in HOOKS.items()}
    hooks["pre_prune"] = shlex.split(settings.get("pre_pruning_script") or "")
    view["hooks"] = hooks
    if any(hooks.values()):
        timeout = int(settings["script_timeout"])
        view["hooks.timeout"] = timeout if timeout > 0 else "unlimited"
    if hooks["pre_snapshot"]:
        view["pre_snapshot_failure"] = "fail" if _perl_true(settings["no_inconsistent_snapshot"]) else "continue"
    monitored = _perl_true(settings["monitor"])
    for key in THRESHOLDS:
        value = settings[key] if monitored else "0"
        if _perl_true(settings["monitor_dont_warn"]) and key.endswith("_warn"):
            value = "0"
        view[key] = int(value) if value.isdigit() else value
    return view


def vmsnapd_view(policy: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    view = {key: policy[key] for key in like if key not in ("hooks", "hooks.timeout")}
    view["hooks"] = {hook: policy["hooks"][hook] for hook in like["hooks"]}
    if "hooks.timeout" in like:
        timeout = policy["hooks"]["timeout"]
        view["hooks.timeout"] = "unlimited" if timeout == 86400 and like["hooks.timeout"] == "unlimited" else timeout
    return view


def compare(sanoid: dict[str, dict[str, Any]], vmsnapd: dict[str, dict[str, Any]],
            datasets: list[str]) -> list[str]:
    """Every difference between what sanoid manages and how, and what vmsnapd resolves, one line each."""
    problems = []
    for dataset in datasets:
        settings = sanoid.get(dataset)
        managed = settings is not None and not _perl_true(settings.get("process_children_only"))
        if managed != (dataset in vmsnapd):
            problems.append(f"{dataset}: sanoid manages it: {managed}, vmsnapd: {dataset in vmsnapd}")
            continue
        if not managed:
            continue
        zfs_child = _perl_true(settings.get("zfs_recursion")) and not _is_zfs_root(sanoid, dataset)
        want = sanoid_view(settings, zfs_child)
        have = vmsnapd_view(vmsnapd[dataset], want)
        for key in want:
            if want[key] != have[key]:
                problems.append(f"{dataset}: {key}: sanoid {want[key]!r}, vmsnapd {have[key]!r}")
    return problems


def _is_zfs_root(sanoid: dict[str, dict[str, Any]], dataset: str) -> bool:
    parent = dataset.rpartition("/")[0]
    return not parent or not _perl_true(sanoid.get(parent, {}).get("zfs_recursion"))
