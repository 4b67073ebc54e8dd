"""Export a pretrained BEST-RQ encoder to a self-contained model folder.

A pretraining run leaves ``<output_folder>/save/CKPT+.../model.ckpt`` (the
encoder *and* the 8192-way prediction head, plus optimizer and scheduler
states beside it). Users of the encoder need less and more: the encoder
weights alone, the feature normaliser's statistics, and a YAML that rebuilds
exactly that encoder. ``export_encoder`` writes such a folder::

    <out_folder>/
        encoder.ckpt      encoder state dict (keys without prefix; its
                          `_extra_state` holds every constructor argument)
        normalizer.ckpt   the feature normalisation: method (authors, pooled,
                          sentence) and statistics
                          (``lobes.nnet.normalization.FeatureNormalizer``)
        hyperparams.yaml  Fbank + normaliser + encoder + `modules` +
                          `pretrainer`: loads with
                          ``lobes.deploy.inference.BestRQEncoder.from_hparams``
        README.md         model card: mixer, width, layers, parameters,
                          pretraining data and steps

Everything comes from the checkpoint: the encoder describes itself (its
state dict records every constructor argument), so no YAML is read. The
written folder is loaded back, and the weights strictly into the encoder it
defines, before the export is reported done. The folder is also a valid
``pretrained_path`` of the MP3S probing recipes.

Command line::

    python -m lobes.deploy.export --checkpoint results/bestrq_summarymixing/1000/save \
        --out pretrained/bestrq_summarymixing

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import csv
import datetime
import sys
from pathlib import Path

import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.logger import get_logger

from lobes.deploy.loading import (
    encoder_from_checkpoint,
    load_pretrained,
    resolve_checkpoint,
)
from lobes.nnet.normalization import FeatureNormalizer
from lobes.utils.progress import Steps
from lobes.utils.safe_io import atomic_folder

logger = get_logger(__name__)

# The features of every recipe here: 80 fbank (n_mels from the encoder),
# 25 ms windows, 10 ms hop, 16 kHz.
FBANK = {"sample_rate": 16000, "n_fft": 400, "hop_length": 10}

# hyperparams.yaml of an exported folder: the values (dumped by yaml) first,
# then this fixed part.
HPARAMS_BODY = """
encoder: !apply:lobes.nnet.encoder.ConformerEncoder.from_config [!ref <encoder_config>]

# Features: exactly those of the pretraining.
compute_features: !new:speechbrain.lobes.features.Fbank
    sample_rate: !ref <sample_rate>
    n_fft: !ref <n_fft>
    n_mels: !ref <encoder_config[n_mels]>
    hop_length: !ref <hop_length>

# The pretraining's normalisation, method and statistics from
# normalizer.ckpt. Used in eval mode only: never updated.
normalizer: !new:lobes.nnet.normalization.FeatureNormalizer

modules:
    compute_features: !ref <compute_features>
    normalizer: !ref <normalizer>
    encoder: !ref <encoder>

# Loads encoder.ckpt and normalizer.ckpt from this folder (the `source`
# of from_hparams); the encoder strictly, with a clear error on mismatch.
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <encoder>
        normalizer: !ref <normalizer>
    custom_hooks:
        encoder: !name:lobes.deploy.inference.load_encoder_checkpoint
