"""The benchmarked networks: each mixer's pretraining model, the floor and
SpeechBrain's own BEST-RQ network, at the sizes of ``SIZES``.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import functools
import importlib
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.efficiency.constants import FLOOR, FLOOR_BASE, N_MELS, REPO, SPEECHBRAIN_REF
from lobes.nnet.mixers import MIXERS

# "<mixer>@<commit>": the mixer's model with the token mixers' code of that
# commit (``lobes/nnet/mixers`` there), the rest of the model from the work
# tree: a before/after of the mixers in one interleaved run.
REVISION_SEP = "@"

# Width divisor, number of layers (None: the definition's), FFN size (None:
# the definition's).
SIZES = {
    "paper": {"scale": 1, "num_layers": None, "d_ffn": None},
    "small": {"scale": 4, "num_layers": 4, "d_ffn": 512},
    "tiny": {"scale": 16, "num_layers": 2, "d_ffn": 128},
}
# Mixer arguments that are widths, divided by the size's scale like d_model.
WIDTH_KWARGS = (
    "hypernet_size",
    "local_proj_hid_dim",
    "local_proj_out_dim",
    "summary_hid_dim",
    "summary_out_dim",
)
# SpeechBrain's BEST-RQ recipe (hparams/BEST-RQ.yaml of SpeechBrain 1.1.2).
SPEECHBRAIN_BESTRQ = {
    "d_model": 576,
    "nhead": 8,
    "num_layers": 12,
    "d_ffn": 2048,
    "dropout": 0.1,
    "frontend_channels": (128, 32),
    "tgt_vocab": 2048,  # its output_neurons; no decoder, so no parameter
}


def split_revision(name):
    """``(mixer, commit)`` of a model name, ``commit`` None without one.

    Example
    -------
    >>> split_revision("mamba@d6a653e"), split_revision("floor")
    (('mamba', 'd6a653e'), ('floor', None))
    """
    mixer, sep, commit = name.partition(REVISION_SEP)
    return mixer, (commit if sep else None)


@functools.lru_cache(maxsize=None)
def mixers_at(commit):
    """The package ``lobes/nnet/mixers`` of ``commit``, importable on its
    own: its files (``git show``, read-only) are written to a temporary
    folder as the package ``brq_mixers_<commit>``, with its imports of
    ``lobes.nnet.mixers`` renamed (the compiled scan of that commit builds
    from its own source)."""
    if not re.fullmatch(r"[0-9A-Za-z_.~^/-]+", commit):
        raise ValueError(f"not a commit: {commit!r}")

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              check=True).stdout

    package = "brq_mixers_" + re.sub(r"\W", "_", commit)
    root = Path(tempfile.mkdtemp(prefix="brq_mixers_"))
    prefix = "lobes/nnet/mixers/"
    for path in git("ls-tree", "-r", "--name-only", commit, prefix).decode().split():
        data = git("show", f"{commit}:{path}")
        if path.endswith(".py"):
            data = data.decode().replace("lobes.nnet.mixers", package).encode()
        target = root / package / path[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    sys.path.insert(0, str(root))
    return importlib.import_module(package)


def swap_mixers(encoder, commit):
    """Replaces the token mixer of every layer of a ``ConformerEncoder`` by
    the same mixer built from the code of ``commit`` (``mixers_at``), with
    the same weights (in place; returns the encoder)."""
    from lobes.nnet.encoder import ACTIVATIONS

    package = mixers_at(commit)
    cfg = encoder.config
    for layer in encoder.layers:
        with torch.random.fork_rng(devices=[]):  # the model's other weights unchanged
            old = package.build_mixer(
                cfg["mixer"], cfg["d_model"], cfg["nhead"], dropout=cfg["dropout"],
                activation=ACTIVATIONS[cfg["activation"]],
                padding_isolation=cfg["padding_isolation"], **cfg["mixer_kwargs"],
            )
        old.load_state_dict(layer.mixer.state_dict())
        param = next(layer.mixer.parameters(), None)
        layer.mixer = old if param is None else old.to(param.device)
    return encoder


def has_definition(mixer):
    """Whether the registered ``mixer`` has sizes to build it with: an
    encoder definition of its own (``MixerSpec.definition``, else
    ``hparams/encoder_<mixer>.yaml``) or another mixer's (``sizes_from``).

    Example
    -------
    >>> has_definition("fastformer"), has_definition("summarymixing_lite")
    (True, True)
    """
    from lobes.config import hparams_folder

    spec = MIXERS[mixer]
    if spec.sizes_from:
        return True
    path = Path(spec.definition) if spec.definition else hparams_folder() / f"encoder_{mixer}.yaml"
    return path.is_file()


def default_models():
    """The models the benchmarks measure by default: SpeechBrain's encoder,
    the floor, then every registered mixer that has a definition (in
    registration order), so that a newly registered mixer is measured
    without editing the benchmark.

    Example
    -------
    >>> default_models()[:4]
    ['speechbrain_relposmhaxl', 'floor', 'mhsa', 'mhsa_sdpa']
    """
    return [SPEECHBRAIN_REF, FLOOR] + [m for m in MIXERS if has_definition(m)]


class PretrainingModel(torch.nn.Module):
    """The BEST-RQ pretraining network: encoder, then a linear head.

    Arguments
    ---------
    encoder : torch.nn.Module
        A ``lobes.nnet.encoder.ConformerEncoder`` (conv front-end included).
    d_model : int
        Output size of the encoder.
    vocab : int
        Number of codes the head predicts.

    Example
    -------
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> enc = ConformerEncoder("fastformer", num_layers=1, d_model=16,
    ...                        nhead=2, d_ffn=32, kernel_size=3)
    >>> PretrainingModel(enc, 16, 10)(torch.rand(2, 40, 80)).shape
    torch.Size([2, 10, 10])
    """

    def __init__(self, encoder, d_model, vocab=8192):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(d_model, vocab)

    def forward(self, feats, lengths=None):
        """(B, T, 80) fbank frames -> (B, ceil(T/4), vocab) logits."""
        return self.head(self.encoder(feats, lengths))

    def output_lengths(self, frames):
        """Output frames (LongTensor) for ``frames`` fbank frames."""
        return self.encoder.output_lengths(frames)


class IdentityMixer(torch.nn.Module):
    """A token mixer that mixes nothing: returns its input, zero on padding.

    Put in every layer of an encoder, it gives the *floor*: the cost of
    everything but the token mixers (front-end, FFNs, convolution modules,
    norms, head).

    Example
    -------
    >>> IdentityMixer()(torch.ones(1, 3, 2), torch.tensor([[0, 0, 1]]).bool())[0, :, 0]
    tensor([1., 1., 0.])
    """

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Returns ``x`` (B, T, D) with padded frames zeroed."""
        from lobes.nnet.mixers.common import zero_padded

        return zero_padded(x, pad_mask)


