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
    expected = re.match(r"# expect: (.+)", path.read_text()).group(1).strip()
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
