"""Shrinkage loss (issue 4): fused kernel vs its reference and vs an independent float64 formula.

The independent formula is the paper's, literally: L = exp(Y) l^2 / (1 + exp(a (c - l))) with its
analytic gradient, evaluated in float64 and compared where it is finite. Weighting and reduction of
that formula are re-implemented here too (``_reduce``), so nothing expected comes from fusedloss.
"""
import doctest
import itertools
import math

import pytest
import torch

import fusedloss
from conftest import DEVICE, REL_TOL, rel_err
from fusedloss import engine_config
from fusedloss.reference.shrinkage import shrinkage_loss as ref_shrinkage
from fusedloss.shrinkage import ShrinkageLoss, shrinkage_loss

SHAPE = (3, 2, 8, 8)  # 384 elements: one program at the default block


# --------------------------------------------------------------------------- independent formulas

class _PaperFormula(torch.autograd.Function):
    """The paper's loss, literally, elementwise, with its analytic gradient (no autograd inside)."""

    @staticmethod
    def forward(ctx, x, t, a, c, use_exp):
        d = x - t
        l = d.abs()
        big_e = torch.exp(a * (c - l))
        w = torch.exp(t) if use_exp else torch.ones_like(t)
        loss = w * l * l / (1 + big_e)
        dl = w * (2 * l / (1 + big_e) + l * l * a * big_e / (1 + big_e) ** 2)
        gx = torch.sign(d) * dl
        gt = -gx + loss if use_exp else -gx
        ctx.save_for_backward(gx, gt)
        return loss

    @staticmethod
    def backward(ctx, go):
        gx, gt = ctx.saved_tensors
        return go * gx, go * gt, None, None, None


def _reduce(loss, w, reduction, avg_factor=None, loss_weight=1.0):
    """Weight, loss_weight and reduction as decisions.md states them (finite inputs only)."""
    if w is not None:
        loss = loss * w.to(loss.dtype)
    loss = loss * loss_weight
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        if avg_factor is None:
            return total / loss.numel()
        return total / float(avg_factor)
    assert reduction == "weighted_mean"
    if w is None:
        return total / loss.numel()
    return total / w.to(loss.dtype).expand(loss.shape).sum()


def _paper(x, t, a, c, use_exp, reduction="none", weight=None, avg_factor=None, loss_weight=1.0):
    """Float64 paper formula on detached copies of x and t; returns (x64, t64, out)."""
    x64 = x.detach().double().requires_grad_()
    t64 = t.detach().double().requires_grad_()
    elem = _PaperFormula.apply(x64, t64.expand(x64.shape), float(a), float(c), use_exp)
    return x64, t64, _reduce(elem, weight, reduction, avg_factor, loss_weight)


def _eager_in_dtype(x, t, a, c, use_exp, reduction, weight, avg_factor):
    """The loss as a user would write it in eager torch, in the tensors' own (low) dtypes."""
    l = (x - t).abs()
    loss = l * l * torch.sigmoid(a * (l - c))
    if use_exp:
        loss = loss * torch.exp(t)
    return _reduce(loss, weight, reduction, avg_factor)


def _grads(fn, x, t, go):
    """(output, grad input, grad target) of fn(x, t), backward driven by go."""
    xg = x.detach().clone().requires_grad_()
    tg = t.detach().clone().requires_grad_()
    out = fn(xg, tg)
    out.backward(go.to(out.dtype))
    return out.detach(), xg.grad, tg.grad


# --------------------------------------------------------------------------- pairwise cases

REDUCTIONS = [("none", None), ("sum", None), ("mean", None), ("weighted_mean", None),
              ("mean", 7.5), ("mean", "tensor")]
DTYPES = {"fp32": (torch.float32, torch.float32), "fp16": (torch.float16, torch.float16),
          "bf16": (torch.bfloat16, torch.bfloat16), "bf16+fp32": (torch.bfloat16, torch.float32)}
AC = [(10.0, 0.2), (5.0, 0.5), (50.0, 0.05)]
EXP = [True, False]
WEIGHTS = ["none", "per_sample", "bool"]


