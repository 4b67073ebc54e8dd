#!/usr/bin/env python3
"""Why does the random encoder beat the pretrained one on the demo's IEMOCAP?

The demo corpus (``tools/demo_iemocap.py``) makes emotion out of three cues:
speaking rate and pitch (espeak-ng settings) and loudness (the waveform's
gain: sad 0.2, neutral 0.5, happy 0.7-0.75, angry 1.0). This script measures,
for each probe input of the demo table (``pretrained``, ``random``,
``fbank``, built exactly as the probes build them: the checkpoint's
normaliser, ``WeightedLayerSum`` with uniform layer weights, the probe's
seed for the random encoder), on every labelled turn:

* **emotion accuracy** of a linear classifier on the mean-pooled input
  (leave-one-speaker-out over the 10 speakers, standardised features,
  L2-regularised softmax regression): the MP3S probe without its training
  schedule;
* the same **with loudness removed**: every waveform scaled to the same RMS
  over its active frames, which leaves rate and pitch as the only cues;
* **loudness R²**: how much of each turn's level (dB RMS over active frames,
  as made) a ridge regression reads from the pooled input, leave one
  speaker out; and R² of the level *within* an emotion (level minus its
  class mean: the speaker's and sentence's part), which no label explains.

The difference of the first two columns is what loudness is worth to each
input; the R² says whether the input keeps the level at all::

    python tools/iemocap_ablation.py --pretrained results/demo_bestrq_summarymixing/save \\
        --data demo_data/IEMOCAP_full_release [--markdown results/iemocap_ablation.md]

About a minute on 2 cores for the demo corpus (120 turns).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes" / "IEMOCAP" / "EmotionRecognition"))

from iemocap_prepare import collect_turns  # noqa: E402  (the recipe's own reader)

from lobes.dataio.audio import load_audio  # noqa: E402
from lobes.deploy.loading import encoder_from_checkpoint  # noqa: E402
from lobes.nnet.normalization import FeatureNormalizer  # noqa: E402
from lobes.nnet.weighted_sum import ENCODER_INITS, WeightedLayerSum  # noqa: E402

PROBE_SEED = 1986  # recipes/IEMOCAP/EmotionRecognition/hparams/linear.yaml


def active_level_db(wav, frame=400, floor_db=30.0):
    """dB RMS of a waveform over its frames within ``floor_db`` of the
    loudest one (the speech, not the silence around it).

    Example
    -------
    >>> wav = torch.cat([torch.zeros(4000), 0.1 * torch.ones(4000)])
    >>> round(active_level_db(wav), 1)
    -20.0
    """
    frames = wav[: len(wav) // frame * frame].view(-1, frame)
    energy = frames.pow(2).mean(1).clamp(min=1e-12)
    db = 10 * torch.log10(energy)
    active = db > db.max() - floor_db
    return float(10 * torch.log10(energy[active].mean()))


def pooled_inputs(waves, pretrained, encoder_init):
    """Means over frames of what the probe reads: (N, D) with uniform layer
    weights (the probe's start), and (L+1, N, D) of each hidden state alone
    (fbank: its one "state")."""
    from speechbrain.lobes.features import Fbank

    torch.manual_seed(PROBE_SEED)
    encoder = encoder_from_checkpoint(pretrained)
    reader = WeightedLayerSum(encoder, FeatureNormalizer(), encoder_init=encoder_init)
    reader.load_pretrained(pretrained)
    fbank = Fbank(n_mels=encoder.config.get("n_mels", 80))
    pooled, layers = [], []
    with torch.no_grad():
        for wav in waves:
            feats = fbank(wav.unsqueeze(0))
            pooled.append(reader(feats, torch.ones(1))[0].mean(0))
            if encoder_init == "fbank":
                layers.append(pooled[-1].unsqueeze(0))
            else:
                _, hidden = encoder(reader.normalizer(feats, torch.ones(1)), torch.ones(1),
                                    return_hidden=True)
                layers.append(torch.stack([h[0].mean(0) for h in hidden]))
    return torch.stack(pooled), torch.stack(layers, dim=1)


def _standardise(train, test):
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    return (train - mean) / std, (test - mean) / std


def loso_accuracy(x, labels, speakers, l2=1e-2, steps=200):
    """Leave-one-speaker-out accuracy (%) of softmax regression on ``x``."""
    correct = 0
    for spk in speakers.unique():
        test = speakers == spk
        xtr, xte = _standardise(x[~test], x[test])
        w = torch.zeros(x.shape[1], int(labels.max()) + 1, requires_grad=True)
        b = torch.zeros(int(labels.max()) + 1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xtr @ w + b, labels[~test]) + l2 * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            correct += int(((xte @ w + b).argmax(1) == labels[test]).sum())
    return 100.0 * correct / len(labels)


def loso_r2(x, target, speakers, ridge=10.0):
    """Leave-one-speaker-out R² of a ridge regression of ``target`` on ``x``."""
    pred = torch.empty_like(target)
    for spk in speakers.unique():
        test = speakers == spk
        xtr, xte = _standardise(x[~test], x[test])
        ytr = target[~test]
        eye = torch.eye(x.shape[1], dtype=x.dtype)
        w = torch.linalg.solve(xtr.T @ xtr + ridge * eye, xtr.T @ (ytr - ytr.mean()))
        pred[test] = xte @ w + ytr.mean()
    return float(1 - (target - pred).pow(2).sum() / (target - target.mean()).pow(2).sum())


def run(pretrained, data, inits=ENCODER_INITS):
    """The table's rows: {init: {column: value}}, plus the corpus' levels."""
    turns = collect_turns(data)
    names = sorted(turns)
    waves = [load_audio(turns[n][0]) for n in names]
    classes = sorted({turns[n][1] for n in names})
    labels = torch.tensor([classes.index(turns[n][1]) for n in names])
    speakers = torch.tensor([turns[n][2] for n in names])
    level = torch.tensor([active_level_db(w) for w in waves], dtype=torch.float64)
    target_rms = 10 ** (-20 / 20)  # every turn at -20 dB over its active frames
    equal = [w * (target_rms / 10 ** (active_level_db(w) / 20)) for w in waves]
    class_mean = torch.stack([level[labels == c].mean() for c in labels.unique()])
    within = level - class_mean[labels]
    rows = {}
    for init in inits:
        made, made_layers = pooled_inputs(waves, pretrained, init)
        flat, _ = pooled_inputs(equal, pretrained, init)
        made, flat = made.double(), flat.double()
        rows[init] = {
            "layers": [loso_accuracy(layer, labels, speakers) for layer in made_layers],
            "acc": loso_accuracy(made.float(), labels, speakers),
            "acc_equal": loso_accuracy(flat.float(), labels, speakers),
            "r2": loso_r2(made, level, speakers),
            "r2_within": loso_r2(made, within, speakers),
        }
    levels = {classes[int(c)]: float(level[labels == c].mean()) for c in labels.unique()}
    return rows, levels, len(names)


def render(rows, levels, n):
    lines = [
        f"IEMOCAP demo, {n} turns, leave-one-speaker-out, linear on mean-pooled inputs",
        "",
        "| input | emotion acc. | emotion acc., equal loudness | loss without loudness | loudness R² | loudness R² within emotion | acc. of each hidden state (input of layer 1, layers 1..L) |",
        "|---|---|---|---|---|---|---|",
    ]
    for init, r in rows.items():
        lines.append(
            f"| {init} | {r['acc']:.1f} | {r['acc_equal']:.1f} | "
            f"{r['acc'] - r['acc_equal']:+.1f} | {r['r2']:.2f} | {r['r2_within']:.2f} | "
            + " / ".join(f"{a:.1f}" for a in r["layers"]) + " |"
        )
    lines += ["", "Mean level per class (dB RMS over active frames): "
              + ", ".join(f"{c} {v:.1f}" for c, v in levels.items())]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True, help="pretraining save folder or model folder")
    parser.add_argument("--data", default=str(ROOT / "demo_data" / "IEMOCAP_full_release"))
    parser.add_argument("--markdown", help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    text = render(*run(args.pretrained, args.data))
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
