"""`vmsnapd import-sanoid`: translate a sanoid.conf into the equivalent vmsnapd TOML.

The output resolves to the policy sanoid would apply. Keys vmsnapd has no equivalent for are kept as
`# not imported: key = value` comments so nothing disappears silently.
"""

from __future__ import annotations

import configparser
import json
from typing import Any

from vmsnapd.config import POLICY_KEYS, ConfigError, Hooks, PolicySettings, key_path, parse_config, table_policy

_INT_KEYS = frozenset(
    ("frequently", "hourly", "daily", "weekly", "monthly", "yearly", "prune_defer", "frequent_period")
    + tuple(key for key in POLICY_KEYS if key.endswith(("_min", "_hour", "_wday", "_mday", "_mon")))
)
_BOOL_KEYS = frozenset(("autosnap", "autoprune", "process_children_only"))
_HOOK_SCRIPTS = {
    "pre_snapshot_script": "pre_snapshot",
    "post_snapshot_script": "post_snapshot",
    "pre_pruning_script": "pre_prune",
    # sanoid runs pruning_script after each destroyed snapshot; post_prune runs once after a target's pruning
    "pruning_script": "post_prune",
}
_TRUE = ("1", "yes", "true")
_FALSE = ("0", "no", "false", "")
_TEMPLATE_PREFIX = "template_"


