"""`vmsnapd import-sanoid`: translate a sanoid.conf into the vmsnapd TOML that means what sanoid meant.

Three steps, each checkable on its own:

1. `read_ini` reads the file the way sanoid's Config::IniFiles does (sections in file order, `key = value` with the
   value's trailing blanks kept, `#`/`;` comment lines, a one-line `<<EOT` value); what sanoid would refuse, or
   read as something else than the user wrote (a repeated key is a *list* for sanoid 2.1), is an error here.
2. `sanoid_resolve` is a line-by-line port of the `init` sub of sanoid 2.1 (/usr/sbin/sanoid): sections in file
   order; a section not yet initialised starts from sanoid.defaults.conf and the user's `[template_default]`; then
   its `use_template` list in order, then its own keys; a recursive section copies its resolved settings onto every
   descendant (so a child written *after* its parent starts from the parent's settings, one written *before* is
   overwritten by them); `skip_children` drops the descendants; `recursive = zfs` turns the children's autosnap off.
   It runs on a virtual dataset tree: every section's dataset plus one "probe" child under each, standing for any
   dataset without a section of its own there.
3. The TOML keeps sanoid's structure (templates, use_template lists, each section's own keys); then vmsnapd's
   resolution of every virtual dataset is compared with sanoid's, keys where they differ are written out
   explicitly, and a final comparison must find them equal, or the import fails naming the dataset and key.
   Where vmsnapd cannot do what sanoid did, the output says so in a comment and a warning goes to stderr.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from vmsnapd.config import (MAX_TIMEOUT_S, Config, ConfigError, Hooks, PolicySettings, key_path, parse_config,
                            resolve)
from vmsnapd.names import PERIODS, InvalidName, validate_dataset_name


class SanoidImportError(ConfigError):
    """The sanoid.conf cannot be imported; the one-line message names the line, section and key."""

    def __init__(self, message: str) -> None:
        super().__init__("<sanoid.conf>", [message])

    def __str__(self) -> str:
        return self.errors[0]


# /usr/share/sanoid/sanoid.defaults.conf of sanoid 2.1 ([template_default], version 2): sanoid's defaults and the list
# of keys it accepts. tests/sanoid/test_oracle.py checks this copy against the installed file.
SANOID_DEFAULTS: dict[str, str] = {
    "path": "", "recursive": "", "use_template": "", "process_children_only": "", "skip_children": "",
    "pre_snapshot_script": "", "post_snapshot_script": "", "pruning_script": "", "script_timeout": "5",
    "no_inconsistent_snapshot": "", "force_post_snapshot_script": "", "frequent_period": "15",
    "autoprune": "yes", "frequently": "0", "hourly": "48", "daily": "90", "weekly": "0", "monthly": "6",
    "yearly": "0", "prune_defer": "0", "autosnap": "1", "hourly_min": "0", "daily_hour": "23", "daily_min": "59",
    "weekly_wday": "1", "weekly_hour": "23", "weekly_min": "30", "monthly_mday": "1", "monthly_hour": "0",
    "monthly_min": "0", "yearly_mon": "1", "yearly_mday": "1", "yearly_hour": "0", "yearly_min": "0",
    "monitor": "yes", "monitor_dont_warn": "no", "monitor_dont_crit": "no",
    "frequently_warn": "0", "frequently_crit": "0", "hourly_warn": "90m", "hourly_crit": "360m",
    "daily_warn": "28h", "daily_crit": "32h", "weekly_warn": "0", "weekly_crit": "0",
    "monthly_warn": "32d", "monthly_crit": "40d", "yearly_warn": "0", "yearly_crit": "0",
    "capacity_warn": "80", "capacity_crit": "95",
}
# Keys later sanoid releases added that the import also understands (sanoid 2.1 itself refuses them).
LATER_KEYS: dict[str, str] = {"pre_pruning_script": ""}
KNOWN_KEYS = {**SANOID_DEFAULTS, **LATER_KEYS}

TOGGLES = ("autosnap", "autoprune", "monitor_dont_warn", "monitor_dont_crit", "monitor", "recursive",
           "process_children_only", "skip_children", "no_inconsistent_snapshot", "force_post_snapshot_script")
TRUE_SPELLINGS = ("1", "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON")
FALSE_SPELLINGS = ("0", "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF")
SCHEDULE_KEYS = tuple(key for key in PolicySettings.model_fields
                      if key.endswith(("_min", "_hour", "_wday", "_mday", "_mon")))
THRESHOLD_KEYS = tuple(f"{period}_{level}" for period in PERIODS for level in ("warn", "crit"))
SCRIPT_HOOKS = {"pre_snapshot_script": "pre_snapshot", "post_snapshot_script": "post_snapshot",
                "pre_pruning_script": "pre_prune", "pruning_script": "post_prune"}
PROBE = "vmsnapd-import-probe"  # the virtual child standing for "any dataset without a section of its own"
NO_TIMEOUT_S = 86400  # sanoid's script_timeout <= 0 (no limit): vmsnapd always has one
_TEMPLATE_PREFIX = "template_"


# ---------------------------------------------------------------------------------------------------------------
# 1. Reading the file as Config::IniFiles does
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Value:
    """One setting as sanoid holds it, and where it came from (for messages)."""

    text: str
    origin: str

    def where(self, key: str) -> str:
        return f"{self.origin}: {key} = {self.text.strip()!r}"


@dataclass
class IniSection:
    name: str
    line: int
    keys: dict[str, Value] = field(default_factory=dict)


# Keys Perl only uses as numbers (prune_defer is checked as /^\d+\z/ by sanoid, thresholds by a pattern)
_NUMERIC_KEYS = frozenset(("frequently", "hourly", "daily", "weekly", "monthly", "yearly", "frequent_period",
                           "script_timeout", "hourly_min", "daily_hour", "daily_min", "weekly_wday", "weekly_hour",
                           "weekly_min", "monthly_mday", "monthly_hour", "monthly_min", "yearly_mon", "yearly_mday",
                           "yearly_hour", "yearly_min"))
_COMMENTED_NUMBER = re.compile(r"(\d+)\s+[#;].*")
_SECTION = re.compile(r"\A\s*\[\s*(\S|\S.*\S)\s*\]\s*\Z")
_PARAM = re.compile(r"\A\s*([^=]*?[^=\s])\s*=\s*(.*)\Z")
_COMMENT = re.compile(r"\A\s*[#;]")
_BLANK = re.compile(r"\A\s*\Z")


def read_ini(text: str, known_keys: Container[str] | None = KNOWN_KEYS,
             warnings: list[str] | None = None) -> list[IniSection]:
    """Sections in file order, as sanoid's Config::IniFiles reads them; SanoidImportError where sanoid refuses the
    file or would read it differently from what it says. `warnings` gets what is read as sanoid reads it but
    deserves a look (a number followed by an inline comment)."""
    lines = re.split(r"\r\n?|\n|\x15", text.removeprefix("\ufeff"))
    sections: dict[str, IniSection] = {}
    current: IniSection | None = None
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index]
        index += 1
        if _BLANK.match(line) or _COMMENT.match(line):
            continue
        if match := _SECTION.match(line):
            # a section written twice is one section for Config::IniFiles, at its first place
            current = sections.setdefault(match[1], IniSection(match[1], number))
            continue
        key, value = _parameter(line, number, current)
        assert current is not None  # _parameter refuses a key outside a section
        if value.startswith("<<"):
            value, index = _here_document(lines, index, f"line {number} [{current.name}]: {key} = {value}")
        _add_key(current, key, Value(value, f"line {number} [{current.name}]"), known_keys, warnings)
    if not any(section.keys for section in sections.values()):
        raise SanoidImportError("not a sanoid.conf: no `key = value` in any section (sanoid refuses an empty file)")
    return list(sections.values())


def _parameter(line: str, number: int, current: IniSection | None) -> tuple[str, str]:
    match = _PARAM.match(line)
    if match is None:
        raise SanoidImportError(
            f"not a sanoid.conf: line {number}: {line.strip()!r} is neither a [section], a `key = value` nor a "
            "comment; sanoid refuses such a file (continuation lines do not exist in sanoid.conf)")
    if current is None:
        raise SanoidImportError(
            f"not a sanoid.conf: line {number}: `{match[1]} = …` before any [section] header; sanoid refuses such "
            "a file (every key belongs to a [dataset] or [template_NAME] section)")
    return match[1], match[2]


def _here_document(lines: list[str], index: int, where: str) -> tuple[str, int]:
    """A `key = <<EOT` value: Config::IniFiles reads the lines up to EOT; one line is a value, more a list."""
    marker, body = where.rpartition("<<")[2], []
    while index < len(lines) and lines[index] != marker:
        body.append(lines[index])
        index += 1
    if index == len(lines) or len(body) != 1:
        raise SanoidImportError(f"{where}: a multi-line value; sanoid reads it as a list, which no key accepts: "
                                "write the value on one line")
    return body[0], index + 1


def _add_key(section: IniSection, key: str, value: Value, known_keys: Container[str] | None,
             warnings: list[str] | None) -> None:
    if known_keys is not None and key not in known_keys:
        raise SanoidImportError(f"{value.origin}: unknown key {key!r}; sanoid refuses the file "
                                "(\"I don't understand the setting\")")
    if key in section.keys:
        raise SanoidImportError(
            f"{value.origin}: {key} is given a second time ({section.keys[key].origin}); sanoid 2.1 reads a repeated "
            "key as a list and then uses it as a huge number: keep only the value you mean")
    if key in _NUMERIC_KEYS and (commented := _COMMENTED_NUMBER.fullmatch(value.text)):
        if warnings is not None:
            warnings.append(f"{value.origin}: {key} = {value.text!r}: sanoid.conf has no inline comments, sanoid "
                            f"(Perl) reads the leading number {commented[1]} and ignores the rest; imported as such")
        value = Value(commented[1], value.origin)
    section.keys[key] = value


# ---------------------------------------------------------------------------------------------------------------
# 2. sanoid's init, ported
# ---------------------------------------------------------------------------------------------------------------

SanoidConfig = dict[str, dict[str, Value]]


def _as_toggle(value: Value) -> Value:
    """sanoid's normalisation: one of its true spellings becomes 1, a false one 0, anything else stays."""
    if value.text in TRUE_SPELLINGS:
        return Value("1", value.origin)
    if value.text in FALSE_SPELLINGS:
        return Value("0", value.origin)
    return value


