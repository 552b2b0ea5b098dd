"""The policy file: pydantic models are the single source for validation, defaults and docs/configuration.md.

`load_config` reads and validates a TOML file and collects EVERY error (syntax, types, unknown keys, semantics)
before raising one ConfigError; `resolve` turns the tables into one DatasetPolicy per existing dataset.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vmsnapd.models import Compression
from vmsnapd.names import (DISK_TARGET_PATTERN, PERIODS, InvalidName, is_aside, validate_dataset_name,
                           validate_domain_name)
from vmsnapd.ownership import FOLDER_KEYS, folder_nesting_problems
from vmsnapd.replica import nesting_problem

# Finite: `inf` would mean a hook that is never killed; NaN compares false with everything. At most a week: a
# timeout is a deadline of a thread wait, and Python refuses one beyond threading.TIMEOUT_MAX (~292 years) with
# OverflowError (group_timeout = 1e12 failed every group cycle that way); no hook or group wait needs a week.
MAX_TIMEOUT_S = 7 * 86400
Seconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Minute = Annotated[int, Field(ge=0, le=59)]
Hour = Annotated[int, Field(ge=0, le=23)]
DayOfMonth = Annotated[int, Field(ge=1, le=31)]
AbsolutePath = Annotated[Path, Field(strict=False)]
# sanoid's monitor thresholds: a number in units of one period down (frequently: seconds, hourly: minutes,
# daily: hours, weekly: days, monthly: weeks, yearly: months of 31 days) or "N" + y/w/d/h/m/s; 0 turns it off.
Threshold = Annotated[int | str, Field(union_mode="left_to_right")]


_THRESHOLD = re.compile(r"\d+[yYwWdDhHmMsS]?")
# A VM group's name (`group = "NAME"`): shown in logs, reports and the CLI, never a path or an argv of its own.
GROUP_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"




class StrictModel(BaseModel):
    # strict: a TOML string "36" is not a count and 1 is not `true`; extra='forbid': a typo is an error, not a no-op.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class DaemonSettings(StrictModel):
    """The `[daemon]` table: host-wide settings."""

    libvirt_uri: str = Field("qemu:///system", description="libvirt connection URI.")
    state_dir: AbsolutePath = Field(
        Path("/var/lib/vmsnapd"),
        description="Journal, locks and cache (absolute path). Folder rules: see \"The folders vmsnapd writes\". A "
                    "reload cannot change it: restart the service (docs/operations.md, \"A reload cannot move "
                    "state_dir\").",
    )
    overlay_dir: AbsolutePath = Field(
        Path("/var/lib/libvirt/snapshots"),
        description="Temporary disk overlays and fresh RAM dumps: a folder of vmsnapd's own, never the images "
        "folder, a storage pool or a snapshotted dataset (see \"The folders vmsnapd writes\").",
    )
    ram_dir: AbsolutePath = Field(
        Path("/var/lib/vmsnapd/ram"),
        description="Where RAM dumps are kept, one directory per domain; may lie inside state_dir, not inside "
        "another of vmsnapd's folders or a managed dataset.",
    )
    ram_staging_dir: str = Field(
        "/run/vmsnapd/staging",
        description="Where libvirt writes a cycle's fresh RAM file first, when the folder has room for the guest's "
        "memory x 1.5 (and, on a tmpfs, leaves 10% of the host's memory available); the file is moved into the "
        "RAM store once the guest runs again. On a tmpfs this takes the end of the RAM file's write out of the "
        "guest's pause. Empty: overlay_dir is used, as when the folder has no room (docs/how-it-works.md, \"RAM "
        "staging\").",
    )
    ram_dataset: str = Field(
        "", description='"POOL/NAME": keep RAM dumps on ZFS instead, one filesystem per dump below this dataset, '
        "so that zfs send based replication (syncoid, zrepl) carries them (docs/replication.md); not with "
        "ram_dir; empty: ram_dir is used.",
    )
    ram_compression: Compression = Field("none", description='RAM dump compression: "none" or "zstd".')
    utc: bool = Field(
        True, description="Snapshot names and schedules in UTC (true) or local time (false, see the DST section)."
    )
    max_parallel: int = Field(2, ge=1, description="VM cycles run at once.")
    zfs_jobs: int = Field(8, ge=1, le=64, description="Datasets whose zfs work runs at once: snapshots of "
                          "datasets with no VM (domain = \"none\") and prune's destroys (each one's oldest first); "
                          "1: one after the other, like sanoid (docs/pruning.md, Speed).")
    group_timeout: Seconds = Field(300, description="Seconds the members of a VM group held still wait for the "
                                   "slowest member's hold (its live RAM copy included) before the group gives up "
                                   "without a snapshot and every member resumes (docs/groups.md).")
    hook_timeout: Seconds = Field(30, description="Seconds a hook may run before it is killed, unless hooks.timeout "
                                  "says otherwise (more than 0, at most 604800: a week).")
    metrics_listen: str = Field(
        "", description='HOST:PORT for the metrics endpoint, e.g. "127.0.0.1:9810" or "[::1]:9810" (IPv6 in '
        "brackets); HOST an IP address or a host name; empty: no endpoint.",
    )
    metrics_textfile: str = Field(
        "", description="File `once` writes its metrics to (atomically), for node_exporter's textfile collector, "
        'e.g. "/var/lib/node_exporter/textfile_collector/vmsnapd.prom"; empty: none.'
    )
    prune_guard: bool = Field(
        True, description="The daemon does not prune a dataset whose changed policy would destroy more than half of "
        "its snapshots until `vmsnapd once --prune --confirm` (docs/pruning.md).")

    @field_validator("state_dir", "overlay_dir", "ram_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(value)!r}")
        return value

    @field_validator("ram_dataset")
    @classmethod
    def _ram_dataset(cls, value: str) -> str:
        if value:
            validate_dataset_name(value)
            if "/" not in value:
                raise ValueError(f'must be a dataset below a pool ("POOL/NAME"), got {value!r}')
        return value

    @model_validator(mode="after")
    def _one_ram_store(self) -> "DaemonSettings":
        if self.ram_dataset and "ram_dir" in self.model_fields_set:
            raise ValueError("ram_dir and ram_dataset exclude each other: RAM dumps live in one of them")
        return self

    @field_validator("ram_staging_dir")
    @classmethod
    def _staging(cls, value: str) -> str:
        if value and (not value.startswith("/") or "\0" in value):
            raise ValueError(f"must be an absolute path or empty, got {value!r}")
        return value

    @field_validator("metrics_textfile")
    @classmethod
    def _textfile(cls, value: str) -> str:
        if value and (not value.startswith("/") or value.endswith("/") or "\0" in value):
            raise ValueError(f"must be an absolute file path or empty, got {value!r}")
        return value

    @model_validator(mode="after")
    def _separate_folders(self) -> "DaemonSettings":
        """The folders vmsnapd writes must not be `/`, the same or nested (vmsnapd.ownership; the host-aware part
        of the rule runs in `config check` and before every pass: vmsnapd/actions/folders.py)."""
        problems = folder_nesting_problems(self.folders())
        if problems:
            raise ValueError("; ".join(f"{key} = {getattr(self, key)}: {why}" for key, why in problems))
        return self

    def folders(self) -> dict[str, str]:
        """The folders vmsnapd writes, by key (the staging folder only when set)."""
        return {key: str(getattr(self, key)) for key in FOLDER_KEYS if str(getattr(self, key))}

    @field_validator("metrics_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value != "":
            parse_listen(value)
        return value


_LISTEN = re.compile(r"\[(?P<v6>[^\[\]]+)\]:(?P<port6>[0-9]{1,5})|(?P<host>[^:\[\]]+):(?P<port>[0-9]{1,5})")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def parse_listen(value: str) -> tuple[str, int]:
    """`metrics_listen` → (host, port): `HOST:PORT` with an IPv4 literal or a host name, or `[IPV6]:PORT`.

    The one parser of the setting: the validator and the metrics server both use it, so a value that passes
    `config check` is one the server can bind. The host comes back without brackets. Raises ValueError.
    """
    usage = f'must be "HOST:PORT" or "[IPV6]:PORT" (e.g. "127.0.0.1:9810", "[::1]:9810"), got {value!r}'
    match = _LISTEN.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(usage)
    port = int(match["port6"] or match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1 to 65535, got {port} in {value!r}")
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            raise ValueError(f"{match['v6']!r} in brackets is not an IPv6 address ({usage})") from None
        return match["v6"], port
    host = match["host"]
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address ({usage})") from None
    elif len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")):
        raise ValueError(f"{host!r} is neither an IP address nor a host name ({usage})")
    return host, port


def _argv(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            f'must be an argv list such as ["{value.split()[0] if value.split() else "/path/to/script"}", "arg"], '
            "not a string: hooks never go through a shell"
        )
    return value


class Hooks(StrictModel):
    """The `hooks` sub-table: commands as argv lists, run without a shell, with sanoid's environment variables."""

    pre_snapshot: list[str] = Field(default_factory=list, description="Run before a target's snapshot.")
    post_snapshot: list[str] = Field(default_factory=list, description="Run after a target's snapshot.")
    pre_prune: list[str] = Field(default_factory=list, description="Run before destroying snapshots of a target.")
    post_prune: list[str] = Field(default_factory=list, description="Run after destroying snapshots of a target.")
    timeout: Seconds | None = Field(None, description="Seconds for these hooks; unset: daemon.hook_timeout.")

    @field_validator("pre_snapshot", "post_snapshot", "pre_prune", "post_prune", mode="before")
    @classmethod
    def _not_a_shell_string(cls, value: Any) -> Any:
        return _argv(value)

    @field_validator("pre_snapshot", "post_snapshot", "pre_prune", "post_prune")
    @classmethod
    def _usable_argv(cls, value: list[str]) -> list[str]:
        if value and not value[0]:
            raise ValueError("the program (first element) must not be empty")
        return value


