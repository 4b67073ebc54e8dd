"""Crashes while saving, NaN losses and bad audio are handled, not silent;
the right checkpoint is loaded and named; a resumed epoch's metrics cover the
whole epoch; torchrun works on CPU machines. (The recipes end to end under
injected faults: test_fault_matrix.py, slow.)"""

import errno
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
import yaml
from conftest import REPO
from demo_overrides import demo_overrides
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import mark_as_saver, register_checkpoint_hooks

from lobes.brains.pretraining import BestRQBrain
from lobes.dataio.audio import AudioReadError, load_audio
from lobes.utils.checkpoint import AtomicCheckpointer

RECIPE = REPO / "recipes/LibriSpeech/self-supervised-learning/BEST-RQ-linear"


@register_checkpoint_hooks
class CrashingSaver:
    crash = False

    @mark_as_saver
    def save(self, path):
        if self.crash:
            raise KeyboardInterrupt("killed while saving")
        open(path, "w").write("ok")


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 3)
    saver = CrashingSaver()
    ckpt = AtomicCheckpointer(tmp_path, {"model": model, "other": saver})
    first = ckpt.save_checkpoint(meta={"n": 1})
    saver.crash = True
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(meta={"n": 2})
    assert [c.path for c in ckpt.list_checkpoints()] == [first.path]
    # the next save cleans the partial folder and works
    saver.crash = False
    second = ckpt.save_checkpoint(meta={"n": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.name, second.path.name])
    assert ckpt.find_checkpoint().meta["n"] == 3


def tiny_brain(tmp_path):
    overrides = {}
    for o in demo_overrides("fastformer", epochs=1, layers=1):
        key, _, value = o[2:].partition("=")
        overrides[key] = load_hyperpyyaml(f"v: {value}")["v"]
    overrides.update(data_folder=str(tmp_path), output_folder=str(tmp_path))
    with open(RECIPE / "hparams/bestrq_fastformer.yaml") as f:
        hparams = load_hyperpyyaml(f, overrides)
    brain = BestRQBrain(
        modules=hparams["modules"], opt_class=hparams["optimizer"], hparams=hparams,
        run_opts={"device": "cpu"}, checkpointer=hparams["checkpointer"],
    )
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.nonfinite_count = 0  # as Brain._fit_train does at each epoch
    brain.modules.train()
    return brain


def batch_of(wavs):
    from speechbrain.dataio.batch import PaddedBatch

    return PaddedBatch([{"id": f"u{i}", "sig": w} for i, w in enumerate(wavs)])


def test_a_nan_loss_skips_the_update_and_is_counted(tmp_path, monkeypatch):
    brain = tiny_brain(tmp_path)
    batch = batch_of([torch.randn(16000) * 0.1, torch.randn(12000) * 0.1])
    before = [p.detach().clone() for p in brain.modules.parameters()]
    real = BestRQBrain.compute_objectives
    monkeypatch.setattr(BestRQBrain, "compute_objectives",
                        lambda self, *a: real(self, *a) * float("nan"))
    brain.fit_batch(batch)
    assert brain.nonfinite_count == 1
    after = list(brain.modules.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    monkeypatch.setattr(BestRQBrain, "compute_objectives", real)
    loss = brain.fit_batch(batch)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, brain.modules.parameters()))


def test_an_utterance_shorter_than_a_mask_span_is_named(tmp_path):
    brain = tiny_brain(tmp_path)
    with pytest.raises(ValueError, match=r"\['u0', 'u1'\].*fewer frames.*avoid_if_shorter_than"):
        brain.compute_forward(batch_of([torch.randn(300), torch.randn(16000)]), sb.Stage.TRAIN)