def _normalise_toggles(config: dict[str, Value]) -> None:
    for toggle in TOGGLES:
        if toggle in config:
            config[toggle] = _as_toggle(config[toggle])


def _initialise(config: dict[str, Value], user_default: dict[str, Value], warn: Callable[[str], None]) -> None:
    for key, text in SANOID_DEFAULTS.items():
        if not re.search("template|recursive|children_only", key):
            config[key] = Value(text, "sanoid's default")
    for key, value in user_default.items():
        if re.search("template|recursive", key):
            warn(f"{value.origin}: sanoid ignores {key!r} in [template_default]")
            continue
        config[key] = value


def _apply_templates(config: dict[str, Value], own: dict[str, Value], ini: dict[str, IniSection],
                     warn: Callable[[str], None]) -> None:
    if "use_template" not in own:
        return
    for raw in [name.rstrip() for name in re.split(" *, *", own["use_template"].text)]:
        template = ini.get(_TEMPLATE_PREFIX + raw)
        if template is None:
            warn(f"{own['use_template'].origin}: no [template_{raw}]; sanoid ignores the name")
            continue
        for key, value in template.keys.items():
            if re.search("template|recursive", key):
                warn(f"{value.origin}: sanoid ignores {key!r} in a template")
                continue
            config[key] = value


