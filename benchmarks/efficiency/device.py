"""The device a run measures: native bf16 support and a one-line
description (processor or GPU, threads, versions).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os
import platform

import torch

from benchmarks.efficiency.workers import worker_allocator_env


def bf16_supported(device="cpu"):
    """Whether bf16 autocast runs natively here (CPU: AVX-512 BF16 / AMX)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def device_description(device, threads):
    """CPU model / GPU name, thread count, bf16 support and versions."""
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        cap = torch.backends.cpu.get_cpu_capability()
        name = (
            f"{name}, {os.cpu_count()} logical cores, ATen {cap}, native bf16 "
            f"{'yes' if bf16_supported('cpu') else 'no'}"
        )
    allocator = worker_allocator_env()
    thp = allocator["THP_MEM_ALLOC_ENABLE"]
    glibc = (
        f"glibc malloc mmap threshold {allocator['MALLOC_MMAP_THRESHOLD_']} B, "
        f"trim threshold {allocator['MALLOC_TRIM_THRESHOLD_']} B"
        if "MALLOC_TRIM_THRESHOLD_" in allocator
        else "glibc malloc defaults"
    )
    return (
        f"{name}; torch {torch.__version__}; {threads} threads "
        f"(torch.set_num_threads); subprocess points: THP_MEM_ALLOC_ENABLE={thp}, {glibc}"
    )
