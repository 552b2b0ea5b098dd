"""import-sanoid: sanoid's meaning, or one clear error and nothing written.

The resolution is proven against sanoid itself in tests/sanoid/test_sanoid_oracle.py; these tests need no sanoid.
"""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnapd.cli import main
from vmsnapd.config import ConfigError, load_config, parse_config, resolve
from vmsnapd.names import parse_snapname
from vmsnapd.sanoid_import import SanoidImportError, sanoid_import, script_argv, Value

SAMPLES = Path(__file__).resolve().parents[2] / "config" / "sanoid"
VM_HOST = (SAMPLES / "vm-host.conf").read_text()


def imported(text):
    return parse_config(sanoid_import(text).toml, "<imported>")


def test_typical_vm_host_resolves_to_sanoids_policy():
    config = imported(VM_HOST)
    assert config.daemon.utc is False  # sanoid names and schedules in local time
    policies = resolve(config, ["rpool", "rpool/VM", "rpool/VM/web", "rpool/VM/win2k16"])
    assert list(policies) == ["rpool/VM/web", "rpool/VM/win2k16"]  # process_children_only
    web = policies["rpool/VM/web"]
    assert (web.frequently, web.hourly, web.daily, web.weekly, web.monthly, web.yearly) == (0, 36, 30, 0, 3, 0)
    assert web.autosnap and web.autoprune
    assert web.hooks.pre_snapshot == ["/opt/scripts/pre.sh"]
    assert web.hooks.post_snapshot == ["/opt/scripts/post.sh"]
    assert web.hooks.timeout == 60
    assert web.pre_snapshot_failure == "fail"  # no_inconsistent_snapshot = yes
    assert web.hourly_warn == "90m"
    # [rpool/VM/win2k16] is written after its recursive parent: sanoid starts it from the parent's settings
    # (scripts included), then applies its template and keys
    win = policies["rpool/VM/win2k16"]
    assert (win.hourly, win.daily, win.monthly) == (12, 30, 3)
    assert win.hooks.pre_snapshot == ["/opt/scripts/pre.sh"] and win.hooks.post_snapshot == ["/opt/scripts/post.sh"]


def test_child_written_before_its_recursive_parent_is_overwritten_by_it():
    text = "[tank/vm/a]\nhourly = 5\n\n[tank/vm]\nrecursive = yes\nhourly = 20\nweekly = 3\n"
    policies = resolve(imported(text), ["tank/vm", "tank/vm/a", "tank/vm/b"])
    assert policies["tank/vm/a"].hourly == 20 and policies["tank/vm/a"].weekly == 3
    assert policies["tank/vm/b"].hourly == 20


def test_child_written_after_its_parent_keeps_parent_settings_not_defaults():
    text = ("[tank/vm]\nrecursive = yes\nweekly = 4\npre_snapshot_script = /x.sh --domain db\n\n"
            "[tank/vm/a]\nhourly = 5\n")
    a = resolve(imported(text), ["tank/vm", "tank/vm/a"])["tank/vm/a"]
    assert (a.hourly, a.weekly) == (5, 4)
    assert a.hooks.pre_snapshot == ["/x.sh", "--domain", "db"]  # split as sanoid's system() does


@pytest.mark.parametrize("spelling,value", [
    ("yes", True), ("Yes", True), ("YES", True), ("on", True), ("On", True), ("ON", True), ("true", True),
    ("True", True), ("TRUE", True), ("1", True), ("no", False), ("No", False), ("NO", False), ("off", False),
    ("Off", False), ("OFF", False), ("false", False), ("False", False), ("FALSE", False), ("0", False)])
def test_every_boolean_spelling_sanoid_accepts(spelling, value):
    policy = resolve(imported(f"[tank]\nautosnap = {spelling}\nautoprune = {spelling}\n"), ["tank"])["tank"]
    assert policy.autosnap is value and policy.autoprune is value


@pytest.mark.parametrize("spelling", ["y", "enabled", "no ", "nope"])
@pytest.mark.parametrize("key", ["autosnap", "recursive", "skip_children", "no_inconsistent_snapshot"])
def test_a_boolean_sanoid_would_misread_is_an_error_naming_it(spelling, key):
    script = "pre_snapshot_script = /x.sh\n" if key == "no_inconsistent_snapshot" else ""
    with pytest.raises(SanoidImportError, match=key):
        sanoid_import(f"[tank]\n{script}{key} = {spelling}\n")


def test_template_default_templates_in_order_and_booleans():
    text = """
[template_default]
hourly = 5
[template_a]
daily = 1
monthly = 1
[template_b]
daily = 2
[tank/data]
use_template = a, b
autoprune = off
recursive = zfs
pre_snapshot_script = /usr/local/bin/freeze
pruning_script = /usr/local/bin/pruned
"""
    result = sanoid_import(text)
    policies = resolve(parse_config(result.toml), ["tank/data", "tank/data/a"])
    data = policies["tank/data"]
    assert (data.hourly, data.daily, data.monthly) == (5, 2, 1) and not data.autoprune
    assert data.pre_snapshot_failure == "continue"  # sanoid's default without no_inconsistent_snapshot
    assert data.hooks.post_prune == ["/usr/local/bin/pruned"] and data.hooks.timeout == 5  # sanoid's default
    assert policies["tank/data/a"].configured_by == "tank/data"
    assert any("zfs snapshot -r" in w for w in result.warnings)  # differs: said on stderr …
    assert "# sanoid: recursive = zfs" in result.toml  # … and in the file
    assert any("pruning_script" in w for w in result.warnings)


def test_skip_children_keeps_the_children_out():
    text = "[tank]\nrecursive = yes\n[tank/scratch]\nskip_children = yes\nhourly = 2\n"
    policies = resolve(imported(text), ["tank", "tank/scratch", "tank/scratch/tmp", "tank/other"])
    assert list(policies) == ["tank", "tank/other", "tank/scratch"]
    assert policies["tank/scratch"].hourly == 2


def test_prune_defer_and_its_100():
    assert resolve(imported("[tank]\nprune_defer = 60\n"), ["tank"])["tank"].prune_defer == 60
    never = resolve(imported("[tank]\nprune_defer = 100\n"), ["tank"])["tank"]
    assert never.autoprune is False  # sanoid: prune only above 100 % use, i.e. never


def test_monitoring_keys():
    text = "[tank]\nhourly_warn = 2h\ndaily_crit = 40\n[tank2]\nmonitor = no\n[tank3]\nmonitor_dont_warn = yes\n"
    policies = resolve(imported(text), ["tank", "tank2", "tank3"])
    tank = policies["tank"]
    assert (tank.hourly_warn, tank.daily_crit, tank.monthly_crit) == ("2h", 40, "40d")
    assert policies["tank2"].hourly_crit == 0 and policies["tank2"].monthly_warn == 0
    assert policies["tank3"].hourly_warn == 0 and policies["tank3"].hourly_crit == "360m"
    with pytest.raises(SanoidImportError, match="monitor_dont_crit"):
        sanoid_import("[tank]\nmonitor_dont_crit = yes\n")
    with pytest.raises(SanoidImportError, match="hourly_warn"):
        sanoid_import("[tank]\nhourly_warn = soon\n")


@pytest.mark.parametrize("line,argv", [
    ("/x.sh", ["/x.sh"]),
    ("/x.sh --domain db", ["/x.sh", "--domain", "db"]),
    ("/x.sh\t-a   b", ["/x.sh", "-a", "b"]),
    ("/x.sh 'two words' \"and more\"", ["/x.sh", "two words", "and more"]),
    ("/x.sh it\\'s", ["/x.sh", "it's"]),
])
def test_script_lines_split_as_sanoids_shell_would(line, argv):
    assert script_argv("pre_snapshot_script", Value(line, "line 1 [tank]")) == argv


@pytest.mark.parametrize("line", [
    "/x.sh | logger", "/x.sh > /tmp/log", "/x.sh; /y.sh", "/x.sh && /y.sh", "/x.sh $HOME", "/x.sh `date`",
    "/x.sh *.img", "/x.sh ~/a", "FOO=1 /x.sh", '/x.sh "$HOME"', "/x.sh 'unterminated", "/x.sh & ", "(/x.sh)",
])
def test_script_lines_needing_a_shell_are_an_error_naming_the_line(line):
    with pytest.raises(SanoidImportError, match=r"line 3 \[tank\].*pre_snapshot_script"):
        sanoid_import(f"# comment\n[tank]\npre_snapshot_script = {line}\n")


