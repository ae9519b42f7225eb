"""Focal family: sigmoid focal loss, quality focal loss, varifocal loss.

Expected values never come from fusedloss itself. They come from float64 formulas written in
this file: the literal torchvision / mmdet / ultralytics code (float64 autograd), and a stable
analytic float64 form (value and both derivatives) that is checked against the literal code
wherever that is finite and against mpmath at extreme logits. fusedloss.reference is checked
against the same formulas. Large factor spaces use pairwise coverage (every pair of factor
values appears in at least one case; checked by a test).
"""
import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, REL_TOL, rel_err
from fusedloss import _engine, engine_config
from fusedloss import focal as FL
from fusedloss.reference import focal as RF

# the interpreter evaluates discarded lanes too (log(0) in masked-off tail lanes): numpy warns
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F64 = torch.float64
ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@pytest.fixture(autouse=True)
def _poison():
    # every buffer a kernel writes starts as NaN: an element it forgot shows up
    with engine_config(poison=True):
        yield


# --------------------------------------------------------------------------- pairwise cases

def pairwise(factors: dict, seed: int = 0, tries: int = 40) -> list:
    """Greedy all-pairs covering array (deterministic)."""
    names = list(factors)
    sizes = [len(factors[k]) for k in names]
    rng = random.Random(seed)

    def pairs_of(row):
        return {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(names)), 2)}

    uncovered = {(i, a, j, b) for i, j in itertools.combinations(range(len(names)), 2)
                 for a in range(sizes[i]) for b in range(sizes[j])}
    rows = []
    while uncovered:
        best = None
        for _ in range(tries):
            i, a, j, b = rng.choice(sorted(uncovered))
            row = {i: a, j: b}
            order = [k for k in range(len(names)) if k not in row]
            rng.shuffle(order)
            for k in order:
                def gain(v):
                    return sum(((min(k, m), v if k < m else row[m], max(k, m),
                                 row[m] if k < m else v) in uncovered) for m in row)
                row[k] = max(range(sizes[k]), key=lambda v: (gain(v), rng.random()))
            full = [row[k] for k in range(len(names))]
            g = len(pairs_of(full) & uncovered)
            if best is None or g > best[0]:
                best = (g, full)
        rows.append(best[1])
        uncovered -= pairs_of(best[1])
    return [{names[k]: factors[names[k]][v] for k, v in enumerate(row)} for row in rows]


def _case_id(case: dict) -> str:
    def fmt(v):
        if isinstance(v, torch.dtype):
            return str(v).replace("torch.", "")
        return str(v)
    return "-".join(f"{k}={fmt(v)}" for k, v in case.items())


FOCAL_FACTORS = {
    "reduction": ["none", "sum", "mean", "weighted_mean", "mean_af"],
    "gamma": [0.0, 0.5, 1.0, 2.0, 5.0],
    "alpha": [0.25, None, 0.75],
    "target": ["hard", "soft", "int"],
    "weight": ["none", "anchor", "full"],
    "dtype": list(ALL_DTYPES),
    "layout": ["contig", "strided"],
    "grad_out": ["one", "random"],
    "from_logits": [True, False],
    "loss_weight": [1.0, 0.5, "tensor"],
}
FOCAL_CASES = pairwise(FOCAL_FACTORS, seed=1)

QV_FACTORS = {
    "loss": ["qfl", "vfl", "vfl_noiou"],
    "reduction": ["none", "sum", "mean", "weighted_mean", "mean_af"],
    "p": [0.0, 0.5, 1.0, 2.0],  # beta (QFL) / gamma (VFL)
    "dtype": list(ALL_DTYPES),
    "weight": ["none", "anchor", "full"],
    "layout": ["contig", "strided"],
    "grad_out": ["one", "random"],
    "from_logits": [True, False],
}
QV_CASES = pairwise(QV_FACTORS, seed=2)


def test_pairwise_covers_every_pair():
    for factors, cases in ((FOCAL_FACTORS, FOCAL_CASES), (QV_FACTORS, QV_CASES)):
        for (n1, v1s), (n2, v2s) in itertools.combinations(factors.items(), 2):
            for v1, v2 in itertools.product(v1s, v2s):
                assert any(c[n1] == v1 and c[n2] == v2 for c in cases), (n1, v1, n2, v2)
    assert len(FOCAL_CASES) < 45 and len(QV_CASES) < 35  # pairwise, not the full product


# --------------------------------------------------------------------------- literal formulas

def tv_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """torchvision/ops/focal_loss.py, verbatim."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        pass
    elif reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def mmdet_focal_with_prob(pred, target, gamma=2.0, alpha=0.25):
    """mmdet py_focal_loss_with_prob (activated=True), elementwise, one-hot float target."""
    pt = (1 - pred) * target + pred * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return F.binary_cross_entropy(pred, target, reduction="none") * focal_weight


def mmdet_qfl(pred, label, score, beta=2.0):
    """mmdet quality_focal_loss (logits), per-row sum over classes."""
    pred_sigmoid = pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = F.binary_cross_entropy_with_logits(pred, zerolabel, reduction="none") * \
        scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none") * scale_factor.abs().pow(beta)
    return loss.sum(dim=1, keepdim=False)


def mmdet_vfl(pred, target, alpha=0.75, gamma=2.0, iou_weighted=True):
    """mmdet varifocal_loss, elementwise."""
    pred_sigmoid = pred.sigmoid()
    target = target.type_as(pred)
    if iou_weighted:
        focal_weight = target * (target > 0.0).float() + \
            alpha * (pred_sigmoid - target).abs().pow(gamma) * (target <= 0.0).float()
    else:
        focal_weight = (target > 0.0).float() + \
            alpha * (pred_sigmoid - target).abs().pow(gamma) * (target <= 0.0).float()
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight


def ultralytics_vfl(pred_score, gt_score, label, alpha=0.75, gamma=2.0):
    """ultralytics VarifocalLoss.forward."""
    weight = alpha * pred_score.sigmoid().pow(gamma) * (1 - label) + gt_score * label
    return (F.binary_cross_entropy_with_logits(pred_score.float(), gt_score.float(),
                                               reduction="none") * weight).mean(1).sum()


# --------------------------------------------------------------------------- stable float64 form

def _logit_terms(x, t):
    """(ce, dce/dx, dce/dt, s(x), s(-x)) in log-sigmoid form."""
    lp, ln = F.logsigmoid(x), F.logsigmoid(-x)
    p, pn = lp.exp(), ln.exp()
    ce = -(t * lp + (1 - t) * ln)
    return ce, (1 - t) * p - t * pn, ln - lp, p, pn


def _prob_terms(p, t):
    """binary_cross_entropy on probabilities with torch's clamp and gradient conventions."""
    lp, l1p = torch.log(p), torch.log1p(-p)
    ce = -(t * lp.clamp_min(-100) + (1 - t) * l1p.clamp_min(-100))
    eps = float(torch.tensor(1e-12, dtype=torch.float32))  # torch's EPSILON, even in float64
    return ce, (p - t) / (p * (1 - p)).clamp_min(eps), l1p - lp


