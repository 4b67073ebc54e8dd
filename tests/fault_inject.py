"""Runs a recipe's ``train.py`` with one injected fault (the slow matrix of
test_fault_matrix.py).

::

    python tests/fault_inject.py <fault> <save folder> train.py hparams/x.yaml ...

The fault strikes once a complete checkpoint exists in ``<save folder>``
(``CKPT+...``), so that there is something to lose:

* ``kill_on_save``: SIGKILL in the middle of writing the next checkpoint
  (as a pre-emption or the out-of-memory killer would);
* ``full_disk_on_save``: the disk fills up during that write: from then on
  the kernel refuses every write beyond a few hundred bytes of a file (a
  file-size limit, ``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored), so that
  ``torch.save`` fails in its zip writer as on a full disk (a real failure,
  no exception is raised by this script);
* ``nan_features``: the next features computed (``Fbank``) hold NaN.

The recipe then runs unchanged (``runpy``, as ``python train.py ...``).
"""

import os
import resource
import runpy
import signal
import sys
from pathlib import Path

FAULTS = ("kill_on_save", "full_disk_on_save", "nan_features")


def has_checkpoint(save_folder):
    """Whether ``save_folder`` holds a complete checkpoint."""
    return any(Path(save_folder).glob("CKPT+*"))


def fill_the_disk():
    """From now on no file of this process grows beyond 256 bytes: writes
    fail as on a full disk (``EFBIG`` instead of ``ENOSPC``)."""
    sys.dont_write_bytecode = True  # no cut .pyc for the modules imported later
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def inject(fault, save_folder):
    """Patches torch / SpeechBrain so that ``fault`` happens (see module doc)."""
    import torch

    if fault in ("kill_on_save", "full_disk_on_save"):
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            path = Path(str(f))
            if ".partial-CKPT+" in str(path) and has_checkpoint(save_folder) and any(
                path.parent.iterdir()
            ):  # mid-way through a checkpoint, after a complete one
                if fault == "kill_on_save":
                    os.kill(os.getpid(), signal.SIGKILL)
                fill_the_disk()
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    elif fault == "nan_features":
        from speechbrain.lobes.features import Fbank

        real_forward = Fbank.forward
        done = []

        def forward(self, wav):
            feats = real_forward(self, wav)
            if not done and has_checkpoint(save_folder):
                done.append(True)
                feats = feats.clone()
                feats[0, feats.shape[1] // 2] = float("nan")
            return feats

        Fbank.forward = forward
    else:
        raise ValueError(f"Unknown fault {fault!r}: one of {FAULTS}")


if __name__ == "__main__":
    fault, save_folder, script, *args = sys.argv[1:]
    inject(fault, save_folder)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
