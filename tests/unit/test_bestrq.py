"""BEST-RQ quantiser, masking and loss."""

import pytest
import torch
from speechbrain.nnet.quantisers import RandomProjectionQuantizer as SBQuantizer

from lobes.nnet.bestrq import (
    HealthStats,
    RandomProjectionQuantizer,
    code_usage,
    compute_span_mask,
    masked_prediction_loss,
    stack_frames,
)


def test_quantizer_matches_speechbrain_argmin():
    torch.manual_seed(1)
    ours = RandomProjectionQuantizer(320, 16, 512)
    ref = SBQuantizer(320, 16, 512)
    ref.load_state_dict(ours.state_dict())  # same buffers, same names
    x = torch.randn(3, 25, 320)
    assert torch.equal(ours(x), ref(x))


def test_quantizer_is_frozen_and_normalised_per_frame():
    q = RandomProjectionQuantizer(320, 16, 64)
    assert list(q.parameters()) == []
    assert set(q.state_dict()) == {"P", "CB"}
    torch.testing.assert_close(q.CB.norm(dim=1), torch.ones(64))
    x = torch.randn(2, 10, 320)
    # per-frame normalisation: a frame's code does not depend on the others
    assert torch.equal(q(x)[:, :4], q(x[:, :4]))
    # scale invariance of the nearest unit code
    assert torch.equal(q(x), q(3.0 * x))


def test_legacy_time_axis_normalisation_is_the_authors_behaviour():
    q = RandomProjectionQuantizer(320, 16, 64, legacy_time_axis_norm=True)
    x = torch.randn(2, 30, 320)
    proj = torch.nn.functional.normalize(x @ q.P, dim=1)
    expected = torch.cdist(proj, q.CB.expand(2, -1, -1)).argmin(-1)
    assert torch.equal(q(x), expected)


def test_stack_frames_groups_four_consecutive_frames():
    x = torch.arange(2 * 8 * 3, dtype=torch.float).view(2, 8, 3)
    s = stack_frames(x, 4)
    assert s.shape == (2, 2, 12)
    assert torch.equal(s[1, 1], x[1, 4:8].flatten())


def test_span_mask_per_utterance_never_masks_padding():
    torch.manual_seed(0)
    lengths = torch.tensor([400, 120, 8])
    mask = compute_span_mask(lengths, 400, mask_prob=0.15, mask_length=4, per_utterance=True)
    assert mask.shape == (3, 400)
    for i, n in enumerate(lengths.tolist()):
        assert not mask[i, n:].any()
        # spans are aligned groups of 4 frames
        groups = mask[i].view(-1, 4)
        assert torch.all(groups.all(1) | ~groups.any(1))
        assert mask[i].any()
    # ~ mask_prob * mask_length = 60% of a long utterance is masked
    assert 0.5 < mask[0].float().mean() < 0.7


def test_span_mask_of_the_batch_is_the_authors_one_draw_on_the_shortest_utterance():
    """brq_mask_collate_fn: int(0.15 * n_min + U(0, 1)) (at least 1) aligned
    spans among the n_min // 4 slots of the shortest utterance, the same for
    every utterance of the batch."""
    torch.manual_seed(0)
    lengths = torch.tensor([400, 121, 250])
    counts = set()
    for _ in range(50):
        mask = compute_span_mask(lengths, 400, mask_prob=0.15, mask_length=4)
        assert (mask == mask[0]).all()  # one mask for the batch
        assert not mask[:, 120:].any()  # within the shortest's 30 whole slots
        groups = mask[0].view(-1, 4)
        assert torch.all(groups.all(1) | ~groups.any(1))  # aligned spans
        counts.add(int(groups.all(1).sum()))
    assert counts == {18, 19}  # int(0.15 * 121 + U) = 18 or 19


def test_span_mask_refuses_utterances_shorter_than_a_span():
    with pytest.raises(ValueError, match=r"position\(s\) \[1\].*fewer frames"):
        compute_span_mask(torch.tensor([40, 3]), 40, 0.15, 4)


