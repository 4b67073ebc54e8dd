"""The BEST-RQ pretraining recipe, end to end on the demo corpus."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import PAPER_MIXERS, REPO, run_recipe
from demo_overrides import demo_encoder_override, demo_overrides
from hyperpyyaml import load_hyperpyyaml

RECIPE = REPO / "recipes/LibriSpeech/self-supervised-learning/BEST-RQ-linear"


def pretrain(demo_data, out, mixer, epochs, extra=(), check=True, encoder_extra="", yaml_of=None):
    overrides = demo_overrides(mixer, epochs=epochs, layers=2)
    replaced = {e.split("=")[0] for e in extra}
    overrides = [o for o in overrides if o.split("=")[0] not in replaced]
    if encoder_extra:  # more keys in the --encoder_overrides={...} override
        overrides[0] = overrides[0].replace("={", "={" + encoder_extra + ", ", 1)
    return run_recipe(
        RECIPE,
        [
            f"hparams/bestrq_{yaml_of or mixer}.yaml",
            f"--data_folder={demo_data / 'LibriSpeech'}",
            f"--output_folder={out}",
            *overrides,
            *extra,
        ],
        check=check,
    )


def read_steps_log(out):
    rows = []
    for line in (out / "train_steps_log.txt").read_text().splitlines():
        fields = dict(kv.split(": ") for kv in line.split(", "))
        rows.append({k: float(v) for k, v in fields.items()})
    return rows


def latest_ckpt(out):
    ckpts = sorted((out / "save").glob("CKPT+*"))
    assert ckpts, f"no checkpoint in {out / 'save'}"
    return ckpts[-1]


def check_learns(out, min_drop):
    rows = read_steps_log(out)
    assert len(rows) >= 3, rows
    first, last = rows[0]["loss"], rows[-1]["avg_loss"]
    assert last < first - min_drop, f"loss did not fall: {first} -> {last}"
    ckpt = latest_ckpt(out)
    for name in ("model.ckpt", "quantizer.ckpt", "normalize.ckpt", "optimizer.ckpt"):
        assert (ckpt / name).exists(), name
    for name in ("encoder.ckpt", "normalizer.ckpt", "hyperparams.yaml", "README.md"):
        assert (out / "encoder" / name).exists(), f"export: {name}"
    return rows


def test_pretraining_runs_and_learns(demo_data, tmp_path):
    out = tmp_path / "summarymixing"
    pretrain(demo_data, out, "summarymixing", epochs=6)
    rows = check_learns(out, min_drop=1.0)
    # warm-up then decay of the learning rate, logged every 10 steps
    lrs = [r["lr"] for r in rows]
    assert lrs[0] < max(lrs) and lrs[-1] < max(lrs)
    # the health signals, every line: accuracy above its chance level by the
    # end, targets spread over hundreds of codes, predictions less spread
    # than at the start, a gradient norm, about half the frames masked
    health = ("masked_acc", "top_code_share", "codes_used", "code_ppl",
              "pred_ppl", "grad_norm", "masked_share")
    assert all(key in row for row in rows for key in health), rows[0]
    assert rows[-1]["masked_acc"] > rows[-1]["top_code_share"]
    assert all(100 < row["codes_used"] <= 8192 and row["code_ppl"] > 50 for row in rows)
    assert rows[-1]["pred_ppl"] < rows[0]["pred_ppl"]
    assert all(0.2 < row["masked_share"] < 0.8 and row["grad_norm"] > 0 for row in rows)
    # the curves, drawn at the end of the run and on demand
    assert (out / "train_curves.png").stat().st_size > 10_000
    again = subprocess.run(
        [sys.executable, "-m", "lobes.utils.plot_run", str(out), "--out", str(tmp_path / "c.png")],
        capture_output=True, text=True, check=True,
    )
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG", again.stdout


def test_resume_continues_exactly(demo_data, tmp_path):
    """2 epochs, then a restart to 3, equals 3 epochs in one go."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(demo_data, straight, "fastformer", epochs=3)
    pretrain(demo_data, resumed, "fastformer", epochs=2)
    proc = pretrain(demo_data, resumed, "fastformer", epochs=3)
    a, b = latest_ckpt(straight), latest_ckpt(resumed)
    steps = [yaml.safe_load((c / "brain.ckpt").read_text())["optimizer_step"] for c in (a, b)]
    assert steps[0] == steps[1] > 0
    ma, mb = torch.load(a / "model.ckpt"), torch.load(b / "model.ckpt")
    for key, value in ma.items():
        if torch.is_tensor(value):
            torch.testing.assert_close(mb[key], value, msg=key)
    oa, ob = torch.load(a / "optimizer.ckpt"), torch.load(b / "optimizer.ckpt")
    for sa, sb_ in zip(oa["state"].values(), ob["state"].values()):
        torch.testing.assert_close(sb_["exp_avg"], sa["exp_avg"])


