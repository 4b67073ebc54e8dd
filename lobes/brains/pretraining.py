"""The BEST-RQ pretraining ``Brain`` and its data pipeline.

``BestRQBrain`` implements one BEST-RQ step on a batch of waveforms:

1. fbank features (``compute_features``), normalisation (``normalize``,
   ``lobes.nnet.normalization.FeatureNormalizer``), time padded with zero
   frames to a multiple of ``stack_frames`` at the end (``pad_side:
   right``) or at the start (``left``, the authors'), padded frames zeroed
   (with the encoder's ``padding_isolation``);
2. targets: the frozen ``quantizer`` on 4 stacked frames (40 ms), computed on
   the clean features;
3. span masking (one set of spans per batch, within its shortest utterance,
   as the authors did; ``mask_per_utterance`` masks each utterance over its
   own length), masked frames replaced by N(noise_mean, noise_std) noise.
   Utterance lengths for the mask: ``mask_lengths: samples`` (the authors':
   N_i // hop + 1 frames from each utterance's sample count) or ``relative``
   (round(w_i T0) from the relative length w_i);
4. the ``encoder`` (any token mixer) and the linear ``head`` predict the
   codes. Its valid lengths: ``encoder_lengths: frames`` (the fbank frames
   of each utterance) or ``authors`` (the relative waveform lengths w_i, of
   which the encoder marks round(w_i T') frames valid without
   ``padding_isolation``: the authors' and SpeechBrain's rule);
5. cross-entropy and accuracy on masked, non-padded frames.

``draw_span_mask`` and ``draw_mask_noise`` draw the mask and the noise (the
hooks a test overrides to give both).

While it trains, the step log (``train_steps_log.txt``, every
``log_interval`` optimizer steps) and the progress bar show the health
signals of ``lobes.nnet.bestrq.HealthStats`` over the steps since the last line:
masked-prediction accuracy beside its chance level (the share of the most
frequent code), how many of the codes the targets use and their perplexity,
the predictions' perplexity, the gradient norm before clipping, the
learning rate and the share of frames masked. ``lobes.utils.plot_run`` draws them.

Everything else is SpeechBrain's ``Brain``: gradient accumulation, clipping
(``max_grad_norm``), mixed precision (``--precision bf16``), DDP
(``torchrun``), intra-epoch checkpoints (``ckpt_interval_minutes``) and
``optimizer_step_limit``. The learning rate follows ``lr_annealing`` (Noam:
linear warm-up then inverse square root) once per optimizer step.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import time

import speechbrain as sb
import torch
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.utils.logger import get_logger

from lobes.brains.mixins import (
    CPUDistributedMixin,
    EpochSeededBatchesMixin,
    ResumableTrainStatsMixin,
    check_finite_features,
    unwrap,
)
from lobes.nnet.bestrq import (
    PAD_SIDES,
    HealthStats,
    compute_span_mask,
    masked_prediction_loss,
    pad_to_multiple,
    stack_frames,
)
from lobes.utils.speechbrain_private import live_progress_bars

logger = get_logger(__name__)

# The switches of the authors' behaviour: hparams key -> valid values (the
# first is the recipes' default; see the README's fidelity table).
SWITCHES = {
    "pad_side": PAD_SIDES,
    "encoder_lengths": ("frames", "authors"),
    "mask_lengths": ("samples", "relative"),
}


class BestRQBrain(
    EpochSeededBatchesMixin, CPUDistributedMixin, ResumableTrainStatsMixin, sb.Brain
):
    """BEST-RQ masked prediction of random-projection codes.

    Expects ``modules`` with ``encoder`` (``lobes.nnet.encoder.ConformerEncoder``),
    ``head`` (Linear d_model -> codebook size), ``quantizer``
    (``lobes.nnet.bestrq.RandomProjectionQuantizer``) and ``normalize``
    (``lobes.nnet.normalization.FeatureNormalizer``), and hparams
    ``compute_features``, ``sample_rate``, ``hop_length``, ``stack_frames``,
    ``pad_side``, ``encoder_lengths``, ``mask_lengths``, ``mask_prob``,
    ``mask_length``, ``mask_per_utterance``, ``noise_mean``, ``noise_std``,
    ``lr_annealing``, ``epoch_counter``, ``train_steps_logger``,
    ``train_logger`` and ``log_interval``.

    Under DDP the health signals are those of the main process's batches.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, valid in SWITCHES.items():
            value = getattr(self.hparams, key, None)
            if value not in valid:
                raise ValueError(
                    f"{key}: {value!r} in the YAML; valid values: "
                    f"{', '.join(valid)} (the README's fidelity table says which "
                    "is the authors')."
                )

    def on_fit_start(self):
        """Logs the encoder's mixer and size, then recovers the checkpoint."""
        super().on_fit_start()
        encoder = self.modules.encoder
        encoder = unwrap(encoder)
        n_enc = sum(p.numel() for p in encoder.parameters())
        n_all = n_enc + sum(p.numel() for p in self.modules.head.parameters())
        logger.info(
            f"BEST-RQ encoder {encoder.config}: {n_enc / 1e6:.2f}M parameters "
            f"({n_all / 1e6:.2f}M with the prediction head)"
        )
        quantizer = unwrap(self.modules.quantizer)
        self.health = HealthStats(cb_vocab=quantizer.CB.shape[0])

    def compute_forward(self, batch, stage):
        """Returns logits (B, T', V), targets (B, T') and loss mask (B, T')."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        stack = self.hparams.stack_frames

        feats = self.hparams.compute_features(wavs)
        check_finite_features(feats, batch.id)  # before the statistics update
        feats = self.modules.normalize(
            feats, wav_lens, epoch=self.hparams.epoch_counter.current
        )
        T0 = feats.shape[1]
        frames = torch.round(wav_lens * T0).long()
        # With left padding the p zero frames are a silent prefix of every
        # utterance: each one ends at frame p + n_i of the padded batch.
        left = (-T0) % stack if self.hparams.pad_side == "left" else 0
        feats = pad_to_multiple(feats, stack, side=self.hparams.pad_side)
        B, T, _ = feats.shape
        ends = frames + left
        encoder = unwrap(self.modules.encoder)
        if encoder.padding_isolation:  # else padded frames as the authors had
            feats = feats * length_to_mask(ends, T).bool().unsqueeze(-1)

        targets = self.modules.quantizer(stack_frames(feats, stack))
        try:
            mask = self.draw_span_mask(self.mask_frame_lengths(wavs, wav_lens, frames), T)
        except ValueError as err:
            raise ValueError(f"Batch with utterances {batch.id}: {err}") from err
        if stage == sb.Stage.TRAIN:  # for the health statistics
            self.frame_counts = (int(mask.sum()), int(frames.sum()))
        feats = torch.where(mask.unsqueeze(-1), self.draw_mask_noise(feats), feats)

        if self.hparams.encoder_lengths == "authors":
            lengths = wav_lens  # round(w_i T') frames valid (no isolation)
        else:
            lengths = ends / T
        enc = self.modules.encoder(feats, lengths)
        logits = self.modules.head(enc)
        loss_mask = mask.view(B, T // stack, stack).any(dim=-1)
        if logits.shape[1] != loss_mask.shape[1]:
            raise ValueError(
                f"The encoder outputs {logits.shape[1]} frames for {T} input "
                f"frames but the targets stack {stack} frames: make "
                "`stack_frames` equal to the front-end's total stride."
            )
        return logits, targets, loss_mask

    def mask_frame_lengths(self, wavs, wav_lens, frames):
        """Frames of each utterance for the span mask (in the coordinates of
        the padded batch, from its first frame, as the authors').

        ``mask_lengths: samples`` (the authors' collate function): N_i // hop
        + 1 with N_i = round(w_i * samples) the utterance's sample count and
        hop the fbank hop in samples, the frames of the utterance alone.
        ``relative``: ``frames``, round(w_i T0) of the padded batch's T0.
        """
        if self.hparams.mask_lengths == "relative":
            return frames
        hop = round(self.hparams.sample_rate * self.hparams.hop_length / 1000)
        samples = torch.round(wav_lens * wavs.shape[1]).long()
        return torch.div(samples, hop, rounding_mode="floor") + 1

    def draw_span_mask(self, frame_lengths, max_len):
        """The (B, T) span mask of a batch (``compute_span_mask``) for
        ``frame_lengths`` (B,) frames of a padded length ``max_len``."""
        return compute_span_mask(
            frame_lengths,
            max_len,
            self.hparams.mask_prob,
            self.hparams.mask_length,
            per_utterance=self.hparams.mask_per_utterance,
        )

    def draw_mask_noise(self, feats):
        """Noise of the shape of ``feats``, N(noise_mean, noise_std): what
        replaces the masked frames."""
        return torch.randn_like(feats) * self.hparams.noise_std + self.hparams.noise_mean

    def compute_objectives(self, predictions, batch, stage):
        """Masked cross-entropy; accumulates the masked-frame accuracy."""
        logits, targets, loss_mask = predictions
        loss, accuracy = masked_prediction_loss(logits, targets, loss_mask)
        n = int(loss_mask.sum())
        self.acc_sum += float(accuracy) * n
        self.acc_count += n
        self.last_accuracy = float(accuracy)
        if stage == sb.Stage.TRAIN:
            self.health.update(logits, targets, loss_mask, *self.frame_counts)
        return loss

    def optimizers_step(self):
        """SpeechBrain's optimizer step, after recording the gradient norm
        (before clipping, unscaled) for the health statistics."""
        grads = [p.grad for p in self.modules.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            )
            if self.scaler.is_enabled():
                norm = norm / self.scaler.get_scale()
            self.health.add_grad_norm(norm)
        super().optimizers_step()

    def on_stage_start(self, stage, epoch=None):
        """Resets the accuracy accumulators (to their checkpointed values
        when training resumes mid-epoch)."""
        self.acc_sum, self.acc_count = 0.0, 0
        if stage == sb.Stage.TRAIN:
            self.restore_train_stats()

    def train_stats_state(self):
        """The masked-accuracy accumulators, checkpointed."""
        return {
            "acc_sum": getattr(self, "acc_sum", 0.0),
            "acc_count": getattr(self, "acc_count", 0),
        }

    def load_train_stats_state(self, state):
        """Restores the accumulators of ``train_stats_state``."""
        self.acc_sum, self.acc_count = state["acc_sum"], state["acc_count"]

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Steps the LR schedule, shows the health signals on the progress
        bar and writes the step log."""
        if not should_step:
            return
        self.hparams.lr_annealing(self.optimizer)
        lr = self.optimizer.param_groups[0]["lr"]
        health = self.health.summary()
        show_on_progress_bar(health_line(health, lr))
        # Every process calls the logger: it writes on the main process and
        # broadcasts (main_process_only), so calling it on the main process
        # alone would leave it waiting forever under DDP.
        if self.optimizer_step % self.hparams.log_interval == 0:
            now = time.time()
            stats = {
                "step": self.optimizer_step,
                "lr": lr,
                "loss": round(loss.item(), 4),
                "avg_loss": round(float(self.avg_train_loss), 4),
                **health,
            }
            if hasattr(self, "_last_log_time"):
                stats["sec_per_step"] = round(
                    (now - self._last_log_time) / self.hparams.log_interval, 3
                )
            self._last_log_time = now
            self.hparams.train_steps_logger.log_stats(stats_meta=stats)
            self.health.reset()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the epoch and keeps the best checkpoints (lowest loss)."""
        stats = {"loss": stage_loss}
        if self.acc_count:
            stats["masked_acc"] = self.acc_sum / self.acc_count
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={
                    "epoch": epoch,
                    "steps": self.optimizer_step,
                    "lr": self.optimizer.param_groups[0]["lr"],
                },
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"loss": stage_loss, "steps": self.optimizer_step},
                min_keys=["loss"],
                num_to_keep=self.hparams.checkpoints_to_keep,
            )


def health_line(stats, lr):
    """The health signals, short, for the progress bar.

    Example
    -------
    >>> health_line({"masked_acc": 0.1234, "top_code_share": 0.02,
    ...              "codes_used": 812, "code_ppl": 401.2, "pred_ppl": 95.0,
    ...              "grad_norm": 1.5, "masked_share": 0.61}, 0.002)
    'acc 12.3% (chance 2.0%) codes 812 ppl 401 pred 95 |g| 1.50 lr 2.0e-03 masked 61%'
    """
    if not stats:
        return ""
    line = (
        f"acc {stats['masked_acc']:.1%} (chance {stats['top_code_share']:.1%}) "
        f"codes {stats['codes_used']} ppl {stats['code_ppl']:.0f} "
        f"pred {stats['pred_ppl']:.0f}"
    )
    if "grad_norm" in stats:
        line += f" |g| {stats['grad_norm']:.2f}"
    line += f" lr {lr:.1e}"
    if "masked_share" in stats:
        line += f" masked {stats['masked_share']:.0%}"
    return line


def show_on_progress_bar(text):
    """Puts ``text`` in front of the live progress bar of SpeechBrain's
    training loop (its description, which SpeechBrain leaves alone; the
    loss stays on the right). Nothing happens without a visible bar (tests,
    other DDP ranks)."""
    for bar in live_progress_bars():
        bar.set_description_str(text, refresh=False)