class PolicySettings(StrictModel):
    """Every key a template or a dataset table may set. Defaults are sanoid's (sanoid.defaults.conf)."""

    frequently: Count = Field(0, description="Frequent snapshots kept (taken every frequent_period minutes).")
    hourly: Count = Field(48, description="Hourly snapshots kept.")
    daily: Count = Field(90, description="Daily snapshots kept.")
    weekly: Count = Field(0, description="Weekly snapshots kept.")
    monthly: Count = Field(6, description="Monthly snapshots kept.")
    yearly: Count = Field(0, description="Yearly snapshots kept.")
    autosnap: bool = Field(True, description="Take snapshots when due.")
    autoprune: bool = Field(True, description="Destroy our snapshots beyond the counts.")
    prune_defer: int = Field(
        0, ge=0, le=99, description="Prune only when the pool is more than this percent used; 0: always prune."
    )
    frequent_period: int = Field(15, ge=1, le=60, description="Minutes between frequent snapshots; must divide 60.")
    hourly_min: Minute = Field(0, description="Minute of the hour for hourly snapshots.")
    daily_hour: Hour = Field(23, description="Hour for daily snapshots.")
    daily_min: Minute = Field(59, description="Minute for daily snapshots.")
    weekly_wday: int = Field(1, ge=0, le=6, description="Weekday for weekly snapshots, 0 = Sunday (as sanoid).")
    weekly_hour: Hour = Field(23, description="Hour for weekly snapshots.")
    weekly_min: Minute = Field(30, description="Minute for weekly snapshots.")
    monthly_mday: DayOfMonth = Field(
        1, description="Day of the month for monthly snapshots; past the month's end: its last day."
    )
    monthly_hour: Hour = Field(0, description="Hour for monthly snapshots.")
    monthly_min: Minute = Field(0, description="Minute for monthly snapshots.")
    yearly_mon: int = Field(1, ge=1, le=12, description="Month for yearly snapshots.")
    yearly_mday: DayOfMonth = Field(1, description="Day of the month for yearly snapshots (clamped like monthly_mday).")
    yearly_hour: Hour = Field(0, description="Hour for yearly snapshots.")
    yearly_min: Minute = Field(0, description="Minute for yearly snapshots.")
    frequently_warn: Threshold = Field(0, description="check: WARNING past this age of the newest frequent (s).")
    frequently_crit: Threshold = Field(0, description="check: CRITICAL past this age of the newest frequent (s).")
    hourly_warn: Threshold = Field("90m", description="check: WARNING age of the newest hourly (minutes).")
    hourly_crit: Threshold = Field("360m", description="check: CRITICAL age of the newest hourly (minutes).")
    daily_warn: Threshold = Field("28h", description="check: WARNING age of the newest daily (hours).")
    daily_crit: Threshold = Field("32h", description="check: CRITICAL age of the newest daily (hours).")
    weekly_warn: Threshold = Field(0, description="check: WARNING age of the newest weekly (days).")
    weekly_crit: Threshold = Field(0, description="check: CRITICAL age of the newest weekly (days).")
    monthly_warn: Threshold = Field("32d", description="check: WARNING age of the newest monthly (weeks).")
    monthly_crit: Threshold = Field("40d", description="check: CRITICAL age of the newest monthly (weeks).")
    yearly_warn: Threshold = Field(0, description="check: WARNING age of the newest yearly (months of 31 d).")
    yearly_crit: Threshold = Field(0, description="check: CRITICAL age of the newest yearly (months of 31 d).")
    replication_warn: Threshold = Field(
        0, description="check: WARNING when the newest snapshot of an autosnap = false (received) dataset is "
        "older (minutes, e.g. \"2h\"; 0: off, the lag is still shown; docs/replication.md).")
    replication_crit: Threshold = Field(
        0, description="check: CRITICAL replication lag of an autosnap = false dataset (minutes; 0: off).")
    domain: str = Field(
        "auto",
        description='"auto": the libvirt domain named like the dataset\'s last component, if one exists, else plain '
        'snapshots; "none": plain zfs snapshots only; any other value: that domain.',
    )
    memory: bool = Field(True, description="Save a RAM dump for running VMs.")
    method: Literal["overlay", "pause"] = Field(
        "overlay",
        description='"overlay": external disk overlay + blockcommit, guest never paused during the zfs snapshot; '
        '"pause": libvirt manual snapshot, guest paused for the zfs snapshot.',
    )
    live: bool = Field(True, description="Capture RAM while the guest runs (shorter pause).")
    quiesce: Literal["auto", "required", "off"] = Field(
        "auto", description='Guest-agent filesystem freeze: "auto" when the agent answers, "required", or "off".'
    )
    ram_keep: Count = Field(
        0, description="0: keep a RAM dump while a snapshot of its cycle exists; N: only for the newest N cycles. "
        "When a VM's datasets differ, a dump stays while any of them wants it (docs/pruning.md)."
    )
    on_memory_failure: Literal["disk-only", "fail"] = Field(
        "disk-only", description='RAM dump impossible: "disk-only" snapshot with a warning, or "fail".'
    )
    exclude_disks: list[str] = Field(
        default_factory=list, description='Disk target names (e.g. ["vdb"]) left out of the cycle.'
    )
    pre_snapshot_failure: Literal["fail", "continue"] = Field(
        "fail", description='A failing pre_snapshot hook fails the cycle ("fail") or the snapshot is taken anyway.'
    )
    hooks: Hooks = Field(default_factory=Hooks, description="Hook commands, see the hooks table.")
    group: str = Field(
        "", description='A VM group (docs/groups.md): the VMs of the datasets naming one group are held still '
        "together and snapshotted in one step, so a restore of the group brings back one instant across them; "
        "members keep the same periods and need a domain; empty: no group.")

    @field_validator("group")
    @classmethod
    def _group(cls, value: str) -> str:
        if value and not re.fullmatch(GROUP_PATTERN, value):
            raise ValueError(f"must be a group name of letters, digits and _.:- (at most 64, starting with a letter "
                             f"or digit), got {value!r}")
        return value

    @field_validator("frequent_period")
    @classmethod
    def _divides_hour(cls, value: int) -> int:
        if 60 % value:
            raise ValueError(f"must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60), got {value}")
        return value

    @field_validator("frequently_warn", "frequently_crit", "hourly_warn", "hourly_crit", "daily_warn", "daily_crit",
                     "weekly_warn", "weekly_crit", "monthly_warn", "monthly_crit", "yearly_warn", "yearly_crit",
                     "replication_warn", "replication_crit", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        if not (type(value) is int and value >= 0 or isinstance(value, str) and _THRESHOLD.fullmatch(value)):
            raise ValueError(f'must be 0 (off), a number or a number with y/w/d/h/m/s such as "90m", got {value!r}')
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if value not in ("auto", "none"):
            validate_domain_name(value)
        return value

    @field_validator("exclude_disks")
    @classmethod
    def _disk_targets(cls, value: list[str]) -> list[str]:
        for target in value:
            if not re.fullmatch(DISK_TARGET_PATTERN, target):
                raise ValueError(f"{target!r} is not a disk target name such as \"vdb\"")
        return value


POLICY_KEYS = tuple(PolicySettings.model_fields)


class TemplateTable(PolicySettings):
    """A `[templates.NAME]` table: policy keys only (no use_template: templates do not nest, as in sanoid)."""


class DatasetTable(PolicySettings):
    """A `[datasets."pool/ds"]` table: policy keys plus how the table applies to datasets."""

    use_template: list[str] = Field(
        default_factory=list, description="Templates applied in order (a string or a list); keys set here win."
    )
    recursive: bool = Field(False, description="Descendant datasets without their own table get this policy.")
    process_children_only: bool = Field(
        False, description="Manage the descendants only, not this dataset itself (needs recursive = true)."
    )
    skip_children: bool = Field(
        False, description="Descendants without a table of their own are not managed, and tables below start from "
        "the defaults (sanoid's skip_children); not with recursive = true."
    )
    source: str | None = Field(
        None, description="On a backup host: the dataset this one was received from (e.g. \"rpool/VM\"); RAM dump "
        "manifests name source datasets, mapped here by this prefix (docs/replication.md).",
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        return validate_dataset_name(value) if value is not None else None

    @field_validator("use_template", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Config(StrictModel):
    """The whole policy file."""

    daemon: DaemonSettings = Field(default_factory=DaemonSettings, description="Host-wide settings.")
    templates: dict[str, TemplateTable] = Field(default_factory=dict, description="Named sets of policy keys.")
    datasets: dict[str, DatasetTable] = Field(default_factory=dict, description="Policy per dataset (tree).")


class DatasetPolicy(PolicySettings):
    """The fully resolved policy of ONE real dataset."""

    name: str = Field(description="The dataset.")
    configured_by: str = Field(description="The [datasets.…] table this policy came from.")


class ConfigError(Exception):
    """An invalid policy file; `errors` holds one line per offending key path."""

    def __init__(self, path: str | os.PathLike[str], errors: list[str]) -> None:
        self.path = str(path)
        self.errors = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = "\n".join(f"  {error}" for error in self.errors)
        return f"{self.path}: invalid configuration ({len(self.errors)} error(s)):\n{lines}"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _quoted(key: str) -> str:
    """A TOML basic string: a key with a control character (NUL, newline) is shown escaped, never raw."""
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(ch if ch.isprintable() else f"\\u{ord(ch):04X}" for ch in escaped) + '"'


def key_path(parts: Iterable[str | int]) -> str:
    """`('datasets', 'rpool/VM', 'hourly')` → `datasets."rpool/VM".hourly` (TOML's own spelling)."""
    text = ""
    for index, part in enumerate(parts):
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        # a dataset name is always quoted, as users write it: datasets."rpool".hourly
        is_dataset = index == 1 and text == "datasets"
        key = part if _BARE_KEY.fullmatch(part) and not is_dataset else _quoted(part)
        text += f".{key}" if text else key
    return text


def _pydantic_messages(error: ValidationError, raw: Mapping[str, Any]) -> list[str]:
    messages = []
    for item in error.errors():
        # pydantic adds the validator's function name or a '[key]' marker to some locations; they are not keys.
        loc = [part for part in item["loc"] if not (isinstance(part, str) and part.startswith(("function-", "[")))]
        if item["type"] == "extra_forbidden":
            text = "unknown key"
            if len(loc) == 3 and loc[0] == "datasets" and isinstance(item["input"], dict):
                text += f" (dataset names need quotes: [datasets.{_quoted(f'{loc[1]}/{loc[2]}')}])"
        elif item["type"] in ("model_type", "dict_type"):
            text = "must be a table"
        else:
            text = item["msg"].removeprefix("Value error, ")
            if item["type"] not in ("value_error",) and not isinstance(item["input"], (dict, list)):
                text += f" (got {item['input']!r})"
        messages.append(f"{key_path(loc)}: {text}")
    return messages


def _semantic_messages(raw: Mapping[str, Any]) -> list[str]:
    """Errors pydantic cannot see alone: names, cross-references between tables."""
    messages = []
    templates = raw.get("templates") if isinstance(raw.get("templates"), dict) else {}
    datasets = raw.get("datasets") if isinstance(raw.get("datasets"), dict) else {}
    for template in templates:
        if not template:
            messages.append(f"{key_path(['templates', template])}: a template needs a name")
    for name, table in datasets.items():
        try:
            validate_dataset_name(name)
        except InvalidName as exc:
            messages.append(f"{key_path(['datasets', name])}: invalid dataset name: {exc}")
        if not isinstance(table, dict):
            continue
        wanted = table.get("use_template", [])
        wanted = [wanted] if isinstance(wanted, str) else wanted
        if isinstance(wanted, list):
            for template in wanted:
                if isinstance(template, str) and template not in templates:
                    hint = " (use a TOML list, not a comma-separated string)" if "," in template else ""
                    messages.append(
                        f"{key_path(['datasets', name, 'use_template'])}: unknown template {template!r}{hint}"
                    )
        messages.extend(_tree_flag_messages(name, table))
    daemon = raw.get("daemon") if isinstance(raw.get("daemon"), dict) else {}
    ram_dataset = daemon.get("ram_dataset")
    problem = isinstance(ram_dataset, str) and ram_dataset and nesting_problem(ram_dataset, datasets)
    if problem:  # the dump filesystems must never be snapshotted or pruned as VM datasets
        messages.append(f"{key_path(['daemon', 'ram_dataset'])}: {problem}")
    return messages


def _tree_flag_messages(name: str, table: Mapping[str, Any]) -> list[str]:
    """recursive, process_children_only and skip_children must agree."""
    messages = []
    if table.get("skip_children") is True and table.get("recursive") is True:
        messages.append(f"{key_path(['datasets', name, 'skip_children'])}: contradicts recursive = true")
    if table.get("process_children_only") is True and table.get("recursive") is not True:
        messages.append(
            f"{key_path(['datasets', name, 'process_children_only'])}: needs recursive = true "
            "(without it the table would manage nothing)"
        )
    return messages


def _nul_messages(raw: Mapping[str, Any]) -> list[str]:
    """Every key and string value holding a NUL (TOML allows "\\u0000"): no path, URI or argv can carry one."""
    messages = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), raw)]
    while stack:  # iterative: a deeply nested array must not exhaust the Python stack here
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if "\0" in key:
                    messages.append(f"{key_path(path + (key,))}: a key must not contain NUL characters")
                stack.append((path + (key,), item))
        elif isinstance(value, list):
            stack.extend((path + (index,), item) for index, item in enumerate(value))
        elif isinstance(value, str) and "\0" in value:
            messages.append(f"{key_path(path)}: must not contain NUL characters")
    return sorted(messages)


