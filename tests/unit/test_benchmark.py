"""The efficiency benchmark's logic (``benchmarks.efficiency``), on tiny
models (nothing here is timed: times only need to exist; their values are
never asserted)."""

import csv
import importlib
import math
import sys

import pytest
import torch
from conftest import REPO

if str(REPO) not in sys.path:  # `benchmarks` is a package of the repository root
    sys.path.insert(0, str(REPO))

TINY = ["--size", "tiny", "--batch", "1", "--repeats", "2", "--warmup", "0",
        "--device", "cpu", "--inprocess", "--threads", "1", "--vocab", "64"]


@pytest.fixture(scope="module")
def efficiency():
    return importlib.import_module("benchmarks.efficiency")


@pytest.fixture(scope="module")
def default_run(efficiency, tmp_path_factory):
    """One tiny default-protocol run with both references, shared by tests."""
    out = tmp_path_factory.mktemp("tiny")
    efficiency.main([
        "--mixers", "speechbrain_relposmhaxl,floor,mhsa,mamba",
        "--lengths", "1,2", *TINY, "--precisions", "fp32,bf16", "--out", str(out),
    ])
    with open(out / "forward.csv") as f:
        rows = list(csv.DictReader(f))
    return out, rows


def test_main_writes_csv_markdown_ratios_floor_and_reference(efficiency, default_run):
    out, rows = default_run
    assert set(efficiency.CSV_FIELDS) <= set(rows[0])
    models = {"speechbrain_relposmhaxl", "floor", "mhsa", "mamba"}
    assert {(r["mixer"], r["precision"], float(r["seconds"])) for r in rows} == {
        (m, p, s) for m in models for p in ("fp32", "bf16") for s in (1.0, 2.0)
    }
    for r in rows:
        assert r["status"] == "ok" and r["protocol"] == "default" and r["mode"] == "forward"
        assert int(r["frames"]) == round(float(r["seconds"]) * 100)
        t_min, t_med = float(r["time_min_s"]), float(r["time_median_s"])
        assert 0 < t_min <= t_med <= float(r["time_q3_s"])
        assert float(r["time_q1_s"]) >= t_min
        assert not math.isnan(float(r["mem_peak_mb"]))
        assert float(r["gflop"]) > 0
        assert float(r["gflops_per_s"]) == pytest.approx(float(r["gflop"]) / t_min, rel=1e-3)
        assert float(r["cpu_min_s"]) > 0
        for base in ("mhsa", "speechbrain_relposmhaxl"):
            assert not math.isnan(float(r[f"time_ratio_{base}"]))
            if r["mixer"] == base:
                assert float(r[f"time_ratio_{base}"]) == 1.0
                assert float(r[f"mem_ratio_{base}"]) == 1.0
        if r["mixer"] == "floor":
            assert float(r["throughput_ratio_floor"]) == 1.0
        if r["precision"] == "bf16":
            assert not math.isnan(float(r["time_ratio_fp32"]))
    md = (out / "forward.md").read_text()
    for label in ("| speechbrain_relposmhaxl |", "| floor |", "| mhsa bf16 |", "| mamba |"):
        assert label in md
    assert "throughput" in md and "IQR" in md
    # 2 timed runs per point: the check of mamba against mhsa gives no verdict
    assert "not judged: 2 repeats < 5" in md and "PASS" not in md and "FAIL" not in md


def test_work_is_counted_with_attention_and_scan(efficiency, default_run):
    """mhsa's GFLOP exceed the floor's (attention is counted, the fused CPU
    kernel included) and grow faster than the input; the floor's grow with
    it; mamba adds its analytic scan work."""
    _, rows = default_run
    g = {(r["mixer"], float(r["seconds"])): float(r["gflop"]) for r in rows if r["precision"] == "fp32"}
    assert g["mhsa", 2.0] > g["floor", 2.0]
    assert g["floor", 2.0] / g["floor", 1.0] == pytest.approx(2.0, rel=0.05)
    assert g["mhsa", 2.0] - g["floor", 2.0] > 2 * (g["mhsa", 1.0] - g["floor", 1.0])
    model, info = efficiency.build_model("mamba", "tiny", vocab=64)
    d_inner = 2 * info["d_model"]  # expand 2
    assert efficiency.scan_flops(model, 1, 50) == 5 * 50 * 2 * 2 * d_inner * 16  # 2 layers x 2 blocks