def _modulated(ce, dce_dx, dce_dt, m, dm_dx, dm_dt, g):
    """ce * m^g with derivatives; ce g m^(g-1) in log domain, 0 (the limit) where m == 0."""
    pos = m > 0
    lm = torch.log(torch.where(pos, m, 1.0))
    pw = torch.where(pos, torch.exp(g * lm), 1.0 if g == 0 else 0.0)
    nz = pos & (ce != 0)
    k = torch.where(nz, g * ce.sign() * torch.exp(torch.log(torch.where(nz, ce.abs(), 1.0))
                                                  + (g - 1) * lm), 0.0)
    dt = torch.where(pw == 0, 0.0, dce_dt * pw) + k * dm_dt
    return ce * pw, dce_dx * pw + k * dm_dx, dt


def focal_f64(x, t, alpha, gamma, from_logits=True):
    """(loss, dloss/dx, dloss/dt) of the sigmoid focal loss, float64."""
    x, t = x.to(F64), t.to(F64)
    if from_logits:
        ce, dce, dce_dt, p, pn = _logit_terms(x, t)
        q, dq_dx, dq_dt = t * pn + (1 - t) * p, p * pn * (1 - 2 * t), pn - p
    else:
        ce, dce, dce_dt = _prob_terms(x, t)
        q, dq_dx, dq_dt = t * (1 - x) + (1 - t) * x, 1 - 2 * t, 1 - 2 * x
    l, dx, dt = _modulated(ce, dce, dce_dt, q, dq_dx, dq_dt, gamma)
    if alpha is not None and alpha >= 0:
        a = alpha * t + (1 - alpha) * (1 - t)
        l, dx, dt = a * l, a * dx, a * dt + (2 * alpha - 1) * l
    return l, dx, dt


def qfl_f64(x, t, beta, from_logits=True):
    x, t = x.to(F64), t.to(F64)
    if from_logits:
        ce, dce, dce_dt, p, pn = _logit_terms(x, t)
        d, dd_dx = (1 - t) * p - t * pn, p * pn
    else:
        ce, dce, dce_dt = _prob_terms(x, t)
        d, dd_dx = x - t, torch.ones_like(x)
    s = d.sign()
    return _modulated(ce, dce, dce_dt, d.abs(), s * dd_dx, -s, beta)


def vfl_f64(x, t, alpha, gamma, iou_weighted=True, from_logits=True):
    x, t = x.to(F64), t.to(F64)
    if from_logits:
        ce, dce, dce_dt, p, pn = _logit_terms(x, t)
        m, dm_dx = p - t, p * pn
    else:
        ce, dce, dce_dt = _prob_terms(x, t)
        m, dm_dx = x - t, torch.ones_like(x)
    pos = t > 0
    ln, dxn, dtn = _modulated(ce, dce, dce_dt, torch.where(pos, 1.0, m), dm_dx, -1.0, gamma)
    wp = t if iou_weighted else torch.ones_like(t)
    return (torch.where(pos, ce * wp, alpha * ln), torch.where(pos, dce * wp, alpha * dxn),
            torch.where(pos, dce_dt * wp + (ce if iou_weighted else 0.0), alpha * dtn))


def one_hot(labels, C, dtype):
    idx = labels.long()
    valid = (idx >= 0) & (idx < C)
    return (F.one_hot(idx.clamp(0, C - 1), C) * valid.unsqueeze(-1)).to(dtype)


def reduce_expected(terms, w, shape, reduction, avg_factor, loss_weight, go):
    """Apply weight (zero excludes), loss_weight and the reduction to float64 (l, dx, dt)."""
    l, dx, dt = terms
    wf = torch.ones(shape, dtype=F64) if w is None else w.to(F64).expand(shape)
    keep = wf != 0
    l, dx, dt = (torch.where(keep, v * wf, 0.0) for v in (l, dx, dt))
    lw = float(loss_weight) if not isinstance(loss_weight, torch.Tensor) else float(loss_weight)
    go = go.to(F64)
    if reduction == "none":
        return l * lw, dx * lw * go, dt * lw * go
    if reduction == "sum":
        denom = 1.0
    elif reduction == "mean":
        denom = float(avg_factor) if avg_factor is not None else l.numel()
    else:
        denom = float(wf.sum()) if w is not None else l.numel()
    if denom == 0:
        return torch.zeros((), dtype=F64), dx * 0, dt * 0
    return l.sum() * lw / denom, dx * lw * go / denom, dt * lw * go / denom


