"""Loading a pretrained BEST-RQ encoder (and its feature normaliser).

One function for every consumer of a pretraining run: the MP3S probing
recipes, the export step and the inference class. It accepts the three forms
a user has at hand:

* a pretraining checkpoint, ``<output_folder>/save/CKPT+...``: ``model.ckpt``
  holds the ``ModuleList [encoder, head]`` of the recipe (encoder keys start
  with ``0.``), ``normalize.ckpt`` the global feature statistics;
* a pretraining ``save`` folder: its most recent ``CKPT+...`` is used (SSL
  pretraining keeps the latest model, as the paper's probes do);
* an exported model folder (``lobes.export``): ``encoder.ckpt`` and
  ``normalizer.ckpt``.

The encoder's state dict carries its architecture (every constructor
argument), so ``build_encoder`` rebuilds the encoder from the checkpoint
alone, and loading a checkpoint into an encoder of another mixer or size fails
with a message that says which setting differs, never silently.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os
from pathlib import Path

import torch

ENCODER_PREFIX = "0."  # the encoder in the recipe's `model: [encoder, head]`


def resolve_checkpoint(path):
    """Finds the files of a pretrained encoder under ``path``.

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

    Example
    -------
    >>> resolve_checkpoint("/nonexistent")
    Traceback (most recent call last):
    ...
    FileNotFoundError: Pretrained encoder folder /nonexistent does not exist: ...
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
        return path / "encoder.ckpt", norm if norm.is_file() else None, ""
    if (path / "model.ckpt").is_file():
        norm = path / "normalize.ckpt"
        return path / "model.ckpt", norm if norm.is_file() else None, ENCODER_PREFIX
    ckpts = sorted(
        (p for p in path.glob("CKPT+*") if (p / "model.ckpt").is_file()),
        key=os.path.getmtime,
    )
    if not ckpts:
        raise FileNotFoundError(
            f"No pretrained encoder in {path}: expected encoder.ckpt (an "
            "exported model), model.ckpt (a CKPT+... folder of the BEST-RQ "
            "recipe) or CKPT+... folders (its save folder)."
        )
    return resolve_checkpoint(ckpts[-1])


def encoder_state_dict(path):
    """The encoder's state dict (with its architecture record) from ``path``
    (any form accepted by ``resolve_checkpoint``)."""
    encoder_file, _, prefix = resolve_checkpoint(path)
    state = torch.load(encoder_file, map_location="cpu", weights_only=False)
    state = {
        k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)
    }
    if not state:
        raise ValueError(
            f"{encoder_file} holds no encoder parameters (no key starts with "
            f"{prefix!r}): is it a checkpoint of the BEST-RQ recipe?"
        )
    return state


def build_encoder(source, mixer=None):
    """The encoder a checkpoint was trained with (random weights; load them
    with ``load_pretrained``).

    Arguments
    ---------
    source : str or Path
        Any form accepted by ``resolve_checkpoint``.
    mixer : str, optional
        If given, the mixer the caller expects: a checkpoint of another mixer
        is refused, naming both.

    Returns
    -------
    lobes.encoder.ConformerEncoder

    Example
    -------
    >>> import tempfile
    >>> from lobes.encoder import ConformerEncoder
    >>> enc = ConformerEncoder("fastformer", num_layers=1, d_model=16,
    ...                        nhead=2, d_ffn=32, kernel_size=3)
    >>> folder = tempfile.mkdtemp()
    >>> torch.save(enc.state_dict(), f"{folder}/encoder.ckpt")
    >>> build_encoder(folder).config == enc.config
    True
    >>> build_encoder(folder, mixer="mamba")
    Traceback (most recent call last):
    ...
    ValueError: ...holds a 'fastformer' encoder, but mixer='mamba' was asked for...
    """
    from lobes.encoder import ConformerEncoder

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
    encoder : lobes.encoder.ConformerEncoder or None
        Built from the same ``hparams/encoder_<mixer>.yaml`` and sizes as the
        pretraining; a mismatch raises ``ValueError`` naming the difference.
        None loads the feature statistics only (the random-initialisation
        and fbank baselines of the probes).
    normalizer : speechbrain.processing.features.InputNormalization, optional
        Receives the pretraining's global feature statistics.

    Returns
    -------
    encoder, normalizer
        The same objects, loaded.

    Example
    -------
    >>> import tempfile
    >>> from lobes.encoder import ConformerEncoder
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
        normalizer._load(normalizer_file)
    return encoder, normalizer
