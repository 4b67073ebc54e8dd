"""The restart check covers everything that shapes a checkpoint (issue 21):
at start, before the output folder is touched, every module of the
checkpointer against the latest checkpoint; at recovery, one message
listing every difference instead of torch's first "size mismatch".
(End to end, with the pretraining recipe and ``--cb_vocab``:
tests/recipes/test_run_lock.py.)"""

import pytest
import torch

from lobes.recipe import check_restart
from lobes.utils.checkpoint import AtomicCheckpointer, checkpoint_shape_differences


def probe_model(head_size=None):
    """A probe's ``model``: the YAML builds [body]; the recipe appends the
    head once the data are read (its size decided by them)."""
    model = torch.nn.ModuleList([torch.nn.Linear(4, 4)])
    if head_size is not None:
        model.append(torch.nn.Linear(4, head_size))
    return model


def test_a_restart_with_another_codebook_is_refused_before_anything_is_written(tmp_path):
    quantizer = torch.nn.Linear(16, 8192, bias=False)
    saved = AtomicCheckpointer(tmp_path / "save", {"model": probe_model(), "quantizer": quantizer})
    saved.save_checkpoint()
    (tmp_path / "hyperparams.yaml").write_text("cb_vocab: 8192\nlr: 0.001\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    now = AtomicCheckpointer(tmp_path / "save", {"model": probe_model(),
                                                 "quantizer": torch.nn.Linear(16, 64, bias=False)})
    with pytest.raises(ValueError, match=(
            r"holds checkpoints this run cannot resume: .*quantizer.ckpt weight: \[8192, 16\] there, "
            r"\[64, 16\] now\), built from other hyperparameters \(cb_vocab: 8192 there, 64 now\)")):
        check_restart(tmp_path, None, {"checkpointer": now, "cb_vocab": 64, "lr": 0.001})
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_modules_built_later_are_not_a_false_refusal_and_are_checked_at_recovery(tmp_path):
    saved = AtomicCheckpointer(tmp_path, {"model": probe_model(head_size=8)})
    saved.save_checkpoint()
    # at start the head is not built yet: nothing to refuse
    assert checkpoint_shape_differences(AtomicCheckpointer(tmp_path, {"model": probe_model()})) is None
    # the same data: resumes
    AtomicCheckpointer(tmp_path, {"model": probe_model(head_size=8)}).recover_if_possible()
    # other data (6 labels): one message with every difference
    other = AtomicCheckpointer(tmp_path, {"model": probe_model(head_size=6)})
    with pytest.raises(ValueError, match=(
            r"Cannot resume from .*: it does not fit the modules of this run "
            r"\(model.ckpt 1.weight: \[8, 4\] there, \[6, 4\] now; model.ckpt 1.bias: \[8\] there, \[6\] now\)")):
        other.recover_if_possible()