def _flag(own: dict[str, Value], key: str) -> bool:
    return key in own and own[key].text in TRUE_SPELLINGS


def sanoid_resolve(sections: list[IniSection], children_of: Callable[[str], Iterable[str]],
                   warn: Callable[[str], None]) -> SanoidConfig:
    """sanoid 2.1's `init`: the configuration of every section label and every descendant dataset it reached."""
    ini = {section.name: section for section in sections}
    user_default = ini[_TEMPLATE_PREFIX + "default"].keys if _TEMPLATE_PREFIX + "default" in ini else {}
    config: SanoidConfig = {}
    for section in sections:
        if section.name.startswith(_TEMPLATE_PREFIX):
            continue
        own = section.keys
        current = config.setdefault(section.name, {})
        if "initialized" not in current:
            _initialise(current, user_default, warn)
        _apply_templates(current, own, ini, warn)
        for key, value in own.items():
            if not re.search("template|recursive|skip_children", key):
                current[key] = value
        _normalise_toggles(current)
        current["path"] = own.get("path", Value(section.name, f"line {section.line} [{section.name}]"))
        if current.get("zfs_recursion", Value("", "")).text == "1" and current["autosnap"].text == "1":
            warn(f"[{section.name}]: sanoid ignores autosnap here: the dataset is part of a `recursive = zfs` tree")
            current["autosnap"] = Value("0", "recursive = zfs of a parent")
        recursive = _flag(own, "recursive")
        zfs_recursive = "recursive" in own and re.search("zfs", own["recursive"].text, re.IGNORECASE) is not None
        if not (recursive or zfs_recursive or _flag(own, "skip_children")):
            continue
        if zfs_recursive:
            current["zfs_recursion"] = Value("1", own["recursive"].origin)
        _recurse(config, current, children_of(current["path"].text), zfs_recursive, _flag(own, "skip_children"))
    return config


def _recurse(config: SanoidConfig, parent: dict[str, Value], children: Iterable[str], zfs_recursive: bool,
             skip: bool) -> None:
    for dataset in children:
        if zfs_recursive:
            child = config.setdefault(dataset, {})
            child["autosnap"] = Value("0", "recursive = zfs of a parent")
            excluded = "template|recursive|children_only|autosnap"
        elif skip:
            config.pop(dataset, None)
            continue
        else:
            child = config.setdefault(dataset, {})
            excluded = "template|recursive|children_only"
        for key, value in parent.items():
            if not re.search(excluded, key):
                child[key] = value
        child["path"] = Value(dataset, "recursion")
        child["initialized"] = Value("1", "recursion")


# ---------------------------------------------------------------------------------------------------------------
# Translating sanoid values into vmsnapd values
# ---------------------------------------------------------------------------------------------------------------

def _integer(key: str, value: Value, low: int = 0, high: int | None = None) -> int:
    text = value.text.strip()
    if not re.fullmatch(r"\d+", text) or (high is not None and not low <= int(text) <= high) or int(text) < low:
        bounds = f" from {low} to {high}" if high is not None else ""
        raise SanoidImportError(f"{value.where(key)}: needs a whole number{bounds}")
    return int(text)


def _toggle(key: str, value: Value) -> bool:
    if value.text in ("1", "0", ""):
        return value.text == "1"
    raise SanoidImportError(
        f"{value.where(key)}: not one of sanoid's spellings ({'/'.join(TRUE_SPELLINGS)} or "
        f"{'/'.join(FALSE_SPELLINGS)}, exactly, without trailing blanks); sanoid would read it as "
        f"{'on' if value.text else 'off'}, probably not what was meant: write yes or no")


_PERL_SHELL_METACHARS = re.compile(r"[$&*(){}\[\]'\";\\|?<>~`\n]")
_SH_SPECIAL = re.compile(r"[$&*(){}\[\];|?<>~`]|(^|\s)#")