def test_speechbrains_debug_and_optimizer_step_limit(demo_data, tmp_path):
    """SpeechBrain's conventions: ``--debug`` (a few batches, checkpoints in a
    temporary folder) ends with exit 0, its export done there and the run's
    own export folder untouched; ``--optimizer_step_limit=N`` given on the
    command line (a string to SpeechBrain 1.1's parser) stops after N steps."""
    out = tmp_path / "debug"
    proc = pretrain(demo_data, out, "summarymixing", epochs=2, extra=["--debug"])
    assert "Debug run: its checkpoints are in" in proc.stdout + proc.stderr
    assert "Exported the summarymixing encoder" in (out / "log.txt").read_text()
    assert not (out / "encoder").exists()
    assert not list((out / "save").glob("CKPT+*"))

    out = tmp_path / "limit"
    pretrain(demo_data, out, "summarymixing", epochs=2, extra=["--optimizer_step_limit=3"])
    ckpt = latest_ckpt(out)
    assert yaml.safe_load((ckpt / "brain.ckpt").read_text())["optimizer_step"] == 3
    assert (out / "encoder" / "encoder.ckpt").exists()


def test_bad_inputs_give_clear_errors(demo_data, tmp_path):
    # unknown mixer name
    proc = pretrain(
        demo_data, tmp_path / "bad_mixer", "fastformer", epochs=1,
        extra=["--mixer=fastformers"], check=False,
    )
    assert proc.returncode != 0
    assert "Unknown token mixer 'fastformers'" in proc.stdout + proc.stderr

    # misspelt keys inside the encoder's overrides and inside a dict override
    proc = pretrain(demo_data, tmp_path / "typo", "fastformer", epochs=1,
                    encoder_extra="num_layerz: 4", check=False)
    assert proc.returncode != 0
    assert "Unknown encoder argument(s) num_layerz. Valid arguments: mixer, num_layers" in proc.stderr
    assert not (tmp_path / "typo").exists()  # refused before anything is written
    proc = pretrain(demo_data, tmp_path / "typo2", "fastformer", epochs=1, check=False,
                    extra=["--dynamic_batch_sampler={max_batch_lenght: 30}"])
    assert proc.returncode != 0
    assert "has no key 'max_batch_lenght'. Its keys: max_batch_length, num_buckets" in proc.stderr

    # the YAML of another recipe
    probe_yaml = REPO / "recipes/SLURP/IntentClassification/hparams/linear.yaml"
    proc = run_recipe(RECIPE, [probe_yaml, f"--data_folder={tmp_path}", f"--pretrained_path={tmp_path}"],
                      check=False)
    assert proc.returncode != 0
    assert f"{probe_yaml} is not a YAML of this recipe: it lacks train_splits" in proc.stderr

    # missing data folder
    proc = run_recipe(
        RECIPE,
        ["hparams/bestrq_fastformer.yaml", f"--data_folder={tmp_path / 'nowhere'}",
         f"--output_folder={tmp_path / 'missing'}"],
        check=False,
    )
    assert proc.returncode != 0
    assert str(tmp_path / "nowhere") in proc.stdout + proc.stderr

    # a corrupt audio file listed in the manifest
    bad = tmp_path / "bad_audio"
    pretrain(demo_data, bad, "fastformer", epochs=1)
    rows = list(csv.DictReader(open(bad / "train.csv")))
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"not audio at all" * 100)
    rows[0]["wav"] = str(corrupt)
    with open(bad / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.rmtree(bad / "save")
    proc = pretrain(demo_data, bad, "fastformer", epochs=1, extra=["--skip_prep=True"], check=False)
    assert proc.returncode != 0
    assert f"Cannot read audio file {corrupt}" in proc.stdout + proc.stderr


def test_the_mixer_hyperparameter_selects_the_encoder_and_the_run_records_it(demo_data, tmp_path):
    """bestrq_summarymixing.yaml --mixer=fastformer trains a Fastformer; the
    run's hyperparams.yaml, encoder.yaml and checkpoint all describe it, the
    saved hyperparams.yaml rebuilds it (strict load), the export needs nothing
    but the checkpoint, and a restart with other sizes is refused without
    touching the folder."""
    out = tmp_path / "ff"
    pretrain(demo_data, out, "fastformer", epochs=1, yaml_of="summarymixing",
             extra=["--mixer=fastformer"])
    state = torch.load(latest_ckpt(out) / "model.ckpt")
    config = state["0._extra_state"]
    assert config["mixer"] == "fastformer" and config["num_layers"] == 2
    assert yaml.safe_load((out / "encoder.yaml").read_text()) == config
    hparams_text = (out / "hyperparams.yaml").read_text()
    with open(out / "hyperparams.yaml") as fin:
        saved = load_hyperpyyaml(fin)
    assert saved["encoder"].config == config
    saved["encoder"].load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("0.")})
    exported = yaml.safe_load((out / "encoder" / "hyperparams.yaml").read_text().split("\nencoder:")[0])
    assert exported["encoder_config"] == config

    wider = demo_encoder_override("fastformer", 2).replace("d_model: 104", "d_model: 48")
    proc = pretrain(demo_data, out, "fastformer", epochs=1, yaml_of="summarymixing",
                    extra=["--mixer=fastformer", wider], check=False)
    assert proc.returncode != 0
    assert "holds a run of another encoder (d_model: 104 there, 48 now)" in proc.stderr
    assert (out / "hyperparams.yaml").read_text() == hparams_text  # nothing changed


