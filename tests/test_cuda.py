"""Checks that need a GPU (run by bench/gpu_check.sh with FUSEDLOSS_TEST_DEVICE=cuda).

On a CPU-only machine they are skipped: the interpreter cannot capture CUDA graphs, has no sync
debug mode, and cannot hold a 2^31-element tensor in 2 cores' time.
"""
from __future__ import annotations

import pytest
import torch

import fusedloss as fl
from fusedloss import reference as R
from conftest import DEVICE, rel_err

pytestmark = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")


def _inputs(n=1 << 20, dtype=torch.float32):
    x = torch.randn(n, device=DEVICE, dtype=dtype, requires_grad=True)
    t = torch.randn(n, device=DEVICE, dtype=dtype)
    w = torch.rand(n // 4, 4, device=DEVICE)[:, :1].expand(n // 4, 4).reshape(-1) > 0.3
    return x, t, w


def test_no_sync_under_sync_debug_error_mode():
    x, t, w = _inputs()
    af = (w.sum() + 1).float()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = (fl.huber_loss(x, t, "weighted_mean", weight=w, loss_weight=0.05)
                + fl.mse_loss(x, t, "mean", weight=w, avg_factor=af))
        loss.backward(torch.tensor(2.0, device=DEVICE))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x.grad).all()


def test_cuda_graph_replay_matches_eager():
    x, t, w = _inputs(1 << 18)
    static_x = x.detach().clone().requires_grad_(True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles the kernels) outside the capture
        for _ in range(2):
            static_x.grad = None
            fl.huber_loss(static_x, t, "weighted_mean", weight=w).backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    static_x.grad = None
    with torch.cuda.graph(graph):
        static_loss = fl.huber_loss(static_x, t, "weighted_mean", weight=w)
        static_loss.backward()
    for _ in range(3):
        new = torch.randn_like(static_x)
        with torch.no_grad():
            static_x.copy_(new)
        graph.replay()
        x64 = new.double().requires_grad_(True)
        ref = R.huber_loss(x64, t.double(), "weighted_mean", weight=w)
        assert rel_err(static_loss, ref) <= 1e-6
        assert rel_err(static_x.grad, torch.autograd.grad(ref, x64)[0]) <= 1e-6


@pytest.mark.parametrize("one_launch", [False, True])
def test_bitwise_repeatable_on_cuda(one_launch):
    x, t, w = _inputs(1 << 22)
    with fl.engine_config(one_launch=one_launch):
        runs = []
        for _ in range(20):
            loss = fl.huber_loss(x, t, "weighted_mean", weight=w)
            g, = torch.autograd.grad(loss, x)
            runs.append((loss, g))
    with fl.engine_config(one_launch=False):
        base = fl.huber_loss(x, t, "weighted_mean", weight=w)
    for loss, g in runs:
        assert torch.equal(loss, runs[0][0]) and torch.equal(g, runs[0][1])
        assert torch.equal(loss, base)  # the ticket sums the same partials in the same order


@pytest.mark.slow
def test_more_than_2_31_elements_bf16():
    """2^31 + 1027 bf16 elements (4 GiB a tensor): int64 offsets end to end, compared chunk by
    chunk with the reference."""
    n = 2 ** 31 + 1027
    free, _ = torch.cuda.mem_get_info()
    if free < 20 * 2 ** 30:
        pytest.skip(f"needs ~20 GiB free, {free / 2**30:.1f} GiB available")
    x = torch.randn(n, device=DEVICE, dtype=torch.bfloat16).requires_grad_(True)
    t = torch.randn(n, device=DEVICE, dtype=torch.bfloat16)
    loss = fl.huber_loss(x, t, "sum", delta=0.5)
    loss.backward()
    total = torch.zeros((), device=DEVICE, dtype=torch.float64)
    chunk = 2 ** 28
    for start in range(0, n, chunk):
        xs = x.detach()[start:start + chunk].double().requires_grad_(True)
        part = R.huber_loss(xs, t[start:start + chunk].double(), "sum", delta=0.5)
        g, = torch.autograd.grad(part, xs)
        assert rel_err(x.grad[start:start + chunk], g) <= 4e-3  # bf16 storage of the gradient
        total += part.detach()
    assert rel_err(loss, total) <= 1e-5