def script_argv(key: str, value: Value) -> list[str]:
    """The argv sanoid's `system($line)` runs: Perl execs the words itself when the line has no shell
    metacharacter, else /bin/sh -c runs it. Quoting alone becomes argv; real shell syntax is an error."""
    line = value.text
    if not _PERL_SHELL_METACHARS.search(line):
        words = line.split()  # what Perl's exec does with such a line
    elif _only_quoting(line):
        words = shlex.split(line, comments=False, posix=True)  # sh's quote removal, nothing else is special here
    else:
        raise SanoidImportError(
            f"{value.where(key)}: uses shell syntax (pipes, redirection, $, ;, &, globs, backquotes, ~, #…) that an "
            "argv list cannot express; vmsnapd runs hooks without a shell: put the command line in a script and "
            "give its path")
    if not words:
        raise SanoidImportError(f"{value.where(key)}: a blank command; remove the key")
    if "=" in words[0] and "/" not in words[0].split("=")[0]:
        raise SanoidImportError(f"{value.where(key)}: starts with a variable assignment, which needs a shell; "
                                "hooks get argv lists: put it in a script")
    return words


def _only_quoting(line: str) -> bool:
    """True when every character /bin/sh treats specially is quoted or backslash-escaped (and no double-quoted
    part holds what sh expands there: $, `, \\), so that sh's only work would be quote removal."""
    plain, quote, index = [], None, 0
    while index < len(line):
        char = line[index]
        if quote == "'":
            quote = None if char == "'" else quote
        elif quote == '"':
            if char in "$`\\":
                return False
            quote = None if char == '"' else quote
        elif char in "'\"":
            quote = char
            plain.append("x")
        elif char == "\\":
            index += 1
            plain.append("x")
        else:
            plain.append(char)
        index += 1
    return quote is None and not _SH_SPECIAL.search("".join(plain))


# -- Hook scripts that snapshot VMs themselves: the classic pre/post scripts vmsnapd's cycle replaces ----------------

ReadScript = Callable[[str], str]  # a hook's program -> its text (OSError or ConfigError when it cannot be read)
_INTERPRETERS = frozenset(("sh", "bash", "dash", "ksh", "zsh", "env", "python", "python3", "perl"))
# virsh verbs that only a VM-snapshot script runs (freeze, overlay + RAM dump, commit back) — by name, wherever
# virsh sits (a variable, a full path); the generic ones (suspend, resume, save) only on a line that names virsh
_VM_SNAPSHOT_VERBS = re.compile(r"(?<![\w-])(snapshot-create-as|snapshot-create|blockcommit|blockpull|domfsfreeze|"
                                r"domfsthaw|managedsave|guest-fsfreeze-freeze)(?![\w-])")
_VIRSH_PAUSE = re.compile(r"\bvirsh\b.*\s(suspend|resume|save)(?![\w-])")


def script_program(argv: list[str]) -> str | None:
    """The file a hook's argv runs: its first word, or the script an interpreter (`sh x.sh`, `env bash x`) is given."""
    for word in argv:
        if word.startswith("-") or "=" in word and "/" not in word.split("=")[0]:
            continue  # an interpreter's option, or env's VAR=value
        if word.rsplit("/", 1)[-1] not in _INTERPRETERS:
            return word
    return None


def vm_snapshot_line(text: str) -> tuple[int, str] | None:
    """The first line (number, text) of a script that snapshots, freezes or commits a VM itself, or None.
    Comment lines do not count."""
    for number, line in enumerate(text.splitlines(), 1):
        code = line.strip()
        if code.startswith("#"):
            continue
        if _VM_SNAPSHOT_VERBS.search(code) or _VIRSH_PAUSE.search(code):
            return number, code
    return None


def _vm_script_verdict(key: str, value: Value, read_script: ReadScript) -> str | None:
    """Why the hook `key = value` is not imported (it snapshots VMs itself), or None to import it. A script that
    cannot be read is imported, with a warning to look at it (sanoid may run on another host than the import)."""
    program = script_program(script_argv(key, value))
    if program is None:
        return None
    try:
        found = vm_snapshot_line(read_script(program))
    except (OSError, ConfigError) as exc:
        raise _Unreadable(f"{value.where(key)}: {program} cannot be read here ({exc}), so the import cannot tell "
                          "whether it snapshots VMs itself (virsh snapshot-create-as, blockcommit, domfsfreeze…); "
                          "if it does, remove the hook: vmsnapd's own cycle does that work") from None
    if found is None:
        return None
    number, line = found
    return (f"{value.where(key)} not imported: {program} snapshots VMs itself (line {number}: {line[:120]}); "
            "vmsnapd's cycle does that work (freeze, RAM dump, zfs snapshot, commit back), and running the script "
            "too would stack a second overlay and RAM dump on every snapshot")


class _Unreadable(Exception):
    """A hook script the import could not read (a warning, not an error)."""


