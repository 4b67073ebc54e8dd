"""Loading a pretrained BEST-RQ encoder (and its feature normaliser).

One function for every consumer of a pretraining run: the MP3S probing
recipes, the export step and the inference class. It accepts the three forms
a user has at hand:

* a pretraining checkpoint, ``<output_folder>/save/CKPT+...``: ``model.ckpt``
  holds the ``ModuleList [encoder, head]`` of the recipe (encoder keys start
  with ``0.``), ``normalize.ckpt`` the feature normalisation (method and
  statistics, ``lobes.nnet.normalization``);
* a pretraining ``save`` folder: its latest ``CKPT+...`` is used (SSL
  pretraining keeps the latest model, as the paper's probes do), by the step
  and time recorded in it, never by file-system dates;
* an exported model folder (``lobes.deploy.export``): ``encoder.ckpt`` and
  ``normalizer.ckpt``.

The encoder's state dict carries its architecture (every constructor
argument), so ``encoder_from_checkpoint`` rebuilds the encoder from the checkpoint
alone, and loading a checkpoint into an encoder of another mixer or size fails
with a message that says which setting differs, never silently.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import datetime
import re
from pathlib import Path

import torch  # noqa: F401 (the examples use it)
from speechbrain.utils.logger import get_logger

from lobes.utils.checkpoint import checkpoint_progress
from lobes.utils.safe_io import load_tensors
from lobes.nnet.normalization import load_statistics

ENCODER_PREFIX = "0."  # the encoder in the recipe's `model: [encoder, head]`
logger = get_logger(__name__)


def resolve_checkpoint(path):
    """Finds the files of a pretrained encoder under ``path``, and logs which
    checkpoint (path and training step) is used.

    In a ``save`` folder the latest checkpoint is the one with the highest
    training step recorded *in* it (``steps`` in its ``CKPT.yaml``, else
    ``optimizer_step`` in ``brain.ckpt``), then the latest recorded save time
    (``unixtime``): never the file-system dates, which a copy (``cp -r``,
    ``rsync`` without ``-t``) changes.

    Arguments
    ---------
    path : str or Path
        A ``CKPT+...`` folder, a ``save`` folder holding some, or an exported
        model folder.

    Returns
    -------
    encoder_file : Path
        ``model.ckpt`` (pretraining) or ``encoder.ckpt`` (export).
    normalizer_file : Path or None
        ``normalize.ckpt`` / ``normalizer.ckpt`` when present.
    prefix : str
        Key prefix of the encoder's parameters in ``encoder_file``.

    Raises
    ------
    FileNotFoundError
        No such folder, or no encoder in it.
    ValueError
        The folder holds checkpoints of an MP3S probe, not of a pretraining.

    Example
    -------
    >>> resolve_checkpoint("/nonexistent")
    Traceback (most recent call last):
    ...
    FileNotFoundError: Pretrained encoder folder /nonexistent does not exist: ...
    >>> import tempfile
    >>> save = Path(tempfile.mkdtemp())
    >>> for name, steps, time in [("CKPT+b", 420, 2.0), ("CKPT+a", 364, 3.0)]:
    ...     (save / name).mkdir()
    ...     _ = (save / name / "model.ckpt").write_bytes(b"")
    ...     _ = (save / name / "CKPT.yaml").write_text(
    ...         f"steps: {steps}\\nunixtime: {time}\\n")
    >>> resolve_checkpoint(save)[0].parent.name  # the highest recorded step
    'CKPT+b'
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Pretrained encoder folder {path} does not exist: give the "
            "pretraining `save` folder, one of its CKPT+... folders or an "
            "exported model folder (pretrained_path in the YAML)."
        )
    if (path / "encoder.ckpt").is_file():
        norm = path / "normalizer.ckpt"
        log_loaded_checkpoint(path / "encoder.ckpt")
        return path / "encoder.ckpt", norm if norm.is_file() else None, ""
    if (path / "model.ckpt").is_file():
        if (path / PROBE_MARKER).is_file():
            raise ValueError(_probe_checkpoint_message(path))
        norm = path / "normalize.ckpt"
        log_loaded_checkpoint(path / "model.ckpt")
        return path / "model.ckpt", norm if norm.is_file() else None, ENCODER_PREFIX
    ckpts = [p for p in path.glob("CKPT+*") if (p / "model.ckpt").is_file()]
    if not ckpts:
        raise FileNotFoundError(
            f"No pretrained encoder in {path}: expected encoder.ckpt (an "
            "exported model), model.ckpt (a CKPT+... folder of the BEST-RQ "
            "recipe) or CKPT+... folders (its save folder)."
        )
    pretraining = [p for p in ckpts if not (p / PROBE_MARKER).is_file()]
    if not pretraining:
        raise ValueError(_probe_checkpoint_message(path))

    def progress(ckpt):
        step, unixtime = checkpoint_progress(ckpt)
        return (
            -1 if step is None else step,
            float("-inf") if unixtime is None else unixtime,
            ckpt.name,
        )

    return resolve_checkpoint(max(pretraining, key=progress))


