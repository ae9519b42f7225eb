"""Engine behaviour: scenarios from users' code, loss scaling, autocast, determinism, edge cases,
the backward protocol, launch counts, errors, addressing beyond 2^31, no host syncs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import fusedloss as fl
from fusedloss import _engine, _launch, _plan
from fusedloss import reference as R
from fusedloss.kernels import engine as K
from conftest import DEVICE, rel_err, trap_host_syncs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------- users' scenarios

def _cotracker_huber(x, y, delta):  # CoTracker3 losses.py, literally
    diff = x - y
    abs_diff = diff.abs()
    flag = (abs_diff <= delta).float()
    return flag * 0.5 * diff ** 2 + (1 - flag) * delta * (abs_diff - 0.5 * delta)


def _reduce_masked_mean(x, mask):  # CoTracker3 model_utils.py
    return (x * mask).sum() / (1e-6 + mask.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cotracker_sequence_loss(dtype):
    """I refinement iterations, weights 0.8^(I-i-1), Huber delta 6 on visible and (issue #154)
    occluded points, masked mean per iteration, averaged over iterations: one fused call per
    term, normaliser as a device tensor (no sync)."""
    I, B, T, N, gamma, delta = 4, 2, 6, 12, 0.8, 6.0
    gt = torch.randn(B, T, N, 2, device=DEVICE) * 8
    preds = (gt + torch.randn(I, B, T, N, 2, device=DEVICE) * 6).to(dtype).requires_grad_(True)
    vis = (torch.rand(B, T, N, device=DEVICE) > 0.3).float()
    valid = (torch.rand(B, T, N, device=DEVICE) > 0.1).float()

    p64 = preds.detach().double().requires_grad_(True)
    expected = 0.0
    for mask, scale in ((valid * vis, 0.05), (valid * (1 - vis), 0.01)):
        total = 0.0
        for i in range(I):
            per_point = _cotracker_huber(p64[i], gt.double(), delta).mean(dim=3)
            total = total + gamma ** (I - i - 1) * _reduce_masked_mean(per_point, mask.double())
        expected = expected + scale * total / I

    iter_w = torch.tensor([gamma ** (I - i - 1) for i in range(I)], device=DEVICE).view(I, 1, 1, 1, 1)
    ours = 0.0
    for mask, scale in ((valid * vis, 0.05), (valid * (1 - vis), 0.01)):
        weight = iter_w * mask[..., None]  # (I, 1, 1, 1, 1) x (B, T, N, 1): broadcast, no copy of preds
        norm = 2 * I * (1e-6 + mask.sum())  # the mean over 2 coordinates and I iterations
        ours = ours + fl.huber_loss(preds, gt, "mean", delta=delta, weight=weight,
                                    avg_factor=norm, loss_weight=scale)
    assert rel_err(ours, expected) <= 1e-5  # inputs are exact in both dtypes: only fp32 math differs
    go = torch.tensor(3.0, device=DEVICE)
    g, = torch.autograd.grad(ours, preds, go)
    rg, = torch.autograd.grad(expected, p64, go.double())
    assert rel_err(g, rg) <= (2e-6 if dtype == torch.float32 else 8e-3)


def test_cotracker_weighted_mean_is_reduce_masked_mean():
    x = torch.randn(2, 5, 7, 2, device=DEVICE, requires_grad=True)
    y = torch.randn(2, 5, 7, 2, device=DEVICE)
    vis = torch.rand(2, 5, 7, 1, device=DEVICE) > 0.5
    ours = fl.huber_loss(x, y, "weighted_mean", delta=6.0, weight=vis)
    x64 = x.detach().double().requires_grad_(True)
    m = vis.double().expand(x.shape)
    expected = (_cotracker_huber(x64, y.double(), 6.0) * m).sum() / m.sum()  # exact, no eps
    assert rel_err(ours, expected) <= 1e-6
    assert rel_err(torch.autograd.grad(ours, x)[0], torch.autograd.grad(expected, x64)[0]) <= 1e-6


def test_deeplabcut_weighted_heatmap_mse():
    """DeepLabCut WeightedMSECriterion: sum(mse * w) / n, n = non-zero weights after broadcast
    (n = 1 if 0); visibility -1 (not labelled) -> weight 0. Here without the host sync."""
    B, K_, H, W = 3, 5, 8, 8
    heat = torch.randn(B, K_, H, W, device=DEVICE, requires_grad=True)
    target = torch.rand(B, K_, H, W, device=DEVICE)
    visibility = torch.randint(-1, 2, (B, K_), device=DEVICE)
    weights = torch.ones(B, K_, device=DEVICE)
    weights[visibility == -1] = 0.0
    kp_weight = weights.view(B, K_, 1, 1)

    h64 = heat.detach().double().requires_grad_(True)
    w_full = kp_weight.double().expand(B, K_, H, W)
    n = int((w_full != 0).sum())
    expected = (F.mse_loss(h64, target.double(), reduction="none") * w_full).sum() / (n if n else 1)

    count = ((kp_weight != 0).sum() * H * W).clamp_min(1)  # stays on the device
    ours = fl.mse_loss(heat, target, "mean", weight=kp_weight, avg_factor=count)
    assert rel_err(ours, expected) <= 1e-6
    assert rel_err(torch.autograd.grad(ours, heat)[0], torch.autograd.grad(expected, h64)[0]) <= 1e-6

    # unlabelled keypoints may hold garbage (NaN) and must not leak
    target_nan = target.clone()
    target_nan[visibility == -1] = float("nan")
    ours_nan = fl.mse_loss(heat, target_nan, "mean", weight=kp_weight, avg_factor=count)
    assert torch.isfinite(ours_nan) and rel_err(ours_nan, expected) <= 1e-6


# ----------------------------------------------------------------- loss scaling and autocast

@pytest.mark.slow
@pytest.mark.parametrize("fn", [fl.mse_loss, fl.huber_loss])
def test_fp16_loss_scale_2_20(fn):
    """N = 2^20, "mean", grad_output = 2^16: the fp16 gradient is the exact gradient x 2^16
    rounded once to fp16 (every step here is exact in fp32), so no extra zeros."""
    n = 2 ** 20
    x = (torch.randn(n, device=DEVICE) * 0.5).half().requires_grad_(True)
    t = (torch.randn(n, device=DEVICE) * 0.5).half()
    loss = fn(x, t, "mean")
    assert loss.dtype == torch.float32
    (loss * 2.0 ** 16).backward()
    x64 = x.detach().double().requires_grad_(True)
    ref = getattr(R, fn.__name__)(x64, t.double(), "mean")
    exact, = torch.autograd.grad(ref * 2.0 ** 16, x64)
    assert torch.equal(x.grad, exact.half())
    assert int((x.grad == 0).sum()) == int((exact.half() == 0).sum())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_reads_half_inputs_as_they_are(dtype, monkeypatch):
    seen = []
    plan = _launch.forward_plan

    def spy(spec, variant, input, target, *args, **kwargs):
        seen.append((input.dtype, target.dtype))
        return plan(spec, variant, input, target, *args, **kwargs)

    monkeypatch.setattr(_launch, "forward_plan", spy)
    lin = torch.nn.Linear(16, 8).to(DEVICE)
    inp = torch.randn(32, 16, device=DEVICE)
    target = torch.randn(32, 8, device=DEVICE, dtype=dtype)
    with torch.autocast(DEVICE.type, dtype=dtype):
        pred = lin(inp)
        assert pred.dtype == dtype
        ours = fl.mse_loss(pred, target)
        theirs = F.mse_loss(pred, target)
    assert seen == [(dtype, dtype)]  # no fp32 copy of the inputs was made
    assert ours.dtype == theirs.dtype == torch.float32
    assert rel_err(ours, theirs) <= 1e-6
    g_ours = torch.autograd.grad(ours, lin.weight, retain_graph=True)[0]
    g_theirs = torch.autograd.grad(theirs, lin.weight)[0]
    assert rel_err(g_ours, g_theirs) <= 1e-2


# ----------------------------------------------------------------- determinism and config

@pytest.mark.parametrize("one_launch", [False, True])
def test_deterministic_repeats_and_one_launch_equal(one_launch):
    x = torch.randn(20000, device=DEVICE, requires_grad=True)
    t = torch.randn(20000, device=DEVICE)
    w = torch.rand(20000, device=DEVICE)
    results = []
    for _ in range(2):
        for ol in (False, one_launch):
            with fl.engine_config(block=1024, one_launch=ol, poison=True):
                loss = fl.huber_loss(x, t, "weighted_mean", weight=w)
                g, = torch.autograd.grad(loss, x)
            results.append((loss, g))
    for loss, g in results[1:]:  # bitwise equal, across repeats and finalize modes
        assert torch.equal(loss, results[0][0]) and torch.equal(g, results[0][1])


def test_elementwise_outputs_independent_of_block_size():
    x = torch.randn(5000, device=DEVICE, requires_grad=True)
    t = torch.randn(5000, device=DEVICE)
    outs = []
    for block in (256, 1024, 8192):
        with fl.engine_config(block=block):
            none = fl.huber_loss(x, t, "none")
            mean = fl.huber_loss(x, t, "mean")
            g, = torch.autograd.grad(mean, x)
        outs.append((none, mean, g))
    for none, mean, g in outs[1:]:
        assert torch.equal(none, outs[0][0]) and torch.equal(g, outs[0][2])
        assert abs(float(mean - outs[0][1])) <= 5000 * 6e-8 * float(outs[0][1])


def test_engine_config_rejects_bad_block():
    with pytest.raises(ValueError, match="block"):
        with fl.engine_config(block=1000):
            pass


# ----------------------------------------------------------------- edge cases

@pytest.mark.parametrize("fn", [fl.huber_loss, fl.l1_loss, fl.mse_loss, fl.smooth_l1_loss])
def test_empty_tensors(fn):
    x = torch.empty(0, 3, device=DEVICE, requires_grad=True)
    t = torch.empty(0, 3, device=DEVICE)
    assert torch.isnan(fn(x, t, "mean"))
    assert float(fn(x, t, "sum")) == 0.0
    wm = fn(x, t, "weighted_mean", weight=torch.ones(0, 3, device=DEVICE))
    assert float(wm) == 0.0
    assert fn(x, t, "none").shape == (0, 3)
    g, = torch.autograd.grad(fn(x, t, "sum"), x)
    assert g.shape == (0, 3)
    # torch agrees on mean and sum of empty
    assert torch.isnan(F.mse_loss(x, t)) and float(F.mse_loss(x, t, reduction="sum")) == 0.0


def test_zero_dim_inputs():
    x = torch.tensor(2.5, device=DEVICE, requires_grad=True)
    t = torch.tensor(0.5, device=DEVICE)
    out = fl.huber_loss(x, t, "none")
    assert out.shape == () and rel_err(out, F.huber_loss(x, t, reduction="none")) <= 1e-7
    g, = torch.autograd.grad(fl.mse_loss(x, t, "mean"), x)
    assert float(g) == pytest.approx(4.0)


@pytest.mark.parametrize("fn", [fl.huber_loss, fl.l1_loss, fl.mse_loss, fl.smooth_l1_loss])
def test_weighted_mean_with_empty_mask_is_zero_not_nan(fn):
    x = torch.full((50,), float("nan"), device=DEVICE, requires_grad=True)
    t = torch.randn(50, device=DEVICE, requires_grad=True)
    w = torch.zeros(50, device=DEVICE, dtype=torch.bool)
    with fl.engine_config(poison=True):
        loss = fn(x, t, "weighted_mean", weight=w)
        gx, gt = torch.autograd.grad(loss, (x, t), torch.tensor(2.0, device=DEVICE))
    assert float(loss) == 0.0
    assert torch.equal(gx, torch.zeros_like(gx)) and torch.equal(gt, torch.zeros_like(gt))


@pytest.mark.parametrize("fn,tfn", [(fl.huber_loss, F.huber_loss), (fl.l1_loss, F.l1_loss),
                                    (fl.mse_loss, F.mse_loss), (fl.smooth_l1_loss, F.smooth_l1_loss)])
def test_nan_inf_propagate_as_eager(fn, tfn):
    vals = [float("nan"), float("inf"), -float("inf"), 1.0, -2.0, 0.0]
    x = torch.tensor([a for a in vals for _ in vals], device=DEVICE, requires_grad=True)
    t = torch.tensor([b for _ in vals for b in vals], device=DEVICE)
    ours, theirs = fn(x, t, "none"), tfn(x, t, reduction="none")
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    assert torch.equal(ours.nan_to_num(), theirs.nan_to_num())
    go = torch.rand_like(ours) + 0.5
    g_ours, = torch.autograd.grad(ours, x, go)
    g_theirs, = torch.autograd.grad(theirs, x, go)
    assert torch.equal(torch.isnan(g_ours), torch.isnan(g_theirs))
    assert torch.allclose(g_ours.nan_to_num(), g_theirs.nan_to_num())
    assert torch.isnan(fn(x, t, "mean")) and torch.isnan(tfn(x, t))


def test_too_many_dims_falls_back_to_copies():
    base = torch.randn(2, 3, 2, 3, 2, 3, 2, 3, device=DEVICE)
    x = base.permute(7, 6, 5, 4, 3, 2, 1, 0)  # 8 non-mergeable dims
    t = torch.randn(x.shape, device=DEVICE)
    w = torch.rand(1, 2, 1, 2, 1, 2, 1, 2, device=DEVICE)
    ours = fl.mse_loss(x, t, "sum", weight=w)
    expected = ((x - t) ** 2 * w).sum()
    assert rel_err(ours, expected) <= 1e-6


def test_same_tensor_as_input_and_target_and_no_aliasing():
    x = torch.randn(100, device=DEVICE, requires_grad=True)
    out = fl.mse_loss(x, x, "none")
    assert float(out.abs().sum()) == 0.0
    g, = torch.autograd.grad(fl.huber_loss(x, x * 0.5, "sum"), x)
    assert rel_err(g, torch.autograd.grad(F.huber_loss(x, x * 0.5, reduction="sum"), x)[0]) <= 1e-6
    y = torch.randn(100, device=DEVICE)
    none = fl.l1_loss(x.detach(), y, "none")
    assert none.data_ptr() not in (x.data_ptr(), y.data_ptr())


# ----------------------------------------------------------------- backward protocol

def test_retain_graph_twice_and_accumulation():
    x = torch.randn(3000, device=DEVICE, requires_grad=True)
    t = torch.randn(3000, device=DEVICE)
    loss = fl.huber_loss(x, t, "mean", loss_weight=0.25)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    (loss * 3).backward()
    x64 = x.detach().double().requires_grad_(True)
    exact, = torch.autograd.grad(R.huber_loss(x64, t.double(), "mean", loss_weight=0.25), x64)
    assert rel_err(first, exact) <= 1e-6
    assert rel_err(x.grad, 4 * exact) <= 1e-6


def test_autograd_grad_results_never_mutated_later():
    x = torch.randn(500, device=DEVICE, requires_grad=True)
    t = torch.randn(500, device=DEVICE)
    loss = fl.mse_loss(x, t, "sum")
    g1, = torch.autograd.grad(loss, x, retain_graph=True)  # grad_output 1: the saved buffer
    kept = g1.clone()
    g2, = torch.autograd.grad(loss, x, torch.tensor(-2.0, device=DEVICE), retain_graph=True)
    g3, = torch.autograd.grad(loss, x, torch.tensor(5.0, device=DEVICE))
    assert torch.equal(g1, kept)
    assert torch.allclose(g2, -2 * kept) and torch.allclose(g3, 5 * kept)


def test_losses_summed_and_reused():
    x = torch.randn(400, device=DEVICE, requires_grad=True)
    t = torch.randn(400, device=DEVICE)
    a = fl.huber_loss(x, t, loss_weight=0.05)
    b = fl.l1_loss(x, t, loss_weight=0.01)
    total = a + b + a * 2  # a is used twice: its backward sees grad_output 3
    total.backward()
    x64 = x.detach().double().requires_grad_(True)
    ref = 3 * R.huber_loss(x64, t.double(), loss_weight=0.05) + R.l1_loss(x64, t.double(), loss_weight=0.01)
    assert rel_err(x.grad, torch.autograd.grad(ref, x64)[0]) <= 1e-6


def test_double_backward_raises():
    x = torch.randn(10, device=DEVICE, requires_grad=True)
    loss = fl.mse_loss(x, torch.zeros(10, device=DEVICE))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_fused_backward_is_free_when_grad_output_is_one():
    """grad_output == 1: the saved gradient is returned as is (x.grad takes its memory) and
    fwd+bwd costs two launches when one program covers the input."""
    x = torch.randn(1000, device=DEVICE, requires_grad=True)
    t = torch.randn(1000, device=DEVICE)
    before = dict(_engine.LAUNCH_COUNTS)
    loss = fl.huber_loss(x, t, loss_weight=0.05)
    loss.backward()
    launched = {k: v - before.get(k, 0) for k, v in _engine.LAUNCH_COUNTS.items() if v - before.get(k, 0)}
    assert launched == {"fused_loss_fwd_kernel": 1, "rescale_kernel": 1}
    x64 = x.detach().double().requires_grad_(True)
    exact, = torch.autograd.grad(R.huber_loss(x64, t.double(), loss_weight=0.05), x64)
    assert rel_err(x.grad, exact) <= 1e-6


def test_modules_match_functional():
    x = torch.randn(4, 6, device=DEVICE)
    t = torch.randn(4, 6, device=DEVICE)
    w = torch.rand(4, 1, device=DEVICE)
    pairs = [(fl.HuberLoss("sum", delta=0.5, loss_weight=2.0), lambda: fl.huber_loss(x, t, "sum", 0.5, w, loss_weight=2.0)),
             (fl.SmoothL1Loss(beta=0.3), lambda: fl.smooth_l1_loss(x, t, beta=0.3, weight=w)),
             (fl.L1Loss("weighted_mean"), lambda: fl.l1_loss(x, t, "weighted_mean", w)),
             (fl.MSELoss(loss_weight=0.1), lambda: fl.mse_loss(x, t, weight=w, loss_weight=0.1))]
    for module, functional in pairs:
        assert torch.equal(module(x, t, w), functional())
    assert "delta=0.5" in repr(pairs[0][0])


# ----------------------------------------------------------------- addressing beyond 2^31

def test_plan_constants_agree():
    assert _plan.MAX_DIMS == K.MAX_DIMS


def test_collapse_merges_what_is_jointly_contiguous():
    # tracks (B, T, N, 2) with visibility (B, T, N, 1): two dims remain, x is row-major
    shape = (2, 8, 16, 2)
    x_strides = (256, 32, 2, 1)
    w_strides = (128, 16, 1, 0)
    plan = _plan.collapse(shape, [x_strides, x_strides, w_strides])
    assert plan.sizes == (256, 2)
    assert plan.strides == ((2, 1), (2, 1), (1, 0))
    assert plan.contiguous == (True, True, False)
    # size-1 dims vanish; everything contiguous collapses to one dim
    assert _plan.collapse((1, 5, 1, 4), [(20, 4, 4, 1)]).sizes == (20,)
    assert _plan.collapse((), [()]).sizes == ()


@triton.jit
def _offsets_probe(idx_ptr, out_ptr, NDIM: tl.constexpr, IDX64: tl.constexpr,
                   ZA: tl.constexpr, ZB: tl.constexpr, ZC: tl.constexpr,
                   n0, n1, n2, n3, n4, n5, m0, m1, m2, m3, m4, a0, a1, a2, a3, a4, a5,
                   b0, b1, b2, b3, b4, b5, c0, c1, c2, c3, c4, c5, COUNT: tl.constexpr):
    i = tl.arange(0, COUNT)
    offs = tl.load(idx_ptr + i)
    oa, ob, oc, col = K.operand_offsets(offs, NDIM, IDX64, ZA, ZB, ZC,
                                        n0, n1, n2, n3, n4, n5, m0, m1, m2, m3, m4,
                                        a0, a1, a2, a3, a4, a5, b0, b1, b2, b3, b4, b5,
                                        c0, c1, c2, c3, c4, c5)
    tl.store(out_ptr + i, oa.to(tl.int64))
    tl.store(out_ptr + COUNT + i, ob.to(tl.int64))
    tl.store(out_ptr + 2 * COUNT + i, oc.to(tl.int64))
    tl.store(out_ptr + 3 * COUNT + i, col.to(tl.int64))


def _check_offsets(shape, strides, idx, idx64):
    """operand_offsets (the kernel's own code) against the uncollapsed formula."""
    plan = _plan.collapse(shape, strides)
    count = idx.numel()
    out = torch.zeros(4 * count, dtype=torch.int64)
    _offsets_probe[(1,)](idx.to(torch.int64 if idx64 else torch.int32), out, plan.ndim, idx64,
                         *plan.zero_masks(), *plan.kernel_args(), COUNT=count)
    for k, i in enumerate(idx.tolist()):
        for op in range(3):
            expected = _plan.element_offset(i, plan, op)
            rem, direct = i, 0  # direct, uncollapsed formula
            for size, stride in zip(reversed(shape), reversed(strides[op])):
                direct += (rem % size) * stride
                rem //= size
            assert expected == direct
            assert int(out[count * op + k]) == expected, (op, i)
        assert int(out[3 * count + k]) == i % plan.sizes[-1]  # innermost index (class column)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="index-math unit test runs the interpreter")
def test_operand_offsets_beyond_2_31():
    """The kernel's own int64 offset code with sizes/strides/indices past 2^31, no allocation."""
    shape = (3, 2 ** 20, 5, 2 ** 11 + 3)  # 3.2e10 elements
    x_strides = _plan.row_major_strides(shape)
    t_strides = (0,) + _plan.row_major_strides(shape[1:])  # broadcast over dim 0
    w_strides = (7 * 2 ** 33, 1, 0, 2 ** 31 + 11)  # arbitrary, huge
    n = 1
    for s in shape:
        n *= s
    idx = torch.tensor([0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 5, 2 ** 33 + 12345, n - 2, n - 1],
                       dtype=torch.int64)
    _check_offsets(shape, [x_strides, t_strides, w_strides], idx, True)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="index-math unit test runs the interpreter")
@pytest.mark.parametrize("shape,strides", [
    # CoTracker: (I, B*T*N, 2) tracks, target broadcast over I, weight over the coordinates
    ((4, 262144, 2), [(524288, 2, 1), (0, 2, 1), (262144, 1, 0)]),
    # class-index one-hot: (N, C=80) logits, labels per row
    ((16384, 80), [(80, 1), (1, 0), (0, 1)]),
    # six dims, odd sizes, transposed and broadcast operands near the int32 limit
    ((3, 5, 7, 11, 13, 17), [(1, 3, 15, 105, 1155, 15015), (0, 7 * 2 ** 20, 2 ** 20, 2 ** 16, 1, 0),
                             (2 ** 27, 0, 3 * 2 ** 22, 0, 2 ** 9, 1)]),
    # a large divisor that is no power of two, n just below 2^31
    ((3, 715827882), [(715827882, 1), (0, 1), (1, 0)]),
])
def test_operand_offsets_int32_magic_division(shape, strides):
    """The int32 path divides by magic numbers: exact for every index the launch can form."""
    n = 1
    for s in shape:
        n *= s
    g = torch.Generator().manual_seed(n % 1000)
    edges = [0, 1, 2, n // 2, n - 2, n - 1] + [s * k for s in shape for k in (1, 2)]
    idx = torch.tensor(sorted({i for i in edges if 0 <= i < n})
                       + torch.randint(0, n, (64,), generator=g).tolist(), dtype=torch.int64)
    idx = idx[: 1 << (idx.numel().bit_length() - 1)]  # a power of two for tl.arange
    _check_offsets(shape, strides, idx, False)


def test_udiv_magic_is_exact():
    """floor(n / d) == ((n * m) >> 32) >> s for 31-bit n: edge dividends, many divisors."""
    g = torch.Generator().manual_seed(5)
    divisors = list(range(2, 2049)) + [2 ** k + j for k in range(11, 31) for j in (-1, 0, 1, 3)]
    divisors += torch.randint(2, 2 ** 31 - 1, (500,), generator=g).tolist()
    for d in divisors:
        magic = _plan.udiv_magic(d)
        m, s = magic & 0xFFFFFFFF, (magic >> 32) - 1
        assert 2 ** 31 <= m < 2 ** 32 and magic >= 2 ** 32
        top = (2 ** 31 - 1) // d * d
        for n in (0, 1, d - 1, d, d + 1, top - 1, top, 2 ** 31 - 1, 2 ** 31 - 2):
            if 0 <= n < 2 ** 31:
                assert ((n * m) >> 32) >> s == n // d, (d, n)


# ----------------------------------------------------------------- no host syncs


def test_no_host_sync_in_forward_and_backward(monkeypatch):
    x = torch.randn(3000, device=DEVICE, requires_grad=True)
    t = torch.randn(3000, device=DEVICE)
    w = torch.rand(3000, device=DEVICE) > 0.5
    af = torch.tensor(7.0, device=DEVICE)
    lw = torch.tensor(0.5, device=DEVICE)
    calls = trap_host_syncs(monkeypatch)
    with fl.engine_config(block=1024):
        losses = [fl.huber_loss(x, t, "weighted_mean", weight=w, loss_weight=lw),
                  fl.mse_loss(x, t, "mean", weight=w, avg_factor=af),
                  fl.l1_loss(x, t, "none", weight=w).sum()]
        sum(losses).backward(torch.tensor(3.0, device=DEVICE))
    monkeypatch.undo()
    assert calls == []
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------- CPU without the interpreter

def test_cpu_fallback_without_interpreter_uses_reference():
    code = (
        "import torch, fusedloss as fl\n"
        "from fusedloss import _engine, reference as R\n"
        "assert not _engine.uses_triton(torch.device('cpu'))\n"
        "x = torch.randn(50, requires_grad=True); t = torch.randn(50); w = torch.rand(50)\n"
        "a = fl.huber_loss(x, t, 'weighted_mean', delta=0.5, weight=w, loss_weight=2.0)\n"
        "b = R.huber_loss(x, t, 'weighted_mean', delta=0.5, weight=w, loss_weight=2.0)\n"
        "assert torch.equal(a, b)\n"
        "a.backward(); assert x.grad is not None\n"
        "assert sum(_engine.LAUNCH_COUNTS.values()) == 0\n"
        "print('fallback ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "fallback ok" in res.stdout


# ----------------------------------------------------------------- edge values

@pytest.mark.parametrize("fn,tfn", [(fl.mse_loss, F.mse_loss), (fl.huber_loss, F.huber_loss)])
def test_fp16_overflow_like_torch_and_finite_fp32_reductions(fn, tfn):
    x = torch.full((4096,), 300.0, device=DEVICE, dtype=torch.float16, requires_grad=True)
    t = torch.full((4096,), -300.0, device=DEVICE, dtype=torch.float16)
    none = fn(x, t, "none", delta=1.0) if fn is fl.huber_loss else fn(x, t, "none")
    eager = tfn(x, t, reduction="none")
    assert torch.equal(torch.isinf(none), torch.isinf(eager))  # mse: 360000 > 65504 -> inf
    total = fn(x, t, "sum")
    exact = tfn(x.double(), t.double(), reduction="sum")
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert rel_err(total, exact) <= 1e-6
    g, = torch.autograd.grad(fn(x, t, "mean"), x, torch.tensor(2.0 ** 10, device=DEVICE))
    x64 = x.detach().double().requires_grad_(True)
    g_exact, = torch.autograd.grad(tfn(x64, t.double()) * 2.0 ** 10, x64)
    assert torch.equal(g, g_exact.half())


def test_subnormal_differences_survive():
    tiny = torch.finfo(torch.float32).tiny
    x = torch.tensor([tiny / 8, -tiny / 64, 3 * tiny / 1024, 0.0], device=DEVICE, requires_grad=True)
    t = torch.zeros(4, device=DEVICE)
    for fn, tfn in ((fl.huber_loss, F.huber_loss), (fl.l1_loss, F.l1_loss)):
        ours, = torch.autograd.grad(fn(x, t, "sum"), x)
        eager, = torch.autograd.grad(tfn(x, t, reduction="sum"), x)
        assert torch.equal(ours, eager)  # subnormal gradients, not flushed to zero