def assert_matches(out, ref, tol, what, eager=None):
    """Norm-relative error over entries where ``ref`` is finite and fits out's dtype; infinities
    and NaN of ``ref`` must be reproduced exactly; no worse than eager (2x + 1 ulp) when given."""
    out = out.detach().to(F64)
    ref = ref.detach().to(F64)
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    fin = torch.isfinite(ref)
    assert torch.equal(out[~fin].nan_to_num(), ref[~fin].nan_to_num()), (what, "non-finite")
    big = ref.abs() > torch.finfo(tol[1]).max if tol[1] != F64 else torch.zeros_like(fin)
    sel = fin & ~big
    assert bool(torch.isfinite(out[sel]).all()), (what, "non-finite where the reference is finite")
    if bool(big.any()):  # the true value overflows the output dtype: inf of the right sign
        assert torch.equal(out[big].sign(), ref[big].sign()), what
    err = rel_err(out[sel], ref[sel]) if sel.any() else 0.0
    assert err <= tol[0], f"{what}: rel err {err:.3g} > {tol[0]:.3g}"
    if eager is not None:
        eager = eager.detach().to(F64)
        if bool((torch.isfinite(eager) | ~sel).all()):  # eager NaN/inf: nothing to compare
            e_err = rel_err(eager[sel], ref[sel])
            bound = 2 * e_err + torch.finfo(tol[1]).eps
            assert err <= bound, f"{what}: rel err {err:.3g} worse than eager {e_err:.3g}"
    return err


def _tol(dtype):
    return REL_TOL[dtype]


# --------------------------------------------------------------------------- input builders

N, C = 240, 9  # 2160 elements: one program under the interpreter


def _make_inputs(case, dtype, from_logits, target_kind):
    if case.get("layout") == "strided":
        x = torch.randn(C, N, dtype=F64).t()  # transposed view: no collapse possible
    else:
        x = torch.randn(N, C, dtype=F64)
    x = x * 3.0
    if not from_logits:
        x = torch.sigmoid(x * (2.0 / 3.0))
    x = x.to(dtype)
    labels = None
    if target_kind == "hard":
        t = (torch.rand(N, C) < 0.2).to(dtype)
    elif target_kind == "soft":
        t = torch.rand(N, C, dtype=F64).to(dtype)
        t[torch.rand(N, C) < 0.5] = 0.0
    elif target_kind == "qv":  # IoU quality at one class per positive row, all-negative rows
        t = torch.zeros(N, C, dtype=dtype)
        rows = torch.arange(N)[torch.rand(N) < 0.4]
        t[rows, torch.randint(0, C, (len(rows),))] = torch.rand(len(rows), dtype=F64).to(dtype)
    else:  # class indices with background values C, -1 and 1000
        labels = torch.randint(0, C, (N,))
        bg = torch.rand(N)
        labels[bg < 0.45] = C
        labels[bg < 0.3] = -1
        labels[bg < 0.15] = 1000
        t = labels
    return x, t, labels


def _make_weight(kind, dtype):
    if kind == "none":
        return None
    if kind == "anchor":  # per-anchor weight broadcast over classes
        w = torch.rand(N, 1, dtype=F64).to(dtype)
        w[torch.rand(N, 1) < 0.2] = 0
        return w
    return torch.rand(N, C) > 0.2  # full bool mask


def _reduction_args(case):
    red = case["reduction"]
    if red == "mean_af":
        return "mean", torch.tensor(37.5)
    return red, None


def _loss_weight(case):
    lw = case.get("loss_weight", 1.0)
    return torch.tensor(2.0) if lw == "tensor" else lw


def _grad_out(case, red, dtype):
    if case["grad_out"] == "one":
        return None
    if red == "none":
        return torch.randn(N, C, dtype=F64).to(dtype)
    return torch.tensor(0.37, dtype=torch.float32 if dtype != F64 else F64)


CPU = torch.device("cpu")


def dev(v, device=DEVICE):
    """Tensors (and only tensors) moved to the device under test, strides kept."""
    return v.to(device) if isinstance(v, torch.Tensor) else v


def _run(fn, x, t, go, *, device=DEVICE, **kw):
    """Forward + backward on ``device`` (fusedloss: DEVICE; references: CPU); returns
    (loss, x.grad, t.grad or None) on the CPU."""
    xa = dev(x.detach(), device).clone().requires_grad_()
    ta = dev(t.detach(), device)
    ta = ta.clone().requires_grad_() if t.dtype.is_floating_point else ta
    out = fn(xa, ta, **{k: dev(v, device) for k, v in kw.items()})
    if go is None:
        out.backward(torch.ones_like(out)) if out.dim() else out.backward()
    else:
        out.backward(dev(go, device))
    return (out.detach().cpu(), xa.grad.cpu(),
            ta.grad.cpu() if t.dtype.is_floating_point else None)


def _blank(x, t, w):
    if w is None:
        return x, t
    keep = (w != 0).expand(x.shape)
    return torch.where(keep, x, 0.0), torch.where(keep, t, 0.0)


def _check_all(case, fused, reference, eager, expected, dtype, what):
    """fused vs expected (dtype tolerance, no worse than eager); reference(f64) vs expected."""
    out_dtype = fused[0].dtype
    names = ("loss", "grad_input", "grad_target")
    for i, name in enumerate(names):
        if fused[i] is None:
            continue
        tol = (_tol(dtype), fused[i].dtype if i else out_dtype)
        e = eager[i] if eager is not None and dtype != F64 else None
        assert_matches(fused[i], expected[i], tol, f"{what} fused {name}", e)
        assert_matches(reference[i], expected[i], (1e-12, F64), f"{what} reference {name}")


# --------------------------------------------------------------------------- sigmoid focal

