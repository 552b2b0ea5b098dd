import re
from pathlib import Path

import pytest

from vmsnapd.config import (
    Config,
    ConfigError,
    DaemonSettings,
    DatasetPolicy,
    DatasetTable,
    Hooks,
    PolicySettings,
    load_config,
    parse_config,
    resolve,
)

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "config" / "invalid").glob("*.toml"))
VALID = sorted((ROOT / "config" / "valid").glob("*.toml")) + [ROOT / "config" / "vmsnapd.toml"]
EXISTING = ["rpool", "rpool/VM", "rpool/VM/web", "rpool/VM/win2k16", "rpool/VM/db", "rpool/VM/db/logs",
            "rpool/VM/scratch", "tank", "tank/data", "tank/vms", "tank/vms/a"]


def private_copy(tmp_path, source: Path) -> Path:
    # the files in git may carry a group-writable mode from the checkout; the mode rule is tested separately
    copy = tmp_path / source.name
    copy.write_bytes(source.read_bytes())
    copy.chmod(0o600)
    return copy


def test_enough_invalid_samples():
    assert len(INVALID) >= 20


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.name)
def test_invalid_config_names_the_key(tmp_path, path):
    # bytes: some samples are deliberately not UTF-8 past their first line
    expected = re.match(rb"# expect: (.+)", path.read_bytes()).group(1).decode().strip()
    with pytest.raises(ConfigError) as caught:
        load_config(private_copy(tmp_path, path))
    assert expected in str(caught.value)
    assert str(caught.value).startswith(str(tmp_path / path.name))


@pytest.mark.parametrize("path", VALID, ids=lambda path: path.name)
def test_valid_config_loads_and_resolves(tmp_path, path):
    config = load_config(private_copy(tmp_path, path))
    assert isinstance(config, Config)
    resolve(config, EXISTING)


def test_writable_by_group_or_others_is_refused(tmp_path):
    path = private_copy(tmp_path, ROOT / "config" / "valid" / "minimal.toml")
    for mode in (0o620, 0o602):
        path.chmod(mode)
        with pytest.raises(ConfigError, match="group or others"):
            load_config(path)


def test_owned_by_another_user_is_refused(tmp_path):
    import os

    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    path = private_copy(tmp_path, ROOT / "config" / "valid" / "minimal.toml")
    os.chown(path, 65534, 65534)  # nobody: could rewrite the commands vmsnapd runs as root
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        load_config(path)


def test_every_error_is_reported_at_once():
    text = """
[daemon]
utc = "yes"
[datasets."rpool/VM"]
hourly = "36"
frequent_period = 7
use_template = ["missing"]
[datasets."rpool/VM".hooks]
pre_snapshot = "/opt/pre.sh"
[datasets."bad//name"]
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "/etc/vmsnapd/vmsnapd.toml")
    message = str(caught.value)
    for key in ['daemon.utc', 'datasets."rpool/VM".hourly', 'datasets."rpool/VM".frequent_period',
                'datasets."rpool/VM".use_template', 'datasets."rpool/VM".hooks.pre_snapshot', 'datasets."bad//name"']:
        assert key in message
    assert len(caught.value.errors) == 6
    assert "argv list" in message and "shell" in message


def test_syntax_error_gives_line_and_column():
    with pytest.raises(ConfigError, match=r"line 2, column"):
        parse_config("[daemon]\nutc = \n")


def test_defaults_are_sanoids():
    policy = DatasetPolicy(name="a", configured_by="a")
    assert (policy.frequently, policy.hourly, policy.daily, policy.weekly, policy.monthly, policy.yearly) == (
        0, 48, 90, 0, 6, 0)
    assert (policy.frequent_period, policy.hourly_min, policy.daily_hour, policy.daily_min) == (15, 0, 23, 59)
    assert (policy.weekly_wday, policy.weekly_hour, policy.weekly_min) == (1, 23, 30)
    assert (policy.monthly_mday, policy.monthly_hour, policy.monthly_min) == (1, 0, 0)
    assert (policy.yearly_mon, policy.yearly_mday, policy.yearly_hour, policy.yearly_min) == (1, 1, 0, 0)
    assert policy.autosnap and policy.autoprune and policy.prune_defer == 0
    assert DaemonSettings().utc and DaemonSettings().hook_timeout == 30


def test_resolution_order_and_tree():
    config = parse_config("""