def replace_mixers_with_identity(encoder):
    """Swaps the token mixer of every layer of a ``ConformerEncoder`` for
    ``IdentityMixer`` (in place; positional encodings off, as the identity
    ignores them). Returns the encoder."""
    for layer in encoder.layers:
        layer.mixer = IdentityMixer()
    encoder.positional_encoding = "none"
    return encoder


class SpeechBrainBestRQ(torch.nn.Module):
    """SpeechBrain's own BEST-RQ pretraining network (the reference).

    ``ConvolutionFrontEnd`` and ``TransformerASR`` with the arguments of
    SpeechBrain's recipe (``BEST-RQ.yaml``), run as its ``EncoderWrapper``
    runs it (``TransformerASR.encode``), then a linear head onto the codes.

    Arguments
    ---------
    d_model, nhead, num_layers, d_ffn : int
        Encoder sizes (recipe: 576, 8, 12, 2048).
    dropout : float
        Transformer dropout (recipe: 0.1).
    frontend_channels : tuple of int
        Channels of the two conv blocks (recipe: 128, 32).
    tgt_vocab : int
        ``TransformerASR``'s output vocabulary (unused without a decoder).
    vocab : int
        Codes predicted by the head.
    n_mels : int
        Input features per frame.

    Example
    -------
    >>> m = SpeechBrainBestRQ(32, 4, 1, 64, frontend_channels=(8, 2), vocab=10)
    >>> m(torch.rand(2, 41, 80)).shape, m.output_lengths(torch.tensor(41)).item()
    (torch.Size([2, 11, 10]), 11)
    """

    def __init__(
        self,
        d_model=576,
        nhead=8,
        num_layers=12,
        d_ffn=2048,
        dropout=0.1,
        frontend_channels=(128, 32),
        tgt_vocab=2048,
        vocab=8192,
        n_mels=N_MELS,
    ):
        super().__init__()
        from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
        from speechbrain.lobes.models.transformer.TransformerASR import (
            TransformerASR,
        )

        self.cnn = ConvolutionFrontEnd(
            input_shape=(8, 10, n_mels),
            num_blocks=2,
            num_layers_per_block=1,
            out_channels=tuple(frontend_channels),
            kernel_sizes=(3, 3),
            strides=(2, 2),
            residuals=(False, False),
        )
        freq = math.ceil(math.ceil(n_mels / 2) / 2)
        self.transformer = TransformerASR(
            input_size=frontend_channels[-1] * freq,
            tgt_vocab=tgt_vocab,
            d_model=d_model,
            nhead=nhead,
            num_encoder_layers=num_layers,
            num_decoder_layers=0,
            d_ffn=d_ffn,
            dropout=dropout,
            activation=torch.nn.GELU,
            conformer_activation=torch.nn.GELU,
            encoder_module="conformer",
            attention_type="RelPosMHAXL",
            normalize_before=True,
            causal=False,
        )
        self.head = torch.nn.Linear(d_model, vocab)

    def forward(self, feats, lengths=None):
        """(B, T, 80) fbank frames (and relative lengths) -> (B, ceil(T/4), vocab)."""
        return self.head(self.transformer.encode(self.cnn(feats), lengths))

    @staticmethod
    def output_lengths(frames):
        """Output frames for ``frames`` fbank frames (two stride-2 blocks)."""
        for _ in range(2):
            frames = torch.div(frames + 1, 2, rounding_mode="floor")
        return frames


