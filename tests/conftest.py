"""Shared pytest fixtures: seeding, the demo corpus, running recipes."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lobes.nnet.mixers import MIXERS, mixer_names

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

# Every mixer list of the tests comes from the registry (lobes.nnet.mixers):
# a mixer registered there (module, MixerSpec, encoder definition) is run by
# every mixer-parametrised test.
ALL_MIXERS = sorted(MIXERS)
PAPER_MIXERS = mixer_names(paper=True)
LINEAR_MIXERS = mixer_names(linear=True)
PAPER_LINEAR_MIXERS = mixer_names(paper=True, linear=True)


def save_normalizer(norm, path):
    """Writes the statistics of SpeechBrain's ``InputNormalization`` ``norm``
    in SpeechBrain's own file format (its ``_save``: count, glob_mean,
    glob_std), as SpeechBrain's recipes and older runs of ours wrote them."""
    torch.save({"count": norm.count, "glob_mean": norm.glob_mean, "glob_std": norm.glob_std}, path)


def small_mixer(name, d_model=16, nhead=4, **kwargs):
    """``lobes.nnet.mixers.build_mixer`` with small sizes (heads: 1 for SummaryMixing)."""
    from lobes.nnet.mixers import build_mixer

    if name.startswith("summarymixing"):
        nhead = 1
    return build_mixer(name, d_model, nhead, **{**MIXERS[name].small_kwargs, **kwargs})


def assert_equals_speechbrain(cnn, wrapper, ours, atol=1e-5):
    """Asserts that our encoder ``ours`` computes what SpeechBrain's BEST-RQ
    encoder (its ``ConvolutionFrontEnd`` ``cnn`` then ``EncoderWrapper``
    ``wrapper``) computes, layer by layer: every Conformer layer's output
    (forward hooks on SpeechBrain's layers) against our hidden states, and
    the final output, on the valid frames of a padded batch of 3, in eval
    mode. Returns SpeechBrain's output and the batch ``(ref, feats, lens)``.
    """
    states = []
    hooks = [layer.register_forward_hook(lambda m, i, o: states.append(o[0]))
             for layer in wrapper.transformer.encoder.layers]
    cnn.eval(), wrapper.eval(), ours.eval()
    feats, lens = torch.randn(3, 203, 80), torch.tensor([1.0, 0.7, 0.45])
    try:
        with torch.no_grad():
            ref = wrapper(cnn(feats), lens)
            out, hidden = ours(feats, lens, return_hidden=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(states) == len(hidden) - 1
    frames = torch.round(lens * ref.shape[1]).long()
    for b, n in enumerate(frames):
        for i, state in enumerate(states):
            torch.testing.assert_close(hidden[i + 1][b, :n], state[b, :n], atol=atol, rtol=atol,
                                       msg=lambda m: f"layer {i + 1}, utterance {b}: {m}")
        torch.testing.assert_close(out[b, :n], ref[b, :n], atol=atol, rtol=atol)
    return ref, feats, lens


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


def assert_run_rebuilds_its_encoder(run_folder, checkpoint):
    """A run folder describes the encoder that ran: its ``encoder.yaml`` and
    its saved ``hyperparams.yaml`` rebuild an encoder into which
    ``checkpoint``'s encoder state dict loads strictly."""
    import yaml
    from hyperpyyaml import load_hyperpyyaml

    from lobes.deploy.loading import encoder_state_dict

    state = encoder_state_dict(checkpoint)
    recorded = yaml.safe_load((Path(run_folder) / "encoder.yaml").read_text())
    assert recorded == state["_extra_state"]
    with open(Path(run_folder) / "hyperparams.yaml") as fin:
        saved = load_hyperpyyaml(fin)
    saved["encoder"].load_state_dict(state)  # strict
    assert saved["encoder"].config == recorded


def tiny_pretrained(folder, mixer="summarymixing"):
    """An exported-encoder folder (encoder.ckpt, normalizer.ckpt) of a tiny
    random encoder: a ``pretrained_path`` for tests that build a probe
    without training anything."""
    from speechbrain.processing.features import InputNormalization

    from lobes.config import encoder_from_definition

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    overrides = {"num_layers": 1, "d_model": 32, "d_ffn": 64, "kernel_size": 3}
    if mixer == "summarymixing":
        overrides["mixer_kwargs"] = {"local_proj_hid_dim": [16], "local_proj_out_dim": 16, "summary_hid_dim": [16]}
    torch.save(encoder_from_definition(mixer, overrides=overrides).state_dict(), folder / "encoder.ckpt")
    norm = InputNormalization()
    norm(torch.randn(2, 20, 80), torch.ones(2))
    save_normalizer(norm, folder / "normalizer.ckpt")
    return folder
