"""Box regression losses (issue 14): the IoU family in torchvision's, mmdet's and ultralytics'
formulas and the distribution focal loss, as row losses of the engine, against float64
references (values and gradients of pred and target, random grad_output and exactly 1), the
libraries' own formulas transcribed here, gradcheck, degenerate boxes and errors."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import fusedloss as fl
from fusedloss import box as B
from fusedloss import runtime
from fusedloss.reference import box as R
from fusedloss.bench._registry import ultralytics_box_loss
from conftest import DEVICE, REL_TOL, rel_err, trap_host_syncs

F64 = torch.float64
MODES = ["iou", "giou", "diou", "ciou"]


def _boxes(shape, spread=10.0, size=4.0):
    centre = torch.rand(*shape, 2, dtype=F64) * spread
    wh = torch.rand(*shape, 2, dtype=F64) * size + 0.05
    return torch.cat([centre - wh / 2, centre + wh / 2], -1).to(DEVICE)


def _pairs(n):
    """pred, target: random overlapping pairs, some identical (ties), some disjoint."""
    p = _boxes((n,))
    g = p + (torch.rand(n, 4, dtype=F64, device=DEVICE) - 0.5) * 2.0
    g[: n // 8] = p[: n // 8]  # identical: every min/max a tie
    g[n // 8: n // 4] = p[n // 8: n // 4] + 30.0  # disjoint
    return p, g


def _convert(boxes, box_format):  # xyxy -> the given format (torchvision.ops.box_convert)
    x1, y1, x2, y2 = boxes.unbind(-1)
    if box_format == "xywh":
        return torch.stack([x1, y1, x2 - x1, y2 - y1], -1)
    if box_format == "cxcywh":
        return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)
    return boxes


# ----------------------------------------------------------------- the references themselves

def _torchvision_literal(boxes1, boxes2, mode, eps=1e-7):
    """torchvision.ops' generalized/distance/complete box IoU losses, as written upstream
    (boolean-mask assignment of the intersection, atan(w / h))."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1 = torch.max(x1, x1g)
    ykis1 = torch.max(y1, y1g)
    xkis2 = torch.min(x2, x2g)
    ykis2 = torch.min(y2, y2g)
    intsctk = torch.zeros_like(x1)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    unionk = (x2 - x1) * (y2 - y1) + ((x2g - x1g) * (y2g - y1g)) - intsctk
    iouk = intsctk / (unionk + eps)
    xc1 = torch.min(x1, x1g)
    yc1 = torch.min(y1, y1g)
    xc2 = torch.max(x2, x2g)
    yc2 = torch.max(y2, y2g)
    if mode == "giou":
        area_c = (xc2 - xc1) * (yc2 - yc1)
        return 1 - (iouk - ((area_c - unionk) / (area_c + eps)))
    diagonal_distance_squared = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
    x_p = (x2 + x1) / 2
    y_p = (y2 + y1) / 2
    x_g = (x1g + x2g) / 2
    y_g = (y1g + y2g) / 2
    centers_distance_squared = ((x_p - x_g) ** 2) + ((y_p - y_g) ** 2)
    loss = 1 - iouk + (centers_distance_squared / diagonal_distance_squared)
    if mode == "diou":
        return loss
    w_pred = x2 - x1
    h_pred = y2 - y1
    w_gt = x2g - x1g
    h_gt = y2g - y1g
    v = (4 / (torch.pi ** 2)) * torch.pow((torch.atan(w_gt / h_gt) - torch.atan(w_pred / h_pred)), 2)
    with torch.no_grad():
        alpha = v / (1 - iouk + v + eps)
    return loss + alpha * v


@pytest.mark.parametrize("mode", ["giou", "diou", "ciou"])
def test_reference_equals_torchvision_formula(mode):
    p, g = _pairs(64)
    a = p.clone().requires_grad_(True)
    b = p.clone().requires_grad_(True)
    want = _torchvision_literal(a, g, mode)
    ours = R.box_iou_loss(b, g, mode, "none")
    assert torch.allclose(ours, want, rtol=1e-12, atol=1e-12)
    go = torch.rand_like(want)
    ga, = torch.autograd.grad(want, a, go)
    gb, = torch.autograd.grad(ours, b, go)
    assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-12)


