"""The encoder's configuration: the definitions in ``hparams/`` and checks.

``hparams/encoder_<mixer>.yaml`` holds one definition per mixer (its
arguments and the ``base``/``large`` sizes of the paper). This module reads
them (:func:`encoder_config`), checks argument names against the classes
that take them (:func:`check_arguments`) and builds an encoder from a mixer
name (:func:`encoder_from_definition`, the recipes' ``encoder:`` entry).
``RUNTIME_SETTINGS`` are the arguments that leave the weights' meaning
unchanged: a checkpoint may be loaded into an encoder that differs in them.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import inspect
from pathlib import Path

import yaml

from lobes.nnet.mixers import MIXERS, check_mixer_name

SIZES = ("base", "large")

RUNTIME_SETTINGS = ("dropout", "layerdrop_prob", "padding_isolation", "init")
RUNTIME_MIXER_SETTINGS = ("backend", "chunk_size")


def _architecture(config):
    """``config`` without the settings that do not change what weights mean."""
    arch = {k: _plain(v) for k, v in config.items() if k not in RUNTIME_SETTINGS}
    if isinstance(arch.get("mixer_kwargs"), dict):
        arch["mixer_kwargs"] = {
            k: v for k, v in arch["mixer_kwargs"].items() if k not in RUNTIME_MIXER_SETTINGS
        }
    return arch


def _plain(value):
    """Tuples to lists, recursively (the form YAML and checkpoints keep)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_arguments(target, kwargs, what):
    """Refuses keys of ``kwargs`` that ``target`` (a class or function) does
    not take, naming the valid ones.

    Example
    -------
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> check_arguments(ConformerEncoder, {"d_model": 8}, "encoder")
    >>> check_arguments(ConformerEncoder, {"d_modle": 8}, "encoder")
    Traceback (most recent call last):
    ...
    ValueError: Unknown encoder argument(s) d_modle. Valid arguments: mixer, num_layers, d_model, ...
    """
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n != "self"]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise ValueError(
            f"Unknown {what} argument(s) {', '.join(unknown)}. Valid "
            f"arguments: {', '.join(valid)}"
        )


def hparams_folder():
    """The folder of the encoder definitions, ``hparams/encoder_<mixer>.yaml``:
    the repository's top-level ``hparams/`` (source checkout or editable
    install) or the copy installed with the package (``lobes/hparams``)."""
    here = Path(__file__).resolve().parent
    for folder in (here.parent / "hparams", here / "hparams"):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"No encoder definitions (hparams/encoder_<mixer>.yaml) beside {here}: "
        "reinstall this package (pip install -e <repository>)."
    )


def encoder_config(mixer, size="base", overrides=None):
    """The full constructor arguments of the encoder of ``mixer``.

    Reads ``hparams/encoder_<mixer>.yaml`` (the one definition of each
    mixer's encoder, shared by pretraining and probing), picks ``size``
    (``base``: 12 layers, ~94M parameters with the BEST-RQ head; ``large``:
    24 layers, ~313M) and applies ``overrides``. Every key is checked:
    a misspelt override is refused with the list of valid keys, for the
    encoder and for ``mixer_kwargs`` (merged key by key) alike.

    Arguments
    ---------
    mixer : str
        A key of ``lobes.nnet.mixers.MIXERS``.
    size : str
        ``"base"`` or ``"large"``.
    overrides : dict, optional
        Constructor arguments to change, e.g. ``{"num_layers": 2}``.

    Returns
    -------
    dict
        Arguments of ``ConformerEncoder`` (``ConformerEncoder.from_config``).

    Example
    -------
    >>> cfg = encoder_config("summarymixing")
    >>> cfg["d_model"], cfg["num_layers"], cfg["nhead"], cfg["layerdrop_prob"]
    (536, 12, 1, 0.05)
    >>> encoder_config("fastformer", "large")["d_model"]
    920
    >>> encoder_config("fastformer", overrides={"num_layerz": 2})
    Traceback (most recent call last):
    ...
    ValueError: Unknown encoder argument(s) num_layerz. Valid arguments: ...
    >>> encoder_config("mamba", overrides={"mixer_kwargs": {"d_stat": 8}})
    Traceback (most recent call last):
    ...
    ValueError: Unknown mamba mixer argument(s) d_stat. Valid arguments: ...
    """
    from lobes.nnet.encoder import ConformerEncoder  # imports this module

    check_mixer_name(mixer)
    if size not in SIZES:
        raise ValueError(f"Encoder size {size!r}: use one of {', '.join(SIZES)}")
    definition = MIXERS[mixer].definition
    path = Path(definition) if definition else hparams_folder() / f"encoder_{mixer}.yaml"
    if not path.is_file():
        have = sorted(p.stem[len("encoder_"):] for p in path.parent.glob("encoder_*.yaml"))
        raise ValueError(
            f"Mixer {mixer!r} has no encoder definition ({path}); mixers with "
            f"one: {', '.join(have)}."
        )
    with open(path, encoding="utf-8") as fin:
        spec = yaml.safe_load(fin)
    sizes = spec.pop("sizes")
    config = {**spec, **sizes[size]}
    overrides = dict(overrides or {})
    check_arguments(ConformerEncoder, overrides, "encoder")
    mixer_over = overrides.pop("mixer_kwargs", None) or {}
    if overrides.get("mixer", mixer) != mixer:
        raise ValueError(
            f"encoder overrides set mixer={overrides['mixer']!r} for the "
            f"{mixer!r} definition: set the `mixer` hyperparameter instead."
        )
    config.update(overrides)
    mixer_kwargs = {**(config.get("mixer_kwargs") or {}), **mixer_over}
    check_arguments(MIXERS[mixer].cls, mixer_kwargs, f"{mixer} mixer")
    config["mixer_kwargs"] = mixer_kwargs
    check_arguments(ConformerEncoder, config, f"encoder ({path})")
    return _plain(config)


def encoder_from_definition(mixer, size="base", overrides=None):
    """``ConformerEncoder.from_config(encoder_config(mixer, size, overrides))``:
    what the recipes' ``encoder:`` entry calls.

    Example
    -------
    >>> enc = encoder_from_definition("hypermixing", overrides={"num_layers": 1, "d_model": 32,
    ...                                               "d_ffn": 64, "nhead": 2})
    >>> enc.config["mixer"], enc.config["positional_encoding"]
    ('hypermixing', 'none')
    """
    from lobes.nnet.encoder import ConformerEncoder

    return ConformerEncoder.from_config(encoder_config(mixer, size, overrides))
