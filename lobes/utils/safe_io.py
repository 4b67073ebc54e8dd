"""Reading files from strangers without running their code, and writing
files so that a full disk leaves nothing half-written.

Reading. Every ``.ckpt`` / ``.pt`` file this package reads (checkpoints,
exported encoders, feature statistics, random states, layer weights) goes
through :func:`load_tensors`: ``torch.load(..., weights_only=True)``, which
builds tensors, numbers, strings, lists, tuples and dicts only. A pickle
that would call anything else (a ``__reduce__`` running a shell command,
say) is refused with :class:`UnsafeFileError`, naming the file and what it
holds; nothing in it runs. A damaged file is refused the same way, with the
reason.

Writing. :func:`is_write_failure` recognises a full disk (or a file-size or
quota limit) in the forms it really takes: ``OSError`` ``ENOSPC``,
``EFBIG``, ``EDQUOT`` from Python's own writes, and the ``RuntimeError`` of
``torch.save`` (``PytorchStreamWriter failed writing file ...`` or
``unexpected pos ...`` from its zip writer, which carries no errno).
:func:`disk_full_error` turns it into one message: the folder, how much is
free there, and what to do. :func:`atomic_folder` writes a set of files into
a hidden sibling folder and moves them into place only once all are written;
on any failure the hidden folder is removed, so no partial output is left.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import contextlib
import errno
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch

PARTIAL_PREFIX = ".partial-"
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
# torch.save's zip writer (caffe2 inline_container.cc) raises RuntimeError
# without errno when a write fails: on a full disk "PytorchStreamWriter
# failed writing file ...: file write failed", at a file-size limit
# "unexpected pos N vs M".
TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")

_BOILERPLATE = (
    "Weights only load failed",
    "Check the documentation",
    "Please file an issue",
    "WeightsUnpickler error",
    "In PyTorch 2.6",
)


class UnsafeFileError(ValueError):
    """A file that cannot be loaded without running code, or not at all."""


def load_tensors(path, map_location="cpu", what="file", safe_globals=(), mmap=False):
    """``torch.load(path, weights_only=True)``, with one clear error.

    Arguments
    ---------
    path : str or Path
        The file.
    map_location : str or torch.device
        As ``torch.load``.
    what : str
        What the file is, for the message (``"checkpoint"``...).
    safe_globals : sequence
        Extra classes or functions this one load may build (e.g. numpy's
        array reconstruction for random states saved by older versions).
    mmap : bool
        Map the tensors' storage instead of reading it (to look at shapes
        only); files of the old, non-zip format are read.

    Returns
    -------
    The loaded object: tensors, numbers, strings, lists, tuples, dicts.

    Raises
    ------
    FileNotFoundError
        No such file.
    UnsafeFileError
        The file holds Python objects other than those (it could run code:
        refused, nothing ran), or it is not a complete PyTorch file.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "ok.ckpt")
    >>> torch.save({"w": torch.ones(2), "step": 3}, path)
    >>> load_tensors(path)["step"]
    3
    >>> class Payload:
    ...     def __reduce__(self):
    ...         return (os.system, ("echo ran",))
    >>> torch.save({"w": Payload()}, path)
    >>> try:
    ...     load_tensors(path, what="checkpoint")
    ... except UnsafeFileError as err:
    ...     print(err)
    Refusing to load the checkpoint .../ok.ckpt: it holds Python objects (posix.system) ...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The {what} {path} does not exist.")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            if mmap and _is_zip(path):
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickling_reason(path, err)
        raise UnsafeFileError(
            f"Refusing to load the {what} {path}: it holds Python objects "
            f"({reason}) that loading would have to build by running code, "
            "and only tensors, numbers, strings, lists and dicts are loaded "
            "(torch.load weights_only=True); nothing in it was run. If you "
            "made it yourself, save its state_dict (tensors) instead; if it "
            "comes from someone else, do not load it otherwise."
        ) from None
    except (RuntimeError, EOFError, IndexError, KeyError, ValueError, OSError) as err:
        if isinstance(err, OSError) and not isinstance(err, EOFError) and err.errno is not None:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(
            f"Cannot read the {what} {path}: it is not a complete PyTorch file "
            f"({type(err).__name__}: {first}). Was it cut short (a full disk, "
            "a killed copy)? Copy or write it again."
        ) from None


