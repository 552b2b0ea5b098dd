"""The policy file: pydantic models are the single source for validation, defaults and docs/configuration.md.

`load_config` reads and validates a TOML file and collects EVERY error (syntax, types, unknown keys, semantics)
before raising one ConfigError; `resolve` turns the tables into one DatasetPolicy per existing dataset.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vmsnapd.names import InvalidName, is_aside, validate_dataset_name, validate_domain_name

Seconds = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
Minute = Annotated[int, Field(ge=0, le=59)]
Hour = Annotated[int, Field(ge=0, le=23)]
DayOfMonth = Annotated[int, Field(ge=1, le=31)]
AbsolutePath = Annotated[Path, Field(strict=False)]


class StrictModel(BaseModel):
    # strict: a TOML string "36" is not a count and 1 is not `true`; extra='forbid': a typo is an error, not a no-op.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class DaemonSettings(StrictModel):
    """The `[daemon]` table: host-wide settings."""

    libvirt_uri: str = Field("qemu:///system", description="libvirt connection URI.")
    state_dir: AbsolutePath = Field(Path("/var/lib/vmsnapd"), description="Journal, lock and cache (absolute path).")
    overlay_dir: AbsolutePath = Field(
        Path("/var/lib/libvirt/snapshots"),
        description="Temporary disk overlays and fresh RAM dumps; must never be inside a snapshotted dataset.",
    )
    ram_dir: AbsolutePath = Field(
        Path("/var/lib/vmsnapd/ram"), description="Where RAM dumps are kept, one directory per domain."
    )
    ram_compression: Literal["none", "zstd"] = Field("none", description='RAM dump compression: "none" or "zstd".')
    utc: bool = Field(
        True, description="Snapshot names and schedules in UTC (true) or local time (false, see the DST section)."
    )
    max_parallel: int = Field(2, ge=1, description="VM cycles run at once.")
    hook_timeout: Seconds = Field(30, description="Seconds a hook may run before it is killed, unless hooks.timeout says otherwise.")
    metrics_listen: str = Field(
        "", description='HOST:PORT for the metrics endpoint, e.g. "127.0.0.1:9810"; empty: no endpoint.'
    )

    @field_validator("state_dir", "overlay_dir", "ram_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(value)!r}")
        return value

    @field_validator("metrics_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value == "":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f'must be "HOST:PORT" (e.g. "127.0.0.1:9810") or empty, got {value!r}')
        return value


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
        if any("\0" in arg for arg in value):
            raise ValueError("arguments must not contain NUL characters")
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
        0, description="0: keep a RAM dump while a snapshot of its cycle exists; N: only for the newest N cycles."
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

    @field_validator("frequent_period")
    @classmethod
    def _divides_hour(cls, value: int) -> int:
        if 60 % value:
            raise ValueError(f"must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60), got {value}")
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
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", target):
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


def key_path(parts: Iterable[str | int]) -> str:
    """`('datasets', 'rpool/VM', 'hourly')` → `datasets."rpool/VM".hourly` (TOML's own spelling)."""
    text = ""
    for index, part in enumerate(parts):
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        # a dataset name is always quoted, as users write it: datasets."rpool".hourly
        is_dataset = index == 1 and text == "datasets"
        key = part if _BARE_KEY.fullmatch(part) and not is_dataset else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
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
                text += f' (dataset names need quotes: [datasets."{loc[1]}/{loc[2]}"])'
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
        if table.get("process_children_only") is True and table.get("recursive") is not True:
            messages.append(
                f"{key_path(['datasets', name, 'process_children_only'])}: needs recursive = true "
                "(without it the table would manage nothing)"
            )
    return messages


def parse_config(text: str, source: str | os.PathLike[str] = "<string>") -> Config:
    """Validate policy TOML text; raise ConfigError listing every error."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"TOML syntax error: {exc}"]) from None
    return _validate(raw, source, [])


def _validate(raw: dict[str, Any], source: str | os.PathLike[str], errors: list[str]) -> Config:
    config = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        errors.extend(_pydantic_messages(exc, raw))
    errors.extend(_semantic_messages(raw))
    if errors or config is None:
        raise ConfigError(source, errors)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the policy file; refuse it when anyone but us (root) may write it: it holds the
    commands vmsnapd runs as root."""
    errors = []
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            mode = info.st_mode
            data = handle.read()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        errors.append(
            f"file mode {stat.S_IMODE(mode):04o} lets group or others write it; it holds commands run as root "
            f"(chmod go-w {path})"
        )
    if info.st_uid not in (0, os.geteuid()):
        errors.append(f"owned by uid {info.st_uid}, who could change the commands run as root (chown root {path})")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(path, errors + [f"not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, errors + [f"TOML syntax error: {exc}"]) from None
    return _validate(raw, path, errors)


def _recursive_ancestor(config: Config, dataset: str) -> str | None:
    """The nearest table above `dataset` whose policy flows down (recursive = true)."""
    parts = dataset.split("/")
    for depth in range(len(parts) - 1, 0, -1):
        candidate = "/".join(parts[:depth])
        table = config.datasets.get(candidate)
        if table is not None and table.recursive:
            return candidate
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
