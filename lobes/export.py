"""Export a pretrained BEST-RQ encoder to a self-contained model folder.

A pretraining run leaves ``<output_folder>/save/CKPT+.../model.ckpt`` (the
encoder *and* the 8192-way prediction head, plus optimizer and scheduler
states beside it). Users of the encoder need less and more: the encoder
weights alone, the feature normaliser's statistics, and a YAML that rebuilds
exactly that encoder. ``export_encoder`` writes such a folder::

    <out_folder>/
        encoder.ckpt      encoder state dict (keys without prefix, with the
                          architecture record that makes a wrong load fail)
        normalizer.ckpt   InputNormalization global statistics (its _save format)
        hyperparams.yaml  Fbank + normaliser + encoder (actual sizes) +
                          `modules` + `pretrainer`: loads with
                          ``lobes.inference.BestRQEncoder.from_hparams``
        README.md         model card: mixer, width, layers, parameters,
                          pretraining data and steps

The folder is also a valid ``pretrained_path`` of the MP3S probing recipes
(``lobes.pretrained.load_pretrained`` reads ``encoder.ckpt`` and
``normalizer.ckpt``).

Where the architecture comes from: the encoder's state dict records mixer,
layers, width, heads, FFN size and positional encoding (its extra state), but
not every constructor argument (kernel size, mixer arguments...). Those are
read from the pretraining YAML: by default the ``hyperparams.yaml`` that
SpeechBrain saved in the run's output folder (found from the checkpoint's
location; it holds the command-line overrides, e.g. the demo sizes), or any
file given with ``hparams_file``: that saved file, a recipe YAML (with
``overrides``) or an ``hparams/encoder_<mixer>.yaml``. The written folder is
then loaded back and the checkpoint is loaded strictly into the encoder it
defines, so a YAML that does not match the checkpoint (other mixer, width,
kernel...) is refused at export time, with the setting that differs.

Command line::

    python -m lobes.export --checkpoint results/bestrq_summarymixing/1000/save \\
        --out pretrained/bestrq_summarymixing

(``--hparams`` only when the run's ``hyperparams.yaml`` is not beside its
``save`` folder.)

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import csv
import datetime
import io
import re
import sys
from pathlib import Path

import ruamel.yaml
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.processing.features import InputNormalization
from speechbrain.utils.logger import get_logger

from lobes.pretrained import encoder_state_dict, load_pretrained, resolve_checkpoint

logger = get_logger(__name__)

ENCODER_TAG = "!new:lobes.encoder.ConformerEncoder"
FBANK_DEFAULTS = {"sample_rate": 16000, "n_fft": 400, "n_mels": 80, "hop_length": 10}
PLACEHOLDER = re.compile(r"^(\w+):\s*!PLACEHOLDER", re.MULTILINE)
# Constructor arguments written first, in this order (the encoder YAMLs').
ENCODER_KEYS = (
    "mixer", "num_layers", "d_model", "nhead", "d_ffn", "kernel_size",
    "dropout", "layerdrop_prob", "n_mels", "positional_encoding",
    "mixer_kwargs",
)


def find_hparams_file(checkpoint):
    """The pretraining run's saved ``hyperparams.yaml`` for ``checkpoint``.

    Looks in the folder itself (an exported folder), its parent (a ``save``
    folder's output folder) and grand-parent (a ``CKPT+...`` folder's).

    Returns
    -------
    Path or None

    Example
    -------
    >>> find_hparams_file("/nonexistent/save") is None
    True
    """
    checkpoint = Path(checkpoint).absolute()
    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (folder / "hyperparams.yaml").is_file():
            return folder / "hyperparams.yaml"
    return None


def read_hparams(hparams_file, overrides=None):
    """Reads a (Hyper)PyYAML file without instantiating anything.

    ``!ref``, ``!include`` and ``overrides`` are resolved; the ``!new:``...
    tags stay as tags, so the result describes the objects without building
    them (no 8192-way head, no data folder needed). ``!PLACEHOLDER`` keys
    (e.g. ``data_folder`` of a recipe YAML) are filled with a dummy value.

    Arguments
    ---------
    hparams_file : str or Path
        A pretraining output ``hyperparams.yaml``, a recipe YAML or an
        ``hparams/encoder_<mixer>.yaml``.
    overrides : dict or str, optional
        As on a recipe's command line, e.g. ``{"encoder_hparams":
        {"num_layers": 24}}`` for a recipe YAML.

    Returns
    -------
    ruamel.yaml.comments.CommentedMap
        The resolved document; tagged mappings have a ``.tag.value``.

    Example
    -------
    >>> yaml_file = Path(__file__).parents[1] / "hparams/encoder_fastformer.yaml"
    >>> doc = read_hparams(yaml_file, {"d_model": 64})
    >>> doc["encoder"].tag.value, doc["encoder"]["d_model"]
    ('!new:lobes.encoder.ConformerEncoder', 64)
    """
    hparams_file = Path(hparams_file)
    if not hparams_file.is_file():
        raise FileNotFoundError(f"Hyperparameter file {hparams_file} does not exist.")
    text = hparams_file.read_text(encoding="utf-8")
    if isinstance(overrides, str):
        overrides = yaml.safe_load(overrides) or {}
    overrides = dict(overrides or {})
    for key in PLACEHOLDER.findall(text):
        overrides.setdefault(key, f"<{key}: not needed for export>")
    stream = io.StringIO(text)
    stream.name = str(hparams_file)  # relative !include paths
    try:
        resolved = resolve_references(stream, overrides)
    except Exception as err:
        raise ValueError(f"Cannot read {hparams_file}: {err}") from err
    return ruamel.yaml.YAML().load(resolved)


def _tag(node):
    tag = getattr(node, "tag", None)
    return getattr(tag, "value", None) if tag is not None else None


def encoder_definition(doc, where="the YAML"):
    """Constructor arguments of the ``encoder`` of a resolved YAML document
    (``read_hparams``), as a plain dict."""
    node = doc.get("encoder") if hasattr(doc, "get") else None
    if _tag(node) != ENCODER_TAG or not hasattr(node, "items"):
        raise ValueError(
            f"{where} has no `encoder: {ENCODER_TAG}` with its arguments: give "
            "the pretraining run's hyperparams.yaml (in its output folder), "
            "its recipe YAML or an hparams/encoder_<mixer>.yaml."
        )
    return _plain(node)


def _plain(value):
    """ruamel containers to dicts and lists (tagged leaves kept as they are)."""
    if hasattr(value, "items") and not _tag(value):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list) and not _tag(value):
        return [_plain(v) for v in value]
    return value


def _flow(value):
    """One YAML value in flow style (tags preserved)."""
    dumper = ruamel.yaml.YAML()
    dumper.default_flow_style = True
    dumper.width = 4096
    out = io.StringIO()
    dumper.dump({"v": value}, out)
    text = out.getvalue().strip()
    if text.startswith("{v: ") and text.endswith("}"):
        return text[4:-1]
    return text.split(":", 1)[1].strip()  # defensive; not reached for plain values


def checkpoint_metadata(checkpoint):
    """Training progress of a pretraining checkpoint: ``steps``, ``epoch``
    and ``checkpoint`` (the CKPT folder), where available."""
    encoder_file, _, _ = resolve_checkpoint(checkpoint)
    folder = encoder_file.parent
    meta = {"checkpoint": str(folder)}
    ckpt_yaml = folder / "CKPT.yaml"
    if ckpt_yaml.is_file():
        info = yaml.safe_load(ckpt_yaml.read_text(encoding="utf-8")) or {}
        if "steps" in info:
            meta["steps"] = int(info["steps"])
    brain = folder / "brain.ckpt"
    if "steps" not in meta and brain.is_file():
        info = yaml.safe_load(brain.read_text(encoding="utf-8")) or {}
        if "optimizer_step" in info:
            meta["steps"] = int(info["optimizer_step"])
    counter = folder / "counter.ckpt"
    if counter.is_file():
        try:
            meta["epoch"] = int(counter.read_text().strip())
        except ValueError:
            pass
    return meta


def data_metadata(doc):
    """Pretraining data of a resolved recipe document: splits, data folder
    and, when the train CSV is still there, its hours and utterances."""
    meta = {}
    for key in ("train_splits", "data_folder"):
        if doc is not None and key in doc and "not needed" not in str(doc[key]):
            meta[key] = _plain(doc[key])
    train_csv = doc.get("train_csv") if doc is not None else None
    if train_csv and Path(str(train_csv)).is_file():
        seconds, count = 0.0, 0
        with open(str(train_csv), newline="", encoding="utf-8") as fin:
            for row in csv.DictReader(fin):
                seconds += float(row.get("duration") or 0.0)
                count += 1
        meta.update(train_csv=str(train_csv), hours=seconds / 3600, utterances=count)
    return meta


def _hparams_yaml(encoder_args, fbank_args, norm_args, source, n_params):
    """Text of the exported folder's hyperparams.yaml."""
    lines = [
        "# " + "#" * 76,
        "# BEST-RQ encoder exported by lobes.export",
        f"#   from: {source}",
        f"#   mixer {encoder_args['mixer']}, {encoder_args['num_layers']} layers, "
        f"d_model {encoder_args['d_model']}"
        + (f", {n_params / 1e6:.2f}M parameters" if n_params else ""),
        "#",
        "# from lobes.inference import BestRQEncoder",
        "# encoder = BestRQEncoder.from_hparams(source=\"<this folder>\")",
        "# out = encoder.encode_file(\"speech.wav\")   # out.hidden_states: L+1 x (1, T/4, D)",
        "#",
        "# The same folder is a `pretrained_path` for the MP3S probing recipes;",
        "# a probe must build the encoder with the sizes below.",
        "# " + "#" * 76,
        "",
        f"sample_rate: {fbank_args.get('sample_rate', 16000)}",
        "",
        "# Encoder: the pretrained architecture (weights in encoder.ckpt, whose",
        "# recorded mixer and sizes must match these or loading is refused).",
    ]
    for key, value in encoder_args.items():
        lines.append(f"{key}: {_flow(value)}")
    lines.append("")
    lines.append(f"encoder: {ENCODER_TAG}")
    lines += [f"    {key}: !ref <{key}>" for key in encoder_args]
    lines += [
        "",
        "# Features: exactly those of the pretraining.",
        "compute_features: !new:speechbrain.lobes.features.Fbank",
    ]
    lines += [f"    {k}: {_flow(v)}" for k, v in fbank_args.items()]
    lines += [
        "",
        "# Global mean/variance normalisation with the pretraining statistics",
        "# (normalizer.ckpt). Used in eval mode only: never updated.",
        "normalizer: !new:speechbrain.processing.features.InputNormalization",
    ]
    lines += [f"    {k}: {_flow(v)}" for k, v in norm_args.items()]
    lines += [
        "",
        "modules:",
        "    compute_features: !ref <compute_features>",
        "    normalizer: !ref <normalizer>",
        "    encoder: !ref <encoder>",
        "",
        "# Loads encoder.ckpt and normalizer.ckpt from this folder (the `source`",
        "# of from_hparams); the encoder strictly, with a clear error on mismatch.",
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
        "    loadables:",
        "        encoder: !ref <encoder>",
        "        normalizer: !ref <normalizer>",
        "    custom_hooks:",
        "        encoder: !name:lobes.inference.load_encoder_checkpoint",
        "",
    ]
    return "\n".join(lines)


