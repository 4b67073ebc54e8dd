#!/usr/bin/env bash
# ############################################################################
# The GPU checks of the efficiency benchmark, in one prepared script for a
# CUDA machine.
#
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/gpu_check
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# Sized for ~15 minutes on one recent GPU (H100/H200 class). Steps, each with
# its own time limit so that one failure does not cost the others:
#   0. environment (nvidia-smi, torch, CUDA), and `pip install mamba-ssm`
#      started in the background (it may have to compile; capped);
#   1. the paper-protocol table (authors' memory_test_v2.py procedure: batch
#      6, 10..80 s every 10 s, train mode with autograd, VRAM including the
#      weights) for the benchmark's default models (SpeechBrain's encoder,
#      the floor, every registered mixer with a definition) but mamba, fp16
#      and bf16;
#   2. the same for mamba, with mamba-ssm's kernels if the install worked
#      (else our PyTorch scan on the GPU; the log says which);
#   3. our scan against mamba-ssm's: lobes.nnet.mixers.mamba.selective_scan vs
#      mamba_ssm.ops.selective_scan_interface.selective_scan_fn (values,
#      gradients, time), if mamba-ssm is importable;
#   4. a bf16 pretraining step per model (paper protocol with the backward of
#      the loss, 20 and 80 s).
# Every point is measured in this process (--inprocess: one CUDA context
# instead of one per point; memory stays per point, see
# benchmarks/efficiency/measure.py).
#
# Authors
#  * BEST-RQ linear-mixers contributors 2026
# ############################################################################
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu_check}"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
log() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
step() {  # step <name> <seconds> <command...>: runs with a time limit, logs the outcome
    local name="$1" limit="$2"; shift 2
    log "step $name: $*"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    log "step $name: exit $rc (output: $OUT/$name.txt)"
    return 0
}

log "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
$PY -c "import torch, speechbrain; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported(), 'speechbrain', speechbrain.__version__)" 2>&1 | tee -a "$LOG"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { log "no CUDA device: stop"; exit 1; }

# 0. mamba-ssm in the background (compiling it can take long: capped at 9 min).
if $PY -c "import mamba_ssm" 2>/dev/null; then
    log "mamba-ssm already installed"
    PIP_PID=""
else
    ( timeout 540 $PY -m pip install --no-build-isolation mamba-ssm > "$OUT/pip_mamba_ssm.txt" 2>&1 \
        || timeout 300 $PY -m pip install mamba-ssm >> "$OUT/pip_mamba_ssm.txt" 2>&1 ) &
    PIP_PID=$!
    log "pip install mamba-ssm started (pid $PIP_PID)"
fi

BENCH=(-m benchmarks.efficiency --device cuda --inprocess --protocol paper)
# The default models (from the mixer registry) but mamba, measured apart.
MODELS=$($PY -c "from benchmarks.efficiency import default_models; print(','.join(m for m in default_models() if m != 'mamba'))")
log "models: $MODELS,mamba"

# 1. Paper protocol, every model but mamba, fp16 and bf16.
step paper_protocol 420 $PY "${BENCH[@]}" --mixers "$MODELS" --precisions fp16,bf16 \
    --out "$OUT/paper_protocol"

# 2. Paper protocol, mamba (after the install attempt).
if [ -n "$PIP_PID" ]; then wait "$PIP_PID"; fi
if $PY -c "import mamba_ssm" 2>/dev/null; then
    log "mamba-ssm importable: mamba runs its CUDA kernels"
    HAVE_MAMBA_SSM=1
else
    log "mamba-ssm NOT importable (see $OUT/pip_mamba_ssm.txt): mamba runs the PyTorch scan"
    HAVE_MAMBA_SSM=0
fi
step paper_protocol_mamba 240 $PY "${BENCH[@]}" --mixers mhsa,mamba --precisions fp16,bf16 \
    --out "$OUT/paper_protocol_mamba"

# 3. Our scan against mamba-ssm's kernel.
if [ "$HAVE_MAMBA_SSM" = 1 ]; then
    step scan_vs_mamba_ssm 120 $PY - <<'PYEOF'
import time, torch
from lobes.nnet.mixers.mamba import selective_scan, selective_scan_ref
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
torch.manual_seed(0)
dev = "cuda"
for (b, d, n, L) in [(2, 64, 16, 257), (6, 948, 16, 2000)]:
    u = torch.randn(b, d, L, device=dev)
    delta = torch.nn.functional.softplus(torch.randn(b, d, L, device=dev) - 2)
    A = -torch.exp(torch.rand(d, n, device=dev))
    B, C = torch.randn(b, n, L, device=dev), torch.randn(b, n, L, device=dev)
    D = torch.randn(d, device=dev)
    ins = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D)]
    ref_ins = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D)]
    ours = selective_scan(*ins)
    theirs = selective_scan_fn(*ref_ins)
    g = torch.randn_like(ours)
    (ours * g).sum().backward(); (theirs * g).sum().backward()
    print(f"b{b} d{d} n{n} L{L}: max |ours - mamba_ssm| = {(ours - theirs).abs().max().item():.2e}, "
          f"max |theirs| = {theirs.abs().max().item():.2e}")
    for name, a, r in zip("u delta A B C D".split(), ins, ref_ins):
        err = (a.grad - r.grad).abs().max().item() / max(r.grad.abs().max().item(), 1e-12)
        print(f"   grad {name}: max relative difference {err:.2e}")
    for name, fn in [("ours", lambda: selective_scan(u, delta, A, B, C, D)),
                     ("mamba_ssm", lambda: selective_scan_fn(u, delta, A, B, C, D))]:
        with torch.no_grad():
            fn(); torch.cuda.synchronize(); t = time.perf_counter()
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        print(f"   {name}: {(time.perf_counter() - t) / 5 * 1e3:.2f} ms per scan (forward)")
PYEOF
fi

# 4. A bf16 pretraining step (with the backward) per model, 20 and 80 s.
step bf16_pretraining_step 240 $PY "${BENCH[@]}" --mixers "$MODELS,mamba" --precisions bf16 \
    --paper-backward --lengths 20,80 --repeats 5 --out "$OUT/bf16_pretraining_step"

log "done; tables: $OUT/*/paper.md"