def _mmdet_ciou_literal(pred, target, eps=1e-6):
    """mmdet 3.x ``ciou_loss``, as written upstream."""
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    ap = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    ag = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    union = ap + ag - overlap + eps
    ious = overlap / union
    enclose_x1y1 = torch.min(pred[:, :2], target[:, :2])
    enclose_x2y2 = torch.max(pred[:, 2:], target[:, 2:])
    enclose_wh = (enclose_x2y2 - enclose_x1y1).clamp(min=0)
    cw = enclose_wh[:, 0]
    ch = enclose_wh[:, 1]
    c2 = cw ** 2 + ch ** 2 + eps
    b1_x1, b1_y1, b1_x2, b1_y2 = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    b2_x1, b2_y1, b2_x2, b2_y2 = target[:, 0], target[:, 1], target[:, 2], target[:, 3]
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    left = ((b2_x1 + b2_x2) - (b1_x1 + b1_x2)) ** 2 / 4
    right = ((b2_y1 + b2_y2) - (b1_y1 + b1_y2)) ** 2 / 4
    rho2 = left + right
    factor = 4 / math.pi ** 2
    v = factor * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = (ious > 0.5).float() * v / (1 - ious + v)
    cious = ious - (rho2 / c2 + alpha * v)
    return 1 - cious.clamp(min=-1.0, max=1.0)


