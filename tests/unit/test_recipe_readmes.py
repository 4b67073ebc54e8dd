"""Recipe READMEs hold commands that are right in a recipe folder copied
alone into a SpeechBrain fork: no path up to this repository's root
(``pip install -e ../../..``), no ``.venv``, and this repository's
``demo_data/``, ``results/`` and ``tools/`` only through
``R=/path/to/brq-linear-mixers`` (or after a ``cd`` to its root)."""

import re

import pytest
from conftest import REPO

READMES = sorted([*REPO.glob("recipes/*/*/README.md"), *REPO.glob("recipes/*/*/*/README.md")])
OURS = re.compile(r"(?<![\w$/.])(demo_data|tools/|results/demo_)")


def shell_blocks(text):
    """The fenced ```bash (or sh) blocks of a Markdown text, as lists of
    lines (other blocks show outputs)."""
    blocks, current, shell = [], None, False
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, shell = [], line[3:].strip() in ("bash", "sh", "shell")
            else:
                if shell:
                    blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_commands_work_in_a_copied_recipe_folder(readme):
    assert READMES
    bad = []
    for block in shell_blocks(readme.read_text(encoding="utf-8")):
        at_root = any(line.startswith("cd /path/to/brq-linear-mixers") for line in block)
        for line in block:
            code = line.split("#", 1)[0]
            if "../.." in code or ".venv" in code:
                bad.append(line)
            elif not at_root and OURS.search(code):
                bad.append(line)
        if any("$R/" in line for line in block):
            assert any(line.startswith("R=/path/to/brq-linear-mixers") for line in block), block
    assert not bad, f"{readme}: commands that only work inside this repository: {bad}"
