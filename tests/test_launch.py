"""The launch path: cached plans, the direct launcher's cache key, the persistent rescale,
FUSEDLOSS_FORCE_COMPILED, and the float32 building blocks the kernels now use."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl

import fusedloss as fl
from fusedloss import _engine, _launch, _runtime
from fusedloss import reference as R
from fusedloss.kernels import mathlib
from fusedloss.regression import _HUBER
from conftest import DEVICE, rel_err

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cpu_only = pytest.mark.skipif(DEVICE.type != "cpu", reason="checks the CPU/interpreter path")


# ----------------------------------------------------------------- the direct launcher's key

def _specialisation(args: list) -> tuple:
    """What Triton's runtime makes of each argument when it compiles for sm_90."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl
    backend = CUDABackend(GPUTarget("cuda", 90, 32))
    return tuple(native_specialize_impl(backend, a, False, True, True) for a in args)


@cpu_only
def test_direct_launch_key_determines_tritons_specialisation(monkeypatch):
    """A compiled kernel is reused for every later call with the same key (plan + pointer
    alignment), so that key must determine Triton's specialisation of every argument: calls
    with one key and different data (offsets, alignments, values) specialise identically."""
    seen: dict = {}
    real = _launch.KernelLauncher.__call__

    def spy(self, grid, key, ptrs, scalars, constexprs, warps):
        spec = (_specialisation(list(ptrs) + list(scalars)), tuple(constexprs.items()), warps)
        assert seen.setdefault((self.name, key), spec) == spec, (self.name, key)
        return real(self, grid, key, ptrs, scalars, constexprs, warps)

    monkeypatch.setattr(_launch.KernelLauncher, "__call__", spy)
    base = torch.randn(4 * 1024 + 8)
    for offset in (0, 1, 4, 3, 0):  # views at 16-byte-aligned and misaligned offsets (floats)
        for n in (1000, 1024, 4096):
            x = base[offset:offset + n].detach().requires_grad_(True)
            t = base[8 - offset:8 - offset + n]
            for w in (None, base[:n] > 0, (base[1:n + 1] > 0)):
                for reduction, af in (("mean", None), ("sum", None),
                                      ("mean", torch.tensor([2.0, 3.0])[offset % 2]),
                                      ("weighted_mean", None), ("none", None)):
                    loss = fl.huber_loss(x, t, reduction, delta=0.5 + offset, weight=w,
                                         avg_factor=af)
                    loss.backward(torch.ones_like(loss) * (1.0 + offset))
    keys = {key for name, key in seen if name.startswith("fused_loss_fwd")}
    assert len(seen) >= 40 and any(k[1] is True for k in keys) and any(k[1] is not True
                                                                        for k in keys)


@cpu_only
def test_plans_are_cached_and_rebuilt_after_clearing(monkeypatch):
    builds = []
    real = _launch._build_plan

    def counting(*args, **kwargs):
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_launch, "_build_plan", counting)
    x = torch.randn(300, requires_grad=True)
    t = torch.randn(300)
    for _ in range(3):
        fl.mse_loss(x, t).backward()
    assert len(builds) == 1
    monkeypatch.setattr(_launch, "_MAX_PLANS", 2)  # many shapes: the cache starts over
    for n in (10, 11, 12, 13, 10):
        xs, ts = torch.randn(n, requires_grad=True), torch.randn(n)
        loss = fl.mse_loss(xs, ts, "sum")
        loss.backward()
        assert rel_err(loss, R.mse_loss(xs.double(), ts.double(), "sum")) <= 1e-6
        assert rel_err(xs.grad, 2 * (xs - ts).detach()) <= 1e-6
    assert len(_launch._PLANS) <= 2


# ----------------------------------------------------------------- the persistent rescale

@cpu_only
@pytest.mark.parametrize("go", [1.0, 2.5])
def test_rescale_runs_a_persistent_grid(monkeypatch, go):
    """The backward's rescale launches at most persistent_programs() programs whatever n is,
    each looping over its blocks; with grad_output 1 it changes nothing."""
    grids = []
    real = _launch.KernelLauncher.__call__

    def spy(self, grid, *args):
        if self.name == "rescale_kernel":
            grids.append(grid)
        return real(self, grid, *args)

    monkeypatch.setattr(_launch.KernelLauncher, "__call__", spy)
    monkeypatch.setattr(_runtime, "persistent_programs", lambda device: 3)
    n = 7 * 4096 + 5  # 8 blocks of 4096 over 3 programs
    with fl.engine_config(block=4096):
        g = torch.randn(n)
        before = g.clone()
        _launch.rescale(g, g, torch.tensor(go), skip_if_equal=True)
        out = torch.empty(n)
        _launch.rescale(before, out, torch.tensor(go), ref=torch.tensor(4.0))
    assert grids == [3, 3]
    assert torch.equal(g, before * go if go != 1.0 else before)
    assert torch.allclose(out, before * (go / 4.0), rtol=1e-6, atol=0)