def _pairwise_cases():
    """24 cases in which every pair of values of any two factors occurs (checked below):
    i = r + 6 d; (a, c) = (r + d) % 3, exp = (r + d) % 2, weight = (r + 2 d) % 3."""
    cases = []
    for d in range(len(DTYPES)):
        for r in range(len(REDUCTIONS)):
            cases.append((r, d, (r + d) % 3, (r + d) % 2, (r + 2 * d) % 3))
    return cases


CASES = _pairwise_cases()


def test_cases_cover_every_pair():
    sizes = (len(REDUCTIONS), len(DTYPES), len(AC), len(EXP), len(WEIGHTS))
    for i, j in itertools.combinations(range(5), 2):
        seen = {(case[i], case[j]) for case in CASES}
        assert len(seen) == sizes[i] * sizes[j], (i, j)


def _make_weight(kind, shape):
    if kind == "none":
        return None
    if kind == "per_sample":  # broadcast (B, 1, 1, 1), one sample excluded
        w = torch.rand(shape[0], *([1] * (len(shape) - 1))) + 0.5
        w[1] = 0
        return w.to(DEVICE)
    return (torch.rand(shape) > 0.3).to(DEVICE)  # bool, full shape


def _check_low_precision(name, fused, eager, ref64, dtype):
    """decisions.md "No worse than eager": 2x eager's error plus one ulp of the dtype."""
    e_fused, e_eager = rel_err(fused, ref64), rel_err(eager, ref64)
    assert e_fused <= 2 * e_eager + torch.finfo(dtype).eps, (name, e_fused, e_eager)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_pairwise_against_float64_and_reference(case):
    r, d, ac, use_exp, wk = case
    reduction, af = REDUCTIONS[r]
    dtype_name = list(DTYPES)[d]
    x_dtype, t_dtype = DTYPES[dtype_name]
    a, c = AC[ac]
    use_exp = EXP[use_exp]
    weight = _make_weight(WEIGHTS[wk], SHAPE)
    avg_factor = torch.tensor(7.5, device=DEVICE) if af == "tensor" else af

    t = torch.rand(SHAPE, device=DEVICE)
    x = (t + 0.4 * torch.randn(SHAPE, device=DEVICE)).to(x_dtype)  # l spreads across c
    t = t.to(t_dtype)
    kw = dict(reduction=reduction, a=a, c=c, exp_target_weight=use_exp, weight=weight,
              avg_factor=avg_factor)
    low = x_dtype if x_dtype != torch.float32 else None

    scalar = reduction != "none"
    for go_kind in ("one", "random"):
        if go_kind == "one":
            go = torch.ones(() if scalar else SHAPE, device=DEVICE)
        else:
            go = (torch.rand((), device=DEVICE) + 0.5 if scalar
                  else torch.randn(SHAPE, device=DEVICE))
        out, gx, gt = _grads(lambda xx, tt: shrinkage_loss(xx, tt, **kw), x, t, go)
        rout, rgx, rgt = _grads(lambda xx, tt: ref_shrinkage(xx, tt, **kw), x, t, go)
        x64, t64, out64 = _paper(x, t, a, c, use_exp, reduction, weight, avg_factor)
        out64.backward(go.double())

        # dtypes and shapes
        assert out.dtype == rout.dtype and out.shape == out64.shape
        assert gx.dtype == x_dtype and gt.dtype == t_dtype
        for name, got, want, refv in (("loss", out, out64, rout), ("grad_input", gx, x64.grad, rgx),
                                      ("grad_target", gt, t64.grad, rgt)):
            tol = REL_TOL[got.dtype]
            assert torch.isfinite(got).all(), name
            assert rel_err(got, want) <= tol, (name, go_kind, rel_err(got, want))
            assert rel_err(refv, want) <= tol, ("reference", name, go_kind, rel_err(refv, want))
            assert rel_err(got, refv) <= 2 * tol, (name, go_kind, rel_err(got, refv))
        if low is not None:
            xe = x.detach().clone().requires_grad_()
            te = t.detach().clone().requires_grad_()
            eout = _eager_in_dtype(xe, te, a, c, use_exp, reduction, weight, avg_factor)
            eout.backward(go.to(eout.dtype))
            _check_low_precision("loss", out, eout, out64, low)
            _check_low_precision("grad_input", gx, xe.grad, x64.grad, low)
            _check_low_precision("grad_target", gt, te.grad, t64.grad, low)