def test_bad_audio_files_are_named(tmp_path):
    missing = tmp_path / "missing.flac"
    with pytest.raises(AudioReadError, match=f"{missing} does not exist"):
        load_audio(str(missing))
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(AudioReadError, match=f"Cannot read audio file {corrupt}"):
        load_audio(str(corrupt))
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype="float32"), 16000)
    with pytest.raises(AudioReadError, match=f"{empty} is empty"):
        load_audio(str(empty))
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(100, np.nan, dtype="float32"), 16000, subtype="FLOAT")
    with pytest.raises(AudioReadError, match=f"{nan} contains NaN"):
        load_audio(str(nan))


def test_other_sample_rates_are_resampled_and_stereo_is_downmixed(tmp_path):
    path = tmp_path / "a.wav"
    t = np.arange(44100) / 44100
    tone = np.sin(2 * np.pi * 440 * t).astype("float32")
    sf.write(path, np.stack([tone, tone], axis=1), 44100)
    sig = load_audio(str(path), 16000)
    assert sig.shape == (16000,)
    spectrum = torch.fft.rfft(sig).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1


# ---------------------------------------------------------------------------
# Saving: a full disk
# ---------------------------------------------------------------------------
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 3)
    ckpt = AtomicCheckpointer(tmp_path, {"model": model, "other": torch.nn.Linear(2, 2)})
    first = ckpt.save_checkpoint(meta={"n": 1})
    real_save = torch.save
    calls = []

    def full_disk(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second file of the checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"No space left.*intact.*run the same command") as err:
        ckpt.save_checkpoint(meta={"n": 2})
    assert err.value.errno == errno.ENOSPC and first.path.name in str(err.value)
    monkeypatch.setattr(torch, "save", real_save)
    # the partial folder is gone at once (its space freed), the first is whole
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]
    assert ckpt.find_checkpoint().meta["n"] == 1
    assert torch.load(first.path / "model.ckpt").keys() == model.state_dict().keys()


