"""Shared pytest fixtures: seeding, the demo corpus, running recipes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def demo_data():
    """The demo corpora (generated once, cached in ``$DEMO_DATA`` or
    ``<repo>/demo_data``): the same data ``make demo`` uses."""
    from demo_corpus import make_demo_corpus

    root = Path(os.environ.get("DEMO_DATA", REPO / "demo_data"))
    make_demo_corpus(root)
    return root


def run_recipe(recipe_dir, args, timeout=900, check=True):
    """Runs ``python train.py *args`` in ``recipe_dir``; returns the process.

    On failure the recipe's output is shown in the assertion message.
    """
    proc = subprocess.run(
        [sys.executable, "train.py", *map(str, args)],
        cwd=recipe_dir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train.py {' '.join(map(str, args))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc
