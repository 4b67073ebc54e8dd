"""A SpeechBrain ``Checkpointer`` whose checkpoints appear atomically.

SpeechBrain's ``Checkpointer`` creates ``CKPT+<time>/``, writes its
``CKPT.yaml`` (which is what marks a folder as a checkpoint) and only then the
parameter files. A job killed in between (pre-emption, out of memory, time
limit) leaves a folder that looks complete but lacks files, and the next run
fails while recovering it. ``AtomicCheckpointer`` writes every file into a
hidden ``.partial-CKPT+<time>/`` folder and renames it to ``CKPT+<time>/``
only once all files are on disk: a crash while saving leaves the previous
checkpoint as the one to recover. Leftover partial folders are removed at the
next save. A save that fails (a full disk, a quota or a file-size limit:
``OSError`` from Python's writes or the ``RuntimeError`` of ``torch.save``'s
zip writer; any other error too) removes its partial folder at once; a
failed write stops with one message saying that the previous checkpoints
are intact, how much space is free and needed, and how to resume. Each
recovery logs the checkpoint's path and training step
(``checkpoint_progress``), and refuses a checkpoint that does not fit the
modules (every difference listed) or holds anything but tensors.

``RandomState`` makes the random number generators part of a checkpoint, so
that a resumed run draws the same masks, noise and dropout as an
uninterrupted one; it saves tensors and numbers only and loads with
``weights_only=True`` (``lobes.utils.safe_io``), as every file of a
checkpoint is loaded. ``checkpoint_shape_differences`` compares a
checkpointer's modules with its latest checkpoint without loading it (the
restart check of ``lobes.recipe``).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import datetime
import errno
import logging
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from speechbrain.utils.checkpoints import (
    Checkpoint,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import ddp_barrier, if_main_process
from speechbrain.utils.logger import get_logger

from lobes.utils.safe_io import (
    UnsafeFileError,
    first_line,
    folder_size,
    is_write_failure,
    load_tensors,
    space_advice,
)
from lobes.utils.speechbrain_private import CheckpointerHooks

logger = get_logger(__name__)
PARTIAL_PREFIX = ".partial-"


class AtomicCheckpointer(CheckpointerHooks):
    """``Checkpointer`` that renames a checkpoint into place once complete.

    Same arguments and behaviour as
    ``speechbrain.utils.checkpoints.Checkpointer``.

    Example
    -------
    >>> import tempfile, torch
    >>> model = torch.nn.Linear(2, 2)
    >>> ckpt = AtomicCheckpointer(tempfile.mkdtemp(), {"model": model})
    >>> saved = ckpt.save_checkpoint()
    >>> saved.path.name.startswith("CKPT+"), (saved.path / "model.ckpt").exists()
    (True, True)
    """

    _saving_to = None

    def checkpoint_dirpath(self, name=None):
        """The folder being written while a save runs, else SpeechBrain's."""
        if self._saving_to is not None:
            return self._saving_to
        return super().checkpoint_dirpath(name)

    def save_checkpoint(
        self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO
    ):
        """Saves a checkpoint; it exists under its final name only when complete."""
        final = super().checkpoint_dirpath(name)
        partial = final.with_name(PARTIAL_PREFIX + final.name)
        if if_main_process():
            for stale in self.checkpoints_dir.glob(PARTIAL_PREFIX + "*"):
                logger.warning(f"Removing incomplete checkpoint {stale}")
                shutil.rmtree(stale, ignore_errors=True)
        self._saving_to = partial
        try:
            saved = super().save_checkpoint(
                meta, end_of_epoch, name, verbosity=logging.DEBUG
            )
        except Exception as err:
            shutil.rmtree(partial, ignore_errors=True)  # its space given back
            if not (isinstance(err, OSError) or is_write_failure(err)):
                raise
            raise self._save_failed(final, err) from None
        finally:
            self._saving_to = None
        ddp_barrier()  # every process has written its files
        if if_main_process():
            if final.exists():  # a custom name saved again: replace it
                shutil.rmtree(final)
            os.replace(partial, final)
            kind = "end-of-epoch" if end_of_epoch else "intra-epoch"
            logger.log(verbosity, f"Saved an {kind} checkpoint in {final}")
        # Every process must see the new checkpoint before going on: the
        # deletions that follow (save_and_keep_only) are decided by each
        # process from the folder listing and broadcast by the main one; a
        # process that still saw the old listing would wait forever.
        ddp_barrier()
        if not if_main_process():
            return None
        return Checkpoint(
            final,
            saved.meta,
            {k: final / p.name for k, p in saved.paramfiles.items()},
        )

    def _save_failed(self, final, err):
        """The one error of a save that could not write its files: a full
        disk (``ENOSPC``, a quota, a file-size limit; ``torch.save`` reports
        these as a ``RuntimeError`` of its zip writer) or another ``OSError``
        (permissions)."""
        kept = self.list_checkpoints()
        names = ", ".join(c.path.name for c in kept) or "none yet"
        intact = (
            f"Nothing was replaced or deleted: the checkpoints in "
            f"{self.checkpoints_dir} ({names}) are intact."
        )
        if not is_write_failure(err):
            return OSError(
                err.errno,
                f"Could not save the checkpoint {final} ({err}). {intact} Fix "
                "the folder (permissions, mount) and run the same command "
                "again: it resumes from the latest of them.",
            )
        latest = max(kept, key=lambda c: c.meta.get("unixtime", 0), default=None)
        needed = folder_size(latest.path) if latest is not None else None
        return OSError(
            err.errno if isinstance(err, OSError) and err.errno else errno.ENOSPC,
            f"Could not save the checkpoint {final}: No space left on device "
            f"(or a quota or file-size limit reached: {first_line(err)}). "
            f"{intact} {space_advice(self.checkpoints_dir, needed)} It resumes "
            "from the latest of them.",
        )

    def recover_hooks(self, checkpoint):
        """Loads ``checkpoint``, logging its path and training step.

        SpeechBrain's own loaders (models, optimizers, schedulers) call
        ``torch.load`` without ``weights_only``, which is True by default
        since torch 2.6: a file holding other Python objects is refused by
        torch; here that refusal names the file and what it holds.
        """
        step, unixtime = checkpoint_progress(checkpoint.path)
        kind = "end-of-epoch" if checkpoint.meta.get("end-of-epoch", True) else "intra-epoch"
        when = ""
        if unixtime is not None:
            when = ", saved " + datetime.datetime.fromtimestamp(unixtime).isoformat(" ", "seconds")
        logger.info(
            f"Recovering the {kind} checkpoint {checkpoint.path} (step "
            f"{'unknown' if step is None else step}{when})"
        )
        if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
            logger.warning(
                "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: SpeechBrain's loaders "
                "will unpickle any object of the checkpoint files (and run its "
                "code). Unset it unless the checkpoint is your own."
            )
        # Shapes first: one message listing them all, not torch's first
        # "size mismatch" (the output folder's restart check, before
        # anything is written, catches those that hyperparameters decide).
        try:
            found = checkpoint_shape_differences(self, checkpoint.path, built_later=False)
        except UnsafeFileError as err:
            raise UnsafeFileError(f"Cannot resume from {checkpoint.path}: {err}") from None
        if found:
            raise ValueError(
                f"Cannot resume from {checkpoint.path}: it does not fit the "
                f"modules of this run ({'; '.join(found[1][:8])}"
                + (f"; and {len(found[1]) - 8} more" if len(found[1]) > 8 else "")
                + "). Give this run its own --output_folder, or the "
                "hyperparameters and data of the run that saved it."
            )
        try:
            return super().recover_hooks(checkpoint)
        except pickle.UnpicklingError:
            for name, file in checkpoint.paramfiles.items():
                try:
                    load_tensors(file, what=f"checkpoint file of {name!r}")
                except UnsafeFileError as err:
                    raise UnsafeFileError(f"Cannot resume from {checkpoint.path}: {err}") from None
                except Exception:  # not a torch file (SpeechBrain's YAML ones)
                    continue
            raise


