"""pytest-benchmark suite over the fusedloss-bench registry (run: pytest bench/ --benchmark-only).

On a machine without CUDA, the fused kernels run under the Triton interpreter: TRITON_INTERPRET=1
is set here, before anything imports triton (set FUSEDLOSS_BENCH_NO_INTERPRET=1 to time the
pure-PyTorch fallback instead). CPU timings say nothing about GPU speed.
"""
import os
import sys

if "triton" not in sys.modules and not os.environ.get("FUSEDLOSS_BENCH_NO_INTERPRET"):
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