def test_count_flops_includes_cpu_fused_attention(efficiency):
    q = torch.randn(1, 2, 16, 4)
    flops = efficiency.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * (2 * 2 * 16 * 16 * 4)
    lin = torch.nn.Linear(8, 3)
    assert efficiency.count_flops(lambda: lin(torch.randn(5, 8))) == 2 * 5 * 8 * 3


def test_floor_is_the_mhsa_encoder_without_its_mixers(efficiency):
    floor, info = efficiency.build_model("floor", "tiny", vocab=64)
    mhsa, mhsa_info = efficiency.build_model("mhsa", "tiny", vocab=64)
    assert all(isinstance(layer.mixer, efficiency.IdentityMixer) for layer in floor.encoder.layers)
    mixer_params = sum(p.numel() for layer in mhsa.encoder.layers for p in layer.mixer.parameters())
    assert info["d_model"] == mhsa_info["d_model"]
    assert round((mhsa_info["params_m"] - info["params_m"]) * 1e6) == mixer_params
    x = torch.randn(2, 9, info["d_model"])
    pad = torch.tensor([[False] * 9, [False] * 5 + [True] * 4])
    out = floor.encoder.layers[0].mixer(x, pad)
    assert torch.equal(out[0], x[0]) and out[1, 5:].abs().sum() == 0
    with torch.no_grad():
        assert floor.eval()(torch.randn(1, 40, 80)).shape == (1, 10, 64)


def test_speechbrain_reference_is_speechbrains_recipe_encoder(efficiency):
    cfg = efficiency.model_config("speechbrain_relposmhaxl", "paper")
    assert (cfg["d_model"], cfg["nhead"], cfg["num_layers"], cfg["d_ffn"]) == (576, 8, 12, 2048)
    assert cfg["frontend_channels"] == (128, 32)
    from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR
    from speechbrain.nnet.attention import RelPosMHAXL

    model, info = efficiency.build_model("speechbrain_relposmhaxl", "tiny", vocab=64)
    assert isinstance(model.transformer, TransformerASR)
    layers = model.transformer.encoder.layers
    assert len(layers) == info["num_layers"] == 2
    assert all(isinstance(layer.mha_layer, RelPosMHAXL) for layer in layers)
    feats = torch.randn(2, 41, 80)
    model.eval()
    with torch.no_grad():
        out = model(feats)
        ref = model.head(model.transformer.encode(model.cnn(feats)))
    assert torch.equal(out, ref)
    assert out.shape[1] == model.output_lengths(torch.tensor(41)).item() == 11


def test_runs_are_interleaved_round_robin_and_warmup_dropped(efficiency, monkeypatch):
    calls = []

    class FakePoint:
        def __init__(self, spec):
            self.spec, self.info = spec, {"params_m": 1.0, "d_model": 8}
            self.n = 0

        def call(self, command, arg=None):
            if command == "run":
                calls.append(self.spec["mixer"])
                self.n += 1
                t = {"a": 1.0, "b": 2.0, "c": 3.0}[self.spec["mixer"]] * self.n
                return [t, 10.0, 20.0, 30.0, t, t]
            return 1e9 if command == "flops" else {}

        def close(self):
            pass

    monkeypatch.setattr(efficiency.workers, "_InProcess", FakePoint)
    specs = [{"mixer": m, "seconds": 1.0} for m in "abc"]
    rows = efficiency.measure_interleaved(specs, warmup=1, repeats=5, inprocess=True)
    assert calls[:3] == ["a", "b", "c"] and calls[3:6] == ["b", "c", "a"]
    assert calls[6:9] == ["c", "a", "b"] and len(calls) == 18
    a = rows[0]
    assert a["times_s"] == [2.0, 3.0, 4.0, 5.0, 6.0]  # the warm-up run (1.0) dropped
    assert (a["time_min_s"], a["time_median_s"], a["time_q1_s"], a["time_q3_s"]) == (2.0, 4.0, 3.0, 5.0)
    assert a["gflop"] == 1.0 and a["gflops_per_s"] == 0.5