@pytest.mark.slow
@pytest.mark.parametrize("mixer", PAPER_MIXERS)
def test_every_mixer_pretrains_a_few_hundred_steps(demo_data, tmp_path, mixer):
    out = tmp_path / mixer
    pretrain(demo_data, out, mixer, epochs=25)
    rows = check_learns(out, min_drop=2.0)
    assert rows[-1]["step"] >= 200


def assert_same_weights(a, b):
    ma, mb = torch.load(latest_ckpt(a) / "model.ckpt"), torch.load(latest_ckpt(b) / "model.ckpt")
    for key, value in ma.items():
        if torch.is_tensor(value):
            torch.testing.assert_close(mb[key], value, msg=key)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_restart_loses_nothing(demo_data, tmp_path):
    """Killed after an intra-epoch checkpoint, the restarted run ends with the
    same weights as an uninterrupted one."""
    every5 = ["--ckpt_interval_minutes=0", "--ckpt_interval_steps=5"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    pretrain(demo_data, straight, "fastformer", epochs=2, extra=every5)
    args = [
        sys.executable, "train.py", "hparams/bestrq_fastformer.yaml",
        f"--data_folder={demo_data / 'LibriSpeech'}", f"--output_folder={killed}",
        *[o for o in demo_overrides("fastformer", epochs=2, layers=2)], *every5,
    ]
    proc = subprocess.Popen(args, cwd=RECIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline:  # wait for an intra-epoch checkpoint in epoch 2
        metas = [p.read_text() for p in (killed / "save").glob("CKPT+*/CKPT.yaml")] if (killed / "save").exists() else []
        if any("end-of-epoch: false" in m for m in metas) and any("end-of-epoch: true" in m for m in metas):
            break
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    pretrain(demo_data, killed, "fastformer", epochs=2, extra=every5)
    steps = [yaml.safe_load((latest_ckpt(d) / "brain.ckpt").read_text())["optimizer_step"] for d in (straight, killed)]
    assert steps[0] == steps[1]
    assert_same_weights(straight, killed)
    # the interrupted epoch's logged metrics cover the whole epoch: loss and
    # masked accuracy as in the uninterrupted run
    logs = [(d / "train_log.txt").read_text().splitlines() for d in (straight, killed)]
    assert len(logs[0]) == 2 and "train masked_acc" in logs[0][1]
    assert logs[0] == logs[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(demo_data, tmp_path):
    """torchrun with 2 processes (batches split over ranks), started as on a
    GPU machine (no --distributed_backend: gloo on CPU by default here) vs
    one process accumulating 2 batches: the same global batch per step."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    pretrain(demo_data, single, "fastformer", epochs=3, extra=["--grad_accumulation_factor=2"])
    overrides = demo_overrides("fastformer", epochs=3, layers=2)
    run_recipe(RECIPE, ["hparams/bestrq_fastformer.yaml", f"--data_folder={demo_data / 'LibriSpeech'}",
                        f"--output_folder={ddp}", *overrides], nproc=2, backend=None,
               timeout=1200)
    epochs = {}
    for run in (single, ddp):
        lines = (run / "train_log.txt").read_text().splitlines()
        epochs[run.name] = [float(l.split("valid loss: ")[1].split(",")[0]) for l in lines]
        steps = yaml.safe_load((latest_ckpt(run) / "brain.ckpt").read_text())["optimizer_step"]
        epochs[run.name + "_steps"] = steps
    # same number of optimizer steps (global batch = 2 dynamic batches)
    assert abs(epochs["single_steps"] - epochs["ddp_steps"]) <= 1, epochs
    # and the same learning curve within tolerance
    for a, b in zip(epochs["single"], epochs["ddp"]):
        assert abs(a - b) < 0.35, epochs
