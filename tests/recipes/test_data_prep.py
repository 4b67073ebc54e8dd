"""The demo corpora (tools/demo_corpus.py) and the real data preparation
scripts (LibriSpeech, LibriLight) run on them."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
for folder in ("tools", "recipes/LibriLight/self-supervised-learning/BEST-RQ-linear"):
    if str(REPO / folder) not in sys.path:
        sys.path.insert(0, str(REPO / folder))

import demo_corpus  # noqa: E402
from demo_corpus import SAMPLE_RATE, make_demo_corpus  # noqa: E402
from librilight_prepare import prepare_librilight, segment_boundaries  # noqa: E402

from lobes.dataio.librispeech_prepare import prepare_librispeech  # noqa: E402

LS_SPLITS = list(demo_corpus.LIBRISPEECH_SPLITS)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Both demo corpora, made once per session in a fresh temporary folder
    (so the generator itself is tested; other tests use the cached copy of
    ``demo_corpus.ensure_demo_corpus``)."""
    out = tmp_path_factory.mktemp("demo_a")
    return make_demo_corpus(out, seed=0)


def read_trans(split_dir):
    lines = {}
    for trans in Path(split_dir).rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            lines[utt] = (trans, text)
    return lines


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def copy_split(corpus, tmp_path, split="dev-clean"):
    data = tmp_path / "LibriSpeech"
    shutil.copytree(corpus["librispeech"] / split, data / split)
    return data


# ---------------------------------------------------------------------------
# The demo corpus
# ---------------------------------------------------------------------------

