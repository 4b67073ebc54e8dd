"""Fault-injection matrix (slow): every recipe, end to end on its demo corpus,
with the inputs and accidents of real runs. Each ends with a clear error or
a counted skip, and no checkpoint is lost or corrupted.

Damaged data (``test_damaged_audio``), in a copy of the corpus the recipe
trains on (tests/damage.py): files at 8, 22.05, 44.1 and 48 kHz, stereo
files, a truncated file whose header is intact, a file that is not audio, a
too-short and a too-long utterance.

* default options (``check_audio: True``): the preparation stops, naming both
  unusable files, before any checkpoint exists;
* ``--skip_bad_audio=True``: the run completes; the log counts the 2 skipped
  files (listed in ``bad_audio_*.txt``) and the utterances left out by
  ``avoid_if_shorter_than``/``avoid_if_longer_than`` where the recipe has
  them; the other files are used at their real sample rate.

Accidents (``test_checkpoint_faults``), striking in epoch 2 once the epoch-1
checkpoint exists (tests/fault_inject.py), in one output folder:

1. SIGKILL in the middle of writing the epoch-2 checkpoint;
2. a full disk while writing it, as it really fails (a file-size limit set
   mid-save: the kernel refuses the writes, ``torch.save`` fails in its zip
   writer): one clear error saying the previous checkpoints are intact, the
   partial folder removed;
3. NaN in the features of an epoch-2 batch: a clear error naming the
   utterance, before any update;
4. the same command without fault: resumes from epoch 1 and completes.

After each, every checkpoint left loads, holds only finite numbers, and
none that existed before the fault is gone.
"""

import math

import pytest
import test_asr_recipe
import test_buckeye_recipe
import test_commonvoice_recipe
import test_iemocap_recipe
import test_slurp_recipe
import test_voxceleb_recipe
import torch
import yaml
from conftest import REPO, run_recipe
from damage import (
    RATES,
    copy_corpus,
    garble_file,
    resample_file,
    training_files,
    trim_file,
    truncate_file,
)
from demo_overrides import demo_overrides

pytestmark = pytest.mark.slow

PRETRAIN = REPO / "recipes/LibriSpeech/self-supervised-learning/BEST-RQ-linear"
LIBRILIGHT = REPO / "recipes/LibriLight/self-supervised-learning/BEST-RQ-linear"
RECIPES = ["pretraining", "librilight", "asr", "voxceleb", "iemocap", "slurp", "buckeye",
           "commonvoice"]
TASK = {"pretraining": "librispeech", "librilight": "librilight", "asr": "librispeech",
        "voxceleb": "voxceleb", "iemocap": "iemocap", "slurp": "slurp", "buckeye": "buckeye",
        "commonvoice": "commonvoice"}
# Duration filters of each recipe, set for the demo's utterances (2-5 s);
# the too-short file is 0.3 s, the too-long one 14 s.
FILTERS = {
    "pretraining": (["--avoid_if_longer_than=12.0"], ["1 shorter than 1.0 s", "1 longer than 12.0 s"]),
    "asr": (["--avoid_if_shorter_than=1.0", "--avoid_if_longer_than=12.0"],
            ["1 shorter than 1.0 s", "1 longer than 12.0 s"]),
    "slurp": (["--avoid_if_longer_than=12.0"], ["1 longer than 12.0 s"]),
    "commonvoice": (["--avoid_if_shorter_than=1.0", "--avoid_if_longer_than=12.0"],
                    ["1 shorter than 1.0 s", "1 longer than 12.0 s"]),
}