# ---------------------------------------------------------------------------
# Which checkpoint is loaded, and saying so
# ---------------------------------------------------------------------------
def fake_save_folder(root, encoder_states, intra_epoch_last=False):
    """A pretraining ``save`` folder: one CKPT per (steps, unixtime, state);
    the encoder under the recipe's ``0.`` prefix, as in ``model.ckpt``."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (steps, unixtime, state) in enumerate(encoder_states):
        ckpt = root / f"CKPT+2026-01-0{i + 1}+00-00-00+00"
        ckpt.mkdir()
        torch.save({f"0.{k}": v for k, v in state.items()}, ckpt / "model.ckpt")
        intra = intra_epoch_last and i == len(encoder_states) - 1
        meta = {"unixtime": unixtime, "end-of-epoch": not intra}
        if not intra:  # SpeechBrain's intra-epoch checkpoints record no steps
            meta["steps"] = steps
        (ckpt / "CKPT.yaml").write_text(yaml.safe_dump(meta))
        (ckpt / "brain.ckpt").write_text(yaml.safe_dump({"optimizer_step": steps, "step": 0}))
    return root


def tiny_encoder(seed):
    from lobes.nnet.encoder import ConformerEncoder

    torch.manual_seed(seed)
    return ConformerEncoder("fastformer", num_layers=1, d_model=16, nhead=2,
                            d_ffn=32, kernel_size=3)


@pytest.mark.parametrize("intra_epoch", [False, True])
def test_a_copied_run_folder_loads_its_latest_checkpoint(tmp_path, caplog, intra_epoch):
    """``cp -r`` gives the folders new dates (here the step-364 checkpoint is
    made the newest on disk): the step recorded in each checkpoint decides,
    for the probes (load_pretrained), export and inference alike."""
    import logging

    from lobes.deploy.export import checkpoint_metadata
    from lobes.deploy.loading import load_pretrained, resolve_checkpoint

    old, new = tiny_encoder(0), tiny_encoder(1)
    run = fake_save_folder(tmp_path / "run/save",
                           [(364, 1000.0, old.state_dict()), (420, 2000.0, new.state_dict())],
                           intra_epoch_last=intra_epoch)
    copy = tmp_path / "copy/save"
    shutil.copytree(run, copy)
    step364 = sorted(copy.glob("CKPT+*"))[0]
    future = time.time() + 3600
    for path in [step364, *step364.iterdir()]:
        os.utime(path, (future, future))

    with caplog.at_level(logging.INFO):
        encoder_file, _, _ = resolve_checkpoint(copy)
        assert checkpoint_metadata(copy)["steps"] == 420
        loaded = tiny_encoder(2)
        load_pretrained(copy, loaded)
    assert encoder_file.parent.name == sorted(copy.glob("CKPT+*"))[1].name
    for key, value in new.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(loaded.state_dict()[key], value)
    assert f"Pretrained encoder: {encoder_file} (step 420" in caplog.text


def test_a_probe_checkpoint_as_pretrained_path_is_named(tmp_path):
    from lobes.deploy.loading import resolve_checkpoint

    probe_save = tmp_path / "vox/save"
    ckpt = probe_save / "CKPT+2026-01-01+00-00-00+00"
    ckpt.mkdir(parents=True)
    torch.save({"0.weight": torch.zeros(2)}, ckpt / "model.ckpt")  # the probe's ModuleList
    torch.save({"weights": torch.zeros(3)}, ckpt / "weighted_ssl.ckpt")
    for path in (probe_save, ckpt):
        with pytest.raises(ValueError, match=r"checkpoints of an MP3S probe.*pretraining run's save"):
            resolve_checkpoint(path)


def test_recovery_logs_the_checkpoint_and_its_step(tmp_path, caplog):
    import logging

    ckpt = AtomicCheckpointer(tmp_path, {"model": torch.nn.Linear(2, 2)})
    saved = ckpt.save_checkpoint(meta={"steps": 77}, end_of_epoch=False)
    with caplog.at_level(logging.INFO):
        ckpt.recover_if_possible()
    assert f"Recovering the intra-epoch checkpoint {saved.path} (step 77, saved " in caplog.text


# ---------------------------------------------------------------------------
# Resuming mid-epoch: the epoch's metrics cover the whole epoch
# ---------------------------------------------------------------------------
def test_masked_accuracy_survives_an_intra_epoch_restart(tmp_path):
    brain = tiny_brain(tmp_path)
    batch = batch_of([torch.randn(16000) * 0.1, torch.randn(12000) * 0.1])
    for _ in range(3):
        brain.step += 1
        brain.fit_batch(batch)
    before = (brain.acc_sum, brain.acc_count)
    assert before[1] > 0
    brain.checkpointer.save_checkpoint(end_of_epoch=False)  # as a mid-epoch save

    resumed = tiny_brain(tmp_path)  # a new process: recovers in on_fit_start
    assert resumed.step == 3
    assert (resumed.acc_sum, resumed.acc_count) == before
    # a new epoch (after an end-of-epoch checkpoint) starts from zero
    resumed.checkpointer.save_checkpoint(end_of_epoch=True)
    fresh = tiny_brain(tmp_path)
    assert (fresh.acc_sum, fresh.acc_count) == (0.0, 0)


def test_probe_error_statistics_survive_an_intra_epoch_restart(tmp_path):
    from functools import partial

    from speechbrain.nnet.losses import classification_error
    from speechbrain.utils.metric_stats import MetricStats

    from lobes.brains.probing import ProbeBrain

    def probe():
        checkpointer = AtomicCheckpointer(tmp_path, {"model": torch.nn.Linear(2, 2)})
        brain = ProbeBrain(modules={}, hparams={}, run_opts={"device": "cpu"},
                           checkpointer=checkpointer)
        checkpointer.recover_if_possible()
        # as the recipes' on_stage_start (error_stats in their YAMLs)
        brain.error_metrics = MetricStats(metric=partial(classification_error, reduction="batch"))
        brain.restore_train_stats()
        return brain

    brain = probe()
    scores = torch.log_softmax(torch.randn(4, 1, 3), dim=-1)
    brain.error_metrics.append(["a", "b", "c", "d"], scores, torch.tensor([[0], [1], [2], [0]]))
    expected = brain.error_metrics.summarize("average")
    brain.checkpointer.save_checkpoint(end_of_epoch=False)  # as a mid-epoch save
    resumed = probe()
    assert resumed.error_metrics.ids == ["a", "b", "c", "d"]
    assert resumed.error_metrics.summarize("average") == pytest.approx(expected)


# ---------------------------------------------------------------------------
# NaN in the features
# ---------------------------------------------------------------------------
def test_non_finite_features_are_named_before_the_statistics_update(tmp_path, monkeypatch):
    brain = tiny_brain(tmp_path)
    batch = batch_of([torch.randn(16000) * 0.1, torch.randn(12000) * 0.1])
    brain.fit_batch(batch)  # the normaliser has statistics
    norm = brain.modules.normalize
    mean, count = norm.glob_mean.clone(), norm.count
    fbank = brain.hparams.compute_features

    def nan_features(wavs):
        feats = fbank(wavs)
        feats[1, 3, 0] = float("nan")
        return feats

    monkeypatch.setattr(brain.hparams, "compute_features", nan_features)
    with pytest.raises(ValueError, match=r"Non-finite features .* \['u1'\].*Remove them"):
        brain.fit_batch(batch)
    assert norm.count == count and torch.equal(norm.glob_mean, mean)


# ---------------------------------------------------------------------------
# torchrun on a machine without GPU
# ---------------------------------------------------------------------------
def test_torchrun_without_gpus_defaults_to_gloo_on_cpu():
    from lobes.recipe import distributed_run_opts, parse_arguments

    torchrun = {"RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    _, run_opts, _ = parse_arguments(["x.yaml"])
    opts = distributed_run_opts(run_opts, torchrun, n_gpus=0)
    assert (opts["distributed_backend"], opts["device"]) == ("gloo", "cpu")
    # SpeechBrain's Brain uses only the options marked as given
    assert {"distributed_backend", "device"} <= opts.overridden_args
    _, explicit, _ = parse_arguments(["x.yaml", "--distributed_backend=nccl"])
    with pytest.raises(ValueError, match="--distributed_backend=gloo --device=cpu"):
        distributed_run_opts(explicit, torchrun, n_gpus=0)
    _, cuda, _ = parse_arguments(["x.yaml", "--device=cuda:0"])
    with pytest.raises(ValueError, match="no GPU.*--device=cpu"):
        distributed_run_opts(cuda, torchrun, n_gpus=0)
    assert distributed_run_opts(run_opts, torchrun, n_gpus=2) is run_opts  # NCCL on GPUs
    assert distributed_run_opts(run_opts, {}, n_gpus=0) is run_opts  # not torchrun


def test_torchrun_two_cpu_processes_start(tmp_path):
    """Two real torchrun processes on this (GPU-less) machine initialise
    their process group with the default options."""
    if torch.cuda.is_available():
        pytest.skip("the machine has a GPU")
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys, torch, speechbrain as sb\n"
        "from lobes.recipe import parse_arguments\n"
        "_, run_opts, _ = parse_arguments(sys.argv[1:])\n"
        "sb.utils.distributed.ddp_init_group(run_opts)\n"
        "t = torch.ones(1)\n"
        "torch.distributed.all_reduce(t)\n"
        # one write per line: two ranks' print() pieces interleave on a shared pipe
        "sys.stdout.write(f\"rank {torch.distributed.get_rank()} {run_opts['distributed_backend']} {int(t)}\\n\")\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc_per_node=2", str(script), "x.yaml"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0 gloo 2" in proc.stdout and "rank 1 gloo 2" in proc.stdout
