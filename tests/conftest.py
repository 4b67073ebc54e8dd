"""Shared pytest fixtures: seeding, the demo corpus, running recipes."""

import importlib.util
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


def run_recipe(recipe_dir, args, timeout=900, check=True, nproc=1, backend="gloo",
               fault=None):
    """Runs ``python train.py *args`` in ``recipe_dir``; returns the process.

    ``nproc > 1``: ``torchrun --nproc_per_node=nproc``, one thread per rank,
    with ``--distributed_backend=<backend>`` (``None``: the recipe's default,
    gloo on a machine without GPU). ``fault``: ``(fault, save folder)``, run
    through ``tests/fault_inject.py``. On failure the recipe's output (all
    ranks') is shown in the assertion message.
    """
    args = [*map(str, args)]
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if backend is not None:
            args.append(f"--distributed_backend={backend}")
    if fault is not None:
        launcher += [str(REPO / "tests" / "fault_inject.py"), fault[0], str(fault[1])]
    proc = subprocess.run(
        [*launcher, "train.py", *args],
        cwd=recipe_dir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1" if nproc > 1 else "2"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train.py {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def load_script(path, name=None):
    """Imports the Python file ``path`` as a module (recipe folders are not
    put on ``sys.path``: they all hold a ``train.py``)."""
    spec = importlib.util.spec_from_file_location(name or f"script_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRETRAIN_RECIPE = REPO / "recipes/LibriSpeech/self-supervised-learning/BEST-RQ-linear"
PROBE_LAYERS = 2  # layers of the demo encoders the probe tests load


@pytest.fixture(scope="session")
def pretrained_demo(demo_data, tmp_path_factory):
    """Factory: ``pretrained_demo(mixer, epochs=3)`` pretrains a demo-size
    encoder of ``mixer`` with the real recipe (once per session and
    arguments) and returns its output folder; its ``save`` folder is what the
    probing recipes take as ``--pretrained_path``. Probes must build the same
    encoder: ``demo_overrides.demo_encoder_override(mixer, PROBE_LAYERS)``.
    """
    from demo_overrides import demo_overrides

    cache = {}

    def pretrain(mixer, epochs=3):
        if (mixer, epochs) not in cache:
            out = tmp_path_factory.mktemp(f"pretrained_{mixer}_{epochs}")
            run_recipe(
                PRETRAIN_RECIPE,
                [
                    f"hparams/bestrq_{mixer}.yaml",
                    f"--data_folder={demo_data / 'LibriSpeech'}",
                    f"--output_folder={out}",
                    *demo_overrides(mixer, epochs=epochs, layers=PROBE_LAYERS),
                ],
            )
            cache[mixer, epochs] = out
        return cache[mixer, epochs]

    return pretrain