def test_a_repeated_key_is_an_error_naming_both_lines():
    # sanoid 2.1 (Config::IniFiles) reads it as a list: `hourly => ['5', '7']`, a huge number for Perl
    with pytest.raises(SanoidImportError, match=r"line 3 \[tank\]: hourly.*line 2"):
        sanoid_import("[tank]\nhourly = 5\nhourly = 7\n")


@pytest.mark.parametrize("text,message", [
    ("hourly = 5\n[tank]\n", "not a sanoid.conf: line 1: .*before any \\[section\\]"),
    ("[tank/\U0001F600]\nhourly = 5\n", "not a dataset name"),
    ("[tank]\nhourly = 5\n  and a continuation line\n", "neither a \\[section\\]"),
    ("[tank]\npre_snapshot_script = /x.sh \\\n  --more\n", "neither a \\[section\\]"),
    ("[tank]\nhourly = 5\n[version]\nversion = 2\n", "unknown key 'version'"),
    ("[template_x]\nhourly = 5\n", "no dataset section"),
    ("# only a comment\n", "not a sanoid.conf.*empty file"),
    ("", "not a sanoid.conf.*empty file"),
    ("[tank]\nhourly = <<EOT\n1\n2\nEOT\n", "multi-line"),
    ("[tank]\nautosnap = yes # on\n", "autosnap"),
    ("[tank]\nhourly_warn = 90m # an hour and a half\n", "hourly_warn"),
    ("[tank]\nprune_defer = 50 \n", "invalid prune_defer limit"),
    ("[tank]\nfrequently = 2\nfrequent_period = 45\n", "divisor of 60"),
])
def test_broken_inputs_give_one_clear_error(text, message):
    with pytest.raises(SanoidImportError, match=message):
        sanoid_import(text)


def test_a_number_with_an_inline_comment_is_read_as_sanoid_reads_it():
    result = sanoid_import("[tank]\nhourly = 24    # one day\ndaily = 7 ; a week\n")
    policy = resolve(parse_config(result.toml), ["tank"])["tank"]
    assert (policy.hourly, policy.daily) == (24, 7)
    assert any("inline comments" in w and "line 2" in w for w in result.warnings)


def test_children_only_child_without_recursive_imports_as_sanoid_means_it():
    text = "[tank]\nrecursive = yes\nhourly = 9\n[tank/vm]\nprocess_children_only = yes\nhourly = 1\n"
    policies = resolve(imported(text), ["tank", "tank/vm", "tank/vm/a"])
    assert list(policies) == ["tank", "tank/vm/a"]  # sanoid skips tank/vm only
    assert policies["tank/vm/a"].hourly == 9  # tank/vm is not recursive: its children keep the parent's policy
    alone = sanoid_import("[tank/vm]\nprocess_children_only = yes\n[tank/x]\nhourly = 1\n")
    assert 'tank/vm"' not in alone.toml and any("manages nothing" in w for w in alone.warnings)


def test_an_arrangement_vmsnapd_cannot_express_is_refused_not_changed():
    # sanoid: the recursion from [p] configures p/a, then the section labelled p/a repoints that entry to q,
    # so p/a itself is not managed at all; vmsnapd has no way to leave p/a out of p's recursive policy
    with pytest.raises(SanoidImportError, match="p/a: sanoid does not manage it"):
        sanoid_import("[p]\nrecursive = yes\n[p/a]\npath = q\n")


def test_path_names_the_dataset():
    policies = resolve(imported("[vms]\npath = tank/vms\nhourly = 3\n"), ["tank/vms"])
    assert policies["tank/vms"].hourly == 3
    with pytest.raises(SanoidImportError, match="manage it twice"):
        sanoid_import("[vms]\npath = tank/vms\n[tank/vms]\nhourly = 3\n")


def test_dst_names_of_sanoid_are_ours():
    dst = parse_snapname("autosnap_2026-10-25_02:00:00dst_hourly")
    assert dst.period == "hourly"
    assert dst.stamp != parse_snapname("autosnap_2026-10-25_02:00:00_hourly").stamp  # another instant, another cycle
    assert parse_snapname("autosnap_2026-10-25_02:00:00dstx_hourly") is None