def drop_vm_snapshot_scripts(sections: list[IniSection], read_script: ReadScript,
                             warnings: list[str]) -> dict[str, list[str]]:
    """Blank (sanoid's "no script") every hook whose script snapshots VMs itself; the reasons per section name.
    Blanked before resolution, so what the import checks against sanoid is sanoid without those scripts."""
    dropped: dict[str, list[str]] = {}
    for section in sections:
        for key in SCRIPT_HOOKS:
            value = section.keys.get(key)
            if value is None or value.text == "":
                continue
            try:
                reason = _vm_script_verdict(key, value, read_script)
            except _Unreadable as exc:
                warnings.append(str(exc))
                continue
            if reason is not None:
                section.keys[key] = Value("", value.origin)
                dropped.setdefault(section.name, []).append(reason)
                warnings.append(reason)
    return dropped



def _threshold(key: str, value: Value) -> int | str:
    text = value.text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\d+[yYwWdDhHmMsS]", text):
        return text
    raise SanoidImportError(f"{value.where(key)}: not a number with an optional unit (s, m, h, d, w, y); sanoid "
                            "would treat it as 1 second and always alarm")


@dataclass
class Expected:
    """What sanoid does for one dataset, in vmsnapd's terms, plus the differences vmsnapd cannot avoid."""

    values: dict[str, Any]
    hooks: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _bounds(key: str) -> tuple[int, int | None]:
    """The range vmsnapd's PolicySettings accepts for an integer key."""
    info = PolicySettings.model_fields[key].metadata
    return next((m.ge for m in info if hasattr(m, "ge")), 0), next((m.le for m in info if hasattr(m, "le")), None)


def expected_policy(config: dict[str, Value]) -> Expected:
    """Translate sanoid's resolved configuration of one dataset; SanoidImportError names any untranslatable key."""
    values: dict[str, Any] = {period: _integer(period, config[period]) for period in PERIODS}
    for key in SCHEDULE_KEYS:
        values[key] = _integer(key, config[key], *_bounds(key))
    values["autosnap"] = _toggle("autosnap", config["autosnap"])
    values["autoprune"] = _toggle("autoprune", config["autoprune"])
    notes: list[str] = []
    period = _integer("frequent_period", config["frequent_period"], 1)
    if 60 % period:
        if values["frequently"]:
            raise SanoidImportError(f"{config['frequent_period'].where('frequent_period')}: vmsnapd needs a "
                                    "divisor of 60 (sanoid's uneven spacing within the hour is not supported)")
        notes.append(f"{config['frequent_period'].where('frequent_period')}: not a divisor of 60, unused "
                     "(frequently = 0): written as 15")
        period = 15
    values["frequent_period"] = period
    if not re.fullmatch(r"\d+", config["prune_defer"].text):
        raise SanoidImportError(f"{config['prune_defer'].where('prune_defer')}: sanoid stops pruning with "
                                "\"invalid prune_defer limit\" unless it is digits only (no blanks, no comment)")
    defer = _integer("prune_defer", config["prune_defer"], 0, 100)
    if defer == 100 and values["autoprune"]:  # sanoid: prune only above 100 % use, i.e. never
        notes.append(f"{config['prune_defer'].where('prune_defer')}: sanoid never prunes then: autoprune = false")
    if defer == 100:
        values["autoprune"], defer = False, 0
    values["prune_defer"] = defer
    hooks = _expected_hooks(config, values, notes)
    _expected_monitoring(config, values, notes)
    return Expected(values, hooks, notes)


