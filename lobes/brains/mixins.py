"""What every recipe's ``train.py`` shares (pretraining and probes).

* ``parse_arguments``: SpeechBrain's, plus DDP that works on CPU machines
  (``torchrun`` without GPUs runs on gloo) and clear errors otherwise;
* ``EpochSeededBatchesMixin``: the batch order depends on seed and epoch
  only, so a resumed run sees the batches an uninterrupted one would;
* ``CPUDistributedMixin``: DDP on CPU (gloo) for modules with BatchNorm,
  and DDP that looks for unused parameters when a trained module has
  LayerDrop;
* ``ResumableTrainStatsMixin``: the training epoch's metrics (accuracy...)
  are checkpointed, so that after an intra-epoch restart they still cover
  the whole epoch;
* ``check_finite_features``: non-finite features stop with the names of the
  utterances, before they reach a normaliser or an optimizer.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""


import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.logger import get_logger

from lobes.utils.safe_io import load_tensors
from lobes.utils.speechbrain_private import DistributedWrapHook

logger = get_logger(__name__)


class EpochSeededBatchesMixin:
    """Makes a ``batch_sampler`` (e.g. ``DynamicBatchSampler``) reshuffle by
    seed and epoch, also in single-process runs.

    SpeechBrain's ``Brain.make_dataloader`` only registers a batch sampler as
    ``train_sampler`` under DDP, so without DDP its ``set_epoch`` is never
    called: the batch order then depends on how many epochs this *process*
    has iterated, not on the epoch number, and a resumed run trains on
    batches in another order than an uninterrupted one would.

    Each loader also gets its own ``torch.Generator`` (unless one is given):
    a PyTorch ``DataLoader`` otherwise draws its workers' base seed from the
    *global* RNG whenever an iterator is created. After an intra-epoch
    recovery the iterator is created after the RNG state was restored, so the
    masks and noise of every following step would be shifted by that draw.
    """

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's dataloader, with the train batch sampler registered
        and a private generator for the workers' seeds."""
        if loader_kwargs.get("generator") is None:
            seed = getattr(self.hparams, "seed", 0)
            loader_kwargs["generator"] = torch.Generator().manual_seed(seed)
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        sampler = loader_kwargs.get("batch_sampler")
        if stage == sb.Stage.TRAIN and self.train_sampler is None and hasattr(sampler, "set_epoch"):
            self.train_sampler = sampler
        return loader


class CPUDistributedMixin(DistributedWrapHook):
    """DDP on CPU (gloo) for a ``Brain`` whose modules hold BatchNorm, and
    DDP with ``find_unused_parameters`` when a trained module has LayerDrop.

    SpeechBrain 1.1.2 converts every BatchNorm of a trainable module to
    ``SyncBatchNorm`` before wrapping it in DDP, and ``SyncBatchNorm`` refuses
    CPU modules: an ECAPA or X-vector probe cannot start under ``torchrun``
    on CPU. On CPU this wraps the modules in DDP as SpeechBrain does, minus
    the conversion (each rank normalises with its own batch statistics, as
    BatchNorm does without DDP); on GPU SpeechBrain's own code runs.

    A layer that LayerDrop skips leaves its parameters without gradient, and
    DDP then stops at the next step ("Expected to have finished reduction in
    the prior iteration..."): with LayerDrop in a trained module
    (``uses_layerdrop``), DDP looks for unused parameters, as the authors'
    runs did (``--find_unused_parameters`` in every ``run/*.sh``).
    """

    def wrap_distributed(self):
        """DDP without SyncBatchNorm on CPU; SpeechBrain's wrapping on GPU;
        ``find_unused_parameters`` with LayerDrop."""
        if self.distributed_launch and uses_layerdrop(self.modules):
            self.find_unused_parameters = True
        if not self.distributed_launch or str(self.device).startswith("cuda"):
            return super().wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                    module, device_ids=None,
                    find_unused_parameters=self.find_unused_parameters,
                )