[templates.a]
hourly = 1
daily = 1
[templates.a.hooks]
pre_snapshot = ["/a"]
[templates.b]
daily = 2
[datasets."rpool/VM"]
use_template = ["a", "b"]
recursive = true
process_children_only = true
monthly = 0
[datasets."rpool/VM/db"]
recursive = true
hourly = 9
[datasets."rpool/VM/db".hooks]
post_snapshot = ["/b"]
[datasets."rpool/VM/win2k16"]
daily = 5
[datasets."rpool/ghost"]
""")
    policies = resolve(config, reversed(EXISTING))
    assert list(policies) == ["rpool/VM/db", "rpool/VM/db/logs", "rpool/VM/scratch", "rpool/VM/web",
                              "rpool/VM/win2k16"]
    web = policies["rpool/VM/web"]
    assert (web.hourly, web.daily, web.monthly, web.configured_by) == (1, 2, 0, "rpool/VM")
    db = policies["rpool/VM/db"]
    assert (db.hourly, db.daily, db.monthly) == (9, 2, 0)
    assert db.hooks.pre_snapshot == ["/a"] and db.hooks.post_snapshot == ["/b"]
    assert policies["rpool/VM/db/logs"].configured_by == "rpool/VM/db"
    assert policies["rpool/VM/win2k16"].daily == 5


def test_documentation_covers_every_key():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for model in (DaemonSettings, PolicySettings, Hooks, DatasetTable):
        for key in model.model_fields:
            assert f"`{key}`" in doc, f"{model.__name__}.{key} is not in docs/configuration.md"


def test_documentation_reference_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_config_doc", ROOT / "tools" / "gen_config_doc.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert generator.reference_tables() in doc, "run tools/gen_config_doc.py"


# -- no traceback, no hang, whatever the file is (issue 8, "What was seen" #5) ---------------------------------


def _load_with_guard(path, seconds: float = 10.0, load=load_config):
    """`load(path)` in a thread: a regression that blocks (open of a FIFO) fails the test instead of hanging it;
    a FIFO it blocks on is then opened for writing, which releases the reader."""
    import os
    import threading

    outcome = {}

    def run():
        try:
            outcome["value"] = load(path)
        except BaseException as exc:  # noqa: BLE001 — the test inspects whatever came out
            outcome["value"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    hung = thread.is_alive()
    if hung and Path(path).is_fifo():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
    return hung, outcome.get("value")


def test_fifo_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "vmsnapd.toml"
    os.mkfifo(fifo, 0o600)
    hung, value = _load_with_guard(fifo)
    assert not hung, "load_config blocked on a FIFO"
    assert isinstance(value, ConfigError) and "a FIFO" in str(value) and str(value).startswith(str(fifo))


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_device_is_refused(device):
    hung, value = _load_with_guard(device)
    assert not hung
    assert isinstance(value, ConfigError) and "character device" in str(value)


def test_directory_and_missing_file_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_config(tmp_path / "absent.toml")


def test_symlink_to_a_regular_file_is_followed(tmp_path):
    target = private_copy(tmp_path, ROOT / "config" / "valid" / "minimal.toml")
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    assert isinstance(load_config(link), Config)


def test_file_over_the_size_cap_is_refused(tmp_path):
    from vmsnapd.config import MAX_CONFIG_BYTES

    path = tmp_path / "big.toml"
    path.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(path)
    path.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 - 1))
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize("key", ["state_dir", "overlay_dir", "ram_dir", "libvirt_uri", "metrics_listen"])
def test_nul_in_a_daemon_string_names_the_key(key):
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[daemon]\n{key} = "/x\\u0000y"\n', "/etc/vmsnapd/vmsnapd.toml")
    assert caught.value.errors == [f"daemon.{key}: must not contain NUL characters"]


def test_nul_in_hooks_domain_and_keys():
    text = """