@pytest.mark.parametrize("case", FOCAL_CASES, ids=_case_id)
def test_sigmoid_focal_pairwise(case):
    dtype, fl, g, alpha = case["dtype"], case["from_logits"], case["gamma"], case["alpha"]
    x, t, labels = _make_inputs(case, dtype, fl, case["target"])
    w = _make_weight(case["weight"], dtype)
    if w is not None:  # a zero weight excludes even a NaN input
        zero = (w == 0).expand(x.shape).nonzero()[0]
        x = x.clone()
        x[tuple(zero)] = float("nan")
    red, af = _reduction_args(case)
    lw = _loss_weight(case)
    go = _grad_out(case, red, dtype)
    kw = dict(alpha=alpha, gamma=g, reduction=red, weight=w, avg_factor=af, from_logits=fl,
              loss_weight=lw)

    assert x.is_contiguous() == (case["layout"] == "contig")
    fused = _run(FL.sigmoid_focal_loss, x, t, go, **kw)
    assert fused[0].dtype == (dtype if red == "none" else
                              (F64 if dtype == F64 else torch.float32))
    assert fused[1].dtype == dtype and fused[1].shape == x.shape
    if red == "none":
        assert fused[0].is_contiguous() and fused[0].shape == x.shape

    tf = one_hot(labels, C, dtype) if labels is not None else t
    go_e = torch.ones(fused[0].shape) if go is None else go
    xb, tb = _blank(x.to(F64), tf.to(F64), w)
    expected = reduce_expected(focal_f64(xb, tb, alpha, g, fl), w, x.shape, red, af, lw, go_e)

    x64 = x.to(F64)
    t64 = t if labels is not None else t.to(F64)
    w64 = w.to(F64) if w is not None and w.dtype != torch.bool else w
    reference = _run(RF.sigmoid_focal_loss, x64, t64, go_e.to(F64), device=CPU,
                     **{**kw, "weight": w64})

    # eager torch in the same dtype (torchvision / mmdet code), on the blanked inputs
    eager = None
    if dtype != F64:
        xe, te = _blank(x, tf, w)

        def eager_fn(xi, ti, **_):
            if fl:
                l = tv_sigmoid_focal_loss(xi, ti, -1 if alpha is None else alpha, g)
            else:
                l = mmdet_focal_with_prob(xi, ti, g, alpha if alpha is not None else 0.5)
                if alpha is None:
                    l = l * 2.0  # alpha 0.5 halves the loss: undo, leaving no alpha term
            if w is not None:
                l = l * w.to(l.dtype)
            l = l * float(lw)
            if red == "none":
                return l
            s = l.sum(dtype=torch.float32)  # scalars are fp32 (as torch under autocast)
            d = {"sum": 1, "mean": l.numel() if af is None else float(af),
                 "weighted_mean": float(w.to(F64).expand(l.shape).sum()) if w is not None
                 else l.numel()}[red]
            return s / d
        eager = _run(eager_fn, xe, te.detach(), go_e.to(dtype) if red == "none" else go,
                     device=CPU)
        if labels is not None:
            eager = (eager[0], eager[1], None)
    _check_all(case, fused, reference, eager, expected, dtype, _case_id(case))


def test_torchvision_signature_and_defaults():
    x = torch.randn(50, 6, dtype=F64) * 4
    t = (torch.rand(50, 6) < 0.3).to(F64)
    ref = tv_sigmoid_focal_loss(x, t)  # alpha 0.25, gamma 2, "none"
    out = FL.sigmoid_focal_loss(dev(x), dev(t)).cpu()
    assert out.shape == x.shape
    assert_matches(out, ref, (1e-12, F64), "defaults")
    for args in [(0.5, 1.0, "sum"), (-1, 0.0, "mean"), (1.5, 3.0, "none"), (-0.2, 2.0, "sum")]:
        assert_matches(FL.sigmoid_focal_loss(dev(x), dev(t), *args).cpu(),
                       tv_sigmoid_focal_loss(x, t, *args),
                       (1e-12, F64), str(args))
    # alpha=None is torchvision's alpha=-1
    x, t = dev(x), dev(t)
    assert torch.equal(FL.sigmoid_focal_loss(x, t, None, 2.0), FL.sigmoid_focal_loss(x, t, -1, 2.0))


def test_stable_form_matches_literal_formulas():
    """The float64 helpers above agree with the literal code wherever that code is finite."""
    x = torch.randn(400, 5, dtype=F64) * 6
    soft = torch.rand(400, 5, dtype=F64)
    soft[torch.rand(400, 5) < 0.4] = 0.0
    hard = (torch.rand(400, 5) < 0.3).to(F64)
    probs = torch.sigmoid(x / 3)
    for t, g, a in [(hard, 2.0, 0.25), (soft, 0.5, 0.75), (soft, 0.0, -1.0), (hard, 1.0, 1.5),
                    (soft, 5.0, 0.25)]:
        for logits in (True, False):
            xi = (x if logits else probs).clone().requires_grad_()
            ti = t.clone().requires_grad_()
            if logits:
                lit = tv_sigmoid_focal_loss(xi, ti, a, g)
            elif a < 0:  # mmdet always applies alpha: alpha 0.5 times 2 has no alpha term
                lit = mmdet_focal_with_prob(xi, ti, g, 0.5) * 2
            else:
                lit = mmdet_focal_with_prob(xi, ti, g, a)
            lit.backward(torch.ones_like(lit))
            exp = focal_f64(x if logits else probs, t, a, g, logits)
            for got, want in zip((lit, xi.grad, ti.grad), exp):
                fin = torch.isfinite(got)
                assert rel_err(want[fin], got[fin]) < 1e-12
    # QFL against mmdet (labels + scores), per row
    labels = torch.randint(0, 6, (400,))
    score = torch.rand(400, dtype=F64)
    t = one_hot(labels, 5, F64) * score[:, None]
    for beta in (0.5, 2.0):
        xi = x.clone().requires_grad_()
        lit = mmdet_qfl(xi, labels, score, beta)
        lit.sum().backward()
        l, dx, _ = qfl_f64(x, t, beta)
        assert rel_err(l.sum(1), lit) < 1e-12
        fin = torch.isfinite(xi.grad)
        assert rel_err(dx[fin], xi.grad[fin]) < 1e-12
    for iou in (True, False):
        xi, ti = x.clone().requires_grad_(), soft.clone().requires_grad_()
        lit = mmdet_vfl(xi, ti, 0.75, 2.0, iou)
        lit.sum().backward()
        for got, want in zip((lit, xi.grad, ti.grad), vfl_f64(x, soft, 0.75, 2.0, iou)):
            assert rel_err(want, got) < 1e-12