def test_ratios_growth_and_checks_use_the_minima(efficiency):
    def row(mixer, seconds, t, mem=100.0, gflop=10.0, precision="fp32"):
        return {
            "mode": "forward", "mixer": mixer, "seconds": seconds, "precision": precision,
            "time_min_s": t, "time_median_s": 2 * t, "mem_peak_mb": mem, "gflop": gflop,
            "gflops_per_s": gflop / t, "status": "ok", "repeats": 5,
        }

    rows = [
        row("speechbrain_relposmhaxl", 20.0, 1.0), row("speechbrain_relposmhaxl", 80.0, 8.0, 800.0),
        row("floor", 80.0, 2.0, 200.0, 40.0), row("mhsa", 20.0, 0.5), row("mhsa", 80.0, 4.0, 400.0),
        row("fastformer", 20.0, 0.4), row("fastformer", 80.0, 1.6, 150.0, 24.0),
        row("fastformer", 80.0, 0.8, 150.0, 24.0, precision="bf16"),
    ]
    efficiency.add_ratios(rows)
    ff80 = rows[6]
    assert ff80["time_ratio_speechbrain_relposmhaxl"] == 0.2
    assert ff80["mem_ratio_mhsa"] == 150.0 / 400.0
    assert ff80["throughput_ratio_floor"] == pytest.approx(15.0 / 20.0)
    assert rows[7]["time_ratio_fp32"] == 0.5
    assert efficiency.growth(rows, "forward", "fastformer")[0] == 4.0
    assert efficiency.growth(rows, "forward", "mhsa")[0] == 8.0
    text = efficiency.format_tables(rows, "forward", "header")
    assert "fastformer bf16" in text
    assert "fastformer: time x0.40 (faster), memory x0.38 (lighter), time 80s/20s 4.00x (about linear): PASS" in text


def test_paper_protocol_measures_the_whole_step_with_weights(efficiency, tmp_path):
    args = efficiency.parse_args(["--protocol", "paper"])
    assert (args.batch, args.lengths, args.repeats) == (6, "10,20,30,40,50,60,70,80", 10)
    assert args.precisions == ("fp16" if torch.cuda.is_available() else "fp32")
    # In subprocesses: the memory "with the weights" is measured from the
    # RSS of a fresh process before the model is built.
    subprocess_opts = [o for o in TINY if o != "--inprocess"]
    rows = efficiency.main([
        "--protocol", "paper", "--mixers", "summarymixing", "--lengths", "1,2",
        "--interleave", "all", *subprocess_opts, "--out", str(tmp_path),
    ])
    assert {r["mode"] for r in rows} == {"paper"}
    for r in rows:
        assert r["status"] == "ok"
        # the step (fbank, quantiser, loss) is longer than its timed part
        assert r["step_time_min_s"] > r["time_min_s"] > 0
        # memory includes the weights: at least the parameters' bytes
        assert r["mem_with_weights_mb"] > r["params_m"] * 4
    md = (tmp_path / "paper.md").read_text()
    assert "including the weights" in md and "no backward" in md
    with open(tmp_path / "paper.csv") as f:
        assert {row["protocol"] for row in csv.DictReader(f)} == {"paper"}


def test_paper_step_builds_the_graph_in_train_mode(efficiency):
    point = efficiency.Point("fastformer", 1.0, protocol="paper", batch=2, size="tiny",
                             vocab=64, threads=1)
    assert point.model.training
    seen = {}
    handle = point.model.head.register_forward_hook(
        lambda m, i, o: seen.update(grad=o.requires_grad, enabled=torch.is_grad_enabled())
    )
    point.run()
    handle.remove()
    assert seen == {"grad": True, "enabled": True}


def test_compile_reports_its_time_and_difference(efficiency, monkeypatch):
    """The compile path, with torch.compile replaced by the identity (a real
    compilation takes minutes on CPU; the benchmark measures it)."""
    monkeypatch.setattr(efficiency.measure, "maybe_compile", lambda model, enabled=True, **kw: model)
    r = efficiency.measure_point(mixer="fastformer", seconds=1.0, batch=1, size="tiny",
                                 vocab=64, threads=1, compile=True, repeats=1, warmup=0)
    assert r["compile"] and r["compile_max_abs_diff"] == 0.0 and r["compile_s"] > 0


def test_subprocess_point_measures_memory(efficiency):
    point = dict(
        mixer="fastformer", seconds=1.0, mode="train", batch=1, size="tiny",
        device="cpu", repeats=5, warmup=0, vocab=64, threads=1,
    )
    r = efficiency.run_subprocess_point(point, timeout=120)
    assert r["status"] == "ok", r
    assert r["time_mean_s"] > 0 and r["mem_peak_mb"] > 0 and r["gflop"] > 0
    times = sorted(r["times_s"])
    assert len(times) == 5 and r["time_median_s"] == times[2] and r["time_min_s"] == times[0]
    assert r["d_model"] == 40 and r["num_layers"] == 2