def _expected_hooks(config: dict[str, Value], values: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    hooks: dict[str, Any] = {}
    for key, hook in SCRIPT_HOOKS.items():
        value = config.get(key)
        hooks[hook] = script_argv(key, value) if value is not None and value.text != "" else []
    if not any(hooks.values()):
        return hooks
    timeout = config["script_timeout"]
    seconds = int(timeout.text.strip()) if re.fullmatch(r"\s*-?\d+\s*", timeout.text) else None
    if seconds is None:
        raise SanoidImportError(f"{timeout.where('script_timeout')}: needs a whole number of seconds")
    if seconds <= 0:
        notes.append(f"script_timeout = {seconds} (no limit in sanoid): vmsnapd kills a hook after "
                     f"{NO_TIMEOUT_S} s")
        seconds = NO_TIMEOUT_S
    elif seconds > MAX_TIMEOUT_S:
        notes.append(f"script_timeout = {seconds}: vmsnapd's longest hook timeout is {MAX_TIMEOUT_S} s (a week), "
                     "used instead")
        seconds = MAX_TIMEOUT_S
    hooks["timeout"] = seconds
    if hooks["pre_snapshot"]:
        inconsistent_ok = not _toggle("no_inconsistent_snapshot", config["no_inconsistent_snapshot"])
        values["pre_snapshot_failure"] = "continue" if inconsistent_ok else "fail"
        force_post = _toggle("force_post_snapshot_script", config["force_post_snapshot_script"])
        if hooks["post_snapshot"] and not (force_post and inconsistent_ok):
            notes.append("post_snapshot: vmsnapd runs it whenever pre_snapshot ran, also after a failure "
                         "(SANOID_PRE_FAILURE=1); sanoid skipped it then (force_post_snapshot_script off or "
                         "no_inconsistent_snapshot on)")
    if hooks["post_prune"]:
        notes.append("post_prune (sanoid's pruning_script): vmsnapd runs it once after a dataset's pruning; sanoid "
                     "ran it after each destroyed snapshot with SANOID_SNAPNAME set")
    if hooks["pre_prune"]:
        notes.append("pre_prune (sanoid's pre_pruning_script): vmsnapd runs it once before a dataset's pruning; "
                     "sanoid ran it before each destroyed snapshot")
    return hooks


def _expected_monitoring(config: dict[str, Value], values: dict[str, Any], notes: list[str]) -> None:
    if _toggle("monitor_dont_crit", config["monitor_dont_crit"]):
        raise SanoidImportError(f"{config['monitor_dont_crit'].where('monitor_dont_crit')}: vmsnapd check has no "
                                "\"report CRITICAL as OK\"; remove it or raise the *_crit thresholds")
    thresholds = {key: _threshold(key, config[key]) for key in THRESHOLD_KEYS}
    if not _toggle("monitor", config["monitor"]):
        thresholds = dict.fromkeys(THRESHOLD_KEYS, 0)  # sanoid: `monitor = no` checks nothing; 0 turns a check off
    elif _toggle("monitor_dont_warn", config["monitor_dont_warn"]):
        thresholds.update({key: 0 for key in THRESHOLD_KEYS if key.endswith("_warn")})
        notes.append("monitor_dont_warn = yes: the *_warn thresholds are 0 (no WARNING); sanoid still printed "
                     "the warning text with status OK")
    for key in ("capacity_warn", "capacity_crit"):
        if config[key].text.strip() != SANOID_DEFAULTS[key]:
            notes.append(f"{config[key].where(key)} is not imported: a pool capacity limit is not part of "
                         "vmsnapd's policy (see `vmsnapd check`)")
    values.update(thresholds)


# ---------------------------------------------------------------------------------------------------------------
# 3. Building the TOML and proving it means what sanoid meant
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Table:
    """One `[templates.X]` or `[datasets."X"]` table being written, with the comments that go above it."""

    values: dict[str, Any] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)

    def set(self, key: str, value: Any) -> None:
        if key in Hooks.model_fields:
            self.values.setdefault("hooks", {})[key] = value
        else:
            self.values[key] = value


@dataclass
class Translation:
    """The result: TOML text and the warnings for stderr."""

    toml: str
    warnings: list[str]


def _flat(expected: Expected) -> dict[str, Any]:
    return {**expected.values, **expected.hooks}


def _vmsnapd_view(policy: Any, like: dict[str, Any]) -> dict[str, Any]:
    view = {}
    for key in like:
        view[key] = getattr(policy.hooks, key) if key in Hooks.model_fields else getattr(policy, key)
    return view


def _layer_value(key: str, value: Value) -> tuple[str, Any] | None:
    """One key of a section or template on its own, in vmsnapd's words; None for keys that only make sense
    resolved (SanoidImportError for a bad value)."""
    if key in PERIODS or key in SCHEDULE_KEYS:
        return key, _integer(key, value, *_bounds(key)) if key in SCHEDULE_KEYS else _integer(key, value)
    if key in ("autosnap", "autoprune"):
        return key, _toggle(key, _as_toggle(value))
    if key == "no_inconsistent_snapshot":
        return "pre_snapshot_failure", "fail" if _toggle(key, _as_toggle(value)) else "continue"
    if key in SCRIPT_HOOKS and value.text != "":
        return SCRIPT_HOOKS[key], script_argv(key, value)
    if key in THRESHOLD_KEYS:
        return key, _threshold(key, value)
    if key == "script_timeout" and _integer(key, value) > 0:
        return "timeout", min(_integer(key, value), MAX_TIMEOUT_S)
    if key == "prune_defer" and _integer(key, value, 0, 100) < 100:
        return key, _integer(key, value)
    if key == "frequent_period" and 60 % _integer(key, value, 1) == 0:
        return key, _integer(key, value)
    return None


def _translate_layer(keys: dict[str, Value], table: Table) -> None:
    """A section's or template's own keys where they translate on their own (structure only: what counts is the
    per-dataset comparison that follows, which also reports a bad value where a dataset really uses it)."""
    for key, value in keys.items():
        try:
            translated = _layer_value(key, value)
        except SanoidImportError:
            continue
        if translated is not None:
            table.set(*translated)


def _check_tree_flags(own: dict[str, Value]) -> None:
    """sanoid reads `recursive` and `skip_children` from the section itself, off unless one of its true spellings
    (or, for recursive, anything containing "zfs"): a value that is neither is surely a mistake."""
    for key in ("recursive", "skip_children"):
        value = own.get(key)
        if value is None or value.text in TRUE_SPELLINGS + FALSE_SPELLINGS + ("",):
            continue
        if key == "recursive" and re.search("zfs", value.text, re.IGNORECASE):
            continue
        raise SanoidImportError(f"{value.where(key)}: not one of sanoid's spellings; sanoid would read it as off, "
                                "probably not what was meant: write yes or no" + (" (or zfs)" if key == "recursive"
                                                                                  else ""))


def _is_dataset_name(name: str) -> bool:
    try:
        validate_dataset_name(name)
    except InvalidName:
        return False
    return True