def _scale_width(value, scale, multiple=1):
    """Divides a width (or a list of widths) by ``scale``, rounded to a
    multiple of ``multiple`` (at least ``multiple``)."""
    if isinstance(value, (list, tuple)):
        return [_scale_width(v, scale, multiple) for v in value]
    if value is None or scale == 1:
        return value
    return max(multiple, int(round(value / scale / multiple)) * multiple)


def model_config(mixer, size="paper"):
    """The encoder arguments of ``mixer`` at ``size``.

    The only place the benchmark reads model sizes (with ``build_model``).
    The paper's sizes are the encoder definitions
    (``lobes.config.encoder_config(mixer, "base")``); the smaller ones divide
    every width (d_model, mixer widths, front-end channels) by the size's
    scale and change depth and FFN size. A mixer without a definition of its
    own takes that of its registry entry's ``sizes_from``.

    Arguments
    ---------
    mixer : str
        Token mixer name (its encoder definition, or that of
        ``MIXERS[mixer].sizes_from`` with ``mixer`` replaced), ``floor``
        (that of ``FLOOR_BASE``) or ``speechbrain_relposmhaxl``.
    size : str
        A key of ``SIZES``.

    Returns
    -------
    dict
        ``ConformerEncoder`` arguments; for the reference, the
        ``SpeechBrainBestRQ`` arguments.

    Example
    -------
    >>> cfg = model_config("fastformer", "small")
    >>> cfg["d_model"], cfg["num_layers"], cfg["d_ffn"], cfg["frontend_channels"]
    (152, 4, 512, [32, 8])
    >>> model_config("speechbrain_relposmhaxl", "small")["d_model"]
    144
    """
    from lobes.config import encoder_config

    mixer = split_revision(mixer)[0]
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {sorted(SIZES)}")
    spec = SIZES[size]
    scale = spec["scale"]
    if mixer == SPEECHBRAIN_REF:
        cfg = dict(SPEECHBRAIN_BESTRQ)
        cfg["d_model"] = _scale_width(cfg["d_model"], scale, cfg["nhead"])
        cfg["num_layers"] = spec["num_layers"] or cfg["num_layers"]
        cfg["d_ffn"] = spec["d_ffn"] or cfg["d_ffn"]
        cfg["frontend_channels"] = tuple(
            max(1, round(c / scale)) for c in cfg["frontend_channels"]
        )
        return cfg
    if mixer == FLOOR:
        mixer = FLOOR_BASE
    sizes_from = MIXERS[mixer].sizes_from if mixer in MIXERS else None
    config = encoder_config(sizes_from or mixer, "base")
    if sizes_from:
        config["mixer"] = mixer
        # summarymixing_lite: SummaryMixing without its local branch
        config["mixer_kwargs"] = {
            k: v for k, v in config["mixer_kwargs"].items() if not k.startswith("local_proj")
        }
    if scale == 1 and spec["num_layers"] is None:
        return config
    config["d_model"] = _scale_width(config["d_model"], scale, config["nhead"])
    config["num_layers"] = spec["num_layers"] or config["num_layers"]
    config["d_ffn"] = spec["d_ffn"] or config["d_ffn"]
    config["frontend_channels"] = [max(1, round(c / scale)) for c in config["frontend_channels"]]
    kwargs = dict(config["mixer_kwargs"])
    for key in WIDTH_KWARGS:
        if kwargs.get(key) is not None:
            # HyperMixing splits its hidden size over the heads.
            multiple = config["nhead"] if key == "hypernet_size" else 1
            kwargs[key] = _scale_width(kwargs[key], scale, multiple)
    config["mixer_kwargs"] = kwargs
    return config