[templates."t\\u0000"]
[datasets."rpool/VM"]
domain = "web\\u0000"
exclude_disks = ["vd\\u0000b"]
[datasets."rpool/VM".hooks]
pre_snapshot = ["/opt/pre.sh", "a\\u0000b"]
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    message = str(caught.value)
    for key in ['templates."t\\u0000"', 'datasets."rpool/VM".domain', 'datasets."rpool/VM".exclude_disks[0]',
                'datasets."rpool/VM".hooks.pre_snapshot[1]']:
        assert f"{key}: " in message
    assert "\0" not in message  # shown escaped, never raw


@pytest.mark.parametrize("depth", [50, 400, 3000, 100_000])
@pytest.mark.parametrize("where", ["exclude_disks", "hooks.pre_snapshot", "unknown_key", "domain"])
def test_nested_arrays_give_a_config_error(depth, where):
    table, _, key = where.rpartition(".")
    header = '[datasets."rpool/VM"' + (f".{table}]" if table else "]")
    with pytest.raises(ConfigError):
        parse_config(f"{header}\n{key} = {'[' * depth}{']' * depth}\n")
    with pytest.raises(ConfigError):
        parse_config(f"{header}\n{key} = {'{a=' * depth}1{'}' * depth}\n")


@pytest.mark.parametrize("value", ["inf", "+inf", "-inf", "nan", "-nan", "0", "-1", "0.0"])
@pytest.mark.parametrize("where", ["daemon.hook_timeout", 'datasets."rpool/VM".hooks.timeout'])
def test_timeouts_must_be_finite_and_positive(value, where):
    table, _, key = where.rpartition(".")
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[{table}]\n{key} = {value}\n")
    assert caught.value.errors[0].startswith(f"{where}: ")


def test_a_finite_fractional_timeout_is_fine():
    config = parse_config('[daemon]\nhook_timeout = 0.5\n[datasets."a/b".hooks]\ntimeout = 86400\n')
    assert config.daemon.hook_timeout == 0.5 and config.datasets["a/b"].hooks.timeout == 86400


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9810", ("127.0.0.1", 9810)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("localhost:65535", ("localhost", 65535)),
    ("metrics.example.org.:9810", ("metrics.example.org.", 9810)),
    ("[::1]:9810", ("::1", 9810)),
    ("[::]:9810", ("::", 9810)),
    ("[2001:db8::42]:80", ("2001:db8::42", 80)),
    ("[fe80::1%eth0]:9810", ("fe80::1%eth0", 9810)),
])
def test_parse_listen_accepts_host_port_and_bracketed_ipv6(value, expected):
    from vmsnapd.config import parse_listen

    assert parse_listen(value) == expected
    assert parse_config(f'[daemon]\nmetrics_listen = "{value}"\n').daemon.metrics_listen == value


@pytest.mark.parametrize("value", [
    "localhost", "::1:9810", "[::1]", "[::1]9810", "[::1]:", ":9810", "host:", "[::1]:0", "[::1]:65536",
    "127.0.0.1:99999", "127.0.0.1:123456", "[127.0.0.1]:80", "[zz::1]:80", "999.1.1.1:80", "1.2.3:80",
    "a b:80", "-bad.example:80", "bad-.example:80", "host:\u0663", "host:+80", "host: 80", "host:80 ",
    "*:80", "[[::1]]:80", "a..b:80", "x" * 300 + ":80", "host:80\n",
])
def test_parse_listen_refuses_what_the_server_could_not_bind(value):
    from vmsnapd.config import parse_listen

    with pytest.raises(ValueError):
        parse_listen(value)
    with pytest.raises(ConfigError, match="daemon.metrics_listen"):
        parse_config(f"[daemon]\nmetrics_listen = {json_string(value)}\n")


