"""Speaker-verification metrics by sorting: SpeechBrain's ``EER`` and
``minDCF`` (``speechbrain.utils.metric_stats``), same arguments, same
candidate thresholds and the same values, in O(n log n).

SpeechBrain compares every score with every candidate threshold (there are
about twice as many thresholds as trials): ``minDCF`` builds two
thresholds x trials boolean matrices (VoxCeleb1-O's 37,611 trials: ~1.4 GB
and about a minute on a CPU) and ``EER`` loops over the thresholds in
Python. Here the error counts at each threshold come from ``searchsorted``
on the sorted scores; the rates are the same float32 divisions of the same
counts, so the results equal SpeechBrain's exactly (tested, ties included).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch


def _thresholds(positive_scores, negative_scores):
    """SpeechBrain's candidate thresholds: every distinct score and the
    midpoints between neighbours, sorted."""
    thresholds = torch.unique(torch.cat([positive_scores, negative_scores]))
    intermediate = (thresholds[0:-1] + thresholds[1:]) / 2
    return torch.sort(torch.cat([thresholds, intermediate]))[0]


def _error_rates(positive_scores, negative_scores, thresholds):
    """(miss rate, false-alarm rate) at each threshold: the fraction of
    positive scores <= it and of negative scores > it (float32)."""
    pos = torch.sort(positive_scores)[0]
    neg = torch.sort(negative_scores)[0]
    misses = torch.searchsorted(pos, thresholds, right=True)
    false_alarms = neg.numel() - torch.searchsorted(neg, thresholds, right=True)
    return misses.float() / pos.numel(), false_alarms.float() / neg.numel()


def EER(positive_scores, negative_scores):
    """The equal error rate and its threshold, as SpeechBrain's ``EER``:
    at the first candidate threshold where |false-alarm rate - miss rate|
    is smallest, their mean.

    Arguments
    ---------
    positive_scores : torch.Tensor
        (n_target,) scores of target trials.
    negative_scores : torch.Tensor
        (n_nontarget,) scores of non-target trials.

    Returns
    -------
    EER : float
        The equal error rate (a fraction).
    threshold : float
        The threshold where it is reached.

    Example
    -------
    >>> EER(torch.tensor([0.6, 0.7, 0.8, 0.5]), torch.tensor([0.4, 0.3, 0.2, 0.1]))[0]
    0.0
    >>> eer, threshold = EER(torch.tensor([0.6, 0.2]), torch.tensor([0.4, 0.3]))
    >>> eer, round(threshold, 3)
    (0.5, 0.3)
    """
    thresholds = _thresholds(positive_scores, negative_scores)
    frr, far = _error_rates(positive_scores, negative_scores, thresholds)
    # SpeechBrain keeps the first threshold whose float32 |FAR - FRR| is
    # below the float64 |FAR - FRR| of the one kept so far.
    gaps = (far - frr).abs().tolist()
    far_l, frr_l = far.tolist(), frr.tolist()
    best = 0
    for i in range(1, len(gaps)):
        if gaps[i] < abs(far_l[best] - frr_l[best]):
            best = i
    return float((far_l[best] + frr_l[best]) / 2), float(thresholds[best])


def minDCF(positive_scores, negative_scores, c_miss=1.0, c_fa=1.0, p_target=0.01):
    """The minimum over the candidate thresholds of the detection cost
    ``c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)``, and
    its threshold, as SpeechBrain's ``minDCF``.

    Arguments
    ---------
    positive_scores : torch.Tensor
        (n_target,) scores of target trials.
    negative_scores : torch.Tensor
        (n_nontarget,) scores of non-target trials.
    c_miss, c_fa : float
        Costs of a miss and of a false alarm.
    p_target : float
        Prior probability of a target trial.

    Returns
    -------
    minDCF : float
        The minimum detection cost.
    threshold : float
        The threshold where it is reached.

    Example
    -------
    >>> minDCF(torch.tensor([0.6, 0.7, 0.8, 0.5]), torch.tensor([0.4, 0.3, 0.2, 0.1]))[0]
    0.0
    """
    thresholds = _thresholds(positive_scores, negative_scores)
    p_miss, p_fa = _error_rates(positive_scores, negative_scores, thresholds)
    c_det = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
    c_min, min_index = torch.min(c_det, dim=0)
    return float(c_min), float(thresholds[min_index])