"""


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


def data_metadata(checkpoint):
    """Pretraining data of the run that holds ``checkpoint``: hours and
    utterances of its ``train.csv`` (the recipes prepare it in their output
    folder, beside ``save/``), when it is still there."""
    folder = Path(checkpoint).absolute()
    for candidate in (folder, folder.parent, folder.parent.parent):
        train_csv = candidate / "train.csv"
        if train_csv.is_file():
            seconds, count = 0.0, 0
            with open(train_csv, newline="", encoding="utf-8") as fin:
                for row in csv.DictReader(fin):
                    seconds += float(row.get("duration") or 0.0)
                    count += 1
            return {"train_csv": str(train_csv), "hours": seconds / 3600, "utterances": count}
    return {}


def hparams_yaml(config, source, n_params):
    """Text of the exported folder's hyperparams.yaml for the encoder
    ``config`` (every value written by ``yaml.safe_dump``)."""
    values = {**FBANK, "encoder_config": config}
    header = (
        "# BEST-RQ encoder exported by lobes.deploy.export\n"
        f"#   from: {source}\n"
        f"#   mixer {config['mixer']}, {config['num_layers']} layers, "
        f"d_model {config['d_model']}, {n_params / 1e6:.2f}M parameters\n"
        "# from lobes.deploy.inference import BestRQEncoder\n"
        '# encoder = BestRQEncoder.from_hparams(source="<this folder>")\n'
        "# The same folder is a `pretrained_path` for the MP3S probing recipes.\n\n"
    )
    return header + yaml.safe_dump(values, sort_keys=False) + HPARAMS_BODY


NORMALIZATIONS = {
    "authors": "global, the BEST-RQ study's statistics (per-utterance mean and "
    "unbiased std averaged over utterances and batches)",
    "pooled": "global, SpeechBrain 1.1's statistics (mean and std of every frame)",
    "sentence": "per utterance (its own mean and std)",
}


def _model_card(encoder_args, n_params, ckpt_meta, data_meta, normalization="pooled"):
    """Text of the exported folder's README.md."""
    normalization = f"{normalization}: {NORMALIZATIONS[normalization]}"
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
        ("positional encoding", encoder_args["positional_encoding"]),
        ("activation", encoder_args["activation"]),
        ("padding isolation", encoder_args["padding_isolation"]),
        ("feature normalisation", normalization),
        ("mixer arguments", encoder_args.get("mixer_kwargs") or {}),
        ("encoder parameters", f"{n_params / 1e6:.2f}M ({n_params})"),
        ("hidden states", f"{encoder_args['num_layers'] + 1} (input of layer 1, then each layer), 40 ms frames"),
        ("pretraining data", data),
        ("pretraining steps", steps),
        ("epochs", ckpt_meta.get("epoch", "unknown")),
        ("checkpoint", ckpt_meta.get("checkpoint", "-")),
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
(10 ms), normalised as in pretraining (see the table); output: the
hidden states of every layer at 40 ms.

| | |
|---|---|
{table}

## Use

```python
from lobes.deploy.inference import BestRQEncoder

encoder = BestRQEncoder.from_hparams(source="<this folder>")
out = encoder.encode_file("speech.wav")      # any rate / channels: resampled, mixed
out.hidden_states                            # list of {encoder_args['num_layers'] + 1} tensors (1, T/4, {encoder_args['d_model']})
out = encoder.encode_batch(wavs, wav_lens)   # (B, samples), relative lengths
```

Command line (one `.pt` per file, progress bar):

```bash
python -m lobes.deploy.extract --model <this folder> --list files.txt --out features/
```

MP3S probing and fine-tuning recipes take this folder as `--pretrained_path`
(the encoder is rebuilt from `encoder.ckpt`, which records its mixer and
sizes).