def json_string(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string literal is a TOML basic string for these values


def test_thousands_of_tables_load_resolve_and_find_roots_quickly():
    """Generous bound, not a timing assertion: the quadratic root search took ~a minute for 20,000 tables."""
    import time

    from vmsnapd.actions.context import Context
    from vmsnapd.config import config_roots

    text = "".join(f'[datasets."p{i}/vm"]\nrecursive = true\n[datasets."p{i}/vm/x"]\nhourly = 1\n'
                   for i in range(2500))
    started = time.monotonic()
    config = parse_config(text)
    policies = resolve(config, [*config.datasets, *(f"p{i}/vm/x/y" for i in range(2500))])
    roots = Context(config=config, config_path=Path("x"), runner=None, zfs=None).config_roots()
    assert len(config.datasets) == 5000 and len(policies) == 7500
    assert roots == sorted(f"p{i}/vm" for i in range(2500))
    many = Config.model_construct(datasets={f"p{i}/vm": None for i in range(20_000)})
    assert len(config_roots(many)) == 20_000
    assert time.monotonic() - started < 10


def test_config_roots_keeps_only_topmost_tables():
    from vmsnapd.config import config_roots

    config = parse_config('[datasets."a/b"]\n[datasets."a/b/c"]\n[datasets."a/bc"]\n[datasets."a"]\n'
                          '[datasets."x/y/z"]\n[datasets."x/y/z/w"]\n')
    assert config_roots(config) == ["a", "x/y/z"]


# -- the daemon: a SIGHUP never kills it -----------------------------------------------------------------------


@pytest.mark.parametrize("failure", [RecursionError("deep"), MemoryError(), RuntimeError("boom"),
                                     UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), KeyError("x")])
def test_daemon_reload_keeps_the_running_config_when_loading_raises_anything(tmp_path, monkeypatch, failure):
    import vmsnapd.daemon as daemon_module

    path = private_copy(tmp_path, ROOT / "config" / "valid" / "minimal.toml")
    old = load_config(path)
    daemon = daemon_module.Daemon(path, old)

    def broken(_path):
        raise failure

    monkeypatch.setattr(daemon_module, "load_config", broken)
    daemon.reload()
    assert daemon.config is old


@pytest.mark.parametrize("content", [b"[daemon]\nutc = " + b"[" * 5000 + b"]" * 5000 + b"\n", b"\xff\xfe",
                                     b'[daemon]\nstate_dir = "/\\u0000"\n', b"x = 1\n"])
def test_daemon_reload_with_a_bad_file_keeps_the_running_config(tmp_path, content):
    from vmsnapd.daemon import Daemon

    path = private_copy(tmp_path, ROOT / "config" / "valid" / "minimal.toml")
    old = load_config(path)
    daemon = Daemon(path, old)
    path.write_bytes(content)
    daemon.reload()
    assert daemon.config is old



def test_daemon_reload_of_a_fifo_does_not_block(tmp_path):
    import os

    from vmsnapd.daemon import Daemon

    path = private_copy(tmp_path, ROOT / "config" / "valid" / "minimal.toml")
    old = load_config(path)
    daemon = Daemon(path, old)
    path.unlink()
    os.mkfifo(path, 0o600)
    hung, _ = _load_with_guard(path, load=lambda _path: daemon.reload())
    assert not hung, "reload blocked on a FIFO"
    assert daemon.config is old


def test_daemon_reload_takes_a_valid_new_config(tmp_path):
    from vmsnapd.daemon import Daemon

    path = private_copy(tmp_path, ROOT / "config" / "valid" / "minimal.toml")
    daemon = Daemon(path, load_config(path))
    path.write_text('[daemon]\nmetrics_listen = "[::1]:9810"\n')
    daemon.reload()
    assert daemon.config.daemon.metrics_listen == "[::1]:9810"


# -- every CLI command: exit 78 with a message, whatever the file is -------------------------------------------


@pytest.mark.parametrize("command", [["config", "check"], ["status"], ["check"], ["once", "--dry-run"], ["list"],
                                     ["recover"], ["snapshot", "x"], ["run"]])
