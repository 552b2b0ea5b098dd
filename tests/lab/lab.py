"""vmsnapd test lab: throw-away zfs-fuse pools, datasets and TCG counter guests under libvirt.

Importable helpers for the pytest fixtures (tests/conftest.py), the demo (tests/lab/demo.py) and later tests of
vmsnapd itself.  Everything the lab creates carries a name with the prefix ``vlab`` followed by the creating
process id (``vlab<pid>x<random>``), so a crashed run's leftovers can be found and removed by name
(:func:`cleanup_leftovers`) without touching a concurrent run of someone else.

Layout (see docs/development.md):
  /var/lib/vmsnapd-lab/faketime              libfaketime timestamp file of the zfs-fuse daemon ("+0", "-10d")
  /var/lib/vmsnapd-lab/pools/<pool>.img      sparse pool file;  /var/lib/vmsnapd-lab/pools/<pool>/ its mountpoint
  /var/lib/vmsnapd-lab/vms/<domain>/         token.img (read-only token disk), console.log (serial), fs.img
  /var/cache/vmsnapd-lab/current/            vmlinuz, initrd-counter.img, initrd-agent.img (tests/lab/build-guest.sh)
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LAB_DIR = Path(os.environ.get("VMSNAPD_LAB_DIR", "/var/lib/vmsnapd-lab"))
POOLS_DIR = LAB_DIR / "pools"
VMS_DIR = LAB_DIR / "vms"
FAKETIME_FILE = LAB_DIR / "faketime"
GUEST_DIR = Path(os.environ.get("VMSNAPD_LAB_CACHE", "/var/cache/vmsnapd-lab")) / "current"
URI = "qemu:///system"
PREFIX = "vlab"
SECTOR = 512
RING = 1000  # the guest writes seq at sector seq % RING
RECORD_RE = re.compile(rb"^seq (\d{10}) token ([^ \n\x00]*)")
# cache mode of the counter disks.  zfs-fuse files open fine with O_DIRECT (cache='none'); see docs/development.md
DISK_CACHE = os.environ.get("VMSNAPD_LAB_DISK_CACHE", "none")
# RAM of a counter guest unless create_vm says otherwise: the smallest size that boots with margin. Every RAM dump,
# restore and resume of the suite moves what the guest touched (~69 MB at 80 MiB, ~93 MB at 128 MiB; measured: a
# cycle ~1.7 s vs ~2.9 s under load); 64 MiB does not boot this kernel at all (no console output). The
# benchmarks pass their own sizes.
GUEST_MIB = 80


CREATED_VMS: list[str] = []  # every domain this process defined (fixtures destroy them at teardown)


class LabError(RuntimeError):
    """Something in the lab failed (a command, a timeout)."""


class LabUnavailable(LabError):
    """The lab is not set up on this machine (not root, daemons not running, guest not built)."""


# --------------------------------------------------------------------------------------------------- commands
def run(*cmd: str | os.PathLike, check: bool = True, timeout: float = 120, input: bytes | None = None
        ) -> subprocess.CompletedProcess:
    argv = [str(c) for c in cmd]
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timeout after {timeout}s: {' '.join(argv)}") from e
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> exit {p.returncode}: "
                       f"{p.stderr.decode(errors='replace').strip() or p.stdout.decode(errors='replace').strip()}")
    return p


def zfs(*args, check: bool = True, timeout: float = 120) -> str:
    return run("zfs", *args, check=check, timeout=timeout).stdout.decode()


def zpool(*args, check: bool = True, timeout: float = 120) -> str:
    return run("zpool", *args, check=check, timeout=timeout).stdout.decode()


def unique_name(kind: str = "") -> str:
    """``vlab<pid>x<hex>`` (+ ``-kind``): unique, and tells which process made it."""
    return f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}" + (f"-{kind}" if kind else "")


DEMO_PREFIX = PREFIX + "demo"  # `make demo` objects: kept by test runs' cleanup, removed by `make lab-clean`


def _owner_alive(name: str) -> bool:
    if name.startswith(DEMO_PREFIX):
        return True
    m = re.match(rf"^{PREFIX}(\d+)x", name)
    if not m:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def agent_command(dom, command: str):
    """The guest agent's answer (`return`) to `command`, through libvirt's qemu-agent passthrough (5 s)."""
    import libvirt_qemu

    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps({"execute": command}), 5, 0))["return"]


def wait_agent(dom, timeout: float = 30) -> None:
    """Until the guest agent answers a ping (its channel connects a while after boot or resume)."""
    import libvirt

    deadline = time.monotonic() + timeout
    while True:
        try:
            agent_command(dom, "guest-ping")
            return
        except libvirt.libvirtError:
            assert time.monotonic() < deadline, "guest agent never answered"
            time.sleep(0.2)


def check_lab() -> None:
    """Raise LabUnavailable with a reason when the lab cannot be used here."""
    if os.geteuid() != 0:
        raise LabUnavailable("the lab needs root (run: sudo tests/lab/setup.sh; then the tests as root)")
    for tool in ("zfs", "zpool", "virsh", "qemu-img", "qemu-system-x86_64"):
        if not shutil.which(tool):
            raise LabUnavailable(f"{tool} not found: run tests/lab/setup.sh")
    try:
        import libvirt  # noqa: F401
    except ImportError as e:
        raise LabUnavailable(f"libvirt-python not importable ({e}): use .venv/bin/python (tests/lab/setup.sh)") from e
    p = subprocess.run(["zpool", "list"], capture_output=True, timeout=30)
    if p.returncode != 0:
        raise LabUnavailable(f"zfs-fuse does not answer (zpool list: {p.stderr.decode().strip()}): "
                             "run tests/lab/setup.sh")
    try:
        p = subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise LabUnavailable("libvirtd does not answer within 30 s") from None
    if p.returncode != 0:
        raise LabUnavailable(f"libvirtd does not answer ({p.stderr.decode().strip()}): run tests/lab/setup.sh")
    for f in ("vmlinuz", "initrd-counter.img", "initrd-agent.img"):
        if not (GUEST_DIR / f).is_file():
            raise LabUnavailable(f"guest not built ({GUEST_DIR / f} missing): run tests/lab/setup.sh")


_conn = None


def close_conn() -> None:
    """Close the shared connection (registered atexit: avoids libvirt's noisy __del__ at interpreter exit)."""
    global _conn
    if _conn is not None:
        try:
            _conn.close()
        except Exception:  # noqa: BLE001
            pass
        _conn = None


atexit.register(close_conn)


def conn():
    """A shared libvirt connection to qemu:///system (reopened when it died)."""
    global _conn
    import libvirt
    if _conn is not None:
        try:
            _conn.getLibVersion()  # isAlive() stays true for a while after libvirtd restarted
        except libvirt.libvirtError:
            _conn = None
    if _conn is None or not _conn.isAlive():
        _conn = libvirt.open(URI)
    return _conn


# --------------------------------------------------------------------------------------------------- faketime
def set_faketime(offset: str) -> None:
    """Shift the zfs-fuse daemon's clock for *new* snapshots: "-10d", "-3h", "+0" (no restart needed)."""
    if not re.fullmatch(r"[+-]\d+(\.\d+)?[smhdy]?", offset):
        raise ValueError(f"bad libfaketime offset {offset!r} (examples: -10d, -36h, +0)")
    # unique temp name: concurrent sessions share the one zfs-fuse daemon and its faketime file
    tmp = FAKETIME_FILE.with_name(f".faketime.{os.getpid()}.{secrets.token_hex(3)}")
    tmp.write_text(offset + "\n")
    os.replace(tmp, FAKETIME_FILE)


def reset_faketime() -> None:
    set_faketime("+0")


@contextlib.contextmanager
def faketime(offset: str):
    """``with lab.faketime("-10d"): take snapshots`` -- holds an exclusive lock on the (machine-wide) faketime
    file for the window, so two sessions using this never shift each other's clocks; resets to +0 afterwards."""
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    with open(LAB_DIR / "faketime.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        try:
            set_faketime(offset)
            yield
        finally:
            reset_faketime()
            fcntl.flock(lockf, fcntl.LOCK_UN)


def reset_faketime_unless_held() -> None:
    """Put the clock back to +0 unless some session's `faketime` window holds it right now (then the offset is
    theirs, not a leak: resetting it would break their test)."""
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    with open(LAB_DIR / "faketime.lock", "w") as lockf:
        try:
            fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        try:
            if get_faketime() != "+0":
                reset_faketime()
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)


def get_faketime() -> str:
    try:
        return FAKETIME_FILE.read_text().strip()
    except FileNotFoundError:
        return "+0"


# --------------------------------------------------------------------------------------------------- pools
@dataclass
class Pool:
    name: str
    file: Path          # sparse backing file
    mountpoint: Path

    def __str__(self) -> str:
        return self.name


@dataclass
class Dataset:
    name: str           # "vlab123x9f00aa/ds1"
    mountpoint: Path | None

    def __str__(self) -> str:
        return self.name

    @property
    def pool(self) -> str:
        return self.name.split("/")[0]


# Pools a test could not destroy because zfs-fuse keeps them "busy" for good: the mount namespace of every QEMU
# started while they were mounted holds a copy of their mounts (libvirt's default namespaces = ["mount"]) until
# that QEMU exits. The session tolerates them (as its own pool) and a later run's cleanup_leftovers removes them.
STUCK_POOLS: set[str] = set()


def held_by_other_mount_namespace(path: str | Path) -> list[int]:
    """Processes (QEMUs) in another mount namespace that have `path` mounted: why it stays busy here."""
    mine = os.readlink("/proc/self/ns/mnt")
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "ns" / "mnt") == mine:
                continue
            if any(line.split()[4] == str(path) for line in (proc / "mountinfo").read_text().splitlines()):
                holders.append(int(proc.name))
        except OSError:
            continue
    return holders