class _Table:
    """One translated section: policy values, hook argv lists and the comments that go with them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: dict[str, Any] = {}
        self.hooks: dict[str, Any] = {}
        self.comments: list[str] = []


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _boolean(value: str) -> bool | None:
    lowered = value.strip().lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


def _translate(table: _Table, key: str, value: str, is_template: bool) -> None:
    raw = value.strip()
    not_imported = f"# not imported: {key} = {raw}"
    if key in _INT_KEYS:
        if raw.isdigit() and not (key == "prune_defer" and int(raw) > 99):
            table.values[key] = int(raw)
        else:
            table.comments.append(f"{not_imported}   (vmsnapd needs a whole number here{', 0-99' if key == 'prune_defer' else ''})")
    elif key in _BOOL_KEYS and not (is_template and key == "process_children_only"):
        flag = _boolean(raw)
        if flag is None:
            table.comments.append(f"{not_imported}   (not yes/no)")
        else:
            table.values[key] = flag
    elif key == "recursive" and not is_template:
        lowered = raw.lower()
        table.values["recursive"] = lowered == "zfs" or _boolean(lowered) is True
        if lowered == "zfs":
            table.comments.append("# sanoid: recursive = zfs (one atomic `zfs snapshot -r`); vmsnapd snapshots the "
                                  "datasets of one cycle in one atomic command where ZFS allows it")
    elif key == "use_template" and not is_template:
        table.values["use_template"] = [name.strip() for name in raw.split(",") if name.strip()]
    elif key in _HOOK_SCRIPTS:
        if raw:
            table.hooks[_HOOK_SCRIPTS[key]] = [raw]
    elif key == "script_timeout":
        if raw.isdigit() and int(raw) > 0:
            table.hooks["timeout"] = int(raw)
        else:
            table.comments.append(f"{not_imported}   (vmsnapd always kills a hook after a timeout; "
                                  "unset: daemon.hook_timeout)")
    elif key == "no_inconsistent_snapshot":
        flag = _boolean(raw)
        if flag is None:
            table.comments.append(f"{not_imported}   (not yes/no)")
        else:
            table.values["pre_snapshot_failure"] = "fail" if flag else "continue"
    else:
        table.comments.append(not_imported)


def _read_sections(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, comment_prefixes=("#", ";"), inline_comment_prefixes=None,
        default_section="\0no default section\0",
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text)
    except configparser.Error as exc:  # no section header, a line that is no `key = value`: a message, not a traceback
        raise ConfigError("<sanoid.conf>", [f"not a sanoid.conf: {' '.join(str(exc).split())}"]) from None
    return parser


def _tables(text: str) -> tuple[dict[str, _Table], dict[str, _Table]]:
    parser = _read_sections(text)
    templates: dict[str, _Table] = {}
    datasets: dict[str, _Table] = {}
    for section in parser.sections():
        if section == "version":
            continue
        options = parser[section]
        is_template = section.startswith(_TEMPLATE_PREFIX)
        if is_template:
            table = templates.setdefault(section[len(_TEMPLATE_PREFIX):], _Table(section[len(_TEMPLATE_PREFIX):]))
        else:
            # sanoid's `path` lets a section label name another dataset
            name = options.get("path", "").strip() or section
            table = datasets.setdefault(name, _Table(name))
        for key, value in options.items():
            if key != "path":
                _translate(table, key, value, is_template)
        if "pre_snapshot" in table.hooks and "pre_snapshot_failure" not in table.values:
            table.values["pre_snapshot_failure"] = "continue"
            table.comments.append('# sanoid takes the snapshot even when pre_snapshot_script fails, unless '
                                  'no_inconsistent_snapshot = yes: hence "continue"')
    if "default" in templates:
        # sanoid's [template_default] in sanoid.conf changes the defaults of every section
        for table in datasets.values():
            table.values["use_template"] = ["default"] + table.values.get("use_template", [])
    return templates, datasets


def _sanoid_view(templates: dict[str, _Table], table: _Table) -> tuple[dict[str, Any], dict[str, Any]]:
    """What sanoid applies to a section of its own: defaults, its templates, its keys. A parent never leaks in."""
    values: dict[str, Any] = {}
    hooks: dict[str, Any] = {}
    for layer in [templates[name] for name in table.values.get("use_template", []) if name in templates] + [table]:
        values.update({key: value for key, value in layer.values.items() if key in POLICY_KEYS})
        hooks.update(layer.hooks)
    return values, hooks


def _render(templates: dict[str, _Table], datasets: dict[str, _Table]) -> str:
    lines = [
        "# Generated by `vmsnapd import-sanoid` from a sanoid.conf.",
        "# Review before use: domain defaults to \"auto\", so a dataset named like a libvirt domain now gets",
        "# VM-consistent cycles (RAM dump, overlay); set domain = \"none\" where sanoid's plain snapshots are wanted.",
        "# Retention differs slightly from sanoid: vmsnapd keeps the newest N of each period (docs/configuration.md).",
    ]
    for prefix, tables in (("templates", templates), ("datasets", datasets)):
        for table in tables.values():
            lines += ["", f"[{key_path([prefix, table.name])}]"]
            lines += [f"{key} = {_toml_value(value)}" for key, value in table.values.items()]
            lines += table.comments
            if table.hooks:
                lines += ["", f"[{key_path([prefix, table.name, 'hooks'])}]"]
                lines += [f"{key} = {_toml_value(value)}" for key, value in table.hooks.items()]
    return "\n".join(lines) + "\n"


def sanoid_to_toml(text: str) -> str:
    """The vmsnapd TOML equivalent of sanoid.conf `text`; raises ConfigError when the result would be invalid."""
    templates, datasets = _tables(text)
    config = parse_config(_render(templates, datasets), "<import-sanoid>")
    # A vmsnapd child table inherits its recursive parent's keys; a sanoid section does not. Make the keys where
    # that would differ explicit, so every table resolves to what sanoid applies.
    for name, table in datasets.items():
        resolved = table_policy(config, name)
        values, hooks = _sanoid_view(templates, table)
        before = (dict(table.values), dict(table.hooks))
        for key in POLICY_KEYS:
            if key == "hooks":
                continue
            wanted = values.get(key, PolicySettings.model_fields[key].get_default(call_default_factory=True))
            if getattr(resolved, key) != wanted:
                table.values[key] = wanted
        for hook in Hooks.model_fields:
            wanted = hooks.get(hook, Hooks.model_fields[hook].get_default(call_default_factory=True))
            if getattr(resolved.hooks, hook) != wanted and wanted is not None:
                table.hooks[hook] = wanted
        if (table.values, table.hooks) != before:
            table.comments.append("# keys above repeated from sanoid's defaults: in sanoid a section of its own "
                                  "does not inherit its parent's settings")
    result = _render(templates, datasets)
    parse_config(result, "<import-sanoid>")
    return result
