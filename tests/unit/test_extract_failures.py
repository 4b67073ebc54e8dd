"""``python -m lobes.deploy.extract``: every per-file failure is reported
and skipped with ``--skip_errors``, audio too short for one frame is named,
and a run folder given as ``--model`` is told where its model folder is
(issue 21)."""

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO

from lobes.deploy.extract import main as extract_main
from lobes.deploy.inference import BestRQEncoder

MODEL = REPO / "tests/data/model_40517be"


def wav(path, seconds, seed=0):
    sf.write(path, np.random.RandomState(seed).randn(int(16000 * seconds)).astype("float32") * 0.1,
             16000)
    return path


def test_a_10_ms_file_is_named_and_skipped_and_later_files_are_processed(tmp_path, capsys):
    files = [wav(tmp_path / "a.wav", 1.0), wav(tmp_path / "tiny.wav", 0.01), wav(tmp_path / "c.wav", 1.0, 1)]
    rc = extract_main(["--model", str(MODEL), "--wav", *map(str, files),
                       "--out", str(tmp_path / "feats"), "--skip_errors"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"skipped {files[1]}: 10 ms of audio is too short for this encoder" in err
    assert "1 of 3 file(s) skipped" in err and "IndexError" not in err
    assert sorted(p.name for p in (tmp_path / "feats").iterdir()) == ["a.pt", "c.pt"]
    # without --skip_errors: one clear error naming the file, exit status 1
    assert extract_main(["--model", str(MODEL), "--wav", str(files[1]),
                         "--out", str(tmp_path / "one.pt")]) == 1
    assert f"error: {files[1]}: 10 ms of audio is too short" in capsys.readouterr().err


def test_any_other_failure_of_one_file_is_skipped(tmp_path, capsys, monkeypatch):
    files = [wav(tmp_path / "a.wav", 1.0), wav(tmp_path / "b.wav", 1.0, 1)]
    real = BestRQEncoder.encode_file

    def flaky(self, path, layer_weights=None):
        if str(path).endswith("a.wav"):
            raise RuntimeError("something odd in this file")
        return real(self, path, layer_weights)

    monkeypatch.setattr(BestRQEncoder, "encode_file", flaky)
    rc = extract_main(["--model", str(MODEL), "--wav", *map(str, files),
                       "--out", str(tmp_path / "feats"), "--skip_errors", "--allow_skipped"])
    assert rc == 0
    assert f"skipped {files[0]}: RuntimeError: something odd in this file" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "feats").iterdir()] == ["b.pt"]


def test_too_short_audio_is_refused_by_encode_batch_with_its_length():
    encoder = BestRQEncoder.from_hparams(source=str(MODEL), run_opts={"device": "cpu"})
    need = encoder.min_feature_frames()
    with pytest.raises(ValueError, match=rf"it needs at least {need} \({need * 10} ms of audio\)"):
        encoder.encode_batch(torch.randn(1, 160))
    assert encoder.encode_batch(torch.randn(1, 160 * need)).frames.tolist() == [1]


def run_folder(tmp_path, exported=True):
    run = tmp_path / "results" / "bestrq"
    (run / "save" / "CKPT+1").mkdir(parents=True)
    (run / "hyperparams.yaml").write_text(
        f"mixer: summarymixing\noutput_folder: {run}\nexport_folder: {run / 'encoder'}\n"
        "encoder: !apply:lobes.config.encoder_from_definition\n    mixer: summarymixing\n")
    if exported:
        shutil.copytree(MODEL, run / "encoder")
    return run


def test_a_run_folder_as_model_is_told_where_its_model_folder_is(tmp_path, capsys):
    run = run_folder(tmp_path)
    a = wav(tmp_path / "a.wav", 1.0)
    assert extract_main(["--model", str(run), "--wav", str(a), "--out", str(tmp_path / "a.pt")]) == 1
    err = capsys.readouterr().err
    assert f"{run} is a training run's folder, not a model folder: its model folder is {run / 'encoder'}" in err
    assert "KeyError" not in err
    assert extract_main(["--model", str(run / "encoder"), "--wav", str(a),
                         "--out", str(tmp_path / "a.pt")]) == 0
    shutil.rmtree(run / "encoder")
    with pytest.raises(FileNotFoundError, match=rf"not exported yet.*lobes.deploy.export --checkpoint {run / 'save'}"):
        BestRQEncoder.from_hparams(source=str(run))
