"""Where the kernels run, and the launch configuration every launch reads.

* **CUDA tensors** run compiled Triton kernels.
* **CPU tensors** run the same kernels under the Triton interpreter when ``TRITON_INTERPRET=1``
  was set before Python started (how the tests run); with ``FUSEDLOSS_FORCE_COMPILED=1`` they take
  the compiled path instead (for tools that put a stub CUDA driver under Triton, such as
  ``../shared/tools/gpuproxy``: the kernels are compiled for the GPU and "launched" on CPU
  pointers, so nothing is computed); otherwise they fall back to ``fusedloss.reference``.

Interpreted or compiled is fixed when a kernel is decorated (shared notes, triton-on-cpu.md 7b),
so both switches are read once, at import.
"""
from __future__ import annotations

import collections
import contextlib
import os
from typing import Any, Optional

import torch
import triton

from .kernels import engine as K

try:  # the interpreter decides at decoration time
    from triton.runtime.interpreter import InterpretedFunction as _Interpreted
    INTERPRETED = isinstance(K.fused_loss_fwd_kernel, _Interpreted)
except ImportError:  # pragma: no cover - future triton
    INTERPRETED = False

#: ``FUSEDLOSS_FORCE_COMPILED=1``: CPU tensors take the compiled Triton path (no interpreter)
FORCE_COMPILED = os.environ.get("FUSEDLOSS_FORCE_COMPILED", "0") not in ("", "0") and not INTERPRETED

#: kernel launches by name since import (for benchmarks and the launch-count tests)
LAUNCH_COUNTS: collections.Counter = collections.Counter()

_CONFIG: dict[str, Any] = {"block": None, "one_launch": False, "poison": False}
#: what of the configuration a launch plan depends on (kept in step by engine_config)
CONFIG_KEY: tuple = (None, False, False)


@contextlib.contextmanager
def engine_config(*, block: Optional[int] = None, one_launch: Optional[bool] = None,
                  poison: Optional[bool] = None):
    """Temporarily override the launch configuration (tests and tuning).

    block: elements per program (a power of two). one_launch: finalise scalar reductions in the
    forward launch itself with an integer ticket (default off until verified on a GPU).
    poison: fill every buffer the kernels write with NaN first, so an element a kernel forgot
    to write shows up in a test.
    """
    saved = dict(_CONFIG)
    if block is not None:
        if block < 16 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {block}")
        _CONFIG["block"] = block
    if one_launch is not None:
        _CONFIG["one_launch"] = bool(one_launch)
    if poison is not None:
        _CONFIG["poison"] = bool(poison)
    _set_config_key()
    try:
        yield
    finally:
        _CONFIG.clear()
        _CONFIG.update(saved)
        _set_config_key()


def _set_config_key() -> None:
    global CONFIG_KEY
    CONFIG_KEY = (_CONFIG["block"], _CONFIG["one_launch"], _CONFIG["poison"])


_CPU_TRITON = INTERPRETED or FORCE_COMPILED


def uses_triton(device: torch.device) -> bool:
    """CUDA tensors run the Triton kernels; CPU tensors do under TRITON_INTERPRET=1 (or
    FUSEDLOSS_FORCE_COMPILED=1) and fall back to the pure-PyTorch reference otherwise."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _CPU_TRITON



def pick_block(n: int) -> int:
    """Elements per program: a fixed table keyed on size (never timing-based, so a reduction's
    order depends only on n). Under the interpreter the cost is per program (~1.7 ms), so
    blocks grow to keep at most 16 programs up to 2^20 elements."""
    if _CONFIG["block"] is not None:
        return _CONFIG["block"]
    if INTERPRETED:
        return min(max(4096, triton.next_power_of_2(max(1, -(-n // 16)))), 65536)
    return 1024 if n <= 1024 else 4096


def num_warps(block: int) -> int:
    return 4 if block <= 1024 else 8


_SM_COUNT: dict = {}


def persistent_programs(device: torch.device) -> int:
    """Programs of a grid-stride (persistent) launch: 4 per SM (an H100 has 132 SMs; the CPU
    paths use that figure for the compiled path and 4 programs under the interpreter)."""
    count = _SM_COUNT.get(device)
    if count is None:
        if INTERPRETED:
            count = 1
        elif device.type == "cuda":
            count = torch.cuda.get_device_properties(device).multi_processor_count
        else:
            count = 132
        _SM_COUNT[device] = count
    return 4 * count


def alloc(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer for a kernel to fill (NaN-poisoned under engine_config(poison=True))."""
    if _CONFIG["poison"]:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def alloc_like(like: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    """``alloc`` on ``like``'s device, contiguous; ``empty_like`` when that is the same thing
    (the cheapest allocation call, ~1 us less host time than ``torch.empty``)."""
    if _CONFIG["poison"]:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    if shape is like.shape and dtype == like.dtype and like.is_contiguous():
        return torch.empty_like(like)
    return like.new_empty(shape, dtype=dtype)
