"""One run per output folder.

Two runs in one output folder delete each other's checkpoints and write
every epoch twice in its logs. Each recipe therefore takes the folder's
lock (``<output_folder>/run.lock``) before it writes anything there, and
holds it until it exits; a second process is refused at once, with the PID,
host and start time of the run that holds it.

The lock is an ``flock`` on that file (the kernel drops it when the process
dies, however it dies) and the file says who holds it (JSON: PID, host,
start time, command). A run killed with SIGKILL, or a crashed machine,
leaves the file but not the ``flock``: the next run recognises the lock as
stale, says so in its log and takes it. Where the file system has no
``flock`` (some network file systems), the PID decides on the same host: a
lock whose process is no longer alive there (or whose PID now belongs to a
process started later) is stale. Under ``torchrun`` only the main process
(rank 0) takes the lock: one per run, not per process.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import atexit
import datetime
import errno
import json
import os
import socket
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: the PID check alone
    fcntl = None

from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)
LOCK_NAME = "run.lock"
_held = {}  # resolved folder -> (fd, inode) held by this process


class RunLockedError(RuntimeError):
    """The output folder is used by another run."""


def _process_start(pid):
    """Start time of process ``pid`` (clock ticks since boot), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fin:
            fields = fin.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid):
    """Whether process ``pid`` exists on this machine."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return False
    return True


def _read(path):
    try:
        with open(path, encoding="utf-8") as fin:
            data = json.load(fin)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder):
    when = holder.get("started")
    return (
        f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        + (f", started {when}" if when else "")
        + (f": {holder['command']}" if holder.get("command") else "")
    )


def _holder_alive_here(holder):
    """The holder is a live process of this host (the same one as recorded)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid) or pid == os.getpid():
        return False
    recorded, now = holder.get("proc_start"), _process_start(pid)
    return recorded is None or now is None or recorded == now


def lock_output_folder(folder, main_process=None):
    """Takes the lock of the output folder ``folder`` for this process's
    lifetime (see the module doc), creating the folder if needed.

    Arguments
    ---------
    folder : str or Path
        The run's output folder.
    main_process : bool, optional
        Whether this process takes it (default: SpeechBrain's
        ``if_main_process()``: rank 0 under ``torchrun``, else True).

    Returns
    -------
    Path or None
        The lock file, or None when another rank of this run holds it.

    Raises
    ------
    RunLockedError
        Another live run holds the folder: its PID, host and start time.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> lock_output_folder(folder).name
    'run.lock'
    >>> lock_output_folder(folder).name  # the same process: already held
    'run.lock'
    >>> release_output_folder(folder)
    """
    if main_process is None:
        from speechbrain.utils.distributed import if_main_process

        main_process = if_main_process()
    if not main_process:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    path = folder / LOCK_NAME
    if key in _held:
        return path
    for _ in range(5):  # the file may be removed by its holder meanwhile
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        flocked = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    holder = _read(path)
                    raise RunLockedError(_busy_message(folder, path, holder)) from None
                # no flock on this file system: the PID decides
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # removed and re-created by another run: try again
            os.close(fd)
            continue
        holder = _read(path)
        if holder and _holder_alive_here(holder):
            os.close(fd)
            raise RunLockedError(_busy_message(folder, path, holder))
        if holder:
            why = (
                "its process is no longer running on this host"
                if holder.get("host") == socket.gethostname()
                else "no process holds it any more"
            )
            logger.warning(
                f"Stale lock of {folder} ({_describe(holder)}): {why} (a run "
                "killed or crashed); taken over by this run."
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(" ", "seconds"),
            "proc_start": _process_start(os.getpid()),
            "command": " ".join(sys.argv)[:500],
            "flock": flocked,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
        _held[key] = (fd, os.fstat(fd).st_ino, path)
        return path
    raise RunLockedError(f"Could not take the lock {path}: it keeps changing (another run starting?).")


def _busy_message(folder, path, holder):
    return (
        f"{folder} is in use by another run ({_describe(holder) if holder else 'unknown holder'}). "
        "Two runs in one output folder would delete each other's checkpoints: "
        "wait for it to end, stop it, or give this run its own --output_folder. "
        f"(If no such run exists any more, delete {path}.)"
    )


def release_output_folder(folder):
    """Releases the lock taken by this process (done at exit anyway)."""
    entry = _held.pop(str(Path(folder).resolve()), None)
    if entry is None:
        return
    fd, inode, path = entry
    try:
        if os.stat(path).st_ino == inode:
            os.remove(path)
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


@atexit.register
def _release_all():
    for key in list(_held):
        release_output_folder(key)