def test_small_size_keeps_width_ratios(efficiency):
    widths = {
        m: efficiency.model_config(m, "small")["d_model"]
        for m in ("mhsa", "hypermixing", "fastformer", "summarymixing", "mamba", "floor")
    }
    assert widths == {
        "mhsa": 144, "hypermixing": 168, "fastformer": 152,
        "summarymixing": 134, "mamba": 120, "floor": 144,
    }


def test_vs_speechbrain_table_and_criteria():
    vs = importlib.import_module("benchmarks.vs_speechbrain")
    eff = vs.eff

    def row(mixer, seconds, t, rss, gflops=None):
        return {
            "mode": "forward", "mixer": mixer, "seconds": seconds, "precision": "fp32",
            "time_min_s": t, "time_median_s": t, "cpu_min_s": 2 * t,
            "mem_peak_mb": rss, "mem_total_mb": rss,
            "gflop": (gflops or 0) * t, "gflops_per_s": gflops or float("nan"), "status": "ok",
            "repeats": 5,
        }

    rows = [
        row(eff.SPEECHBRAIN_REF, 20.0, 0.7, 900), row(eff.SPEECHBRAIN_REF, 80.0, 6.6, 3000),
        row("floor", 20.0, 0.3, 400), row("floor", 80.0, 1.5, 1000, 160),
        row("mhsa", 20.0, 0.5, 500), row("mhsa", 80.0, 5.0, 1500, 100),
        row("summarymixing", 20.0, 0.45, 400), row("summarymixing", 80.0, 2.0, 1200, 150),
        row("mamba", 20.0, 0.6, 400), row("mamba", 80.0, 2.8, 1300, 140),
    ]
    eff.add_ratios(rows)
    table = vs.comparison_table(rows)
    assert table[0].startswith("| encoder | 20 s | 80 s | 80 s vs SpeechBrain")
    mhsa = next(line for line in table if line.startswith("| mhsa |"))
    assert "| 1.32× | 1.32× | 10.0× | 0.50 |" in mhsa
    criteria = "\n".join(vs.done_when(rows))
    assert "FAIL: mhsa ≥ 1.2× SpeechBrain's speed at 80 s (1.32×)" not in criteria
    assert "PASS: mhsa ≥ 1.2× SpeechBrain's speed at 80 s (1.32×)" in criteria
    assert "PASS: mamba ≤ 1.5× summarymixing's time at 80 s (1.40×)" in criteria
    assert "FAIL: mamba no slower than mhsa at 20 s (1.20×)" in criteria
    assert "FAIL: summarymixing peak memory ≤ 0.45 of SpeechBrain's at 80 s (0.40)" not in criteria
    # issue 23
    assert "FAIL: summarymixing ≥ 4.5× SpeechBrain's speed at 80 s (3.30×)" in criteria
    assert "FAIL: mamba ≤ 1.15× summarymixing's time at 80 s (1.40×)" in criteria
    assert "FAIL: mamba ≤ 0.9× mhsa's time at 20 s (1.20×)" in criteria
    assert table[0].endswith("| mixers at 80 s: time (share), GFLOP/s (vs floor) |")


def test_default_models_come_from_the_registry(efficiency, monkeypatch):
    """SpeechBrain's encoder, the floor, then every registered mixer with a
    definition (its own or ``sizes_from``): a new mixer is measured without
    editing the benchmark."""
    from lobes.nnet.mixers import MIXERS, MixerSpec, mixer_names

    assert efficiency.parse_args([]).mixers.split(",") == efficiency.default_models()
    assert efficiency.default_models() == ["speechbrain_relposmhaxl", "floor", *MIXERS]
    assert efficiency.BASELINES == (*mixer_names(linear=False), "speechbrain_relposmhaxl")
    fastformer = MIXERS["fastformer"].cls
    monkeypatch.setitem(MIXERS, "fastformer_twin", MixerSpec(fastformer, "absolute", sizes_from="fastformer"))
    monkeypatch.setitem(MIXERS, "no_definition", MixerSpec(fastformer, "absolute"))
    assert efficiency.default_models()[-1] == "fastformer_twin"
    model, info = efficiency.build_model("fastformer_twin", "tiny", vocab=16)
    assert model.encoder.config["mixer"] == "fastformer_twin"
    assert info["d_model"] == efficiency.model_config("fastformer", "tiny")["d_model"]