def _is_zip(path):
    try:
        with open(path, "rb") as fin:
            return fin.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _unpickling_reason(path, err):
    """The globals of ``path`` that weights_only refuses, else torch's reason."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (legacy pickle) or damaged
        unsafe = []
    if unsafe:
        return ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
    lines = [
        line.strip() for line in str(err).splitlines()
        if line.strip() and not line.strip().startswith(_BOILERPLATE)
    ]
    return lines[0] if lines else "unsupported pickle content"


def is_write_failure(err):
    """Whether ``err`` is a write that failed for lack of space (a full
    disk, a quota or a file-size limit), in any form it takes.

    Example
    -------
    >>> is_write_failure(OSError(errno.ENOSPC, "No space left on device"))
    True
    >>> is_write_failure(RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 704 vs 598"))
    True
    >>> is_write_failure(RuntimeError("CUDA out of memory"))
    False
    """
    if isinstance(err, OSError):
        return err.errno in DISK_FULL_ERRNOS
    if isinstance(err, RuntimeError):
        return any(marker in str(err) for marker in TORCH_WRITE_FAILURES)
    return False


def human_size(n):
    """``1536`` -> ``'1.5 KB'``."""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def free_space(folder):
    """Free bytes on the file system of ``folder`` (or its nearest existing
    parent), or None."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def folder_size(path):
    """Total size of the files under ``path`` (0 if none)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def disk_full_error(folder, what, err, needed=None, kept=None):
    """The one error of a write that failed for lack of space.

    Arguments
    ---------
    folder : str or Path
        Where it was written.
    what : str
        What was being written ("the checkpoint CKPT+...", "the model folder").
    err : Exception
        The original failure.
    needed : int, optional
        About how many bytes the write needs.
    kept : str, optional
        What is intact (said in the message).

    Returns
    -------
    OSError
        With errno ``ENOSPC`` (or the original one) and the message.
    """
    code = err.errno if isinstance(err, OSError) and err.errno else errno.ENOSPC
    folder = Path(folder).absolute()
    return OSError(
        code,
        f"Could not write {what} in {folder}: No space left on device (or a "
        f"quota or file-size limit reached: {first_line(err)}). Nothing "
        f"half-written was left. {kept + ' ' if kept else ''}"
        + space_advice(folder, needed),
    )


def first_line(err):
    """The first line of an exception's message (torch's are long)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def space_advice(folder, needed=None):
    """How much is free where ``folder`` is, and what to do."""
    free = free_space(folder)
    space = f"{human_size(free)} free there" if free is not None else "Free space unknown"
    if free is not None:
        space = space[0].upper() + space[1:]
    if needed:
        space += f", about {human_size(needed)} needed"
    return (
        f"{space}: free space on that disk (old runs, checkpoints, exported "
        "or extracted files) or choose another folder, then run the same "
        "command again."
    )


@contextlib.contextmanager
def atomic_folder(final, what=None, needed=None):
    """Yields a hidden temporary folder beside ``final``; when the block
    ends without error its files are moved into ``final`` (created if
    needed; files of the same name replaced, others kept). On any error the
    temporary folder is removed, and a full disk becomes one clear
    ``OSError`` (:func:`disk_full_error`).

    Example
    -------
    >>> out = Path(tempfile.mkdtemp()) / "model"
    >>> with atomic_folder(out) as tmp:
    ...     _ = (tmp / "a.txt").write_text("a")
    >>> sorted(p.name for p in out.iterdir()), sorted(p.name for p in out.parent.iterdir())
    (['a.txt'], ['model'])
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{final.name}-", dir=final.parent))
    except OSError as err:
        if is_write_failure(err):
            raise disk_full_error(final.parent, what or str(final), err, needed) from None
        raise
    try:
        yield tmp
        final.mkdir(exist_ok=True)
        for item in sorted(tmp.iterdir()):
            target = final / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and is_write_failure(err):
            raise disk_full_error(final.parent, what or str(final), err, needed) from None
        raise
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final, mode="w", what=None, **open_kwargs):
    """Opens a hidden temporary file beside ``final`` and renames it to
    ``final`` once closed without error; on any error it is removed (a full
    disk becomes :func:`disk_full_error`), and ``final`` is untouched.

    Example
    -------
    >>> path = Path(tempfile.mkdtemp()) / "train.csv"
    >>> with atomic_file(path, newline="") as f:
    ...     _ = f.write("ID,wav\\n")
    >>> path.read_text()
    'ID,wav\\n'
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}{final.name}-", dir=final.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **open_kwargs) as fout:
            yield fout
        os.replace(tmp, final)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, Exception) and is_write_failure(err):
            raise disk_full_error(final.parent, what or str(final), err) from None
        raise


def write_text_atomic(path, text, what=None):
    """``Path(path).write_text(text)``, whole or not at all (a full disk is
    :func:`disk_full_error`)."""
    with atomic_file(path, what=what) as fout:
        fout.write(text)


def save_atomic(obj, path, what=None):
    """``torch.save(obj, path)`` through a temporary file (:func:`atomic_file`):
    ``path`` is whole or untouched; a full disk is :func:`disk_full_error`."""
    with atomic_file(path, mode="wb", what=what) as fout:
        torch.save(obj, fout)