def recipe_run(name, data_root, pretrained, out, epochs, extra=(), fault=None, check=True):
    """Runs the recipe ``name`` on the corpus copy under ``data_root``."""
    extra = list(extra)
    corpus = data_root / {"librispeech": "LibriSpeech", "librilight": "LibriLight",
                          "buckeye": "Buckeye", "commonvoice": test_commonvoice_recipe.RELEASE,
                          }.get(TASK[name], "")
    if name == "pretraining":
        recipe, args = PRETRAIN, [
            "hparams/bestrq_fastformer.yaml", f"--data_folder={corpus}",
            f"--output_folder={out}",
            *demo_overrides("fastformer", epochs=epochs, layers=2), *extra]
    elif name == "librilight":
        recipe, args = LIBRILIGHT, [
            "hparams/bestrq_fastformer.yaml", f"--data_folder={corpus}",
            f"--valid_data_folder={REPO / 'demo_data/LibriSpeech'}",
            f"--output_folder={out}", "--max_segment_duration=10.0",
            *[o for o in demo_overrides("fastformer", epochs=epochs, layers=2)
              if not o.startswith("--train_splits")],
            "--train_splits=[small]", *extra]
    elif name == "asr":
        recipe = test_asr_recipe.RECIPE
        args = [*test_asr_recipe.probe_args("bilstm_ctc", "summarymixing", pretrained, corpus,
                                            out, epochs=epochs), *extra]
    elif name == "voxceleb":
        recipe = test_voxceleb_recipe.RECIPE
        args = test_voxceleb_recipe.probe_args(data_root, pretrained, out, epochs=epochs,
                                               extra=extra)
    elif name == "iemocap":
        recipe = test_iemocap_recipe.RECIPE
        args = test_iemocap_recipe.probe_args(data_root, pretrained, out, epochs=epochs,
                                              extra=["--test_spk_id=1", *extra])
    elif name == "buckeye":  # tracks found in the corpus copy (damage) or extracted
        recipe = test_buckeye_recipe.RECIPE
        args = [*test_buckeye_recipe.probe_args("bilstm_ctc", "summarymixing", pretrained, corpus,
                                                out, epochs=epochs), *extra]
    elif name == "commonvoice":
        recipe = test_commonvoice_recipe.RECIPE
        args = [*test_commonvoice_recipe.probe_args("bilstm_ctc", "cy", "summarymixing", pretrained,
                                                    corpus, out, epochs=epochs), *extra]
    else:
        recipe = test_slurp_recipe.RECIPE
        args = test_slurp_recipe.probe_args("linear", "summarymixing", pretrained,
                                            data_root / "SLURP", out, epochs=epochs, extra=extra)
    return run_recipe(recipe, args, check=check, fault=fault, timeout=1500)


def run_folder(name, out):
    """The folder with log.txt and the checkpoints (IEMOCAP: one per fold)."""
    return out / "fold_1" if name == "iemocap" else out


def output(proc):
    return proc.stdout + proc.stderr


def check_checkpoints(save):
    """Every ``CKPT+...`` folder of ``save`` loads completely and holds only
    finite numbers; no partial folder is left but the one a SIGKILL leaves
    (hidden, removed at the next save). Returns the checkpoint names."""
    names = set()
    for ckpt in sorted(save.glob("CKPT+*")):
        meta = yaml.safe_load((ckpt / "CKPT.yaml").read_text())
        assert "unixtime" in meta, ckpt
        for file in ckpt.iterdir():
            try:
                value = torch.load(file, map_location="cpu", weights_only=False)
            except Exception:  # SpeechBrain's text savers (brain, counter...)
                value = yaml.safe_load(file.read_text())
            assert_finite(value, file)
        names.add(ckpt.name)
    return names


