"""The MP3S Buckeye ASR recipe: MP3S's segmentation rules, preparation of
the demo Buckeye (speaker zips as downloaded, or extracted tracks), its
errors, and end to end (greedy and beam-search WER)."""

import csv
import json
import re
import shutil

import pytest
import soundfile as sf
from conftest import PAPER_MIXERS, REPO, load_script, run_recipe

from lobes.dataio.audio import load_audio

RECIPE = REPO / "recipes/Buckeye/ASR/MP3S"
TINY_PROBES = {
    "bilstm_ctc": ["--lstm_hidden=32"],
    "contextnet": [
        "--contextnet_num_blocks=2",
        "--contextnet_num_layers=1",
        "--contextnet_conv_channels=[32, 32]",
        "--contextnet_strides=[1, 1]",
        "--contextnet_out_channels=32",
    ],
}
SPLIT_SPEAKERS = {
    "train": {"s01", "s02", "s03", "s04"},
    "dev": {"s36", "s37"},
    "test": {"s38", "s39", "s40"},
}


@pytest.fixture(scope="module")
def prep():
    return load_script(RECIPE / "buckeye_prepare.py", "buckeye_prepare_under_test")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def copy_zips(demo_data, dest, skip=()):
    """The demo speaker zips (as downloaded) in a fresh folder."""
    dest.mkdir(parents=True)
    for path in sorted((demo_data / "Buckeye").glob("s??.zip")):
        if path.stem not in skip:
            shutil.copy(path, dest / path.name)
    return dest


def probe_args(hparams, mixer, pretrained, data, out, epochs=1):
    """Command line of a demo-size Buckeye probe run on ``pretrained``
    (tracks extracted into the output folder, not into the shared corpus)."""
    return [
        f"hparams/{hparams}.yaml",
        f"--data_folder={data}",
        f"--extract_folder={out / 'tracks'}",
        f"--pretrained_path={pretrained / 'save'}",
        f"--output_folder={out}",
        f"--number_of_epochs={epochs}",
        "--batch_size=8",
        "--test_batch_size=8",
        "--test_beam_search={beam_size: 8}",
        *TINY_PROBES[hparams],
    ]


# ---------------------------------------------------------------------------
# MP3S's segmentation
# ---------------------------------------------------------------------------
def test_read_words(prep, tmp_path):
    text = (
        "signal s0101a\ntype 0\ncolor 121\ncomment | x\nfont x\nseparator ;\nnfields 4\n#\n"
        "    0.071  122 {B_TRANS}; {B_TRANS}; {B_TRANS}; null\n"
        "    1.000  122 <SIL>; <SIL>; <SIL>; null\n"
        "\n"
        "    1.400  122 i'm; ay m; ah m; PRP\n"
        "    1.900  122 <CUTOFF-ba=ball>; b ao; b ao; null\n"
        "    2.000  122\n"
        "   12.500  122 {E_TRANS}\n"
    )
    assert prep.read_words(text) == [
        (0.071, "{B_TRANS}"), (1.0, "<SIL>"), (1.4, "i'm"),
        (1.9, "<CUTOFF-ba=ball>"), (12.5, "{E_TRANS}"),
    ]
    with pytest.raises(ValueError, match="s0101a.words: no header line '#'"):
        prep.read_words("signal s0101a\n 1.0 122 hi;\n", "s0101a.words")
    with pytest.raises(ValueError, match=r"x.words, line 3: 'one 122 hi; h ay' has no time"):
        prep.read_words("h\n#\none 122 hi; h ay\n", "x.words")


def test_segmentation_rules(prep):
    """Each rule of MP3S's script, on a hand-made track (times are ends)."""
    entries = [
        (0.30, "{B_TRANS}"),  # skipped (MP3S reads from the 2nd entry on)
        (0.50, "<SIL>"),
        # 3 words, 0.5-2.0 s, closed by a 0.6 s silence: 2.1 s > 2 s with the
        # closing break, so kept (MP3S counts the break), spanning 0.5-2.0
        (1.00, "so"), (1.50, "we"), (2.00, "went"), (2.60, "<SIL>"),
        # 4 words of 2.6 s closed by "uh": kept
        (3.20, "um"), (4.00, "down"), (4.80, "the"), (5.20, "road"), (5.40, "uh"),
        # 2 words, long: left out (fewer than 3 words)
        (7.00, "yeah"), (8.00, "right"), (8.50, "<IVER>"),
        # 3 quick words + short pause (1.0 s in all): left out
        (8.80, "i"), (9.10, "know"), (9.30, "that"), (9.50, "<SIL>"),
        # any entry with "<" breaks: a noise in the middle of a sentence
        (10.6, "and"), (11.4, "then"), (11.6, "<VOCNOISE>"), (12.6, "we"), (13.8, "left"),
        (14.0, "<CUTOFF-ho=home>"),
        # a transcription mark ends the candidate without keeping it
        (15.0, "it"), (16.0, "was"), (17.0, "nice"), (17.2, "{E_TRANS}"),
        # words that no break closes are not kept
        (18.0, "after"), (19.0, "the"), (20.0, "end"),
    ]
    assert prep.segment_words(entries) == [
        (0.5, 2.0, "SO WE WENT"),
        (2.6, 5.2, "UM DOWN THE ROAD"),
    ]
    # the thresholds are arguments
    assert [s[2] for s in prep.segment_words(entries, min_duration=0.5, min_words=2)] == [
        "SO WE WENT", "UM DOWN THE ROAD", "YEAH RIGHT", "I KNOW THAT", "AND THEN", "WE LEFT",
    ]
    assert prep.segment_words([]) == []