# ---- the command: -o, stderr, exit status, nothing written on failure --------------------------------------

def test_cli_writes_atomically_with_a_safe_mode(tmp_path, capsys):
    source = tmp_path / "sanoid.conf"
    source.write_text(VM_HOST)
    out = tmp_path / "vmsnapd.toml"
    assert main(["import-sanoid", str(source), "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert load_config(out).daemon.utc is False  # passes the loader's own checks (mode, owner, schema)
    assert "warning:" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["sanoid.conf", "vmsnapd.toml"]  # no temporary left


@pytest.mark.parametrize("text", [
    "hourly = 5\n[tank]\n", "[tank/\U0001F600]\nhourly = 5\n", "[tank]\nhourly = 5\n  continued\n",
    "[tank]\npre_snapshot_script = /x.sh | logger\n",
])
def test_cli_failure_writes_nothing_and_keeps_the_old_file(tmp_path, capsys, text):
    source = tmp_path / "sanoid.conf"
    source.write_text(text)
    out = tmp_path / "vmsnapd.toml"
    out.write_text("# the previous policy\n")
    assert main(["import-sanoid", str(source), "-o", str(out)]) == 78  # EX_CONFIG, as for any invalid config
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot import" in err and "nothing written" in err
    assert out.read_text() == "# the previous policy\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sanoid.conf", "vmsnapd.toml"]


def test_cli_stdout_has_nothing_on_failure(tmp_path):
    source = tmp_path / "sanoid.conf"
    source.write_text("[tank]\nhourly = 5\nhourly = 6\n")
    result = subprocess.run([sys.executable, "-m", "vmsnapd", "import-sanoid", str(source)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 78 and result.stdout == "" and "hourly" in result.stderr


def test_config_check_json_and_zero_datasets_warning(tmp_path, capsys):
    path = tmp_path / "empty.toml"
    path.write_text("[daemon]\nutc = false\n")
    os.chmod(path, 0o644)
    assert main(["-c", str(path), "config", "check", "--json"]) == 0
    captured = capsys.readouterr()
    assert "manages no dataset" in captured.err
    assert '"datasets": {}' in captured.out


# ---- property: whatever the input, a clear error or a policy the loader accepts -------------------------------

_keys = st.sampled_from(["hourly", "daily", "autosnap", "recursive", "use_template", "process_children_only",
                         "skip_children", "pre_snapshot_script", "hourly_warn", "prune_defer", "monitor"])
_values = st.sampled_from(["yes", "no", "0", "3", "100", "zfs", "a,b", "/x.sh -v", "2h", "", "on", "x y"])
_names = st.sampled_from(["tank", "tank/a", "tank/a/b", "tank/c", "template_a", "template_b", "template_default"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_names, st.lists(st.tuples(_keys, _values), max_size=4, unique_by=lambda kv: kv[0])),
                min_size=1, max_size=6, unique_by=lambda section: section[0]))
def test_any_input_gives_a_valid_policy_or_a_clear_error(sections):
    # SanoidImportError is a ConfigError with one single-line error, like every invalid config
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys) for name, keys in sections)
    try:
        result = sanoid_import(text)
    except SanoidImportError as exc:
        assert isinstance(exc, ConfigError) and len(exc.errors) == 1 and str(exc) and "\n" not in str(exc)
        return
    parse_config(result.toml, "<hypothesis>")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_gives_a_traceback(text):
    try:
        parse_config(sanoid_import(text).toml, "<hypothesis>")
    except SanoidImportError:
        pass


def test_policy_keys_the_import_needs_are_validated():
    for bad in ('hourly_warn = "soon"', "hourly_warn = -1", "hourly_warn = true", 'daily_crit = "1.5h"'):
        with pytest.raises(ConfigError, match="hourly_warn|daily_crit"):
            parse_config(f'[datasets."tank"]\n{bad}\n')
    with pytest.raises(ConfigError, match="skip_children: contradicts recursive"):
        parse_config('[datasets."tank"]\nrecursive = true\nskip_children = true\n')
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config("[templates.t]\nskip_children = true\n")