def test_reference_equals_mmdet_ciou_formula():
    p, g = _pairs(64)
    g = p + (g - p) * 0.2  # mostly IoU > 0.5: alpha active
    a = p.clone().requires_grad_(True)
    b = p.clone().requires_grad_(True)
    want = _mmdet_ciou_literal(a, g)
    ours = R.box_iou_loss(b, g, "ciou", "none", eps=1e-6, flavor="mmdet")
    assert torch.allclose(ours, want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(torch.autograd.grad(want.sum(), a)[0],
                          torch.autograd.grad(ours.sum(), b)[0], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- the fused losses

def _check(fused, ref_fn, pred, target, dtype, go_kind, target_grad, tol=None):
    x = pred.to(dtype).requires_grad_(True)
    t = target.to(dtype).requires_grad_(target_grad)
    out = fused(x, t)
    x64 = x.detach().double().requires_grad_(True)
    t64 = t.detach().double().requires_grad_(target_grad)
    want = ref_fn(x64, t64)
    tol = tol or REL_TOL[dtype] * (2 if dtype == torch.float32 else 1)
    assert out.shape == want.shape
    assert rel_err(out, want) <= tol
    go = torch.ones_like(out) if go_kind == "one" else torch.rand_like(out) * 2
    needs = (x, t) if target_grad else (x,)
    needs64 = (x64, t64) if target_grad else (x64,)
    grads = torch.autograd.grad(out, needs, go)
    wants = torch.autograd.grad(want, needs64, go.double())
    for g, w in zip(grads, wants):
        assert rel_err(g, w) <= tol


CASES = list(itertools.islice(itertools.cycle(itertools.product(
    ["xyxy", "xywh", "cxcywh"], [torch.float32, torch.bfloat16, torch.float16],
    ["none", "mean", "sum", "weighted_mean"])), 12))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", range(12))
def test_box_iou_loss_pairwise(mode, case):
    box_format, dtype, reduction = CASES[case]
    weight = [None, "row", "row1", "bool"][case % 4]
    avg = (None if reduction != "mean" or case % 3 == 0
           else torch.tensor(7.0, device=DEVICE) if case % 3 == 1 else 5.0)
    lw = [1.0, 0.3, torch.tensor(2.0, device=DEVICE)][case % 3]
    p, g = _pairs(48)
    p, g = _convert(p, box_format), _convert(g, box_format)
    w = None
    if weight == "row":
        w = torch.rand(48, device=DEVICE)
    elif weight == "row1":
        w = torch.rand(48, 1, device=DEVICE)
    elif weight == "bool":
        w = torch.rand(48, device=DEVICE) > 0.3
    kw = dict(weight=w, box_format=box_format, avg_factor=avg, loss_weight=lw)
    if dtype == torch.float32 or mode == "iou":
        fused = lambda x, t: fl.box_iou_loss(x, t, mode, reduction, **kw)
        ref = lambda x, t: R.box_iou_loss(x, t, mode, reduction, **kw)
        _check(fused, ref, p, g, dtype, ["one", "random"][case % 2], case % 3 == 0)
    else:  # half precision: the reference sees the rounded boxes; compare in fp32 math
        fused = lambda x, t: fl.box_iou_loss(x, t, mode, reduction, **kw)
        ref = lambda x, t: R.box_iou_loss(x, t, mode, reduction, **kw)
        _check(fused, ref, p, g, dtype, ["one", "random"][case % 2], False)


@pytest.mark.parametrize("mode", ["iou", "giou", "diou"])  # CIoU: see below
def test_gradcheck_float64(mode):
    """Finite differences against the analytic gradient. Not CIoU: its defined gradient holds
    alpha constant (no_grad, as torchvision and ultralytics), which finite differences of the
    loss do not; its gradient is checked against the references' autograd instead."""
    p, g = _pairs(12)
    p = p[2:]  # no exact ties (a tie is a kink: gradcheck's finite differences straddle it)
    g = g[2:] + 0.01
    x = p.clone().requires_grad_(True)
    t = g.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fl.box_iou_loss(a, b, mode, "none"), (x, t),
                                    eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("mode,flavor", [(m, f) for m in MODES for f in ("torchvision", "mmdet")]
                         + [("ciou", "ultralytics")])
def test_float64_values_and_gradients_match_reference(mode, flavor):
    """float64 runs the kernels' float64 branches (CIoU's atan series among them): values and
    gradients of pred and target as the float64 reference's, to rounding."""
    p, g = _pairs(64)
    x, t = p.clone().requires_grad_(True), g.clone().requires_grad_(True)
    out = B._box_loss(x, t, mode, flavor, "none", None, 1e-7, "xyxy", None, 1.0)
    x64, t64 = p.clone().requires_grad_(True), g.clone().requires_grad_(True)
    want = R.box_iou_loss(x64, t64, mode, "none", eps=1e-7, flavor=flavor)
    assert rel_err(out, want) <= 1e-12
    go = torch.rand_like(want)
    for a, b in zip(torch.autograd.grad(out, (x, t), go), torch.autograd.grad(want, (x64, t64), go)):
        assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_random_and_degenerate_boxes_stay_finite(mode, dtype):
    """Degenerate (zero width or height), inverted (x2 < x1), identical, disjoint boxes and
    coordinates up to 1e4: no NaN/inf where the float64 reference is finite, and the same
    values and gradients there."""
    n = 256
    p = _boxes((n,), spread=1e4, size=300.0)
    g = _boxes((n,), spread=1e4, size=300.0)
    p[:16, 2] = p[:16, 0]  # zero width
    p[16:32, 3] = p[16:32, 1]  # zero height
    p[32:48, [0, 2]] = p[32:48, [2, 0]]  # inverted
    g[48:64] = p[48:64]  # identical
    g[64:80] = p[64:80] + 1e3  # disjoint
    g[80:96] = p[80:96] + 1.0  # overlapping
    x = p.to(dtype).requires_grad_(True)
    out = fl.box_iou_loss(x, g.to(dtype), mode, "none")
    x64 = x.detach().double().requires_grad_(True)
    want = R.box_iou_loss(x64, g.to(dtype).double(), mode, "none")
    gx, = torch.autograd.grad(out.sum(), x)
    gw, = torch.autograd.grad(want.sum(), x64)
    finite = torch.isfinite(want)
    assert torch.isfinite(out[finite]).all() and torch.isfinite(gx[finite]).all()
    tol = 4e-6 if dtype == torch.float32 else 2e-2
    assert rel_err(out[finite], want[finite]) <= tol
    assert rel_err(gx[finite], gw[finite]) <= tol


def test_ciou_at_zero_height_is_finite_where_torchvision_is_nan():
    p = torch.tensor([[0.0, 0.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]], device=DEVICE,
                     requires_grad=True)
    g = torch.tensor([[0.5, -1.0, 2.5, 1.0], [0.0, 0.0, 2.0, 2.0]], device=DEVICE)
    out = fl.box_iou_loss(p, g, "ciou", "none")
    gp, = torch.autograd.grad(out.sum(), p)
    assert torch.isfinite(out).all() and torch.isfinite(gp).all()
    a = p.detach().double().requires_grad_(True)
    literal = _torchvision_literal(a, g.double(), "ciou")
    assert float(literal[0]) == pytest.approx(float(out[0]), rel=1e-5)  # value finite upstream
    assert torch.isnan(torch.autograd.grad(literal[0], a)[0]).any()  # its gradient is not


# ----------------------------------------------------------------- flavours: mmdet, ultralytics

MMDET = [(fl.IoULoss(mode="linear"), "iou"), (fl.IoULoss(mode="square"), "iou_square"),
         (fl.IoULoss(), "iou_log"), (fl.GIoULoss(), "giou"), (fl.DIoULoss(), "diou"),
         (fl.CIoULoss(), "ciou")]


@pytest.mark.parametrize("module,mode", MMDET, ids=[m for _, m in MMDET])
def test_mmdet_modules(module, mode):
    p, g = _pairs(40)
    g = p + (g - p) * 0.3  # IoU > 0.5 for many: CIoU's alpha active
    w = torch.rand(40, 4, device=DEVICE)  # mmdet averages an (N, 4) weight over coordinates
    x = p.float().requires_grad_(True)
    # mmdet 3.x weight_reduce_loss: sum / (avg_factor + float32 eps); a tiny avg_factor shows it
    for af in (9.0, torch.tensor(1e-6, device=DEVICE)):
        out = module(x, g.float(), w, avg_factor=af, reduction_override="mean")
        x64 = p.clone().requires_grad_(True)
        want = R.box_iou_loss(x64, g, mode, "mean", w.double().mean(-1), eps=1e-6,
                              avg_factor=float(af) + torch.finfo(torch.float32).eps,
                              flavor="mmdet")
        assert rel_err(out, want) <= 4e-6
        assert rel_err(torch.autograd.grad(out, x)[0], torch.autograd.grad(want, x64)[0]) <= 4e-6
    # "none" with avg_factor: the per-box loss, avg_factor ignored (mmdet)
    none = module(x, g.float(), avg_factor=9.0, reduction_override="none")
    assert rel_err(none, R.box_iou_loss(p, g, mode, "none", eps=1e-6, flavor="mmdet")) <= 4e-6


def test_ultralytics_ciou_flavour():
    p, g = _pairs(40)
    x = p.float().requires_grad_(True)
    out = B._box_loss(x, g.float(), "ciou", "ultralytics", "sum", None, 1e-7, "xyxy", None, 1.0)
    x64 = p.clone().requires_grad_(True)
    want = R.box_iou_loss(x64, g, "ciou", "sum", eps=1e-7, flavor="ultralytics")
    assert rel_err(out, want) <= 4e-6
    assert rel_err(torch.autograd.grad(out, x)[0], torch.autograd.grad(want, x64)[0]) <= 4e-6


# ----------------------------------------------------------------- distribution focal loss

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,reduction,weight,clamp", [
    (16, "none", None, None), (16, "mean", "row", None), (7, "sum", None, 5.5),
    (16, "weighted_mean", "bool", 14.99), (33, "mean", None, None)])