def create_pool(size: str = "2G", name: str | None = None) -> Pool:
    name = name or unique_name()
    POOLS_DIR.mkdir(parents=True, exist_ok=True)
    f = POOLS_DIR / f"{name}.img"
    mp = POOLS_DIR / name
    run("truncate", "-s", size, f)
    try:
        zpool("create", "-m", mp, name, f)
    except Exception:
        f.unlink(missing_ok=True)
        raise
    return Pool(name, f, mp)


def _retry(fn, attempts: int = 20, delay: float = 0.25):
    last = None
    for i in range(attempts):
        try:
            return fn()
        except LabError as e:
            last = e
            time.sleep(delay * min(i + 1, 4))
    raise last  # type: ignore[misc]


def destroy_pool(name: str | Pool) -> None:
    """Destroy a lab pool: zpool destroy (-f), retried; finally export; removes file and mountpoint dir."""
    name = str(name)
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to destroy non-lab pool {name}")
    if name in list_pools():
        def attempt():
            p = run("zpool", "destroy", "-f", name, check=False)
            if p.returncode != 0 and name in list_pools():
                # zfs-fuse: a dataset can stay "busy" for good; destroying it with -f first helps
                for ds in reversed(_list_datasets(name)):
                    if ds != name:
                        run("zfs", "destroy", "-r", "-f", ds, check=False)
                raise LabError(f"zpool destroy {name}: {p.stderr.decode().strip()}")
        try:
            _retry(attempt, attempts=12)
        except LabError:
            run("zpool", "export", "-f", name, check=False)
            if name in list_pools():
                raise
    # a mount of the pool or its datasets may linger after a fuse unmount lag
    for mp in _mounts_under(POOLS_DIR / name):
        run("umount", "-l", mp, check=False)
    (POOLS_DIR / f"{name}.img").unlink(missing_ok=True)
    shutil.rmtree(POOLS_DIR / name, ignore_errors=True)