# --------------------------------------------------------------------------- the reference itself

@pytest.mark.parametrize("a,c", AC + [(3.0, -0.4)])
@pytest.mark.parametrize("use_exp", [True, False])
def test_reference_is_the_paper_formula(a, c, use_exp):
    t = torch.rand(5, 40, dtype=torch.float64)
    x = t + torch.randn(5, 40, dtype=torch.float64)
    x[0, :4] = t[0, :4]  # l = 0 exactly
    x64, t64, want = _paper(x, t, a, c, use_exp, "sum")
    want.backward()
    xr = x.clone().requires_grad_()
    tr = t.clone().requires_grad_()
    got = ref_shrinkage(xr, tr, "sum", a=a, c=c, exp_target_weight=use_exp)
    got.backward()
    assert rel_err(got, want) <= REL_TOL[torch.float64]
    assert rel_err(xr.grad, x64.grad) <= REL_TOL[torch.float64]
    assert rel_err(tr.grad, t64.grad) <= REL_TOL[torch.float64]
    assert torch.all(xr.grad[0, :4] == 0)


# --------------------------------------------------------------------------- realistic case

def _gaussian_label(size=33, sigma=3.0, dtype=torch.float32):
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                            torch.arange(size, dtype=torch.float64), indexing="ij")
    centre = (size - 1) / 2
    return torch.exp(-((ys - centre) ** 2 + (xs - centre) ** 2) / (2 * sigma ** 2)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_response_map(dtype):
    """A tracker's batch: one Gaussian label (1, 1, 33, 33) broadcast over 4 noisy response maps
    (4356 elements: two programs at the default block)."""
    label = _gaussian_label().to(DEVICE)[None, None]
    pred = (0.8 * label + 0.1 * torch.randn(4, 1, 33, 33, device=DEVICE)).to(dtype)
    label = label.to(dtype)
    go = torch.tensor(0.7, device=DEVICE)
    out, gx, gt = _grads(lambda p, y: shrinkage_loss(p, y, a=10.0, c=0.2), pred, label, go)
    x64, t64, want = _paper(pred, label, 10.0, 0.2, True, "mean")
    want.backward(go.double())
    assert gt.shape == label.shape
    tol = REL_TOL[dtype]
    assert rel_err(out, want) <= REL_TOL[torch.float32]
    assert rel_err(gx, x64.grad) <= tol
    assert rel_err(gt, t64.grad) <= tol
    # the module gives the same (bitwise: same kernel, same configuration)
    crit = ShrinkageLoss(a=10.0, c=0.2)
    assert torch.equal(crit(pred, label), out)
    # shrinkage never exceeds the exp(Y)-weighted squared error, and shrinks easy samples most
    elem = shrinkage_loss(pred, label, "none").double()
    sq = torch.exp(label.double()) * (pred.double() - label.double()) ** 2
    assert torch.all(elem <= sq * (1 + 2 * torch.finfo(dtype).eps))
    easy = (pred.double() - label.double()).abs() < 0.1
    assert (elem[easy] / sq[easy].clamp_min(1e-30)).max() < 0.5


# --------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("reduction,use_exp,with_weight", [("none", True, False),
                                                           ("sum", False, True),
                                                           ("weighted_mean", True, True)])
def test_gradcheck_float64(reduction, use_exp, with_weight):
    t = torch.rand(3, 4, dtype=torch.float64, device=DEVICE)
    x = (t + 0.3 * torch.randn(3, 4, dtype=torch.float64, device=DEVICE)).requires_grad_()
    t.requires_grad_()
    weight = torch.rand(3, 1, dtype=torch.float64, device=DEVICE) if with_weight else None

    def fn(xx, tt):
        return shrinkage_loss(xx, tt, reduction, a=10.0, c=0.2, exp_target_weight=use_exp,
                              weight=weight)
    assert torch.autograd.gradcheck(fn, (x, t), eps=1e-6, atol=1e-8, rtol=1e-6)