def test_distribution_focal_loss(dtype, n, reduction, weight, clamp):
    rows = (3, 37)
    x = (torch.randn(*rows, n, device=DEVICE) * 3).to(dtype)
    t = torch.rand(*rows, device=DEVICE) * (n - 1) * 0.999
    if clamp is not None:
        t = t * 1.2 - 0.5  # some outside [0, clamp]: clamped
    w = None
    if weight == "row":
        w = torch.rand(*rows, device=DEVICE)
    elif weight == "bool":
        w = torch.rand(*rows, device=DEVICE) > 0.3
    kw = dict(weight=w, clamp_max=clamp)
    _check(lambda a, b: fl.distribution_focal_loss(a, b, reduction, **kw),
           lambda a, b: R.distribution_focal_loss(a, b, reduction, **kw), x, t, dtype, "random",
           dtype == torch.float32)


def test_dfl_equals_mmdet_and_ultralytics():
    x = torch.randn(50, 16, dtype=F64, device=DEVICE)
    t = torch.rand(50, dtype=F64, device=DEVICE) * 14.9
    a = x.float().requires_grad_(True)
    ours = fl.distribution_focal_loss(a, t.float(), "none")
    mm = R.mmdet_distribution_focal_loss(x, t)
    assert rel_err(ours, mm) <= 2e-6
    g = torch.autograd.grad(ours.sum(), a)[0]
    x64 = x.clone().requires_grad_(True)
    want = torch.autograd.grad(R.mmdet_distribution_focal_loss(x64, t).sum(), x64)[0]
    assert rel_err(g, want) <= 2e-6
    # ultralytics DFLoss: clamp to [0, reg_max - 1.01], the two cross-entropies
    tu = (torch.rand(50, dtype=F64, device=DEVICE) * 20 - 2)
    c = tu.clamp(0, 16 - 1 - 0.01)
    tl_ = c.long()
    wl = (tl_ + 1) - c
    ultra = (F.cross_entropy(x, tl_, reduction="none") * wl
             + F.cross_entropy(x, tl_ + 1, reduction="none") * (1 - wl))
    ours_u = fl.distribution_focal_loss(x.float(), tu.float(), "none", clamp_max=14.99)
    assert rel_err(ours_u, ultra) <= 2e-6


