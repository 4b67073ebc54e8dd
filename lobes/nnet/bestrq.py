"""BEST-RQ: random-projection quantiser targets, span masking, masked loss.

BEST-RQ (Chiu et al., 2022, https://arxiv.org/abs/2202.01855) trains an
encoder to predict, on masked frames, the index of the nearest code of a
*frozen random* codebook for a *frozen random* projection of the input.

* ``stack_frames``: 4 stacked 10 ms fbank frames (320 dims) per 40 ms
  encoder frame, the quantiser's input.
* ``RandomProjectionQuantizer``: Xavier projection 320 -> 16, L2
  normalisation, nearest of 8192 unit-norm codes, searched in fp32. It
  subclasses SpeechBrain's quantiser (same buffers ``P`` and ``CB``) but
  finds the nearest code with one matmul of normalised vectors and the
  distances to a few candidates instead of SpeechBrain's B x V x T x dim
  distance tensor (same argmin, ~V times less memory).
* ``compute_span_mask``: span masks, one per batch (the authors') or per
  utterance, on valid frames only.
* ``masked_prediction_loss``: cross-entropy and accuracy on masked frames.
* ``perplexity`` and ``code_usage``: how many codes the targets use and how
  evenly (a collapsed quantiser, or features that all map to a few codes,
  shows here before anything else); ``HealthStats`` accumulates them with
  the accuracy, the predictions' perplexity, the gradient norm and the share
  of masked frames between two lines of the pretraining step log.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
import torch.nn.functional as F
from speechbrain.nnet.quantisers import (
    RandomProjectionQuantizer as _SBRandomProjectionQuantizer,
)


def stack_frames(feats, stack=4):
    """Right-pads time to a multiple of ``stack`` and stacks frames.

    Arguments
    ---------
    feats : torch.Tensor
        (B, T, F) frames.
    stack : int
        Frames per stacked frame.

    Returns
    -------
    torch.Tensor
        (B, ceil(T / stack), stack * F).

    Example
    -------
    >>> stack_frames(torch.rand(2, 10, 80)).shape
    torch.Size([2, 3, 320])
    """
    B, T, C = feats.shape
    feats = pad_to_multiple(feats, stack)
    return feats.reshape(B, feats.shape[1] // stack, stack * C)


def pad_to_multiple(feats, multiple, side="right"):
    """Pads (B, T, F) with zero frames so that T is a multiple of ``multiple``.

    ``side="right"`` pads at the end of time; ``side="left"`` at the start,
    as the authors' ``train.py`` did (``F.pad`` with the amount in the
    time-start slot): every frame then moves by the pad amount
    p = (multiple - T % multiple) % multiple.

    Example
    -------
    >>> pad_to_multiple(torch.ones(1, 5, 2), 4).shape
    torch.Size([1, 8, 2])
    >>> pad_to_multiple(torch.ones(1, 5, 1), 4, side="left")[0, :, 0].tolist()
    [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    if side not in PAD_SIDES:
        raise ValueError(f"pad_side: {side!r}; valid values: {', '.join(PAD_SIDES)}")
    extra = (-feats.shape[1]) % multiple
    if not extra:
        return feats
    return F.pad(feats, (0, 0, extra, 0) if side == "left" else (0, 0, 0, extra))


PAD_SIDES = ("right", "left")


class RandomProjectionQuantizer(_SBRandomProjectionQuantizer):
    """Frozen random-projection quantiser of BEST-RQ.

    ``targets = argmin_v ||CB_v - normalize(x @ P)||``, the nearest code in
    Euclidean distance. ``P`` (Xavier uniform) and ``CB`` (unit-norm
    Gaussian codes) are buffers: never trained, saved in checkpoints so that
    a resumed run keeps the same targets.

    The code search runs in fp32 whatever the autocast (bf16/fp16) around
    it, as the authors' did (their distances and argmin are fp32 under
    autocast); only the projection ``x @ P`` runs in the autocast dtype, as
    theirs. The search takes the ``SEARCH_CANDIDATES`` codes of highest dot
    product (all codes have unit norm, so the nearest is among them), then
    the fp32 Euclidean distance to those, lowest code index first on ties:
    the authors' argmin over the V x T distances, without a B x V x T x dim
    tensor.

    Arguments
    ---------
    input_dim : int
        Stacked input size (4 x 80 = 320 in the paper).
    cb_dim : int
        Code size (16).
    cb_vocab : int
        Number of codes (8192).
    legacy_time_axis_norm : bool
        ``False`` (default, correct): L2-normalise each projected frame over
        the code dimension. ``True``: reproduce the authors' original code,
        which normalised the (B, T, cb_dim) projection over the *time* axis
        (``F.normalize`` default ``dim=1``); targets then depend on the other
        frames and on padding. Only for exact reproduction of old runs.

    Example
    -------
    >>> q = RandomProjectionQuantizer(320, 16, 8192)
    >>> q(torch.rand(2, 7, 320)).shape
    torch.Size([2, 7])
    """

    def __init__(
        self, input_dim=320, cb_dim=16, cb_vocab=8192, legacy_time_axis_norm=False
    ):
        super().__init__(input_dim, cb_dim, cb_vocab)
        self.legacy_time_axis_norm = legacy_time_axis_norm

    SEARCH_CANDIDATES = 8

    @torch.no_grad()
    def forward(self, x):
        """Maps (B, T, input_dim) to code indices (B, T), int64."""
        dim = 1 if self.legacy_time_axis_norm else -1
        proj = x.float() @ self.P  # the autocast dtype under autocast
        with torch.autocast(device_type=proj.device.type, enabled=False):
            z = F.normalize(proj.float(), dim=dim)
            codes = self.CB.float()
            k = min(self.SEARCH_CANDIDATES, codes.shape[0])
            cand = (z @ codes.t()).topk(k, dim=-1).indices.sort(dim=-1).values
            dist = torch.linalg.vector_norm(codes[cand] - z.unsqueeze(-2), dim=-1)
            return cand.gather(-1, dist.argmin(dim=-1, keepdim=True)).squeeze(-1)


def compute_span_mask(
    frame_lengths, max_len, mask_prob=0.15, mask_length=4, per_utterance=False
):
    """Samples BEST-RQ span masks.

    As in SpeechBrain's BEST-RQ, ``mask_prob`` is the probability for a frame
    to *start* a span (not to be masked): ``n`` frames get
    ``int(mask_prob * n + U(0, 1))`` (at least one) non-overlapping spans of
    ``mask_length`` frames, aligned on multiples of ``mask_length`` (so with
    spans of 4 fbank frames, whole 40 ms target frames are masked), chosen
    uniformly among the ``n // mask_length`` slots. With 0.15 and 4, about
    60 % of the frames are masked.

    ``per_utterance=False`` (the authors' method, SpeechBrain's
    ``brq_mask_collate_fn``): one set of spans for the whole batch, drawn
    with ``n`` the length of its shortest utterance, so every utterance gets
    the same masked positions and padding is never masked.
    ``per_utterance=True``: each utterance masked over its own ``n`` valid
    frames.

    Arguments
    ---------
    frame_lengths : torch.Tensor
        (B,) valid frames per utterance (int).
    max_len : int
        Padded length T of the batch.
    mask_prob : float
        Probability for a frame to start a span.
    mask_length : int
        Frames per span.
    per_utterance : bool
        See above.

    Returns
    -------
    torch.Tensor
        (B, T) bool, True on masked frames.

    Raises
    ------
    ValueError
        If an utterance is shorter than one span.

    Example
    -------
    >>> mask = compute_span_mask(torch.tensor([40, 20]), 40)
    >>> mask.shape, bool(mask[:, 20:].any()), torch.equal(mask[0], mask[1])
    (torch.Size([2, 40]), False, True)
    >>> mask = compute_span_mask(torch.tensor([40, 20]), 40, per_utterance=True)
    >>> bool(mask[1, 20:].any())
    False
    """
    frame_lengths = frame_lengths.long()
    too_short = frame_lengths < mask_length
    if too_short.any():
        raise ValueError(
            f"Utterance(s) at batch position(s) {too_short.nonzero().flatten().tolist()} "
            f"have fewer frames ({frame_lengths[too_short].tolist()}) than one "
            f"mask span ({mask_length}). Filter them out when preparing the "
            "data (raise `avoid_if_shorter_than` in the YAML)."
        )
    device = frame_lengths.device
    if not per_utterance:  # one draw, on the shortest utterance
        shortest = frame_lengths.min().view(1)
        mask = compute_span_mask(shortest, max_len, mask_prob, mask_length, True)
        return mask.expand(frame_lengths.shape[0], -1)
    B = frame_lengths.shape[0]
    slots = frame_lengths // mask_length
    n_slots_max = max_len // mask_length
    rand = torch.rand(B, device=device)
    num_mask = (mask_prob * frame_lengths + rand).long().clamp(min=1)
    num_mask = torch.minimum(num_mask, slots)
    # Random ranking of the valid slots of each utterance.
    scores = torch.rand(B, n_slots_max, device=device)
    slot_idx = torch.arange(n_slots_max, device=device)
    scores = scores.masked_fill(slot_idx[None, :] >= slots[:, None], 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    slot_mask = ranks < num_mask[:, None]
    mask = slot_mask.repeat_interleave(mask_length, dim=1)
    return F.pad(mask, (0, max_len - mask.shape[1]))


def masked_prediction_loss(logits, targets, mask):
    """Cross-entropy and accuracy of the predictions on masked frames only.

    Arguments
    ---------
    logits : torch.Tensor
        (B, T, V) predictions.
    targets : torch.Tensor
        (B, T) code indices.
    mask : torch.Tensor
        (B, T) bool, True on the frames that count (masked, not padded).

    Returns
    -------
    loss : torch.Tensor
        Mean cross-entropy over the masked frames (scalar).
    accuracy : torch.Tensor
        Fraction of masked frames whose code is predicted (scalar).

    Example
    -------
    >>> logits = torch.zeros(1, 3, 4)
    >>> logits[0, 0, 2] = 10.0
    >>> mask = torch.tensor([[True, False, False]])
    >>> loss, acc = masked_prediction_loss(logits, torch.tensor([[2, 0, 0]]), mask)
    >>> float(acc), loss.item() < 1e-3
    (1.0, True)
    """
    sel_logits = logits[mask]
    sel_targets = targets[mask]
    loss = F.cross_entropy(sel_logits.float(), sel_targets)
    accuracy = (sel_logits.argmax(dim=-1) == sel_targets).float().mean()
    return loss, accuracy.detach()


def perplexity(probs):
    """exp(entropy) of a distribution: 1 for a single outcome, V for V
    equally likely ones.

    Arguments
    ---------
    probs : torch.Tensor
        (V,) non-negative weights (normalised here; counts are fine).

    Returns
    -------
    float

    Example
    -------
    >>> perplexity(torch.tensor([0.0, 5.0, 0.0])), perplexity(torch.ones(8))
    (1.0, 8.0)
    """
    probs = probs.double().flatten()
    total = probs.sum()
    if total <= 0:
        return float("nan")
    p = probs[probs > 0] / total
    return round(float(torch.exp(-(p * p.log()).sum())), 6)


def code_usage(targets, cb_vocab):
    """How a set of targets uses the codebook.

    Arguments
    ---------
    targets : torch.Tensor
        Code indices, any shape.
    cb_vocab : int
        Codebook size (8192).

    Returns
    -------
    dict
        ``codes_used`` (distinct codes), ``code_ppl`` (perplexity of the
        code distribution: ``cb_vocab`` when uniform, 1 when collapsed) and
        ``top_code_share`` (share of the most frequent code: the accuracy of
        a constant prediction, the chance level of the masked accuracy).

    Example
    -------
    >>> code_usage(torch.tensor([3, 3, 3, 3]), 8)
    {'codes_used': 1, 'code_ppl': 1.0, 'top_code_share': 1.0}
    >>> code_usage(torch.arange(8).repeat(2), 8)
    {'codes_used': 8, 'code_ppl': 8.0, 'top_code_share': 0.125}
    """
    return usage_of_counts(torch.bincount(targets.flatten().long(), minlength=cb_vocab))


def usage_of_counts(counts):
    """``code_usage`` of a histogram: ``counts`` (V,) of each code."""
    total = counts.sum()
    return {
        "codes_used": int((counts > 0).sum()),
        "code_ppl": perplexity(counts),
        "top_code_share": round(float(counts.max() / total), 6) if total > 0 else float("nan"),
    }


class HealthStats:
    """The health signals of a BEST-RQ pretraining, accumulated over the
    optimizer steps between two lines of the step log.

    ``update`` takes each training batch's logits, targets and masks;
    ``add_grad_norm`` each optimizer step's gradient norm; ``summary``
    returns, over everything since the last ``reset``:

    * ``masked_acc``: accuracy of the predicted codes on masked frames;
    * ``top_code_share``, ``codes_used``, ``code_ppl``: the targets'
      code usage on masked frames (``code_usage``), out of ``cb_vocab``;
    * ``pred_ppl``: perplexity of the mean predicted distribution on masked
      frames (a head that predicts the same codes everywhere has a low one);
    * ``grad_norm``: mean gradient norm before clipping;
    * ``masked_share``: share of the valid input frames that were masked.

    Arguments
    ---------
    cb_vocab : int
        Codebook size.

    Example
    -------
    >>> stats = HealthStats(cb_vocab=4)
    >>> logits = torch.tensor([[[9.0, 0, 0, 0], [0, 9.0, 0, 0], [0, 0, 0, 9.0]]])
    >>> stats.update(logits, torch.tensor([[0, 1, 2]]), torch.tensor([[True, True, True]]),
    ...              masked_frames=12, valid_frames=20)
    >>> stats.add_grad_norm(2.0)
    >>> s = stats.summary()
    >>> round(s["masked_acc"], 3), s["codes_used"], s["masked_share"], s["grad_norm"]
    (0.667, 3, 0.6, 2.0)
    """

    def __init__(self, cb_vocab):
        self.cb_vocab = cb_vocab
        self.reset()

    def reset(self):
        """Forgets everything accumulated."""
        self.counts = None
        self.prob_sum = None
        self.correct = 0
        self.n_masked = 0
        self.masked_frames = 0
        self.valid_frames = 0
        self.grad_norms = []

    @torch.no_grad()
    def update(self, logits, targets, loss_mask, masked_frames, valid_frames):
        """Adds one batch: ``logits`` (B, T', V), ``targets`` (B, T'),
        ``loss_mask`` (B, T') and the numbers of masked and valid input
        frames."""
        sel_logits = logits[loss_mask].float()
        sel_targets = targets[loss_mask]
        counts = torch.bincount(sel_targets, minlength=self.cb_vocab)
        probs = sel_logits.softmax(dim=-1).sum(dim=0, dtype=torch.float64)
        if self.counts is None:
            self.counts, self.prob_sum = counts, probs
        else:
            self.counts += counts
            self.prob_sum += probs
        self.correct += int((sel_logits.argmax(dim=-1) == sel_targets).sum())
        self.n_masked += int(sel_targets.numel())
        self.masked_frames += int(masked_frames)
        self.valid_frames += int(valid_frames)

    def add_grad_norm(self, norm):
        """Adds the gradient norm (before clipping) of one optimizer step."""
        self.grad_norms.append(float(norm))

    def summary(self):
        """The signals since the last ``reset`` (a dict of floats and ints;
        empty if no batch was added)."""
        if not self.n_masked:
            return {}
        stats = {"masked_acc": round(self.correct / self.n_masked, 6)}
        stats.update(usage_of_counts(self.counts))
        stats["pred_ppl"] = perplexity(self.prob_sum)
        if self.grad_norms:
            stats["grad_norm"] = round(sum(self.grad_norms) / len(self.grad_norms), 6)
        if self.valid_frames:
            stats["masked_share"] = round(self.masked_frames / self.valid_frames, 6)
        return stats