# --------------------------------------------------------------------------- extremes

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_large_a_times_l_does_not_overflow(dtype):
    """a = 50 with l up to 100: a (l - c) ~ 5000 (exp overflows even float64); no inf/NaN."""
    t = torch.rand(4, 256, device=DEVICE)
    x = t + torch.empty(4, 256, device=DEVICE).uniform_(-100, 100)
    x[0, :8] = t[0, :8]  # and l = 0
    x, t = x.to(dtype), t.to(dtype)
    x64, t64, want = _paper(x, t, 50.0, 0.2, True, "none")
    go = torch.rand(4, 256, device=DEVICE)
    want.backward(go.double())
    assert torch.isfinite(want).all() and torch.isfinite(x64.grad).all()
    out, gx, gt = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "none", a=50.0, c=0.2), x, t, go)
    for got, ref in ((out, want), (gx, x64.grad), (gt, t64.grad)):
        assert torch.isfinite(got).all()
        assert rel_err(got, ref) <= REL_TOL[dtype]
    s, sgx, sgt = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "sum", a=50.0, c=0.2), x, t,
                         torch.ones(()))
    assert torch.isfinite(s) and torch.isfinite(sgx).all() and torch.isfinite(sgt).all()
    assert rel_err(s, want.sum()) <= REL_TOL[torch.float32]


# a (l - c) = 1e39 is inf in float32 by design (sigmoid(inf) = 1); numpy, which runs the
# interpreter, warns about it
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("a,c", [(5000.0, 0.2), (1e38, 1.0), (200.0, -3.0)])
def test_huge_a_c_is_finite_where_paper_form_is_nan(dtype, a, c):
    """Where a c exceeds exp's range the paper's literal gradient is inf/inf = NaN near l = 0;
    the value is finite, and so must be ours (compared with the float64 reference there)."""
    t = torch.rand(2, 64, device=DEVICE)
    x = t + 2 * c * torch.rand(2, 64, device=DEVICE)  # l in [0, 2c]: across the step at l = c
    x[0, :6] = t[0, :6]
    x[1, :8] = t[1, :8] + 10 * abs(c) + 5  # far above c: a l overflows fp32 when a = 1e38
    x, t = x.to(dtype), t.to(dtype)
    xr = x.detach().double().requires_grad_()
    tr = t.detach().double().requires_grad_()
    want = ref_shrinkage(xr, tr, "none", a=a, c=c)
    go = torch.rand(2, 64, device=DEVICE)
    want.backward(go.double())
    assert torch.isfinite(want).all() and torch.isfinite(xr.grad).all()
    if a * c > 709:
        px, _, pout = _paper(x, t, a, c, True, "none")
        pout.backward(go.double())
        assert not torch.isfinite(px.grad).all()  # the form decisions.md rules out
    out, gx, gt = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "none", a=a, c=c), x, t, go)
    for got, ref in ((out, want), (gx, xr.grad), (gt, tr.grad)):
        assert torch.isfinite(got).all()
        assert rel_err(got, ref) <= REL_TOL[dtype]
    assert torch.all(gx[0, :6] == 0)


def test_sigmoid_tail_keeps_precision():
    """l just above c with a (l - c) in [15, 20]: sigmoid rounds to 1 in float32, so a naive
    f (1 - f) is 0 while the true term l^2 a f (1 - f) is ~1e-5 of the gradient at a c = 1000."""
    a, c = 5000.0, 0.2
    t = torch.rand(4, 64, device=DEVICE)
    x = t + c + torch.empty(4, 64, device=DEVICE).uniform_(15, 20) / a
    x64, t64, want = _paper(x, t, a, c, True, "none")
    go = torch.rand(4, 64, device=DEVICE)
    want.backward(go.double())
    out, gx, gt = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "none", a=a, c=c), x, t, go)
    assert rel_err(out, want) <= REL_TOL[torch.float32]
    assert rel_err(gx, x64.grad) <= REL_TOL[torch.float32]
    assert rel_err(gt, t64.grad) <= REL_TOL[torch.float32]