def _check_rows(repeats):
    """SpeechBrain's encoder, mhsa and fastformer at 20 and 80 s (fastformer
    cheaper than mhsa and linear), ``repeats`` timed runs per point."""
    return [
        {"mode": "forward", "mixer": m, "seconds": s, "precision": "fp32", "time_min_s": t,
         "time_median_s": t, "mem_peak_mb": mem, "mem_total_mb": mem, "gflop": 1.0,
         "gflops_per_s": 1.0 / t, "cpu_min_s": t, "status": "ok", "repeats": repeats}
        for m, s, t, mem in (
            ("speechbrain_relposmhaxl", 20.0, 1.0, 500), ("speechbrain_relposmhaxl", 80.0, 9.0, 900),
            ("mhsa", 20.0, 1.0, 400), ("mhsa", 80.0, 8.0, 800),
            ("fastformer", 20.0, 0.5, 100), ("fastformer", 80.0, 2.0, 200),
        )
    ]


def test_no_verdict_from_fewer_than_five_repeats(efficiency):
    vs = importlib.import_module("benchmarks.vs_speechbrain")
    judged = efficiency.add_ratios(_check_rows(repeats=5))
    assert "(about linear): PASS" in "\n".join(efficiency.check_linear(judged, "forward"))
    assert all(" PASS: " in line or " FAIL: " in line for line in vs.done_when(judged))
    few = efficiency.add_ratios(_check_rows(repeats=2))
    check = "\n".join(efficiency.check_linear(few, "forward"))
    assert "(about linear): not judged: 2 repeats < 5" in check
    assert "PASS" not in check and "FAIL" not in check
    criteria = vs.done_when(few)
    assert criteria and all(line.startswith("- not judged: 2 repeats < 5: ") for line in criteria)


def test_failed_point_is_marked_in_the_tables(efficiency, monkeypatch):
    class FakePoint:
        def __init__(self, spec):
            if spec["mixer"] == "fastformer":
                raise ValueError("cannot build")
            self.info = {"params_m": 1.0, "d_model": 8}

        def call(self, command, arg=None):
            answers = {"run": [1.0, 10.0, 20.0, 30.0, 1.0, 1.0], "flops": 1e9}
            return answers.get(command, {})

        def close(self):
            pass

    monkeypatch.setattr(efficiency.workers, "_InProcess", FakePoint)
    specs = [{"mixer": m, "seconds": s, "repeats": 5} for s in (20.0, 80.0) for m in ("mhsa", "fastformer")]
    with pytest.warns(UserWarning, match="point failed"):
        rows = efficiency.measure_interleaved(specs, warmup=0, repeats=5, inprocess=True)
    assert [r["mixer"] for r in rows] == ["mhsa", "fastformer"] * 2
    assert rows[1]["status"] == "error: ValueError: cannot build"
    text = efficiency.format_tables(efficiency.add_ratios(rows), "forward", "header")
    fastformer = [line for line in text.splitlines() if line.startswith("fastformer ")]
    assert len(fastformer) == 3  # time, memory, work
    assert all(line.count("failed: ValueError: cannot build") == 2 for line in fastformer)
    assert "  fastformer: failed: ValueError: cannot build" in text