def test_dfl_gradient_is_softmax_minus_two_hot():
    x = torch.randn(4, 8, device=DEVICE, requires_grad=True)
    t = torch.tensor([0.25, 3.0, 6.5, 2.75], device=DEVICE)
    g, = torch.autograd.grad(fl.distribution_focal_loss(x, t, "sum"), x)
    two_hot = torch.zeros(4, 8, dtype=F64)
    for i, v in enumerate(t.tolist()):
        two_hot[i, int(v)] += int(v) + 1 - v
        two_hot[i, int(v) + 1] += v - int(v)
    assert rel_err(g, torch.softmax(x.detach().double(), -1) - two_hot.to(DEVICE)) <= 1e-6


# ----------------------------------------------------------------- ultralytics' box loss
# ultralytics_box_loss: bbox_decode + BboxLoss.forward transcribed (boolean indexing, DFLoss from
# two cross-entropies); the benchmark's eager baseline is the same transcription.

def _yolo_batch(b=2, a=203, reg_max=16, classes=5, fg_rate=0.3, dtype=torch.float32):
    """A batch as the assigner hands it over: targets near the anchors (some beyond reg_max - 1
    bins: clamped), soft scores, a foreground mask; pred_dist logits in ``dtype``."""
    anchors = (torch.rand(a, 2, dtype=F64) * 40).to(DEVICE)
    centre = anchors + torch.randn(b, a, 2, dtype=F64, device=DEVICE) * 1.5
    wh = torch.rand(b, a, 2, dtype=F64, device=DEVICE) * 20 + 0.5
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], -1)
    fg = torch.rand(b, a, device=DEVICE) < fg_rate
    scores = torch.rand(b, a, classes, dtype=F64, device=DEVICE) * fg[..., None]
    pred = (torch.randn(b, a, 4 * reg_max, dtype=F64, device=DEVICE) * 2).to(dtype)
    return pred, anchors, boxes, scores, fg


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("go", [(1.0, 1.0), (7.5, 1.5), "random"])
def test_yolo_box_loss_equals_ultralytics_transcription(dtype, go):
    pred, anchors, boxes, scores, fg = _yolo_batch(dtype=dtype)
    tss = scores.sum().clamp_min(1)
    x = pred.clone().requires_grad_(True)
    l_iou, l_dfl = B.yolo_box_loss(x, anchors.float(), boxes.float(), scores.sum(-1).float(),
                                   tss.float(), fg_mask=fg)
    x64 = pred.double().requires_grad_(True)
    w_iou, w_dfl = ultralytics_box_loss(x64, anchors, boxes, scores, tss, fg)
    tol = 2e-6 if dtype == torch.float32 else 2e-3  # bf16: the logits are bf16 in both
    assert l_iou.dtype == l_dfl.dtype == torch.float32 and l_iou.shape == l_dfl.shape == ()
    assert rel_err(l_iou, w_iou) <= tol and rel_err(l_dfl, w_dfl) <= tol
    a, b = (torch.rand(2).tolist() if go == "random" else go)
    g, = torch.autograd.grad(l_iou * a + l_dfl * b, x)
    want, = torch.autograd.grad(w_iou * a + w_dfl * b, x64)
    assert g.dtype == dtype
    assert rel_err(g, want) <= (4e-6 if dtype == torch.float32 else 8e-3)
    assert torch.all(g[~fg] == 0)  # background anchors: no gradient, whatever their scores


