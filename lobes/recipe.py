"""Loading a recipe's hyperparameters, with the checks SpeechBrain lacks.

Every ``train.py`` of this repository starts like a SpeechBrain recipe, with
one call in place of ``load_hyperpyyaml``::

    hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:])
    hparams, overrides = load_hparams(hparams_file, overrides, REQUIRED_KEYS)
    lock_output_folder(hparams["output_folder"])
    sb.create_experiment_directory(hparams["output_folder"], hparams_file, overrides)
    record_encoder(hparams)

``load_hparams`` refuses, with a message that says what to do:

* a YAML of another recipe (keys this recipe needs are missing);
* a misspelt key inside a dict-valued override (``--dynamic_batch_sampler=
  "{max_batch_lenght: 100}"`` would otherwise replace the whole dict); the
  encoder's own overrides are checked against its constructor by
  ``lobes.config.encoder_config``;
* a numeric hyperparameter of the wrong type or range (learning rates,
  epochs, batch sizes and lengths, probabilities...: one checker driven by
  key names, ``lobes.utils.hparam_values``), from the YAML or the command
  line, before anything is built;
* a restart into an output folder whose run used another encoder, or whose
  checkpoints do not fit the modules built now (head, quantiser and
  codebook, probe...), before anything in that folder is touched.

Then ``lock_output_folder(hparams["output_folder"])``, before
``create_experiment_directory``, makes the run the only one in its folder
(``lobes.utils.run_lock``).

It returns the overrides to save with the run, completed with every
constructor argument of the encoder that is built (``encoder_overrides``), so
that the run's ``hyperparams.yaml`` rebuilds exactly that encoder;
``record_encoder`` writes the same description to ``<output_folder>/encoder.yaml``.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import dataclasses
import io
import os
from pathlib import Path

import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from lobes.utils.hparam_values import check_run_options, check_values
from lobes.utils.run_lock import RunLockedError, lock_output_folder  # noqa: F401 (recipes)

logger = get_logger(__name__)
ENCODER_RECORD = "encoder.yaml"


class _TagIgnoringLoader(yaml.SafeLoader):
    """Reads HyperPyYAML as plain YAML: tagged nodes become their content."""


def _construct_tagged(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TagIgnoringLoader.add_multi_constructor("!", _construct_tagged)


def _plain_yaml(text):
    return yaml.load(text, Loader=_TagIgnoringLoader) or {}


def check_overrides(yaml_text, overrides, where="the YAML"):
    """Refuses override keys that the YAML does not have, inside dicts.

    Arguments
    ---------
    yaml_text : str
        The recipe YAML.
    overrides : dict
        The command-line overrides.
    where : str
        The YAML's name, for the message.

    Example
    -------
    >>> text = "opts:\\n    batch_size: 8\\n    shuffle: True\\n"
    >>> check_overrides(text, {"opts": {"batch_size": 4}})
    >>> check_overrides(text, {"opts": {"batch_sise": 4}})
    Traceback (most recent call last):
    ...
    ValueError: Override --opts={batch_sise: ...}: the YAML's `opts` has no key 'batch_sise'. Its keys: batch_size, shuffle
    """
    doc = _plain_yaml(yaml_text)
    for key, value in overrides.items():
        original = doc.get(key)
        if not (isinstance(value, dict) and isinstance(original, dict) and original):
            continue
        for sub in value:
            if sub not in original:
                raise ValueError(
                    f"Override --{key}={{{sub}: ...}}: {where}'s `{key}` has no "
                    f"key {sub!r}. Its keys: {', '.join(map(str, original))}"
                )


def load_hparams(hparams_file, overrides="", required=()):
    """``load_hyperpyyaml`` of a recipe YAML with the checks of this module.

    Arguments
    ---------
    hparams_file : str or Path
        The recipe YAML.
    overrides : str or dict
        As returned by ``speechbrain.parse_arguments``.
    required : sequence of str
        Keys that any YAML of this recipe defines.

    Returns
    -------
    hparams : dict
        The loaded hyperparameters.
    overrides : dict
        To save with the run (``create_experiment_directory``): the given ones,
        plus ``encoder_overrides`` with every constructor argument of the
        encoder when the YAML builds it by name (pretraining).
    """
    hparams_file = Path(hparams_file)
    text = hparams_file.read_text(encoding="utf-8")
    if isinstance(overrides, str):
        overrides = yaml.safe_load(overrides) or {}
    overrides = dict(overrides or {})
    doc = _plain_yaml(text)
    missing = [k for k in required if k not in doc]
    if missing:
        raise ValueError(
            f"{hparams_file} is not a YAML of this recipe: it lacks "
            f"{', '.join(missing)}. Use one of the YAMLs in this recipe's "
            "hparams/ folder."
        )
    unknown = [k for k in overrides if k not in doc]
    if unknown:
        raise ValueError(
            f"Override(s) --{', --'.join(unknown)}: {hparams_file} has no such "
            "key. Check the spelling against the YAML."
        )
    check_overrides(text, overrides, str(hparams_file))
    check_values(text, overrides, str(hparams_file))  # before anything is built
    stream = io.StringIO(text)
    stream.name = str(hparams_file)
    hparams = load_hyperpyyaml(stream, overrides)
    encoder = hparams.get("encoder")
    config = getattr(encoder, "config", None)
    if config is not None and "encoder_overrides" in doc:
        overrides["encoder_overrides"] = {
            k: v for k, v in config.items() if k != "mixer"
        }
    if "output_folder" in hparams:
        check_restart(hparams["output_folder"], config, hparams)
    return hparams, overrides


def check_restart(output_folder, config, hparams=None):
    """Refuses to reuse an output folder whose run had another encoder, or
    whose checkpoints this run could not load.

    ``config`` (the encoder's arguments, or None) is compared with the
    folder's ``encoder.yaml``; with ``hparams``, every module of the
    ``checkpointer`` (the encoder, the head, the quantiser and its codebook,
    a probe...) is compared, parameter by parameter, with its file in the
    folder's latest checkpoint: a shape or a parameter that differs (another
    ``cb_vocab``, ``cb_dim``, head or probe size) is refused, with the
    hyperparameters that differ from the folder's ``hyperparams.yaml``.

    Nothing is written: the check happens before SpeechBrain saves the new
    ``hyperparams.yaml``, so the folder still describes its own run.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ENCODER_RECORD).write_text("mixer: mhsa\\nd_model: 576\\n")
    >>> check_restart(folder, {"mixer": "mhsa", "d_model": 576})
    >>> check_restart(folder, {"mixer": "mhsa", "d_model": 848})
    Traceback (most recent call last):
    ...
    ValueError: ...d_model: 576 there, 848 now...
    """
    record = Path(output_folder) / ENCODER_RECORD
    if config is not None and record.is_file():
        before = yaml.safe_load(record.read_text(encoding="utf-8")) or {}
        diffs = [
            f"{k}: {before.get(k)!r} there, {v!r} now"
            for k, v in config.items()
            if k in before and before[k] != v
        ]
        if diffs:
            raise ValueError(
                f"{output_folder} holds a run of another encoder ({'; '.join(diffs)}). "
                "Give this run its own --output_folder (nothing was changed there)."
            )
    checkpointer = (hparams or {}).get("checkpointer")
    if checkpointer is None:
        return
    from lobes.utils.checkpoint import checkpoint_shape_differences

    found = checkpoint_shape_differences(checkpointer)
    if found:
        ckpt, diffs = found
        changed = _changed_hparams(Path(output_folder) / "hyperparams.yaml", hparams)
        raise ValueError(
            f"{output_folder} holds checkpoints this run cannot resume: "
            f"{ckpt} differs from the modules built now ({'; '.join(diffs[:6])}"
            + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
            + ")"
            + (f", built from other hyperparameters ({'; '.join(changed[:8])})" if changed else "")
            + ". Give this run its own --output_folder, or the same "
            "hyperparameters as that run (nothing was changed there)."
        )


def _changed_hparams(saved_yaml, hparams):
    """``key: <there> there, <now> now`` for the plain top-level values of
    the run's saved ``hyperparams.yaml`` that differ from ``hparams``."""
    try:
        before = _plain_yaml(saved_yaml.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    plain = (int, float, str, bool, type(None))
    return [
        f"{k}: {v!r} there, {hparams[k]!r} now"
        for k, v in before.items()
        if isinstance(v, plain) and k in hparams and isinstance(hparams[k], plain)
        and not k.endswith(("_folder", "_csv", "_log", "_file"))
        and v != hparams[k]
    ]


def record_encoder(hparams):
    """Writes ``<output_folder>/encoder.yaml``: every constructor argument of
    ``hparams["encoder"]`` (main process only)."""
    encoder = hparams.get("encoder")
    if getattr(encoder, "config", None) is None or not if_main_process():
        return
    path = Path(hparams["output_folder"]) / ENCODER_RECORD
    path.write_text(
        "# The encoder of this run: lobes.nnet.encoder.ConformerEncoder.from_config(<this>)\n"
        + yaml.safe_dump(encoder.config, sort_keys=False),
        encoding="utf-8",
    )


CPU_DDP = "--distributed_backend=gloo --device=cpu"


def parse_arguments(argv):
    """``speechbrain.parse_arguments`` for every recipe: the same outputs,
    with run options that work under ``torchrun`` on any machine.

    SpeechBrain defaults to the NCCL backend, which needs one GPU per
    process: ``torchrun --nproc_per_node=2 train.py ...`` on a CPU machine
    then dies with "Not enough GPUs available!". Here, under ``torchrun``
    without GPUs, the default becomes gloo on CPU (as if
    ``--distributed_backend=gloo --device=cpu`` were given); an explicit
    ``--distributed_backend=nccl`` or ``--device=cuda...`` without GPUs, or
    more processes than GPUs, stop with what to run instead.

    Arguments
    ---------
    argv : list of str
        The command line, ``sys.argv[1:]``.

    Returns
    -------
    hparams_file, run_opts, overrides
        As ``speechbrain.parse_arguments``.

    Example
    -------
    >>> _, run_opts, overrides = parse_arguments(["x.yaml", "--lr=0.1"])
    >>> run_opts["distributed_backend"], overrides  # not under torchrun
    ('nccl', 'lr: 0.1')
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    run_opts = distributed_run_opts(typed_run_opts(run_opts))
    check_run_options(run_opts)  # --grad_accumulation_factor=0... refused now
    return hparams_file, run_opts, overrides


def _replace_run_opts(run_opts, **changes):
    """``run_opts`` with ``changes``: a ``RunOptions`` (SpeechBrain 1.1) or a
    dict (earlier SpeechBrain)."""
    if isinstance(run_opts, dict):
        return {**run_opts, **changes}
    return dataclasses.replace(run_opts, **changes)


def typed_run_opts(run_opts):
    """``run_opts`` with ``--optimizer_step_limit`` as an int.

    SpeechBrain 1.1 parses it as a string (its default, None, gives the
    argument no type), and the training loop then fails with
    ``TypeError: '>=' not supported between 'int' and 'str'``.

    Example
    -------
    >>> opts = typed_run_opts(sb.parse_arguments(["x.yaml", "--optimizer_step_limit=1"])[1])
    >>> opts["optimizer_step_limit"]
    1
    >>> typed_run_opts({"optimizer_step_limit": "ten"})
    Traceback (most recent call last):
    ...
    ValueError: --optimizer_step_limit=ten: give a whole number of optimizer steps.
    """
    limit = run_opts.get("optimizer_step_limit")
    if isinstance(limit, str):
        try:
            value = int(limit)
        except ValueError:
            raise ValueError(
                f"--optimizer_step_limit={limit}: give a whole number of optimizer steps."
            ) from None
        run_opts = _replace_run_opts(run_opts, optimizer_step_limit=value)
    return run_opts


def distributed_run_opts(run_opts, environ=None, n_gpus=None):
    """The DDP part of ``parse_arguments``: ``run_opts`` (a SpeechBrain
    ``RunOptions``) for a ``torchrun`` process, given the environment and the
    number of visible GPUs (defaults: ``os.environ``, CUDA's count).

    Example
    -------
    >>> run_opts = sb.parse_arguments(["x.yaml"])[1]
    >>> torchrun = {"RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    >>> opts = distributed_run_opts(run_opts, torchrun, n_gpus=0)
    >>> opts["distributed_backend"], opts["device"]
    ('gloo', 'cpu')
    >>> distributed_run_opts(run_opts, torchrun, n_gpus=1)
    Traceback (most recent call last):
    ...
    ValueError: torchrun started 2 processes on this machine, which has 1 GPU...
    """
    environ = os.environ if environ is None else environ
    if environ.get("RANK") is None or environ.get("LOCAL_RANK") is None:
        return run_opts  # not started by torchrun
    n_gpus = torch.cuda.device_count() if n_gpus is None else n_gpus
    given = run_opts.overridden_args
    backend, device = run_opts["distributed_backend"], run_opts["device"]
    if n_gpus == 0 and str(device or "").startswith("cuda"):
        raise ValueError(
            f"--device={device} but this machine has no GPU. For DDP on CPU "
            f"run: torchrun --nproc_per_node=N train.py ... {CPU_DDP}"
        )
    if backend != "nccl":
        return run_opts
    if n_gpus == 0:
        if "distributed_backend" in given:
            raise ValueError(
                "--distributed_backend=nccl needs one GPU per process and this "
                "machine has none. For DDP on CPU run: torchrun "
                f"--nproc_per_node=N train.py ... {CPU_DDP}"
            )
        if environ.get("RANK") == "0":
            logger.warning(
                f"torchrun on a machine without GPU: DDP on CPU ({CPU_DDP})."
            )
        return _replace_run_opts(
            run_opts,
            distributed_backend="gloo",
            device="cpu",
            overridden_args=set(given) | {"distributed_backend", "device"},
        )
    local_rank = int(environ["LOCAL_RANK"])
    if local_rank >= n_gpus:
        procs = environ.get("LOCAL_WORLD_SIZE", local_rank + 1)
        raise ValueError(
            f"torchrun started {procs} processes on this machine, which has "
            f"{n_gpus} GPU{'s' if n_gpus > 1 else ''}: NCCL needs one GPU per "
            f"process. Use --nproc_per_node={n_gpus}, or run the processes on "
            f"CPU with {CPU_DDP}."
        )
    return run_opts


def export_folders(brain, hparams):
    """``(checkpoints, export folder)`` of a pretraining run that has ended.

    Normally ``hparams["save_folder"]`` and ``hparams["export_folder"]``.
    Under ``--debug`` (without ``--debug_persistently``) SpeechBrain writes the
    run's checkpoints to a temporary folder, so the debug model is exported
    from there into ``<that folder>/encoder``: the export runs as in a real
    run, and the real export folder (perhaps a real run's) is left alone.

    Example
    -------
    >>> import tempfile, types
    >>> tmp = Path(tempfile.mkdtemp())
    >>> hp = {"save_folder": str(tmp / "save"), "export_folder": str(tmp / "encoder")}
    >>> brain = types.SimpleNamespace(checkpointer=types.SimpleNamespace(checkpoints_dir=tmp / "save"))
    >>> export_folders(brain, hp) == (tmp / "save", tmp / "encoder")
    True
    >>> brain.checkpointer.checkpoints_dir = tmp / "debug"
    >>> export_folders(brain, hp) == (tmp / "debug", tmp / "debug" / "encoder")
    True
    """
    save_folder, export_folder = Path(hparams["save_folder"]), Path(hparams["export_folder"])
    checkpointer = getattr(brain, "checkpointer", None)
    used = Path(getattr(checkpointer, "checkpoints_dir", save_folder))
    if used.absolute() != save_folder.absolute():
        logger.info(
            f"Debug run: its checkpoints are in {used} (SpeechBrain's temporary "
            f"folder, not {save_folder}); exporting its encoder to {used / 'encoder'}."
        )
        return used, used / "encoder"
    return save_folder, export_folder