Files: `encoder.ckpt` (encoder state dict), `normalizer.ckpt` (feature
normalisation method and statistics), `hyperparams.yaml` (the definition
loaded by `from_hparams`).
"""


def export_encoder(checkpoint, out_folder):
    """Writes the model folder of a pretrained encoder (see module doc).

    Arguments
    ---------
    checkpoint : str or Path
        A pretraining ``save`` folder (its latest ``CKPT+...`` is used), one
        ``CKPT+...`` folder, or an exported folder.
    out_folder : str or Path
        Where to write the model folder (created; its files replaced only
        once the new ones are complete and load).

    Returns
    -------
    Path
        ``out_folder``.

    Example
    -------
    >>> import tempfile
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> ckpt = Path(tempfile.mkdtemp())
    >>> enc = ConformerEncoder("fastformer", num_layers=1, d_model=16, nhead=2,
    ...                        d_ffn=32, kernel_size=3)
    >>> torch.save(enc.state_dict(), ckpt / "encoder.ckpt")
    >>> norm = FeatureNormalizer("authors")
    >>> _ = norm(torch.rand(2, 10, 80))
    >>> norm.save(ckpt / "normalizer.ckpt")
    >>> out = export_encoder(ckpt, ckpt / "exported")
    >>> sorted(p.name for p in out.iterdir())
    ['README.md', 'encoder.ckpt', 'hyperparams.yaml', 'normalizer.ckpt']
    """
    checkpoint, out_folder = Path(checkpoint).absolute(), Path(out_folder)
    encoder_file, normalizer_file, _ = resolve_checkpoint(checkpoint)
    # ~1 min for a 24-layer encoder on a CPU: each step on a bar
    steps = Steps(f"Exporting to {out_folder}", [
        "building the encoder of the checkpoint", "writing the model folder",
        "loading it back, strictly", "writing the model card"])
    if normalizer_file is None:
        raise FileNotFoundError(
            f"No normaliser statistics beside {encoder_file} (normalize.ckpt "
            "or normalizer.ckpt): the exported encoder needs the features "
            "normalised with the pretraining statistics."
        )
    encoder = encoder_from_checkpoint(checkpoint)
    normalizer = FeatureNormalizer()  # the checkpoint's method
    load_pretrained(checkpoint, encoder, normalizer)
    steps.done()
    if not normalizer.has_statistics():
        raise ValueError(
            f"{normalizer_file} holds no statistics (the normaliser never saw "
            "a batch): was the checkpoint saved before training started?"
        )
    if out_folder.absolute() == encoder_file.parent.absolute():
        raise ValueError(f"--out {out_folder} is the checkpoint folder itself.")
    config = encoder.config
    n_params = sum(p.numel() for p in encoder.parameters())
    # Written in a hidden folder beside out_folder and loaded back, then
    # moved into it: a full disk leaves nothing half-written.
    needed = sum(t.numel() * t.element_size() for t in encoder.state_dict().values()
                 if torch.is_tensor(t))
    with atomic_folder(out_folder, what="the model folder", needed=needed) as tmp:
        torch.save(encoder.state_dict(), tmp / "encoder.ckpt")
        normalizer.save(tmp / "normalizer.ckpt")
        steps.done()
        yaml_path = tmp / "hyperparams.yaml"
        yaml_path.write_text(
            hparams_yaml(config, encoder_file.parent, n_params), encoding="utf-8"
        )
        # The folder must rebuild this encoder: load it back, strictly.
        with open(yaml_path, encoding="utf-8") as fin:
            built = load_hyperpyyaml(fin)
        load_pretrained(tmp, built["encoder"], built["normalizer"])
        steps.done()

        (tmp / "README.md").write_text(
            _model_card(config, n_params, checkpoint_metadata(checkpoint),
                        data_metadata(checkpoint), normalizer.method),
            encoding="utf-8",
        )
    steps.done()
    steps.close()
    logger.info(
        f"Exported the {config['mixer']} encoder of {encoder_file.parent} "
        f"({n_params / 1e6:.2f}M parameters) to {out_folder}"
    )
    return out_folder


def main(argv=None):
    """``python -m lobes.deploy.export --checkpoint ... --out ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m lobes.deploy.export",
        description="Write a self-contained model folder (encoder.ckpt, "
        "normalizer.ckpt, hyperparams.yaml, README.md) from a BEST-RQ "
        "pretraining checkpoint, loadable with "
        "lobes.deploy.inference.BestRQEncoder.from_hparams(source=<out>).",
    )
    parser.add_argument(
        "--checkpoint", required=True,
        help="pretraining save folder (latest CKPT+... used), a CKPT+... folder, "
        "or an exported folder",
    )
    parser.add_argument("--out", required=True, help="output model folder")
    args = parser.parse_args(argv)
    try:
        out = export_encoder(args.checkpoint, args.out)
    except (OSError, ValueError) as err:
        print(f"lobes.deploy.export: error: {err}", file=sys.stderr)
        return 1
    print(f"Exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
