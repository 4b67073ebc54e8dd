"""lobes.utils.metrics: SpeechBrain's EER and minDCF, computed by sorting,
give SpeechBrain's values exactly (thresholds included), ties and tiny
trial lists included."""

import pytest
import torch
from speechbrain.utils import metric_stats

from lobes.utils import metrics


def _cases():
    g = torch.Generator().manual_seed(0)
    for case in range(40):
        n_pos = int(torch.randint(1, 50, (1,), generator=g))
        n_neg = int(torch.randint(1, 300, (1,), generator=g))
        shift = float(torch.rand(1, generator=g) * 3)
        pos = torch.randn(n_pos, generator=g) + shift
        neg = torch.randn(n_neg, generator=g)
        if case % 2:  # coarse scores: many ties, within and across classes
            pos, neg = (pos * 4).round() / 4, (neg * 4).round() / 4
        yield pos, neg
    yield torch.tensor([0.5]), torch.tensor([0.5])
    yield torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5, 0.5])


@pytest.mark.parametrize("pos, neg", list(_cases()))
def test_equals_speechbrain(pos, neg):
    assert metrics.EER(pos, neg) == metric_stats.EER(pos, neg)
    for p_target, c_miss in ((0.01, 1.0), (0.05, 10.0)):
        assert metrics.minDCF(pos, neg, c_miss=c_miss, p_target=p_target) == metric_stats.minDCF(
            pos, neg, c_miss=c_miss, p_target=p_target
        )


def test_separable_and_inverted_scores():
    pos, neg = torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])
    assert metrics.EER(pos, neg)[0] == 0.0 and metrics.minDCF(pos, neg)[0] == 0.0
    assert metrics.EER(neg, pos)[0] == 1.0
