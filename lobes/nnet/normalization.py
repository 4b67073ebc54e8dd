"""Feature normalisation of the BEST-RQ pipeline: three methods, one class.

``FeatureNormalizer`` normalises fbank frames ``x`` (B, T, F) of utterances
with relative lengths ``w`` (B,) in one of three ways:

* ``authors``: the global statistics of the BEST-RQ study's runs (its
  SpeechBrain fork, 0.5.16-develop, ``InputNormalization(norm_type="global")``).
  For batch k, each utterance i has n_i = round(w_i T) valid frames, mean
  mu_i and *unbiased* standard deviation sigma_i (floored at ``eps``) over
  them; the batch statistics are m_k = mean_i mu_i and s_k = mean_i sigma_i
  (within-utterance spread only). The running statistics are M_1 = m_1,
  then M_k = (1 - 1/k) M_{k-1} + (1/k) m_k (S likewise) while
  ``epoch < update_until_epoch``, so M_n = (1/n) sum_k m_k: every training
  batch weighs the same. ``count`` (batches) grows with every training
  batch, also once frozen. Nothing is synchronised between DDP processes.
  Applied as (x - M) / S.
* ``pooled``: SpeechBrain 1.1's ``InputNormalization(norm_type="global")``.
  The valid frames (t < w_i T - 1e-6) of every utterance of every batch
  seen, all DDP processes together, are pooled: M and S are their exact
  mean and *biased* standard deviation, so S includes the spread between
  utterances. ``count`` counts frames. Applied as (x - M) / max(S, eps).
* ``sentence``: each utterance by its own mean and biased standard deviation
  over its valid frames (t < w_i T - 1e-6), as SpeechBrain 1.1's
  ``norm_type="sentence"`` (SpeechBrain's own BEST-RQ recipe); no state.

Statistics are updated in training mode only, before the batch is
normalised, while ``epoch`` (the recipe's ``epoch_counter.current``) is below
``update_until_epoch`` (or when ``epoch`` is None).

The state is a dict of plain values (``method`` str, ``count`` int,
``glob_mean`` and ``glob_std`` tensors), written by ``save`` and read by
``load`` with ``torch.load(..., weights_only=True)``; ``load`` also reads the
``normalizer.ckpt`` / ``normalize.ckpt`` files of SpeechBrain's
``InputNormalization`` (``count``, ``glob_mean``, ``glob_std``), of 1.1
(``pooled``) and of the authors' fork (``authors``: it also saved
``spk_dict_*`` keys). A normaliser built with ``method=None`` takes the
method of the statistics it loads: what the consumers of a pretrained
encoder (inference, probes, fine-tuning) use, so that they apply what the
encoder was trained with.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
import torch.distributed as dist
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    mark_as_transfer,
    register_checkpoint_hooks,
)
from torch import nn

from lobes.utils.safe_io import load_tensors

METHODS = ("authors", "pooled", "sentence")


def check_method(method, where="normalization"):
    """Refuses an unknown normalisation method, naming the valid ones."""
    if method not in METHODS:
        raise ValueError(
            f"{where}: {method!r}; valid methods: {', '.join(METHODS)}"
        )


def read_statistics(path):
    """The statistics saved at ``path`` as a dict with ``method``, ``count``,
    ``glob_mean`` and ``glob_std``: a file of ``FeatureNormalizer.save``, or
    of SpeechBrain's ``InputNormalization`` (``method`` then ``authors`` for
    the fork's files, which hold ``spk_dict_*`` keys, else ``pooled``; None
    when it holds no global statistics: a per-sentence normaliser's, or one
    that never saw a batch). Read with ``weights_only=True``
    (``lobes.utils.safe_io.load_tensors``).

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "normalizer.ckpt")
    >>> torch.save({"count": 3, "glob_mean": torch.zeros(2),
    ...             "glob_std": torch.ones(2)}, path)  # SpeechBrain 1.1's format
    >>> read_statistics(path)["method"]
    'pooled'
    """
    state = load_tensors(path, what="feature statistics file")
    if not isinstance(state, dict) or "glob_mean" not in state:
        raise ValueError(
            f"{path} is not a file of feature statistics (expected a dict with "
            "count, glob_mean and glob_std)."
        )
    mean, std = state["glob_mean"], state["glob_std"]
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    count = int(state.get("count", 0))
    method = state.get("method")
    if method is None:  # SpeechBrain's InputNormalization
        has_global = count > 0 and mean.numel() > 1
        if not has_global:
            method, mean, std = None, torch.empty(0), torch.empty(0)
        else:
            method = "authors" if "spk_dict_mean" in state else "pooled"
    else:
        check_method(method, f"{path}: method")
    return {"method": method, "count": count, "glob_mean": mean, "glob_std": std}


@register_checkpoint_hooks
class FeatureNormalizer(nn.Module):
    """Global (``authors`` or ``pooled``) or per-sentence feature
    normalisation; see the module docstring for the equations.

    Arguments
    ---------
    method : str or None
        ``authors``, ``pooled`` or ``sentence``; None: the method of the
        statistics ``load`` reads (a normaliser used before is an error).
    update_until_epoch : int
        The global statistics are updated while ``epoch`` < this (4: epochs
        1 to 3, the authors' setting).
    eps : float
        Floor of the standard deviations (1e-10).

    Example
    -------
    >>> torch.manual_seed(0) is not None
    True
    >>> x = torch.randn(2, 50, 3) * 2 + 1
    >>> lens = torch.tensor([1.0, 0.6])
    >>> norm = FeatureNormalizer("authors")
    >>> y = norm(x, lens)                   # training mode: statistics updated
    >>> norm.count, norm.glob_mean.shape
    (1, torch.Size([3]))
    >>> mu = torch.stack([x[0, :50].mean(0), x[1, :30].mean(0)]).mean(0)
    >>> torch.allclose(norm.glob_mean, mu)
    True
    >>> sd = torch.stack([x[0, :50].std(0), x[1, :30].std(0)]).mean(0)
    >>> torch.allclose(norm.glob_std, sd)  # unbiased, within utterances
    True
    >>> _ = norm(x, lens, epoch=4)          # frozen from epoch 4: only counted
    >>> norm.count, torch.allclose(norm.glob_mean, mu)
    (2, True)
    >>> norm.eval()(x[:1]).shape            # eval mode: applied, never updated
    torch.Size([1, 50, 3])
    >>> FeatureNormalizer("sentence")(x, lens)[1, :30].mean().abs() < 1e-6
    tensor(True)
    """

    def __init__(self, method=None, update_until_epoch=4, eps=1e-10):
        super().__init__()
        if method is not None:
            check_method(method, "FeatureNormalizer: method")
        self.method = method
        self.update_until_epoch = update_until_epoch
        self.eps = eps
        self.count = 0
        # Buffers (moved by .to()), not in the state dict: the statistics
        # are saved by ``save`` (the checkpoint hook), never with a model.
        self.register_buffer("glob_mean", torch.empty(0), persistent=False)
        self.register_buffer("glob_std", torch.empty(0), persistent=False)

    def extra_repr(self):
        return f"method={self.method!r}, count={self.count}"

    def has_statistics(self):
        """Whether the normaliser can be applied (per-sentence: always)."""
        return self.method == "sentence" or (
            self.method is not None and self.glob_mean.numel() > 0
        )

    def forward(self, x, lengths=None, epoch=None):
        """Normalises ``x`` (B, T, F); ``lengths`` (B,) relative lengths (all
        1 if None); ``epoch`` decides whether the global statistics are still
        updated (training mode only)."""
        if self.method is None:
            raise RuntimeError(
                "FeatureNormalizer(method=None) is used before its statistics "
                "were loaded (load_pretrained / load): it takes the method of "
                "the pretraining's normalizer.ckpt."
            )
        if lengths is None:
            lengths = torch.ones(x.shape[0], device=x.device)
        lengths = lengths.to(x.device)
        if self.method == "sentence":
            _, mean, var = _pooled_statistics(x, _valid_frames(x, lengths), dims=(1,))
            return (x - mean.unsqueeze(1)) / var.sqrt().clamp(min=self.eps).unsqueeze(1)
        if self.training and (
            self.count == 0 or epoch is None or epoch < self.update_until_epoch
        ):
            self._update(x, lengths)
        elif self.training and self.method == "authors":
            self.count += 1  # the authors' count grows once frozen too
        if self.glob_mean.numel() == 0:
            raise RuntimeError(
                "FeatureNormalizer: no statistics yet (it never saw a training "
                "batch and none were loaded)."
            )
        mean, std = self.glob_mean.to(x.dtype), self.glob_std.to(x.dtype)
        if self.method == "pooled":
            std = std.clamp(min=self.eps)
        return (x - mean) / std

    @torch.no_grad()
    def _update(self, x, lengths):
        """One training batch into the running statistics."""
        if self.method == "authors":
            mean, std = _authors_batch_statistics(x, lengths, self.eps)
            if self.count == 0:
                self.glob_mean, self.glob_std = mean, std
            else:
                weight = 1.0 / (self.count + 1)
                self.glob_mean = (1 - weight) * self.glob_mean.to(mean) + weight * mean
                self.glob_std = (1 - weight) * self.glob_std.to(std) + weight * std
            self.count += 1
            return
        count, mean, var = _pooled_statistics(x, _valid_frames(x, lengths), dims=(0, 1))
        count, mean, var = _all_reduce_statistics(count, mean, var)
        if self.count == 0:
            self.count, self.glob_mean, self.glob_std = count, mean, var.sqrt()
            return
        total = self.count + count
        w_old, w_new = self.count / total, count / total
        old_mean, old_var = self.glob_mean.to(mean), self.glob_std.to(mean).square()
        new_mean = w_old * old_mean + w_new * mean
        new_var = w_old * (old_var + (new_mean - old_mean).square()) + w_new * (
            var + (new_mean - mean).square()
        )
        self.count, self.glob_mean, self.glob_std = total, new_mean, new_var.sqrt()

    def state(self):
        """The statistics as plain values (what ``save`` writes)."""
        return {
            "method": self.method,
            "count": int(self.count),
            "glob_mean": self.glob_mean.detach().cpu().clone(),
            "glob_std": self.glob_std.detach().cpu().clone(),
        }

    def load_state(self, state, source="the statistics"):
        """Takes a dict of ``read_statistics`` (or ``state()``). A normaliser
        built with a method refuses statistics of another one."""
        method = state["method"]
        if method is None:  # SpeechBrain's file without global statistics
            if self.method == "sentence":
                method = "sentence"
            else:
                raise ValueError(
                    f"{source} holds no global feature statistics (SpeechBrain's "
                    "InputNormalization of a per-sentence normalisation, or one "
                    "that never saw a batch); build FeatureNormalizer('sentence') "
                    "if the encoder was trained with per-sentence normalisation."
                )
        if self.method is not None and method != self.method:
            raise ValueError(
                f"{source} holds {method!r} feature statistics but this "
                f"normaliser computes {self.method!r} ones (the `normalization` "
                f"of the YAML): resume with --normalization={method}, or start "
                "a new run (another output_folder)."
            )
        device = self.glob_mean.device
        self.method = method
        self.count = int(state["count"])
        self.glob_mean = state["glob_mean"].to(device)
        self.glob_std = state["glob_std"].to(device)

    @mark_as_saver
    def save(self, path):
        """Writes the statistics to ``path`` (plain tensors, ints, a str)."""
        torch.save(self.state(), path)

    @mark_as_transfer
    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Reads statistics written by ``save`` or by SpeechBrain's
        ``InputNormalization`` (see ``read_statistics``)."""
        del end_of_epoch  # the statistics are the same either way
        self.load_state(read_statistics(path), source=str(path))


def load_statistics(normalizer, path):
    """Loads the statistics file ``path`` into ``normalizer``: a
    ``FeatureNormalizer``, or SpeechBrain's ``InputNormalization`` (global
    statistics only; its ``count``, ``glob_mean`` and ``glob_std`` are set).

    Raises
    ------
    ValueError
        Statistics of another method than the normaliser's, or per-sentence
        normalisation for a SpeechBrain global normaliser.
    """
    if isinstance(normalizer, FeatureNormalizer):
        normalizer.load(path)
        return normalizer
    state = read_statistics(path)
    if state["method"] is None or getattr(normalizer, "norm_type", "global") != "global":
        raise ValueError(
            f"{path}: use lobes.nnet.normalization.FeatureNormalizer() to "
            f"apply these statistics ({state['method'] or 'none'}); "
            f"{type(normalizer).__name__} cannot."
        )
    normalizer.count = state["count"]
    normalizer.glob_mean = state["glob_mean"]
    normalizer.glob_std = state["glob_std"]
    return normalizer


def _valid_frames(x, lengths):
    """(B, T, 1) bool: SpeechBrain 1.1's valid frames, t < w T - 1e-6."""
    T = x.shape[1]
    t = torch.arange(T, device=x.device)
    return (t[None, :] < (lengths[:, None] * T - 1e-6)).unsqueeze(-1)


def _pooled_statistics(x, valid, dims):
    """Count, mean and biased variance of the valid frames of ``x`` over
    ``dims`` (the other dimensions kept)."""
    count = valid.sum(dim=dims, keepdim=True)
    mean = (x * valid).sum(dim=dims, keepdim=True) / count
    var = ((x - mean).square() * valid).sum(dim=dims, keepdim=True) / count
    return int(count.sum()), mean.squeeze(dims), var.squeeze(dims)


def _authors_batch_statistics(x, lengths, eps):
    """m_k and s_k of the authors' normaliser: per-utterance mean and
    unbiased std (floored) over round(w_i T) frames, averaged over the
    utterances."""
    n = torch.round(lengths * x.shape[1]).long()
    if bool((n < 2).any()):
        raise ValueError(
            f"Utterances with fewer than 2 frames ({n.tolist()}): the authors' "
            "normaliser needs 2 for an unbiased standard deviation."
        )
    means, stds = [], []
    for i, frames in enumerate(n.tolist()):
        utt = x[i, :frames]
        means.append(utt.mean(dim=0))
        stds.append(utt.std(dim=0).clamp(min=eps))
    return torch.stack(means).mean(dim=0), torch.stack(stds).mean(dim=0)


def _all_reduce_statistics(count, mean, var):
    """Pools (count, mean, biased variance) over the DDP processes, as
    SpeechBrain 1.1 does; unchanged without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count, mean, var
    total = torch.tensor(float(count), device=mean.device)
    dist.all_reduce(total)
    weight = count / float(total)
    global_mean = mean * weight
    dist.all_reduce(global_mean)
    global_var = (var + (mean - global_mean).square()) * weight
    dist.all_reduce(global_var)
    return int(round(float(total))), global_mean, global_var