def test_stable_form_matches_mpmath_at_extreme_logits():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 60
    xs = [-1e4, -100.0, -40.0, -17.0, -3.0, 0.0, 2.5, 17.0, 40.0, 100.0, 1e4]
    ts = [0.0, 1.0, 0.3]

    sp = lambda z: mp.log1p(mp.exp(-abs(z))) + max(z, 0)  # noqa: E731
    s = lambda z: 1 / (1 + mp.exp(-z))  # noqa: E731

    def focal_mp(x, t, a, g):
        ce = (1 - t) * sp(x) + t * sp(-x)
        q = t * s(-x) + (1 - t) * s(x)
        return (a * t + (1 - a) * (1 - t)) * ce * q ** g

    def focal_dt_mp(x, t, a, g):
        # closed form: finite differences in t at t in {0, 1} do not converge where
        # q = e^-1e4 (the step would have to be below q)
        ce = (1 - t) * sp(x) + t * sp(-x)
        q = t * s(-x) + (1 - t) * s(x)
        a_t = a * t + (1 - a) * (1 - t)
        return ((2 * a - 1) * ce * q ** g
                + a_t * ((sp(-x) - sp(x)) * q ** g + ce * g * q ** (g - 1) * (s(-x) - s(x))))

    for g in (0.0, 0.5, 2.0):
        for x, t in itertools.product(xs, ts):
            xm, tm = mp.mpf(x), mp.mpf(t)
            want = [focal_mp(xm, tm, 0.25, g),
                    mp.diff(lambda z: focal_mp(z, tm, 0.25, g), xm),
                    focal_dt_mp(xm, tm, 0.25, g)]
            if 0 < t < 1:  # the closed form agrees with a numerical derivative
                num = mp.diff(lambda z: focal_mp(xm, z, 0.25, g), tm)
                assert abs(num - want[2]) <= mp.mpf(10) ** -40 * (1 + abs(want[2]))
            got = focal_f64(torch.tensor([x], dtype=F64), torch.tensor([t], dtype=F64), 0.25, g)
            for gv, wv in zip(got, want):
                wv = float(wv)
                assert abs(float(gv) - wv) <= 1e-12 * abs(wv) + 1e-300, (g, x, t, float(gv), wv)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_extreme_logits(dtype):
    xs = torch.tensor([-1e4, -100.0, -40.0, -17.0, -5.0, 0.0, 5.0, 17.0, 40.0, 100.0, 1e4])
    ts = torch.tensor([0.0, 1.0, 0.3, 0.75])
    xg, tg = torch.meshgrid(xs, ts, indexing="ij")
    x, t = xg.reshape(-1).to(dtype), tg.reshape(-1).to(dtype)
    rtol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3, F64: 1e-12}[dtype]
    for g, a in [(0.0, 0.25), (0.5, None), (1.0, 0.25), (2.0, 0.75), (0.25, 0.25)]:
        out, gx, gt = _run(FL.sigmoid_focal_loss, x, t, None, alpha=a, gamma=g)
        want = focal_f64(x, t, a, g)
        hard = (t == 0) | (t == 1)
        for got, w, sel in ((out, want[0], torch.ones_like(hard)), (gx, want[1], hard)):
            # elementwise where no cancellation is possible: the loss, and dl/dx for hard
            # targets (s(x) - t instead of -s(-x) would give 0 there once s(x) rounds to 1)
            err = (got.to(F64) - w).abs()
            bound = rtol * w.abs() + torch.finfo(dtype).tiny
            bad = sel & (err > bound)
            assert not bool(bad.any()), (g, a, x[bad], t[bad], got[bad], w[bad])
        for got, w, name in zip((out, gx, gt), want, ("loss", "dx", "dt")):
            assert bool(torch.isfinite(got).all()), (g, name, got)
            # norm-relative per logit (the 4 targets of one x): errors at |x| = 17 are not
            # hidden behind the values at |x| = 1e4
            err = (got.to(F64) - w).view(len(xs), -1).norm(dim=1)
            bound = rtol * w.view(len(xs), -1).norm(dim=1) + torch.finfo(dtype).tiny
            assert bool((err <= bound).all()), (g, a, name, xs[err > bound], err, bound)
        if dtype == F64 and 0 < g < 1:
            # literal torchvision autograd is NaN once p_t rounds to 1; we return the limit
            xi = x.clone().requires_grad_()
            tv_sigmoid_focal_loss(xi, t, -1 if a is None else a, g).sum().backward()
            assert bool(torch.isnan(xi.grad).any())
    # the reference is finite there too (fp32 and float64 computation)
    for dt in (torch.float32, F64):
        r = _run(RF.sigmoid_focal_loss, x.to(dt), t.to(dt), None, device=CPU, alpha=0.25,
                 gamma=0.5)
        assert all(bool(torch.isfinite(v).all()) for v in r)


# --------------------------------------------------------------------------- integer targets

@pytest.mark.parametrize("idtype", [torch.int64, torch.int32, torch.int16, torch.int8,
                                    torch.uint8])