PROBE_MARKER = "weighted_ssl.ckpt"  # the layer weights: only probes save them
_logged = set()


def _probe_checkpoint_message(path):
    return (
        f"{path} holds checkpoints of an MP3S probe (their {PROBE_MARKER} is "
        "the probe's layer weights; their model.ckpt is the probe, not an "
        "encoder). Give --pretrained_path the BEST-RQ pretraining run's save "
        "folder (<output_folder>/save), one of its CKPT+... folders, or an "
        "exported encoder folder (python -m lobes.deploy.export)."
    )


def _exported_step(folder):
    """Pretraining step written in an exported folder's model card, or None."""
    try:
        card = (folder / "README.md").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"^\| pretraining steps \| (\d+) \|", card, re.MULTILINE)
    return int(found.group(1)) if found else None


def log_loaded_checkpoint(file):
    """Logs (once per file and process) which encoder checkpoint is loaded:
    its path, training step and save time (from the checkpoint's own
    records, or the model card of an exported folder).

    Arguments
    ---------
    file : str or Path
        ``model.ckpt`` of a ``CKPT+...`` folder or ``encoder.ckpt`` of an
        exported folder.
    """
    file = Path(file)
    key = str(file.absolute())
    if key in _logged:
        return
    _logged.add(key)
    if file.name == "encoder.ckpt":
        step, unixtime = _exported_step(file.parent), None
    else:
        step, unixtime = checkpoint_progress(file.parent)
    when = ""
    if unixtime is not None:
        when = ", saved " + datetime.datetime.fromtimestamp(unixtime).isoformat(" ", "seconds")
    logger.info(
        f"Pretrained encoder: {file} (step {'unknown' if step is None else step}{when})"
    )


def encoder_state_dict(path):
    """The encoder's state dict (with its architecture record) from ``path``
    (any form accepted by ``resolve_checkpoint``)."""
    encoder_file, _, prefix = resolve_checkpoint(path)
    state = load_tensors(encoder_file, what="encoder checkpoint")
    if not isinstance(state, dict):
        raise ValueError(
            f"{encoder_file} holds a {type(state).__name__}, not a state dict: "
            "is it a checkpoint of the BEST-RQ recipe?"
        )
    state = {
        k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)
    }
    if not state:
        raise ValueError(
            f"{encoder_file} holds no encoder parameters (no key starts with "
            f"{prefix!r}): is it a checkpoint of the BEST-RQ recipe?"
        )
    return state