def test_mixers_own_time_and_work_beside_the_floor(efficiency, tmp_path):
    """Forward and training step: each point records the seconds spent
    inside its token mixers (forward hooks, + backward hooks in training)
    and the work they do; the report tables their time, share, GFLOP/s and
    its ratio to the floor's throughput beside the rest of the model's."""
    efficiency.main([
        "--mixers", "floor,summarymixing,mamba", "--lengths", "1", "--mode", "both",
        *TINY, "--out", str(tmp_path),
    ])
    work = {}
    for mode in ("forward", "train"):
        with open(tmp_path / f"{mode}.csv") as f:
            rows = {r["mixer"]: r for r in csv.DictReader(f)}
        floor = rows.pop("floor")
        assert float(floor["mixer_gflop"]) == 0
        for name, r in rows.items():
            t, mixer_t, rest_t = (float(r[k]) for k in ("time_min_s", "mixer_time_min_s", "rest_time_min_s"))
            assert 0 < mixer_t < t and 0 < rest_t < t
            assert 0 < float(r["mixer_share"]) < 1
            gflop, mixer_gflop = float(r["gflop"]), float(r["mixer_gflop"])
            assert 0 < mixer_gflop < gflop
            assert float(r["mixer_gflops_per_s"]) == pytest.approx(mixer_gflop / mixer_t, rel=1e-3)
            assert float(r["rest_gflops_per_s"]) == pytest.approx((gflop - mixer_gflop) / rest_t, rel=1e-3)
            assert float(r["mixer_throughput_ratio_floor"]) == pytest.approx(
                float(r["mixer_gflops_per_s"]) / float(floor["gflops_per_s"]), rel=1e-3)
            work[mode, name] = mixer_gflop
        md = (tmp_path / f"{mode}.md").read_text()
        assert "The token mixers' own work" in md
        assert "identity mixers; the floor:" in md and "floor); rest" in md
    # the training step counts the mixers' backward (about twice the forward)
    for name in ("summarymixing", "mamba"):
        assert 2.5 < work["train", name] / work["forward", name] < 3.5


def test_mixer_timer_times_forward_and_backward(efficiency):
    model, _ = efficiency.build_model("summarymixing", "tiny", vocab=16)
    assert [n for n, _ in efficiency.mixer_modules(model)] == ["encoder.layers.0.mixer", "encoder.layers.1.mixer"]
    sb, _ = efficiency.build_model("speechbrain_relposmhaxl", "tiny", vocab=16)
    assert len(efficiency.mixer_modules(sb)) == 2
    timer = efficiency.MixerTimer(model, backward=True)
    out = model(torch.randn(1, 40, 80))
    assert len(timer.spans) == 2  # one forward span per layer
    out.sum().backward()
    assert len(timer.spans) == 4 and timer.seconds() > 0
    timer.reset()
    assert timer.seconds() == 0
    timer.remove()
    model(torch.randn(1, 40, 80)).sum().backward()
    assert timer.spans == []


def test_paper_protocol_checks_mamba_against_summarymixing(efficiency):
    def row(mixer, t, mb, repeats=10):
        return {"mode": "paper", "mixer": mixer, "seconds": 40.0, "status": "ok", "repeats": repeats,
                "time_min_s": t, "mem_with_weights_mb": mb, "precision": "fp32"}

    lines = efficiency.check_mamba_step([row("summarymixing", 1.0, 1000.0), row("mamba", 1.25, 1050.0)], "paper")
    assert lines[1] == "  40 s: memory x1.05 (<= 1.1: PASS), time x1.25 (<= 1.3: PASS)"
    lines = efficiency.check_mamba_step([row("summarymixing", 1.0, 1000.0, 2), row("mamba", 1.4, 900.0, 2)], "paper")
    assert "time x1.40 (<= 1.3: not judged: 2 repeats < 5)" in lines[1]
    assert efficiency.check_mamba_step([row("mamba", 1.0, 1.0)], "paper") == []
    assert efficiency.check_mamba_step([row("summarymixing", 1.0, 1.0), row("mamba", 1.0, 1.0)], "forward") == []


def test_a_model_can_take_its_mixers_from_a_commit(efficiency):
    """``<mixer>@<commit>``: the same model and weights, the token mixers'
    code of that commit (read with ``git show``): a before/after of the
    mixers in one interleaved run."""
    assert efficiency.split_revision("fastformer@HEAD") == ("fastformer", "HEAD")
    torch.manual_seed(0)
    now, info = efficiency.build_model("fastformer", "tiny", vocab=16)
    torch.manual_seed(0)
    then, then_info = efficiency.build_model("fastformer@HEAD", "tiny", vocab=16)
    assert then_info == info
    mixer = then.encoder.layers[0].mixer
    assert type(mixer).__module__ == "brq_mixers_HEAD.fastformer"
    for (k, a), (_, b) in zip(now.state_dict().items(), then.state_dict().items()):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, k
    x = torch.randn(1, 40, 80)
    with torch.no_grad():
        torch.testing.assert_close(then.eval()(x), now.eval()(x), atol=1e-5, rtol=1e-5)
    args = efficiency.parse_args(["--mixers", "fastformer@HEAD"])
    efficiency.cli._check_args(args, ["fastformer@HEAD"], ["fp32"])
