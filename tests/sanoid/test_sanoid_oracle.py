"""The import's resolved policy against sanoid itself (Debian's sanoid 2.1 with a fake `zfs`, no ZFS needed).

For every config of the corpus: sanoid's `--debug` dump of each dataset must equal what `vmsnapd config check
--json` resolves from the imported TOML, over a dataset tree that includes children without sections.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import sanoid_oracle as oracle
from vmsnapd.sanoid_import import SANOID_DEFAULTS, read_ini, sanoid_import

CORPUS = sorted((Path(__file__).resolve().parent / "corpus").glob("*.conf"))
SHIPPED = Path("/usr/share/doc/sanoid/examples/sanoid.conf")

pytestmark = pytest.mark.skipif(oracle.SANOID is None, reason="sanoid is not installed (tests/lab/setup.sh installs it)")


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
    sections = {s.name: {k: v.text for k, v in s.keys.items()} for s in read_ini(installed.read_text(), known_keys=None)}
    assert sections["template_default"] == SANOID_DEFAULTS
