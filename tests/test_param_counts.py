"""The paper's widths give every mixer the same budget (~94M / ~313M).

Counts are made on the meta device (no memory, no init time) from the shared
encoder YAMLs, plus the 8192-way BEST-RQ prediction head.
"""

from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

HPARAMS = Path(__file__).resolve().parents[1] / "hparams"
PAPER_MIXERS = ["mhsa", "hypermixing", "fastformer", "summarymixing", "mamba"]
CB_VOCAB = 8192


def count(mixer, large=False):
    path = HPARAMS / f"encoder_{mixer}.yaml"
    with torch.device("meta"), open(path) as f:
        hp = load_hyperpyyaml(f)
    if large:
        overrides = {"num_layers": hp["large_num_layers"], "d_model": hp["large_d_model"]}
        with torch.device("meta"), open(path) as f:
            hp = load_hyperpyyaml(f, overrides)
    d_model = hp["d_model"]
    n_enc = sum(p.numel() for p in hp["encoder"].parameters())
    return n_enc + d_model * CB_VOCAB + CB_VOCAB, d_model, hp["num_layers"]


@pytest.mark.parametrize("large", [False, True], ids=["12-layer", "24-layer"])
def test_parameter_budgets_match_within_5_percent(large, capsys):
    counts = {m: count(m, large) for m in PAPER_MIXERS}
    with capsys.disabled():
        print()
        for m, (n, d, layers) in counts.items():
            print(f"  {m:14s} {layers} layers, d_model {d:5d}: {n / 1e6:7.2f}M parameters")
    totals = [n for n, _, _ in counts.values()]
    target = 94e6 if not large else 313e6
    mean = sum(totals) / len(totals)
    assert max(totals) / min(totals) < 1.10, counts  # every pair within +-5% of the mean
    for m, (n, _, _) in counts.items():
        assert abs(n - mean) / mean < 0.05, (m, n, mean)
        assert abs(n - target) / target < 0.05, (m, n, target)
