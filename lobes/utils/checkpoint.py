"""A SpeechBrain ``Checkpointer`` whose checkpoints appear atomically.

SpeechBrain's ``Checkpointer`` creates ``CKPT+<time>/``, writes its
``CKPT.yaml`` (which is what marks a folder as a checkpoint) and only then the
parameter files. A job killed in between (pre-emption, out of memory, time
limit) leaves a folder that looks complete but lacks files, and the next run
fails while recovering it. ``AtomicCheckpointer`` writes every file into a
hidden ``.partial-CKPT+<time>/`` folder and renames it to ``CKPT+<time>/``
only once all files are on disk: a crash while saving leaves the previous
checkpoint as the one to recover. Leftover partial folders are removed at the
next save. A save that fails (a full disk, ``OSError``) removes its partial
folder at once and stops with a message saying that the previous checkpoints
are intact and how to resume. Each recovery logs the checkpoint's path and
training step (``checkpoint_progress``).

``RandomState`` makes the random number generators part of a checkpoint, so
that a resumed run draws the same masks, noise and dropout as an
uninterrupted one.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import datetime
import logging
import os
import random
import shutil

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
        except OSError as err:  # e.g. no space left on device
            shutil.rmtree(partial, ignore_errors=True)
            kept = [c.path.name for c in self.list_checkpoints()]
            raise OSError(
                err.errno,
                f"Could not save the checkpoint {final} ({err}). Nothing was "
                f"replaced or deleted: the checkpoints in {self.checkpoints_dir} "
                f"({', '.join(kept) or 'none yet'}) are intact. Free disk space "
                "(or fix the folder's permissions) and run the same command "
                "again: it resumes from the latest of them.",
            ) from err
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

    def recover_hooks(self, checkpoint):
        """Loads ``checkpoint``, logging its path and training step."""
        step, unixtime = checkpoint_progress(checkpoint.path)
        kind = "end-of-epoch" if checkpoint.meta.get("end-of-epoch", True) else "intra-epoch"
        when = ""
        if unixtime is not None:
            when = ", saved " + datetime.datetime.fromtimestamp(unixtime).isoformat(" ", "seconds")
        logger.info(
            f"Recovering the {kind} checkpoint {checkpoint.path} (step "
            f"{'unknown' if step is None else step}{when})"
        )
        return super().recover_hooks(checkpoint)


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
        """Saves the current states to ``path``."""
        torch.save(
            {
                "torch": torch.get_rng_state(),
                "cuda": (
                    torch.cuda.get_rng_state_all()
                    if torch.cuda.is_available()
                    else []
                ),
                "numpy": np.random.get_state(),
                "random": random.getstate(),
            },
            path,
        )

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restores the states saved at ``path``."""
        del end_of_epoch
        state = torch.load(path, weights_only=False)
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(state["numpy"])
        random.setstate(state["random"])