def _from_text(text: str, source: str | os.PathLike[str], errors: list[str]) -> Config:
    """Parse and validate; whatever goes wrong becomes a ConfigError (a config never causes a traceback)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, errors + [f"TOML syntax error: {exc}"]) from None
    except (RecursionError, MemoryError):
        raise ConfigError(source, errors + ["arrays or inline tables nested too deeply to parse"]) from None
    try:
        return _validate(raw, source, errors, _nul_messages(raw))
    except (RecursionError, MemoryError):
        raise ConfigError(source, errors + ["values nested too deeply to validate"]) from None


def _total(load: Callable[[], Config], source: str | os.PathLike[str]) -> Config:
    """Run a load so that whatever goes wrong is a ConfigError: a config never causes a traceback (every CLI
    command then exits 78, a reload keeps the running config)."""
    try:
        return load()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 — any input gives a clear error; the type tells a bug report where
        raise ConfigError(source, [f"cannot be loaded ({type(exc).__name__}: {' '.join(str(exc).split())})"]) from None


def parse_config(text: str, source: str | os.PathLike[str] = "<string>") -> Config:
    """Validate policy TOML text; raise ConfigError listing every error."""
    return _total(lambda: _from_text(text, source, []), source)


def _validate(raw: dict[str, Any], source: str | os.PathLike[str], errors: list[str],
              nul_messages: Sequence[str] = ()) -> Config:
    config = None
    found = list(nul_messages)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        found.extend(_pydantic_messages(exc, raw))
    found.extend(_semantic_messages(raw))
    if config is not None and not found:
        found.extend(group_messages(config))
    # A key with a NUL gets that one message, not a second one from its own validator.
    nul_paths = tuple(message.rpartition(": ")[0] + ": " for message in nul_messages)
    errors = errors + [m for m in found if m in nul_messages or not m.startswith(nul_paths)]
    if errors or config is None:
        raise ConfigError(source, errors)
    return config


# A policy file is a few KiB; anything this big is a wrong path (an image, a log), not a configuration.
MAX_CONFIG_BYTES = 1 << 20
_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return f"not a regular file but {_FILE_KINDS.get(stat.S_IFMT(mode), 'a special file')}"


def read_regular_file(path: str | os.PathLike[str]) -> tuple[bytes, os.stat_result]:
    """The file's bytes and its fstat; ConfigError unless it is a regular file of at most MAX_CONFIG_BYTES.

    stat() first, so a FIFO or a device is never opened (opening a tape rewinds it, a FIFO blocks); then the
    open is non-blocking and fstat() checks what was really opened, so a swap in between is refused too.
    Symlinks are followed (a managed /etc often links the file); the owner and mode checks apply to the target.
    """
    try:
        kind = _not_regular(os.stat(path).st_mode)
        if kind:
            raise ConfigError(path, [f"{kind}; only a regular file is read"])
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(path, [f"cannot read: {getattr(exc, 'strerror', None) or exc}"]) from None
    try:
        info = os.fstat(fd)
        kind = _not_regular(info.st_mode)
        if kind:
            raise ConfigError(path, [f"{kind}; only a regular file is read"])
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(path, [f"larger than {MAX_CONFIG_BYTES // 2**20} MiB: too big for a policy file"])
    return b"".join(chunks), info


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the policy file; refuse it when anyone but us (root) may write it: it holds the
    commands vmsnapd runs as root. Any problem, whatever the bytes, is a ConfigError."""
    return _total(lambda: _load_file(path), path)


