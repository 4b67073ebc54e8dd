"""The MP3S IEMOCAP emotion recipe: preparation of the speaker-independent
folds, one fold and the cross-validation driver end to end on the demo
corpus, and the refusal of a checkpoint of another mixer."""

import json
import re
import shutil

import pytest
from conftest import PAPER_MIXERS, REPO, load_script, run_recipe

RECIPE = REPO / "recipes/IEMOCAP/EmotionRecognition"
iemocap_prepare = load_script(RECIPE / "iemocap_prepare.py", "iemocap_prepare")
fold_speakers = iemocap_prepare.fold_speakers
prepare_iemocap = iemocap_prepare.prepare_iemocap

LOADERS = [
    "--train_dataloader_opts={batch_size: 4, shuffle: True, num_workers: 0}",
    "--valid_dataloader_opts={batch_size: 4, num_workers: 0}",
    "--test_dataloader_opts={batch_size: 4, num_workers: 0}",
]
TINY_ECAPA = ["--channels=[32, 32, 32, 32, 96]", "--emb_dim=16"]


def probe_args(demo_data, pretrained, out, mixer="summarymixing", probe_yaml="linear",
               epochs=1, extra=()):
    """Command line of a demo-size probe run on ``pretrained``."""
    return [
        f"hparams/{probe_yaml}.yaml",
        f"--pretrained_path={pretrained / 'save'}",
        f"--data_folder={demo_data / 'IEMOCAP_full_release'}",
        f"--experiment_folder={out}",
        f"--number_of_epochs={epochs}",
        *LOADERS,
        *(TINY_ECAPA if probe_yaml == "ecapa" else []),
        *extra,
    ]


def probe(demo_data, pretrained, out, check=True, **kwargs):
    return run_recipe(RECIPE, probe_args(demo_data, pretrained, out, **kwargs), check=check)


def test_prepare_folds(demo_data, tmp_path):
    data = demo_data / "IEMOCAP_full_release"
    prepare_iemocap(data, tmp_path, test_spk_id=6)
    splits = {s: json.loads((tmp_path / f"{s}.json").read_text()) for s in ("train", "valid", "test")}
    # speaker-independent: test = speaker 6 (Session3 male), valid = speaker 5 (Session3 female)
    assert {v["spk_id"] for v in splits["test"].values()} == {6}
    assert {v["spk_id"] for v in splits["valid"].values()} == {5}
    assert {v["spk_id"] for v in splits["train"].values()} == {1, 2, 3, 4, 7, 8, 9, 10}
    assert all(k.startswith("Ses03") and re.search(r"_M\d{3}$", k) for k in splits["test"])
    # 4 classes, exc merged into hap, fru/xxx dropped: 12 turns per speaker
    entries = [e for split in splits.values() for e in split.values()]
    assert {e["emo"] for e in entries} == {"neu", "hap", "sad", "ang"}
    assert len(entries) == 10 * 12 and len(splits["test"]) == 12
    first = next(iter(splits["test"].values()))
    assert first["wav"].endswith(".wav") and 1.0 < first["length"] < 4.0
    assert fold_speakers(1) == (1, 2) and fold_speakers(10) == (10, 9)
    # another fold re-prepares; the same fold is skipped
    stamp = (tmp_path / "test.json").stat().st_mtime_ns
    prepare_iemocap(data, tmp_path, test_spk_id=6)
    assert (tmp_path / "test.json").stat().st_mtime_ns == stamp
    prepare_iemocap(data, tmp_path, test_spk_id=1)
    assert {v["spk_id"] for v in json.loads((tmp_path / "test.json").read_text()).values()} == {1}


