"""Doctests of the tools and of the recipes' preparation scripts.

``--doctest-modules`` collects ``lobes/`` only (importing every ``train.py``
would run nothing useful and the recipes share file names); the examples in
these files are run here, so a wrong example fails the suite.
"""

import doctest
import importlib.util
import sys

import pytest
from conftest import REPO

def _runs_examples(path):
    """True if ``path`` has an example that doctest runs (not all +SKIP)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return any(">>> " in line and "+SKIP" not in line for line in lines)


# Only files that hold examples: a file without one would pass whatever it says.
FILES = sorted(
    p
    for p in [*REPO.glob("tools/*.py"), *REPO.glob("recipes/**/*_prepare.py")]
    if not p.is_symlink() and _runs_examples(p)
)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_examples_run(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location(f"doctest_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"no example ran in {path}"
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {path}"
