"""import-sanoid leaves out the hook scripts that snapshot VMs themselves (the classic pre/post scripts: an overlay
and RAM dump before sanoid's snapshot, `blockcommit --pivot` after) — vmsnapd's cycle does that work, and running
them too would stack a second overlay and RAM dump on every snapshot. Every other hook is imported as sanoid ran it."""

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from vmsnapd.config import parse_config, resolve
from vmsnapd.sanoid_import import sanoid_import, script_program, vm_snapshot_line

PRE = """#!/bin/sh
# sanoid pre_snapshot_script: the VM goes on an overlay, its RAM to a file
VM=${SANOID_TARGETS##*/}
virsh snapshot-create-as "$VM" sanoid-pre \\
  --memspec file=/var/lib/libvirt/qemu/save/$VM.mem,snapshot=external \\
  --diskspec vda,snapshot=external --atomic
"""
POST = """#!/bin/bash
set -e
for vm in $(virsh list --name); do
  $VIRSH blockcommit "$vm" vda --active --pivot --wait
done
"""
NOTIFY = """#!/bin/sh
# mails the admin; says virsh snapshot-create-as in a comment only
logger -t sanoid "snapshot of $SANOID_TARGETS"
"""
CONF = """[template_vm]
\thourly = 24
\tdaily = 7
\tpre_snapshot_script = /usr/local/sbin/vm-pre
\tpost_snapshot_script = /bin/bash /usr/local/sbin/vm-post
\tpruning_script = /usr/local/sbin/notify

[tank/vm/web]
\tuse_template = vm

[tank/data]
\thourly = 4
\tpre_snapshot_script = /usr/local/sbin/notify
"""
SCRIPTS = {"/usr/local/sbin/vm-pre": PRE, "/usr/local/sbin/vm-post": POST, "/usr/local/sbin/notify": NOTIFY}


def read(scripts):
    def read_script(program):
        if program not in scripts:
            raise FileNotFoundError(2, "No such file or directory")
        return scripts[program]
    return read_script


def policies(toml):
    return resolve(parse_config(toml, "<imported>"), ["tank/vm/web", "tank/data"])


def test_vm_snapshot_scripts_are_left_out_and_every_other_hook_is_imported():
    result = sanoid_import(CONF, read_script=read(SCRIPTS))

    web, data = (policies(result.toml)[name] for name in ("tank/vm/web", "tank/data"))
    assert web.hooks.pre_snapshot == [] and web.hooks.post_snapshot == []
    assert web.hooks.post_prune == ["/usr/local/sbin/notify"] and data.hooks.pre_snapshot == ["/usr/local/sbin/notify"]
    assert (web.hourly, web.daily) == (24, 7)  # the rest of the template as sanoid resolves it
    for key, program, line in (("pre_snapshot_script", "/usr/local/sbin/vm-pre", "line 4"),
                               ("post_snapshot_script", "/usr/local/sbin/vm-post", "line 4")):
        said = [w for w in result.warnings if key in w and "not imported" in w]
        assert len(said) == 1 and program in said[0] and line in said[0], result.warnings
        assert f"# {said[0]}" in result.toml  # the reason above the template's table, where the key was
    assert not any("notify" in w for w in result.warnings)


def test_without_a_script_reader_every_hook_is_imported_as_before():
    web = policies(sanoid_import(CONF).toml)["tank/vm/web"]
    assert web.hooks.pre_snapshot == ["/usr/local/sbin/vm-pre"]
    assert web.hooks.post_snapshot == ["/bin/bash", "/usr/local/sbin/vm-post"]


def test_a_script_that_cannot_be_read_is_imported_with_a_warning_to_look_at_it():
    result = sanoid_import(CONF, read_script=read({"/usr/local/sbin/notify": NOTIFY}))

    web = policies(result.toml)["tank/vm/web"]
    assert web.hooks.pre_snapshot == ["/usr/local/sbin/vm-pre"]
    said = [w for w in result.warnings if "/usr/local/sbin/vm-pre" in w]
    assert len(said) == 1 and "cannot be read here" in said[0] and "No such file" in said[0]


def test_a_dataset_section_keeps_its_own_reason():
    conf = "[tank/vm/db]\n\tpre_snapshot_script = /usr/local/sbin/vm-pre\n"
    result = sanoid_import(conf, read_script=read(SCRIPTS))

    assert resolve(parse_config(result.toml, "<imported>"), ["tank/vm/db"])["tank/vm/db"].hooks.pre_snapshot == []
    table = result.toml.index('[datasets."tank/vm/db"]')
    assert "not imported" in result.toml[:table].splitlines()[-1]


def test_the_program_is_the_script_an_interpreter_is_given():
    assert script_program(["/usr/local/sbin/x"]) == "/usr/local/sbin/x"
    assert script_program(["/bin/sh", "-e", "/opt/x.sh", "--vm", "web"]) == "/opt/x.sh"
    assert script_program(["/usr/bin/env", "LC_ALL=C", "bash", "x.sh"]) == "x.sh"
    assert script_program(["sh"]) is None


def test_what_counts_as_snapshotting_a_vm():
    assert vm_snapshot_line("virsh domfsfreeze web\n") == (1, "virsh domfsfreeze web")
    assert vm_snapshot_line("#!/bin/sh\n  virsh -c qemu:///system suspend web\n")[0] == 2
    assert vm_snapshot_line("#!/bin/sh\n# virsh blockcommit web vda\necho done\n") is None
    assert vm_snapshot_line("zfs snapshot tank/web@x\nsystemctl suspend-then-hibernate\n") is None
    assert vm_snapshot_line("my-blockcommit-wrapper web\n") is None  # a word of its own, not part of a name


@given(st.text(), st.lists(st.text()))
def test_any_script_and_argv_give_an_answer(text, argv):
    vm_snapshot_line(text)
    script_program(argv)


def test_the_command_reads_the_scripts_from_disk(tmp_path):
    """`vmsnapd import-sanoid` end to end: the scripts as files, one found on PATH as sanoid's shell finds it."""
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    (sbin / "vm-pre").write_text(PRE)
    (sbin / "notify").write_text(NOTIFY)
    for script in sbin.iterdir():
        script.chmod(0o755)
    conf = tmp_path / "sanoid.conf"
    conf.write_text(f"[tank/vm/web]\n\tpre_snapshot_script = vm-pre\n\tpost_snapshot_script = {sbin}/notify\n")
    proc = subprocess.run([sys.executable, "-m", "vmsnapd", "import-sanoid", str(conf)], capture_output=True,
                          text=True, env={**os.environ, "PATH": f"{sbin}:{os.environ['PATH']}"}, timeout=60)

    assert proc.returncode == 0, proc.stderr
    web = resolve(parse_config(proc.stdout, "<imported>"), ["tank/vm/web"])["tank/vm/web"]
    assert web.hooks.pre_snapshot == [] and web.hooks.post_snapshot == [f"{sbin}/notify"]
    assert "vm-pre snapshots VMs itself (line 4: virsh snapshot-create-as" in proc.stderr
    assert Path(conf).read_text().count("vm-pre") == 1  # sanoid.conf itself is left as it was
