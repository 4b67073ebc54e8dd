"""The MP3S SLURP intent recipe: data preparation, end to end on the demo
SLURP, and a probe that learns on a pretrained demo encoder."""

import csv
import json
import re
import shutil

import pytest
import torch
from conftest import PAPER_MIXERS, PROBE_LAYERS, REPO, load_script, run_recipe

RECIPE = REPO / "recipes/SLURP/IntentClassification"
PROBES = ["linear", "bilstm"]


def _prepare_module():
    return load_script(RECIPE / "slurp_prepare.py", "slurp_prepare_under_test")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def probe_args(hparams, mixer, pretrained, data, out, epochs=1, extra=()):
    """Command line of a demo-size probe run on ``pretrained``."""
    return [
        f"hparams/{hparams}.yaml",
        f"--data_folder={data}",
        f"--pretrained_path={pretrained / 'save'}",
        f"--output_folder={out}",
        f"--number_of_epochs={epochs}",
        "--n_scenarios=4",
        *(["--lstm_hidden=32"] if hparams == "bilstm" else []),
        "--train_dataloader_opts={batch_size: 4, num_workers: 0}",
        "--valid_dataloader_opts={batch_size: 4}",
        "--test_dataloader_opts={batch_size: 4}",
        *extra,
    ]


def read_test_results(out):
    text = (out / "test_results.txt").read_text()
    acc = {k: float(v) for k, v in re.findall(r"(\w+) accuracy: ([\d.]+)", text)}
    return acc, text


# ---------------------------------------------------------------------------
# Data preparation
# ---------------------------------------------------------------------------
def test_prepare_demo_layout(demo_data, tmp_path):
    prep = _prepare_module()
    prep.prepare_slurp(demo_data / "SLURP", tmp_path)
    counts = {}
    for split in prep.SPLITS:
        path = tmp_path / f"{split}.csv"
        with open(path, newline="", encoding="utf-8") as fin:
            assert next(csv.reader(fin)) == prep.HEADER
        rows = read_csv(path)
        counts[split] = len(rows)
        entries = [
            json.loads(line)
            for line in (demo_data / "SLURP/dataset/slurp" / f"{split}.jsonl").open()
        ]
        assert len(rows) == sum(len(e["recordings"]) for e in entries)
        assert len({r["ID"] for r in rows}) == len(rows)
        for row in rows:
            assert row["intent"] == f"{row['scenario']}_{row['action']}"
            assert "slurp_real" in row["wav"] and "slurp_synth" not in row["wav"]
            assert float(row["duration"]) > 0.5
            semantics = json.loads(row["semantics"])
            assert semantics["scenario"] == row["scenario"]
            assert all(set(e) == {"type", "filler"} for e in semantics["entities"])
            assert row["transcript"]
    assert counts == {"train": 160, "devel": 40, "test": 40}
    train = read_csv(tmp_path / "train.csv")
    assert len({r["scenario"] for r in train}) == 4
    assert len({r["intent"] for r in train}) == 8
    # made once: a second call leaves the CSVs alone
    stamp = (tmp_path / "train.csv").stat().st_mtime_ns
    prep.prepare_slurp(demo_data / "SLURP", tmp_path)
    assert (tmp_path / "train.csv").stat().st_mtime_ns == stamp


def test_prepare_errors(demo_data, tmp_path):
    prep = _prepare_module()
    with pytest.raises(FileNotFoundError, match="SLURP data folder .*nowhere.* does not exist"):
        prep.prepare_slurp(tmp_path / "nowhere", tmp_path / "out")
    # annotations without the audio
    root = tmp_path / "slurp"
    shutil.copytree(demo_data / "SLURP/dataset", root / "dataset")
    with pytest.raises(FileNotFoundError, match="slurp_real"):
        prep.prepare_slurp(root, tmp_path / "out")
    (root / "audio/slurp_real").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="160 recordings listed in .*train.jsonl"):
        prep.prepare_slurp(root, tmp_path / "out", splits=["train"])
    (root / "dataset/slurp/devel.jsonl").write_text('{"slurp_id": 1, "sentence": "hi"}\n')
    with pytest.raises(ValueError, match="devel.jsonl, line 1: not a SLURP entry"):
        prep.prepare_slurp(root, tmp_path / "out", splits=["devel"])
    assert prep.parse_entities("at [time : five am] [date : today]") == [
        {"type": "time", "filler": "five am"},
        {"type": "date", "filler": "today"},
    ]


# ---------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------
def head_shapes(out):
    """Output sizes of the probe's heads in the last checkpoint (the linear
    probe's ``model`` holds only its heads)."""
    ckpt = sorted((out / "save").glob("CKPT+*"))[-1]
    state = torch.load(ckpt / "model.ckpt", map_location="cpu")
    return sorted(v.shape[0] for k, v in state.items() if k.endswith("weight"))


