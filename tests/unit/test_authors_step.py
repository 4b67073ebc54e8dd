"""One pretraining step of our recipe, with the switches set to the authors'
behaviour, equals the authors' step (issue 25).

Every reference below is written from the equations of the BEST-RQ study's
step (``whettenr/brq-att-alt-exp`` ``train.py``, ``mask.py``,
``quantiser.py``; ``whettenr/speechbrain-fork`` ``InputNormalization`` and
``TransformerASR``), as restated in the README's fidelity table, not from
their files:

* fbank -> normalise (their statistics) -> pad p = (4 - T0 % 4) % 4 zero
  frames at the *start* of time -> stack 4 frames -> targets
  argmin_v ||CB_v - normalize(x P)|| (normalised over time, fp32 distances)
  -> N(0, 0.1) noise on the masked frames (one set of spans, drawn on the
  shortest utterance counted as N_i // 160 + 1 frames) -> encoder whose valid
  frames are round(w_i T') -> head -> cross-entropy on the masked stacked
  frames;
* the update: AdamW, Noam warm-up (step 1 at the peak rate, step s at
  lr (s - 1) / W), clipping, gradient accumulation 2.

Each item is tested alone, then one whole step of
``lobes.brains.pretraining.BestRQBrain`` built from the recipe's YAML (tiny
encoder, dropout and LayerDrop 0) on a fixed batch, mask and noise against a
reference step assembled from separately written parts.
"""

import copy
import math
import tempfile

import pytest
import speechbrain as sb
import torch
import torch.nn.functional as F
from conftest import REPO
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.lobes.models.transformer.TransformerASR import (
    EncoderWrapper,
    TransformerASR,
)
from speechbrain.nnet.activations import Swish
from speechbrain.processing.features import InputNormalization

from lobes.brains.mixins import uses_layerdrop
from lobes.brains.pretraining import BestRQBrain
from lobes.deploy.convert import infer_config, map_state, split_source
from lobes.nnet.bestrq import RandomProjectionQuantizer, pad_to_multiple
from lobes.nnet.mixers.common import sinusoidal_positions
from lobes.nnet.normalization import FeatureNormalizer, read_statistics
from lobes.recipe import load_hparams

RECIPES = REPO / "recipes"
PRETRAINING = RECIPES / "LibriSpeech/self-supervised-learning/BEST-RQ-linear/hparams"
MIXERS = ("mhsa", "hypermixing", "fastformer", "summarymixing", "mamba", "mhsa_sdpa")

# Sample counts of a batch where every item differs between the two rules:
# T0 = 121 fbank frames (p = 3 padded), T' = 31 encoder frames; the authors'
# encoder lengths round(w T') = [31, 15, 21], ours round(n / T * T') with n =
# round(w T0) = [30, 14, 21] (end padding) or n + p = [31, 15, 22] (start
# padding); the shortest utterance N // 160 + 1 = 59 frames, round(w T0) = 58.
SAMPLES = (19201, 9280, 13099)
HOP = 160
MASK_U = 0.2  # the U[0, 1) of the number of spans: int(0.15 L + U) = 9 for 59, 8 for 58
NOISE_SEED = 7
AUTHORS_SWITCHES = {
    "pad_side": "left",
    "encoder_lengths": "authors",
    "mask_lengths": "samples",
    "normalization": "authors",
    "legacy_time_axis_norm": True,
    "mask_per_utterance": False,
}


def waveforms(samples=SAMPLES, seed=3):
    """A padded batch of speech-like signals (harmonics + noise)."""
    g = torch.Generator().manual_seed(seed)
    wavs = []
    for i, n in enumerate(samples):
        t = torch.arange(n) / 16000
        f0 = 110 + 40 * i
        wav = sum(torch.sin(2 * math.pi * f0 * k * t + k) / k for k in range(1, 6))
        wav = wav * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)) + 0.05 * torch.randn(n, generator=g)
        wavs.append({"id": f"u{i}", "sig": 0.1 * wav.float()})
    return PaddedBatch(wavs)


# --------------------------------------------------------------------------
# The authors' equations, written here


def authors_statistics(x, lens):
    """m, s of one batch: each utterance's mean and unbiased std (floored at
    1e-10) over round(w_i T0) frames, averaged over the utterances."""
    means, stds = [], []
    for i in range(x.shape[0]):
        n = int(torch.round(lens[i] * x.shape[1]))
        means.append(x[i, :n].mean(dim=0))
        stds.append(torch.clamp(x[i, :n].std(dim=0, unbiased=True), min=1e-10))
    return torch.stack(means).mean(0), torch.stack(stds).mean(0)