def test_integer_targets_equal_one_hot(idtype):
    n, c = 300, 7
    vals = {torch.int8: [c, -1, 127], torch.uint8: [c, 255, 200]}.get(idtype, [c, -1, 1000])
    labels = torch.randint(0, c, (n,))
    r = torch.rand(n)
    for i, v in enumerate(vals):
        labels[(r >= 0.15 * i) & (r < 0.15 * (i + 1))] = v
    labels = labels.to(idtype)
    for dtype, red, weight in [(torch.float32, "none", None), (torch.bfloat16, "sum", "anchor"),
                               (torch.float16, "weighted_mean", "full"),
                               (F64, "mean", None)]:
        x = (torch.randn(n, c, dtype=F64) * 4).to(dtype)
        w = None
        if weight == "anchor":
            w = torch.rand(n, 1).to(dtype) * (torch.rand(n, 1) > 0.2)
        elif weight == "full":
            w = torch.rand(n, c) > 0.3
        hot = one_hot(labels, c, dtype)
        for fl in (True, False):
            xi = x if fl else torch.sigmoid(x.float()).to(dtype)
            kw = dict(alpha=0.25, gamma=1.5, reduction=red, weight=w, from_logits=fl)
            a = _run(FL.sigmoid_focal_loss, xi, labels, None, **kw)
            b = _run(FL.sigmoid_focal_loss, xi, hot, None, **kw)
            assert a[0].dtype == b[0].dtype and torch.equal(a[0], b[0]), (dtype, red, fl)
            assert torch.equal(a[1], b[1]), (dtype, red, fl)
            # and the reference builds the same one-hot rows
            ref = RF.sigmoid_focal_loss(xi.to(F64), labels, **{**kw, "weight": w})
            exp = FL.sigmoid_focal_loss(dev(xi.to(F64)), dev(hot.to(F64)),
                                        **{**kw, "weight": dev(w)}).cpu()
            assert_matches(ref, exp, (1e-12, F64), "reference one-hot")