def uses_layerdrop(modules):
    """Whether a trainable module of ``modules`` (a dict or ModuleDict) has a
    part with ``layerdrop_prob`` > 0 (our encoder's LayerDrop).

    Example
    -------
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> enc = ConformerEncoder("fastformer", num_layers=1, d_model=16, nhead=2,
    ...                        d_ffn=32, kernel_size=3, layerdrop_prob=0.05)
    >>> uses_layerdrop({"encoder": enc, "head": torch.nn.Linear(16, 4)})
    True
    >>> _ = enc.requires_grad_(False)  # frozen (a probe's encoder)
    >>> uses_layerdrop({"encoder": enc})
    False
    """
    for module in modules.values():
        for part in unwrap(module).modules():
            if getattr(part, "layerdrop_prob", 0) > 0 and any(
                p.requires_grad for p in part.parameters()
            ):
                return True
    return False


@register_checkpoint_hooks
class _TrainStats:
    """Checkpointable view of a ``ResumableTrainStatsMixin`` Brain's training
    statistics (``train_stats.ckpt``)."""

    def __init__(self, brain):
        self.brain = brain

    @mark_as_saver
    def save(self, path):
        """Saves the running statistics of the current training epoch."""
        torch.save({"stats": self.brain.train_stats_state()}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Keeps the statistics of an intra-epoch checkpoint for
        ``restore_train_stats`` (an end-of-epoch checkpoint starts a new
        epoch: nothing to restore)."""
        self.brain._resumed_train_stats = None
        if not end_of_epoch:
            self.brain._resumed_train_stats = load_tensors(
                path, what="training statistics file"
            )["stats"]


class ResumableTrainStatsMixin:
    """The training epoch's metrics survive an intra-epoch restart.

    SpeechBrain checkpoints the running training loss (``avg_train_loss``)
    but not a recipe's other statistics: after resuming from an intra-epoch
    checkpoint, an accuracy accumulated in ``compute_objectives`` would cover
    only the batches after the restart. With this mixin they are saved in
    every checkpoint (``train_stats.ckpt``) and, when an intra-epoch
    checkpoint is recovered, given back by ``restore_train_stats``, which the
    recipe calls in ``on_stage_start`` after resetting its statistics.

    Subclasses define ``train_stats_state()`` (tensors, numbers, strings,
    lists and dicts only: it is loaded with ``weights_only=True``) and
    ``load_train_stats_state(state)``. Under DDP the main process's
    statistics are saved (those it logs).
    """

    _resumed_train_stats = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.checkpointer is not None:
            # optional: checkpoints written before this existed still load
            self.checkpointer.add_recoverable(
                "train_stats", _TrainStats(self), optional_load=True
            )

    def train_stats_state(self):
        """The running training statistics to checkpoint (override)."""
        return None

    def load_train_stats_state(self, state):
        """Restores what ``train_stats_state`` returned (override)."""
        raise NotImplementedError

    def restore_train_stats(self):
        """Call in ``on_stage_start(TRAIN)``, after the reset: puts back the
        statistics of the epoch's batches before an intra-epoch restart."""
        state, self._resumed_train_stats = self._resumed_train_stats, None
        if state is not None:
            self.load_train_stats_state(state)


def check_finite_features(feats, ids):
    """Stops on NaN or infinite features, naming the utterances.

    A non-finite value would otherwise reach the global normaliser (whose
    statistics, and every checkpoint after, would be NaN) or the optimizer.
    Audio with NaN samples is refused when read (``lobes.dataio.audio``); this
    catches the rest (e.g. float audio with absurd amplitudes, whose
    spectrum overflows).

    Arguments
    ---------
    feats : torch.Tensor
        (B, T, F) features.
    ids : list of str
        The B utterance IDs.

    Example
    -------
    >>> feats = torch.zeros(2, 5, 3)
    >>> feats[1, 2, 0] = float("nan")
    >>> check_finite_features(feats, ["u1", "u2"])
    Traceback (most recent call last):
    ...
    ValueError: Non-finite features (NaN or inf) for utterance(s) ['u2']: ...
    """
    finite = torch.isfinite(feats).flatten(1).all(dim=1)
    if bool(finite.all()):
        return
    bad = [ids[i] for i in torch.nonzero(~finite).flatten().tolist()]
    raise ValueError(
        f"Non-finite features (NaN or inf) for utterance(s) {bad}: their audio "
        "holds invalid or absurdly large samples. Remove them from the data "
        "manifest (CSV/JSON) and run the same command again: training "
        "resumes from the last checkpoint, which this batch did not touch."
    )


def unwrap(module):
    """The module inside a DDP (or DataParallel) wrapper, else ``module``."""
    return getattr(module, "module", module)
