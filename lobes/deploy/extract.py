"""Command line: features of a pretrained BEST-RQ encoder for audio files.

::

    python -m lobes.deploy.extract --model pretrained/bestrq_summarymixing \\
        --wav a.wav --out a.pt
    python -m lobes.deploy.extract --model pretrained/bestrq_summarymixing \\
        --list files.txt --out features/ --layers weighted --layer_weights w.pt

``--model`` is a folder written by ``lobes.deploy.export``. Each input file gives one
``.pt`` file (``torch.load`` it) holding a dict:

* ``features``: ``--layers all`` (default): (L+1, T', D), every hidden
  state; ``last``: (T', D), the last layer; ``weighted``: (T', D), the
  hidden states weighted by ``--layer_weights``;
* ``layers``, ``wav`` (the input path), ``frame_shift_s`` (0.04) and
  ``model``.

With one input and ``--out`` ending in ``.pt`` the features go to that file;
otherwise ``--out`` is a folder and each file is named after its input
(``<stem>.pt``; inputs of the same name get their parent folders in the name,
and inputs that differ only by extension, ``a.wav`` and ``a.mp3``, keep it:
``a.wav.pt``, ``a.mp3.pt``).

``--skip_errors`` reports each file that fails (unreadable audio, audio too
short to give one encoder frame, any other error of that file) and goes on;
the command
then exits with status 2 when files were skipped (so that scripts notice),
unless ``--allow_skipped`` is given too.

``--layer_weights`` is a comma-separated list of L+1 numbers (used as
given), a ``.pt`` file holding such a tensor, or a checkpoint of a probe's
``WeightedLayerSum`` (``weighted_ssl.ckpt``), whose softmax weights are used.
Files are encoded one at a time and never chunked.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from lobes.dataio.audio import AudioReadError
from lobes.utils.safe_io import first_line, load_tensors, save_atomic

LAYER_MODES = ("all", "last", "weighted")


def read_file_list(list_file):
    """Paths in ``list_file``: one per line, blank lines and ``#`` comments
    skipped; relative paths are taken from the current folder, else from the
    list's folder.

    Example
    -------
    >>> import tempfile
    >>> lst = Path(tempfile.mkdtemp()) / "files.txt"
    >>> _ = lst.write_text("# test\\n/data/a.wav\\n\\nb.flac\\n")
    >>> [p.name for p in read_file_list(lst)]
    ['a.wav', 'b.flac']
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"File list {list_file} does not exist.")
    paths = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        if not path.is_absolute() and not path.exists():
            path = list_file.parent / path
        paths.append(path)
    if not paths:
        raise ValueError(f"File list {list_file} names no audio file.")
    return paths


def output_names(wavs):
    """A distinct ``<name>.pt`` for each input path.

    The file stem, with as many parent folders as needed to tell inputs of
    the same name apart; inputs that differ only by their extension keep it.

    Example
    -------
    >>> output_names([Path("x/a.wav"), Path("y/a.wav"), Path("y/b.flac")])
    ['x_a.pt', 'y_a.pt', 'b.pt']
    >>> output_names([Path("d/a.wav"), Path("d/a.mp3")])
    ['a.wav.pt', 'a.mp3.pt']
    >>> output_names([Path("d/a.wav"), Path("d/../d/a.wav")])
    Traceback (most recent call last):
    ...
    ValueError: d/../d/a.wav is the same file as d/a.wav: give each input once.
    """
    seen = {}
    for wav in wavs:
        key = os.path.normpath(os.path.abspath(wav))
        if key in seen:
            raise ValueError(f"{wav} is the same file as {seen[key]}: give each input once.")
        seen[key] = wav
    stems = [Path(wav).with_suffix("").parts for wav in wavs]
    same_stem = Counter(stems)
    # same stem, other extension (a.wav, a.mp3): keep the extension
    keys = [Path(w).parts if same_stem[s] > 1 else s for w, s in zip(wavs, stems)]
    depth, pending, d = {}, list(range(len(keys))), 1
    while pending:  # add parent folders to the names that still clash
        counts = Counter(keys[i][-d:] for i in pending)
        for i in pending:
            if counts[keys[i][-d:]] == 1 or d >= len(keys[i]):
                depth[i] = d
        pending, d = [i for i in pending if i not in depth], d + 1
    names = [
        "_".join(keys[i][-depth[i]:]).lstrip("/_") + ".pt" for i in range(len(keys))
    ]
    clashes = sorted(n for n, c in Counter(names).items() if c > 1)
    if clashes:
        raise ValueError(
            f"Several inputs would be written to {clashes}: rename them, or "
            "extract them in separate runs."
        )
    return names


def parse_layer_weights(spec):
    """``--layer_weights``: numbers, a tensor file or a probe checkpoint.

    Example
    -------
    >>> parse_layer_weights("0.5, 0.25,0.25")
    tensor([0.5000, 0.2500, 0.2500])
    """
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        obj = load_tensors(path, what="layer weights file")
        if isinstance(obj, dict):
            if "weights" not in obj:
                raise ValueError(
                    f"{path} is a dict without `weights`: give a tensor of "
                    "L+1 weights or a WeightedLayerSum checkpoint."
                )
            return torch.softmax(obj["weights"].float(), dim=0)
        return torch.as_tensor(obj, dtype=torch.float32).flatten()
    try:
        return torch.tensor([float(x) for x in spec.split(",") if x.strip()])
    except ValueError:
        raise ValueError(
            f"--layer_weights {spec!r} is neither a file nor a comma-separated "
            "list of numbers."
        ) from None