def test_librispeech_layout(corpus):
    root = corpus["librispeech"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(LS_SPLITS)
    assert (root / ".demo_complete").exists()
    speakers_txt = [l for l in (root / "SPEAKERS.TXT").read_text().splitlines() if not l.startswith(";")]
    table = {}
    for line in speakers_txt:
        spk, sex, subset, minutes, name = [f.strip() for f in line.split("|")]
        assert sex in ("M", "F") and float(minutes) > 0 and name
        table[spk] = subset
    seen_speakers = {}
    words = set()
    total = 0.0
    for split in LS_SPLITS:
        trans = read_trans(root / split)
        flacs = sorted((root / split).rglob("*.flac"))
        assert {f.stem for f in flacs} == set(trans), split
        spk_dirs = [p for p in (root / split).iterdir()]
        n_spk, n_chap, n_utt, lo, hi = demo_corpus.LIBRISPEECH_SPLITS[split]
        assert len(spk_dirs) == n_spk
        for spk_dir in spk_dirs:
            assert spk_dir.name not in seen_speakers, "a speaker in two splits"
            seen_speakers[spk_dir.name] = split
            assert table[spk_dir.name] == split
            chapters = list(spk_dir.iterdir())
            assert len(chapters) == n_chap
            for chapter in chapters:
                prefix = f"{spk_dir.name}-{chapter.name}"
                assert (chapter / f"{prefix}.trans.txt").exists()
                chapter_flacs = sorted(chapter.glob("*.flac"))
                assert len(chapter_flacs) == n_utt
                for flac in chapter_flacs:
                    assert re.fullmatch(rf"{prefix}-\d{{4}}", flac.stem)
                    info = sf.info(str(flac))
                    assert info.samplerate == SAMPLE_RATE and info.channels == 1
                    assert info.format == "FLAC"
                    duration = info.frames / info.samplerate
                    assert lo <= duration <= hi, (flac, duration)
                    total += duration
                    text = trans[flac.stem][1]
                    assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", text), text
                    words.update(text.split())
        assert seen_speakers
    assert len(words) > 250, "the demo ASR task should have a non-trivial vocabulary"
    assert 25 * 60 < total < 45 * 60  # ~30 min of pretraining speech, ~5 of dev/test
    # the audio is speech, not silence
    samples, _ = sf.read(str(next((root / "dev-clean").rglob("*.flac"))))
    assert np.sqrt(np.mean(samples**2)) > 0.01


def test_librilight_layout(corpus):
    root = corpus["librilight"]
    flacs = sorted((root / "small").rglob("*.flac"))
    assert len(flacs) == 4
    for flac in flacs:
        rel = flac.relative_to(root / "small")
        assert len(rel.parts) == 3  # <speaker>/<book_dir>/<file>.flac
        meta = json.loads(flac.with_suffix(".json").read_text())
        assert meta["speaker"] == rel.parts[0]
        assert {"id", "title"} <= set(meta["book_meta"])
        assert meta["book_meta"]["id"] in rel.parts[1]
        samples, sr = sf.read(str(flac), dtype="float32")
        assert sr == SAMPLE_RATE and samples.ndim == 1
        assert 40 <= len(samples) / sr <= 90
        vad = meta["voice_activity"]
        assert len(vad) >= 5
        speech = np.zeros(len(samples), bool)
        prev_end = 0.0
        for start, end in vad:
            assert prev_end < start < end <= len(samples) / sr
            if prev_end > 0:
                assert 0.29 <= start - prev_end <= 1.51  # the silences between sentences
            prev_end = end
            a, b = int(round(start * sr)), int(round(end * sr))
            assert np.sqrt(np.mean(samples[a:b] ** 2)) > 0.01
            speech[max(0, a - 17):b + 17] = True  # VAD is to the ms
        assert np.abs(samples[~speech]).max() < 1e-3, "audio outside voice activity"


def test_deterministic_and_idempotent(corpus, tmp_path):
    again = make_demo_corpus(tmp_path, seed=0)
    for task in ("librispeech", "librilight"):
        a, b = corpus[task], again[task]
        files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert files_a == files_b
        for rel in files_a:
            if rel.suffix == ".flac":
                assert sf.info(str(a / rel)).frames == sf.info(str(b / rel)).frames, rel
            else:
                assert (a / rel).read_text() == (b / rel).read_text(), rel
    # a finished corpus is not made again
    before = {p: p.stat().st_mtime_ns for p in again["librispeech"].rglob("*.flac")}
    make_demo_corpus(tmp_path, seed=0)
    assert before == {p: p.stat().st_mtime_ns for p in again["librispeech"].rglob("*.flac")}
    # another seed: another corpus
    metas_0 = sorted(p.read_text() for p in again["librilight"].rglob("*.json"))
    other = make_demo_corpus(tmp_path / "seed1", ["librilight"], seed=1)["librilight"]
    assert sorted(p.read_text() for p in other.rglob("*.json")) != metas_0


def test_demo_corpus_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown demo corpus"):
        make_demo_corpus(tmp_path, ["timit"])
    # never overwrites a folder that is not a demo corpus (e.g. the real data)
    (tmp_path / "LibriSpeech").mkdir()
    (tmp_path / "LibriSpeech" / "README.TXT").write_text("real data")
    with pytest.raises(FileExistsError, match="not a demo corpus"):
        make_demo_corpus(tmp_path, ["librispeech"])
    # espeak-ng missing: say how to install it
    monkeypatch.setattr(demo_corpus.shutil, "which", lambda name: None)
    with pytest.raises(demo_corpus.SynthesisError, match="apt-get install espeak-ng"):
        make_demo_corpus(tmp_path / "new", ["librilight"])
    assert not (tmp_path / "new" / "LibriLight").exists()


def test_cli(corpus, capsys):
    out = corpus["librispeech"].parent
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/demo_corpus.py"), "--out", str(out), "--tasks", "librispeech,librilight"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "librispeech" in proc.stdout and "min of audio" in proc.stdout
    with pytest.raises(SystemExit) as exit_info:
        demo_corpus.main(["--out", str(out), "--tasks", "timit"])
    assert exit_info.value.code != 0
    assert "Unknown demo corpus" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# librispeech_prepare
# ---------------------------------------------------------------------------
def test_librispeech_prepare(corpus, tmp_path):
    root = corpus["librispeech"]
    out = tmp_path / "prep"
    prepare_librispeech(
        root, out, tr_splits=["train-clean-100"], dev_splits=["dev-clean"],
        te_splits=["test-clean", "test-other"],
        merge_lst=["train-clean-100", "dev-clean"], merge_name="train.csv",
    )
    n_rows = {}
    for split in ["train-clean-100", "dev-clean", "test-clean", "test-other"]:
        rows = read_csv(out / f"{split}.csv")
        assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "wrd"]
        trans = read_trans(root / split)
        assert sorted(r["ID"] for r in rows) == sorted(trans)
        for r in rows:
            wav = Path(r["wav"])
            assert wav.is_absolute() and wav.exists() and wav.stem == r["ID"]
            info = sf.info(r["wav"])
            assert abs(float(r["duration"]) - info.frames / info.samplerate) < 1e-4
            assert r["spk_id"] == r["ID"].split("-")[0] == wav.parent.parent.name
            assert r["wrd"] == trans[r["ID"]][1]
        n_rows[split] = len(rows)
    merged = read_csv(out / "train.csv")
    assert len(merged) == n_rows["train-clean-100"] + n_rows["dev-clean"]
    assert merged == read_csv(out / "train-clean-100.csv") + read_csv(out / "dev-clean.csv")

    # CSVs exist: skipped (nothing is rewritten), also with the parent folder
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.csv")}
    prepare_librispeech(
        root.parent, out, tr_splits=["train-clean-100"], dev_splits=["dev-clean"],
        merge_lst=["train-clean-100", "dev-clean"], merge_name="train.csv",
    )
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("*.csv")}
    # skip_prep does not even look at the data
    prepare_librispeech(tmp_path / "nowhere", out, dev_splits=["dev-clean"], skip_prep=True)

    # other options: the CSV is made again
    prepare_librispeech(root, out, dev_splits=["dev-clean"], min_duration=4.0)
    rows = read_csv(out / "dev-clean.csv")
    assert rows and all(float(r["duration"]) >= 4.0 for r in rows)
    assert len(rows) < n_rows["dev-clean"]
    prepare_librispeech(root, out, dev_splits=["dev-clean"], select_n_sentences=4)
    assert len(read_csv(out / "dev-clean.csv")) == 4