def encoder_from_checkpoint(source, mixer=None, overrides=None):
    """The encoder a checkpoint was trained with (random weights; load them
    with ``load_pretrained``).

    Arguments
    ---------
    source : str or Path
        Any form accepted by ``resolve_checkpoint``.
    mixer : str, optional
        If given, the mixer the caller expects: a checkpoint of another mixer
        is refused, naming both.
    overrides : dict, optional
        Settings that leave the weights' meaning unchanged
        (``lobes.config.RUNTIME_SETTINGS``: ``dropout``, ``layerdrop_prob``,
        ``padding_isolation``) to change from the checkpoint's, e.g. the
        LayerDrop of a fine-tuning run; any other key is refused.

    Returns
    -------
    lobes.nnet.encoder.ConformerEncoder

    Example
    -------
    >>> import tempfile
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> enc = ConformerEncoder("fastformer", num_layers=1, d_model=16,
    ...                        nhead=2, d_ffn=32, kernel_size=3)
    >>> folder = tempfile.mkdtemp()
    >>> torch.save(enc.state_dict(), f"{folder}/encoder.ckpt")
    >>> encoder_from_checkpoint(folder).config == enc.config
    True
    >>> encoder_from_checkpoint(folder, mixer="mamba")
    Traceback (most recent call last):
    ...
    ValueError: ...holds a 'fastformer' encoder, but mixer='mamba' was asked for...
    >>> encoder_from_checkpoint(folder, overrides={"layerdrop_prob": 0.0}).layerdrop_prob
    0.0
    >>> encoder_from_checkpoint(folder, overrides={"d_model": 32})
    Traceback (most recent call last):
    ...
    ValueError: Encoder override(s) d_model: ...only dropout, layerdrop_prob, padding_isolation...
    """
    from lobes.config import RUNTIME_SETTINGS
    from lobes.nnet.encoder import ConformerEncoder

    encoder_file, _, _ = resolve_checkpoint(source)
    config = dict(encoder_state_dict(source).get("_extra_state") or {})
    if "init" not in config:  # every argument is recorded since then
        raise ValueError(
            f"{encoder_file} does not describe its encoder completely (saved "
            "by an older version of this package): export it again with that "
            "version, or build the encoder by hand and use load_pretrained."
        )
    if mixer is not None and mixer != config["mixer"]:
        raise ValueError(
            f"{encoder_file} holds a {config['mixer']!r} encoder, but "
            f"mixer={mixer!r} was asked for: drop the `mixer` setting (the "
            "checkpoint defines the encoder) or give a checkpoint of that mixer."
        )
    overrides = dict(overrides or {})
    allowed = [k for k in RUNTIME_SETTINGS if k != "init"]
    refused = [k for k in overrides if k not in allowed]
    if refused:
        raise ValueError(
            f"Encoder override(s) {', '.join(refused)}: the encoder of {encoder_file} "
            f"is defined by its checkpoint; only {', '.join(allowed)} may change."
        )
    config.update(overrides)
    kwargs = dict(config.get("mixer_kwargs") or {})
    if kwargs.get("backend") == "cuda":
        # The CUDA-only backend would refuse to build on a CPU machine; "auto"
        # runs the mamba-ssm kernels on GPU and the PyTorch scan elsewhere.
        config["mixer_kwargs"] = {**kwargs, "backend": "auto"}
    return ConformerEncoder.from_config(config)


def load_pretrained(path, encoder, normalizer=None):
    """Loads pretrained weights into ``encoder`` (and ``normalizer``).

    Arguments
    ---------
    path : str or Path
        Any form accepted by ``resolve_checkpoint``.
    encoder : lobes.nnet.encoder.ConformerEncoder or None
        Built from the same ``hparams/encoder_<mixer>.yaml`` and sizes as the
        pretraining; a mismatch raises ``ValueError`` naming the difference.
        None loads the feature statistics only (the random-initialisation
        and fbank baselines of the probes).
    normalizer : lobes.nnet.normalization.FeatureNormalizer, optional
        Receives the pretraining's feature normalisation: its method
        (``authors``, ``pooled``, ``sentence``) and statistics, so that the
        features are normalised as the encoder's were in pretraining
        (SpeechBrain's ``InputNormalization`` takes global statistics).

    Returns
    -------
    encoder, normalizer
        The same objects, loaded.

    Example
    -------
    >>> import tempfile
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> enc = ConformerEncoder("fastformer", num_layers=1, d_model=16,
    ...                        nhead=2, d_ffn=32, kernel_size=3)
    >>> folder = tempfile.mkdtemp()
    >>> torch.save(enc.state_dict(), f"{folder}/encoder.ckpt")
    >>> other = ConformerEncoder("summarymixing", num_layers=1, d_model=16,
    ...                          nhead=1, d_ffn=32, kernel_size=3)
    >>> load_pretrained(folder, other)
    Traceback (most recent call last):
    ...
    ValueError: ...mixer: checkpoint 'fastformer' vs this model 'summarymixing'...
    """
    encoder_file, normalizer_file, _ = resolve_checkpoint(path)
    if encoder is not None:
        state = encoder_state_dict(path)
        try:
            encoder.load_state_dict(state)
        except ValueError as err:
            raise ValueError(f"Cannot load {encoder_file}: {err}") from None
        except RuntimeError as err:
            raise ValueError(
                f"Cannot load {encoder_file} into this encoder (built with "
                f"{getattr(encoder, 'config', '?')}): {err}"
            ) from None
    if normalizer is not None:
        if normalizer_file is None:
            raise FileNotFoundError(
                f"No normaliser statistics beside {encoder_file} "
                "(normalize.ckpt or normalizer.ckpt): the encoder expects "
                "features normalised with the pretraining statistics."
            )
        load_statistics(normalizer, normalizer_file)
    return encoder, normalizer
