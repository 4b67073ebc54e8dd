"""A full disk while saving a checkpoint, exporting, extracting or preparing
data (issue 21): one clear message naming the folder and what to free, no
partial file or folder left, the previous checkpoint intact.

The failure is produced as it really happens, not by raising an exception
type: each case runs in a subprocess whose file-size limit
(``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored) is set just before the write,
so that the kernel refuses the write (``EFBIG``) and ``torch.save`` fails
in its zip writer (``RuntimeError: ... unexpected pos``) exactly as it does
on a full disk (``PytorchStreamWriter failed writing file``).
"""

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

PRELUDE = """
import json, os, resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

def limit_file_size(n):
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.RLIM_INFINITY))
"""

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics")


def run(code, tmp_path):
    """Runs ``code`` (after PRELUDE) in a subprocess; returns its JSON output."""
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        # no .pyc written under the limit (a cut one would break later imports)
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1",
             "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_one_clear_message(message, folder):
    assert "No space left on device (or a quota or file-size limit reached" in message, message
    assert str(folder) in message and "free there" in message
    assert "run the same command again" in message
    assert "Traceback" not in message and "inline_container" not in message.split("reached:")[0]


def test_a_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path):
    out = run(f"""
        import torch
        from lobes.utils.checkpoint import AtomicCheckpointer
        torch.manual_seed(0)
        model = torch.nn.Linear(256, 256)
        ckpt = AtomicCheckpointer({str(tmp_path / 'save')!r}, {{"model": model, "head": torch.nn.Linear(4, 4)}})
        first = ckpt.save_checkpoint(meta={{"n": 1}})
        with torch.no_grad():
            model.weight.add_(1.0)
        limit_file_size(100_000)  # the disk fills up: model.ckpt is 257 KB
        try:
            ckpt.save_checkpoint(meta={{"n": 2}})
            message, kind = None, None
        except Exception as err:
            message, kind = str(err), type(err).__name__
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        names = sorted(p.name for p in Path({str(tmp_path / 'save')!r}).iterdir())
        state = torch.load(first.path / "model.ckpt", weights_only=True)
        print(json.dumps({{"message": message, "kind": kind, "names": names, "first": first.path.name,
                          "intact": bool(torch.allclose(state["weight"], model.weight - 1.0, atol=1e-6)),
                          "recovered_n": ckpt.find_checkpoint().meta["n"]}}))
        """, tmp_path)
    assert out["kind"] == "OSError"
    assert_one_clear_message(out["message"], tmp_path / "save")
    assert "are intact" in out["message"] and out["first"] in out["message"]
    assert out["names"] == [out["first"]]  # no partial folder left
    assert out["intact"] and out["recovered_n"] == 1


def test_an_export_on_a_full_disk_leaves_no_partial_folder(tmp_path):
    out = run(f"""
        import torch
        from conftest import save_normalizer
        from speechbrain.processing.features import InputNormalization
        from lobes.deploy.export import main
        from lobes.nnet.encoder import ConformerEncoder
        ckpt = Path({str(tmp_path / 'CKPT+1')!r}); ckpt.mkdir()
        enc = ConformerEncoder("fastformer", num_layers=2, d_model=64, nhead=2, d_ffn=128, kernel_size=3)
        torch.save(torch.nn.ModuleList([enc, torch.nn.Linear(64, 8)]).state_dict(), ckpt / "model.ckpt")
        norm = InputNormalization(norm_type="global"); norm(torch.randn(2, 50, 80), torch.ones(2))
        save_normalizer(norm, ckpt / "normalize.ckpt")
        limit_file_size(50_000)
        import io, contextlib
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["--checkpoint", str(ckpt), "--out", {str(tmp_path / 'models' / 'enc')!r}])
        print(json.dumps({{"rc": rc, "err": err.getvalue()}}))
        """, tmp_path)
    assert out["rc"] == 1
    assert "Could not write the model folder" in out["err"]
    assert_one_clear_message(out["err"], tmp_path / "models")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == []  # no .partial-*, no enc


def test_extraction_on_a_full_disk_stops_with_one_message(tmp_path):
    out = run(f"""
        import numpy as np, soundfile as sf
        from lobes.deploy.extract import main
        import lobes.deploy.inference, lobes.deploy.model_yaml  # imported before the limit
        wavs = []
        for i in range(3):
            wavs.append(str(Path(f"u{{i}}.wav").absolute()))
            sf.write(wavs[-1], np.random.RandomState(i).randn(16000).astype("float32") * 0.1, 16000)
        feats = Path("feats"); feats.mkdir()
        limit_file_size(3_000)  # the features of 1 s: about 7 KB
        import io, contextlib
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["--model", {str(REPO / 'tests/data/model_40517be')!r}, "--wav", *wavs,
                       "--out", "feats", "--skip_errors"])
        print(json.dumps({{"rc": rc, "err": err.getvalue().split("Encoding")[-1],
                          "left": sorted(p.name for p in feats.iterdir())}}))
        """, tmp_path)
    assert out["rc"] == 1  # a full disk is not one file's failure: it stops
    assert "Could not write the features of" in out["err"]
    assert_one_clear_message(out["err"], tmp_path / "feats")
    assert "0 of 3 feature files were written before" in out["err"]
    assert out["left"] == []  # no partial .pt


def test_preparation_on_a_full_disk_leaves_no_partial_csv(demo_data, tmp_path):
    out = run(f"""
        from lobes.dataio.librispeech_prepare import prepare_librispeech
        save = Path("prep"); save.mkdir()
        (save / "keep.txt").write_text("x")
        limit_file_size(4_000)  # train.csv of the demo: about 20 KB
        try:
            prepare_librispeech({str(demo_data / 'LibriSpeech')!r}, save, tr_splits=["train-clean-100"],
                                merge_lst=["train-clean-100"], merge_name="train.csv", num_workers=1)
            message = None
        except OSError as err:
            message = str(err)
        print(json.dumps({{"message": message, "left": sorted(p.name for p in save.iterdir())}}))
        """, tmp_path)
    assert out["message"] and "Could not write the manifest" in out["message"]
    assert_one_clear_message(out["message"], tmp_path / "prep")
    assert out["left"] == ["keep.txt"]  # no partial CSV, no preparation record