@pytest.mark.parametrize("reg_max", [4, 8, 32])
def test_yolo_box_loss_other_reg_max(reg_max):
    """Rows of 16 and 32 logits (held one per thread on a GPU, like reg_max 16's 64) and of 128
    (a row spread over threads): the same values and gradients as the transcription."""
    pred, anchors, boxes, scores, fg = _yolo_batch(a=77, reg_max=reg_max)
    tss = scores.sum().clamp_min(1)
    x = pred.float().requires_grad_(True)
    l_iou, l_dfl = B.yolo_box_loss(x, anchors.float(), boxes.float(), scores.sum(-1).float(),
                                   tss.float(), reg_max=reg_max, fg_mask=fg,
                                   loss_weight=(7.5, 1.5))
    x64 = pred.double().requires_grad_(True)
    w_iou, w_dfl = ultralytics_box_loss(x64, anchors, boxes, scores, tss, fg, reg_max=reg_max)
    assert rel_err(l_iou, w_iou * 7.5) <= 2e-6 and rel_err(l_dfl, w_dfl * 1.5) <= 2e-6
    go = torch.rand(2).tolist()
    g, = torch.autograd.grad(l_iou * go[0] + l_dfl * go[1], x)
    want, = torch.autograd.grad(w_iou * 7.5 * go[0] + w_dfl * 1.5 * go[1], x64)
    assert rel_err(g, want) <= 4e-6
    assert torch.all(g[~fg] == 0)


def test_yolo_box_loss_graph_retained_and_terms_alone():
    """The forward writes the gradient for (1, 1) after the loss weights; other grad_output
    pairs (one term alone, a second backward through a retained graph, after an in-place rescale
    of that gradient) rebuild the split exactly."""
    pred, anchors, boxes, scores, fg = _yolo_batch(a=90)
    w, tss = scores.sum(-1).float(), scores.sum().clamp_min(1)
    x = pred.float().requires_grad_(True)
    out = B.yolo_box_loss(x, anchors.float(), boxes.float(), w, tss, fg_mask=fg,
                          loss_weight=(7.5, 1.5))
    x64 = pred.clone().requires_grad_(True)
    ref = R.yolo_box_loss(x64, anchors, boxes, torch.where(fg, scores.sum(-1), 0), tss,
                          loss_weight=(7.5, 1.5))
    for a, b in [(1.0, 0.0), (0.0, 1.0), (16.0, 16.0), (1.0, 1.0), (0.5, 3.0)]:
        g, = torch.autograd.grad(out[0] * a + out[1] * b, x, retain_graph=True)
        want, = torch.autograd.grad(ref[0] * a + ref[1] * b, x64, retain_graph=True)
        assert rel_err(g, want) <= 4e-6, (a, b)
    for k in range(2):  # one output alone: the other's grad_output is None
        x.grad = None
        out[k].backward(retain_graph=True)
        want, = torch.autograd.grad(ref[k], x64, retain_graph=True)
        assert rel_err(x.grad, want) <= 4e-6


def test_yolo_box_loss_mask_weight_layouts_and_no_sync(monkeypatch):
    pred, anchors, boxes, scores, fg = _yolo_batch(a=64)
    w = scores.sum(-1).float() + 0.5  # non-zero on background anchors too: fg_mask must exclude
    tss = torch.tensor(11.0, device=DEVICE)
    x = pred.float().requires_grad_(True)
    calls = trap_host_syncs(monkeypatch)
    l_iou, l_dfl = B.yolo_box_loss(x, anchors.float(), boxes.float(), w[..., None], tss,
                                   fg_mask=fg, loss_weight=(7.5, 1.5))
    (l_iou + l_dfl).backward()
    monkeypatch.undo()
    assert calls == []
    x64 = pred.clone().requires_grad_(True)
    ref = R.yolo_box_loss(x64, anchors, boxes, torch.where(fg, w.double(), 0), tss.double(),
                          loss_weight=(7.5, 1.5))
    assert rel_err(torch.stack([l_iou, l_dfl]), ref) <= 2e-6
    assert rel_err(x.grad, torch.autograd.grad(ref.sum(), x64)[0]) <= 4e-6
    # without fg_mask, a zero weight is what excludes an anchor: same result
    w0 = torch.where(fg, w, 0.0)
    again = B.yolo_box_loss(pred.float(), anchors.float(), boxes.float(), w0, tss,
                            loss_weight=(7.5, 1.5))
    assert rel_err(torch.stack(again), ref) <= 2e-6