def _load_file(path: str | os.PathLike[str]) -> Config:
    errors = []
    data, info = read_regular_file(path)
    mode = info.st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        errors.append(
            f"file mode {stat.S_IMODE(mode):04o} lets group or others write it; it holds commands run as root "
            f"(chmod go-w {path})"
        )
    if info.st_uid not in (0, os.geteuid()):
        errors.append(f"owned by uid {info.st_uid}, who could change the commands run as root (chown root {path})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, errors + [f"not UTF-8 text: {exc}"]) from None
    return _from_text(text, path, errors)


def group_periods(policy: PolicySettings) -> tuple[str, ...]:
    """What must be equal on every member of a group so that its snapshots carry the same names: the periods
    taken (count > 0; `frequently` with its frequent_period) and whether snapshots are taken at all."""
    periods = tuple(p if p != "frequently" else f"frequently every {policy.frequent_period} min"
                    for p in PERIODS if getattr(policy, p) > 0)
    return periods if policy.autosnap else ("autosnap = false",)


def group_members(config: Config) -> dict[str, list[str]]:
    """Group name → the tables whose resolved policy names it (their own datasets and the descendants they govern
    are the group's datasets)."""
    members: dict[str, list[str]] = {}
    for table in sorted(config.datasets):
        group = table_policy(config, table).group
        if group:
            members.setdefault(group, []).append(table)
    return members


def group_messages(config: Config) -> list[str]:
    """A group's members need a domain and the same periods (docs/groups.md)."""
    messages = []
    for group, tables in group_members(config).items():
        policies = {table: table_policy(config, table) for table in tables}
        for table, policy in policies.items():
            if policy.domain == "none":
                messages.append(f"{key_path(['datasets', table, 'group'])}: group {group!r} needs a VM, but the "
                                'dataset has domain = "none" (a group holds VMs still together)')
        first, *others = tables
        for table in others:
            mine, theirs = group_periods(policies[table]), group_periods(policies[first])
            if mine != theirs:
                messages.append(f"{key_path(['datasets', table, 'group'])}: members of group {group!r} must keep the "
                                f"same periods (their snapshots share one name): {table} takes "
                                f"{', '.join(mine) or 'none'}, {first} takes {', '.join(theirs) or 'none'}")
    return messages


def config_roots(config: Config) -> list[str]:
    """The configured table names with no other table above them: what one listing call must cover.

    One set lookup per ancestor of each name: near-linear in the number of tables (thousands are common on
    big hosts), where comparing every pair of names was quadratic.
    """
    names = set(config.datasets)
    roots = []
    for name in sorted(names):
        parts = name.split("/")
        if not any("/".join(parts[:depth]) in names for depth in range(1, len(parts))):
            roots.append(name)
    return roots


def _recursive_ancestor(config: Config, dataset: str) -> str | None:
    """The nearest table above `dataset` whose policy flows down (recursive = true)."""
    parts = dataset.split("/")
    for depth in range(len(parts) - 1, 0, -1):
        candidate = "/".join(parts[:depth])
        table = config.datasets.get(candidate)
        if table is not None and table.recursive:
            return candidate
        if table is not None and table.skip_children:
            return None
    return None


def _table_layers(config: Config, table_name: str) -> list[PolicySettings]:
    """Lowest precedence first: the recursive ancestor's layers, then this table's templates, then the table."""
    ancestor = _recursive_ancestor(config, table_name)
    layers = _table_layers(config, ancestor) if ancestor else []
    table = config.datasets[table_name]
    layers.extend(config.templates[template] for template in table.use_template)
    layers.append(table)
    return layers


def table_policy(config: Config, table_name: str, dataset: str | None = None) -> DatasetPolicy:
    """The policy a `[datasets.…]` table gives `dataset` (default: the table's own dataset)."""
    merged: dict[str, Any] = {}
    hooks: dict[str, Any] = {}
    for layer in _table_layers(config, table_name):
        for key in layer.model_fields_set & set(POLICY_KEYS):
            if key == "hooks":
                hooks.update({hook: getattr(layer.hooks, hook) for hook in layer.hooks.model_fields_set})
            else:
                merged[key] = getattr(layer, key)
    return DatasetPolicy.model_validate(
        {**merged, "hooks": Hooks.model_validate(hooks), "name": dataset or table_name, "configured_by": table_name}
    )


def resolve(config: Config, existing_datasets: Iterable[str]) -> dict[str, DatasetPolicy]:
    """One policy per existing dataset that some table manages, ordered by dataset name.

    A dataset is governed by the table naming it (unless that table has process_children_only), else by its
    nearest recursive ancestor table. Tables naming datasets that do not exist are simply absent. Datasets an
    in-place restore set aside (names.is_aside) are never managed, whatever table covers them.
    """
    policies: dict[str, DatasetPolicy] = {}
    for dataset in sorted(set(existing_datasets)):
        if is_aside(dataset):  # a VM's state an in-place restore set aside: kept as it is, never pruned
            continue
        table = config.datasets.get(dataset)
        if table is not None:
            if not table.process_children_only:
                policies[dataset] = table_policy(config, dataset)
            continue
        ancestor = _recursive_ancestor(config, dataset)
        if ancestor is not None:
            policies[dataset] = table_policy(config, ancestor, dataset)
    return policies