def test_librispeech_prepare_errors(corpus, tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as err:
        prepare_librispeech(missing, tmp_path / "out", dev_splits=["dev-clean"])
    assert "openslr.org/12" in str(err.value)

    data = copy_split(corpus, tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(data / "dev-other"))):
        prepare_librispeech(data, tmp_path / "out", dev_splits=["dev-other"])
    with pytest.raises(FileNotFoundError, match="Cannot merge test-clean"):
        prepare_librispeech(data, tmp_path / "out", dev_splits=["dev-clean"],
                            merge_lst=["test-clean"], merge_name="train.csv")

    (data / "empty-split" / "1" / "2").mkdir(parents=True)
    with pytest.raises(ValueError, match="No .flac file under .*empty-split"):
        prepare_librispeech(data, tmp_path / "out2", dev_splits=["empty-split"])

    # a corrupt (garbage bytes) audio file
    flacs = sorted((data / "dev-clean").rglob("*.flac"))
    corrupt = flacs[3]
    corrupt.write_bytes(os.urandom(3000))
    with pytest.raises(ValueError, match=f"Cannot read audio file {re.escape(str(corrupt))}"):
        prepare_librispeech(data, tmp_path / "out3", dev_splits=["dev-clean"])
    assert not (tmp_path / "out3" / "dev-clean.csv").exists()
    corrupt.unlink()

    # an audio file without transcript line
    orphan = flacs[5]
    trans = next(orphan.parent.glob("*.trans.txt"))
    lines = [l for l in trans.read_text().splitlines() if not l.startswith(orphan.stem + " ")]
    trans.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(orphan))} has no transcript"):
        prepare_librispeech(data, tmp_path / "out4", dev_splits=["dev-clean"])


# ---------------------------------------------------------------------------
# librilight_prepare
# ---------------------------------------------------------------------------
def check_segments(rows, max_len, min_len):
    for r in rows:
        start, stop = int(r["start"]), int(r["stop"])
        assert 0 <= start < stop
        assert min_len * SAMPLE_RATE - 1 <= stop - start <= max_len * SAMPLE_RATE
        assert abs(float(r["duration"]) - (stop - start) / SAMPLE_RATE) < 1e-4


def test_librilight_prepare(corpus, tmp_path):
    from speechbrain.dataio.dataio import read_audio

    root = corpus["librilight"]
    out = tmp_path / "prep"
    prepare_librilight(root, out, splits=["small"], max_segment_duration=20.0, min_segment_duration=2.0)
    rows = read_csv(out / "train.csv")
    assert list(rows[0]) == ["ID", "duration", "wav", "start", "stop", "spk_id"]
    assert len({r["ID"] for r in rows}) == len(rows)
    check_segments(rows, 20.0, 2.0)
    by_file = {}
    for r in rows:
        by_file.setdefault(r["wav"], []).append(r)
    assert len(by_file) == 4
    for wav, file_rows in by_file.items():
        meta = json.loads(Path(wav).with_suffix(".json").read_text())
        assert all(r["spk_id"] == meta["speaker"] for r in file_rows)
        onsets = [int(round(s * SAMPLE_RATE)) for s, _ in meta["voice_activity"]]
        offsets = [int(round(e * SAMPLE_RATE)) for _, e in meta["voice_activity"]]
        covered = 0
        for r in file_rows:  # each segment = whole consecutive VAD segments
            i, j = onsets.index(int(r["start"])), offsets.index(int(r["stop"]))
            assert i <= j
            covered += j - i + 1
        assert covered == len(onsets), "every VAD segment in exactly one segment"
        assert len(file_rows) >= 3  # 40-90 s files in <= 20 s segments
    # read_audio reads exactly the segment
    for r in rows[:3]:
        sig = read_audio({"file": r["wav"], "start": int(r["start"]), "stop": int(r["stop"])})
        assert sig.shape == (int(r["stop"]) - int(r["start"]),)
        assert sig.abs().max() > 0.05
    # the BEST-RQ data pipeline takes the CSV as is
    from speechbrain.dataio.dataset import DynamicItemDataset

    data = DynamicItemDataset.from_csv(str(out / "train.csv"))
    assert len(data) == len(rows)

    # same options: skipped; other options: made again
    mtime = (out / "train.csv").stat().st_mtime_ns
    prepare_librilight(root, out, splits=["small"], max_segment_duration=20.0, min_segment_duration=2.0)
    assert (out / "train.csv").stat().st_mtime_ns == mtime
    prepare_librilight(root, out, splits=["small"], max_segment_duration=10.0, min_segment_duration=1.0)
    rows10 = read_csv(out / "train.csv")
    check_segments(rows10, 10.0, 1.0)
    assert len(rows10) > len(rows)