def test_yolo_box_loss_no_foreground_is_zero():
    pred, anchors, boxes, scores, _ = _yolo_batch(a=20)
    x = pred.float().requires_grad_(True)
    fg = torch.zeros(2, 20, dtype=torch.bool, device=DEVICE)
    l_iou, l_dfl = B.yolo_box_loss(x, anchors.float(), boxes.float(), scores.sum(-1).float(),
                                   1.0, fg_mask=fg)
    (l_iou + l_dfl).backward()
    assert l_iou.item() == 0.0 and l_dfl.item() == 0.0 and torch.all(x.grad == 0)


# ----------------------------------------------------------------- launches, errors, compile

def test_one_launch_forward_and_no_sync(monkeypatch):
    p, g = _pairs(100)
    x = p.float().requires_grad_(True)
    af = torch.tensor(3.0, device=DEVICE)
    calls = trap_host_syncs(monkeypatch)
    before = runtime.launch_counts()
    loss = fl.box_iou_loss(x, g.float(), "ciou", "mean", avg_factor=af, loss_weight=0.5)
    loss.backward()
    after = runtime.launch_counts()
    monkeypatch.undo()
    assert calls == []
    launched = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    assert launched == {"fused_row_loss_fwd_kernel": 1, "rescale_kernel": 1}


@pytest.mark.compile
def test_compile_fullgraph_matches_eager():
    p, g = _pairs(40)
    x = p.float().requires_grad_(True)
    logits = torch.randn(40, 16, device=DEVICE, requires_grad=True)
    dist = torch.rand(40, device=DEVICE) * 14

    def step(x, logits):
        return (fl.box_iou_loss(x, g.float(), "giou", "mean", loss_weight=0.5)
                + fl.distribution_focal_loss(logits, dist, "sum"))

    torch._dynamo.reset()
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(x, logits)
    g_got = torch.autograd.grad(got, (x, logits))
    want = step(x, logits)
    g_want = torch.autograd.grad(want, (x, logits))
    assert rel_err(got, want) <= 1e-6
    assert all(rel_err(a, b) <= 1e-6 for a, b in zip(g_got, g_want))


@pytest.mark.compile
def test_compile_fullgraph_yolo_box_loss():
    pred, anchors, boxes, scores, fg = _yolo_batch(a=50)
    x = pred.float().requires_grad_(True)
    w, tss = scores.sum(-1).float(), scores.sum().clamp_min(1).float()

    def step(x):
        l_iou, l_dfl = B.yolo_box_loss(x, anchors.float(), boxes.float(), w, tss, fg_mask=fg,
                                       loss_weight=(7.5, 1.5))
        return (l_iou * 2.0 + l_dfl) * 16

    torch._dynamo.reset()
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(x)
    g_got, = torch.autograd.grad(got, x)
    x64 = pred.clone().requires_grad_(True)
    ref = R.yolo_box_loss(x64, anchors, boxes, torch.where(fg, scores.sum(-1), 0), tss.double(),
                          loss_weight=(7.5, 1.5))
    want = (ref[0] * 2.0 + ref[1]) * 16
    assert rel_err(got, want) <= 2e-6
    assert rel_err(g_got, torch.autograd.grad(want, x64)[0]) <= 4e-6


@pytest.mark.parametrize("call,error,match", [
    (lambda p, g: fl.box_iou_loss(p[:, :3], g), ValueError, "pred"),
    (lambda p, g: fl.box_iou_loss(p, g[:5]), ValueError, "target"),
    (lambda p, g: fl.box_iou_loss(p, g.long()), TypeError, "target"),
    (lambda p, g: fl.box_iou_loss(p.long(), g), TypeError, "pred"),
    (lambda p, g: fl.box_iou_loss(p, g, "wiou"), ValueError, "mode"),
    (lambda p, g: fl.box_iou_loss(p, g, box_format="yxyx"), ValueError, "box_format"),
    (lambda p, g: fl.box_iou_loss(p, g, weight=torch.rand(3)), ValueError, "weight"),
    (lambda p, g: fl.distribution_focal_loss(p, g), ValueError, "target"),
    (lambda p, g: fl.IoULoss(mode="cube"), ValueError, "mode"),
])
def test_bad_inputs_raise_before_any_kernel(call, error, match):
    p, g = _pairs(8)
    before = sum(runtime.launch_counts().values())
    with pytest.raises(error, match=match):
        call(p.float(), g.float())
    assert sum(runtime.launch_counts().values()) == before
