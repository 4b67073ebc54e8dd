"""The encoder definitions give the parameter counts of the authors' models.

Counts are made on the meta device (no memory, no init time) from the shared
encoder definitions (``hparams/encoder_<mixer>.yaml``), plus the 8192-way
BEST-RQ prediction head, and compared with the numbers of the BEST-RQ study
(Whetten et al., SLT 2024): a wrong layout (e.g. SummaryMixing branches of the
wrong width) moves them by far more than the 0.3% allowed.
"""

import pytest
import torch
from conftest import PAPER_MIXERS

from lobes.config import encoder_from_definition

CB_VOCAB = 8192
AUTHORS_BASE = {  # millions of parameters, 12 layers, with the head
    "mhsa": 94.0, "hypermixing": 94.3, "fastformer": 93.9, "summarymixing": 94.6, "mamba": 94.2,
}
AUTHORS_LARGE_SUMMARYMIXING = 313.4  # 24 layers; the others: "~313M"


def count(mixer, size):
    with torch.device("meta"):
        encoder = encoder_from_definition(mixer, size)
    n_enc = sum(p.numel() for p in encoder.parameters())
    return n_enc + encoder.d_model * CB_VOCAB + CB_VOCAB, encoder.d_model


@pytest.mark.parametrize("mixer", PAPER_MIXERS)
def test_12_layer_models_have_the_authors_parameter_counts(mixer, capsys):
    n, d = count(mixer, "base")
    with capsys.disabled():
        print(f"\n  {mixer:14s} 12 layers, d_model {d:5d}: {n / 1e6:7.2f}M parameters")
    assert abs(n / 1e6 - AUTHORS_BASE[mixer]) / AUTHORS_BASE[mixer] < 0.003, n


def test_24_layer_models_are_about_313m(capsys):
    counts = {m: count(m, "large") for m in PAPER_MIXERS}
    with capsys.disabled():
        for m, (n, d) in counts.items():
            print(f"\n  {m:14s} 24 layers, d_model {d:5d}: {n / 1e6:7.2f}M parameters", end="")
        print()
    n_sm = counts["summarymixing"][0] / 1e6
    assert abs(n_sm - AUTHORS_LARGE_SUMMARYMIXING) / AUTHORS_LARGE_SUMMARYMIXING < 0.003
    for m, (n, _) in counts.items():
        assert abs(n / 1e6 - 313) / 313 < 0.01, (m, n)
