"""The efficiency benchmark runs end to end on a tiny configuration."""

import csv
import math
from pathlib import Path

import pytest
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "efficiency.py"


@pytest.fixture(scope="module")
def efficiency():
    return load_script(SCRIPT, "efficiency")


def test_main_writes_csv_markdown_and_ratios(efficiency, tmp_path):
    out = tmp_path / "tiny"
    efficiency.main(
        [
            "--mixers", "mhsa,fastformer",
            "--lengths", "1,2",
            "--batch", "1",
            "--size", "tiny",
            "--repeats", "1",
            "--warmup", "0",
            "--device", "cpu",
            "--mode", "forward",
            "--inprocess",
            "--threads", "1",
            "--out", str(out),
        ]
    )
    with open(out / "forward.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(efficiency.CSV_FIELDS) <= set(rows[0])
    assert sorted((r["mixer"], float(r["seconds"])) for r in rows) == [
        ("fastformer", 1.0),
        ("fastformer", 2.0),
        ("mhsa", 1.0),
        ("mhsa", 2.0),
    ]
    for r in rows:
        assert r["status"] == "ok"
        assert r["mode"] == "forward" and r["batch"] == "1"
        assert int(r["frames"]) == round(float(r["seconds"]) * 100)
        assert float(r["time_mean_s"]) > 0
        assert not math.isnan(float(r["mem_peak_mb"]))
        assert not math.isnan(float(r["time_ratio_mhsa"]))
        if r["mixer"] == "mhsa":
            assert float(r["time_ratio_mhsa"]) == 1.0
            assert float(r["mem_ratio_mhsa"]) == 1.0
    md = (out / "forward.md").read_text()
    assert "| mhsa |" in md and "| fastformer |" in md


def test_subprocess_point_measures_memory(efficiency):
    point = dict(
        mixer="fastformer", seconds=1.0, mode="train", batch=1, size="tiny",
        device="cpu", repeats=4, warmup=0, vocab=64, threads=1,
    )
    r = efficiency.run_subprocess_point(point, timeout=120)
    assert r["status"] == "ok", r
    assert r["time_mean_s"] > 0 and r["mem_peak_mb"] > 0
    times = sorted(r["times_s"])
    assert len(times) == 4 and r["time_median_s"] == (times[1] + times[2]) / 2
    assert r["d_model"] == 40 and r["num_layers"] == 2


def test_small_size_keeps_width_ratios(efficiency):
    widths = {
        m: efficiency.model_config(m, "small")["d_model"]
        for m in ("mhsa", "hypermixing", "fastformer", "summarymixing", "mamba")
    }
    assert widths == {
        "mhsa": 144, "hypermixing": 168, "fastformer": 152,
        "summarymixing": 134, "mamba": 120,
    }
