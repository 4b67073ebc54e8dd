"""Work counting: the matrix-product flops of a call (``FlopCounterMode``)
and the element-wise work of the PyTorch Mamba scan (analytic).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch

# Element-wise operations per state element and frame of the PyTorch Mamba
# scan (delta*A, exp2, delta*u*B, a*h + b: 5); C.h is a matmul, counted by
# FlopCounterMode.
SCAN_OPS = 5


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """Flops of a fused attention: QK^T and the weighted sum of values."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn, per_module=None):
    """Matrix-product flops of ``fn()`` (``FlopCounterMode``).

    ``FlopCounterMode`` counts matmuls, convolutions and the fused attention
    kernels it knows; the CPU flash-attention kernel that
    ``scaled_dot_product_attention`` uses is added here (QK^T + AV, like the
    CUDA kernels). Element-wise work is not counted. A dict passed as
    ``per_module`` receives the counts per module (``get_flop_counts()``:
    ``{"<Root>.<module path>": {op: flops}}``, a module's including its
    submodules', backward included).

    Example
    -------
    >>> count_flops(lambda: torch.ones(2, 3) @ torch.ones(3, 4))
    48
    """
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        custom[cpu_flash] = _sdpa_flops
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    if per_module is not None:
        per_module.update(counter.get_flop_counts())
    return counter.get_total_flops()


def scan_flops(model, batch, frames):
    """Element-wise work of the PyTorch Mamba scans of ``model`` for one
    forward of ``batch`` sequences of ``frames`` encoder frames:
    ``SCAN_OPS`` operations per state element (D_in x N) and frame, for every
    ``MambaBlock`` (0 for models without one).

    Example
    -------
    >>> from lobes.nnet.mixers.mamba import BiMamba
    >>> scan_flops(BiMamba(8, d_state=4), batch=2, frames=10)  # 2 blocks
    12800
    """
    from lobes.nnet.mixers.mamba import MambaBlock

    total = 0
    for module in model.modules():
        if isinstance(module, MambaBlock):
            d_inner = module.D.numel()
            total += SCAN_OPS * batch * frames * d_inner * module.d_state
    return total