def test_integer_target_validation():
    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"\.float\(\)"):
        FL.sigmoid_focal_loss(x, torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"\.float\(\)"):
        FL.sigmoid_focal_loss(x, torch.zeros(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape"):
        FL.sigmoid_focal_loss(x, torch.zeros(5, dtype=torch.long))
    for fn in (FL.quality_focal_loss, FL.varifocal_loss):
        with pytest.raises(TypeError, match=r"float"):
            fn(x, torch.zeros(4, dtype=torch.long))
        with pytest.raises(TypeError, match=r"float"):
            fn(x, torch.zeros(4, 3, dtype=torch.long))


# --------------------------------------------------------------------------- probabilities

@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_probability_inputs_near_0_and_1(dtype):
    eps = torch.finfo(dtype).eps
    ps = torch.tensor([0.0, 1e-30, 1e-7, 1e-3, 0.3, 0.5, 1 - 1e-3, 1 - 4 * eps, 1.0], dtype=F64)
    ts = torch.tensor([0.0, 1.0, 0.3], dtype=F64)
    pg, tg = torch.meshgrid(ps, ts, indexing="ij")
    p, t = pg.reshape(-1).to(dtype), tg.reshape(-1).to(dtype)
    tol = (1e-12 if dtype == F64 else 2e-6, dtype)
    for g, a in [(0.0, 0.25), (0.5, 0.25), (2.0, None)]:
        got = _run(FL.sigmoid_focal_loss, p, t, None, alpha=a, gamma=g, from_logits=False)
        want = focal_f64(p, t, a, g, from_logits=False)
        for gv, wv, name in zip(got, want, ("loss", "dp", "dt")):
            assert_matches(gv, wv, tol, f"focal g={g} {name}")
        # the literal mmdet/torch code agrees wherever it is finite
        pi, ti = p.to(F64).clone().requires_grad_(), t.to(F64).clone().requires_grad_()
        lit = mmdet_focal_with_prob(pi, ti, g, 0.5 if a is None else a) * (2 if a is None else 1)
        lit.sum().backward()
        for lv, wv in zip((lit, pi.grad, ti.grad), want):
            fin = torch.isfinite(lv)
            assert rel_err(wv[fin], lv[fin]) < (1e-12 if dtype == F64 else 1e-6)
        if g == 0.0:  # plain BCE: torch's +-inf target gradient at p in {0, 1}
            assert bool(torch.isinf(got[2]).any())
        else:  # p == t in {0, 1}: finite limit where the literal autograd is NaN
            both = ((p == 0) & (t == 0)) | ((p == 1) & (t == 1))
            assert bool(torch.isfinite(got[2][both]).all())
            assert bool(torch.isnan(ti.grad[both]).all())
    for beta in (0.0, 0.5, 2.0):
        got = _run(FL.quality_focal_loss, p, t, None, beta=beta, reduction="none",
                   from_logits=False)
        for gv, wv, name in zip(got, qfl_f64(p, t, beta, False), ("loss", "dp", "dt")):
            assert_matches(gv, wv, tol, f"qfl beta={beta} {name}")
        got = _run(FL.varifocal_loss, p, t, None, gamma=beta, reduction="none", from_logits=False)
        for gv, wv, name in zip(got, vfl_f64(p, t, 0.75, beta, True, False), ("loss", "dp", "dt")):
            assert_matches(gv, wv, tol, f"vfl gamma={beta} {name}")


# --------------------------------------------------------------------------- QFL / VFL

@pytest.mark.parametrize("case", QV_CASES, ids=_case_id)
def test_qfl_vfl_pairwise(case):
    dtype, fl, p = case["dtype"], case["from_logits"], case["p"]
    x, t, _ = _make_inputs(case, dtype, fl, "qv")
    w = _make_weight(case["weight"], dtype)
    red, af = _reduction_args(case)
    go = _grad_out(case, red, dtype)
    if case["loss"] == "qfl":
        fn, rf = FL.quality_focal_loss, RF.quality_focal_loss
        kw = dict(beta=p)
        terms = lambda xi, ti: qfl_f64(xi, ti, p, fl)  # noqa: E731
    else:
        iou = case["loss"] == "vfl"
        fn, rf = FL.varifocal_loss, RF.varifocal_loss
        kw = dict(alpha=0.75, gamma=p, iou_weighted=iou)
        terms = lambda xi, ti: vfl_f64(xi, ti, 0.75, p, iou, fl)  # noqa: E731
    kw.update(reduction=red, weight=w, avg_factor=af, from_logits=fl, loss_weight=0.5)
    fused = _run(fn, x, t, go, **kw)
    go_e = torch.ones(fused[0].shape) if go is None else go
    xb, tb = _blank(x.to(F64), t.to(F64), w)
    expected = reduce_expected(terms(xb, tb), w, x.shape, red, af, 0.5, go_e)
    w64 = w.to(F64) if w is not None and w.dtype != torch.bool else w
    reference = _run(rf, x.to(F64), t.to(F64), go_e.to(F64), device=CPU,
                     **{**kw, "weight": w64})
    _check_all(case, fused, reference, None, expected, dtype, _case_id(case))


def test_qfl_matches_mmdet_and_all_negative_rows():
    n, c = 200, 6
    x = torch.randn(n, c, dtype=F64) * 3
    labels = torch.randint(0, c, (n,))
    labels[torch.rand(n) < 0.5] = c  # background rows: every class negative
    labels[:20] = c  # a block of all-negative rows
    score = torch.rand(n, dtype=F64)
    t = one_hot(labels, c, F64) * score[:, None]
    for beta in (2.0, 0.5):
        out, gx, _ = _run(FL.quality_focal_loss, x, t, None, beta=beta, reduction="none")
        xb = x.clone().requires_grad_()
        lit = mmdet_qfl(xb, labels, score, beta)
        lit.sum().backward()
        lit = lit.detach()
        assert rel_err(out.sum(1), lit) < 1e-12
        assert rel_err(gx, xb.grad) < 1e-12
        # all-negative rows are BCE(x, 0) * s(x)^beta
        neg = torch.sigmoid(x[:20])
        assert rel_err(out[:20].detach(), F.softplus(x[:20]) * neg ** beta) < 1e-12
        # mmdet's weight_reduce_loss: "mean" with avg_factor is sum / avg_factor, as ours;
        # without avg_factor mmdet divides the row sums by N, ours by N * C
        s = FL.quality_focal_loss(dev(x), dev(t), beta, reduction="mean", avg_factor=17.0)
        assert abs(float(s) - float(lit.sum() / 17.0)) <= 1e-12 * float(lit.sum())
        s = FL.quality_focal_loss(dev(x), dev(t), beta, reduction="mean")
        assert abs(float(s) * c - float(lit.mean())) <= 1e-12 * float(lit.sum())


def test_vfl_matches_mmdet_and_ultralytics():
    n, c = 200, 5
    x = torch.randn(n, c, dtype=F64) * 3
    gt = torch.zeros(n, c, dtype=F64)
    rows = torch.arange(n)[torch.rand(n) < 0.4]
    gt[rows, torch.randint(0, c, (len(rows),))] = torch.rand(len(rows), dtype=F64)
    label = (gt > 0).to(F64)
    for gamma in (2.0, 0.5, 0.0):
        for iou in (True, False):
            out, gx, gt_ = _run(FL.varifocal_loss, x, gt, None, alpha=0.75, gamma=gamma,
                                iou_weighted=iou, reduction="none")
            xb, tb = x.clone().requires_grad_(), gt.clone().requires_grad_()
            lit = mmdet_vfl(xb, tb, 0.75, gamma, iou)
            lit.sum().backward()
            assert rel_err(out, lit) < 1e-12
            assert rel_err(gx, xb.grad) < 1e-12
            assert rel_err(gt_, tb.grad) < 1e-12
        ul = ultralytics_vfl(x, gt, label, 0.75, gamma)
        ours = FL.varifocal_loss(dev(x), dev(gt), 0.75, gamma, True, reduction="sum").cpu() / c
        assert abs(float(ours) - float(ul)) <= 1e-6 * float(ul)  # ultralytics' BCE runs in fp32


# --------------------------------------------------------------------------- gradcheck

def test_gradcheck_float64():
    torch.manual_seed(0)
    x = dev(torch.randn(4, 3, dtype=F64) * 2)
    soft = dev(torch.rand(4, 3, dtype=F64) * 0.8 + 0.1)
    probs = dev(torch.rand(4, 3, dtype=F64) * 0.8 + 0.1)
    w = dev(torch.rand(4, 1, dtype=F64) + 0.5)
    vfl_t = soft.clone()
    vfl_t[:2] = -0.25  # negative branch away from the t == 0 discontinuity
    checks = [
        (lambda a, b: FL.sigmoid_focal_loss(a, b, 0.25, 0.5), x, soft),
        (lambda a, b: FL.sigmoid_focal_loss(a, b, None, 2.0, "sum", w), x, soft),
        (lambda a, b: FL.sigmoid_focal_loss(a, b, 0.75, 1.5, "mean", from_logits=False),
         probs, soft),
        (lambda a, b: FL.quality_focal_loss(a, b, 0.5, "none"), x, soft),
        (lambda a, b: FL.quality_focal_loss(a, b, 2.0, "weighted_mean", w, from_logits=False),
         probs, soft),
        (lambda a, b: FL.varifocal_loss(a, b, 0.75, 0.5, True, "none"), x, vfl_t),
        (lambda a, b: FL.varifocal_loss(a, b, 0.6, 2.0, False, "sum", from_logits=False),
         probs, vfl_t),
    ]
    for fn, a, b in checks:
        assert torch.autograd.gradcheck(fn, (a.clone().requires_grad_(),
                                             b.clone().requires_grad_()))
    hot = torch.zeros(4, 3, dtype=F64, device=DEVICE)
    hot[0, 1] = hot[2, 0] = 1  # VFL with exact zeros: input gradient only
    assert torch.autograd.gradcheck(
        lambda a: FL.varifocal_loss(a, hot, 0.75, 2.0, reduction="none"),
        (x.clone().requires_grad_(),))


# --------------------------------------------------------------------------- engine paths

def test_many_programs_partials_and_tail():
    x = torch.randn(250, 9, dtype=F64) * 3  # 2250 elements: 9 programs of 256, ragged tail
    t = torch.rand(250, 9, dtype=F64)
    go = torch.tensor(0.7, dtype=F64)
    with engine_config(block=256, poison=True):
        for red in ("none", "sum", "weighted_mean"):
            w = torch.rand(250, 1, dtype=F64) if red != "none" else None
            got = _run(FL.sigmoid_focal_loss, x, t, go if red != "none" else
                       torch.full((250, 9), 0.7, dtype=F64), alpha=0.25, gamma=0.5,
                       reduction=red, weight=w)
            want = reduce_expected(focal_f64(x, t, 0.25, 0.5), w, x.shape, red, None, 1.0,
                                   go if red != "none" else torch.full((250, 9), 0.7, dtype=F64))
            for gv, wv in zip(got, want):
                assert_matches(gv, wv, (1e-12, F64), red)


def test_reference_is_the_cpu_fallback(monkeypatch):
    """Without Triton the engine calls the reference with the registered hyper-parameters."""
    x = torch.randn(30, 4, dtype=F64)
    t = torch.rand(30, 4, dtype=F64) * (torch.rand(30, 4) < 0.5)
    labels = torch.randint(-1, 5, (30,))
    calls = [
        lambda a, t, labels: FL.sigmoid_focal_loss(a, t, None, 0.5, "sum"),
        lambda a, t, labels: FL.sigmoid_focal_loss(torch.sigmoid(a), labels, 0.3, 2.0, "mean",
                                                   from_logits=False),
        lambda a, t, labels: FL.quality_focal_loss(torch.sigmoid(a), t, 1.5, from_logits=False),
        lambda a, t, labels: FL.varifocal_loss(a, t, 0.6, 1.0, False, "sum", loss_weight=3.0),
        lambda a, t, labels: FL.varifocal_loss(torch.sigmoid(a), t, 0.6, 1.0, True, "none",
                                               from_logits=False),
    ]
    fused = [fn(dev(x), dev(t), dev(labels)).cpu() for fn in calls]
    monkeypatch.setattr(_engine, "uses_triton", lambda device: False)
    for fn, f in zip(calls, fused):
        assert_matches(fn(x, t, labels), f, (1e-12, F64), "fallback")


def test_modules():
    x = dev(torch.randn(20, 4, dtype=F64))
    t = dev(torch.rand(20, 4, dtype=F64))
    w = dev(torch.rand(20, 1, dtype=F64))
    m = FL.FocalLoss(0.5, 1.0, "sum", loss_weight=2.0)
    assert torch.equal(m(x, t, w), FL.sigmoid_focal_loss(x, t, 0.5, 1.0, "sum", w, loss_weight=2.0))
    assert "alpha=0.5" in repr(m) and "loss_weight=2.0" in repr(m)
    m = FL.QualityFocalLoss(beta=1.0, reduction="mean")
    assert torch.equal(m(x, t, avg_factor=3.0),
                       FL.quality_focal_loss(x, t, 1.0, "mean", avg_factor=3.0))
    m = FL.VarifocalLoss(iou_weighted=False, from_logits=False)
    p = torch.sigmoid(x)
    assert torch.equal(m(p, t), FL.varifocal_loss(p, t, iou_weighted=False, from_logits=False))
    assert isinstance(m, _engine.FusedLossModule)


def test_parameter_errors():
    x, t = torch.randn(4, 3), torch.rand(4, 3)
    for bad in (-0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="gamma"):
            FL.sigmoid_focal_loss(x, t, gamma=bad)
        with pytest.raises(ValueError, match="beta"):
            FL.quality_focal_loss(x, t, beta=bad)
        with pytest.raises(ValueError, match="gamma"):
            FL.varifocal_loss(x, t, gamma=bad)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            FL.sigmoid_focal_loss(x, t, alpha=bad)
        with pytest.raises(ValueError, match="alpha"):
            FL.varifocal_loss(x, t, alpha=bad)
    with pytest.raises(TypeError, match="alpha"):
        FL.sigmoid_focal_loss(x, t, alpha="0.25")
    with pytest.raises(TypeError, match="alpha"):
        FL.varifocal_loss(x, t, alpha=None)
    with pytest.raises(TypeError, match="iou_weighted"):
        FL.varifocal_loss(x, t, iou_weighted="yes")
    with pytest.raises(ValueError, match="reduction"):
        FL.sigmoid_focal_loss(x, t, reduction="batchmean")
    with pytest.raises(TypeError, match="weight"):
        FL.sigmoid_focal_loss(x, t, weight=torch.ones(4, 1, requires_grad=True))
    with pytest.raises(RuntimeError, match="double backward"):
        xi = dev(x).requires_grad_()
        torch.autograd.grad(FL.sigmoid_focal_loss(xi, dev(t), reduction="sum"), xi,
                            create_graph=True)
    # gamma / beta == 0 and non-integers are legal
    FL.sigmoid_focal_loss(x, t, gamma=0)
    FL.quality_focal_loss(x, t, beta=0.3)


def test_docstring_examples(monkeypatch):
    import doctest

    import fusedloss
    for name in ("sigmoid_focal_loss", "quality_focal_loss", "varifocal_loss"):
        monkeypatch.setattr(fusedloss, name, getattr(FL, name), raising=False)  # until exported
    for fn in (FL.sigmoid_focal_loss, FL.quality_focal_loss, FL.varifocal_loss):
        for test in doctest.DocTestFinder().find(fn, fn.__name__, globs={}):
            result = doctest.DocTestRunner().run(test)
            assert result.attempted > 0 and result.failed == 0, fn.__name__


def test_torch_compile_class_index_and_probabilities():
    """The custom-op path (used under torch.compile) gives the eager values and gradients."""
    x = torch.randn(40, 6, dtype=torch.float32) * 3
    labels = dev(torch.randint(-1, 7, (40,)))
    t = torch.rand(40, 6)

    def step(xi, ti):
        return (FL.sigmoid_focal_loss(xi, labels, 0.25, 0.5, "sum", loss_weight=0.5)
                + FL.quality_focal_loss(torch.sigmoid(xi), ti, 1.0, from_logits=False)
                + FL.varifocal_loss(xi, ti, reduction="mean", avg_factor=dev(torch.tensor(3.0))))

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = _run(compiled, x, t, None)
    want = _run(step, x, t, None)
    for g, w in zip(got, want):
        assert_matches(g, w, (1e-6, torch.float32), "compile")