def build_model(mixer, size="paper", vocab=8192, device="cpu"):
    """Builds the full pretraining model of ``mixer`` at ``size``.

    Arguments
    ---------
    mixer : str
        Token mixer name, ``floor`` or ``speechbrain_relposmhaxl``; a mixer
        name followed by ``@<commit>`` takes its mixers' code from that
        commit (``swap_mixers``).
    size : str
        ``paper``, ``small`` or ``tiny`` (see ``SIZES``).
    vocab : int
        Codes predicted by the head.
    device : str
        Where to put the model.

    Returns
    -------
    model : torch.nn.Module
        ``PretrainingModel`` or ``SpeechBrainBestRQ``: ``model(feats,
        lengths)`` gives logits, ``model.output_lengths(frames)`` their count.
    info : dict
        ``frontend`` (channels of the conv blocks), ``num_layers``,
        ``d_model``, ``d_ffn``, ``nhead``, ``mixer_kwargs``, ``params_m``
        (millions of parameters, head included).

    Example
    -------
    >>> model, info = build_model("summarymixing", "tiny", vocab=16)
    >>> info["d_model"], info["num_layers"], info["mixer_kwargs"]["summary_hid_dim"]
    (34, 2, [64])
    >>> info["frontend"]
    '8/2'
    >>> floor, info = build_model("floor", "tiny", vocab=16)
    >>> type(floor.encoder.layers[0].mixer).__name__, info["d_model"]
    ('IdentityMixer', 32)
    """
    from lobes.nnet.encoder import ConformerEncoder

    mixer, commit = split_revision(mixer)
    config = model_config(mixer, size)
    if mixer == SPEECHBRAIN_REF:
        model = SpeechBrainBestRQ(**config, vocab=vocab).to(device)
        config = {**config, "mixer_kwargs": {}}
    else:
        encoder = ConformerEncoder.from_config(config)
        if mixer == FLOOR:
            replace_mixers_with_identity(encoder)
        elif commit:
            swap_mixers(encoder, commit)
        model = PretrainingModel(encoder, config["d_model"], vocab).to(device)
    info = {
        "frontend": "/".join(map(str, config["frontend_channels"])),
        "num_layers": config["num_layers"],
        "d_model": config["d_model"],
        "d_ffn": config["d_ffn"],
        "nhead": config["nhead"],
        "mixer_kwargs": dict(config["mixer_kwargs"]),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    return model, info


def maybe_compile(model, enabled=True, **kwargs):
    """``torch.compile(model, **kwargs)`` if ``enabled``, else ``model``.

    For the recipes and the benchmark alike: one switch (``compile: True``)
    that leaves the eager model untouched when off. The compiled module
    shares the parameters of ``model`` (its ``state_dict`` keys gain an
    ``_orig_mod.`` prefix: save the original module). Where a compiler is
    missing or fails, the error surfaces at the first call.

    Arguments
    ---------
    model : torch.nn.Module
        The module to compile.
    enabled : bool
        False returns ``model`` itself.
    **kwargs : dict
        Passed to ``torch.compile`` (e.g. ``dynamic=False``, ``mode``).

    Returns
    -------
    torch.nn.Module

    Example
    -------
    >>> lin = torch.nn.Linear(2, 2)
    >>> maybe_compile(lin, enabled=False) is lin
    True
    """
    if not enabled:
        return model
    return torch.compile(model, **kwargs)