def assert_finite(value, where):
    if torch.is_tensor(value):
        if value.is_floating_point():
            assert torch.isfinite(value).all(), where
    elif isinstance(value, float):
        assert math.isfinite(value), where
    elif isinstance(value, dict):
        for v in value.values():
            assert_finite(v, where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            assert_finite(v, where)


# ---------------------------------------------------------------------------
# Damaged data
# ---------------------------------------------------------------------------
def damage(name, demo_data, dest):
    """Damages a copy of the recipe's corpus; returns (root of the copy,
    resampled files, truncated file, garbled file)."""
    root = copy_corpus(demo_data, TASK[name], dest)
    files = training_files(TASK[name], root)
    if name in ("librilight", "buckeye"):  # a few long files: two kept at other rates
        resampled = [files[0], files[1]]
        resample_file(files[0], 8000)
        resample_file(files[1], 48000, channels=2)
        truncate_file(files[2])
        garble_file(files[3])
        return root, resampled, files[2], files[3]
    resampled = files[: len(RATES) + 1]
    for i, rate in enumerate(RATES):
        resample_file(files[i], rate, channels=1 + i % 2)
    resample_file(files[len(RATES)], 16000, channels=2)
    truncated, garbled, short, long = files[5:9]
    truncate_file(truncated)
    garble_file(garbled)
    trim_file(short, 0.3)
    resample_file(long, 8000, seconds=14.0)  # long, and at 8 kHz
    return root, resampled + [long], truncated, garbled


@pytest.mark.parametrize("name", RECIPES)
def test_damaged_audio(demo_data, pretrained_demo, tmp_path, name):
    pretrained = pretrained_demo("summarymixing") if name not in ("pretraining", "librilight") else None
    root, resampled, truncated, garbled = damage(name, demo_data, tmp_path / "data")

    stopped = tmp_path / "stopped"
    proc = recipe_run(name, tmp_path / "data", pretrained, stopped, epochs=1, check=False)
    assert proc.returncode != 0
    for bad in (truncated, garbled):
        assert f"Cannot read audio file {bad} (" in output(proc), output(proc)[-3000:]
    assert "skip_bad_audio: True" in output(proc)
    assert not list(stopped.rglob("CKPT+*"))

    skipped = tmp_path / "skipped"
    extra, counted = FILTERS.get(name, ([], []))
    recipe_run(name, tmp_path / "data", pretrained, skipped, epochs=1,
               extra=["--skip_bad_audio=True", *extra])
    folder = run_folder(name, skipped)
    log = (folder / "log.txt").read_text()
    assert "skipped 2 of" in log
    report = next(folder.rglob("bad_audio_*.txt"))
    assert {line.split("\t")[0] for line in report.read_text().splitlines()} == {
        str(truncated), str(garbled)}
    for text in counted:
        assert text in log, text
    manifests = "".join(p.read_text() for p in folder.rglob("*.csv")) + "".join(
        p.read_text() for p in folder.glob("*.json"))
    for wav in resampled:
        assert str(wav) in manifests, wav
    assert check_checkpoints(next(folder.rglob("save")))


# ---------------------------------------------------------------------------
# SIGKILL and full disk while saving, NaN features
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", RECIPES)
def test_checkpoint_faults(demo_data, pretrained_demo, tmp_path, name):
    pretrained = pretrained_demo("summarymixing") if name not in ("pretraining", "librilight") else None
    out = tmp_path / "run"
    save = run_folder(name, out) / "save"

    def run(fault=None, check=False):
        return recipe_run(name, demo_data, pretrained, out, epochs=2, check=check,
                          fault=(fault, save) if fault else None)

    proc = run("kill_on_save")
    assert proc.returncode == -9, output(proc)[-3000:]  # SIGKILL
    before = check_checkpoints(save)
    assert len(before) == 1  # epoch 1's; epoch 2's was being written

    proc = run("full_disk_on_save")
    assert proc.returncode != 0
    assert "No space left on device" in output(proc) and "are intact" in output(proc)
    assert "free space on that disk" in output(proc)
    assert check_checkpoints(save) == before
    assert not list(save.glob(".partial-*"))  # its space given back

    proc = run("nan_features")
    assert proc.returncode != 0
    assert "Non-finite features (NaN or inf) for utterance(s) [" in output(proc)
    assert check_checkpoints(save) == before

    run(check=True)
    log = (run_folder(name, out) / "log.txt").read_text()
    assert "Recovering the end-of-epoch checkpoint" in log
    assert check_checkpoints(save)
    assert "epoch: 2" in (run_folder(name, out) / "train_log.txt").read_text()
