"""pytest-benchmark tests over the same registry as ``fusedloss-bench`` (fwd+bwd, grad_output 1).

CPU: 2^12 elements, fp32, eager vs fused (quick; the interpreter is slow by design).
CUDA: 2^16, 2^20, 2^24 elements, fp32 and bf16, no weight and broadcast weight, eager vs
torch.compile vs fused. Each call is synchronised, so this times host + device per step;
``fusedloss-bench`` (CUDA events via do_bench, L2-rotated inputs, bytes and GB/s) is the
reference measurement. Groups compare the implementations of one case:

    pytest bench/ --benchmark-only --benchmark-group-by=group --benchmark-columns=median,iqr,rounds
"""
import pytest
import torch

from fusedloss.bench import CASES, DTYPES, GradOutputs, make_step
from fusedloss.bench._cli import impl_functions
from fusedloss.bench._report import fmt_n

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"
SIZES = [2**16, 2**20, 2**24] if CUDA else [2**12]
DTYPE_NAMES = ["fp32", "bf16"] if CUDA else ["fp32"]
WEIGHTS = ["none", "broadcast"] if CUDA else ["none"]
IMPLS = ["eager", "compile", "fused"] if CUDA else ["eager", "fused"]

PARAMS = [pytest.param(case, n, dt, wt, impl,
                       id=f"{case.name}-{fmt_n(n)}-{dt}-{wt}-{impl}")
          for case in CASES for dt in DTYPE_NAMES for wt in WEIGHTS for n in SIZES
          for impl in IMPLS]


@pytest.mark.parametrize("case, n, dtype, weight, impl", PARAMS)
def test_fwdbwd(benchmark, case, n, dtype, weight, impl):
    fn = impl_functions(case, [impl], "false").get(impl)
    if fn is None:
        pytest.skip(f"{case.fused_target} not in this fusedloss")
    gen = torch.Generator(device=DEVICE)
    gen.manual_seed(n)
    sets = []
    for _ in range(4 if CUDA else 2):  # rotate inputs (never zeros)
        x, t, w = case.make_inputs(n, DTYPES[dtype], weight, DEVICE, gen)
        sets.append((x.requires_grad_(True), t, w))
    step = make_step(fn, sets, "fwdbwd", 1.0, GradOutputs())
    step()  # compile / JIT outside the timing
    floor, io = case.bytes_model("fwdbwd", n, DTYPES[dtype], weight)
    benchmark.group = f"{case.name} {fmt_n(n)} {dtype} w={weight}"
    benchmark.extra_info.update(impl=impl, floor_bytes=floor, io=io, device=str(DEVICE))
    if CUDA:
        torch.cuda.synchronize()

        def run():
            step()
            torch.cuda.synchronize()
        benchmark(run)
    else:
        benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median:
        benchmark.extra_info["GBps_median"] = floor / stats.stats.median / 1e9