def list_pools() -> list[str]:
    return [line for line in zpool("list", "-H", "-o", "name", check=False).splitlines() if line]


def _list_datasets(root: str) -> list[str]:
    return [line for line in zfs("list", "-H", "-o", "name", "-r", "-t", "filesystem", root,
                                 check=False).splitlines() if line]


def _mounts_under(path: Path) -> list[str]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mp = line.split()[1].replace("\\040", " ")
            if mp == str(path) or mp.startswith(str(path) + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def create_dataset(parent: str | Pool | Dataset, name: str | None = None, **props: str) -> Dataset:
    """Create parent/name (name: unique when omitted); props as zfs properties (mountpoint="none" ...)."""
    full = f"{parent}/{name or 'ds' + secrets.token_hex(3)}"
    args = []
    for k, v in props.items():
        args += ["-o", f"{k.replace('__', ':')}={v}"]
    zfs("create", *args, full)
    mp = zfs("get", "-H", "-o", "value", "mountpoint", full).strip()
    return Dataset(full, Path(mp) if mp.startswith("/") else None)


def destroy_dataset(name: str | Dataset) -> None:
    name = str(name)
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to destroy non-lab dataset {name}")

    def attempt():
        if not zfs("list", "-H", "-o", "name", name, check=False).strip():
            return
        # -R: also the clones of its snapshots outside its subtree (a restore's set-aside dataset, clone restores)
        p = run("zfs", "destroy", "-R", name, check=False)
        if p.returncode != 0:
            raise LabError(f"zfs destroy -R {name}: {p.stderr.decode().strip()}")
    try:
        _retry(attempt, attempts=8)
    except LabError:
        _retry(lambda: run("zfs", "destroy", "-R", "-f", name) if
               zfs("list", "-H", "-o", "name", name, check=False).strip() else None, attempts=8)


def snapshot(dataset: str | Dataset, snapname: str | None = None) -> str:
    snap = f"{dataset}@{snapname or 'lab' + secrets.token_hex(3)}"
    zfs("snapshot", snap)
    return snap


def next_second() -> None:
    """Sleep into the next wall-clock second (at most 1 s, half on average): vmsnapd names a pass's snapshots with
    its start truncated to the second, so a pass started after this never shares a name with one that ended before."""
    now = time.time()
    time.sleep(int(now) + 1 - now + 0.01)


def snapshot_names(dataset: str | Dataset) -> list[str]:
    """Short names of the snapshots of `dataset` itself (not its children), in the order zfs lists them."""
    out = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", str(dataset))
    return [line.split("@", 1)[1] for line in out.splitlines() if line.startswith(f"{dataset}@")]


# --------------------------------------------------------------------------------------------------- vmsnapd runs
def make_run_dir(kind: str = "run") -> Path:
    """A fresh directory for one vmsnapd config with its state/overlay/RAM dirs, under LAB_DIR/runs — not in
    pytest's 0700 tmp dirs: QEMU runs as libvirt-qemu and must reach overlay/ (0711)."""
    root = LAB_DIR / "runs" / unique_name(kind)
    root.mkdir(parents=True)
    root.chmod(0o755)
    (root / "overlay").mkdir(mode=0o711)
    (root / "overlay").chmod(0o711)
    return root


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_vmsnapd_config(root: Path, datasets: dict[str, dict], templates: dict[str, dict] | None = None,
                         daemon: dict | None = None) -> Path:
    """`root`/vmsnapd.toml (0600) with state/overlay/RAM/staging under `root`; a dataset's "hooks" dict becomes its
    hooks table."""
    settings = {"state_dir": str(root / "state"), "overlay_dir": str(root / "overlay"), "ram_dir": str(root / "ram"),
                "ram_staging_dir": str(root / "staging"), **(daemon or {})}
    if settings.get("ram_dataset"):  # RAM dumps on ZFS instead: the two exclude each other
        settings.pop("ram_dir")
    lines = ["[daemon]"] + [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    for name, table in (templates or {}).items():
        lines += ["", f"[templates.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for name, table in datasets.items():
        lines += ["", f'[datasets."{name}"]'] + [f"{k} = {toml_value(v)}" for k, v in table.items() if k != "hooks"]
        if table.get("hooks"):
            lines += ["", f'[datasets."{name}".hooks]'] + [f"{k} = {toml_value(v)}" for k, v in table["hooks"].items()]
    path = root / "vmsnapd.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------------------------------- counter
def parse_records(data: bytes) -> dict[int, tuple[int, str]]:
    """{sector: (seq, token)} of every counter record in the first RING sectors of a raw image."""
    out = {}
    for i in range(min(RING, len(data) // SECTOR)):
        m = RECORD_RE.match(data[i * SECTOR:(i + 1) * SECTOR])
        if m:
            out[i] = (int(m.group(1)), m.group(2).decode(errors="replace"))
    return out


def read_disk_head(path: str | os.PathLike, fmt: str | None = None) -> bytes:
    """The first RING sectors of a disk image as raw bytes (qcow2: through qemu-img convert -U)."""
    path = Path(path)
    fmt = fmt or ("qcow2" if path.suffix == ".qcow2" else "raw")
    if fmt == "raw":
        with open(path, "rb") as f:
            return f.read(RING * SECTOR)
    with tempfile.TemporaryDirectory(prefix="vlab-read-") as td:
        out = Path(td) / "head.raw"
        # -U: the running QEMU holds the image lock; we only read
        run("qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, out)
        with open(out, "rb") as f:
            return f.read(RING * SECTOR)


def read_records(path: str | os.PathLike, fmt: str | None = None) -> dict[int, tuple[int, str]]:
    return parse_records(read_disk_head(path, fmt))


def read_max_counter(path: str | os.PathLike, fmt: str | None = None) -> int:
    """Highest seq on a counter disk image (0 when none written yet)."""
    recs = read_records(path, fmt)
    return max((s for s, _ in recs.values()), default=0)


def resume_evidence(vm: "VM", at_snapshot: int, token: str) -> tuple[list[int], int]:
    """After a restore with `token` newly written: (records at or below the snapshot's max rewritten with
    `token` — RAM older than the disk when any, the first counter past the max — RAM newer than the disk
    when it is not max + 1)."""
    records = vm.records().values()
    rewritten = sorted(seq for seq, tok in records if tok == token and seq <= at_snapshot)
    return rewritten, min(seq for seq, _ in records if seq > at_snapshot)


def read_snapshot_records(snap: str, relpath: str, fmt: str | None = None) -> dict[int, tuple[int, str]]:
    """Records of file *relpath* (relative to the dataset root) inside ZFS snapshot *snap* ("pool/ds@name").

    zfs-fuse has no .zfs/snapshot directory: clone the snapshot, read, destroy the clone."""
    ds = snap.split("@")[0]
    clone = f"{ds.split('/')[0]}/{unique_name('clone')}"
    mp = POOLS_DIR / "clones" / clone.split("/")[-1]
    zfs("clone", "-o", f"mountpoint={mp}", snap, clone)
    try:
        return read_records(mp / relpath, fmt)
    finally:
        destroy_dataset(clone)
        shutil.rmtree(mp, ignore_errors=True)


def snapshot_max_counter(snap: str, relpath: str, fmt: str | None = None) -> int:
    return max((s for s, _ in read_snapshot_records(snap, relpath, fmt).values()), default=0)


# --------------------------------------------------------------------------------------------------- guests
@dataclass
class Disk:
    target: str         # "vda"
    path: Path
    fmt: str            # "raw" | "qcow2"
    dataset: Dataset | None = None

    @property
    def relpath(self) -> str:
        """Path relative to the dataset's mountpoint (for snapshot reads)."""
        assert self.dataset and self.dataset.mountpoint
        return str(self.path.relative_to(self.dataset.mountpoint))


@dataclass
class VM:
    name: str
    disks: list[Disk]               # counter disks, vda, vdb, ...
    token_path: Path                # read-only token disk (outside snapshotted datasets)
    token_target: str
    console_log: Path               # serial console (also reachable with: virsh console NAME)
    workdir: Path                   # /var/lib/vmsnapd-lab/vms/<name>
    agent: bool = False
    fs_disk: Disk | None = None     # ext4 disk mounted at /mnt in the guest (agent variant)
    cmdline: str = ""
    xml: str = ""

    @property
    def dom(self):
        return conn().lookupByName(self.name)

    @property
    def disk(self) -> Disk:
        return self.disks[0]

    def max_counter(self) -> int:
        return max(read_max_counter(d.path, d.fmt) for d in self.disks)

    def records(self, i: int = 0) -> dict[int, tuple[int, str]]:
        return read_records(self.disks[i].path, self.disks[i].fmt)

    def is_active(self) -> bool:
        try:
            return bool(self.dom.isActive())
        except Exception:  # noqa: BLE001 — domain gone, libvirtd away: not active
            return False

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


_TARGETS = [f"vd{c}" for c in "abcdefghij"]


def _disk_xml(path: Path, target: str, fmt: str, cache: str, readonly: bool = False) -> str:
    return (f"    <disk type='file' device='disk'>\n"
            f"      <driver name='qemu' type='{fmt}' cache='{cache}'/>\n"
            f"      <source file='{path}'/>\n"
            f"      <target dev='{target}' bus='virtio'/>\n"
            + ("      <readonly/>\n" if readonly else "")
            + "    </disk>\n")


def make_disk(path: str | os.PathLike, fmt: str = "raw", size: str = "16M") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "raw":
        run("truncate", "-s", size, path)
    else:
        run("qemu-img", "create", "-q", "-f", fmt, path, size)
    return path


def write_token(vm: VM | Path, token: str) -> None:
    """Rewrite the token disk; the guest re-reads it (O_DIRECT) before every record."""
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", token):
        raise ValueError(f"token must match [A-Za-z0-9_.:-]{{1,64}}: {token!r}")
    path = vm.token_path if isinstance(vm, VM) else Path(vm)
    data = (token + "\n").encode().ljust(4096, b"\0")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def domain_xml(vm: VM, memory_mib: int = GUEST_MIB) -> str:
    kernel = GUEST_DIR.resolve() / "vmlinuz"
    initrd = GUEST_DIR.resolve() / ("initrd-agent.img" if vm.agent else "initrd-counter.img")
    disks = "".join(_disk_xml(d.path, d.target, d.fmt, DISK_CACHE) for d in vm.disks)
    disks += _disk_xml(vm.token_path, vm.token_target, "raw", "none", readonly=True)
    if vm.fs_disk:
        disks += _disk_xml(vm.fs_disk.path, vm.fs_disk.target, vm.fs_disk.fmt, DISK_CACHE)
    channel = ("    <channel type='unix'>\n"
               "      <target type='virtio' name='org.qemu.guest_agent.0'/>\n"
               "    </channel>\n") if vm.agent else ""
    return f"""<domain type='qemu'>
  <name>{vm.name}</name>
  <description>vmsnapd lab guest (tests/lab/lab.py); remove with: make lab-clean</description>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{vm.cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{disks}    <serial type='pty'>
      <log file='{vm.console_log}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
{channel}    <memballoon model='none'/>
  </devices>
</domain>
"""


def _counter_disks(name: str, datasets: list[Dataset] | None, disk_paths: list[str | os.PathLike] | None,
                   fmt: str, size: str) -> list[Disk]:
    """One counter disk per explicit path, else one per dataset (``<mountpoint>/<name>-vdX.<ext>``)."""
    if disk_paths:
        return [Disk(_TARGETS[i], make_disk(p, fmt, size), fmt) for i, p in enumerate(disk_paths)]
    ext = "qcow2" if fmt == "qcow2" else "img"
    disks: list[Disk] = []
    for i, ds in enumerate(datasets or []):
        if ds.mountpoint is None:
            raise ValueError(f"dataset {ds} has no mountpoint")
        t = _TARGETS[i]
        disks.append(Disk(t, make_disk(ds.mountpoint / f"{name}-{t}.{ext}", fmt, size), fmt, ds))
    return disks


def create_vm(datasets: list[Dataset] | Dataset | None = None, *, disk_paths: list[str | os.PathLike] | None = None,
              fmt: str = "raw", size: str = "16M", agent: bool = False, fs_dataset: Dataset | None = None,
              start: bool = True, wait: bool = True, token: str = "t0", name: str | None = None,
              interval_us: int = 20000, memory_mib: int = GUEST_MIB, dirty_mib: int = 0) -> VM:
    """Define (and start) a TCG counter guest.

    One counter disk per dataset (file ``<mountpoint>/<name>-vdX.<fmt>``) or per explicit path in *disk_paths*.
    agent=True: the initrd with qemu-guest-agent, the guest-agent channel, and an ext4 disk mounted at /mnt
    (on *fs_dataset* when given, else in the VM's work dir).  wait=True: return once the counter advances.
    dirty_mib > 0: the guest also copies a tmpfs file of that many MiB of random bytes over and over (a busy
    guest dirtying its RAM continuously, for pause benchmarks)."""
    name = name or unique_name("vm")
    if isinstance(datasets, Dataset):
        datasets = [datasets]
    workdir = VMS_DIR / name
    workdir.mkdir(parents=True, exist_ok=True)
    disks = _counter_disks(name, datasets, disk_paths, fmt, size)
    if not disks:
        raise ValueError("a counter guest needs at least one disk (datasets or disk_paths)")
    n = len(disks)
    token_target = _TARGETS[n]
    token_path = workdir / "token.img"
    write_token(token_path, token)
    fs_disk = None
    if agent:
        t = _TARGETS[n + 1]
        p = (fs_dataset.mountpoint / f"{name}-{t}.img") if fs_dataset and fs_dataset.mountpoint \
            else workdir / "fs.img"
        make_disk(p, "raw", "32M")
        run("mkfs.ext4", "-q", "-F", p)
        fs_disk = Disk(t, p, "raw", fs_dataset)
    cmdline = (f"console=ttyS0 quiet counter_disks={','.join(d.target for d in disks)} "
               f"token_disk={token_target} interval_us={interval_us}")
    cmdline += f" fs_disk={fs_disk.target} agent=1" if fs_disk else ""
    cmdline += f" dirty_mib={int(dirty_mib)}" if dirty_mib else ""
    vm = VM(name, disks, token_path, token_target, workdir / "console.log", workdir, agent, fs_disk, cmdline)
    vm.xml = domain_xml(vm, memory_mib)
    CREATED_VMS.append(name)
    conn().defineXML(vm.xml)
    if start:
        start_vm(vm, wait=wait)
    return vm


def start_vm(vm: VM, wait: bool = True, timeout: float = 60) -> None:
    vm.dom.create()
    if wait:
        wait_counter_advances(vm, timeout=timeout)


def wait_counter_advances(vm: VM, by: int = 3, timeout: float = 60, start: int | None = None) -> tuple[int, int]:
    """Wait until the max counter on the first disk grew by *by*; return (before, after).

    Raises LabError with the console tail when it does not within *timeout* seconds."""
    d = vm.disks[0]
    before = read_max_counter(d.path, d.fmt) if start is None else start
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read_max_counter(d.path, d.fmt)
        if now >= before + by:
            return before, now
        time.sleep(0.1)
    raise LabError(f"counter of {vm.name} did not advance from {before} within {timeout}s "
                   f"(active={vm.is_active()}); console tail:\n{vm.console()[-2000:]}")


def stop_vm(vm: VM | str) -> None:
    """Hard stop (virDomainDestroy); the domain stays defined."""
    import libvirt
    name = vm.name if isinstance(vm, VM) else vm
    try:
        dom = conn().lookupByName(name)
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


def destroy_vm(vm: VM | str, remove_files: bool = True) -> None:
    """Destroy + undefine (snapshot/checkpoint metadata and managed save removed); removes its work dir."""
    import libvirt
    name = vm.name if isinstance(vm, VM) else vm
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to remove non-lab domain {name}")
    try:
        dom = conn().lookupByName(name)
    except libvirt.libvirtError:
        dom = None
    if dom is not None:
        _stop_hard(dom)
        _undefine_with_metadata(dom)
    if remove_files:
        shutil.rmtree(VMS_DIR / name, ignore_errors=True)
        while name in CREATED_VMS:  # gone with its files: the teardown need not look for it again
            CREATED_VMS.remove(name)


def _stop_hard(dom) -> None:
    """virDomainDestroy, retried a few times (libvirt may refuse while a job of the domain ends)."""
    import libvirt
    for _attempt in range(5):
        try:
            if dom.isActive():
                dom.destroy()
            return
        except libvirt.libvirtError:
            time.sleep(0.5)


def _undefine_with_metadata(dom) -> None:
    """A domain with snapshot metadata cannot be undefined: drop the metadata first (see docs/development.md)."""
    import libvirt
    try:
        for s in dom.listAllSnapshots():
            s.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    except libvirt.libvirtError:
        pass
    flags = (libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
             | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    try:
        dom.undefineFlags(flags)
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


# --------------------------------------------------------------------------------------------------- cleanup
def _stale(name: str, everything: bool) -> bool:
    """A lab object (by name) whose creating process is gone, or any lab object with `everything`."""
    return name.startswith(PREFIX) and (everything or not _owner_alive(name))


def cleanup_leftovers(everything: bool = False) -> list[str]:
    """Remove lab domains, pools, mounts and files whose creating process is gone (everything=True: all of them,
    also those of running processes — `make lab-clean`).  Returns what was removed."""
    # Someone else's leftovers that cannot be removed now (zfs-fuse keeping a pool "busy") must not fail
    # this run: they are reported and tried again by the next cleanup.
    return _cleanup_domains(everything) + _cleanup_pools(everything) + _cleanup_files(everything)


def _cleanup_domains(everything: bool) -> list[str]:
    import libvirt
    try:
        doms = conn().listAllDomains()
    except libvirt.libvirtError:
        doms = []
    removed = []
    for n in (dom.name() for dom in doms):
        if _stale(n, everything):
            try:
                destroy_vm(n)
                removed.append(f"domain {n}")
            except (LabError, libvirt.libvirtError) as e:
                print(f"lab: could not remove leftover domain {n} (next cleanup retries): {e}")
    return removed


def _cleanup_pools(everything: bool) -> list[str]:
    removed = []
    for p in list_pools():
        if _stale(p, everything):
            try:
                destroy_pool(p)
                removed.append(f"pool {p}")
            except LabError as e:
                print(f"lab: could not remove leftover pool {p} (next cleanup retries): {e}")
    return removed


def _cleanup_files(everything: bool) -> list[str]:
    removed = []
    for d in (POOLS_DIR, POOLS_DIR / "clones", VMS_DIR):
        if not d.is_dir():
            continue
        for e in d.iterdir():
            n = e.name.removesuffix(".img")
            if _stale(n, everything) and n not in list_pools():
                for mp in _mounts_under(e):
                    run("umount", "-l", mp, check=False)
                if e.is_dir():
                    shutil.rmtree(e, ignore_errors=True)
                else:
                    e.unlink(missing_ok=True)
                removed.append(f"file {e}")
    return removed


def leftovers() -> dict[str, list[str]]:
    """Lab objects currently present (for no-leftover checks)."""
    import libvirt
    try:
        doms = [d.name() for d in conn().listAllDomains() if d.name().startswith(PREFIX)]
    except libvirt.libvirtError:
        doms = []
    return {
        "domains": doms,
        "pools": [p for p in list_pools() if p.startswith(PREFIX)],
        "mounts": _mounts_under(POOLS_DIR),
    }
