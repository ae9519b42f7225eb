"""Property tests (hypothesis): random shapes (0 and 1 elements included), broadcast patterns,
strides, dtypes and hyper-parameters; the element values come from a drawn seed.

Settings follow decisions.md: deadline=None, derandomize=True, 30 examples a property, numel
small enough for the interpreter."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import fusedloss as fl
from fusedloss import reference as R
from conftest import DEVICE, REL_TOL, rel_err

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

LOSSES = {
    "huber": (fl.huber_loss, R.huber_loss, st.fixed_dictionaries({"delta": st.sampled_from([0.3, 1.0, 6.0])})),
    "smooth_l1": (fl.smooth_l1_loss, R.smooth_l1_loss, st.fixed_dictionaries({"beta": st.sampled_from([0.0, 0.5, 2.0])})),
    "l1": (fl.l1_loss, R.l1_loss, st.just({})),
    "mse": (fl.mse_loss, R.mse_loss, st.just({})),
    "shrinkage": (fl.shrinkage_loss, R.shrinkage_loss, st.fixed_dictionaries({
        "a": st.sampled_from([10.0, 5.0]), "c": st.sampled_from([0.2, -0.1]),
        "exp_target_weight": st.booleans()})),
}
if hasattr(fl, "sigmoid_focal_loss"):
    LOSSES["focal"] = (fl.sigmoid_focal_loss, R.sigmoid_focal_loss, st.fixed_dictionaries({
        "alpha": st.sampled_from([0.25, -1.0]), "gamma": st.sampled_from([0.0, 0.5, 2.0])}))
    LOSSES["qfl"] = (fl.quality_focal_loss, R.quality_focal_loss,
                     st.fixed_dictionaries({"beta": st.sampled_from([0.0, 1.5, 2.0])}))
    LOSSES["vfl"] = (fl.varifocal_loss, R.varifocal_loss, st.fixed_dictionaries({
        "alpha": st.sampled_from([0.75]), "gamma": st.sampled_from([0.5, 2.0]),
        "iou_weighted": st.booleans()}))
FOCAL = {"focal", "qfl", "vfl"}


def _pattern(draw, shape):
    """A shape broadcastable to ``shape``: each dim kept or set to 1, leading dims maybe dropped."""
    keep = [draw(st.booleans()) for _ in shape]
    out = [s if k else 1 for s, k in zip(shape, keep)]
    return tuple(out[draw(st.integers(0, len(out))):])


@st.composite
def problems(draw, with_weight=True):
    loss = draw(st.sampled_from(sorted(LOSSES)))
    params = draw(LOSSES[loss][2])
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=4)))
    if draw(st.integers(0, 9)) > 0:  # mostly non-empty
        shape = tuple(max(1, s) for s in shape)
    t_shape = _pattern(draw, shape)
    weight = draw(st.sampled_from(["none", "bool", "float", "int"])) if with_weight else "none"
    w_shape = _pattern(draw, shape)
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    permuted = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return dict(loss=loss, params=params, shape=shape, t_shape=t_shape, weight=weight,
                w_shape=w_shape, dtype=dtype, permuted=permuted, seed=seed)


def _make(p):
    g = torch.Generator().manual_seed(p["seed"])

    def rand(shape, kind="normal"):
        if p["permuted"] and len(shape) >= 2:  # a non-contiguous view with the same values
            base = _rand(tuple(reversed(shape)), kind, g)
            return base.permute(*reversed(range(len(shape))))
        return _rand(shape, kind, g)

    focal = p["loss"] in FOCAL
    x = (rand(p["shape"]) * (3.0 if focal else 2.0)).to(p["dtype"]).to(DEVICE).requires_grad_(True)
    t = rand(p["t_shape"], "unit" if focal else "normal").to(p["dtype"]).to(DEVICE).requires_grad_(True)
    w = None
    if p["weight"] != "none":
        w = rand(p["w_shape"], "unit").to(DEVICE)
        w = {"bool": w > 0.3, "float": w, "int": (w * 3).to(torch.int32)}[p["weight"]]
    return x, t, w


def _rand(shape, kind, g):
    if kind == "unit":
        return torch.rand(shape, generator=g)
    return torch.randn(shape, generator=g)


def _call(p, which, x, t, reduction, **kw):
    fn = LOSSES[p["loss"]][0 if which == "fused" else 1]
    return fn(x, t, reduction=reduction, **p["params"], **kw)


@SETTINGS
@given(problems())
def test_fused_equals_reference(p):
    x, t, w = _make(p)
    x64 = x.detach().double().requires_grad_(True)
    t64 = t.detach().double().requires_grad_(True)
    for reduction in ("none", "sum", "weighted_mean"):
        out = _call(p, "fused", x, t, reduction, weight=w)
        ref = _call(p, "ref", x64, t64, reduction, weight=w)
        tol = REL_TOL[p["dtype"]]
        assert rel_err(out, ref) <= tol
        go = torch.rand_like(ref) + 0.5
        g = torch.autograd.grad(out, (x, t), go.to(out.dtype))
        rg = torch.autograd.grad(ref, (x64, t64), go)
        # gradient of a broadcast target: compare against the sum of magnitudes (cancellation)
        assert rel_err(g[0], rg[0]) <= tol + 2.0 ** -24 * x.numel() ** 0.5 / max(float(rg[0].norm()), 1e-30)
        if t.shape == x.shape:
            assert rel_err(g[1], rg[1]) <= tol + 2.0 ** -24 * t.numel() ** 0.5 / max(float(rg[1].norm()), 1e-30)


@SETTINGS
@given(problems())
def test_sum_of_none_equals_sum(p):
    x, t, w = _make(p)
    with torch.no_grad():
        none = _call(p, "fused", x, t, "none", weight=w).double().sum()
        total = _call(p, "fused", x, t, "sum", weight=w).double()
    assert abs(float(none - total)) <= 1e-5 * max(1.0, float(none.abs())) + 4e-3 * abs(float(none))  * (p["dtype"] != torch.float32)


@SETTINGS
@given(problems(with_weight=False))
def test_weight_of_ones_equals_no_weight(p):
    x, t, _ = _make(p)
    for reduction in ("none", "sum", "mean"):
        a = _call(p, "fused", x, t, reduction)
        b = _call(p, "fused", x, t, reduction, weight=torch.ones(p["w_shape"], device=DEVICE))
        assert torch.equal(a, b) or (a.numel() and torch.equal(torch.isnan(a), torch.isnan(b)) and torch.isnan(a).all())
        ga, = torch.autograd.grad(a.sum(), x)
        gb, = torch.autograd.grad(b.sum(), x)
        assert torch.equal(ga, gb)


@SETTINGS
@given(problems(with_weight=False))
def test_weighted_mean_with_bool_mask_is_mean_over_selected(p):
    x, t, _ = _make(p)
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(p["seed"] + 1)) > 0.4
    mask = mask.to(DEVICE)
    with torch.no_grad():
        ours = _call(p, "fused", x, t, "weighted_mean", weight=mask)
        t_full = t.detach().expand(x.shape)
        selected = _call(p, "ref", x.detach()[mask].double(), t_full[mask].double(), "mean")
    if int(mask.sum()) == 0:
        assert float(ours) == 0.0
    else:
        assert rel_err(ours, selected) <= REL_TOL[p["dtype"]]


@SETTINGS
@given(problems(), st.sampled_from([-3.0, 0.5, 2.0 ** 10]))
def test_scaling_grad_output_scales_gradient(p, scale):
    x, t, w = _make(p)
    out = _call(p, "fused", x, t, "mean", weight=w)
    g1, = torch.autograd.grad(out, x, retain_graph=True)
    g1 = g1.clone()
    gs, = torch.autograd.grad(out, x, torch.tensor(scale, device=DEVICE))
    exact = g1.double() * scale
    assert rel_err(gs, exact) <= REL_TOL[p["dtype"]]


@SETTINGS
@given(problems())
def test_results_do_not_depend_on_block_size(p):
    x, t, w = _make(p)
    results = []
    for block in (64, 4096):
        with fl.engine_config(block=block):
            none = _call(p, "fused", x, t, "none", weight=w)
            mean = _call(p, "fused", x, t, "mean", weight=w)
            g = torch.autograd.grad(mean, (x, t))
        results.append((none, mean, g))
    (n0, m0, g0), (n1, m1, g1) = results
    assert torch.equal(n0, n1)  # elementwise outputs: bitwise
    assert torch.equal(g0[0], g1[0])
    if t.shape == x.shape:
        assert torch.equal(g0[1], g1[1])
    if x.numel():
        assert abs(float(m0) - float(m1)) <= x.numel() * 1.2e-7 * max(abs(float(m0)), 1e-30) or \
            (torch.isnan(m0) and torch.isnan(m1))
