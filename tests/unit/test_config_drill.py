"""Config keys at their boundaries (trust drill): what `config check` accepts, every command can use.
`group_timeout = 1e12` (or a hook timeout that big) was valid, then every wait on it failed with OverflowError
(Python refuses a thread wait beyond threading.TIMEOUT_MAX): every group cycle failed with an obscure error."""
from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnapd.config import MAX_TIMEOUT_S, ConfigError, parse_config

KEYS = ("[daemon]\ngroup_timeout = {v}\n", "[daemon]\nhook_timeout = {v}\n",
        '[datasets."tank/vm".hooks]\ntimeout = {v}\n')


@pytest.mark.parametrize("template", KEYS)
def test_a_timeout_beyond_a_week_is_refused_with_its_key(template):
    assert parse_config(template.format(v=MAX_TIMEOUT_S))
    for value in ("1e12", str(MAX_TIMEOUT_S + 1), "1e308"):
        with pytest.raises(ConfigError, match="less than or equal to 604800"):
            parse_config(template.format(v=value))


@settings(max_examples=200, deadline=None)
@given(template=st.sampled_from(KEYS), value=st.floats(allow_nan=True, allow_infinity=True) | st.integers())
def test_every_timeout_config_check_accepts_is_a_usable_thread_wait(template, value):
    text = template.format(v=repr(value) if isinstance(value, int) else
                           {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value)))
    try:
        config = parse_config(text)
    except ConfigError:
        return
    timeouts = [config.daemon.group_timeout, config.daemon.hook_timeout] + [
        t.hooks.timeout for t in config.datasets.values() if t.hooks.timeout is not None]
    lock = threading.Lock()
    for timeout in timeouts:
        assert lock.acquire(True, timeout)  # an OverflowError here is what a group's barrier met
        lock.release()


def test_import_sanoid_caps_a_script_timeout_beyond_a_week(tmp_path):
    from vmsnapd.sanoid_import import sanoid_import

    conf = "[rpool/VM]\n\tuse_template = p\n\tpre_snapshot_script = /bin/true\n\tscript_timeout = 1000000\n" \
           "[template_p]\n\thourly = 1\n"
    result = sanoid_import(conf)
    assert "timeout = 604800" in result.toml
    assert any("script_timeout = 1000000" in warning for warning in result.warnings)
