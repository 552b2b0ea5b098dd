from pathlib import Path

from vmsnapd.config import parse_config, resolve
from vmsnapd.sanoid_import import sanoid_to_toml

SAMPLES = Path(__file__).resolve().parents[2] / "config" / "sanoid"
VM_HOST = (SAMPLES / "vm-host.conf").read_text()


def imported(text):
    return parse_config(sanoid_to_toml(text), "<imported>")


def test_typical_vm_host_resolves_to_sanoids_policy():
    policies = resolve(imported(VM_HOST), ["rpool", "rpool/VM", "rpool/VM/web", "rpool/VM/win2k16"])
    assert list(policies) == ["rpool/VM/web", "rpool/VM/win2k16"]  # process_children_only
    web = policies["rpool/VM/web"]
    assert (web.frequently, web.hourly, web.daily, web.weekly, web.monthly, web.yearly) == (0, 36, 30, 0, 3, 0)
    assert web.autosnap and web.autoprune
    assert web.hooks.pre_snapshot == ["/opt/scripts/pre.sh"]
    assert web.hooks.post_snapshot == ["/opt/scripts/post.sh"]
    assert web.hooks.timeout == 60
    assert web.pre_snapshot_failure == "fail"  # no_inconsistent_snapshot = yes
    # a section of its own in sanoid gets defaults + its templates only, not the parent's scripts
    win = policies["rpool/VM/win2k16"]
    assert (win.hourly, win.daily, win.monthly) == (12, 30, 3)
    assert win.hooks.pre_snapshot == [] and win.hooks.post_snapshot == []


def test_unknown_keys_are_kept_as_comments():
    toml = sanoid_to_toml(VM_HOST)
    assert "# not imported: hourly_warn = 90m" in toml
    assert "# not imported: force_post_snapshot_script = yes" in toml


def test_sanoid_defaults_and_booleans():
    text = """
[template_default]
hourly = 5
[tank/data]
autoprune = no
recursive = zfs
pre_snapshot_script = /usr/local/bin/freeze
pruning_script = /usr/local/bin/pruned
[version]
version = 2
"""
    policies = resolve(imported(text), ["tank/data", "tank/data/a"])
    data = policies["tank/data"]
    assert data.hourly == 5 and data.daily == 90 and not data.autoprune
    assert data.pre_snapshot_failure == "continue"  # sanoid's default without no_inconsistent_snapshot
    assert data.hooks.post_prune == ["/usr/local/bin/pruned"]
    assert policies["tank/data/a"].configured_by == "tank/data"


def test_path_key_names_the_dataset():
    policies = resolve(imported("[vms]\npath = tank/vms\nhourly = 3\n"), ["tank/vms"])
    assert policies["tank/vms"].hourly == 3
