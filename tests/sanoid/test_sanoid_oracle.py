"""The import's resolved policy against sanoid itself (Debian's sanoid 2.1 with a fake `zfs`, no ZFS needed).

For every config of the corpus: sanoid's `--debug` dump of each dataset must equal what `vmsnapd config check
--json` resolves from the imported TOML, over a dataset tree that includes children without sections.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import sanoid_debug as oracle
from vmsnapd.sanoid_import import SANOID_DEFAULTS, read_ini, sanoid_import

CORPUS = sorted((Path(__file__).resolve().parent / "corpus").glob("*.conf"))
SHIPPED = Path("/usr/share/doc/sanoid/examples/sanoid.conf")

pytestmark = pytest.mark.skipif(oracle.SANOID is None,
                                reason="sanoid is not installed (tests/lab/setup.sh installs it)")


def _datasets(conf: str) -> list[str]:
    match = re.search(r"^# datasets: (.*)$", conf, re.MULTILINE)
    assert match, "a corpus file names its dataset tree in a `# datasets:` line"
    return match[1].split()


def _check(conf: str, datasets: list[str], workdir: Path) -> None:
    translation = sanoid_import(conf)
    sanoid = oracle.sanoid_configs(conf, datasets, workdir)
    vmsnapd = oracle.vmsnapd_policies(translation.toml, datasets, workdir)
    assert oracle.compare(sanoid, vmsnapd, datasets) == []
    assert vmsnapd, "the corpus must manage something"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_resolves_as_sanoid_does(path, tmp_path):
    conf = path.read_text()
    _check(conf, _datasets(conf), tmp_path)


def test_installed_shipped_example_with_its_examples_enabled(tmp_path):
    if not SHIPPED.exists():
        pytest.skip(f"{SHIPPED} is not installed")
    conf = re.sub(r"(?m)^#(\[|\t)", r"\1", SHIPPED.read_text())
    corpus = (Path(__file__).resolve().parent / "corpus" / "shipped-example-all-enabled.conf").read_text()
    _check(conf, _datasets(corpus), tmp_path)


def test_the_oracle_sees_a_wrong_child_rule(tmp_path):
    """The comparison can fail: the old import's rule (a child section gets the defaults, not its parent's
    settings) differs from sanoid's on the shipped example."""
    conf = (Path(__file__).resolve().parent / "corpus" / "shipped-example-all-enabled.conf").read_text()
    datasets = _datasets(conf)
    wrong = sanoid_import(conf).toml.replace('[datasets."zpoolname/parent/child"]',
                                             '[datasets."zpoolname/parent/child"]\nweekly = 0\nhourly = 48')
    problems = oracle.compare(oracle.sanoid_configs(conf, datasets, tmp_path),
                              oracle.vmsnapd_policies(wrong, datasets, tmp_path), datasets)
    assert any("zpoolname/parent/child: hourly" in p for p in problems), problems


def test_embedded_defaults_are_sanoids_installed_defaults():
    installed = Path("/usr/share/sanoid/sanoid.defaults.conf")
    if not installed.exists():
        pytest.skip(f"{installed} is not installed")
    sections = {s.name: {k: v.text for k, v in s.keys.items()}
                for s in read_ini(installed.read_text(), known_keys=None)}
    assert sections["template_default"] == SANOID_DEFAULTS


# ---- differential: random section arrangements, sanoid's resolution vs the import's -------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vmsnapd.sanoid_import import SanoidImportError  # noqa: E402

TREE = ["tank", "tank/a", "tank/a/b", "tank/a/b/c", "tank/c", "tank/c/d", "tank/e"]
_KEY_VALUES = {
    "hourly": ["0", "3", "36"], "daily": ["1", "30"], "weekly": ["0", "4"], "autosnap": ["yes", "no", "off", "1"],
    "autoprune": ["on", "false"], "recursive": ["yes", "no", "zfs", "1"], "use_template": ["x", "y", "x,y", "y, x"],
    "process_children_only": ["yes", "no"], "skip_children": ["yes", "no"], "hourly_min": ["0", "30"],
    "pre_snapshot_script": ["/x.sh -v", "/y.sh 'a b'"], "post_snapshot_script": ["/post.sh"],
    "no_inconsistent_snapshot": ["yes", "no"], "hourly_warn": ["2h", "90"], "monitor": ["no", "yes"],
    "prune_defer": ["0", "50", "100"], "script_timeout": ["0", "9"], "path": ["tank/e", "tank/c/d"],
}
_TEMPLATE_KEYS = [k for k in _KEY_VALUES if k not in ("recursive", "use_template", "skip_children", "path")]


def _section(name):
    keys = _TEMPLATE_KEYS if name.startswith("template_") else list(_KEY_VALUES)
    pairs = st.lists(st.sampled_from(keys), max_size=4, unique=True).flatmap(
        lambda chosen: st.tuples(*[st.tuples(st.just(k), st.sampled_from(_KEY_VALUES[k])) for k in chosen]))
    return pairs.map(lambda kv: f"[{name}]\n" + "".join(f"\t{k} = {v}\n" for k, v in kv))


_configs = st.lists(st.sampled_from(["tank", "tank/a", "tank/a/b", "tank/a/b/c", "tank/c", "template_x",
                                     "template_y", "template_default"]), min_size=1, max_size=7, unique=True).flatmap(
    lambda names: st.tuples(*[_section(n) for n in names])).map("".join)


def _differential(tmp_path, conf):
    try:
        translation = sanoid_import(conf)
    except SanoidImportError:
        return  # a clear refusal is allowed; a wrong policy is not
    sanoid = oracle.sanoid_configs(conf, TREE, tmp_path)
    vmsnapd = oracle.vmsnapd_policies(translation.toml, TREE, tmp_path)
    assert oracle.compare(sanoid, vmsnapd, TREE) == [], conf


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_configs)
def test_random_configs_resolve_as_sanoid_does(tmp_path, conf):
    _differential(tmp_path, conf)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VMSNAPD_ORACLE_EXAMPLES"),
                    reason="a long run: VMSNAPD_ORACLE_EXAMPLES=400 for 400 random configs (~10 min)")
@settings(max_examples=int(os.environ.get("VMSNAPD_ORACLE_EXAMPLES") or 1), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_configs)
def test_many_random_configs_resolve_as_sanoid_does(tmp_path, conf):
    _differential(tmp_path, conf)
