"""Multi-process (DDP) runs of the MP3S probes: ``torchrun`` with 2 CPU
processes on the gloo backend (the pretraining recipe's DDP test is in
test_pretraining_recipe.py). The encoder is frozen under DDP too: it is not
wrapped (it has no trainable parameters), only the probe and the layer
weights are."""

import re

import pytest
import test_asr_recipe
import test_slurp_recipe
import test_voxceleb_recipe
from conftest import REPO, run_recipe

IEMOCAP = REPO / "recipes/IEMOCAP/EmotionRecognition"


def epoch_losses(out):
    lines = (out / "fold_1" / "train_log.txt").read_text().splitlines()
    return [float(m.group(1)) for m in map(re.compile(r"valid loss: ([\d.e+-]+)").search, lines) if m]


@pytest.mark.slow
def test_probe_ddp_two_processes_match_single_process(demo_data, pretrained_demo, tmp_path):
    """IEMOCAP, two ranks of batch 4 against one process of batch 8: the
    same global batch, so the validation losses agree within tolerance (the
    ranks see a different shuffle than the single process)."""
    pretrained = pretrained_demo("summarymixing")
    common = [
        "hparams/linear.yaml",
        f"--pretrained_path={pretrained / 'save'}",
        f"--data_folder={demo_data / 'IEMOCAP_full_release'}",
        "--test_spk_id=1", "--number_of_epochs=3",
        "--valid_dataloader_opts={batch_size: 4, num_workers: 0}",
        "--test_dataloader_opts={batch_size: 4, num_workers: 0}",
    ]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_recipe(IEMOCAP, [*common, f"--experiment_folder={single}",
                         "--train_dataloader_opts={batch_size: 8, shuffle: True, num_workers: 0}"])
    run_recipe(IEMOCAP, [*common, f"--experiment_folder={ddp}",
                         "--train_dataloader_opts={batch_size: 4, shuffle: True, num_workers: 0}"],
               nproc=2, timeout=1200)
    a, b = epoch_losses(single), epoch_losses(ddp)
    assert len(a) == len(b) == 3, (a, b)
    for x, y in zip(a, b):
        assert abs(x - y) < 0.15, (a, b)
    assert (ddp / "fold_1" / "test_accuracy.txt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["asr", "voxceleb", "slurp"])
def test_every_probe_recipe_runs_under_ddp(demo_data, pretrained_demo, tmp_path, task):
    """The other MP3S recipes train, checkpoint and test with 2 ranks
    (each writes its result file once, from the main process)."""
    pretrained = pretrained_demo("summarymixing")
    out = tmp_path / task
    if task == "asr":
        module, data, result = test_asr_recipe, demo_data / "LibriSpeech", "wer_test-clean_greedy.txt"
        args = module.probe_args("bilstm_ctc", "summarymixing", pretrained, data, out)
    elif task == "slurp":
        module, data, result = test_slurp_recipe, demo_data / "SLURP", "test_results.txt"
        args = module.probe_args("linear", "summarymixing", pretrained, data, out)
    else:
        module, result = test_voxceleb_recipe, "verification.txt"
        args = module.probe_args(demo_data, pretrained, out, epochs=1)
    run_recipe(module.RECIPE, args, nproc=2, timeout=1200)
    assert (out / result).is_file()
    assert "epoch: 1" in (out / "train_log.txt").read_text()
