"""Triton math of the box and distribution losses (row losses of the engine's row driver).

Each function is ``math(x, t, a, p0, p1, p2, p3, VARIANT, KX, KT, KA) -> (loss[ROWS],
dloss/dx[ROWS, KXP], dloss/dt[ROWS, KTP])`` over a tile of rows (see
``fused_row_loss_fwd_kernel``). The gradients are written by hand (reverse accumulation,
every step commented) and follow the autograd of the formula each flavour transcribes:

* ``torch.maximum``/``minimum`` split the gradient in half on ties (identical boxes);
* torchvision's intersection is ``iw * ih`` only where ``iw > 0 and ih > 0`` (a strict mask:
  no intersection gradient at zero overlap); mmdet's and ultralytics' ``clamp(min=0)`` pass
  the gradient where ``iw >= 0``;
* CIoU's ``alpha`` carries no gradient (computed under ``no_grad`` everywhere);
* divisions are reciprocals (``rcp.approx``, 1 ulp, on the GPU; exact under the
  interpreter) times the numerator: denominators below 2^-126 in magnitude flush to 0 there
  (the quotient is then +-inf, as a division by such a value all but is);
* ``atan(w / h)`` has the derivatives ``h / (w^2 + h^2)`` and ``-w / (w^2 + h^2)``: finite at
  h = 0, where the literal autograd of ``atan(w / h)`` is 0 * inf = NaN; a 0 x 0 box (w = h =
  0, where ``atan(0 / 0)`` is NaN) is given the angle 0 and no gradient.

**Box IoU family** (``box_iou``): pred p and target g as (x1, y1, x2, y2) after the format
conversion, I the intersection, U the union, C the enclosing box (cw, ch its sides), rho^2 the
squared distance of the centres, v = 4 / pi^2 (atan(wg / hg) - atan(wp / hp))^2:

    torchvision (functions; eps 1e-7):   IoU = I / (U + eps)
        iou  1 - IoU                                  (ours; torchvision has no IoU loss)
        giou 1 - IoU + (C - U) / (C + eps)
        diou 1 - IoU + rho^2 / (cw^2 + ch^2 + eps)
        ciou diou + alpha v,  alpha = v / (1 - IoU + v + eps)
    mmdet (modules; eps 1e-6): IoU = I / max(U, eps) (iou, giou) or I / (U + eps) (diou, ciou),
        clamped intersection and enclosing sides, h + eps inside CIoU's atan
        iou  1 - max(IoU, eps) | 1 - max(IoU, eps)^2 | -log(max(IoU, eps))  (linear/square/log)
        giou 1 - (IoU - (max(C, eps) - max(U, eps)) / max(C, eps))
        diou 1 - IoU + rho^2 / (cw^2 + ch^2 + eps)
        ciou 1 - clamp(IoU - rho^2 / (cw^2 + ch^2 + eps) - alpha v, -1, 1),
             alpha = [IoU > 0.5] v / (1 - IoU + v)
    ultralytics (``bbox_iou(..., CIoU=True)``, eps 1e-7): h + eps in the areas and atans,
        IoU = I / (U + eps), ciou 1 - (IoU - (rho^2 / (cw^2 + ch^2 + eps) + alpha v)),
        alpha = v / (v - IoU + 1 + eps)

VARIANT = mode + 8 flavour + 32 format: mode 0 iou, 1 giou, 2 diou, 3 ciou, 4 iou squared,
5 iou log; flavour 0 torchvision, 1 mmdet, 2 ultralytics; format 0 xyxy, 1 xywh, 2 cxcywh.
p0 = eps.

**Distribution focal loss** (``distribution_focal``, GFL / mmdet): logits x over n = KX bins,
target distance t (one value per row): with l = floor(t), the two-hot q (q_l = l + 1 - t,
q_{l+1} = t - l; bins outside [0, n) dropped) and lse = log sum exp x,

    loss = sum_j q_j (lse - x_j)          (= CE(x, l) q_l + CE(x, l + 1) q_{l+1})
    dloss/dx = softmax(x) sum(q) - q,     dloss/dt = x_l - x_{l+1} (0 where clamped)

VARIANT 1: t is clamped to [0, p0] first (ultralytics' ``DFLoss``: p0 = reg_max - 1.01).
"""
import triton
import triton.language as tl

from .mathlib import LN2, LOG2E, fast_log2, fast_rcp

