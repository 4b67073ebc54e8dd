"""Adding a mixer takes three pieces: its module, its registry entry
(``lobes.nnet.mixers.register_mixer``) and its encoder definition. Here a toy
sixth mixer is registered from outside the package (a pytest plugin), and
every mixer-parametrised test, the demo overrides and the encoder builder
pick it up with no other file touched."""

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO

TOY_MODULE = textwrap.dedent(
    '''
    """A toy linear mixer: each frame plus the mean of the real frames."""
    import torch
    from torch import nn

    from lobes.nnet.mixers import MixerSpec, register_mixer
    from lobes.nnet.mixers.common import masked_mean


    class MeanMixer(nn.Module):
        def __init__(self, d_model, nhead=1, dropout=0.0):
            super().__init__()
            self.proj = nn.Linear(2 * d_model, d_model)

        def forward(self, x, pad_mask=None, pos_emb=None):
            mean = masked_mean(x, pad_mask).expand_as(x)
            return self.proj(torch.cat([x, mean], dim=-1))


    register_mixer(
        "toymean",
        MixerSpec(
            MeanMixer, "absolute", paper=True,
            definition=__file__.replace("toy_mixer.py", "encoder_toymean.yaml"),
            demo={"d_model": 64, "nhead": 1},
        ),
    )
    '''
)
TOY_DEFINITION = textwrap.dedent(
    """
    mixer: toymean
    nhead: 1
    d_ffn: 2048
    kernel_size: 31
    dropout: 0.1
    activation: swish
    n_mels: 80
    frontend_channels: [128, 32]
    frontend_kernel_sizes: [3, 3]
    positional_encoding: auto
    padding_isolation: True
    init: xavier_normal
    sizes:
        base: {num_layers: 12, d_model: 512, layerdrop_prob: 0.05}
        large: {num_layers: 24, d_model: 768, layerdrop_prob: 0.1}
    """
)


@pytest.fixture(scope="module")
def toy_plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    (folder / "toy_mixer.py").write_text(TOY_MODULE)
    (folder / "encoder_toymean.yaml").write_text(TOY_DEFINITION)
    return folder


def pytest_with_toy(folder, *args):
    env_path = f"{folder}:{REPO}"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "toy_mixer", "-p", "no:cacheprovider", *args],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": env_path},
    )


def test_every_mixer_parametrised_test_collects_the_toy(toy_plugin):
    proc = pytest_with_toy(toy_plugin, "--collect-only", "-q", "-m", "slow or not slow", "tests")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    without = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
         "-m", "slow or not slow", "tests"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    toy_ids = [line for line in proc.stdout.splitlines() if "toymean" in line]
    mamba_ids = [line for line in without.stdout.splitlines() if "mamba" in line
                 and "[mamba" in line]
    # every test parametrised over the paper's or all mixers runs the toy too
    files_with_mamba = {i.split("::")[0] for i in mamba_ids}
    files_with_toy = {i.split("::")[0] for i in toy_ids}
    assert files_with_mamba - files_with_toy <= {"tests/unit/test_param_counts.py"}, (
        files_with_mamba - files_with_toy
    )
    assert len(toy_ids) >= 20


def test_the_toy_passes_the_mixer_and_encoder_tests(toy_plugin):
    proc = pytest_with_toy(toy_plugin, "-q", "-k", "toymean", "tests/unit/test_mixers.py",
                           "tests/unit/test_encoder.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def test_demo_overrides_benchmark_and_encoder_definition_take_the_toy(toy_plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(toy_plugin))
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import toy_mixer  # noqa: F401  (registers it)
    from demo_overrides import demo_encoder_override

    from lobes.config import encoder_config
    from lobes.nnet.mixers import MIXERS

    from benchmarks.efficiency.models import build_model, default_models, model_config

    try:
        assert "d_model: 64" in demo_encoder_override("toymean")
        assert encoder_config("toymean", "large")["d_model"] == 768
        assert "toymean" in default_models()  # the benchmark measures it
        assert model_config("toymean", size="tiny")["d_model"] == 512 // 16
        tiny, _ = build_model("toymean", size="tiny", vocab=16)
        logits = tiny(torch.randn(1, 40, 80), torch.ones(1))
        assert logits.shape[-1] == 16
    finally:
        MIXERS.pop("toymean")


def test_readme_mixer_table_lists_the_registry():
    """The README's table of mixers has one row per registered mixer, and
    names each row's module file, which exists."""
    import re

    from lobes.nnet.mixers import MIXERS

    text = (REPO / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_]+)` \|.*\| `(lobes/nnet/mixers/[a-z_]+\.py)` \|$", text, re.M)
    assert sorted(name for name, _ in rows) == sorted(MIXERS)
    for name, module in rows:
        assert (REPO / module).is_file(), module
        assert MIXERS[name].cls.__module__ == module[:-3].replace("/", "."), name
