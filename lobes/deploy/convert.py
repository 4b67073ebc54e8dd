"""Convert BEST-RQ checkpoints of SpeechBrain's recipe and of the BEST-RQ
study's fork into this package's encoders.

Two layouts hold the same model (``model.ckpt`` of a ``CKPT+...`` folder, a
``ModuleList`` whose first two entries are the ``ConvolutionFrontEnd`` and the
``EncoderWrapper`` of a ``TransformerASR`` Conformer):

* ``speechbrain``: SpeechBrain 1.1's own BEST-RQ recipe
  (``recipes/LibriSpeech/self-supervised-learning/BEST-RQ``), attention
  ``RelPosMHAXL`` (our ``mhsa``) or ``hypermixing``. Its YAML sets
  ``conformer_activation`` to GELU and ``encoder_layerdrop`` to 0. Its
  models with one of our mixers put in by
  ``lobes.nnet.speechbrain_adapter.replace_attention`` convert too (each
  ``mha_layer`` records its mixer, heads and arguments).
* ``authors``: the fork of the BEST-RQ study (``whettenr/speechbrain-fork``,
  branches ``alt-attention`` and ``summary-mixing``), which adds
  ``fastattention`` (our ``fastformer``), ``SummaryMixing`` and bidirectional
  ``mamba``; its Conformer ran Swish and LayerDrop 0.05 (12 layers) / 0.1.

The mixer, the sizes and the heads are read from the weights' names and
shapes; the activation (which leaves no trace in the weights) from the
layout, or ``activation``. Every key of the source encoder must find its
place and every parameter of ours must be filled, or the conversion is refused
with the keys that do not fit. The result is an exported model folder
(``lobes.deploy.export``): ``encoder.ckpt``, ``normalizer.ckpt``,
``hyperparams.yaml``, ``README.md``, usable as ``pretrained_path`` by every
probe and fine-tuning recipe and by ``lobes.deploy.inference.BestRQEncoder``.

The feature normalisation goes with the model folder (``normalizer.ckpt``,
model card), so that inference, probes and fine-tuning apply it: the global
statistics of the source's ``normalize.ckpt`` when it holds some (the fork's
runs: ``authors``; SpeechBrain 1.1's global normaliser: ``pooled``), else
per-utterance normalisation (``sentence``): SpeechBrain's own recipe sets
``norm_type: sentence``, which saves a ``normalize.ckpt`` without statistics.
``normalization="sentence"`` forces the latter; the run's
``hyperparams.yaml`` (two folders above ``CKPT+...``, where SpeechBrain
copies it), when present, is read as text to refuse a file without
statistics from a run that normalised globally. SpeechBrain before 1.1 took
the *unbiased* per-utterance deviation, 1.1 the biased one (ours): on
utterances of n frames the two differ by a factor sqrt(n / (n - 1)).

``padding_isolation=False`` makes the converted encoder compute exactly what
the source did on padded batches (see ``lobes.nnet.encoder``); the default keeps
padding away from real frames (identical outputs on unpadded input).

Command line::

    python -m lobes.deploy.convert --checkpoint /path/to/save/CKPT+... \\
        --layout authors --out pretrained/converted_summarymixing

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import re
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from lobes.nnet.encoder import ConformerEncoder
from lobes.nnet.normalization import FeatureNormalizer, read_statistics
from lobes.utils.progress import Steps
from lobes.utils.safe_io import disk_full_error, is_write_failure, load_tensors

LAYOUTS = {
    # activation, LayerDrop of 12 / 24 layers (their YAMLs; no trace in weights)
    "speechbrain": {"activation": "gelu", "layerdrop": (0.0, 0.0)},
    "authors": {"activation": "swish", "layerdrop": (0.05, 0.1)},
}
# Source buffers with no counterpart (positional tables we compute).
IGNORED = re.compile(r"(^|\.)(positional_encoding|positional_encoding_decoder)\.(pe|inv_freq)$")
LAYER_PARTS = {
    "ffn_module1.": "ffn1.",
    "ffn_module2.": "ffn2.",
    "norm1.norm.": "mixer_norm.",
    "norm2.norm.": "norm.",
    "convolution_module.": "conv.",
}


def find_checkpoint(path):
    """``model.ckpt`` and the normaliser file of a source checkpoint.

    Arguments
    ---------
    path : str or Path
        A ``CKPT+...`` folder, a ``save`` folder (its most recent checkpoint
        by the time recorded in ``CKPT.yaml``) or a ``model.ckpt`` file.

    Returns
    -------
    model_file : Path
    normalizer_file : Path or None
    """
    path = Path(path)
    if path.is_file():
        folder, model = path.parent, path
    elif (path / "model.ckpt").is_file():
        folder, model = path, path / "model.ckpt"
    else:
        ckpts = [p for p in path.glob("CKPT+*") if (p / "model.ckpt").is_file()]
        if not ckpts:
            raise FileNotFoundError(
                f"No checkpoint in {path}: give a CKPT+... folder (with "
                "model.ckpt), the save folder holding them, or model.ckpt."
            )

        def unixtime(ckpt):
            meta = yaml.safe_load((ckpt / "CKPT.yaml").read_text()) if (ckpt / "CKPT.yaml").is_file() else {}
            return (meta or {}).get("unixtime", 0.0), ckpt.name

        return find_checkpoint(max(ckpts, key=unixtime))
    for name in ("normalizer.ckpt", "normalize.ckpt"):
        if (folder / name).is_file():
            return model, folder / name
    return model, None


def split_source(state):
    """Front-end and Transformer parts of a source state dict.

    Returns
    -------
    frontend : dict
        Keys relative to the ``ConvolutionFrontEnd``.
    transformer : dict
        Keys relative to the ``TransformerASR``.
    """
    front_prefix = trans_prefix = None
    for key in state:
        m = re.match(r"(.*?)convblock_0\.", key)
        if m and front_prefix is None:
            front_prefix = m.group(1)
        m = re.match(r"(.*?transformer\.)encoder\.layers\.0\.", key)
        if m and trans_prefix is None:
            trans_prefix = m.group(1)
    if front_prefix is None or trans_prefix is None:
        raise ValueError(
            "Not a BEST-RQ Conformer checkpoint of SpeechBrain's layout: no "
            "ConvolutionFrontEnd (…convblock_0.…) and TransformerASR encoder "
            f"(…transformer.encoder.layers.0.…) keys. First keys: {list(state)[:5]}"
        )
    frontend = {k[len(front_prefix):]: v for k, v in state.items() if k.startswith(front_prefix) and "convblock_" in k}
    transformer = {k[len(trans_prefix):]: v for k, v in state.items() if k.startswith(trans_prefix)}
    return frontend, transformer


def detect_mixer(layer):
    """Our mixer name for the keys of one source layer's ``mha_layer``."""
    extra = layer.get("mha_layer._extra_state")
    if isinstance(extra, dict) and extra.get("mixer"):
        return extra["mixer"]  # our MixerAttention (lobes.nnet.speechbrain_adapter)
    keys = {k.split("mha_layer.", 1)[1] for k in layer if "mha_layer." in k}
    if "pos_bias_u" in keys:
        return "mhsa"
    if any(k.startswith("hyper.") for k in keys):
        return "hypermixing"
    if "query_attn.weight" in keys:
        return "fastformer"
    if any(k.startswith("summary_proj.") for k in keys):
        return "summarymixing" if any(k.startswith("local_proj.") for k in keys) else "summarymixing_lite"
    if any(k.startswith("forward_blocks.") for k in keys):
        return "mamba"
    raise ValueError(
        f"Unknown attention module in the checkpoint (mha_layer keys: "
        f"{sorted(keys)[:8]}): this converter maps RelPosMHAXL, hypermixing, "
        "fastattention, SummaryMixing and mamba."
    )