def test_zero_weight_excludes_nan_and_inf():
    t = torch.rand(4, 8, device=DEVICE)
    x = t + torch.randn(4, 8, device=DEVICE)
    x[0, 0], t[1, 1], x[2, 2] = float("nan"), float("inf"), float("-inf")
    weight = torch.ones(4, 8, dtype=torch.bool, device=DEVICE)
    weight[0, 0] = weight[1, 1] = weight[2, 2] = False
    out, gx, gt = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "sum", weight=weight), x, t,
                         torch.ones(()))
    keep = weight
    x64, t64, want = _paper(torch.where(keep, x, 0), torch.where(keep, t, 0), 10.0, 0.2, True,
                            "sum", weight)
    want.backward()
    assert rel_err(out, want) <= REL_TOL[torch.float32]
    assert torch.all(gx[~keep] == 0) and torch.all(gt[~keep] == 0)
    assert rel_err(gx, x64.grad) <= REL_TOL[torch.float32]
    assert rel_err(gt, t64.grad) <= REL_TOL[torch.float32]


# --------------------------------------------------------------------------- engine behaviour

@pytest.mark.parametrize("reduction,dtype", [("none", torch.float32), ("sum", torch.float16),
                                             ("weighted_mean", torch.bfloat16)])
def test_poisoned_outputs_are_all_written(reduction, dtype):
    t = torch.rand(SHAPE, device=DEVICE).to(dtype)
    x = (t.float() + 0.4 * torch.randn(SHAPE, device=DEVICE)).to(dtype)
    weight = torch.rand(SHAPE[0], 1, 1, 1, device=DEVICE)
    go = torch.randn(SHAPE, device=DEVICE) if reduction == "none" else torch.tensor(1.7)

    def fn(xx, tt):
        return shrinkage_loss(xx, tt, reduction, a=5.0, c=0.5, weight=weight)
    with engine_config(poison=True, block=128):
        out, gx, gt = _grads(fn, x, t, go)
    assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gt).all()
    with engine_config(block=128):
        out2, gx2, gt2 = _grads(fn, x, t, go)
    assert torch.equal(out, out2) and torch.equal(gx, gx2) and torch.equal(gt, gt2)


def test_several_programs_and_determinism():
    """block 64 over 384 elements = 6 programs, strided input, broadcast weight: elementwise
    outputs bitwise equal to the default block, scalars within ~n eps, repeated calls identical."""
    t = torch.rand(SHAPE, device=DEVICE)
    x = (t + 0.4 * torch.randn(SHAPE, device=DEVICE)).transpose(2, 3)  # non-contiguous
    t = t.transpose(2, 3)
    weight = torch.rand(1, 2, 1, 8, device=DEVICE)
    go = torch.randn(SHAPE, device=DEVICE)
    kw = dict(a=50.0, c=0.05, weight=weight)
    none_default = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "none", **kw), x, t, go)
    wm_default = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "weighted_mean", **kw), x, t,
                        torch.ones(()))
    with engine_config(block=64):
        none_small = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "none", **kw), x, t, go)
        wm_small = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "weighted_mean", **kw), x, t,
                          torch.ones(()))
        wm_again = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "weighted_mean", **kw), x, t,
                          torch.ones(()))
    for u, v in zip(none_default, none_small):
        assert torch.equal(u, v)
    for u, v in zip(wm_small, wm_again):
        assert torch.equal(u, v)
    for u, v in zip(wm_default, wm_small):
        assert rel_err(u, v) <= 384 * torch.finfo(torch.float32).eps
    x64, t64, want = _paper(x, t, 50.0, 0.05, True, "weighted_mean", weight)
    want.backward()
    for got, ref in zip(wm_small, (want, x64.grad, t64.grad)):
        assert rel_err(got, ref) <= REL_TOL[torch.float32]