def test_masked_loss_ignores_unmasked_frames():
    logits = torch.randn(2, 5, 10)
    targets = torch.randint(0, 10, (2, 5))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    loss, acc = masked_prediction_loss(logits, targets, mask)
    ref = torch.nn.functional.cross_entropy(
        torch.stack([logits[0, 1], logits[1, 3]]), torch.stack([targets[0, 1], targets[1, 3]])
    )
    torch.testing.assert_close(loss, ref)
    logits2 = logits.clone()
    logits2[~mask] = 1e4  # changing unmasked frames changes nothing
    torch.testing.assert_close(masked_prediction_loss(logits2, targets, mask)[0], ref)


def test_code_usage_of_a_collapsed_and_a_uniform_quantiser():
    """The health statistic that shows a collapsed quantiser first: every
    frame on one code gives 1 code used, perplexity 1 and a constant
    prediction right everywhere; frames spread evenly over the codebook give
    all codes, perplexity V and chance 1/V."""
    V = 64
    collapsed = RandomProjectionQuantizer(16, 16, V)
    with torch.no_grad():
        collapsed.P.zero_()
        collapsed.P[0, 0] = 1.0  # every frame projects onto one direction
    frames = torch.rand(2, 50, 16) + 0.1  # positive first feature
    assert code_usage(collapsed(frames), V) == {
        "codes_used": 1, "code_ppl": 1.0, "top_code_share": 1.0,
    }

    uniform = RandomProjectionQuantizer(16, 16, V)
    with torch.no_grad():
        uniform.P.copy_(torch.eye(16))
    # each code vector itself, three times: every code once per copy
    targets = uniform(uniform.CB.repeat(3, 1).unsqueeze(0))
    usage = code_usage(targets, V)
    assert usage["codes_used"] == V
    assert usage["code_ppl"] == pytest.approx(V)
    assert usage["top_code_share"] == pytest.approx(1 / V)

    # in between: half the frames on one code, the rest spread out
    mixed = torch.cat([torch.zeros(V, dtype=torch.long), torch.arange(V)])
    usage = code_usage(mixed, V)
    assert usage["codes_used"] == V and 1 < usage["code_ppl"] < V / 2


def test_health_stats_accumulate_between_log_lines():
    """Accuracy, code usage, predictions' perplexity, gradient norm and the
    masked share are those of every batch since the last reset."""
    V = 8
    stats = HealthStats(cb_vocab=V)
    assert stats.summary() == {}
    sure = torch.full((1, 4, V), -20.0)
    sure[0, torch.arange(4), torch.tensor([1, 1, 2, 3])] = 20.0  # confident
    stats.update(sure, torch.tensor([[1, 1, 2, 5]]), torch.ones(1, 4, dtype=torch.bool),
                 masked_frames=16, valid_frames=40)
    flat = torch.zeros(1, 2, V)  # uniform predictions
    stats.update(flat, torch.tensor([[6, 7]]), torch.tensor([[True, False]]),
                 masked_frames=4, valid_frames=10)
    stats.add_grad_norm(1.0)
    stats.add_grad_norm(3.0)
    s = stats.summary()
    assert s["masked_acc"] == pytest.approx(3 / 5)  # 3 right of 5 masked frames
    assert s["codes_used"] == 4  # codes 1, 2, 5, 6 (7 is not masked)
    assert s["top_code_share"] == pytest.approx(2 / 5)
    assert s["grad_norm"] == pytest.approx(2.0)
    assert s["masked_share"] == pytest.approx(20 / 50)
    # mean predicted distribution: codes 1 (x2), 2, 3 sure, one uniform row
    mean = torch.tensor([0.2 * x + 0.2 / V for x in (0, 2, 1, 1, 0, 0, 0, 0)])
    assert s["pred_ppl"] == pytest.approx(float(torch.exp(-(mean * mean.log()).sum())), rel=1e-4)
    stats.reset()
    assert stats.summary() == {}