def test_librilight_fallbacks_and_long_vad(corpus, tmp_path):
    data = tmp_path / "librilight"
    shutil.copytree(corpus["librilight"] / "small", data / "small")
    jsons = sorted((data / "small").rglob("*.json"))
    # no json: equal windows over the whole file
    no_json = jsons[0].with_suffix(".flac")
    jsons[0].unlink()
    # one VAD segment longer than max_segment_duration: cut into equal parts
    meta = json.loads(jsons[1].read_text())
    long_flac = jsons[1].with_suffix(".flac")
    frames = sf.info(str(long_flac)).frames
    meta["voice_activity"] = [[0.0, frames / SAMPLE_RATE]]
    jsons[1].write_text(json.dumps(meta))
    prepare_librilight(data, tmp_path / "out", max_segment_duration=15.0, min_segment_duration=2.0)
    rows = read_csv(tmp_path / "out" / "train.csv")
    check_segments(rows, 15.0, 2.0)
    for flac in (no_json, long_flac):
        spans = sorted((int(r["start"]), int(r["stop"])) for r in rows if r["wav"] == str(flac))
        assert spans[0][0] == 0 and spans[-1][1] == sf.info(str(flac)).frames
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "contiguous windows"
        lengths = [b - a for a, b in spans]
        assert max(lengths) - min(lengths) <= 2, "equal windows"
    assert {r["spk_id"] for r in rows if r["wav"] == str(no_json)} == {no_json.parts[-3]}
    # segment_boundaries drops what is too short
    segments, dropped = segment_boundaries([[0.0, 1.0], [5.0, 9.0], [30.0, 30.5]], 40.0, 10.0, 2.0)
    assert segments == [(5.0, 9.0)] and dropped == 2 or segments == [(0.0, 9.0)]


def test_librilight_prepare_errors(corpus, tmp_path):
    missing = tmp_path / "no_librilight"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as err:
        prepare_librilight(missing, tmp_path / "out")
    assert "libri-light" in str(err.value)
    data = tmp_path / "librilight"
    shutil.copytree(corpus["librilight"] / "small", data / "small")
    with pytest.raises(FileNotFoundError, match=re.escape(str(data / "medium"))):
        prepare_librilight(data, tmp_path / "out", splits=["small", "medium"])
    flacs = sorted((data / "small").rglob("*.flac"))
    bad_json = flacs[0].with_suffix(".json")
    bad_json.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(bad_json))):
        prepare_librilight(data, tmp_path / "out")
    bad_json.unlink()
    flacs[1].write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match=f"Cannot read audio file {re.escape(str(flacs[1]))}"):
        prepare_librilight(data, tmp_path / "out")
    assert not (tmp_path / "out" / "train.csv").exists()


# ---------------------------------------------------------------------------
# The LibriLight recipe end to end on the (cached) demo corpora
# ---------------------------------------------------------------------------
def test_librilight_pretraining_recipe_runs(demo_data, tmp_path):
    from conftest import run_recipe
    from demo_overrides import demo_overrides

    recipe = REPO / "recipes/LibriLight/self-supervised-learning/BEST-RQ-linear"
    out = tmp_path / "ll"
    run_recipe(recipe, [
        "hparams/bestrq_summarymixing.yaml",
        f"--data_folder={demo_data / 'LibriLight'}",
        f"--valid_data_folder={demo_data / 'LibriSpeech'}",
        f"--output_folder={out}",
        "--train_splits=[small]",
        "--max_segment_duration=10.0",
        *[o for o in demo_overrides("summarymixing", epochs=1, layers=1) if not o.startswith("--train_splits")],
    ])
    rows = read_csv(out / "train.csv")
    check_segments(rows, 10.0, 1.0)
    assert read_csv(out / "dev-clean.csv")
    assert sorted((out / "save").glob("CKPT+*"))
    assert "valid loss" in (out / "train_log.txt").read_text()
