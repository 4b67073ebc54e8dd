"""Crashes while saving, NaN losses and bad audio are handled, not silent."""

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from conftest import REPO
from demo_overrides import demo_overrides
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import mark_as_saver, register_checkpoint_hooks

from lobes.pretraining import BestRQBrain
from lobes.checkpoint import AtomicCheckpointer
from lobes.dataio import AudioReadError, load_audio

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