def test_every_command_exits_78_on_an_unloadable_config(tmp_path, capsys, command):
    from vmsnapd.cli import EX_CONFIG, main

    deep = tmp_path / "deep.toml"
    deep.write_text("[daemon]\nutc = " + "[" * 5000 + "]" * 5000 + "\n")
    deep.chmod(0o600)
    for path in ("/dev/zero", str(deep), str(tmp_path)):
        assert main(["-c", path, *command]) == EX_CONFIG
        error = capsys.readouterr().err
        assert error.startswith(path) and "Traceback" not in error


def test_import_sanoid_refuses_a_fifo_and_non_utf8(tmp_path, capsys):
    import os

    from vmsnapd.cli import EX_CONFIG, main

    fifo = tmp_path / "sanoid.conf"
    os.mkfifo(fifo, 0o600)
    hung, code = _load_with_guard(fifo, load=lambda path: main(["import-sanoid", str(path)]))
    assert not hung and code == EX_CONFIG  # at once: a FIFO is never opened
    latin1 = tmp_path / "latin1.conf"
    latin1.write_bytes(b"[tank/caf\xe9]\nhourly = 1\n")
    assert main(["import-sanoid", str(latin1)]) == EX_CONFIG
    no_section = tmp_path / "flat.conf"
    no_section.write_text("hourly = 1\n")
    assert main(["import-sanoid", str(no_section)]) == EX_CONFIG
    assert "not a sanoid.conf" in capsys.readouterr().err


@pytest.mark.parametrize("failure", [KeyError("x"), RuntimeError("two\nlines"), MemoryError(), RecursionError()])
def test_anything_unexpected_inside_the_loader_is_a_config_error_and_exit_78(tmp_path, monkeypatch, capsys,
                                                                             failure):
    import vmsnapd.config as config_module
    from vmsnapd.cli import EX_CONFIG, main

    path = private_copy(tmp_path, ROOT / "config" / "valid" / "minimal.toml")

    def broken(_text):
        raise failure

    monkeypatch.setattr(config_module.tomllib, "loads", broken)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.errors) == 1 and "\n" not in caught.value.errors[0]
    assert main(["-c", str(path), "status"]) == EX_CONFIG
    assert capsys.readouterr().err.startswith(str(path))


def test_sighup_with_a_deeply_nested_file_does_not_kill_the_daemon(tmp_path):
    """The real signal path, lab-free: a config with no datasets makes a pass touch neither zfs nor libvirt."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "vmsnapd.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\nram_dir = "{tmp_path}/ram"\n'
                    f'overlay_dir = "{tmp_path}/overlay"\n')
    path.chmod(0o600)
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "vmsnapd", "-c", str(path), "-v", "run"],
                                stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "NOTIFY_SOCKET": ""})
    try:
        deadline = time.monotonic() + 60
        while "running with" not in log_path.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        path.write_text("[daemon]\nutc = " + "[" * 5000 + "]" * 5000 + "\n")
        proc.send_signal(signal.SIGHUP)
        while "reload" not in log_path.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, log_path.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "reload rejected" in log and "nested too deeply" in log and "Traceback" not in log, log


@pytest.mark.parametrize(("target", "valid"), [("vdb", True), ("sda1", True), ("xvd.a-1", True), ("vd_b", False),
                                               ("vd b", False), ("", False)])
def test_exclude_disks_takes_disk_targets_by_the_one_rule_overlay_names_use(target: str, valid: bool):
    """names.DISK_TARGET_PATTERN: what an overlay file name can carry is what exclude_disks accepts."""
    from vmsnapd.overlaynames import overlay_file_name

    text = f'[datasets."rpool/VM"]\nexclude_disks = ["{target}"]\n'
    if valid:
        parse_config(text)
        overlay_file_name("web", target, "2026-11-29_01:00:00")
    else:
        with pytest.raises(ConfigError, match="disk target"):
            parse_config(text)