PI: tl.constexpr = tl.constexpr(3.141592653589793)
# atan(u) / u on [0, 1] in u^2, minimax-fitted (relative error) in float64, rounded to float32:
# worst relative error of the float32 evaluation 1.3e-7 over 200,001 points
_AT0: tl.constexpr = tl.constexpr(1.0)
_AT1: tl.constexpr = tl.constexpr(-0.33333075046539307)
_AT2: tl.constexpr = tl.constexpr(0.1999262273311615)
_AT3: tl.constexpr = tl.constexpr(-0.14203663170337677)
_AT4: tl.constexpr = tl.constexpr(0.10640998929738998)
_AT5: tl.constexpr = tl.constexpr(-0.0750441625714302)
_AT6: tl.constexpr = tl.constexpr(0.042692821472883224)
_AT7: tl.constexpr = tl.constexpr(-0.01606937125325203)
_AT8: tl.constexpr = tl.constexpr(0.0028500633779913187)


@triton.jit
def _split4(v):
    """The four columns of a (ROWS, 4) tile."""
    a, b = tl.split(tl.reshape(v, [v.shape[0], 2, 2]))
    c0, c2 = tl.split(a)
    c1, c3 = tl.split(b)
    return c0, c1, c2, c3


@triton.jit
def _join4(c0, c1, c2, c3):
    """A (ROWS, 4) tile from four columns (inverse of _split4)."""
    return tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), [c0.shape[0], 4])


@triton.jit
def _atan_unit(u):
    """atan(u) for 0 <= u <= 1."""
    if u.dtype == tl.float64:  # two half-angle steps to u <= tan(pi/16), then the series
        u = u / (1.0 + tl.sqrt(1.0 + u * u))
        u = u / (1.0 + tl.sqrt(1.0 + u * u))
        # atan(u) = u sum_k (-s)^k / (2k + 1), s = u^2 <= tan(pi/16)^2 < 0.04: the terms to
        # k = 10 leave s^11 / 23 < 2e-17
        s = u * u
        p = s * (1.0 / 21.0) - 1.0 / 19.0
        p = p * s + 1.0 / 17.0
        p = p * s - 1.0 / 15.0
        p = p * s + 1.0 / 13.0
        p = p * s - 1.0 / 11.0
        p = p * s + 1.0 / 9.0
        p = p * s - 1.0 / 7.0
        p = p * s + 1.0 / 5.0
        p = p * s - 1.0 / 3.0
        p = p * s + 1.0
        return 4.0 * u * p
    else:
        s = u * u
        p = s * _AT8 + _AT7
        p = p * s + _AT6
        p = p * s + _AT5
        p = p * s + _AT4
        p = p * s + _AT3
        p = p * s + _AT2
        p = p * s + _AT1
        p = p * s + _AT0
        return u * p


@triton.jit
def _atan_ratio(w, h):
    """atan(w / h) as torch computes it (atan(+-inf) = +-pi/2 at h = 0); 0 when w = h = 0."""
    z = tl.where((w == 0) & (h == 0), 0.0, w * fast_rcp(h))
    az = tl.abs(z)
    big = az > 1.0
    u = tl.where(big, fast_rcp(tl.where(big, az, 1.0)), az)
    r = _atan_unit(u)
    r = tl.where(big, PI / 2 - r, r)
    return tl.where(z < 0, -r, r)