def test_linear_probe_end_to_end(demo_data, pretrained_demo, tmp_path):
    """Default (MP3S): one scenario head trained on the scenario loss only;
    no intent head, label list or accuracy."""
    pretrained = pretrained_demo("summarymixing")
    out = tmp_path / "probe"
    run_recipe(
        RECIPE,
        probe_args("linear", "summarymixing", pretrained, demo_data / "SLURP", out),
    )
    acc, text = read_test_results(out)
    assert set(acc) == {"scenario"}, text
    assert 0.0 <= acc["scenario"] <= 1.0
    log = (out / "train_log.txt").read_text()
    assert "valid scenario_accuracy" in log and "test scenario_accuracy" in log
    assert "intent" not in log and "layer_weights" in log
    assert (out / "save" / "scenario_encoder.txt").is_file()
    assert not (out / "save" / "intent_encoder.txt").exists()
    assert head_shapes(out) == [4]  # the 4 demo scenarios, nothing else trained


def test_devel_and_test_keep_every_recording(demo_data, tmp_path):
    """avoid_if_longer_than limits training only: devel and test are scored
    on every recording (as MP3S), whatever the limit."""
    prep = _prepare_module()
    prep.prepare_slurp(demo_data / "SLURP", tmp_path)
    train_py = load_script(RECIPE / "train.py", "slurp_train_under_test")
    durations = {split: [float(r["duration"]) for r in read_csv(tmp_path / f"{split}.csv")]
                 for split in prep.SPLITS}
    limit = sorted(durations["train"])[len(durations["train"]) // 2]  # the median
    assert max(durations["devel"]) > limit and max(durations["test"]) > limit
    hparams = {
        "train_csv": tmp_path / "train.csv", "valid_csv": tmp_path / "devel.csv",
        "test_csv": tmp_path / "test.csv", "save_folder": tmp_path / "save",
        "avoid_if_longer_than": limit, "sorting": "random", "sample_rate": 16000,
        "tasks": ["scenario"], "train_dataloader_opts": {},
    }
    (tmp_path / "save").mkdir()
    datasets, encoders = train_py.dataio_prepare(hparams)
    assert len(datasets["valid"]) == len(durations["devel"]) == 40
    assert len(datasets["test"]) == len(durations["test"]) == 40
    assert len(datasets["train"]) == sum(d <= limit for d in durations["train"]) < 160
    assert set(encoders) == {"scenario"} and len(encoders["scenario"]) == 4
    hparams["avoid_if_longer_than"] = None
    assert len(train_py.dataio_prepare(hparams)[0]["train"]) == 160
    with pytest.raises(ValueError, match=r"tasks: \['intent'\].*\[scenario\]"):
        train_py.check_tasks(["intent"])


def test_other_mixer_checkpoint_refused(demo_data, pretrained_demo, tmp_path):
    pretrained = pretrained_demo("summarymixing")
    args = probe_args("linear", "fastformer", pretrained, demo_data / "SLURP", tmp_path / "p")
    args.append("--mixer=fastformer")
    proc = run_recipe(RECIPE, args, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr  # SpeechBrain logs the traceback
    assert re.search(r"ValueError: .*holds a 'summarymixing' encoder, but mixer='fastformer' was asked for",
                     output), output[-3000:]


LEARN_EPOCHS = 12


def test_probe_learns_intents(demo_data, pretrained_demo, tmp_path):
    """On the demo SLURP (4 scenarios: chance 25%, 8 intents), the linear
    probe with the joint loss (``tasks: [scenario, intent]``, two heads) on a
    pretrained encoder fits the training set below the chance
    loss (ln 4 + ln 8 = 3.47), its best validation scenario accuracy is
    clearly above chance (0.45 is 3 standard deviations of a 40-recording
    guess), and the layer weights moved away from uniform. (The test-set
    accuracy of 40 recordings is reported, not asserted: a mean-pooled probe
    on a 2-layer demo encoder generalises only a little.)"""
    pretrained = pretrained_demo("summarymixing")
    out = tmp_path / "learn"
    run_recipe(
        RECIPE,
        probe_args(
            "linear", "summarymixing", pretrained, demo_data / "SLURP", out,
            epochs=LEARN_EPOCHS, extra=["--lr=0.01", "--tasks=[scenario, intent]"],
        ),
    )
    log = (out / "train_log.txt").read_text()
    train = [float(x) for x in re.findall(r"train loss: ([\d.e+-]+)", log)]
    valid = [float(x) for x in re.findall(r"valid scenario_accuracy: ([\d.e+-]+)", log)]
    assert len(train) == len(valid) == LEARN_EPOCHS, log
    assert min(train[-3:]) < 3.2 < train[0], train
    assert max(valid) >= 0.45, valid
    acc, text = read_test_results(out)
    assert set(acc) == {"scenario", "intent"}, text
    assert head_shapes(out) == [4, 8]
    ckpt = sorted((out / "save").glob("CKPT+*"))[-1]
    weights = torch.load(ckpt / "weighted_ssl.ckpt", map_location="cpu")["weights"]
    softmax = torch.softmax(weights, 0)
    assert softmax.numel() == PROBE_LAYERS + 1
    assert (softmax - 1.0 / softmax.numel()).abs().max() > 0.02, softmax


@pytest.mark.slow
@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("mixer", PAPER_MIXERS)
def test_every_mixer_and_probe(demo_data, pretrained_demo, tmp_path, mixer, probe):
    pretrained = pretrained_demo(mixer, epochs=1)
    out = tmp_path / "probe"
    run_recipe(RECIPE, probe_args(probe, mixer, pretrained, demo_data / "SLURP", out))
    acc, text = read_test_results(out)
    assert set(acc) == {"scenario"}, text
