"""The shared MP3S probe Brain (lobes/brains/probing.py): the encoder's padding
mask switch and the learning-rate annealing by the YAML's schedulers."""

import pytest
import torch
from speechbrain.lobes.features import Fbank
from speechbrain.nnet.schedulers import LinearScheduler, NewBobScheduler

from lobes.brains.probing import ProbeBrain
from lobes.nnet.encoder import ConformerEncoder
from lobes.nnet.weighted_sum import WeightedLayerSum


def make_brain(**hparams):
    encoder = ConformerEncoder("fastformer", num_layers=2, d_model=16, nhead=2,
                               d_ffn=32, kernel_size=3)
    probe = torch.nn.Linear(16, 4)
    return ProbeBrain(
        modules={"weighted_ssl": WeightedLayerSum(encoder), "probe": probe},
        hparams={"compute_features": Fbank(n_mels=80), "model": probe, **hparams},
        run_opts={"device": "cpu"},
    )


@pytest.mark.parametrize("masked", [True, False])
def test_encoder_padding_mask(masked):
    """Masked (the default), an utterance gets the same features alone and
    padded in a batch with a longer one; with ``encoder_padding_mask:
    False`` (MP3S: no lengths) the padding changes them."""
    brain = make_brain(encoder_padding_mask=masked)
    short, long = torch.randn(12000), torch.randn(16000)  # 76 of 101 frames
    alone = brain.encode(short.unsqueeze(0), torch.ones(1))
    batch = torch.stack([torch.cat([short, torch.zeros(4000)]), long])
    batched = brain.encode(batch, torch.tensor([0.75, 1.0]))
    frames = alone.shape[1]
    same = torch.allclose(alone[0], batched[0, :frames], atol=1e-5)
    assert same is masked


def test_anneal_by_metric_by_epoch_or_not_at_all():
    """NewBob anneals on the validation metric, a LinearScheduler by the
    finished epoch, ``null`` keeps the learning rate (the VoxCeleb probe's
    layer weights, as MP3S); the logged rates are those of the epoch."""
    brain = make_brain(
        lr_annealing_model=LinearScheduler(1e-3, 1e-4, 4),
        lr_annealing_weights=None,
        model_opt_class=lambda params: torch.optim.Adam(params, lr=1e-3),
        weights_opt_class=lambda params: torch.optim.Adam(params, lr=0.01),
    )
    brain.init_optimizers()
    logged = [brain.anneal(metric=1.0, epoch=epoch) for epoch in (1, 2, 3)]
    assert [x["lr_model"] for x in logged] == pytest.approx([1e-3, 7e-4, 4e-4])
    assert {x["lr_weights"] for x in logged} == {0.01}
    assert brain.model_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="lr_annealing_model .LinearScheduler. is indexed by epoch"):
        brain.anneal(metric=1.0)
    brain.hparams.lr_annealing_model = None
    brain.hparams.lr_annealing_weights = NewBobScheduler(0.01, annealing_factor=0.5)
    brain.anneal(metric=1.0)
    brain.anneal(metric=2.0)  # worse: halved
    assert brain.weights_optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert brain.model_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