def add_dialog(root, session, dialog, turns):
    """Adds ``dialog`` to the IEMOCAP copy ``root``: one EmoEvaluation line
    per ``(turn suffix, label)`` (e.g. ``("F000", "ang")``), each turn's audio
    a copy of the first demo turn of that session."""
    sess = root / f"Session{session}"
    source = sorted((sess / "sentences/wav").rglob("*.wav"))[0]
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for k, (suffix, label) in enumerate(turns):
        turn = f"{dialog}_{suffix}"
        wav = sess / "sentences/wav" / dialog / f"{turn}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, wav)
        lines += [f"[{k}.0000 - {k}.9000]\t{turn}\t{label}\t[2.5000, 2.5000, 2.5000]",
                  "C-E1:\tNeutral;\t()", ""]
    (sess / "dialog/EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(lines))


def test_mp3s_speaker_assignment(demo_data, tmp_path):
    """``speaker_assignment: mp3s`` files turns as MP3S's load_session does:
    the female turns of the dialogs whose name ends in a letter
    (Ses03M_impro05a/05b/08b, Ses05M_script01_1b) go to the male speaker of
    the session (6, 10), everything else as by turn name; the default keeps
    each turn with its own speaker, so folds 5, 6, 9 and 10 differ."""
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(demo_data / "IEMOCAP_full_release", root)
    for dialog in ("Ses03M_impro05a", "Ses03M_impro05b", "Ses03M_impro08b"):
        add_dialog(root, 3, dialog, [("F000", "ang"), ("M001", "neu"), ("F002", "exc")])
    add_dialog(root, 5, "Ses05M_script01_1b", [("F000", "sad"), ("M001", "hap")])
    add_dialog(root, 2, "Ses02F_script02_1", [("F000", "neu"), ("M001", "sad")])
    ours = iemocap_prepare.collect_turns(root)
    mp3s = iemocap_prepare.collect_turns(root, "mp3s")
    moved = {t: (ours[t][2], mp3s[t][2]) for t in ours if ours[t] != mp3s[t]}
    assert moved == {
        **{f"Ses03M_{d}_{f}": (5, 6) for d in ("impro05a", "impro05b", "impro08b")
           for f in ("F000", "F002")},
        "Ses05M_script01_1b_F000": (9, 10),
    }
    assert all(re.search(r"_F\d{3}$", t) for t in moved)
    # MP3S's rule is right wherever the dialog name has no suffix letter
    assert ours["Ses02F_script02_1_F000"][2] == mp3s["Ses02F_script02_1_F000"][2] == 3
    # the folds: fold 5 tests on 6 more turns by turn name; fold 10 on one more with mp3s
    for assignment, fold, extra in (("turn_name", 5, 6), ("mp3s", 6, 9), ("mp3s", 10, 2)):
        out = tmp_path / f"{assignment}_{fold}"
        prepare_iemocap(root, out, test_spk_id=fold, speaker_assignment=assignment)
        test = json.loads((out / "test.json").read_text())
        assert len(test) == 12 + extra, (assignment, fold, sorted(test))
        assert {v["spk_id"] for v in test.values()} == {fold}
    # the recorded options include the assignment: switching re-prepares
    out = tmp_path / "mp3s_6"
    prepare_iemocap(root, out, test_spk_id=6)
    assert len(json.loads((out / "test.json").read_text())) == 12 + 3
    with pytest.raises(ValueError, match="speaker_assignment: 'MP3S'"):
        prepare_iemocap(root, out, test_spk_id=6, speaker_assignment="MP3S")


def test_prepare_errors(demo_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_iemocap(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="Session1"):
        prepare_iemocap(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="1..10"):
        prepare_iemocap(demo_data / "IEMOCAP_full_release", tmp_path / "out", test_spk_id=11)


def test_cross_validation_end_to_end(demo_data, pretrained_demo, tmp_path):
    """Linear probe, --test_spk_id=all over two folds of 1 epoch: each fold
    writes its test accuracy, the driver their mean."""
    out = tmp_path / "cv"
    proc = probe(demo_data, pretrained_demo("summarymixing"), out,
                 extra=["--test_spk_id=all", "--cv_folds=[4, 9]"])
    assert re.search(r"Fold 4: test accuracy [\d.]+% \(12 turns\)", proc.stdout)
    assert sorted(p.name for p in out.glob("fold_*")) == ["fold_4", "fold_9"]
    log = (out / "fold_4/train_log.txt").read_text().splitlines()
    assert log[0].startswith("epoch: 1") and "layer_weights" in log[0]
    assert "test accuracy" in log[-1]
    accs = [float((out / f"fold_{k}/test_accuracy.txt").read_text().split()[1]) for k in (4, 9)]
    assert all(0.0 <= a <= 1.0 for a in accs)
    result = (out / "cv_accuracy.txt").read_text()
    mean = float(re.search(r"over 2 folds: ([\d.]+)%", result).group(1))
    assert mean == pytest.approx(100 * sum(accs) / 2, abs=0.01)
    assert "Mean test accuracy over 2 folds" in proc.stdout
    # The folds run in one process; the second equals that fold run alone
    # (its own process): nothing of fold 4 carries over.
    alone = tmp_path / "alone"
    probe(demo_data, pretrained_demo("summarymixing"), alone, extra=["--test_spk_id=9"])
    assert (alone / "fold_9/train_log.txt").read_text() == (out / "fold_9/train_log.txt").read_text()
    assert "fold_4" not in (out / "fold_9/log.txt").read_text()


def test_other_mixer_checkpoint_refused(demo_data, pretrained_demo, tmp_path):
    proc = probe(demo_data, pretrained_demo("summarymixing"), tmp_path / "x",
                 extra=["--mixer=fastformer"], check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr  # SpeechBrain logs the traceback
    assert re.search(r"ValueError: .*holds a 'summarymixing' encoder, but mixer='fastformer' was asked for",
                     output), output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("probe_yaml", ["linear", "ecapa"])
@pytest.mark.parametrize("mixer", PAPER_MIXERS)
def test_every_mixer_and_probe(demo_data, pretrained_demo, tmp_path, mixer, probe_yaml):
    out = tmp_path / "iemocap"
    proc = probe(demo_data, pretrained_demo(mixer), out, mixer=mixer,
                 probe_yaml=probe_yaml, extra=["--test_spk_id=1"])
    assert "Fold 1: test accuracy" in proc.stdout