@triton.jit
def _hi(a, b):
    """d max(a, b) / da with torch.maximum's tie split (d/db is 1 - this)."""
    return tl.where(a > b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def _lo(a, b):
    """d min(a, b) / da with torch.minimum's tie split."""
    return tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def _iou_family(x1, y1, x2, y2, u1, v1, u2, v2, eps, MODE: tl.constexpr, FLAVOR: tl.constexpr):
    """Loss and its gradients w.r.t. pred (x1, y1, x2, y2) and target (u1, v1, u2, v2), xyxy.
    See the module docstring for the formulas of each mode and flavour."""
    TV: tl.constexpr = FLAVOR == 0
    MM: tl.constexpr = FLAVOR == 1
    UL: tl.constexpr = FLAVOR == 2
    # ---------------------------------------------------------------- forward
    wp = x2 - x1
    hp = y2 - y1
    wg = u2 - u1
    hg = v2 - v1
    if UL:  # ultralytics adds eps to the heights everywhere (areas and CIoU's atan)
        hp = hp + eps
        hg = hg + eps
    ix1 = tl.maximum(x1, u1)
    iy1 = tl.maximum(y1, v1)
    ix2 = tl.minimum(x2, u2)
    iy2 = tl.minimum(y2, v2)
    iw = ix2 - ix1
    ih = iy2 - iy1
    if TV:  # intersection only where both sides are strictly positive
        inside = (iw > 0) & (ih > 0)
        inter = tl.where(inside, iw * ih, 0.0)
        dI_diw = tl.where(inside, ih, 0.0)
        dI_dih = tl.where(inside, iw, 0.0)
    else:  # clamp(min=0): the gradient passes where the side is >= 0
        cw_ = tl.maximum(iw, 0.0)
        ch_ = tl.maximum(ih, 0.0)
        inter = cw_ * ch_
        dI_diw = tl.where(iw >= 0, ch_, 0.0)
        dI_dih = tl.where(ih >= 0, cw_, 0.0)
    union0 = wp * hp + wg * hg - inter
    if MM and MODE <= 1 or MM and MODE >= 4:
        union = tl.maximum(union0, eps)
        dUd_dU0 = _hi(union0, eps)
    else:
        union = union0 + eps
        dUd_dU0 = tl.full(union0.shape, 1.0, union0.dtype)
    r_union = fast_rcp(union)
    iou = inter * r_union
    ex1 = tl.minimum(x1, u1)
    ey1 = tl.minimum(y1, v1)
    ex2 = tl.maximum(x2, u2)
    ey2 = tl.maximum(y2, v2)
    cw = ex2 - ex1
    ch = ey2 - ey1
    ddx = (u1 + u2) - (x1 + x2)  # twice the centres' distance in x: rho^2 = (ddx^2 + ddy^2) / 4
    ddy = (v1 + v2) - (y1 + y2)
    dcw = tl.full(cw.shape, 1.0, cw.dtype)  # d(clamped cw)/dcw
    dch = tl.full(ch.shape, 1.0, ch.dtype)
    if MM:
        dcw = tl.where(cw >= 0, 1.0, 0.0)
        dch = tl.where(ch >= 0, 1.0, 0.0)
        cw = tl.maximum(cw, 0.0)
        ch = tl.maximum(ch, 0.0)
    # ---------------------------------------------------------------- loss and dL/d(terms)
    g_iou = tl.full(iou.shape, -1.0, iou.dtype)  # dL/dIoU
    g_u0 = tl.zeros_like(iou)  # dL/dU0 beyond the IoU path
    g_cw = tl.zeros_like(iou)
    g_ch = tl.zeros_like(iou)
    g_rho = tl.zeros_like(iou)  # dL/d(rho^2)
    g_wp = tl.zeros_like(iou)  # CIoU's atan terms
    g_hp = tl.zeros_like(iou)
    g_wg = tl.zeros_like(iou)
    g_hg = tl.zeros_like(iou)
    if MODE == 0 or MODE >= 4:
        if MM:  # ious.clamp(min=eps) then linear / square / log
            ci = tl.maximum(iou, eps)
            pass_ = tl.where(iou >= eps, 1.0, 0.0)
            if MODE == 0:
                loss = 1.0 - ci
                g_iou = -pass_
            elif MODE == 4:
                loss = 1.0 - ci * ci
                g_iou = -2.0 * ci * pass_
            else:
                loss = -fast_log2(ci) * LN2
                g_iou = -pass_ / ci
        else:
            loss = 1.0 - iou
    elif MODE == 1:
        if TV:
            area_c = cw * ch
            r_c = fast_rcp(area_c + eps)
            loss = 1.0 - iou + (area_c - union0) * r_c
            g_area = (union0 + eps) * r_c * r_c
            g_u0 = -r_c
        else:  # mmdet: 1 - (IoU - (Cd - Ud) / Cd), Cd = max(C, eps), Ud = max(U0, eps)
            area0 = cw * ch
            area_c = tl.maximum(area0, eps)
            r_c = fast_rcp(area_c)
            loss = 1.0 - iou + (area_c - union) * r_c
            g_area = union * r_c * r_c * _hi(area0, eps)
            g_u0 = -dUd_dU0 * r_c
        g_cw = g_area * ch
        g_ch = g_area * cw
    else:
        diag = cw * cw + ch * ch + eps
        rho = (ddx * ddx + ddy * ddy) * 0.25
        r_diag = fast_rcp(diag)
        loss = 1.0 - iou + rho * r_diag
        g_rho = r_diag
        g_diag = -rho * r_diag * r_diag
        g_cw = g_diag * 2.0 * cw
        g_ch = g_diag * 2.0 * ch
        if MODE == 3:
            hpa = hp
            hga = hg
            if MM:
                hpa = hp + eps
                hga = hg + eps
            dv = _atan_ratio(wg, hga) - _atan_ratio(wp, hpa)
            v = (4.0 / (PI * PI)) * dv * dv
            if TV:
                alpha = v * fast_rcp(1.0 - iou + v + eps)
            elif MM:
                alpha = tl.where(iou > 0.5, v * fast_rcp(1.0 - iou + v), 0.0)
            else:
                alpha = v * fast_rcp(v - iou + (1.0 + eps))
            loss = loss + alpha * v
            gv = alpha * (8.0 / (PI * PI)) * dv  # d(alpha v)/d(dv), alpha held constant
            if MM:  # 1 - clamp(ciou, -1, 1): no gradient where clamped
                inner = 1.0 - loss
                live = tl.where((inner >= -1.0) & (inner <= 1.0), 1.0, 0.0)
                loss = 1.0 - tl.minimum(tl.maximum(inner, -1.0), 1.0)
                g_iou = g_iou * live
                g_rho = g_rho * live
                g_cw = g_cw * live
                g_ch = g_ch * live
                gv = gv * live
            rg = wg * wg + hga * hga
            rg = gv * fast_rcp(tl.where(rg > 0, rg, 1.0))
            rp = wp * wp + hpa * hpa
            rp = gv * fast_rcp(tl.where(rp > 0, rp, 1.0))
            g_wg = hga * rg  # d atan(w / h) / dw = h / (w^2 + h^2)
            g_hg = -wg * rg  # d atan(w / h) / dh = -w / (w^2 + h^2)
            g_wp = -hpa * rp
            g_hp = wp * rp
    # ---------------------------------------------------------------- back to coordinates
    g_inter = g_iou * r_union
    g_union = -g_iou * iou * r_union
    g_u0 = g_u0 + g_union * dUd_dU0  # the union's other paths
    g_inter = g_inter - g_u0  # U0 = areas - I
    g_iw = g_inter * dI_diw
    g_ih = g_inter * dI_dih
    g_wp = g_wp + g_u0 * hp
    g_hp = g_hp + g_u0 * wp
    g_wg = g_wg + g_u0 * hg
    g_hg = g_hg + g_u0 * wg
    g_cw = g_cw * dcw
    g_ch = g_ch * dch
    # iw = min(x2, u2) - max(x1, u1); cw = max(x2, u2) - min(x1, u1); likewise in y
    a_x1 = _hi(x1, u1)
    a_y1 = _hi(y1, v1)
    a_x2 = _lo(x2, u2)
    a_y2 = _lo(y2, v2)
    e_x1 = _lo(x1, u1)
    e_y1 = _lo(y1, v1)
    e_x2 = _hi(x2, u2)
    e_y2 = _hi(y2, v2)
    hx = 0.5 * g_rho * ddx  # d rho^2 / dx1 = d rho^2 / dx2 = -ddx / 2 (and +ddx / 2 for u)
    hy = 0.5 * g_rho * ddy
    gx1 = -g_iw * a_x1 - g_cw * e_x1 - g_wp - hx
    gy1 = -g_ih * a_y1 - g_ch * e_y1 - g_hp - hy
    gx2 = g_iw * a_x2 + g_cw * e_x2 + g_wp - hx
    gy2 = g_ih * a_y2 + g_ch * e_y2 + g_hp - hy
    gu1 = -g_iw * (1.0 - a_x1) - g_cw * (1.0 - e_x1) - g_wg + hx
    gv1 = -g_ih * (1.0 - a_y1) - g_ch * (1.0 - e_y1) - g_hg + hy
    gu2 = g_iw * (1.0 - a_x2) + g_cw * (1.0 - e_x2) + g_wg + hx
    gv2 = g_ih * (1.0 - a_y2) + g_ch * (1.0 - e_y2) + g_hg + hy
    return loss, gx1, gy1, gx2, gy2, gu1, gv1, gu2, gv2


@triton.jit
def _from_format(c0, c1, c2, c3, FMT: tl.constexpr):
    """(x1, y1, x2, y2) of a box given as xyxy (0), xywh (1) or cxcywh (2)."""
    if FMT == 0:
        return c0, c1, c2, c3
    elif FMT == 1:
        return c0, c1, c0 + c2, c1 + c3
    else:
        return c0 - 0.5 * c2, c1 - 0.5 * c3, c0 + 0.5 * c2, c1 + 0.5 * c3


@triton.jit
def _to_format(g1, h1, g2, h2, FMT: tl.constexpr):
    """Chain rule of _from_format: gradients w.r.t. the given columns."""
    if FMT == 0:
        return g1, h1, g2, h2
    elif FMT == 1:
        return g1 + g2, h1 + h2, g2, h2
    else:
        return g1 + g2, h1 + h2, 0.5 * (g2 - g1), 0.5 * (h2 - h1)


@triton.jit
def box_iou(x, t, a, gs, eps, p1, p2, p3, VARIANT: tl.constexpr, KX: tl.constexpr,
            KT: tl.constexpr, KA: tl.constexpr):
    """IoU-family loss per box (see the module docstring)."""
    MODE: tl.constexpr = VARIANT % 8
    FLAVOR: tl.constexpr = (VARIANT // 8) % 4
    FMT: tl.constexpr = VARIANT // 32
    p0, p1_, p2_, p3_ = _split4(x)
    q0, q1, q2, q3 = _split4(t)
    x1, y1, x2, y2 = _from_format(p0, p1_, p2_, p3_, FMT)
    u1, v1, u2, v2 = _from_format(q0, q1, q2, q3, FMT)
    loss, gx1, gy1, gx2, gy2, gu1, gv1, gu2, gv2 = _iou_family(x1, y1, x2, y2, u1, v1, u2, v2,
                                                               eps, MODE, FLAVOR)
    d0, d1, d2, d3 = _to_format(gx1, gy1, gx2, gy2, FMT)
    e0, e1, e2, e3 = _to_format(gu1, gv1, gu2, gv2, FMT)
    g = gs[:, None]
    return loss, _join4(d0, d1, d2, d3) * g, _join4(e0, e1, e2, e3) * g


@triton.jit
def distribution_focal(x, t, a, gs, clamp_max, p1, p2, p3, VARIANT: tl.constexpr,
                       KX: tl.constexpr, KT: tl.constexpr, KA: tl.constexpr):
    """DFL per distribution (see the module docstring). Per bin: the hat q_j = max(0, 1 -
    |j - t|) is the two-hot target (q_l = l + 1 - t, q_{l+1} = t - l, 0 elsewhere), and
    gs (softmax_j sum(q) - q_j) = e_j (gs sum(q) / s) - gs q_j: three operations per bin."""
    cols = tl.arange(0, x.shape[1])
    valid = (cols < KX)[None, :]
    dist = tl.sum(t, axis=1)  # KT == 1: the one target value of each row
    if VARIANT == 1:
        clamped = (dist < 0.0) | (dist > clamp_max)
        dist = tl.minimum(tl.maximum(dist, 0.0), clamp_max)
    left = tl.floor(dist)
    colf = cols.to(x.dtype)[None, :]
    # bins outside [0, KX) are dropped, as the reference's one-hot of an out-of-range class
    q = tl.where(valid, tl.maximum(1.0 - tl.abs(colf - dist[:, None]), 0.0), 0.0)
    xm = tl.where(valid, x, float("-inf"))
    m = tl.max(xm, axis=1)
    e = tl.exp2(xm * LOG2E - (m * LOG2E)[:, None])
    s = tl.sum(e, axis=1)
    lse = m + fast_log2(s) * LN2
    mass = tl.sum(q, axis=1)
    xq = tl.sum(q * x, axis=1)
    loss = lse * mass - xq
    dx = e * (gs * mass * fast_rcp(s))[:, None] - gs[:, None] * q
    # the target's gradient (compiled away unless the target requires grad)
    x_l = tl.sum(tl.where(colf == left[:, None], x, 0.0), axis=1)
    x_r = tl.sum(tl.where(colf == (left + 1.0)[:, None], x, 0.0), axis=1)
    dt = (x_l - x_r) * gs  # d/dt [q_l (lse - x_l) + q_r (lse - x_r)], both bins inside
    if VARIANT == 1:
        dt = tl.where(clamped, 0.0, dt)
    return loss, dx, tl.zeros_like(t) + dt[:, None]


@triton.jit
def _side_softmax(x, R: tl.constexpr):
    """Per side of a (ROWS, 4 R) tile of logits: (x as (ROWS, 4, R), the bins j as a (1, 1, R)
    float tile, e = exp(x - max), 1 / sum e, the expected bin d = sum_j j e_j / sum e, and
    logsumexp)."""
    x3 = tl.reshape(x, [x.shape[0], 4, R])
    m = tl.max(x3, axis=2)
    e = tl.exp2(x3 * LOG2E - (m * LOG2E)[:, :, None])
    s = tl.sum(e, axis=2)
    rs = fast_rcp(s)
    bins = tl.arange(0, R).to(x.dtype)[None, None, :]
    dist = tl.sum(e * bins, axis=2) * rs
    lse = m + fast_log2(s) * LN2
    return x3, bins, e, rs, dist, lse


@triton.jit
def yolo_box(x, t, a, gs, eps, lw_iou, lw_dfl, clamp_max, VARIANT: tl.constexpr,
             KX: tl.constexpr, KT: tl.constexpr, KA: tl.constexpr):
    """ultralytics' box loss per anchor: two outputs (NOUT 2), (1 - CIoU) and DFL.

    x (ROWS, 4 R): the anchor's distribution logits, sides l, t, r, b; t (ROWS, 4): the target
    box xyxy; a (ROWS, 2): the anchor point (grid units, as the target). Decode: per side
    d = sum_j j p_j, p = softmax(x); box = (ax - d_l, ay - d_t, ax + d_r, ay + d_b); CIoU in
    ultralytics' formula (flavour 2). DFL against the target's distances tq (bbox2dist,
    clamped to [0, clamp_max]), the mean over the 4 sides, with the two-hot target as the hat
    q_j = max(0, 1 - |j - tq|). Gradient, with g_d = lw_iou dL_iou / dd per side, c = lw_dfl / 4
    and e_j = p_j sum e:

        dx_j = gs [g_d p_j (j - d) + c (p_j - q_j)] = e_j (A j + B) - C q_j,
        A = gs g_d / sum e,  B = gs (c - g_d d) / sum e,  C = gs c

    (per side factors: three operations per logit). ``saved`` = gs g_d (4 per row), from which
    ``yolo_box_first_grad`` rebuilds the first term when the two outputs' grad_outputs differ.
    """
    R: tl.constexpr = KX // 4
    x3, bins, e, rs, dist, lse = _side_softmax(x, R)
    d_l, d_t, d_r, d_b = _split4(dist)
    ax, ay = tl.split(a)
    u1, v1, u2, v2 = _split4(t)
    loss_iou, gx1, gy1, gx2, gy2, _a, _b, _c, _d = _iou_family(
        ax - d_l, ay - d_t, ax + d_r, ay + d_b, u1, v1, u2, v2, eps, 3, 2)
    gw = gs * lw_iou
    g_dist = _join4(-gx1, -gy1, gx2, gy2) * gw[:, None]
    target = _join4(ax - u1, ay - v1, u2 - ax, v2 - ay)
    target = tl.minimum(tl.maximum(target, 0.0), clamp_max)
    q = tl.maximum(1.0 - tl.abs(bins - target[:, :, None]), 0.0)
    loss_dfl = tl.sum(lse - tl.sum(q * x3, axis=2), axis=1) * 0.25
    c = gs * (0.25 * lw_dfl)
    coef_a = g_dist * rs
    coef_b = (c[:, None] - g_dist * dist) * rs
    dx3 = e * (bins * coef_a[:, :, None] + coef_b[:, :, None]) - c[:, None, None] * q
    dx = tl.reshape(dx3, [x.shape[0], KX])
    return (tl.join(loss_iou * lw_iou, loss_dfl * lw_dfl), dx, tl.zeros_like(t), g_dist)


@triton.jit
def yolo_box_first_grad(x, saved, KX: tl.constexpr):
    """The (1 - CIoU) term's share of yolo_box's gradient, from the logits and saved g_d:
    g_d p_j (j - d) = e_j (g_d / sum e) (j - d)."""
    R: tl.constexpr = KX // 4
    x3, bins, e, rs, dist, lse = _side_softmax(x, R)
    coef = saved * rs
    return tl.reshape(e * coef[:, :, None] * (bins - dist[:, :, None]), [x.shape[0], KX])