# ---------------------------------------------------------------------------
# Preparation on the demo corpus
# ---------------------------------------------------------------------------
def test_prepare_demo_zips(demo_data, tmp_path, prep):
    data = copy_zips(demo_data, tmp_path / "buckeye")
    out, tracks = tmp_path / "out", tmp_path / "tracks"
    prep.prepare_buckeye(data, out, extract_folder=tracks)
    assert sorted(p.name for p in tracks.iterdir()) == sorted(
        f"{t}.{ext}" for t in json.loads((demo_data / "Buckeye/.demo_segments.json").read_text())
        for ext in ("wav", "words")
    )
    # what the generator said, and which runs MP3S's rules keep
    manifest = json.loads((demo_data / "Buckeye/.demo_segments.json").read_text())
    rows = {}
    for split, speakers in SPLIT_SPEAKERS.items():
        with open(out / f"{split}.csv", newline="", encoding="utf-8") as fin:
            assert next(csv.reader(fin)) == prep.HEADER
        split_rows = read_csv(out / f"{split}.csv")
        assert split_rows, split
        assert {r["spk_id"] for r in split_rows} == speakers, split
        for row in split_rows:
            assert row["ID"][:3] == row["spk_id"]
            rows.setdefault(row["ID"].rsplit("_", 1)[0], []).append(row)
    assert set(rows) == {t for t, runs in manifest.items() if any(r["kept"] for r in runs)}
    short = 0
    for track, runs in manifest.items():
        kept = [r for r in runs if r["kept"]]
        got = rows.get(track, [])
        assert [r["wrd"] for r in got] == [k["text"] for k in kept], track
        assert [r["ID"] for r in got] == [f"{track}_{i}" for i in range(len(kept))]
        for row, run in zip(got, kept):
            assert row["wav"] == str((tracks / f"{track}.wav").resolve())
            assert abs(int(row["start"]) / 16000 - run["start"]) < 1e-3, (row, run)
            assert abs(int(row["stop"]) / 16000 - run["end"]) < 1e-3, (row, run)
            assert abs(float(row["duration"]) - (run["end"] - run["start"])) < 2e-3
            assert re.fullmatch(r"[A-Z']+( [A-Z']+){2,}", row["wrd"]), row["wrd"]
            short += float(row["duration"]) < 2.0  # kept thanks to their closing pause
    assert short > 0  # the demo exercises MP3S's way of counting the pause
    dropped = [r for runs in manifest.values() for r in runs if not r["kept"]]
    assert any(len(r["text"].split()) < 3 for r in dropped)
    assert any(len(r["text"].split()) >= 3 for r in dropped)
    counts = {s: len(read_csv(out / f"{s}.csv")) for s in SPLIT_SPEAKERS}
    assert counts["train"] >= 60 and counts["dev"] >= 8 and counts["test"] >= 15, counts
    # an utterance is the right piece of the track
    row = read_csv(out / "dev.csv")[0]
    sig = load_audio({"file": row["wav"], "start": int(row["start"]), "stop": int(row["stop"])})
    assert sig.shape[0] == int(row["stop"]) - int(row["start"])
    assert sig.abs().max() > 0.05
    assert sf.info(row["wav"]).samplerate == 16000
    # made once: a second call leaves the CSVs alone
    stamp = (out / "train.csv").stat().st_mtime_ns
    prep.prepare_buckeye(data, out, extract_folder=tracks)
    assert (out / "train.csv").stat().st_mtime_ns == stamp
    # other options: prepared again
    prep.prepare_buckeye(data, out, extract_folder=tracks, min_words=4)
    assert all(len(r["wrd"].split()) >= 4 for r in read_csv(out / "train.csv"))


