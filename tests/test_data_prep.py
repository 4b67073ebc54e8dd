"""Demo corpora and the real preparation scripts run on them."""

import csv
import importlib.util
import json
import sys

import pytest
import soundfile as sf
from conftest import REPO, run_recipe
from demo_overrides import demo_overrides

from lobes.dataio import load_audio


def load_module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


librispeech = load_module(REPO / "recipes/LibriSpeech/librispeech_prepare.py")
LL_RECIPE = REPO / "recipes/LibriLight/self-supervised-learning/BEST-RQ"
librilight = load_module(LL_RECIPE / "librilight_prepare.py")


def test_demo_librispeech_has_the_real_layout(demo_data):
    root = demo_data / "LibriSpeech"
    assert (root / "SPEAKERS.TXT").exists()
    for split in ("train-clean-100", "dev-clean", "test-clean", "test-other"):
        flacs = sorted((root / split).glob("*/*/*.flac"))
        assert flacs, split
        for flac in flacs[:5]:
            spk, chapter, _ = flac.stem.split("-")
            assert flac.parent.name == chapter and flac.parent.parent.name == spk
            trans = (flac.parent / f"{spk}-{chapter}.trans.txt").read_text()
            assert any(line.startswith(flac.stem + " ") for line in trans.splitlines())
            info = sf.info(str(flac))
            assert info.samplerate == 16000 and 1.5 < info.duration < 9


def test_demo_corpus_is_deterministic(tmp_path):
    from demo_corpus import make_librispeech_demo

    a = make_librispeech_demo(tmp_path / "a", seed=3)
    b = make_librispeech_demo(tmp_path / "b", seed=3)
    ta = sorted(p.read_text() for p in a.rglob("*.trans.txt"))
    tb = sorted(p.read_text() for p in b.rglob("*.trans.txt"))
    assert ta == tb
    fa = sorted(a.rglob("*.flac"))[:3]
    fb = sorted(b.rglob("*.flac"))[:3]
    assert [sf.info(str(f)).frames for f in fa] == [sf.info(str(f)).frames for f in fb]


def test_librispeech_prepare_writes_and_merges_manifests(demo_data, tmp_path):
    librispeech.prepare_librispeech(
        demo_data / "LibriSpeech", tmp_path, tr_splits=["train-clean-100"],
        dev_splits=["dev-clean"], merge_lst=["train-clean-100", "dev-clean"], merge_name="all.csv",
    )
    rows = list(csv.DictReader(open(tmp_path / "train-clean-100.csv")))
    assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "wrd"]
    assert len(rows) == len(list((demo_data / "LibriSpeech/train-clean-100").rglob("*.flac")))
    for row in rows[:3]:
        assert abs(float(row["duration"]) - sf.info(row["wav"]).duration) < 1e-3
        assert row["wrd"].isupper() and row["ID"].startswith(row["spk_id"] + "-")
    merged = list(csv.DictReader(open(tmp_path / "all.csv")))
    assert len(merged) == len(rows) + len(list(csv.DictReader(open(tmp_path / "dev-clean.csv"))))


def test_librispeech_prepare_errors_name_the_problem(demo_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*openslr"):
        librispeech.prepare_librispeech(tmp_path / "nowhere", tmp_path, dev_splits=["dev-clean"])
    with pytest.raises(FileNotFoundError, match="dev-other"):
        librispeech.prepare_librispeech(demo_data / "LibriSpeech", tmp_path, dev_splits=["dev-other"])
    # a corrupt file, and a file without transcript
    bad = tmp_path / "LibriSpeech/dev-clean/1/2"
    bad.mkdir(parents=True)
    (bad / "1-2-0000.flac").write_bytes(b"garbage" * 50)
    (bad / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
    with pytest.raises(ValueError, match="Cannot read audio file .*1-2-0000.flac"):
        librispeech.prepare_librispeech(tmp_path / "LibriSpeech", tmp_path / "o1", dev_splits=["dev-clean"])
    (bad / "1-2.trans.txt").write_text("1-2-0001 HELLO\n")
    with pytest.raises(ValueError, match="1-2-0000.flac has no transcript"):
        librispeech.prepare_librispeech(tmp_path / "LibriSpeech", tmp_path / "o2", dev_splits=["dev-clean"])


def test_librilight_prepare_cuts_at_voice_activity(demo_data, tmp_path):
    root = demo_data / "LibriLight"
    librilight.prepare_librilight(root, tmp_path, max_segment_duration=12.0, min_segment_duration=1.0)
    rows = list(csv.DictReader(open(tmp_path / "train.csv")))
    assert list(rows[0]) == ["ID", "duration", "wav", "start", "stop", "spk_id"]
    starts_of_speech = {}
    for meta in root.rglob("*.json"):
        vad = json.loads(meta.read_text())["voice_activity"]
        starts_of_speech[str(meta.with_suffix(".flac").resolve())] = {round(s * 16000) for s, _ in vad}
    for row in rows:
        assert float(row["duration"]) <= 12.0
        # a segment starts where speech starts (unless a long interval was split)
        assert any(abs(int(row["start"]) - s) <= 1 for s in starts_of_speech[row["wav"]])
        sig = load_audio({"file": row["wav"], "start": row["start"], "stop": row["stop"]})
        assert sig.shape[0] == int(row["stop"]) - int(row["start"])
    with pytest.raises(FileNotFoundError, match="libri-light"):
        librilight.prepare_librilight(tmp_path / "nowhere", tmp_path / "x")


def test_librilight_pretraining_recipe_runs(demo_data, tmp_path):
    out = tmp_path / "ll"
    run_recipe(LL_RECIPE, [
        "hparams/bestrq_summarymixing.yaml",
        f"--data_folder={demo_data / 'LibriLight'}",
        f"--valid_data_folder={demo_data / 'LibriSpeech'}",
        f"--output_folder={out}",
        "--train_splits=[small]",
        "--max_segment_duration=10.0",
        *[o for o in demo_overrides("summarymixing", epochs=1, layers=1) if not o.startswith("--train_splits")],
    ])
    assert sorted((out / "save").glob("CKPT+*"))
    assert "valid loss" in (out / "train_log.txt").read_text()
