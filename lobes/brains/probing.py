"""Base ``Brain`` for MP3S probes on a frozen BEST-RQ encoder.

Every MP3S recipe (ASR, speaker verification, emotion, intent) reads the same
input: fbank features -> frozen normaliser and encoder -> learned
softmax-weighted sum of all hidden layers (``lobes.nnet.weighted_sum``). What the
recipes share lives here:

* ``encode``: waveforms to the weighted layer sum;
* two optimizers as in MP3S: ``model_opt_class`` for the probe
  (``hparams.model``) and ``weights_opt_class`` (lr 0.01) for the layer
  weights, both checkpointed; no encoder parameter is ever optimised;
* ``anneal``: annealing of both learning rates after each validation, by
  the YAML's schedulers (NewBob on a validation metric in most MP3S tasks,
  linear by epoch for the VoxCeleb probe, none for its layer weights);
* ``layer_weights_summary``: the learned weights, logged each epoch.
* the training error statistics (``error_metrics``) survive an intra-epoch
  restart (``lobes.brains.mixins.ResumableTrainStatsMixin``).

Recipes subclass it with ``compute_forward``/``compute_objectives`` and
``on_stage_end``, as in any SpeechBrain recipe.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import speechbrain as sb
import torch
from speechbrain.nnet.schedulers import NewBobScheduler, update_learning_rate
from speechbrain.utils.logger import get_logger
from speechbrain.utils.metric_stats import MetricStats

from lobes.brains.mixins import (
    CPUDistributedMixin,
    EpochSeededBatchesMixin,
    ResumableTrainStatsMixin,
    check_finite_features,
    unwrap,
)

logger = get_logger(__name__)


def checkpoint_to_test(which, metric):
    """Checkpointer arguments that recover the model a probe is tested with
    (``test_checkpoint`` in the YAML): ``last``, the latest epoch, or
    ``best``, the lowest validation ``metric``.

    Example
    -------
    >>> checkpoint_to_test("best", "WER"), checkpoint_to_test("last", "WER")
    ({'min_key': 'WER'}, {})
    >>> checkpoint_to_test("final", "WER")
    Traceback (most recent call last):
    ...
    ValueError: test_checkpoint: 'final' in the YAML; use last ...
    """
    if which not in ("last", "best"):
        raise ValueError(
            f"test_checkpoint: {which!r} in the YAML; use last (the model of "
            f"the last epoch) or best (the lowest validation {metric})."
        )
    return {"min_key": metric} if which == "best" else {}


def anneal_learning_rates(hparams, optimizers, metric, epoch=None):
    """Anneals the learning rate of each optimizer after a validation stage,
    by the scheduler ``hparams.lr_annealing_<name>`` (the YAML's) of each
    ``optimizers[name]``; returns ``{"lr_<name>": learning rate of the
    finished epoch}``, to log.

    A ``NewBobScheduler`` is called with the validation ``metric`` (lower
    is better); any other scheduler (e.g. ``LinearScheduler``) with the
    finished ``epoch``; a missing or ``null`` one keeps its learning rate.

    Example
    -------
    >>> import torch
    >>> from types import SimpleNamespace
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> hparams = SimpleNamespace(lr_annealing_model=NewBobScheduler(1.0, annealing_factor=0.5))
    >>> anneal_learning_rates(hparams, {"model": opt}, 2.0)  # first: a reference
    {'lr_model': 1.0}
    >>> anneal_learning_rates(hparams, {"model": opt}, 3.0)  # worse: halved
    {'lr_model': 1.0}
    >>> opt.param_groups[0]["lr"]
    0.5
    """
    lrs = {}
    for name, optimizer in optimizers.items():
        scheduler = getattr(hparams, f"lr_annealing_{name}", None)
        if scheduler is None:
            lrs[f"lr_{name}"] = optimizer.param_groups[0]["lr"]
            continue
        if isinstance(scheduler, NewBobScheduler):
            old_lr, new_lr = scheduler(metric)
        elif epoch is None:
            raise ValueError(
                f"lr_annealing_{name} ({type(scheduler).__name__}) is "
                "indexed by epoch, but this recipe anneals on a metric "
                "only: use a NewBobScheduler in the YAML."
            )
        else:
            old_lr, new_lr = scheduler(epoch)
        update_learning_rate(optimizer, new_lr)
        lrs[f"lr_{name}"] = old_lr
    return lrs


class ProbeBrain(
    EpochSeededBatchesMixin, CPUDistributedMixin, ResumableTrainStatsMixin, sb.Brain
):
    """MP3S probe on a frozen encoder.

    Expects ``modules.weighted_ssl`` (``lobes.nnet.weighted_sum.WeightedLayerSum``)
    and hparams ``compute_features``, ``model`` (the probe's trainable
    modules), ``model_opt_class``, ``weights_opt_class``,
    ``lr_annealing_model`` and ``lr_annealing_weights`` (SpeechBrain
    schedulers, see ``anneal``; ``null`` keeps a learning rate constant).
    """

    def encode(self, wavs, wav_lens, ids=None):
        """Waveforms (B, S) to the weighted layer sum (B, T', D); non-finite
        features stop with the utterance ``ids`` (B) named.

        The encoder masks the padded frames of a batch (``wav_lens``);
        ``encoder_padding_mask: False`` in the YAML gives it no lengths, as
        MP3S calls its SSL models, so that it sees the padding as signal
        and an utterance's features depend on its batch.
        """
        feats = self.hparams.compute_features(wavs)
        check_finite_features(feats, ids if ids is not None else list(range(len(feats))))
        if not getattr(self.hparams, "encoder_padding_mask", True):
            wav_lens = None
        return self.modules.weighted_ssl(feats, wav_lens)

    def train_stats_state(self):
        """The training epoch's ``error_metrics`` (a ``MetricStats``) of the
        recipes that track one, checkpointed: IDs and scores."""
        metrics = getattr(self, "error_metrics", None)
        if not isinstance(metrics, MetricStats):
            return None
        return {"ids": list(metrics.ids), "scores": [float(s) for s in metrics.scores]}

    def load_train_stats_state(self, state):
        """Puts the checkpointed IDs and scores back into ``error_metrics``."""
        self.error_metrics.ids = list(state["ids"])
        self.error_metrics.scores = [torch.tensor(s) for s in state["scores"]]

    def init_optimizers(self):
        """One optimizer for the probe, one for the layer weights."""
        weighted_ssl = self.modules.weighted_ssl
        weighted_ssl = unwrap(weighted_ssl)
        frozen = {id(p) for p in weighted_ssl.frozen_parameters()}
        probe_params = [
            p for p in self.hparams.model.parameters() if p.requires_grad
        ]
        if any(id(p) in frozen for p in probe_params):
            raise ValueError(
                "The probe's `model` contains encoder parameters: the encoder "
                "must stay frozen. Remove it from `model` in the YAML."
            )
        self.model_optimizer = self.hparams.model_opt_class(probe_params)
        self.weights_optimizer = self.hparams.weights_opt_class(
            [weighted_ssl.weights]
        )
        self.optimizers_dict = {
            "model_optimizer": self.model_optimizer,
            "weights_optimizer": self.weights_optimizer,
        }
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable(
                "model_optimizer", self.model_optimizer
            )
            self.checkpointer.add_recoverable(
                "weights_optimizer", self.weights_optimizer
            )

    def anneal(self, metric, epoch=None):
        """Anneals the probe's (``lr_annealing_model``) and the layer
        weights' (``lr_annealing_weights``) learning rates after a
        validation stage (:func:`anneal_learning_rates`); returns the
        learning rates of the finished epoch, to log."""
        return anneal_learning_rates(
            self.hparams,
            {"model": self.model_optimizer, "weights": self.weights_optimizer},
            metric,
            epoch,
        )

    def layer_weights_summary(self):
        """The learned softmax layer weights, rounded, as a list."""
        weighted_ssl = self.modules.weighted_ssl
        weighted_ssl = unwrap(weighted_ssl)
        return [round(w, 4) for w in weighted_ssl.layer_weights().tolist()]