def _model_card(encoder_args, n_params, ckpt_meta, data_meta, hparams_file):
    """Text of the exported folder's README.md."""
    mixer = encoder_args["mixer"]
    steps = ckpt_meta.get("steps", "unknown")
    if data_meta.get("hours") is not None:
        data = (
            f"{data_meta['hours']:.1f} h ({data_meta['utterances']} utterances, "
            f"{data_meta['train_csv']})"
        )
    else:
        data = "unknown (train CSV not found)"
    rows = [
        ("mixer", mixer),
        ("layers", encoder_args["num_layers"]),
        ("width (d_model)", encoder_args["d_model"]),
        ("heads", encoder_args.get("nhead", "-")),
        ("FFN size", encoder_args.get("d_ffn", "-")),
        ("conv kernel", encoder_args.get("kernel_size", "-")),
        ("positional encoding", encoder_args.get("positional_encoding", "auto")),
        ("mixer arguments", _flow(encoder_args.get("mixer_kwargs") or {})),
        ("encoder parameters", f"{n_params / 1e6:.2f}M ({n_params})"),
        ("hidden states", f"{encoder_args['num_layers'] + 1} (input of layer 1, then each layer), 40 ms frames"),
        ("pretraining data", data),
        ("pretraining splits", _flow(data_meta.get("train_splits", "unknown"))),
        ("pretraining steps", steps),
        ("epochs", ckpt_meta.get("epoch", "unknown")),
        ("checkpoint", ckpt_meta.get("checkpoint", "-")),
        ("hyperparameters", hparams_file),
        ("exported", datetime.date.today().isoformat()),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""---
library_name: speechbrain
tags: [self-supervised-learning, best-rq, conformer, {mixer}]
---

# BEST-RQ Conformer encoder ({mixer}, {encoder_args['num_layers']} layers, d_model {encoder_args['d_model']})

A BEST-RQ self-supervised speech encoder whose token mixer is `{mixer}`
(*An Analysis of Linear Complexity Attention Substitutes with BEST-RQ*,
Whetten et al., SLT 2024). Input: 16 kHz mono audio; features: 80 fbank
(10 ms), globally normalised with the pretraining statistics; output: the
hidden states of every layer at 40 ms.

| | |
|---|---|
{table}

## Use

```python
from lobes.inference import BestRQEncoder

encoder = BestRQEncoder.from_hparams(source="<this folder>")
out = encoder.encode_file("speech.wav")      # any rate / channels: resampled, mixed
out.hidden_states                            # list of {encoder_args['num_layers'] + 1} tensors (1, T/4, {encoder_args['d_model']})
out = encoder.encode_batch(wavs, wav_lens)   # (B, samples), relative lengths
```

Command line (one `.pt` per file, progress bar):

```bash
python -m lobes.extract --model <this folder> --list files.txt --out features/
```

MP3S probing recipes take this folder as `--pretrained_path` (with
`--mixer={mixer}` and the sizes above).

Files: `encoder.ckpt` (encoder state dict), `normalizer.ckpt` (feature
statistics), `hyperparams.yaml` (the definition loaded by `from_hparams`).
"""


def export_encoder(checkpoint, hparams_file=None, out_folder=None, overrides=None):
    """Writes the model folder of a pretrained encoder (see module doc).

    Arguments
    ---------
    checkpoint : str or Path
        A pretraining ``save`` folder (its latest ``CKPT+...`` is used), one
        ``CKPT+...`` folder, or an exported folder.
    hparams_file : str or Path, optional
        The YAML defining the encoder: by default the run's saved
        ``hyperparams.yaml`` found beside the checkpoint; otherwise a recipe
        YAML or an ``hparams/encoder_<mixer>.yaml`` (with ``overrides``).
    out_folder : str or Path
        Where to write the model folder (created; files overwritten).
    overrides : dict or str, optional
        Overrides for ``hparams_file`` (as on the recipe's command line).

    Returns
    -------
    Path
        ``out_folder``.

    Example
    -------
    >>> import tempfile
    >>> from lobes.encoder import ConformerEncoder
    >>> ckpt = Path(tempfile.mkdtemp())
    >>> enc = ConformerEncoder("fastformer", num_layers=1, d_model=16, nhead=2,
    ...                        d_ffn=32, kernel_size=3)
    >>> torch.save(enc.state_dict(), ckpt / "encoder.ckpt")
    >>> norm = InputNormalization()
    >>> _ = norm(torch.rand(2, 10, 80))
    >>> norm._save(ckpt / "normalizer.ckpt")
    >>> yaml_file = Path(__file__).parents[1] / "hparams/encoder_fastformer.yaml"
    >>> out = export_encoder(ckpt, yaml_file, ckpt / "exported", overrides={
    ...     "num_layers": 1, "d_model": 16, "nhead": 2, "d_ffn": 32, "kernel_size": 3})
    >>> sorted(p.name for p in out.iterdir())
    ['README.md', 'encoder.ckpt', 'hyperparams.yaml', 'normalizer.ckpt']
    >>> export_encoder(ckpt, yaml_file, ckpt / "bad")  # the paper's sizes
    Traceback (most recent call last):
    ...
    ValueError: ...d_model: checkpoint 16 vs this model 616...
    """
    if out_folder is None:
        raise ValueError("export_encoder needs out_folder.")
    checkpoint, out_folder = Path(checkpoint).absolute(), Path(out_folder)
    encoder_file, normalizer_file, _ = resolve_checkpoint(checkpoint)
    if normalizer_file is None:
        raise FileNotFoundError(
            f"No normaliser statistics beside {encoder_file} (normalize.ckpt "
            "or normalizer.ckpt): the exported encoder needs the features "
            "normalised with the pretraining statistics."
        )
    state = encoder_state_dict(checkpoint)
    recorded = state.get("_extra_state") or {}

    hparams_file = hparams_file or find_hparams_file(checkpoint)
    if hparams_file is None:
        raise FileNotFoundError(
            f"No hyperparams.yaml beside {checkpoint} (nor in its parent "
            "folders): give the pretraining run's output_folder/hyperparams.yaml "
            "(or its recipe YAML / hparams/encoder_<mixer>.yaml with the sizes "
            f"it was trained with; the checkpoint records {recorded})."
        )
    doc = read_hparams(hparams_file, overrides)
    encoder_args = encoder_definition(doc, str(hparams_file))
    mixer_kwargs = dict(encoder_args.get("mixer_kwargs") or {})
    if mixer_kwargs.get("backend") == "cuda":
        # The CUDA-only backend would refuse to build on a CPU machine; "auto"
        # runs the mamba-ssm kernels on GPU and the PyTorch scan elsewhere,
        # same parameters and same numbers.
        mixer_kwargs["backend"] = "auto"
    if "mixer_kwargs" in encoder_args or mixer_kwargs:
        encoder_args["mixer_kwargs"] = mixer_kwargs
    if recorded.get("positional_encoding"):
        encoder_args["positional_encoding"] = recorded["positional_encoding"]
    encoder_args = {
        **{k: encoder_args[k] for k in ENCODER_KEYS if k in encoder_args},
        **{k: v for k, v in encoder_args.items() if k not in ENCODER_KEYS},
    }
    missing = [k for k in ("mixer", "num_layers", "d_model") if k not in encoder_args]
    if missing:
        raise ValueError(
            f"The encoder of {hparams_file} does not set {missing}; export "
            "needs explicit sizes (the encoder YAMLs set them all)."
        )

    fbank_args = dict(FBANK_DEFAULTS)
    if "compute_features" in doc:
        fbank_args.update(_plain(doc["compute_features"]))
    norm_args = {"norm_type": "global"}
    norm_node = doc.get("normalize", doc.get("normalizer"))
    if norm_node is not None and hasattr(norm_node, "items"):
        norm_args.update(_plain(norm_node))
    norm_args.pop("update_until_epoch", None)  # eval mode: never updated

    if out_folder.absolute() == encoder_file.parent.absolute():
        raise ValueError(f"--out {out_folder} is the checkpoint folder itself.")
    out_folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_folder / "encoder.ckpt")
    normalizer = InputNormalization(norm_type=norm_args["norm_type"])
    normalizer._load(normalizer_file)
    if normalizer.norm_type == "global" and normalizer.glob_mean.numel() == 0:
        raise ValueError(
            f"{normalizer_file} holds no statistics (the normaliser never saw "
            "a batch): was the checkpoint saved before training started?"
        )
    normalizer._save(out_folder / "normalizer.ckpt")

    # Build the encoder the written YAML defines and load the checkpoint into
    # it, strictly: a YAML that does not fit the checkpoint fails here.
    yaml_path = out_folder / "hyperparams.yaml"
    source = encoder_file.parent
    yaml_path.write_text(
        _hparams_yaml(encoder_args, fbank_args, norm_args, source, None),
        encoding="utf-8",
    )
    try:
        with open(yaml_path, encoding="utf-8") as fin:
            built = load_hyperpyyaml(fin)
        load_pretrained(out_folder, built["encoder"], built["normalizer"])
    except (ValueError, TypeError, ImportError) as err:
        for name in ("encoder.ckpt", "normalizer.ckpt", "hyperparams.yaml"):
            (out_folder / name).unlink(missing_ok=True)
        raise ValueError(
            f"{hparams_file} does not define the encoder of {encoder_file}: {err}"
        ) from None
    n_params = sum(p.numel() for p in built["encoder"].parameters())
    yaml_path.write_text(  # the same, with the parameter count in the header
        _hparams_yaml(encoder_args, fbank_args, norm_args, source, n_params),
        encoding="utf-8",
    )

    ckpt_meta = checkpoint_metadata(checkpoint)
    data_meta = data_metadata(doc)
    (out_folder / "README.md").write_text(
        _model_card(encoder_args, n_params, ckpt_meta, data_meta, hparams_file),
        encoding="utf-8",
    )
    logger.info(
        f"Exported the {encoder_args['mixer']} encoder of {encoder_file.parent} "
        f"({n_params / 1e6:.2f}M parameters) to {out_folder}"
    )
    return out_folder


def main(argv=None):
    """``python -m lobes.export --checkpoint ... --out ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m lobes.export",
        description="Write a self-contained model folder (encoder.ckpt, "
        "normalizer.ckpt, hyperparams.yaml, README.md) from a BEST-RQ "
        "pretraining checkpoint, loadable with "
        "lobes.inference.BestRQEncoder.from_hparams(source=<out>).",
    )
    parser.add_argument(
        "--checkpoint", required=True,
        help="pretraining save folder (latest CKPT+... used), a CKPT+... folder, "
        "or an exported folder",
    )
    parser.add_argument(
        "--hparams", default=None,
        help="YAML defining the encoder (default: the run's hyperparams.yaml "
        "beside the save folder); a recipe YAML or hparams/encoder_<mixer>.yaml "
        "also works, with --overrides for non-default sizes",
    )
    parser.add_argument("--out", required=True, help="output model folder")
    parser.add_argument(
        "--overrides", default=None,
        help='YAML overrides of --hparams, e.g. "{encoder_hparams: {num_layers: 24}}"',
    )
    args = parser.parse_args(argv)
    try:
        out = export_encoder(args.checkpoint, args.hparams, args.out, args.overrides)
    except (FileNotFoundError, ValueError) as err:
        print(f"lobes.export: error: {err}", file=sys.stderr)
        return 1
    print(f"Exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