def authors_mask(shortest, u=MASK_U, mask_length=4, mask_prob=0.15):
    """Their collate function's spans: K = int(0.15 L + U) (at least 1) of
    the L // 4 slots, a fixed permutation here, sorted; 4 frames each."""
    k = max(int(mask_prob * shortest + u), 1)
    slots = torch.randperm(shortest // mask_length, generator=torch.Generator().manual_seed(11))
    starts = (slots * mask_length)[:k].sort().values
    return torch.cat([torch.arange(s, s + mask_length) for s in starts.tolist()])


def authors_targets(stacked, P, CB, time_axis=True):
    """argmin over the codes of the fp32 Euclidean distances to
    normalize(x P) (normalised over time, dim 1, when ``time_axis``)."""
    z = F.normalize(stacked @ P, dim=1 if time_axis else -1).float()
    dist = torch.linalg.vector_norm(CB.float().unsqueeze(1) - z.unsqueeze(1), dim=-1)  # (B, V, T')
    return dist.argmin(dim=1)


def speechbrain_encoder(d_model=32, nhead=4, d_ffn=64, layers=2, kernel=7):
    """SpeechBrain's Conformer (as the authors' fork builds it: front-end +
    TransformerASR, Swish, RelPosMHAXL), no dropout: its forward computes
    the authors' valid frames round(w T') itself."""
    cnn = ConvolutionFrontEnd(
        input_shape=(8, 10, 80), num_blocks=2, num_layers_per_block=1,
        out_channels=(128, 32), kernel_sizes=(3, 3), strides=(2, 2),
        residuals=(False, False), dropout=0.0,
    )
    transformer = TransformerASR(
        input_size=640, tgt_vocab=10, d_model=d_model, nhead=nhead,
        num_encoder_layers=layers, num_decoder_layers=0, d_ffn=d_ffn, dropout=0.0,
        activation=torch.nn.GELU, conformer_activation=Swish, kernel_size=kernel,
        encoder_module="conformer", attention_type="RelPosMHAXL",
        normalize_before=True, causal=False,
    )
    return torch.nn.ModuleList([cnn, EncoderWrapper(transformer)])


def ours_with_lengths(encoder, x, lens):
    """Our encoder's parts (no padding isolation), the valid frames given
    here as the authors': round(w_i T')."""
    B, T, _ = x.shape
    h, _ = encoder.frontend(x, torch.full((B,), T))
    n_enc = torch.round(lens * h.shape[1]).long()
    pad = torch.arange(h.shape[1])[None, :] >= n_enc[:, None]
    h = encoder.input_proj(h)
    h = h + sinusoidal_positions(h.shape[1], encoder.d_model, dtype=h.dtype)
    for layer in encoder.layers:
        h = layer(h, pad, None)
    return encoder.norm(h)


def reference_step(batch, brain, reference_encoder):
    """The authors' step on ``batch``, from their equations, with the
    quantiser and head of ``brain`` and ``reference_encoder``."""
    wavs, lens = batch.sig
    feats = brain.hparams.compute_features(wavs)
    mean, std = authors_statistics(feats, lens)
    x = (feats - mean) / std
    B, T0, C = x.shape
    p = (4 - T0 % 4) % 4
    x = torch.cat([torch.zeros(B, p, C), x], dim=1)  # at the START of time
    stacked = x.view(B, x.shape[1] // 4, 4 * C)
    q = brain.modules.quantizer
    targets = authors_targets(stacked, q.P, q.CB)
    samples = torch.round(lens * wavs.shape[1]).long()
    idx = authors_mask(int((samples // HOP + 1).min()))
    x = x.clone()
    x[:, idx, :] = noise_for(B, len(idx), C)
    enc = reference_encoder(x, lens)
    logits = brain._reference_head(enc)
    mask_idx = idx[::4] // 4
    loss = F.cross_entropy(
        logits[:, mask_idx].reshape(-1, logits.shape[-1]), targets[:, mask_idx].reshape(-1)
    )
    return {"loss": loss, "targets": targets, "mask_idx": mask_idx, "mean": mean, "std": std}


# --------------------------------------------------------------------------
# Our Brain, built the way the recipe builds it


class InjectedBrain(BestRQBrain):
    """The recipe's Brain with the mask and the noise given by the test (the
    authors' draws come from other generators): ``mask_from`` maps the frame
    lengths it is given to the authors' index vector; ``noise_for`` (B, K*4,
    C) goes to those frames."""

    mask_from = None

    def draw_span_mask(self, frame_lengths, max_len):
        self.seen_mask_lengths = frame_lengths.clone()
        self.mask_idx = self.mask_from(frame_lengths)
        mask = torch.zeros(frame_lengths.shape[0], max_len, dtype=torch.bool)
        mask[:, self.mask_idx] = True
        return mask

    def draw_mask_noise(self, feats):
        full = torch.zeros_like(feats)
        full[:, self.mask_idx] = noise_for(feats.shape[0], len(self.mask_idx), feats.shape[2])
        return full

    def compute_forward(self, batch, stage):
        self.outputs = super().compute_forward(batch, stage)
        return self.outputs


def build_brain(tmp, mixer="mhsa", encoder=None, brain_class=InjectedBrain, **overrides):
    """``BestRQBrain`` from ``hparams/bestrq_<mixer>.yaml`` as ``train.py``
    builds it, fp32 on CPU, with ``overrides`` (YAML keys); ``encoder``: the
    encoder's constructor arguments (tiny by default)."""
    encoder = encoder or {
        "num_layers": 2, "d_model": 32, "nhead": 1 if mixer == "summarymixing" else 4,
        "d_ffn": 64, "kernel_size": 7, "dropout": 0.0, "layerdrop_prob": 0.0,
        "padding_isolation": False,
        **({"mixer_kwargs": {"local_proj_hid_dim": [32], "local_proj_out_dim": 16,
                             "summary_hid_dim": [32]}} if mixer == "summarymixing" else {}),
    }
    hparams, _ = load_hparams(
        PRETRAINING / f"bestrq_{mixer}.yaml",
        {"data_folder": str(tmp), "output_folder": str(tmp / "out"), "precision": "fp32",
         "encoder_overrides": encoder, **overrides},
    )
    brain = brain_class(
        modules=hparams["modules"], opt_class=hparams["optimizer"], hparams=hparams,
        run_opts={"device": "cpu"}, checkpointer=None,
    )
    brain.on_fit_start()
    brain.hparams.epoch_counter.current = 1  # the first epoch, as in fit()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    brain.mask_from = lambda lengths: authors_mask(int(lengths.min()))
    return brain


def noise_for(batch_size, n_frames, channels=80):
    """The N(0, 0.1) noise of the masked frames (B, K * 4, C), as the
    authors draw it (their generator is CUDA's: fixed here)."""
    g = torch.Generator().manual_seed(NOISE_SEED)
    return torch.normal(0.0, 0.1, (batch_size, n_frames, channels), generator=g)


def rel(a, b):
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


# --------------------------------------------------------------------------
# Each item alone


def test_left_padding_puts_the_zero_frames_first_and_moves_stacking_targets_and_lengths(tmp_path):
    batch = waveforms()
    seen = {}
    for side in ("left", "right"):
        brain = build_brain(tmp_path / side, pad_side=side, encoder_lengths="frames")
        brain.modules.quantizer.register_forward_pre_hook(lambda m, a: seen.__setitem__("q", a[0]))
        brain.modules.encoder.register_forward_pre_hook(
            lambda m, a: seen.update(enc=a[0].detach().clone(), lens=a[1].clone()))
        brain.compute_forward(batch, sb.Stage.TRAIN)
        brain.modules.normalize.eval()  # its statistics of this batch
        feats = brain.modules.normalize(brain.hparams.compute_features(batch.sig[0]), batch.sig[1])
        p = (-feats.shape[1]) % 4
        assert p == 3
        want = F.pad(feats, (0, 0, p, 0) if side == "left" else (0, 0, 0, p))
        torch.testing.assert_close(seen["q"], want.view(3, -1, 320))
        idx = brain.mask_idx
        kept = torch.ones(want.shape[1], dtype=torch.bool)
        kept[idx] = False
        torch.testing.assert_close(seen["enc"][:, kept], want[:, kept])
        frames = torch.round(batch.sig[1] * feats.shape[1])
        # the left pad is a silent prefix: each utterance ends at p + n_i
        ends = frames + (p if side == "left" else 0)
        torch.testing.assert_close(seen["lens"], ends / want.shape[1])
    assert torch.equal(pad_to_multiple(torch.ones(1, 5, 1), 4, "left")[0, :, 0],
                       torch.tensor([0.0, 0, 0, 1, 1, 1, 1, 1]))


@pytest.mark.parametrize("rule", ["authors", "frames"])
def test_encoder_valid_lengths_the_authors_way(tmp_path, rule):
    """encoder_lengths: authors gives the encoder w_i, of which it marks
    round(w_i T') frames valid; frames gives it each utterance's frames."""
    batch = waveforms()
    brain = build_brain(tmp_path, encoder_lengths=rule, pad_side="right")
    seen = []
    brain.modules.encoder.layers[0].register_forward_pre_hook(lambda m, a: seen.append(a[1]))
    brain.compute_forward(batch, sb.Stage.TRAIN)
    valid = (~seen[0]).sum(dim=1).tolist()
    lens = batch.sig[1]
    T0 = brain.hparams.compute_features(batch.sig[0]).shape[1]
    T_enc = math.ceil(T0 / 4)
    authors = torch.round(lens * T_enc).long().tolist()
    assert authors == [31, 15, 21]
    if rule == "authors":
        assert valid == authors
    else:
        frames = torch.round(lens * T0)
        assert valid == torch.round(frames / (4 * T_enc) * T_enc).long().tolist() != authors


@pytest.mark.parametrize("source", ["samples", "relative"])
def test_mask_lengths_from_the_sample_counts(tmp_path, source):
    batch = waveforms()
    brain = build_brain(tmp_path, mask_lengths=source)
    brain.compute_forward(batch, sb.Stage.TRAIN)
    wavs, lens = batch.sig
    samples = torch.tensor(SAMPLES)
    by_samples = samples // HOP + 1
    relative = torch.round(lens * (wavs.shape[1] // HOP + 1)).long()
    assert int(by_samples.min()) == 59 and int(relative.min()) == 58
    want = by_samples if source == "samples" else relative
    assert torch.equal(brain.seen_mask_lengths, want)
    # 9 spans for 59 frames, 8 for 58 (U = 0.2): the number of spans changes
    assert len(brain.mask_idx) == (36 if source == "samples" else 32)


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        B, T = int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(40, 90, (1,), generator=g))
        # utterances with their own offset and scale (loudness, channel)
        x = torch.randn(B, T, 6, generator=g) * (1 + torch.rand(B, 1, 6, generator=g)) \
            + 3 * torch.randn(B, 1, 6, generator=g)
        lens = torch.rand(B, generator=g) * 0.6 + 0.4
        lens[int(torch.randint(0, B, (1,), generator=g))] = 1.0
        out.append((x, lens))
    return out


def test_authors_normaliser_statistics_after_batch_1_and_batch_n():
    data = batches(6)
    norm = FeatureNormalizer("authors", update_until_epoch=4)
    ms, ss = [], []
    for k, (x, lens) in enumerate(data, start=1):
        m, s = authors_statistics(x, lens)
        ms.append(m), ss.append(s)
        y = norm(x, lens, epoch=1)
        # after batch k: the plain average of the k batches' statistics
        torch.testing.assert_close(norm.glob_mean, torch.stack(ms).mean(0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(norm.glob_std, torch.stack(ss).mean(0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(y, (x - norm.glob_mean) / norm.glob_std)  # no floor
        assert norm.count == k
    frozen = (norm.glob_mean.clone(), norm.glob_std.clone())
    norm(*data[0], epoch=4)  # from update_until_epoch on: frozen, still counted
    assert torch.equal(norm.glob_mean, frozen[0]) and norm.count == 7
    norm.eval()(*data[1], epoch=1)  # eval: never updated, not counted
    assert norm.count == 7 and torch.equal(norm.glob_std, frozen[1])


def test_pooled_normaliser_equals_speechbrain_1_1_and_differs_from_the_authors():
    data = batches(6, seed=1)
    ours, sb = FeatureNormalizer("pooled"), InputNormalization(norm_type="global", update_until_epoch=4)
    authors = FeatureNormalizer("authors")
    for k, (x, lens) in enumerate(data, start=1):
        torch.testing.assert_close(ours(x, lens, epoch=1), sb(x, lens, epoch=1), rtol=1e-5, atol=1e-5)
        authors(x, lens, epoch=1)
        if k in (1, len(data)):  # after batch 1 and after batch n
            torch.testing.assert_close(ours.glob_mean, sb.glob_mean, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(ours.glob_std, sb.glob_std, rtol=1e-6, atol=1e-6)
            assert ours.count == sb.count
            # pooled std includes the spread between utterances: larger
            assert float((ours.glob_std / authors.glob_std).mean()) > 1.3
    x, lens = data[0]
    torch.testing.assert_close(
        FeatureNormalizer("sentence")(x, lens), InputNormalization(norm_type="sentence")(x, lens)
    )


def test_normaliser_state_is_plain_tensors_and_reads_speechbrain_files(tmp_path):
    norm = FeatureNormalizer("authors")
    norm(*batches(1)[0])
    norm.save(tmp_path / "n.ckpt")
    state = torch.load(tmp_path / "n.ckpt", weights_only=True)
    assert state["method"] == "authors" and state["count"] == 1
    back = FeatureNormalizer()  # the method of the file
    back.load(tmp_path / "n.ckpt")
    assert back.method == "authors" and torch.equal(back.glob_std, norm.glob_std)
    with pytest.raises(ValueError, match="--normalization=authors"):
        FeatureNormalizer("pooled").load(tmp_path / "n.ckpt")  # resuming with another method
    # SpeechBrain 1.1's file (count, glob_mean, glob_std): pooled statistics
    sb = InputNormalization()
    sb(*batches(1)[0])
    torch.save({"count": sb.count, "glob_mean": sb.glob_mean, "glob_std": sb.glob_std}, tmp_path / "sb.ckpt")
    assert read_statistics(tmp_path / "sb.ckpt")["method"] == "pooled"
    # the authors' fork's file also holds spk_dict_* entries
    torch.save({"count": 4, "glob_mean": norm.glob_mean, "glob_std": norm.glob_std,
                "spk_dict_mean": {}, "spk_dict_std": {}, "spk_dict_count": {}}, tmp_path / "fork.ckpt")
    assert read_statistics(tmp_path / "fork.ckpt")["method"] == "authors"


def test_code_search_is_fp32_under_autocast_as_the_authors():
    """Under bf16 autocast the projection x P is bf16 (theirs too); the
    normalisation and the distances are fp32 (CUDA autocast runs norm in
    fp32): every target equals the authors' argmin. A bf16 dot-product
    search (ours before) differs on some frames."""
    torch.manual_seed(0)
    for legacy in (True, False):
        q = RandomProjectionQuantizer(320, 16, 8192, legacy_time_axis_norm=legacy)
        x = torch.randn(4, 250, 320)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            proj = x @ q.P
            ours = q(x)
            bf16_search = (F.normalize(proj, dim=1 if legacy else -1) @ q.CB.t()).argmax(-1)
        assert proj.dtype == torch.bfloat16
        z = F.normalize(proj.float(), dim=1 if legacy else -1)
        want = torch.linalg.vector_norm(q.CB.unsqueeze(1) - z.unsqueeze(1), dim=-1).argmin(1)
        assert torch.equal(ours, want)
        assert (bf16_search != want).any()
        assert torch.equal(q(x), authors_targets(x, q.P, q.CB, time_axis=legacy))  # fp32


def test_layerdrop_under_ddp_looks_for_unused_parameters(tmp_path, monkeypatch):
    """LayerDrop leaves skipped layers without gradient: DDP without
    find_unused_parameters stops at the next step (the authors passed
    --find_unused_parameters); the Brain sets it."""
    import torch.distributed as dist

    batch = waveforms()
    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    try:
        for search in (True, False):
            monkeypatch.setattr("lobes.brains.mixins.uses_layerdrop", lambda m, s=search: s and uses_layerdrop(m))
            torch.manual_seed(0)
            brain = build_brain(tmp_path / str(search), brain_class=BestRQBrain, encoder={
                "num_layers": 3, "d_model": 16, "nhead": 2, "d_ffn": 32, "kernel_size": 3,
                "dropout": 0.0, "layerdrop_prob": 0.5}, grad_accumulation_factor=1)
            brain.distributed_launch = True
            brain.wrap_distributed()
            assert isinstance(brain.modules.encoder, torch.nn.parallel.DistributedDataParallel)
            assert brain.find_unused_parameters is search

            def steps():
                for step in range(1, 7):
                    brain.step = step
                    brain.fit_batch(batch)

            if search:
                steps()
            else:
                with pytest.raises(RuntimeError, match="finished reduction in the prior iteration"):
                    steps()
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------
# One whole step


def reference_setup(tmp_path, mixer, switches=None):
    """Our Brain with the authors' switches and a reference encoder with the
    same weights: SpeechBrain's Conformer (mhsa) or our layers given the
    authors' lengths (summarymixing, which SpeechBrain lacks)."""
    if mixer == "mhsa":
        torch.manual_seed(5)
        sb_model = speechbrain_encoder()
        frontend, transformer = split_source(sb_model.state_dict())
        config = infer_config(frontend, transformer, "authors", activation="swish")
        config.update(dropout=0.0, layerdrop_prob=0.0, padding_isolation=False)
        brain = build_brain(tmp_path, "mhsa", encoder={k: v for k, v in config.items() if k != "mixer"},
                            **(switches or AUTHORS_SWITCHES))
        mapped, unmapped, _ = map_state(frontend, transformer, "mhsa")
        assert not unmapped
        ours = brain.modules.encoder.state_dict()
        brain.modules.encoder.load_state_dict({**ours, **mapped})
        sb_model.train()

        def reference(x, lens):
            return sb_model[1](sb_model[0](x), lens)

        def reference_grads():
            grads = {k: p.grad for k, p in sb_model.named_parameters()}
            front, trans = split_source(grads)
            return {k: g for k, g in map_state(front, trans, "mhsa")[0].items() if g is not None}
    else:
        brain = build_brain(tmp_path, mixer, **(switches or AUTHORS_SWITCHES))
        twin = copy.deepcopy(brain.modules.encoder)

        def reference(x, lens):
            return ours_with_lengths(twin, x, lens)

        def reference_grads():
            return {k: p.grad for k, p in twin.named_parameters() if p.grad is not None}
    brain._reference_head = copy.deepcopy(brain.modules.head)
    return brain, reference, reference_grads


def compare_step(tmp_path, mixer, switches=None):
    """One step of our Brain (the recipe's fit_batch, micro-batch 1 of 2: no
    update yet) and the reference step on the same batch, mask and noise:
    the loss's relative difference, the share of equal targets, the largest
    relative gradient difference and whether the masked frames are the same."""
    batch = waveforms()
    brain, reference, reference_grads = reference_setup(tmp_path, mixer, switches)
    brain.step = 1
    loss = brain.fit_batch(batch)
    logits, targets, loss_mask = brain.outputs
    ref = reference_step(batch, brain, reference)
    ref["loss"].backward()
    ref_loss = float(ref["loss"].detach())
    # gradients: ours are of loss / 2 (accumulation 2)
    ref_grads = reference_grads()
    ref_grads.update({f"head.{k}": p.grad for k, p in brain._reference_head.named_parameters()})
    ours = {k: p.grad for k, p in brain.modules.encoder.named_parameters() if p.grad is not None}
    ours.update({f"head.{k}": p.grad for k, p in brain.modules.head.named_parameters()})
    assert set(ours) == set(ref_grads)
    return {
        "brain": brain, "ref": ref, "targets": targets, "loss_mask": loss_mask,
        "loss_rel": abs(float(loss) - ref_loss) / abs(ref_loss),
        "targets_equal": float((targets == ref["targets"]).float().mean()),
        "grad_rel": max(rel(2 * ours[k], ref_grads[k]) for k in ours),
        "same_mask": torch.equal(loss_mask.nonzero()[:, 1].unique(), ref["mask_idx"]),
    }


@pytest.mark.parametrize("mixer", ["mhsa", "summarymixing"])
def test_one_step_equals_the_authors_step(tmp_path, mixer):
    got = compare_step(tmp_path, mixer)
    brain, ref = got["brain"], got["ref"]
    # the same statistics, mask, targets, loss and gradients
    torch.testing.assert_close(brain.modules.normalize.glob_mean, ref["mean"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(brain.modules.normalize.glob_std, ref["std"], rtol=1e-6, atol=1e-6)
    assert torch.equal(brain.mask_idx[::4] // 4, ref["mask_idx"]) and got["same_mask"]
    assert torch.equal(got["targets"], ref["targets"])  # every frame, masked or not
    assert got["loss_rel"] < 1e-5, got["loss_rel"]
    assert got["grad_rel"] < 1e-4, got["grad_rel"]
    print(f"\n{mixer}: loss rel diff {got['loss_rel']:.2e}, targets equal "
          f"{got['targets_equal']:.1%} ({int(got['loss_mask'].sum())} masked frames), "
          f"max grad rel diff {got['grad_rel']:.2e}")


@pytest.mark.parametrize("switch", [
    {"pad_side": "right"}, {"encoder_lengths": "frames"}, {"mask_lengths": "relative"},
    {"normalization": "pooled"}, {"legacy_time_axis_norm": False},
])
def test_each_switch_changes_the_step(tmp_path, switch):
    """The reference sees every switch: with any one of them at our value,
    the step is no longer the authors'."""
    got = compare_step(tmp_path, "mhsa", {**AUTHORS_SWITCHES, **switch})
    differs = not got["same_mask"] or got["targets_equal"] < 1 or got["loss_rel"] > 1e-4
    assert differs, got


# --------------------------------------------------------------------------
# The update


class RecordingBrain(InjectedBrain):
    """Records the gradients and parameters each optimizer step starts from."""

    def optimizers_step(self):
        params = [p for p in self.modules.parameters() if p.requires_grad]
        self.before = [(p.detach().clone(), p.grad.detach().clone()) for p in params]
        self.lr_used = self.optimizer.param_groups[0]["lr"]
        super().optimizers_step()
        self.after = [p.detach().clone() for p in params]


def adamw_reference(before, state, lr, step, max_norm, betas=(0.9, 0.98), eps=1e-8, wd=0.01):
    """Clip the global gradient norm to ``max_norm``, then AdamW (decoupled
    weight decay, bias-corrected moments) at ``lr``."""
    norm = torch.sqrt(sum((g.double() ** 2).sum() for _, g in before))
    scale = min(1.0, max_norm / (float(norm) + 1e-6))
    out = []
    for i, (p, g) in enumerate(before):
        g = g * scale
        m, v = state.get(i, (torch.zeros_like(p), torch.zeros_like(p)))
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        state[i] = (m, v)
        m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
        out.append(p * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps))
    return out, scale


@pytest.mark.parametrize("max_grad_norm", [10.0, 0.002])
def test_the_update_is_the_authors(tmp_path, max_grad_norm):
    """Two optimizer steps of 2 micro-batches each: the accumulated
    gradient is the mean of the micro-batches', clipped to max_grad_norm,
    and AdamW(8e-4, (0.9, 0.98), 1e-8, 0.01) steps at 8e-4 (step 1: the
    peak, before the scheduler's first call) then 8e-4 * 1 / 25000."""
    overrides = {} if max_grad_norm == 10.0 else {"max_grad_norm": max_grad_norm}
    brain = build_brain(tmp_path, "fastformer", brain_class=RecordingBrain, **AUTHORS_SWITCHES,
                        **overrides)
    assert brain.max_grad_norm == max_grad_norm and brain.grad_accumulation_factor == 2
    first = waveforms(seed=1)
    second = waveforms((16000, 12000, 15000), seed=2)
    state, lr0, W = {}, 8e-4, 25000
    for opt_step in (1, 2):
        for micro, batch in enumerate((first, second), start=1):
            brain.step = 2 * (opt_step - 1) + micro
            brain.fit_batch(batch)
            assert brain.optimizer_step == opt_step - 1 + (micro == 2)
        want_lr = lr0 if opt_step == 1 else lr0 * (opt_step - 1) / W
        assert math.isclose(brain.lr_used, want_lr, rel_tol=1e-12)
        before = [(p.double(), g.double()) for p, g in brain.before]
        expected, scale = adamw_reference(before, state, want_lr, opt_step, max_grad_norm)
        if max_grad_norm < 1:
            assert scale < 1  # clipping acts
        # the parameters after the step: the reference's (float64) to the
        # rounding of fp32 (at step 2, lr 3.2e-8 moves them by a few ulps,
        # 40 times the tolerance)
        for a, e in zip(brain.after, expected):
            torch.testing.assert_close(a.double(), e, rtol=3e-7, atol=1e-6 * lr0)
        assert any(not torch.equal(a.double(), p0) for a, (p0, _) in zip(brain.after, before))
        worst = max(float((a.double() - e).abs().max()) for a, e in zip(brain.after, expected))
        # the update itself (the difference of two fp32 numbers: rounding)
        moved = max(rel(a.double() - p0, e - p0) for a, e, (p0, _) in zip(brain.after, expected, before))
        if opt_step == 1:
            assert moved < 1e-3, moved
        print(f"\nmax_grad_norm {max_grad_norm}, step {opt_step}: clip scale {scale:.3g}, lr "
              f"{brain.lr_used:.3g}, parameters max abs diff {worst:.2e}, updates rel diff {moved:.2e}")
    # the Noam schedule past step 2, as the authors' (SpeechBrain's NoamScheduler)
    sched = brain.hparams.lr_annealing
    for s in (100, 25001, 100001):
        sched.n_steps = s - 2
        sched(brain.optimizer)
        assert math.isclose(brain.optimizer.param_groups[0]["lr"],
                            lr0 * min((s - 1) / W, math.sqrt(W / (s - 1))), rel_tol=1e-9)


# The authors' settings per variant (brq-att-alt-exp hparams/*.yaml with
# the overrides of run/*.sh): precision, seconds per GPU batch, buckets.
AUTHORS_VARIANTS = {
    "mhsa": ("bf16", 400, 150),          # brq.yaml, run/a100/run_brq.sh
    "hypermixing": ("bf16", 400, 150),   # hyperconformer.yaml, run/a100/run_hc.sh
    "fastformer": ("bf16", 400, 150),    # fastformer.yaml, run/a100/run_ff.sh
    "summarymixing": ("fp16", 200, 70),  # run/run_summix.sh: --precision fp16 --seconds_per_batch 200 --train_num_buckets 70
    "mamba": ("fp16", 400, 150),         # run/run_mamba_bidirectional.sh: --precision=fp16
    "mhsa_sdpa": ("bf16", 400, 150),     # not in the paper: as mhsa
}


@pytest.mark.parametrize("dataset", ["LibriSpeech", "LibriLight"])
def test_the_recipe_yamls_hold_the_authors_update_and_batches(dataset):
    """Read against the authors' hparams/*.yaml (AdamW 8e-4, betas (0.9,
    0.98), weight decay 0.01; Noam 25k; clipping 10; accumulation 2; 205k
    steps; normaliser frozen from epoch 4) and run/*.sh."""
    from lobes.recipe import _plain_yaml

    folder = RECIPES / dataset / "self-supervised-learning/BEST-RQ-linear/hparams"
    for mixer in MIXERS:
        doc = _plain_yaml((folder / f"bestrq_{mixer}.yaml").read_text())
        precision, seconds, buckets = AUTHORS_VARIANTS[mixer]
        assert (doc["precision"], doc["dynamic_batch_sampler"]["max_batch_length"],
                doc["dynamic_batch_sampler"]["num_buckets"]) == (precision, seconds, buckets), mixer
        assert (doc["lr"], doc["warmup_steps"], doc["max_grad_norm"], doc["grad_accumulation_factor"]) \
            == (0.0008, 25000, 10.0, 2)
        opt = doc["optimizer"]
        assert (opt["betas"], opt["eps"], opt["weight_decay"]) == ("(0.9, 0.98)", 1e-8, 0.01)
        assert doc["normalize"]["update_until_epoch"] == 4
        assert doc["optimizer_step_limit"] == (205000 if dataset == "LibriSpeech" else 400000)
        # the switches: the authors' behaviour unless a deliberate fix (README)
        assert (doc["normalization"], doc["mask_lengths"], doc["mask_per_utterance"]) \
            == ("authors", "samples", False)
        assert (doc["pad_side"], doc["encoder_lengths"], doc["legacy_time_axis_norm"]) \
            == ("right", "frames", False)


def test_unknown_switch_values_are_refused(tmp_path):
    with pytest.raises(ValueError, match="pad_side: 'start'.*right, left"):
        build_brain(tmp_path, pad_side="start")
    with pytest.raises(ValueError, match="valid methods: authors, pooled, sentence"):
        build_brain(tmp_path / "n", normalization="global")


def test_the_run_folder_records_the_normalisation_and_the_model_folder_applies_it(tmp_path):
    """A checkpoint's normalize.ckpt carries the method; the exported model
    folder and every consumer apply what the encoder was trained with."""
    from lobes.deploy.export import export_encoder
    from lobes.deploy.inference import BestRQEncoder
    from lobes.deploy.loading import load_pretrained
    from lobes.nnet.encoder import ConformerEncoder

    enc = ConformerEncoder("fastformer", num_layers=1, d_model=16, nhead=2, d_ffn=32, kernel_size=3)
    wavs, lens = torch.randn(2, 8000) * 0.1, torch.tensor([1.0, 0.7])
    for method in ("authors", "pooled", "sentence"):
        ckpt = tmp_path / method / "CKPT+x"
        ckpt.mkdir(parents=True)
        torch.save(torch.nn.ModuleList([enc, torch.nn.Linear(16, 8)]).state_dict(), ckpt / "model.ckpt")
        norm = FeatureNormalizer(method)
        feats = torch.randn(3, 60, 80) * 2 + 1
        norm(feats, torch.ones(3))
        norm.save(ckpt / "normalize.ckpt")
        out = export_encoder(ckpt, tmp_path / method / "model")
        assert read_statistics(out / "normalizer.ckpt")["method"] == method
        assert f"| feature normalisation | {method}" in (out / "README.md").read_text()
        model = BestRQEncoder.from_hparams(source=str(out), run_opts={"device": "cpu"})
        assert model.mods.normalizer.method == method
        probe_norm = FeatureNormalizer()
        load_pretrained(out, None, probe_norm)
        norm.eval()
        fb = model.mods.compute_features(wavs)
        torch.testing.assert_close(model.mods.normalizer(fb, lens), norm(fb, lens))
        torch.testing.assert_close(probe_norm.eval()(fb, lens), norm(fb, lens))