def extract(
    model, wavs, out, layers="all", layer_weights=None, skip_errors=False,
    model_source=None,
):
    """Encodes each file of ``wavs`` and saves its features (see module doc).

    Arguments
    ---------
    model : lobes.deploy.inference.BestRQEncoder
        The loaded encoder.
    wavs : list of Path
        Audio files.
    out : Path
        A ``.pt`` file (one input) or a folder.
    layers : str
        ``all``, ``last`` or ``weighted``.
    layer_weights : torch.Tensor, optional
        L+1 weights, needed for ``weighted``.
    skip_errors : bool
        Report each file that fails (unreadable, too short, any error of
        that file) and go on, instead of stopping.
    model_source : str, optional
        The model folder, recorded in each output file.

    Returns
    -------
    written : list of Path
        The files written.
    skipped : list of str
        ``"<file>: <error>"`` of each file that failed (``skip_errors``).
    """
    if layers not in LAYER_MODES:
        raise ValueError(f"--layers {layers!r}: use one of {LAYER_MODES}")
    if layers == "weighted" and layer_weights is None:
        raise ValueError("--layers weighted needs --layer_weights.")
    out = Path(out)
    if out.suffix == ".pt" and len(wavs) == 1:
        targets = [out]
    elif out.suffix == ".pt":
        raise ValueError(f"--out {out} is a file but {len(wavs)} inputs are given: give a folder.")
    else:
        targets = [out / name for name in output_names(wavs)]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for wav, target in zip(tqdm(wavs, desc="Encoding", unit="file"), targets):
        try:
            enc = model.encode_file(
                wav, layer_weights if layers == "weighted" else None
            )
        except Exception as err:  # any failure of this one file
            if isinstance(err, (AudioReadError, ValueError)):
                message = str(err).removeprefix(f"{wav}: ")
            else:
                message = f"{type(err).__name__}: {first_line(err)}"
            if not skip_errors:
                if isinstance(err, AudioReadError):
                    raise
                if isinstance(err, ValueError):
                    raise ValueError(f"{wav}: {message}") from None
                err.add_note(f"(while encoding {wav}; --skip_errors skips such files)")
                raise
            failed.append(f"{wav}: {message}")
            continue
        frames = int(enc.frames[0])
        if layers == "all":
            feats = torch.stack([h[0, :frames] for h in enc.hidden_states])
        elif layers == "last":
            feats = enc.hidden_states[-1][0, :frames]
        else:
            feats = enc.weighted_sum[0, :frames]
        try:
            save_atomic(
                {
                    "features": feats.cpu(),
                    "layers": layers,
                    "wav": str(wav),
                    "frame_shift_s": 0.04,
                    "model": str(model_source or ""),
                },
                target,
                what=f"the features of {wav}",
            )
        except OSError as err:
            raise OSError(
                err.errno,
                f"{err.strerror} {len(written)} of {len(wavs)} feature files were "
                f"written before ({target.parent}); each is complete.",
            ) from None
        written.append(target)
    for message in failed:
        print(f"skipped {message}", file=sys.stderr)
    return written, failed


def main(argv=None):
    """``python -m lobes.deploy.extract``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lobes.deploy.extract",
        description="Hidden states of a pretrained BEST-RQ encoder (a folder "
        "written by lobes.deploy.export) for audio files; one .pt per file.",
    )
    parser.add_argument("--model", required=True, help="exported model folder")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--wav", nargs="+", help="audio file(s)")
    inputs.add_argument("--list", help="text file with one audio path per line")
    parser.add_argument(
        "--out", required=True,
        help="output .pt file (one input) or folder (one <name>.pt per input)",
    )
    parser.add_argument("--layers", choices=LAYER_MODES, default="all")
    parser.add_argument(
        "--layer_weights", default=None,
        help="L+1 weights for --layers weighted: 'w0,w1,...', a tensor .pt, "
        "or a probe's weighted_ssl.ckpt (softmax of its weights)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1...")
    parser.add_argument(
        "--savedir", default=None,
        help="where SpeechBrain links the model files (default: none, read in place)",
    )
    parser.add_argument(
        "--skip_errors", action="store_true",
        help="report each file that fails (unreadable, too short...) and continue (exit status 2 if "
        "any was skipped, unless --allow_skipped)",
    )
    parser.add_argument(
        "--allow_skipped", action="store_true",
        help="with --skip_errors: exit with status 0 even if files were skipped",
    )
    args = parser.parse_args(argv)

    from lobes.deploy.inference import BestRQEncoder  # after argparse: --help is fast

    try:
        wavs = [Path(w) for w in args.wav] if args.wav else read_file_list(args.list)
        weights = parse_layer_weights(args.layer_weights)
        model = BestRQEncoder.from_hparams(
            source=args.model,
            savedir=args.savedir,
            run_opts={"device": args.device},
        )
        written, skipped = extract(
            model, wavs, Path(args.out), args.layers, weights,
            args.skip_errors, model_source=args.model,
        )
    except (OSError, ValueError, AudioReadError) as err:
        print(f"lobes.deploy.extract: error: {err}", file=sys.stderr)
        return 1
    print(f"Wrote {len(written)} feature file(s) to {args.out}")
    if skipped:
        print(
            f"lobes.deploy.extract: {len(skipped)} of {len(wavs)} file(s) skipped "
            "(listed above)"
            + ("" if args.allow_skipped else "; exit status 2 (--allow_skipped for 0)"),
            file=sys.stderr,
        )
        if not args.allow_skipped:
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
