"""Regression family (Huber, smooth-L1, L1, MSE) on the fused engine against float64 references.

Every case: loss value, gradients of input and target, backward driven by exactly 1 (the
no-pass path), by a random grad_output (in-place rescale) and again on the retained graph
(out of place). Outputs are NaN-poisoned so an element the kernel forgot shows up.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import fusedloss as fl
from fusedloss import reference as R
from _cases import pairwise
from conftest import DEVICE, REL_TOL, rel_err

LOSSES = {
    "huber": (fl.huber_loss, R.huber_loss, {"delta": 0.7}),
    "smooth_l1": (fl.smooth_l1_loss, R.smooth_l1_loss, {"beta": 0.5}),
    "l1": (fl.l1_loss, R.l1_loss, {}),
    "mse": (fl.mse_loss, R.mse_loss, {}),
}
DTYPES = {
    "fp32": (torch.float32, torch.float32),
    "fp16": (torch.float16, torch.float16),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp64": (torch.float64, torch.float64),
    "bf16+fp32": (torch.bfloat16, torch.float32),  # CoTracker: bf16 predictions, fp32 labels
}
SHAPES = {"0d": (), "one": (1,), "empty": (0, 3), "odd": (999,), "blocks": (3, 700),
          "4d": (2, 3, 5, 7)}
REDUCTIONS = ["none", "sum", "mean", "weighted_mean", "mean+avg_factor", "mean+avg_factor_tensor"]
WEIGHTS = ["none", "bool", "uint8", "int", "float", "broadcast", "zeros_over_nan"]
LOSS_WEIGHTS = [1.0, 0.3, "tensor"]


def _strided(shape, dtype, noncontig, scale=2.0):
    """Random values in ``shape``; a non-contiguous view when asked (every other column)."""
    if noncontig and len(shape) >= 1:
        base = torch.randn(*shape[:-1], shape[-1] * 2, device=DEVICE) * scale
        return base.to(dtype)[..., ::2]
    return (torch.randn(shape, device=DEVICE) * scale).to(dtype)


def _weight(kind, shape):
    if kind == "none":
        return None
    if kind == "bool":
        return torch.rand(shape, device=DEVICE) > 0.3
    if kind == "uint8":
        return torch.randint(0, 3, shape, device=DEVICE, dtype=torch.uint8)
    if kind == "int":
        return torch.randint(0, 4, shape, device=DEVICE, dtype=torch.int32)
    if kind == "float":
        return torch.rand(shape, device=DEVICE)
    if kind == "broadcast":  # e.g. visibility (B, T, N, 1) over (B, T, N, 2)
        bshape = list(shape)
        if bshape:
            bshape[-1] = 1
        if len(bshape) >= 3:
            bshape[0] = 1
        return torch.rand(bshape, device=DEVICE) * 2
    if kind == "zeros_over_nan":
        return (torch.rand(shape, device=DEVICE) > 0.5).to(torch.float32)
    raise AssertionError(kind)


def _build(loss, reduction, dtype, shape, weight, target_broadcast, noncontig, loss_weight):
    x_dtype, t_dtype = DTYPES[dtype]
    shp = SHAPES[shape]
    x = _strided(shp, x_dtype, noncontig)
    tshape = (1,) + shp[1:] if (target_broadcast and len(shp) >= 1) else shp
    t = _strided(tshape, t_dtype, noncontig)
    w = _weight(weight, shp)
    if weight == "zeros_over_nan":  # excluded elements hold NaN/inf: must contribute exactly 0
        x = x.clone()
        x[w == 0] = float("nan")
        if tshape == shp:
            t = t.clone()
            t[w == 0] = float("inf")
    kwargs = {"weight": w, "loss_weight": loss_weight}
    if loss_weight == "tensor":
        kwargs["loss_weight"] = torch.tensor(0.7, device=DEVICE)
    red = reduction
    if reduction == "mean+avg_factor":
        red, kwargs["avg_factor"] = "mean", 37.5
    elif reduction == "mean+avg_factor_tensor":
        red, kwargs["avg_factor"] = "mean", torch.tensor(12, device=DEVICE)  # integer tensor
    x.requires_grad_(True)
    t.requires_grad_(True)
    return x, t, red, kwargs


def _tol(x, t):
    worst = max((x.dtype, t.dtype), key=lambda d: REL_TOL[d])
    return REL_TOL[worst]


def _err(out, ref):
    """rel_err, less the quantisation fp16 storage cannot avoid: results in fp16's subnormal
    range (< 6.1e-5) are only representable to 2^-25 absolute."""
    err = rel_err(out, ref)
    if out.dtype == torch.float16 and out.numel():
        floor = 2.0 ** -25 * out.numel() ** 0.5 / max(float(ref.double().norm()), 1e-300)
        err = max(0.0, err - floor)
    return err


def _target_condition(ref, x64, t64, red, params, kwargs, go):
    """||sum |terms| || / ||sum terms|| of a broadcast target's gradient (float64).

    A broadcast target's gradient is a sum over the broadcast dimensions; when its terms cancel,
    any fp32 summation (eager torch's too) loses relative accuracy by this factor.
    """
    if t64.shape == x64.shape:
        return 1.0
    t_full = t64.detach().expand(x64.shape).clone().requires_grad_(True)
    terms, = torch.autograd.grad(ref(x64.detach(), t_full, red, **params, **kwargs), t_full, go)
    lead = x64.dim() - t64.dim()
    dims = [d for d in range(x64.dim()) if d < lead or t64.shape[d - lead] == 1]
    abs_sum = terms.abs().sum(dim=dims, keepdim=True).reshape(t64.shape)
    exact = terms.sum(dim=dims, keepdim=True).reshape(t64.shape)
    return max(1.0, float(abs_sum.norm() / exact.norm().clamp_min(1e-300)))


def check_against_reference(loss, reduction, dtype, shape, weight, target_broadcast=False,
                            noncontig=False, loss_weight=1.0, block=None):
    fn, ref, params = LOSSES[loss]
    x, t, red, kwargs = _build(loss, reduction, dtype, shape, weight, target_broadcast,
                               noncontig, loss_weight)
    x_before, t_before = x.detach().clone(), t.detach().clone()
    x64 = x.detach().double().requires_grad_(True)
    t64 = t.detach().double().requires_grad_(True)
    expected = ref(x64, t64, red, **params, **kwargs)
    tol = _tol(x, t)
    with fl.engine_config(poison=True, block=block):
        out = fn(x, t, red, **params, **kwargs)
        # dtype and shape rules (decisions.md)
        if red == "none":
            assert out.shape == x.shape and out.dtype == torch.result_type(x, t)
            assert out.is_contiguous()
        else:
            assert out.shape == ()
            assert out.dtype == (torch.float64 if torch.result_type(x, t) == torch.float64
                                 else torch.float32)
        if x.numel() and not (red == "mean" and "avg_factor" not in kwargs and x.numel() == 0):
            assert rel_err(out, expected) <= tol, (rel_err(out, expected), tol)

        # backward 1: grad_output exactly 1 (no pass over memory on the fused path)
        ones = torch.ones_like(out)
        gx, gt = torch.autograd.grad(out, (x, t), ones)
        rgx, rgt = torch.autograd.grad(expected, (x64, t64), ones.double(), retain_graph=True)
        assert gx.dtype == x.dtype and gt.dtype == t.dtype
        assert gx.shape == x.shape and gt.shape == t.shape
        cond = _target_condition(ref, x64, t64, red, params, kwargs, ones.double())
        assert _err(gx, rgx) <= tol and _err(gt, rgt) <= tol * cond, (_err(gx, rgx), _err(gt, rgt))

        # backward 2 and 3: random grad_output, then again on the retained graph
        out2 = fn(x, t, red, **params, **kwargs)
        for call in range(2):
            go = torch.randn_like(out2)
            gx, gt = torch.autograd.grad(out2, (x, t), go, retain_graph=call == 0)
            rgx, rgt = torch.autograd.grad(expected, (x64, t64), go.double(), retain_graph=True)
            cond = _target_condition(ref, x64, t64, red, params, kwargs, go.double())
            assert _err(gx, rgx) <= tol and _err(gt, rgt) <= tol * cond, (call, _err(gx, rgx), _err(gt, rgt), cond)
            if call == 0:
                first = gx.clone(), gx
            else:  # what the first backward handed out is never changed by a later one
                assert torch.equal(first[0], first[1])
    # inputs never modified
    assert torch.equal(x.detach().nan_to_num(), x_before.nan_to_num())
    assert torch.equal(t.detach().nan_to_num(), t_before.nan_to_num())


PAIRWISE = pairwise({
    "loss": list(LOSSES), "reduction": REDUCTIONS, "dtype": list(DTYPES), "shape": list(SHAPES),
    "weight": WEIGHTS, "target_broadcast": [False, True], "noncontig": [False, True],
    "loss_weight": LOSS_WEIGHTS,
})


@pytest.mark.parametrize("case", PAIRWISE, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_pairwise_against_reference(case):
    block = 256 if case["shape"] in ("blocks", "odd") else None  # several programs
    check_against_reference(**case, block=block)


FULL = list(itertools.product(REDUCTIONS, DTYPES, WEIGHTS, [False, True], [False, True]))


@pytest.mark.parametrize("reduction,dtype,weight,target_broadcast,noncontig", FULL)
def test_huber_full_product(reduction, dtype, weight, target_broadcast, noncontig):
    check_against_reference("huber", reduction, dtype, "4d", weight, target_broadcast, noncontig,
                            loss_weight=0.5 if noncontig else 1.0)


# ----------------------------------------------------------------- against torch.nn.functional

TORCH = {"huber": (F.huber_loss, {"delta": 0.7}), "smooth_l1": (F.smooth_l1_loss, {"beta": 0.5}),
         "l1": (F.l1_loss, {}), "mse": (F.mse_loss, {})}


# torch.nn.functional.smooth_l1_loss has no weight argument
TORCH_CASES = [(loss, w) for loss in LOSSES for w in (False, True) if not (w and loss == "smooth_l1")]


@pytest.mark.parametrize("loss,with_weight", TORCH_CASES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_functional(loss, reduction, dtype, with_weight):
    """Same values and gradients as torch; torch's weighted l1/mse "mean" is our weighted_mean."""
    fn, _, params = LOSSES[loss]
    tfn, tparams = TORCH[loss]
    x = (torch.randn(6, 50, device=DEVICE, dtype=dtype) * 2).requires_grad_(True)
    t = (torch.randn(6, 50, device=DEVICE, dtype=dtype) * 2).requires_grad_(True)
    w = torch.rand(6, 50, device=DEVICE, dtype=dtype) if with_weight else None
    ours_reduction = reduction
    if with_weight and reduction == "mean" and loss in ("l1", "mse"):
        ours_reduction = "weighted_mean"  # the README's "torch call -> fusedloss call" table
    kw = {"weight": w} if with_weight else {}
    expected = tfn(x, t, reduction=reduction, **tparams, **kw)
    out = fn(x, t, ours_reduction, **params, **kw)
    go = torch.randn_like(out)
    tol = REL_TOL[dtype] * 4
    assert rel_err(out, expected) <= tol
    g = torch.autograd.grad(out, (x, t), go)
    rg = torch.autograd.grad(expected, (x, t), go)
    assert rel_err(g[0], rg[0]) <= tol and rel_err(g[1], rg[1]) <= tol


@pytest.mark.parametrize("loss", list(LOSSES))
def test_smooth_l1_beta0_and_edges_match_torch(loss):
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], device=DEVICE, requires_grad=True)
    t = torch.zeros(7, device=DEVICE)
    for beta in (0.0, 1.0):
        out = fl.smooth_l1_loss(x, t, "sum", beta=beta)
        expected = F.smooth_l1_loss(x, t, reduction="sum", beta=beta)
        assert torch.allclose(out, expected)
        assert torch.allclose(torch.autograd.grad(out, x)[0], torch.autograd.grad(expected, x)[0])
    out = fl.huber_loss(x, t, "sum", delta=1.0)  # |d| == delta lies on both branches
    expected = F.huber_loss(x, t, reduction="sum", delta=1.0)
    assert torch.allclose(torch.autograd.grad(out, x)[0], torch.autograd.grad(expected, x)[0])


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_no_worse_than_eager(loss, dtype):
    """Error against float64 within 2x eager torch's error in the same dtype plus one ulp."""
    fn, _, params = LOSSES[loss]
    tfn, tparams = TORCH[loss]
    x = (torch.randn(40, 100, device=DEVICE) * 2).to(dtype).requires_grad_(True)
    t = (torch.randn(40, 100, device=DEVICE) * 2).to(dtype)
    x64 = x.detach().double().requires_grad_(True)
    ulp = torch.finfo(dtype).eps
    for reduction in ("none", "mean"):
        ours = fn(x, t, reduction, **params)
        eager = tfn(x, t, reduction=reduction, **tparams)
        exact = tfn(x64, t.double(), reduction=reduction, **tparams)
        assert rel_err(ours, exact) <= 2 * rel_err(eager, exact) + ulp
        go = torch.randn_like(exact)
        g_ours, = torch.autograd.grad(ours, x, go.to(ours.dtype))
        g_eager, = torch.autograd.grad(eager, x, go.to(eager.dtype))
        g_exact, = torch.autograd.grad(exact, x64, go)
        assert rel_err(g_ours, g_exact) <= 2 * rel_err(g_eager, g_exact) + ulp


# ----------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "weighted_mean"])
def test_gradcheck_float64(loss, reduction):
    fn, _, params = LOSSES[loss]
    # keep |x - t| away from the kinks (0, delta, beta) where finite differences are not defined
    d = torch.rand(3, 8, device=DEVICE, dtype=torch.float64) * 0.25 + 0.05
    sign = torch.where(torch.rand(3, 8, device=DEVICE) > 0.5, 1.0, -1.0).double()
    d = d * sign + sign * torch.randint(0, 2, (3, 8), device=DEVICE) * 1.2
    t = torch.randn(3, 1, device=DEVICE, dtype=torch.float64, requires_grad=True)  # broadcast
    x = (t.detach() + d).requires_grad_(True)
    w = torch.rand(3, 8, device=DEVICE, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b: fn(a, b, reduction, weight=w, loss_weight=0.8, **params), (x, t),
        eps=1e-6, atol=1e-8, rtol=1e-6)
