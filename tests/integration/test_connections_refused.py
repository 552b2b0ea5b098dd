"""A further libvirt connection that libvirtd refuses (vmsnapd.connections): the VM cycle shares the pass's
connection with a warning, as the pool promises, instead of failing on its first call. The real adapter connects
lazily, so the opener (Context.open_hypervisor) must connect at once for the pool to see the refusal."""
from __future__ import annotations

import pytest

from vmsnapd.actions.context import Context
from vmsnapd.config import parse_config
from vmsnapd.connections import Connections
from vmsnapd.hvtypes import HypervisorUnavailable
from vmsnapd.runner import Runner

pytestmark = [pytest.mark.lab]


def _context(tmp_path, uri: str) -> Context:
    config = parse_config(f'[daemon]\nstate_dir = "{tmp_path}/s"\noverlay_dir = "{tmp_path}/o"\n'
                          f'ram_dir = "{tmp_path}/r"\nlibvirt_uri = "{uri}"\n')
    return Context(config=config, config_path=tmp_path / "c.toml", runner=Runner(), zfs=None)


def test_a_refused_further_connection_shares_the_pass_connection(lab, tmp_path, caplog):
    pass_ctx = _context(tmp_path, "qemu:///system")
    refused = _context(tmp_path, f"qemu+unix:///system?socket={tmp_path}/no-libvirtd")
    with pytest.raises(HypervisorUnavailable, match="cannot connect"):
        refused.open_hypervisor()  # at once, not on the cycle's first call
    pool = Connections(pass_ctx.hypervisor, refused.open_hypervisor)
    try:
        with pool.lease() as a, pool.lease() as b:
            assert a is pass_ctx.hypervisor and b is pass_ctx.hypervisor
            assert isinstance(a.domain_names(), list)  # the shared one works
        assert "cannot open another connection" in caplog.text and "cannot connect to" in caplog.text
        assert pool.opened == 0
    finally:
        pool.close()
        pass_ctx.close()


def test_a_further_connection_is_open_when_handed_out(lab, tmp_path):
    ctx = _context(tmp_path, "qemu:///system")
    pool = Connections(ctx.hypervisor, ctx.open_hypervisor)
    try:
        with pool.lease() as a, pool.lease() as b:
            assert a is ctx.hypervisor and b is not a
            assert b._conn is not None and b._conn.isAlive()  # connected by the opener, in the leasing thread
        assert pool.opened == 1
    finally:
        pool.close()
        ctx.close()
