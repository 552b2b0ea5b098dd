"""The test folders have no __init__.py, so pytest imports each test module by its file name: two test files of
one name (tests/unit/test_x.py and tests/integration/test_x.py) stop `make test` at collection."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_file_name():
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert sorted(name for name, count in names.items() if count > 1) == []
