"""Fine-tuning a pretrained BEST-RQ encoder whole, with a task head.

The other way (besides MP3S probing of a frozen encoder, ``lobes.brains.probing``)
that a BEST-RQ encoder is used: every encoder weight is trained on the
downstream task, as SpeechBrain's ``recipes/LibriSpeech/ASR/CTC/
train_with_bestrq.py`` and the BEST-RQ study's ``finetune/ft_brq.py`` do.
What a fine-tuning recipe needs besides its task:

* ``FineTunedEncoder``: features -> the pretraining's feature normaliser
  (statistics frozen) -> BEST-RQ span masking with noise during training
  (a SpecAugment-like regulariser in the encoder's own pretraining
  corruption) -> the encoder, in train mode (dropout, LayerDrop as its
  configuration says);
* ``FineTuneBrain``: two optimisers, one for the encoder
  (``encoder_opt_class``, SpeechBrain: 5e-5) and one for the head
  (``model_opt_class`` on ``hparams.model``, 3e-4), each with its own
  scheduler (``lr_annealing_encoder``, ``lr_annealing_model``: NewBob on
  the validation loss); the encoder can stay frozen for the first
  ``freeze_encoder_steps`` optimizer steps (gradients neither computed nor
  applied: it runs under ``torch.no_grad``) or the whole run
  (``freeze_encoder``);
* ``initialise_encoder``: the pretrained weights, or the same architecture
  from random initialisation (the baseline that says what pretraining
  brings); the normaliser's statistics are the pretraining's in both;
* ``train_loader_kwargs``: dynamic batching by duration (SpeechBrain's
  ``DynamicBatchSampler``) or fixed-size batches.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import speechbrain as sb
import torch
from speechbrain.utils.logger import get_logger
from torch import nn

from lobes.brains.mixins import CPUDistributedMixin, EpochSeededBatchesMixin, unwrap
from lobes.brains.probing import anneal_learning_rates
from lobes.deploy.loading import load_pretrained, resolve_checkpoint
from lobes.nnet.bestrq import compute_span_mask
from lobes.nnet.normalization import load_statistics

logger = get_logger(__name__)


class FineTunedEncoder(nn.Module):
    """Fbank -> frozen normaliser -> span masking (training) -> encoder.

    Arguments
    ---------
    encoder : lobes.nnet.encoder.ConformerEncoder
        The encoder to fine-tune (all its parameters are trained).
    normalizer : lobes.nnet.normalization.FeatureNormalizer
        The pretraining's feature normalisation (method and statistics),
        never updated here: it stays in eval mode even when the encoder
        trains.
    mask_prob : float
        Probability for a frame to start a masked span, as in BEST-RQ
        pretraining (``lobes.nnet.bestrq.compute_span_mask``; 0 disables the
        masking). Each utterance is masked over its own length; masked
        frames are replaced by N(``noise_mean``, ``noise_std``) noise, the
        corruption the encoder learnt to see through in pretraining.
    mask_length : int
        Fbank frames per span (4: one 40 ms encoder frame).
    noise_mean, noise_std : float
        The noise of the masked frames.

    Example
    -------
    >>> from lobes.nnet.normalization import FeatureNormalizer
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> enc = ConformerEncoder("fastformer", num_layers=1, d_model=16,
    ...                        nhead=2, d_ffn=32, kernel_size=3, dropout=0.0)
    >>> norm = FeatureNormalizer("authors")
    >>> _ = norm(torch.randn(2, 40, 80), torch.ones(2))  # its statistics
    >>> ft = FineTunedEncoder(enc, norm, mask_prob=0.2).train()
    >>> norm.training, enc.training
    (False, True)
    >>> feats, lens = torch.randn(2, 40, 80), torch.tensor([1.0, 0.5])
    >>> ft(feats, lens).shape
    torch.Size([2, 10, 16])
    >>> bool((ft(feats, lens) != ft(feats, lens)).any())  # new masks each call
    True
    >>> ft.eval()  # doctest: +ELLIPSIS
    FineTunedEncoder(...)
    >>> torch.equal(ft(feats, lens), ft(feats, lens))  # no masking
    True
    """

    def __init__(self, encoder, normalizer, mask_prob=0.0, mask_length=4,
                 noise_mean=0.0, noise_std=0.1):
        super().__init__()
        if not 0.0 <= mask_prob < 1.0:
            raise ValueError(f"mask_prob: {mask_prob} in the YAML; use a value in [0, 1).")
        self.encoder = encoder
        self.normalizer = normalizer
        self.mask_prob = mask_prob
        self.mask_length = mask_length
        self.noise_mean = noise_mean
        self.noise_std = noise_std
        self.normalizer.eval()

    def train(self, mode=True):
        """Train mode for the encoder; the normaliser stays in eval mode
        (its statistics are the pretraining's)."""
        super().train(mode)
        self.normalizer.eval()
        return self

    def forward(self, feats, lengths):
        """Maps fbank (B, T, n_mels) and relative lengths (B,) to the
        encoder's output (B, T', D)."""
        # The statistics are plain tensors, not buffers: moving this module
        # to a GPU does not move them.
        if self.normalizer.glob_mean.device != feats.device:
            self.normalizer.to(feats.device)
        feats = self.normalizer(feats, lengths)
        if self.training and self.mask_prob > 0:
            T = feats.shape[1]
            frames = torch.round(lengths * T).long().clamp(1, T)
            mask = compute_span_mask(
                frames, T, self.mask_prob, self.mask_length, per_utterance=True
            )
            noise = torch.randn_like(feats) * self.noise_std + self.noise_mean
            feats = torch.where(mask.unsqueeze(-1), noise, feats)
        return self.encoder(feats, lengths)


def initialise_encoder(pretrained_path, encoder, normalizer, from_pretrained=True):
    """Loads the pretrained weights and feature statistics of
    ``pretrained_path`` into ``encoder`` and ``normalizer``; with
    ``from_pretrained=False`` only the statistics, the encoder keeping the
    random initialisation it was built with (the same architecture trained
    from scratch, with the same input features).

    Raises
    ------
    FileNotFoundError
        No feature statistics beside the checkpoint.
    """
    if from_pretrained:
        load_pretrained(pretrained_path, encoder, normalizer)
        logger.info(f"Encoder initialised from {pretrained_path}")
        return
    _, normalizer_file, _ = resolve_checkpoint(pretrained_path)
    if normalizer_file is None:
        raise FileNotFoundError(
            f"No normaliser statistics (normalize.ckpt or normalizer.ckpt) in "
            f"{pretrained_path}: the random-initialisation baseline takes the "
            "pretraining's feature statistics from there."
        )
    load_statistics(normalizer, normalizer_file)
    logger.info(
        "Encoder randomly initialised (init_from_pretrained: False); feature "
        f"statistics from {pretrained_path}"
    )


class FineTuneBrain(EpochSeededBatchesMixin, CPUDistributedMixin, sb.Brain):
    """A ``Brain`` that fine-tunes ``modules.encoder`` (a
    :class:`FineTunedEncoder`) with a head (``hparams.model``: every other
    trainable module).

    Hparams: ``encoder_opt_class``, ``model_opt_class``,
    ``lr_annealing_encoder``, ``lr_annealing_model`` (see
    ``lobes.brains.probing.anneal_learning_rates``), ``freeze_encoder`` and
    ``freeze_encoder_steps``. Subclasses call ``self.encode(feats,
    wav_lens, stage)`` in their ``compute_forward`` and ``self.anneal(
    metric)`` after each validation.
    """

    def encoder_frozen(self):
        """Whether the encoder is frozen at this optimizer step: the whole
        run with ``freeze_encoder``, else the first ``freeze_encoder_steps``
        steps."""
        return bool(self.hparams.freeze_encoder) or (
            self.optimizer_step < self.hparams.freeze_encoder_steps
        )

    def encode(self, feats, wav_lens, stage):
        """The encoder's output (B, T', D) for fbank ``feats``; while the
        encoder is frozen, computed without gradients."""
        if stage == sb.Stage.TRAIN and self.encoder_frozen():
            with torch.no_grad():
                return self.modules.encoder(feats, wav_lens)
        return self.modules.encoder(feats, wav_lens)

    def on_fit_start(self):
        """Logs what is fine-tuned, then builds the optimisers and recovers
        the last checkpoint."""
        super().on_fit_start()
        encoder = unwrap(self.modules.encoder).encoder
        n_enc = sum(p.numel() for p in encoder.parameters())
        n_head = sum(p.numel() for p in self.hparams.model.parameters())
        freeze = (
            "frozen for the whole run" if self.hparams.freeze_encoder
            else f"frozen for the first {self.hparams.freeze_encoder_steps} steps"
            if self.hparams.freeze_encoder_steps else "trained from the first step"
        )
        logger.info(
            f"Fine-tuning encoder {encoder.config}: {n_enc / 1e6:.2f}M parameters, "
            f"{freeze}; head: {n_head / 1e6:.2f}M parameters"
        )

    def init_optimizers(self):
        """One optimiser for the encoder, one for the head (``model``); every
        trainable parameter belongs to exactly one of them."""
        encoder_params = [
            p for p in unwrap(self.modules.encoder).parameters() if p.requires_grad
        ]
        head_params = [p for p in self.hparams.model.parameters() if p.requires_grad]
        in_encoder = {id(p) for p in encoder_params}
        if any(id(p) in in_encoder for p in head_params):
            raise ValueError(
                "`model` in the YAML holds encoder parameters: it lists the head's "
                "modules only (the encoder has its own optimiser, encoder_opt_class)."
            )
        covered = in_encoder | {id(p) for p in head_params}
        for name, module in self.modules.items():
            for pname, param in unwrap(module).named_parameters():
                if param.requires_grad and id(param) not in covered:
                    raise ValueError(
                        f"Parameter {name}.{pname} is trained by no optimiser: add "
                        f"the module `{name}` to `model` in the YAML."
                    )
        self.encoder_optimizer = self.hparams.encoder_opt_class(encoder_params)
        self.model_optimizer = self.hparams.model_opt_class(head_params)
        self.optimizers_dict = {
            "model_optimizer": self.model_optimizer,
            "encoder_optimizer": self.encoder_optimizer,
        }
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("model_optimizer", self.model_optimizer)
            self.checkpointer.add_recoverable("encoder_optimizer", self.encoder_optimizer)

    def freeze_optimizers(self, optimizers):
        """The optimisers to step now: the encoder's only once it is not
        frozen."""
        if self.encoder_frozen():
            return {k: v for k, v in optimizers.items() if k != "encoder_optimizer"}
        return optimizers

    def anneal(self, metric, epoch=None):
        """Anneals the head's (``lr_annealing_model``) and the encoder's
        (``lr_annealing_encoder``) learning rates after a validation stage;
        returns those of the finished epoch (``lr_model``, ``lr_encoder``)."""
        return anneal_learning_rates(
            self.hparams,
            {"model": self.model_optimizer, "encoder": self.encoder_optimizer},
            metric,
            epoch,
        )

    # Under DDP with LayerDrop, CPUDistributedMixin.wrap_distributed sets
    # find_unused_parameters (skipped layers leave parameters without gradient).
