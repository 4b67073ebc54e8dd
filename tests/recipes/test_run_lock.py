"""One run per output folder, and restarts that would not fit are refused
untouched (issue 21).

* A second process on a folder in use is refused at start with the holder's
  PID and host; a lock left by a killed run is stale and taken over; under
  torchrun only the main process takes it (one lock per run).
* The pretraining recipe, end to end: a second identical run started while
  the first runs is refused at once (the first completes, each epoch logged
  once); a restart with another codebook (``cb_vocab``) is refused naming
  the head's and quantiser's shapes and ``cb_vocab``, and rewrites nothing
  in the folder.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_recipe
from demo_overrides import demo_overrides

from lobes.utils.run_lock import (
    LOCK_NAME,
    RunLockedError,
    lock_output_folder,
    release_output_folder,
)

RECIPE = REPO / "recipes/LibriSpeech/self-supervised-learning/BEST-RQ-linear"
HOLD = (
    "import sys, time\n"
    "from lobes.utils.run_lock import lock_output_folder\n"
    "lock_output_folder(sys.argv[1], main_process=True)\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_and_a_killed_runs_lock_is_stale(tmp_path, caplog):
    proc = holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=(
                rf"{tmp_path} is in use by another run \(PID {proc.pid} on host "
                rf"{socket.gethostname()}, started .*give this run its own --output_folder")):
            lock_output_folder(tmp_path, main_process=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # left behind by the killed run
    with caplog.at_level(logging.WARNING):
        assert lock_output_folder(tmp_path, main_process=True) == tmp_path / LOCK_NAME
    assert f"Stale lock of {tmp_path} (PID {proc.pid} on host" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    release_output_folder(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()


def test_without_flock_the_pid_decides(tmp_path, caplog):
    """A lock file whose process is alive on this host is respected even
    where the file system has no flock; a dead PID is stale."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock = tmp_path / LOCK_NAME
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(RunLockedError, match=f"PID {sleeper.pid} on host"):
            lock_output_folder(tmp_path, main_process=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    with caplog.at_level(logging.WARNING):
        lock_output_folder(tmp_path, main_process=True)
    assert "its process is no longer running on this host" in caplog.text
    release_output_folder(tmp_path)


def test_under_torchrun_only_the_main_process_takes_the_lock(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        "import json, os, sys, torch, speechbrain as sb\n"
        "from lobes.recipe import parse_arguments, lock_output_folder\n"
        "_, run_opts, _ = parse_arguments(sys.argv[1:2])\n"
        "sb.utils.distributed.ddp_init_group(run_opts)\n"
        "taken = lock_output_folder(sys.argv[2])\n"
        "pids = [None, None]\n"
        "torch.distributed.all_gather_object(pids, os.getpid())\n"
        "holder = json.loads(open(os.path.join(sys.argv[2], 'run.lock')).read())['pid']\n"
        "sys.stdout.write(f'rank {torch.distributed.get_rank()} took {taken is not None} holder_is_rank0 {holder == pids[0]}\\n')\n"
        "torch.distributed.barrier()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), "x.yaml", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0 took True holder_is_rank0 True" in proc.stdout
    assert "rank 1 took False holder_is_rank0 True" in proc.stdout
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released at exit


def pretraining_args(demo_data, out, extra=()):
    return ["hparams/bestrq_fastformer.yaml", f"--data_folder={demo_data / 'LibriSpeech'}",
            f"--output_folder={out}", *demo_overrides("fastformer", epochs=1, layers=1), *extra]


def test_one_run_per_folder_and_a_refused_restart_rewrites_nothing(demo_data, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "train.py", *pretraining_args(demo_data, out)], cwd=RECIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"},
    )
    try:
        deadline = time.time() + 300
        while not (out / LOCK_NAME).exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.2)
        second = run_recipe(RECIPE, pretraining_args(demo_data, out), check=False, timeout=300)
        assert second.returncode != 0
        assert f"is in use by another run (PID {first.pid} on host {socket.gethostname()}" in second.stderr
    finally:
        stdout, stderr = first.communicate(timeout=1500)
    assert first.returncode == 0, stdout[-3000:] + stderr[-6000:]
    assert (out / "train_log.txt").read_text().count("epoch: 1,") == 1

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = run_recipe(RECIPE, pretraining_args(demo_data, out, ["--cb_vocab=64"]), check=False)
    assert proc.returncode != 0
    for text in ("holds checkpoints this run cannot resume",
                 "model.ckpt 1.weight: [8192, 104] there, [64, 104] now",
                 "cb_vocab: 8192 there, 64 now", "nothing was changed there"):
        assert text in proc.stderr, proc.stderr[-3000:]
    assert "size mismatch" not in proc.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # hyperparams.yaml, log.txt, encoder.yaml... untouched