@pytest.mark.parametrize("lw", [0.25, "tensor"])
def test_loss_weight(lw):
    loss_weight = torch.tensor(0.25, device=DEVICE) if lw == "tensor" else lw
    t = torch.rand(SHAPE, device=DEVICE)
    x = t + 0.4 * torch.randn(SHAPE, device=DEVICE)
    weight = torch.rand(SHAPE) > 0.5
    out, gx, gt = _grads(lambda xx, tt: shrinkage_loss(xx, tt, "mean", weight=weight,
                                                       loss_weight=loss_weight),
                         x, t, torch.ones(()))
    x64, t64, want = _paper(x, t, 10.0, 0.2, True, "mean", weight, loss_weight=0.25)
    want.backward()
    assert rel_err(out, want) <= REL_TOL[torch.float32]
    assert rel_err(gx, x64.grad) <= REL_TOL[torch.float32]
    assert rel_err(gt, t64.grad) <= REL_TOL[torch.float32]
    crit = ShrinkageLoss("mean", loss_weight=loss_weight)
    assert torch.equal(crit(x, t, weight), out)


def test_no_host_sync():
    t = torch.rand(SHAPE, device=DEVICE)
    x = (t + 0.4 * torch.randn(SHAPE, device=DEVICE)).requires_grad_()
    t.requires_grad_()
    names = ("item", "__bool__", "tolist", "__float__", "__int__", "__index__", "numpy")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def forbid(name):
        def f(*args, **kwargs):
            raise AssertionError(f"host sync: Tensor.{name}")
        return f
    try:
        for n in names:
            setattr(torch.Tensor, n, forbid(n))
        loss = shrinkage_loss(x, t, "mean", avg_factor=torch.tensor(3.0),
                              loss_weight=torch.tensor(0.5), weight=torch.rand(SHAPE) > 0.5)
        loss.backward(torch.tensor(2.0))
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(t.grad).all()


# --------------------------------------------------------------------------- errors and API

@pytest.mark.parametrize("kwargs,name", [({"a": 0.0}, "a"), ({"a": -1.0}, "a"),
                                         ({"a": math.inf}, "a"), ({"a": math.nan}, "a"),
                                         ({"c": math.nan}, "c"), ({"c": -math.inf}, "c")])
def test_bad_parameters_raise(kwargs, name):
    x, t = torch.rand(2, 3, device=DEVICE), torch.rand(2, 3, device=DEVICE)
    for fn in (shrinkage_loss, ref_shrinkage, lambda *a, **k: ShrinkageLoss(**k)(*a)):
        with pytest.raises(ValueError, match=rf"^{name} must be finite"):
            fn(x, t, **kwargs)


def test_negative_c_and_other_arguments():
    t = torch.rand(4, 16, device=DEVICE)
    x = t + torch.randn(4, 16, device=DEVICE)
    x64, _, want = _paper(x, t, 3.0, -0.5, False, "mean")
    assert rel_err(shrinkage_loss(x, t, a=3.0, c=-0.5, exp_target_weight=False), want) \
        <= REL_TOL[torch.float32]
    with pytest.raises(TypeError, match="exp_target_weight"):
        shrinkage_loss(x, t, exp_target_weight="yes")
    with pytest.raises(TypeError, match="weight"):
        shrinkage_loss(x, t, weight=torch.rand(4, 16, requires_grad=True))
    with pytest.raises(ValueError, match="avg_factor"):
        shrinkage_loss(x, t, "sum", avg_factor=2.0)
    assert "a=10.0" in repr(ShrinkageLoss())


def test_docstring_examples_run(monkeypatch):
    import fusedloss.shrinkage as module
    # the top-level exports are wired by the package; make the examples runnable either way
    monkeypatch.setattr(fusedloss, "shrinkage_loss", shrinkage_loss, raising=False)
    monkeypatch.setattr(fusedloss, "ShrinkageLoss", ShrinkageLoss, raising=False)
    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.attempted >= 6 and result.failed == 0
