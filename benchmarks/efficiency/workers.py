"""Measuring points: interleaved runs, each point in its own Python process
(a worker driven over a pipe) or, for tests, in this one.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import gc
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

from benchmarks.efficiency.constants import REPO
from benchmarks.efficiency.measure import Point
from benchmarks.efficiency.rows import result_row

RESULT_TAG = "BENCH_RESULT "
# What a worker process runs: this package's command line (``--worker``).
WORKER_COMMAND = ("-m", "benchmarks.efficiency")
# The allocator of every worker, for every model alike; values exported in
# the environment win.
# - THP_MEM_ALLOC_ENABLE=1: PyTorch's documented switch, transparent huge
#   pages for its CPU tensors (THP_MEM_ALLOC_ENABLE=0 measures without).
# - glibc keeps freed memory for reuse: its mmap threshold at its 32 MiB
#   ceiling, its trim threshold at 4 GiB. With glibc's defaults a forward
#   pass of a linear mixer's encoder at 80 s hands its heap top back to the
#   system and faults it in again page by page: 140-220 thousand minor page
#   faults and 0.4-0.6 s of system time a pass (summarymixing), against
#   ~16 thousand and 0.05 s with these. Tensors over 32 MiB (SpeechBrain's
#   attention maps) are mapped afresh either way. BRQ_BENCH_GLIBC_MALLOC=0
#   leaves glibc's defaults.
GLIBC_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def worker_allocator_env(environ=None):
    """The allocator variables a worker starts with (see ``GLIBC_MALLOC``).

    Example
    -------
    >>> worker_allocator_env({})["MALLOC_TRIM_THRESHOLD_"]
    '4294967296'
    >>> sorted(worker_allocator_env({"BRQ_BENCH_GLIBC_MALLOC": "0"}))
    ['THP_MEM_ALLOC_ENABLE']
    """
    environ = os.environ if environ is None else environ
    wanted = {"THP_MEM_ALLOC_ENABLE": "1"}
    if environ.get("BRQ_BENCH_GLIBC_MALLOC", "1") != "0":
        wanted.update(GLIBC_MALLOC)
    return {k: environ.get(k, v) for k, v in wanted.items()}


class _InProcess:
    """A ``Point`` driven directly (``--inprocess``, tests)."""

    def __init__(self, spec):
        self.spec = spec
        self.point = Point(**spec)
        self.info = self.point.info

    def call(self, command, arg=None):
        if command == "run":
            return list(self.point.run()) + [
                self.point.last_step_time, self.point.last_cpu, self.point.last_mixer_time,
            ]
        if command == "flops":
            return self.point.flops()
        if command == "profile":
            return self.point.profile(arg)
        if command == "extras":
            return {
                "compile_s": self.point.compile_s,
                "compile_max_abs_diff": self.point.compile_diff,
                "mem_method": self.point.mem_method,
            }
        raise ValueError(command)

    def close(self):
        self.point = None
        gc.collect()


class _Worker:
    """A ``Point`` in its own Python process, driven over a pipe: the
    parent writes a JSON command per line, the worker answers one tagged
    JSON line. Nothing of another point is resident in its memory."""

    def __init__(self, spec, timeout):
        self.spec, self.timeout = spec, timeout
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **worker_allocator_env()}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH")) if p
        )
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, *WORKER_COMMAND, "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        # A thread reads the worker's stdout into a queue, so that a timeout
        # never depends on how lines were buffered.
        self.lines = queue.Queue()
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()
        self.info = self._read()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)  # end of output: the worker exited

    def _read(self):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise TimeoutError(f"timeout ({self.timeout:g} s)") from None
            if line is None:  # the worker died
                self.proc.wait()
                self.stderr.seek(0)
                tail = " | ".join(self.stderr.read().strip().splitlines()[-3:])
                rc = self.proc.returncode
                kind = "killed (out of memory?)" if rc in (-9, 137) else "error"
                raise RuntimeError(f"{kind}: rc {rc}: {tail}")
            if line.startswith(RESULT_TAG):
                answer = json.loads(line[len(RESULT_TAG):])
                if isinstance(answer, dict) and "error" in answer:
                    raise RuntimeError(answer["error"])
                return answer

    def call(self, command, arg=None):
        self.proc.stdin.write(json.dumps([command, arg]) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps(["quit", None]) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def worker_loop(spec):
    """The worker side of ``_Worker``: builds the point, answers commands."""

    def answer(obj):
        print(RESULT_TAG + json.dumps(obj), flush=True)

    try:
        point = _InProcess(spec)
    except Exception as err:  # reported to the parent as the point's status
        answer({"error": f"{type(err).__name__}: {err}"})
        return
    answer(point.info)
    for line in sys.stdin:
        command, arg = json.loads(line)
        if command == "quit":
            return
        try:
            answer(point.call(command, arg))
        except torch.OutOfMemoryError:
            answer({"error": "OOM"})
        except RuntimeError as err:
            msg = "OOM" if "memory" in str(err).lower() else f"RuntimeError: {err}"
            answer({"error": msg})


def measure_interleaved(specs, warmup=1, repeats=5, inprocess=False, timeout=3600,
                        count_work=True, profile_dir=None, log=print):
    """Measures the points ``specs`` round-robin: all are built (each in its
    own process unless ``inprocess``), then for each of ``warmup + repeats``
    rounds every point runs once, in a rotating order; the first ``warmup``
    rounds are not kept. Then the work of each point is counted
    (``Point.flops``) and, with ``profile_dir``, one more step profiled.

    Arguments
    ---------
    specs : list of dict
        Keyword arguments of ``Point``.
    warmup, repeats : int
        Untimed and timed rounds.
    inprocess : bool
        Drive the points in this process (faster, for tests; CPU memory then
        also sees the other points).
    timeout : float
        Seconds a worker may take to build or to answer one command.
    count_work : bool
        Count each point's flops.
    profile_dir : str, optional
        Where to write one profile per point.
    log : callable
        Progress lines.

    Returns
    -------
    list of dict
        One result row per spec, in order (failed points: NaN and a status).
    """
    points, status, info = _start_points(specs, inprocess, timeout)
    try:
        runs = _run_rounds(points, status, warmup, repeats)
        rows = []
        for i, spec in enumerate(specs):
            flops, extras = None, None
            if points[i] is not None and status[i] == "ok":
                flops, extras = _count_and_profile(points[i], spec, count_work, profile_dir, log)
            rows.append(result_row(spec, info[i], runs[i], status[i], flops, extras))
    finally:
        for p in points:
            if p is not None:
                p.close()
    return rows


FAILURES = (RuntimeError, TimeoutError, torch.OutOfMemoryError)


def _start_points(specs, inprocess, timeout):
    """Builds the point of every spec; returns the points, their statuses
    and their model infos (None and the failure for a point that could not
    be built: its row is kept, marked failed)."""
    points, status, info = [], [], []
    for spec in specs:
        try:
            p = _InProcess(spec) if inprocess else _Worker(spec, timeout)
        except Exception as err:  # any build failure: the point's status
            points.append(None)
            status.append(_status_of(err))
            info.append(None)
            continue
        points.append(p)
        status.append("ok")
        info.append(p.info)
    return points, status, info


def _run_rounds(points, status, warmup, repeats):
    """Runs every live point once per round, ``warmup + repeats`` rounds,
    starting each round one point further; returns the kept runs of each
    point (a point that fails is marked in ``status`` and left out)."""
    runs = [[] for _ in points]
    for r in range(warmup + repeats):
        order = list(range(len(points)))
        order = order[r % len(order):] + order[: r % len(order)] if order else order
        for i in order:
            if points[i] is None or status[i] != "ok":
                continue
            try:
                res = points[i].call("run")
            except FAILURES as err:
                status[i] = _status_of(err)
                continue
            if r >= warmup:
                runs[i].append(res)
    return runs


def _count_and_profile(point, spec, count_work, profile_dir, log):
    """The flops (None unless ``count_work``) and extras of a measured
    point; with ``profile_dir``, one more step profiled into it."""
    flops, extras = None, None
    try:
        extras = point.call("extras")
        if count_work:
            flops = point.call("flops")
        if profile_dir:
            name = (
                f"{spec.get('protocol', 'default')}_{spec.get('mode', 'forward')}_"
                f"{spec.get('precision', 'fp32')}_{spec['mixer']}_{spec['seconds']:g}s.txt"
            )
            point.call("profile", str(Path(profile_dir) / name))
    except FAILURES as err:
        log(f"  {spec['mixer']}: counting/profiling failed ({err})")
    return flops, extras


def _status_of(err):
    """The status string of a failed point."""
    text = str(err) if isinstance(err, FAILURES) else f"{type(err).__name__}: {err}"
    if isinstance(err, torch.OutOfMemoryError) or text.startswith("OOM"):
        return "OOM"
    if isinstance(err, TimeoutError):
        return text
    warnings.warn(f"point failed: {text}")
    return text.split(":")[0] if text.startswith("killed") else "error: " + text[:80]


def measure_point(repeats=3, warmup=1, profile_dir=None, **spec):
    """Measures one point in this process (``warmup`` then ``repeats``
    runs); returns its result row. See ``Point`` for the arguments."""
    spec = {**spec, "repeats": repeats, "warmup": warmup}
    return measure_interleaved([spec], warmup, repeats, inprocess=True,
                               profile_dir=profile_dir)[0]


def run_subprocess_point(point, timeout=3600):
    """Measures one point (``Point`` arguments plus ``repeats`` and
    ``warmup``) in a fresh Python process; returns its result row."""
    return measure_interleaved(
        [point], point.get("warmup", 1), point.get("repeats", 5), timeout=timeout
    )[0]