def test_prepare_extracted_tracks(demo_data, tmp_path, prep):
    """Tracks already extracted (any sub-folders, no zip) give the same CSVs."""
    prep.prepare_buckeye(copy_zips(demo_data, tmp_path / "zips"), tmp_path / "a",
                         extract_folder=tmp_path / "flat")
    data = tmp_path / "extracted"
    for wav in (tmp_path / "flat").glob("*.wav"):
        folder = data / wav.stem[:3] / wav.stem
        folder.mkdir(parents=True)
        shutil.copy(wav, folder / wav.name)
        shutil.copy(wav.with_suffix(".words"), folder / f"{wav.stem}.words")
    prep.prepare_buckeye(data, tmp_path / "b")
    assert not list(data.rglob("*.zip"))
    for split in SPLIT_SPEAKERS:
        a, b = read_csv(tmp_path / "a" / f"{split}.csv"), read_csv(tmp_path / "b" / f"{split}.csv")
        assert [{**r, "wav": ""} for r in a] == [{**r, "wav": ""} for r in b]
        assert all(r["wav"].startswith(str(data.resolve())) for r in b)


def test_prepare_errors(demo_data, tmp_path, prep):
    with pytest.raises(FileNotFoundError, match="Buckeye data folder .*nowhere.* does not exist"):
        prep.prepare_buckeye(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No Buckeye speaker archive \(s01.zip"):
        prep.prepare_buckeye(tmp_path / "empty", tmp_path / "out")
    # an incomplete download: the MP3S test speakers are required
    data = copy_zips(demo_data, tmp_path / "partial", skip=("s38", "s40"))
    with pytest.raises(FileNotFoundError, match="test speakers s38, s40 are not in"):
        prep.prepare_buckeye(data, tmp_path / "out")
    assert not (tmp_path / "out" / "train.csv").exists()
    # an extracted alignment without its audio
    lonely = tmp_path / "lonely" / "s01"
    lonely.mkdir(parents=True)
    shutil.copy(data / "s0101a.words", lonely)
    with pytest.raises(FileNotFoundError, match=r"s0101a.words has no audio: .*s0101a.wav"):
        prep.prepare_buckeye(lonely.parent, tmp_path / "out")
    # a broken archive
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "s05.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"Cannot read the Buckeye archive .*s05.zip"):
        prep.prepare_buckeye(tmp_path / "bad", tmp_path / "out")


# ---------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------
def test_bilstm_ctc_end_to_end(demo_data, pretrained_demo, tmp_path):
    pretrained = pretrained_demo("summarymixing")
    out = tmp_path / "asr"
    run_recipe(
        RECIPE,
        probe_args("bilstm_ctc", "summarymixing", pretrained, demo_data / "Buckeye", out),
    )
    log = (out / "train_log.txt").read_text()
    assert re.search(r"valid WER: [\d.e+-]+, valid CER: [\d.e+-]+", log), log
    assert re.search(r"test set: test.*test WER: .*test CER: .*test WER_beam: .*test CER_beam: ", log), log
    for kind in ("greedy", "beam"):
        text = (out / f"wer_test_{kind}.txt").read_text()
        n_test = len(read_csv(out / "test.csv"))
        assert "%SER" in text and f"Scored {n_test} sentences" in text, text[:300]
    from speechbrain.dataio.encoder import CTCTextEncoder

    encoder = CTCTextEncoder()
    encoder.load(out / "save" / "label_encoder.txt")
    labels = [encoder.ind2lab[i] for i in range(len(encoder))]
    assert labels[0] == "<blank>" and "<unk>" in labels and " " in labels, labels
    assert set(labels) - {"<blank>", "<unk>", " ", "'"} <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    # the tracks were extracted where --extract_folder says
    assert len(list((out / "tracks").glob("s????[ab].wav"))) == 13


@pytest.mark.slow
@pytest.mark.parametrize("probe", sorted(TINY_PROBES))
@pytest.mark.parametrize("mixer", PAPER_MIXERS)
def test_every_mixer_and_probe(demo_data, pretrained_demo, tmp_path, mixer, probe):
    pretrained = pretrained_demo(mixer, epochs=1)
    out = tmp_path / "asr"
    run_recipe(RECIPE, probe_args(probe, mixer, pretrained, demo_data / "Buckeye", out))
    assert "%WER" in (out / "wer_test_greedy.txt").read_text()
    assert "test WER_beam" in (out / "train_log.txt").read_text()


@pytest.mark.slow
def test_runs_under_ddp(demo_data, pretrained_demo, tmp_path):
    """Two CPU ranks (torchrun, gloo): preparation and extraction on the main
    process, training, checkpoint and test; the WER files written once."""
    pretrained = pretrained_demo("summarymixing")
    out = tmp_path / "ddp"
    args = probe_args("bilstm_ctc", "summarymixing", pretrained, demo_data / "Buckeye", out)
    run_recipe(RECIPE, args, nproc=2, timeout=1200)
    assert "epoch: 1" in (out / "train_log.txt").read_text()
    assert "%WER" in (out / "wer_test_beam.txt").read_text()