# ----------------------------------------------------------------- FUSEDLOSS_FORCE_COMPILED

def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",
                                                              "FUSEDLOSS_FORCE_COMPILED")}
    full.update(env, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=120)


def test_force_compiled_switch_takes_the_compiled_path_for_cpu_tensors():
    code = ("import torch, fusedloss as fl\n"
            "from fusedloss import runtime\n"
            "cpu = torch.device('cpu')\n"
            "print(runtime.FORCE_COMPILED, runtime.INTERPRETED, runtime.backend(cpu))\n"
            "try:\n"
            "    fl.huber_loss(torch.randn(8), torch.randn(8))\n"
            "except Exception as e:\n"  # no GPU driver here: the compiled launch must fail
            "    print('launch failed:', type(e).__name__)\n")
    forced = _run(code, FUSEDLOSS_FORCE_COMPILED="1")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines()[0] == "True False compiled"
    assert "launch failed" in forced.stdout  # it tried Triton's compiled path, not the reference
    plain = _run(code)
    assert plain.stdout.splitlines() == ["False False reference"], plain.stderr
    both = _run(code, FUSEDLOSS_FORCE_COMPILED="1", TRITON_INTERPRET="1")  # the interpreter wins
    assert both.stdout.splitlines() == ["False True interpreter"], both.stderr


# ----------------------------------------------------------------- float32 building blocks

@triton.jit
def _log1p_unit_probe(e_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    e = tl.load(e_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, mathlib.log1p_unit(e), mask=mask)


@cpu_only
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 3e-7), (torch.float64, 1e-15)])
def test_log1p_polynomial_accuracy(dtype, bound):
    """log1p(e) for e in [0, 1] (every BCE-with-logits): the float32 polynomial's worst relative
    error over a dense grid, and exact zero at e = 0."""
    e = torch.cat([torch.linspace(0, 1, 200001, dtype=torch.float64),
                   torch.logspace(-30, 0, 2001, dtype=torch.float64)]).to(dtype)
    out = torch.full_like(e, float("nan"))
    _log1p_unit_probe[(triton.cdiv(e.numel(), 65536),)](e, out, e.numel(), BLOCK=65536)
    exact = torch.log1p(e.double())
    rel = ((out.double() - exact).abs() / exact.clamp_min(1e-300))[e > 0]
    assert float(rel.max()) <= bound
    assert float(out[0]) == 0.0


@cpu_only
def test_integer_exponent_variant_equals_the_generic_path():
    """gamma = 2 runs q*q (VARIANT 2); the generic exp2(gamma log2 q) path (VARIANT -1) gives
    the same values and gradients to float32 rounding."""
    spec = fl.focal._FOCAL
    generic = dataclasses.replace(spec, variant=lambda params, binary: -1)
    x = (torch.randn(64, 9) * 4).requires_grad_(True)
    labels = torch.randint(0, 10, (64,))
    results = []
    for s in (spec, generic):
        loss = _engine.apply_loss(s, x, labels, (0.25, 2.0), "sum", None, None, 1.0)
        results.append((loss, torch.autograd.grad(loss, x)[0]))
    assert spec.variant((0.25, 2.0), True) == 2
    assert rel_err(results[0][0], results[1][0]) <= 1e-6
    assert rel_err(results[0][1], results[1][1]) <= 1e-6


# ----------------------------------------------------------------- the fast launch call

def test_fast_launch_passes_the_c_launcher_what_tritons_wrapper_passes():
    """For the installed Triton, calling the C launch function directly (``fast_launch``) hands
    it exactly the arguments Triton's own ``CudaLauncher.__call__`` would (no hooks, no scratch
    memory): checked on a launcher object built without a driver, its C function replaced by a
    recorder."""
    from triton.backends.nvidia.driver import CudaLauncher
    if _launch._wrapper_layout(CudaLauncher) is None:
        pytest.skip(f"triton {triton.__version__}: unknown launcher wrapper, fast path unused")
    calls = []
    run = object.__new__(CudaLauncher)
    run.__dict__.update(
        launch=lambda *args: calls.append(args), num_ctas=1, global_scratch_size=0,
        global_scratch_align=1, profile_scratch_size=0, profile_scratch_align=1,
        launch_cooperative_grid=False, launch_pdl=True, arg_annotations=object(),
        kernel_signature=object(), gsan_enabled=False)
    args = (1234, None, 5678, 4096, 1, 0.5, 1.0, 0.0, 0.0, 0.0, "constexpr", 7)
    config = triton.runtime.driver
    saved = config._active
    config.set_active(object())  # 3.9's wrapper reads the active driver (none on this machine)
    try:
        run(37, 1, 1, 99, "function", "packed", None, None, None, *args)
    finally:
        config._active = saved
    _launch.fast_launch(run)(37, 99, "function", "packed", args)
    assert len(calls) == 2 and calls[0] == calls[1], calls
    run.global_scratch_size = 64  # a kernel that needs scratch memory keeps the wrapper
    assert _launch.fast_launch(run) is None