def _linear_chain(layer, prefix):
    """(in, out) sizes of the SpeechBrain ``linear``, ``linear_0``, ... layers
    of a VanillaNN under ``prefix``."""
    sizes, i = [], 0
    while True:
        name = "linear" if i == 0 else f"linear_{i - 1}"
        key = f"{prefix}{name}.w.weight"
        if key not in layer:
            if f"{prefix}{name}.weights" in layer:
                raise ValueError(
                    f"{prefix}: SummaryMixing with several heads (ParallelLinear) "
                    "is not supported by the converter; the BEST-RQ study used one."
                )
            return sizes
        sizes.append(tuple(layer[key].shape[::-1]))
        i += 1


def infer_config(frontend, transformer, layout, activation=None):
    """``ConformerEncoder`` arguments of a source checkpoint."""
    layers = sorted({int(m.group(1)) for k in transformer if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    l0 = {k[len("encoder.layers.0."):]: v for k, v in transformer.items() if k.startswith("encoder.layers.0.")}
    mixer = detect_mixer(l0)
    d_model = transformer["encoder.norm.norm.weight"].shape[0]
    in_proj = transformer["custom_src_module.layers.0.w.weight"]
    convs = sorted(k for k in frontend if k.endswith("conv.weight"))
    channels = [frontend[k].shape[0] for k in convs]
    kernels = [frontend[k].shape[-1] for k in convs]
    freq = in_proj.shape[1] // channels[-1]
    n_mels = freq * 2 ** len(channels)  # ceil(n_mels / 4) = freq; 80 -> 20
    cfg = {
        "mixer": mixer,
        "num_layers": len(layers),
        "d_model": d_model,
        "nhead": 1,
        "d_ffn": l0["ffn_module1.1.ffn.0.weight"].shape[0],
        "kernel_size": l0["convolution_module.conv.weight"].shape[-1],
        "dropout": 0.1,
        "layerdrop_prob": LAYOUTS[layout]["layerdrop"][len(layers) > 12],
        "activation": activation or LAYOUTS[layout]["activation"],
        "n_mels": n_mels,
        "frontend_channels": channels,
        "frontend_kernel_sizes": kernels,
        "mixer_kwargs": {},
    }
    m = "mha_layer."
    extra = l0.get(m + "_extra_state")
    if isinstance(extra, dict):  # our MixerAttention records its arguments
        cfg["nhead"] = extra["nhead"]
        cfg["mixer_kwargs"] = dict(extra["mixer_kwargs"])
    elif mixer == "mhsa":
        cfg["nhead"] = l0[m + "pos_bias_u"].shape[1]
    elif mixer == "hypermixing":
        fc2 = l0[m + "hyper.w1_gen.fc2_weights"]
        cfg["nhead"] = fc2.shape[0]
        cfg["mixer_kwargs"] = {
            "hypernet_size": fc2.shape[0] * fc2.shape[1],
            "tied": m + "hyper.w2_gen.fc1_weights" not in l0,
        }
    elif mixer == "fastformer":
        cfg["nhead"] = l0[m + "query_attn.weight"].shape[0]
    elif mixer.startswith("summarymixing"):
        summary = _linear_chain(l0, m + "summary_proj.")
        cfg["mixer_kwargs"] = {"summary_hid_dim": [o for _, o in summary[:-1]]}
        if mixer == "summarymixing":
            local = _linear_chain(l0, m + "local_proj.")
            cfg["mixer_kwargs"].update(
                local_proj_hid_dim=[o for _, o in local[:-1]], local_proj_out_dim=local[-1][1]
            )
    elif mixer == "mamba":
        a_log = l0[m + "forward_blocks.0.mixer.mamba_fwd.A_log"]
        conv = l0[m + "forward_blocks.0.mixer.mamba_fwd.conv1d.weight"]
        dt = l0[m + "forward_blocks.0.mixer.mamba_fwd.dt_proj.weight"]
        if dt.shape[1] != -(-d_model // 16):
            raise ValueError(f"Mamba dt_rank {dt.shape[1]} is not ceil(d_model / 16)")
        cfg["mixer_kwargs"] = {
            "d_state": a_log.shape[1],
            "d_conv": conv.shape[-1],
            "expand": a_log.shape[0] // d_model,
        }
    return cfg


def _mixer_key(mixer, rest):
    """Our key (below ``mixer.``) for a source key below ``mha_layer.``."""
    if rest.startswith("mixer."):  # our MixerAttention: our mixer's own keys
        return rest[len("mixer."):]
    if mixer == "mhsa":
        return "attn." + rest
    if mixer.startswith("summarymixing"):
        m = re.match(r"(local_proj|summary_proj)\.linear(?:_(\d+))?\.w\.(weight|bias)$", rest)
        if m:
            branch = "local" if m.group(1) == "local_proj" else "summary"
            index = 0 if m.group(2) is None else int(m.group(2)) + 1
            return f"{branch}.{2 * index}.linear.{m.group(3)}"
        m = re.match(r"summary_local_merging\.linear\.w\.(weight|bias)$", rest)
        if m:
            return f"combiner.0.{m.group(1)}"
        return rest  # local_norm, summary_norm
    if mixer == "mamba":
        m = re.match(r"forward_blocks\.0\.(norm\.weight|mixer\.mamba_(fwd|rev)\.(.*))$", rest)
        if m and m.group(1) == "norm.weight":
            return "norm.weight"
        if m:
            return ("fwd." if m.group(2) == "fwd" else "bwd.") + m.group(3)
        return None
    return rest  # hypermixing, fastformer: the same names


def map_state(frontend, transformer, mixer):
    """Our encoder's state dict (without buffers we compute) from the source
    parts; returns (state, unmapped source keys, our key -> source key)."""
    state, unmapped, origin = {}, [], {}
    for key, value in frontend.items():
        state["frontend.cnn." + key] = value
    for key, value in transformer.items():
        if IGNORED.search(key):
            continue
        if key.startswith("custom_src_module.layers.0.w."):
            state["input_proj." + key.rsplit(".", 1)[1]] = value
            continue
        if key.startswith("encoder.norm.norm."):
            state["norm." + key.rsplit(".", 1)[1]] = value
            continue
        m = re.match(r"encoder\.layers\.(\d+)\.(.*)$", key)
        if not m:
            unmapped.append(key)
            continue
        index, rest = m.groups()
        ours = None
        for src, dst in LAYER_PARTS.items():
            if rest.startswith(src):
                ours = dst + rest[len(src):]
        if rest == "mha_layer._extra_state":  # MixerAttention's record, read above
            continue
        if rest.startswith("mha_layer."):
            sub = _mixer_key(mixer, rest[len("mha_layer."):])
            ours = None if sub is None else "mixer." + sub
        if ours is None:
            unmapped.append(key)
        else:
            state[f"layers.{index}.{ours}"] = value
            origin[f"layers.{index}.{ours}"] = key
    return state, unmapped, origin


NORM_TYPE = re.compile(r"^\s*norm_type:\s*['\"]?(\w+)", re.MULTILINE)


def run_norm_types(model_file):
    """The ``norm_type`` values of ``InputNormalization`` written in the run's
    ``hyperparams.yaml`` (read as text, never executed), if the file is where
    SpeechBrain puts it (``<output_folder>/hyperparams.yaml``, with the
    checkpoints in ``<output_folder>/save/CKPT+...``); else an empty set."""
    for folder in list(Path(model_file).absolute().parents)[1:3]:
        hparams = folder / "hyperparams.yaml"
        if hparams.is_file():
            try:
                return set(NORM_TYPE.findall(hparams.read_text(errors="replace")))
            except OSError:
                return set()
    return set()


def source_normalization(model_file, normalizer_file, normalization=None):
    """The feature normalisation of a source checkpoint, as the state of a
    ``FeatureNormalizer`` (see the module docstring).

    Raises
    ------
    FileNotFoundError
        No normaliser file, and ``normalization`` is not ``"sentence"``.
    ValueError
        A file without statistics from a run whose YAML normalised globally.
    """
    if normalization not in (None, "sentence"):
        raise ValueError(f"normalization={normalization!r}: use None or 'sentence'")
    if normalization == "sentence":
        return FeatureNormalizer("sentence").state()
    if normalizer_file is None:
        raise FileNotFoundError(
            f"No normaliser file beside {model_file} (normalize.ckpt or "
            "normalizer.ckpt): the converted encoder needs the pretraining's "
            "feature normalisation. If the run normalised each utterance "
            "(norm_type: sentence), pass --normalization sentence."
        )
    stats = read_statistics(normalizer_file)
    if stats["method"] is not None:
        return stats
    declared = run_norm_types(model_file) - {"sentence"}
    if declared:
        raise ValueError(
            f"{normalizer_file} holds no feature statistics, but the run's "
            f"hyperparams.yaml sets norm_type: {', '.join(sorted(declared))}: "
            "its normaliser never saw a batch, so the checkpoint was not trained "
            "with it. Convert a checkpoint of that run written after training "
            "started, or pass --normalization sentence if the model was trained "
            "with per-utterance normalisation."
        )
    return FeatureNormalizer("sentence").state()


def convert_checkpoint(checkpoint, out_folder, layout="authors", activation=None,
                       padding_isolation=True, normalization=None):
    """Converts a source checkpoint into an exported model folder.

    Arguments
    ---------
    checkpoint : str or Path
        See ``find_checkpoint``.
    out_folder : str or Path
        Where to write the model folder.
    layout : str
        ``"speechbrain"`` or ``"authors"`` (see the module docstring).
    activation : str, optional
        Override the layout's activation ("swish", "gelu").
    padding_isolation : bool
        False: the converted encoder computes exactly what the source did on
        padded batches.
    normalization : str, optional
        None: what the source's ``normalize.ckpt`` holds (global statistics,
        else per utterance); ``"sentence"``: per utterance, whatever the file.

    Returns
    -------
    Path
        ``out_folder``.
    """
    from lobes.deploy.export import export_encoder

    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {', '.join(LAYOUTS)}")
    model_file, normalizer_file = find_checkpoint(checkpoint)
    # then the export's own bar: each step of a large model takes seconds
    steps = Steps(f"Converting {model_file}", [
        "reading the checkpoint", "building our encoder, mapping the weights",
        "writing the converted weights"])
    stats = source_normalization(model_file, normalizer_file, normalization)
    state = load_tensors(model_file, what="checkpoint")
    if not isinstance(state, dict):
        raise ValueError(f"{model_file} holds a {type(state).__name__}, not a state dict.")
    steps.done()
    frontend, transformer = split_source(state)
    config = infer_config(frontend, transformer, layout, activation)
    config["padding_isolation"] = padding_isolation
    mapped, unmapped, origin = map_state(frontend, transformer, config["mixer"])
    encoder = ConformerEncoder.from_config(config)
    ours = encoder.state_dict()
    unmapped += [origin.get(k, k) for k in mapped if k not in ours]
    if unmapped:
        raise ValueError(
            f"{model_file}: keys this converter cannot map: {unmapped[:10]}"
            + (f" (and {len(unmapped) - 10} more)" if len(unmapped) > 10 else "")
        )
    computed = [k for k in ours if k not in mapped and (k == "_extra_state" or k.endswith("inv_freq"))]
    missing = [k for k in ours if k not in mapped and k not in computed]
    if missing:
        raise ValueError(
            f"{model_file} does not fit a {config['mixer']} encoder: nothing "
            f"for our parameters {missing[:10]}"
        )
    bad = [origin.get(k, k) for k, v in mapped.items() if tuple(v.shape) != tuple(ours[k].shape)]
    if bad:
        raise ValueError(f"{model_file}: shapes differ for {bad[:10]}")
    for key in computed:
        mapped[key] = ours[key]
    encoder.load_state_dict(mapped)
    steps.done()
    # The converted weights go beside the output (not to /tmp, which may be
    # small), in a hidden folder removed whatever happens.
    parent = Path(out_folder).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".partial-convert-", dir=parent) as tmp:
        try:
            torch.save(encoder.state_dict(), Path(tmp) / "encoder.ckpt")
            torch.save(stats, Path(tmp) / "normalizer.ckpt")
        except (OSError, RuntimeError) as err:
            if is_write_failure(err):
                raise disk_full_error(parent, f"the converted encoder of {model_file}", err) from None
            raise
        steps.done()
        steps.close()
        return export_encoder(tmp, out_folder)


def main(argv=None):
    """``python -m lobes.deploy.convert --checkpoint ... --layout ... --out ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m lobes.deploy.convert",
        description="Convert a BEST-RQ checkpoint of SpeechBrain's recipe or of "
        "the BEST-RQ study's fork into an exported model folder of this package.",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="CKPT+... folder, its save folder, or model.ckpt")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), required=True,
                        help="speechbrain: SpeechBrain's BEST-RQ recipe (GELU); "
                        "authors: whettenr/speechbrain-fork (Swish)")
    parser.add_argument("--out", required=True, help="output model folder")
    parser.add_argument("--activation", choices=["swish", "gelu", "relu"], default=None,
                        help="override the layout's Conformer activation")
    parser.add_argument("--padding_isolation", choices=["true", "false"], default="true",
                        help="false: compute exactly what the source computed on padded batches")
    parser.add_argument("--normalization", choices=["auto", "sentence"], default="auto",
                        help="auto: the global statistics of the source's normalize.ckpt, "
                        "else per utterance (SpeechBrain's recipe, norm_type: sentence); "
                        "sentence: per utterance whatever the file holds")
    args = parser.parse_args(argv)
    try:
        out = convert_checkpoint(args.checkpoint, args.out, args.layout, args.activation,
                                 args.padding_isolation == "true",
                                 None if args.normalization == "auto" else "sentence")
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"lobes.deploy.convert: error: {err}", file=sys.stderr)
        return 1
    method = read_statistics(Path(out) / "normalizer.ckpt")["method"]
    print(f"Converted into {out} (feature normalisation: {method})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