def latest_checkpoint(folder):
    """The latest complete ``CKPT+...`` of a ``save`` folder (highest step
    recorded in it, then save time; never file dates), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    ckpts = [p for p in folder.glob("CKPT+*") if (p / "CKPT.yaml").is_file()]

    def progress(ckpt):
        step, unixtime = checkpoint_progress(ckpt)
        return (-1 if step is None else step,
                float("-inf") if unixtime is None else unixtime, ckpt.name)

    return max(ckpts, key=progress, default=None)


def checkpoint_shape_differences(checkpointer, checkpoint=None, built_later=True):
    """What in the latest checkpoint of ``checkpointer`` (or in
    ``checkpoint``, a folder) does not fit the modules it would load it
    into, read without loading it into them.

    Every recoverable that SpeechBrain loads as a ``state_dict``
    (``torch.nn.Module`` without a custom loader: the encoder and head, the
    quantiser, a probe...) is compared with its ``<name>.ckpt``: parameters
    missing on either side and shapes that differ. With ``built_later``
    (before the recipe has built everything: probes append their heads to
    ``model`` once the data are read), parameters that only the checkpoint
    has are not counted.

    Returns
    -------
    None, or (checkpoint folder, list of ``"<file> <key>: ..."``).

    Example
    -------
    >>> import tempfile
    >>> ckpt = AtomicCheckpointer(tempfile.mkdtemp(), {"head": torch.nn.Linear(4, 8)})
    >>> _ = ckpt.save_checkpoint()
    >>> checkpoint_shape_differences(ckpt) is None
    True
    >>> ckpt.recoverables["head"] = torch.nn.Linear(4, 6)
    >>> checkpoint_shape_differences(ckpt)[1]
    ['head.ckpt weight: [8, 4] there, [6, 4] now', 'head.ckpt bias: [8] there, [6] now']
    """
    from speechbrain.utils.checkpoints import (
        DEFAULT_LOAD_HOOKS,
        get_default_hook,
        torch_recovery,
    )

    latest = Path(checkpoint) if checkpoint is not None else latest_checkpoint(
        checkpointer.checkpoints_dir)
    if latest is None:
        return None
    diffs = []
    for name, obj in checkpointer.recoverables.items():
        if not isinstance(obj, torch.nn.Module) or name in checkpointer.custom_load_hooks:
            continue
        if get_default_hook(obj, DEFAULT_LOAD_HOOKS) is not torch_recovery:
            continue  # its own loader (normaliser, ...)
        file = latest / f"{name}.ckpt"
        if not file.is_file():
            diffs.append(f"{file.name}: missing there")
            continue
        saved = load_tensors(file, what=f"checkpoint file of {name!r}", mmap=True)
        if not isinstance(saved, dict):
            diffs.append(f"{file.name}: not a state dict")
            continue
        ours = obj.state_dict()
        for key, value in ours.items():
            if not torch.is_tensor(value):
                continue
            if key not in saved:
                diffs.append(f"{file.name} {key}: missing there")
            elif torch.is_tensor(saved[key]) and saved[key].shape != value.shape:
                diffs.append(
                    f"{file.name} {key}: {list(saved[key].shape)} there, {list(value.shape)} now"
                )
        if not built_later:
            diffs += [
                f"{file.name} {key}: there, not now" for key, value in saved.items()
                if key not in ours and torch.is_tensor(value)
            ]
    return (latest, diffs) if diffs else None


def checkpoint_progress(folder):
    """The training step and save time recorded *in* a checkpoint folder.

    The step is ``steps`` in its ``CKPT.yaml`` (the BEST-RQ recipe records
    it) or else SpeechBrain's ``optimizer_step`` in ``brain.ckpt``; the time
    is SpeechBrain's ``unixtime`` in ``CKPT.yaml``. File-system dates are
    never used: copying a run folder changes them.

    Arguments
    ---------
    folder : str or Path
        A ``CKPT+...`` folder.

    Returns
    -------
    step : int or None
    unixtime : float or None
        Each None when not recorded.

    Example
    -------
    >>> import tempfile
    >>> from pathlib import Path
    >>> ckpt = Path(tempfile.mkdtemp())
    >>> _ = (ckpt / "CKPT.yaml").write_text("unixtime: 1700000000.5\\n")
    >>> _ = (ckpt / "brain.ckpt").write_text("optimizer_step: 420\\nstep: 3\\n")
    >>> checkpoint_progress(ckpt)
    (420, 1700000000.5)
    """
    def read(name):
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as fin:
                data = yaml.safe_load(fin)
            return data if isinstance(data, dict) else {}
        except (OSError, yaml.YAMLError):
            return {}

    meta = read("CKPT.yaml")
    step, unixtime = meta.get("steps"), meta.get("unixtime")
    if step is None:
        step = read("brain.ckpt").get("optimizer_step")
    return (
        None if step is None else int(step),
        None if unixtime is None else float(unixtime),
    )


@register_checkpoint_hooks
class RandomState:
    """Checkpointable random number generator states (torch, numpy, random).

    BEST-RQ draws masks and noise at every step: with this recoverable in the
    ``Checkpointer``, a resumed run draws the same ones as an uninterrupted
    run would, so resuming gives the same model.

    Example
    -------
    >>> import tempfile, os
    >>> state = RandomState()
    >>> path = os.path.join(tempfile.mkdtemp(), "rng.ckpt")
    >>> state.save(path)
    >>> a = torch.rand(1)
    >>> state.load(path)
    >>> bool(torch.rand(1) == a)
    True
    """

    @mark_as_saver
    def save(self, path):
        """Saves the current states to ``path``: tensors, numbers and
        tuples only (loadable with ``weights_only=True``)."""
        name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()[:5]
        torch.save(
            {
                "torch": torch.get_rng_state(),
                "cuda": (
                    torch.cuda.get_rng_state_all()
                    if torch.cuda.is_available()
                    else []
                ),
                "numpy": {
                    "name": str(name),
                    "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                    "pos": int(pos),
                    "has_gauss": int(has_gauss),
                    "cached_gaussian": float(cached_gaussian),
                },
                "random": random.getstate(),
            },
            path,
        )

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restores the states saved at ``path`` (without running code: a
        file holding anything but tensors and numbers is refused)."""
        del end_of_epoch
        try:
            state = load_tensors(path, what="random state file")
        except UnsafeFileError:
            # Written before this format (numpy's state as an array): numpy
            # arrays of numbers may be built, nothing else.
            state = load_tensors(path, what="random state file", safe_globals=_numpy_array_globals())
        numpy_state = state["numpy"]
        if isinstance(numpy_state, dict):
            numpy_state = (
                numpy_state["name"],
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        elif np.asarray(numpy_state[1]).dtype.kind not in "iu":
            raise UnsafeFileError(f"{path} is not a random state file of this package.")
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(numpy_state)
        random.setstate(_as_tuples(state["random"]))


def _numpy_array_globals():
    """What ``torch.load(weights_only=True)`` needs to build numpy arrays."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _as_tuples(value):
    """``random.setstate`` wants tuples where a load may give lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value