class _Importer:
    def __init__(self, sections: list[IniSection], dropped: dict[str, list[str]] | None = None) -> None:
        self.warnings: list[str] = []
        self.dropped = dropped or {}  # section name -> why a hook of it was not imported
        self.datasets = [s for s in sections if not s.name.startswith(_TEMPLATE_PREFIX)]
        self.templates = [s for s in sections if s.name.startswith(_TEMPLATE_PREFIX)]
        if not self.datasets:
            raise SanoidImportError("no dataset section (only templates): there is nothing to import")
        self.paths = {s.name: self._path(s) for s in self.datasets}
        # A section label is a dataset name for sanoid's recursion even when `path` points elsewhere
        labels = [s.name for s in self.datasets if _is_dataset_name(s.name)]
        self.tree = sorted({p for path in [*self.paths.values(), *labels] for p in (path, f"{path}/{PROBE}")})
        self.zfs_roots: set[str] = set()
        self.sanoid = self._by_dataset(sanoid_resolve(sections, self._children, self.warnings.append))

    def _path(self, section: IniSection) -> str:
        path = section.keys["path"].text.strip() if "path" in section.keys else section.name
        try:
            return validate_dataset_name(path)
        except InvalidName as exc:
            raise SanoidImportError(f"line {section.line} [{section.name}]: not a dataset name vmsnapd accepts: "
                                    f"{exc}") from None

    def _children(self, path: str) -> list[str]:
        return [name for name in self.tree if name.startswith(path + "/")]

    def _by_dataset(self, config: SanoidConfig) -> dict[str, dict[str, Value]]:
        result: dict[str, dict[str, Value]] = {}
        for label, settings in config.items():
            path = settings["path"].text
            if path in result:
                raise SanoidImportError(f"[{label}] (path = {path}) and another section both configure {path}: "
                                        "sanoid would manage it twice; give it one section")
            result[path] = settings
        return result

    def managed(self, dataset: str) -> bool:
        settings = self.sanoid.get(dataset)
        return settings is not None and settings.get("process_children_only", Value("0", "")).text not in ("1",)

    def expected(self, dataset: str) -> Expected:
        return expected_policy(self.sanoid[dataset])

    def build(self) -> Translation:
        templates = {s.name[len(_TEMPLATE_PREFIX):]: Table() for s in self.templates}
        for section in self.templates:
            _translate_layer(section.keys, templates[section.name[len(_TEMPLATE_PREFIX):]])
        tables: dict[str, Table] = {}
        for section in sorted(self.datasets, key=lambda s: self.paths[s.name].count("/")):
            table = self._dataset_table(section, templates)
            if table is not None:
                tables[self.paths[section.name]] = table
                self._fix(tables, templates, self.paths[section.name])
        self._verify(tables, templates)
        for section in self.templates:
            templates[section.name[len(_TEMPLATE_PREFIX):]].comments += self.dropped.get(section.name, [])
        for section in self.datasets:
            if self.paths[section.name] in tables:
                tables[self.paths[section.name]].comments += self.dropped.get(section.name, [])
        return Translation(self._render(templates, tables), list(dict.fromkeys(self.warnings)))

    def _dataset_table(self, section: IniSection, templates: dict[str, Table]) -> Table | None:
        path, own, table = self.paths[section.name], section.keys, Table()
        probe_managed = self.managed(f"{path}/{PROBE}")
        if path not in self.sanoid:
            self.warnings.append(f"[{section.name}]: sanoid ignores this section (a later section with "
                                 "skip_children drops it); not imported")
            return None
        if not self.managed(path) and not probe_managed:
            self.warnings.append(f"[{section.name}]: process_children_only without a recursive policy over its "
                                 "children manages nothing in sanoid; not imported")
            return None
        _check_tree_flags(own)
        names = [n.rstrip() for n in re.split(" *, *", own["use_template"].text)] if "use_template" in own else []
        wanted = [n for n in names if n in templates and n != "default"]
        if "default" in templates and not self._has_recursive_ancestor(path):
            wanted.insert(0, "default")
        if wanted:
            table.values["use_template"] = wanted
        _translate_layer(own, table)
        zfs = "recursive" in own and re.search("zfs", own["recursive"].text, re.IGNORECASE) is not None
        skip = _flag(own, "skip_children") and not zfs
        if (_flag(own, "recursive") or zfs) and not skip:
            table.values["recursive"] = True
        if zfs:
            self.zfs_roots.add(path)
            table.comments.append("sanoid: recursive = zfs took one `zfs snapshot -r` here and set the children's "
                                  "autosnap off; vmsnapd snapshots each child itself with this table's settings")
            self.warnings.append(f"[{section.name}] recursive = zfs: vmsnapd snapshots each child itself "
                                 "(same names and periods), not with one `zfs snapshot -r`")
        if skip and not probe_managed:
            table.values["skip_children"] = True
        if not self.managed(path):
            if table.values.get("recursive"):
                table.values["process_children_only"] = True
            else:
                # sanoid only takes this dataset out; what is below keeps the recursive parent's policy
                table.values = {"recursive": True, "process_children_only": True}
                table.comments.append(f"[{section.name}] has process_children_only without recursive: sanoid "
                                      "skips this dataset only; the datasets below keep the parent's policy")
        return table

    def _has_recursive_ancestor(self, path: str) -> bool:
        parts = path.split("/")
        for depth in range(len(parts) - 1, 0, -1):
            ancestor = "/".join(parts[:depth])
            for section in self.datasets:
                if self.paths[section.name] == ancestor and "recursive" in section.keys:
                    return True
        return False

    def _config(self, tables: dict[str, Table], templates: dict[str, Table]) -> Config:
        document = {"templates": {n: t.values for n, t in templates.items()},
                    "datasets": {n: t.values for n, t in tables.items()}}
        return parse_config(tomli_w.dumps(document), "<import-sanoid>")

    def _fix(self, tables: dict[str, Table], templates: dict[str, Table], path: str) -> None:
        """Write out the keys where vmsnapd's resolution of this table's dataset (or, for a table that manages only
        what is below it, its probe child) differs from sanoid's."""
        target = path if self.managed(path) else f"{path}/{PROBE}"
        if not self.managed(target):
            return
        expected = self.expected(target)
        # Only the target's own table and its ancestors' decide its policy: resolving with just those keeps the
        # import linear in the number of sections (the whole document each time made 3,000 sections take minutes).
        lineage = {name: table for name, table in tables.items() if target == name or target.startswith(name + "/")}
        policy = resolve(self._config(lineage, templates), [target]).get(target)
        if policy is None:
            return  # _verify reports it
        want = _flat(expected)
        have = _vmsnapd_view(policy, want)
        changed = [key for key in want if have[key] != want[key] and not self._zfs_autosnap(target, key)]
        for key in changed:
            tables[path].set(key, want[key])
        if changed:
            tables[path].comments.append(
                f"written out to match sanoid's resolution: {', '.join(changed)}")
        for note in expected.notes:
            if note not in tables[path].comments:
                tables[path].comments.append(note)
                # a note naming where its key was written is said once, not for every dataset inheriting it
                self.warnings.append(note if note.startswith("line ") else f"{path}: {note}")

    def _zfs_autosnap(self, dataset: str, key: str) -> bool:
        settings = self.sanoid.get(dataset, {})
        under_zfs = settings.get("zfs_recursion", Value("", "")).text == "1" and dataset not in self.zfs_roots
        return key == "autosnap" and under_zfs

    def _verify(self, tables: dict[str, Table], templates: dict[str, Table]) -> None:
        policies = resolve(self._config(tables, templates), self.tree)
        for dataset in self.tree:
            shown = dataset.replace(f"/{PROBE}", "/<child without a section>")
            if self.managed(dataset) != (dataset in policies):
                raise SanoidImportError(
                    f"{shown}: sanoid {'manages' if self.managed(dataset) else 'does not manage'} it and the "
                    "translated policy would not do the same (an arrangement of recursive, skip_children, "
                    "process_children_only or path keys vmsnapd cannot express); simplify the sections concerned")
            if dataset not in policies:
                continue
            want = _flat(self.expected(dataset))
            have = _vmsnapd_view(policies[dataset], want)
            for key in want:
                if have[key] != want[key] and not self._zfs_autosnap(dataset, key):
                    raise SanoidImportError(
                        f"{shown}: {key} would be {have[key]!r} in vmsnapd but is {want[key]!r} in sanoid, and the "
                        "import cannot express the difference; simplify the sections above it")

    def _render(self, templates: dict[str, Table], tables: dict[str, Table]) -> str:
        chunks = [
            "# Generated by `vmsnapd import-sanoid` from a sanoid.conf; each dataset resolves to what sanoid 2.1",
            "# resolved (checked by the import). Comments mark where vmsnapd behaves differently.",
            "# Review before use: domain defaults to \"auto\", so a dataset named like a libvirt domain now gets",
            "# VM-consistent cycles (RAM dump, overlay); set domain = \"none\" where sanoid's plain snapshots are",
            "# wanted. Run `vmsnapd once --dry-run` before the first real pass.",
            "",
            "# sanoid names and schedules snapshots in local time",
            tomli_w.dumps({"daemon": {"utc": False}}),
        ]
        for prefix, group in (("templates", templates), ("datasets", tables)):
            for name, table in group.items():
                chunks += [f"# {line}" for line in table.comments]
                body = tomli_w.dumps({prefix: {name: table.values}})
                if not table.values:
                    body = f"[{key_path([prefix, name])}]\n"
                chunks.append(body)
        text = "\n".join(chunks)
        parse_config(text, "<import-sanoid>")
        return text


def sanoid_import(text: str, read_script: ReadScript | None = None) -> Translation:
    """The vmsnapd TOML equivalent of sanoid.conf `text`, and the warnings for stderr; SanoidImportError when
    it cannot be imported faithfully. `read_script`: how to read a hook's script, to leave out those that
    snapshot VMs themselves (None: every hook is imported as it is)."""
    warnings: list[str] = []
    try:
        sections = read_ini(text, warnings=warnings)
        dropped = drop_vm_snapshot_scripts(sections, read_script, warnings) if read_script else {}
        importer = _Importer(sections, dropped)
        importer.warnings[:0] = warnings
        return importer.build()
    except SanoidImportError:
        raise
    except ConfigError as exc:  # a bug of the import, never something it should write
        raise SanoidImportError(f"the translation is not a valid vmsnapd policy: {'; '.join(exc.errors)}") from None
