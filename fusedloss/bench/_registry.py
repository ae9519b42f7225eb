"""The benchmark registry: every loss is one :class:`Case` in :data:`CASES`.

A case names the loss, how to find the fused function (looked up lazily, so a loss another
engineer has not landed yet is skipped, not an import error), the eager composition users write
today (also what ``torch.compile`` compiles), an input factory and a bytes model. Nothing else
in the harness knows about individual losses.

Conventions shared by every case:

* Inputs are 2-D, ``(n // 64, 64)`` (``(n, 1)`` when 64 does not divide n): rows are anchors /
  points / pixels, columns classes / channels. The ``broadcast`` weight is ``(n // 64, 1)`` in
  the input's dtype (a per-row weight such as mmdet's per-anchor weights or DeepLabCut's
  per-keypoint weights); the ``bool`` weight is a full-size mask.
* Without a weight the loss is ``"mean"``; with a weight it is ``sum(w * l) / sum(w)`` over the
  broadcast weight (fusedloss ``"weighted_mean"``).
* Only the input requires grad (a prediction against a fixed target).
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
WEIGHTS = ("none", "bool", "broadcast")
MODES = ("fwd", "bwd", "fwdbwd", "fwdbwd_go")
IMPLS = ("eager", "compile", "fused")
BROADCAST_INNER = 64


# --------------------------------------------------------------------------- shapes and bytes

def input_shape(n: int) -> tuple[int, int]:
    cols = BROADCAST_INNER if n >= BROADCAST_INNER and n % BROADCAST_INNER == 0 else 1
    return (n // cols, cols)


def weight_shape(n: int, weight: str) -> Optional[tuple[int, ...]]:
    if weight == "none":
        return None
    rows, cols = input_shape(n)
    return (rows, cols) if weight == "bool" else (rows, 1)


def weight_dtype(dtype: torch.dtype, weight: str) -> Optional[torch.dtype]:
    return {"none": None, "bool": torch.bool, "broadcast": dtype}[weight]


def weight_bytes(n: int, dtype: torch.dtype, weight: str) -> int:
    shape = weight_shape(n, weight)
    if shape is None:
        return 0
    numel = 1
    for s in shape:
        numel *= s
    return numel * weight_dtype(dtype, weight).itemsize


def elementwise_bytes(mode: str, n: int, dtype: torch.dtype, weight: str) -> tuple[int, str]:
    """Floor bytes of an elementwise loss with a scalar reduction and a gradient for the input.

    # I/O: fwd    = read x + read t + read w
    #      fwdbwd = read x + read t + read w + write dx   (grad_output 1 or not: same floor)
    #      bwd    = fwdbwd - fwd = write dx
    Each full-size tensor moves n * itemsize bytes; the weight moves its own numel * itemsize
    (n bytes for a bool mask, n/64 * itemsize for the broadcast one). Scalars (the loss,
    grad_output, normalisers) are ignored.
    """
    it = dtype.itemsize
    wb = weight_bytes(n, dtype, weight)
    parts_read = [f"read x ({it}n)", f"read t ({it}n)"]
    if wb:
        parts_read.append(f"read w ({wb / n:g}n)")
    read = 2 * n * it + wb
    grad = n * it
    if mode == "fwd":
        return read, " + ".join(parts_read)
    if mode == "bwd":
        return grad, f"write dx ({it}n)"
    if mode in ("fwdbwd", "fwdbwd_go"):
        return read + grad, " + ".join(parts_read + [f"write dx ({it}n)"])
    raise ValueError(f"unknown mode {mode!r}")


# --------------------------------------------------------------------------- input factories

def _weight(n, dtype, weight, device, gen):
    shape = weight_shape(n, weight)
    if shape is None:
        return None
    if weight == "bool":
        return torch.rand(shape, device=device, generator=gen) > 0.3
    # (0.05, 1.05): never zero, so no row silently drops out of the timing
    return (torch.rand(shape, device=device, generator=gen) + 0.05).to(dtype)


def regression_inputs(n, dtype, weight, device, gen):
    shape = input_shape(n)
    x = torch.randn(shape, device=device, generator=gen).to(dtype)
    t = torch.randn(shape, device=device, generator=gen).to(dtype)
    return x, t, _weight(n, dtype, weight, device, gen)


def unit_inputs(n, dtype, weight, device, gen):
    """Predictions and targets in [0, 1) (depth / saliency maps): shrinkage's regime."""
    shape = input_shape(n)
    x = torch.rand(shape, device=device, generator=gen).to(dtype)
    t = torch.rand(shape, device=device, generator=gen).to(dtype)
    return x, t, _weight(n, dtype, weight, device, gen)


def binary_logit_inputs(n, dtype, weight, device, gen):
    """Logits ~ N(0, 2^2), one-hot-like float targets (a quarter ones)."""
    shape = input_shape(n)
    x = (2 * torch.randn(shape, device=device, generator=gen)).to(dtype)
    t = (torch.rand(shape, device=device, generator=gen) < 0.25).to(dtype)
    return x, t, _weight(n, dtype, weight, device, gen)


def soft_logit_inputs(n, dtype, weight, device, gen):
    """Logits ~ N(0, 2^2), soft IoU-like targets: a quarter in (0, 1), the rest 0."""
    shape = input_shape(n)
    x = (2 * torch.randn(shape, device=device, generator=gen)).to(dtype)
    pos = torch.rand(shape, device=device, generator=gen) < 0.25
    score = torch.rand(shape, device=device, generator=gen)
    t = torch.where(pos, score, torch.zeros_like(score)).to(dtype)
    return x, t, _weight(n, dtype, weight, device, gen)


# --------------------------------------------------------------------------- eager compositions

def _reduce(l, w):
    """What users write: ``.mean()``, or ``(l * w).sum() / w.sum()`` over the broadcast mask."""
    if w is None:
        return l.mean()
    return (l * w).sum() / w.expand_as(l).sum()


def eager_huber(x, t, w, delta=1.0):
    if w is None:
        return F.huber_loss(x, t, delta=delta)
    return _reduce(F.huber_loss(x, t, reduction="none", delta=delta), w)


def eager_smooth_l1(x, t, w, beta=1.0):
    if w is None:
        return F.smooth_l1_loss(x, t, beta=beta)
    return _reduce(F.smooth_l1_loss(x, t, reduction="none", beta=beta), w)


def eager_l1(x, t, w):
    if w is None:
        return F.l1_loss(x, t)
    return _reduce(F.l1_loss(x, t, reduction="none"), w)


def eager_mse(x, t, w):
    if w is None:
        return F.mse_loss(x, t)
    return _reduce(F.mse_loss(x, t, reduction="none"), w)


def eager_shrinkage(x, t, w, a=10.0, c=0.2):
    # the paper's form, as users write it: exp(t) * l^2 / (1 + exp(a (c - l)))
    l = (x - t).abs()
    return _reduce(torch.exp(t) * l ** 2 / (1 + torch.exp(a * (c - l))), w)


def focal_formula(x, t, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss(reduction="none"), line for line."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
        loss = alpha_t * loss
    return loss


def eager_sigmoid_focal(x, t, w, alpha=0.25, gamma=2.0):
    return _reduce(focal_formula(x, t, alpha, gamma), w)


def _torchvision_focal():
    try:
        from torchvision.ops import sigmoid_focal_loss
    except Exception:  # noqa: BLE001 - absent, or a broken install: fall back to the formula
        return None

    def eager_tv_focal(x, t, w, alpha=0.25, gamma=2.0):
        if w is None:
            return sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="mean")
        return _reduce(sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none"), w)
    return eager_tv_focal


def eager_quality_focal(x, t, w, beta=2.0):
    # mmdet QFL with a soft score tensor, in its index-free form: BCE(x, t) |t - sigmoid(x)|^beta
    # (for t = 0 this is mmdet's negative term BCE(x, 0) sigmoid(x)^beta)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    return _reduce(ce * (t - torch.sigmoid(x)).abs().pow(beta), w)


def eager_varifocal(x, t, w, alpha=0.75, gamma=2.0):
    # mmdet varifocal_loss(iou_weighted=True), with .type_as instead of .float() so a bf16 run
    # stays bf16
    p = torch.sigmoid(x)
    focal_weight = (t * (t > 0).type_as(x)
                    + alpha * (p - t).abs().pow(gamma) * (t <= 0).type_as(x))
    return _reduce(F.binary_cross_entropy_with_logits(x, t, reduction="none") * focal_weight, w)


# --------------------------------------------------------------------------- fused lookup

def fused_lookup(module: Optional[str], name: str, **params) -> Callable[[], Optional[Callable]]:
    """A resolver: returns ``fn(x, t, w)`` calling ``fusedloss[.module].name``, None if absent."""
    def resolve():
        try:
            mod = importlib.import_module("fusedloss" + (f".{module}" if module else ""))
        except ImportError:
            return None
        fn = getattr(mod, name, None)
        if fn is None:
            return None

        def fused(x, t, w):
            return fn(x, t, reduction="mean" if w is None else "weighted_mean", weight=w, **params)
        fused.__qualname__ = f"fusedloss{'.' + module if module else ''}.{name}"
        return fused
    resolve.target = f"fusedloss{'.' + module if module else ''}.{name}"
    return resolve


@dataclass(frozen=True)
class Case:
    """One loss in the benchmark. ``eager(x, t, w)`` returns the scalar loss; so does the
    resolved fused function. ``compile_fn`` is what torch.compile compiles (default: eager)."""
    name: str
    fused: Callable[[], Optional[Callable]]
    eager: Callable
    eager_label: str
    make_inputs: Callable
    bytes_model: Callable = elementwise_bytes
    # the library's own eager function, preferred when importable (torchvision's focal loss)
    library_eager: Optional[Callable[[], Optional[Callable]]] = None
    library_label: str = ""
    shape: Callable[[int], tuple] = input_shape  # the timed input's shape for n elements

    def eager_impl(self) -> tuple[Callable, str]:
        """The eager baseline: the library's own function when importable, else the composition."""
        if self.library_eager is not None:
            fn = self.library_eager()
            if fn is not None:
                return fn, self.library_label
        return self.eager, self.eager_label

    def compile_fn(self) -> Callable:
        return self.eager

    def fused_fn(self) -> Optional[Callable]:
        return self.fused()

    @property
    def fused_target(self) -> str:
        return getattr(self.fused, "target", "?")


CASES: list[Case] = [
    # I/O (every entry): read x + read t + read w + write dx -- elementwise_bytes
    Case("huber", fused_lookup(None, "huber_loss", delta=1.0), eager_huber,
         "F.huber_loss(delta=1) [* w, sum / sum(w)]", regression_inputs),
    Case("smooth_l1", fused_lookup(None, "smooth_l1_loss", beta=1.0), eager_smooth_l1,
         "F.smooth_l1_loss(beta=1) [* w, sum / sum(w)]", regression_inputs),
    Case("l1", fused_lookup(None, "l1_loss"), eager_l1,
         "F.l1_loss [* w, sum / sum(w)]", regression_inputs),
    Case("mse", fused_lookup(None, "mse_loss"), eager_mse,
         "F.mse_loss [* w, sum / sum(w)]", regression_inputs),
    Case("shrinkage", fused_lookup("shrinkage", "shrinkage_loss", a=10.0, c=0.2),
         eager_shrinkage, "exp(t) l^2 / (1 + exp(a (c - l))), a=10, c=0.2", unit_inputs),
    Case("sigmoid_focal",
         fused_lookup("focal", "sigmoid_focal_loss", alpha=0.25, gamma=2.0),
         eager_sigmoid_focal, "torchvision focal formula (inline), alpha=0.25, gamma=2",
         binary_logit_inputs, library_eager=_torchvision_focal,
         library_label="torchvision.ops.sigmoid_focal_loss, alpha=0.25, gamma=2"),
    Case("quality_focal", fused_lookup("focal", "quality_focal_loss", beta=2.0),
         eager_quality_focal, "BCE(x, t) |t - sigmoid(x)|^2 (mmdet QFL, score tensor)",
         soft_logit_inputs),
    Case("varifocal", fused_lookup("focal", "varifocal_loss", alpha=0.75, gamma=2.0),
         eager_varifocal, "mmdet varifocal_loss(iou_weighted=True), alpha=0.75, gamma=2",
         soft_logit_inputs),
]


# --------------------------------------------------------------------------- recipes (users' code)
# Timed against a transcription of each user's own code (fusedloss.recipes; the transcriptions
# are the ones tests/test_recipes.py checks the recipes against).

COTRACKER_ITERS = 4


def cotracker_shape(n: int) -> tuple:
    """(I, B, T, N, 2) tracks with about n elements: 4 refinement iterations, batch 1 (as
    CoTracker3 trains), 16 frames when the point count allows."""
    points = max(n // (2 * COTRACKER_ITERS), 1)
    frames = 16 if points % 16 == 0 else 1
    return (COTRACKER_ITERS, 1, frames, points // frames, 2)


def cotracker_inputs(n, dtype, weight, device, gen):
    """preds (I, B, T, N, 2) in ``dtype`` (bf16 in training), fp32 ground truth (B, T, N, 2),
    visibility (B, T, N): bool ("bool"), float 0/1 as upstream ("broadcast"), or all visible
    ("none", still a mask: CoTracker always has one)."""
    shape = cotracker_shape(n)
    x = (4 * torch.randn(shape, device=device, generator=gen)).to(dtype)
    t = 4 * torch.randn(shape[1:], device=device, generator=gen)
    vis = torch.rand(shape[1:4], device=device, generator=gen) > 0.2
    if weight == "none":
        vis = torch.ones_like(vis)
    elif weight == "broadcast":
        vis = vis.float()
    return x, t, vis


def cotracker_bytes(mode: str, n: int, dtype: torch.dtype, weight: str) -> tuple[int, str]:
    """Floor bytes of the CoTracker step: every iteration's predictions read once and their
    gradient written once; the shared ground truth (fp32) and the (B, T, N) visibility read
    once (per point: 1/(I*2) of the prediction elements).

    # I/O: fwd = read preds (it*n) + read gt (4*n/I) + read vis (w_it*n/(2I))
    #      bwd = write dpreds (it*n)
    """
    it = dtype.itemsize
    w_it = 4 if weight == "broadcast" else 1
    gt = 4 * n // COTRACKER_ITERS
    vis = w_it * n // (2 * COTRACKER_ITERS)
    read = it * n + gt + vis
    parts = [f"read preds ({it}n)", f"read gt ({4 / COTRACKER_ITERS:g}n)",
             f"read vis ({w_it / (2 * COTRACKER_ITERS):g}n)"]
    if mode == "fwd":
        return read, " + ".join(parts)
    if mode == "bwd":
        return it * n, f"write dpreds ({it}n)"
    if mode in ("fwdbwd", "fwdbwd_go"):
        return read + it * n, " + ".join(parts + [f"write dpreds ({it}n)"])
    raise ValueError(f"unknown mode {mode!r}")


def _ct_huber(x, y, delta=6.0):
    diff = x - y
    abs_diff = diff.abs()
    flag = (abs_diff <= delta).to(diff.dtype)
    return flag * 0.5 * diff ** 2 + (1 - flag) * delta * (abs_diff - 0.5 * delta)


def _ct_sequence_loss(preds, gt, valids, vis, huber, gamma=0.8):
    n_predictions = len(preds)
    flow_loss = 0.0
    for i in range(n_predictions):
        i_loss = _ct_huber(preds[i], gt) if huber else (preds[i] - gt).abs()
        i_loss = torch.mean(i_loss, dim=3)
        mask = (valids.clone() * vis).expand_as(i_loss)
        masked_mean = torch.sum(i_loss * mask) / (1e-6 + torch.sum(mask))
        flow_loss = flow_loss + gamma ** (n_predictions - i - 1) * masked_mean
    return flow_loss / n_predictions


def eager_cotracker(x, t, w):
    """CoTracker3 (losses.py sequence_loss + reduce_masked_mean, train_on_kubric.py):
    0.05 * Huber(delta 6) over visible points + 0.01 * L1 over occluded ones, 4 iterations."""
    vis = w.to(t.dtype)
    valids = torch.ones_like(vis)
    preds = [x[i] for i in range(x.shape[0])]
    return (_ct_sequence_loss(preds, t, valids, vis, True).mean() * 0.05
            + _ct_sequence_loss(preds, t, valids, 1 - vis, False).mean() * 0.01)


def dlc_inputs(n, dtype, weight, device, gen):
    """Heatmaps (B, K, H, W) = (n/1024, 16, 8, 8) when n allows; weights: full bool mask,
    per-heatmap (B, K, 1, 1) with ~30 % zeros (unlabelled keypoints), or none (weights=1.0)."""
    hw = 64 if n % 64 == 0 else 1
    rows = n // hw
    k = 16 if rows % 16 == 0 else 1
    shape = (rows // k, k, 8 if hw == 64 else 1, 8 if hw == 64 else 1)
    x = torch.randn(shape, device=device, generator=gen).to(dtype)
    t = torch.rand(shape, device=device, generator=gen).to(dtype)
    if weight == "none":
        w = None
    elif weight == "bool":
        w = torch.rand(shape, device=device, generator=gen) > 0.3
    else:
        w = (torch.rand(shape[:2] + (1, 1), device=device, generator=gen) > 0.3).to(dtype)
    return x, t, w


def eager_dlc(x, t, w):
    """DeepLabCut WeightedMSECriterion: sum(mse * w) / count_nonzero(w broadcast), n == 0 -> 1
    (the `if` reads the count on the host, as upstream does)."""
    loss = F.mse_loss(x, t, reduction="none")
    weights = 1.0 if w is None else w
    if isinstance(weights, float):
        n_elems = loss.numel()
    else:
        present = torch.where(weights == 0.0, torch.zeros_like(weights, dtype=torch.float32),
                              torch.ones_like(weights, dtype=torch.float32))
        n_elems = torch.sum(present.expand_as(loss))
    if n_elems == 0:
        n_elems = 1
    return torch.sum(loss * weights) / n_elems


def recipe_lookup(target: str, build: Callable) -> Callable[[], Optional[Callable]]:
    """A resolver for a ``fusedloss.recipes`` entry: ``build(recipes_module)`` returns
    ``fn(x, t, w)``; None when this fusedloss has no recipes."""
    def resolve():
        try:
            mod = importlib.import_module("fusedloss.recipes")
        except ImportError:
            return None
        fn = build(mod)
        fn.__qualname__ = target
        return fn
    resolve.target = target
    return resolve


def _fused_cotracker(recipes):
    return lambda x, t, w: recipes.cotracker_sequence_loss(x, t, w)


def _fused_dlc(recipes):
    criterion = recipes.deeplabcut.WeightedMSECriterion()
    return lambda x, t, w: criterion(x, t, 1.0 if w is None else w)


CASES += [
    # I/O: read preds + read gt + read vis + write dpreds -- cotracker_bytes
    Case("cotracker", recipe_lookup("fusedloss.recipes.cotracker_sequence_loss",
                                    _fused_cotracker),
         eager_cotracker, "CoTracker3 sequence_loss x2 (visible Huber 0.05 + occluded L1 0.01), "
                          "4 iterations", cotracker_inputs, bytes_model=cotracker_bytes,
         shape=cotracker_shape),
    # I/O: read x + read t + read w + write dx -- elementwise_bytes ((B, K, 1, 1) = n/64 weights)
    Case("deeplabcut", recipe_lookup("fusedloss.recipes.deeplabcut.WeightedMSECriterion",
                                     _fused_dlc),
         eager_dlc, "DeepLabCut WeightedMSECriterion (count_nonzero, n == 0 -> 1)", dlc_inputs),
]


# --------------------------------------------------------------------------- heatmaps and boxes
# Shapes from n (a power of two in every preset): heatmaps (B, 16, 64, 64) (smaller maps below
# 2^16 elements), boxes (n/4, 4), DFL (n/16, 16), YOLO (B, A, 4 x 16) with B = 16 when n allows.

def _bytes(mode: str, reads: list, grad: tuple) -> tuple[int, str]:
    """fwd = the reads; bwd = writing the gradient; fwdbwd = both. reads / grad: (bytes, label)."""
    fwd = sum(b for b, _ in reads)
    if mode == "fwd":
        return fwd, " + ".join(lbl for _, lbl in reads)
    if mode == "bwd":
        return grad[0], grad[1]
    if mode in ("fwdbwd", "fwdbwd_go"):
        return fwd + grad[0], " + ".join([lbl for _, lbl in reads] + [grad[1]])
    raise ValueError(f"unknown mode {mode!r}")


def heatmap_shape(n: int) -> tuple:
    side = 64 if n >= 16 * 64 * 64 else 8 if n >= 16 * 64 else 1
    k = 16 if n >= 16 * side * side else 1
    return (max(n // (k * side * side), 1), k, side, side)


def heatmap_inputs(n, dtype, weight, device, gen):
    """Heatmap logits/predictions (B, K, H, W); t = (keypoints (B, K, 2) in input pixels at
    stride 4, visibility (B, K)); weights: per heatmap (B, K, 1, 1) ("broadcast", 30 % zeros),
    the visibility mask (B, K, 1, 1) as bool ("bool"), or none."""
    shape = heatmap_shape(n)
    b, k, h, w_ = shape
    x = torch.rand(shape, device=device, generator=gen).to(dtype)
    kp = torch.rand(b, k, 2, device=device, generator=gen) * (4 * w_)
    vis = (torch.rand(b, k, device=device, generator=gen) > 0.2).float()
    if weight == "none":
        w = None
    elif weight == "bool":
        w = (vis > 0).view(b, k, 1, 1)
    else:
        w = (torch.rand(b, k, 1, 1, device=device, generator=gen) > 0.3).to(dtype)
    return x, (kp, vis), w


HEATMAP_SIGMA, HEATMAP_STRIDE = 8.0, 4.0


def render_gaussian_torch(kp, vis, shape, sigma=HEATMAP_SIGMA, stride=HEATMAP_STRIDE):
    """The target as users render it on the device with torch ops: exp(-d^2 / 2 sigma^2) at
    pixel centres (j stride + stride / 2, i stride + stride / 2), zero where not visible."""
    b, k, h, w = shape
    ys = torch.arange(h, device=kp.device, dtype=kp.dtype) * stride + stride / 2
    xs = torch.arange(w, device=kp.device, dtype=kp.dtype) * stride + stride / 2
    dx2 = (xs.view(1, 1, 1, w) - kp[..., 0].view(b, k, 1, 1)) ** 2
    dy2 = (ys.view(1, 1, h, 1) - kp[..., 1].view(b, k, 1, 1)) ** 2
    g = torch.exp(-(dx2 + dy2) / (2 * sigma ** 2))
    return g * (vis > 0).to(g.dtype).view(b, k, 1, 1)


def eager_heatmap_mse(x, t, w):
    kp, vis = t
    target = render_gaussian_torch(kp, vis, x.shape).to(x.dtype)
    return _reduce(F.mse_loss(x, target, reduction="none"), w)


def _fused_heatmap(fl):
    def fused(x, t, w):
        kp, vis = t
        return fl.heatmap_loss(x, kp, vis, sigma=HEATMAP_SIGMA, stride=HEATMAP_STRIDE,
                               offset=HEATMAP_STRIDE / 2, loss="mse",
                               reduction="mean" if w is None else "weighted_mean", weight=w)
    return fused


def heatmap_bytes(mode: str, n: int, dtype: torch.dtype, weight: str) -> tuple[int, str]:
    """The rendered target is never read: only the heatmaps move.

    # I/O: fwd = read x (it n) + read w ((B, K, 1, 1): ~0) + keypoints (~0)
    #      bwd = write dx (it n)
    """
    it = dtype.itemsize
    b, k, _, _ = heatmap_shape(n)
    wb = 0 if weight == "none" else b * k * (1 if weight == "bool" else it)
    return _bytes(mode, [(it * n, f"read x ({it}n)"), (wb + b * k * 12, "keypoints, w (~0)")],
                  (it * n, f"write dx ({it}n)"))


def _row_weight(rows, dtype, weight, device, gen):
    """One weight per row (box, distribution): none, a bool mask (70 % kept), or in (0.05, 1.05)."""
    if weight == "none":
        return None
    if weight == "bool":
        return torch.rand(rows, device=device, generator=gen) > 0.3
    return (torch.rand(rows, device=device, generator=gen) + 0.05).to(dtype)


def box_inputs(n, dtype, weight, device, gen):
    """n / 4 box pairs, xyxy, overlapping (centres within 2 px, sizes 1-9); weight per box."""
    m = max(n // 4, 1)
    c = torch.rand(m, 2, device=device, generator=gen) * 100
    wh = torch.rand(m, 2, device=device, generator=gen) * 8 + 1
    t = torch.cat([c - wh / 2, c + wh / 2], -1)
    x = (t + torch.randn(m, 4, device=device, generator=gen)).to(dtype)
    return x, t.to(dtype), _row_weight(m, dtype, weight, device, gen)


def box_bytes(mode: str, n: int, dtype: torch.dtype, weight: str) -> tuple[int, str]:
    """# I/O: fwd = read pred (it n) + read target (it n) + read w (per box: n/4 entries)
    #      bwd = write dpred (it n)"""
    it = dtype.itemsize
    wb = 0 if weight == "none" else (n // 4) * (1 if weight == "bool" else it)
    reads = [(it * n, f"read pred ({it}n)"), (it * n, f"read target ({it}n)")]
    if wb:
        reads.append((wb, f"read w ({wb / n:g}n)"))
    return _bytes(mode, reads, (it * n, f"write dpred ({it}n)"))


def torchvision_giou_formula(x, t, eps=1e-7):
    """torchvision.ops.generalized_box_iou_loss(reduction="none"), line for line."""
    x1, y1, x2, y2 = x.unbind(dim=-1)
    x1g, y1g, x2g, y2g = t.unbind(dim=-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    intsctk = torch.zeros_like(x1)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    iouk = intsctk / (unionk + eps)
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    miouk = iouk - ((area_c - unionk) / (area_c + eps))
    return 1 - miouk


def eager_giou(x, t, w):
    return _reduce(torchvision_giou_formula(x, t), w)


def _torchvision_giou():
    try:
        from torchvision.ops import generalized_box_iou_loss
    except Exception:  # noqa: BLE001 - absent, or a broken install: the formula above
        return None
    return lambda x, t, w: _reduce(generalized_box_iou_loss(x, t, reduction="none"), w)


def dfl_inputs(n, dtype, weight, device, gen):
    """n / 16 distributions over 16 bins (logits ~ N(0, 2^2)), targets in [0, 14.99)."""
    m = max(n // 16, 1)
    x = (2 * torch.randn(m, 16, device=device, generator=gen)).to(dtype)
    t = torch.rand(m, device=device, generator=gen) * 14.99
    return x, t, _row_weight(m, dtype, weight, device, gen)


def eager_dfl(x, t, w):
    """mmdet distribution_focal_loss: two cross-entropies at the neighbouring bins."""
    left = t.long()
    w_left = (left + 1).to(t.dtype) - t
    loss = (F.cross_entropy(x, left, reduction="none") * w_left
            + F.cross_entropy(x, left + 1, reduction="none") * (1 - w_left))
    return _reduce(loss, w)


def dfl_bytes(mode: str, n: int, dtype: torch.dtype, weight: str) -> tuple[int, str]:
    """# I/O: fwd = read logits (it n) + read target (fp32, n/16) + read w (n/16 entries)
    #      bwd = write dlogits (it n)"""
    it = dtype.itemsize
    m = n // 16
    reads = [(it * n, f"read x ({it}n)"), (4 * m, "read t (0.25n)")]
    if weight != "none":
        wb = m * (1 if weight == "bool" else it)
        reads.append((wb, f"read w ({wb / n:g}n)"))
    return _bytes(mode, reads, (it * n, f"write dx ({it}n)"))


YOLO_REG_MAX = 16


def yolo_shape(n: int) -> tuple:
    anchors = max(n // (4 * YOLO_REG_MAX), 1)
    b = 16 if anchors % 16 == 0 and anchors >= 256 else 1
    return (b, anchors // b, 4 * YOLO_REG_MAX)


def yolo_inputs(n, dtype, weight, device, gen):
    """pred_dist (B, A, 64) logits; t = (anchor points (A, 2), target boxes (B, A, 4), target
    scores (B, A, 1), fg_mask (B, A)): 10 % foreground, boxes up to ~20 grid cells around the
    anchor (some beyond reg_max: clamped in the DFL). The weight layouts are not used (the
    foreground mask and the scores are the weights; the same inputs for every layout)."""
    b, a, c = yolo_shape(n)
    anchors = torch.rand(a, 2, device=device, generator=gen) * 80
    centre = anchors + torch.randn(b, a, 2, device=device, generator=gen)
    wh = torch.rand(b, a, 2, device=device, generator=gen) * 20 + 1
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], -1)
    fg = torch.rand(b, a, device=device, generator=gen) < 0.1
    scores = torch.rand(b, a, 1, device=device, generator=gen) * fg[..., None]
    x = (2 * torch.randn(b, a, c, device=device, generator=gen)).to(dtype)
    return x, (anchors, boxes, scores, fg), None


def ultralytics_bbox_iou_ciou(box1, box2, eps=1e-7):
    """ultralytics.utils.metrics.bbox_iou(box1, box2, xywh=False, CIoU=True), as written."""
    (b1_x1, b1_y1, b1_x2, b1_y2), (b2_x1, b2_y1, b2_x2, b2_y2) = box1.chunk(4, -1), box2.chunk(4, -1)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    inter = ((b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp_(0)
             * (b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)).clamp_(0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)
    ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2).pow(2) + (b2_y1 + b2_y2 - b1_y1 - b1_y2).pow(2)) / 4
    v = (4 / math.pi**2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def ultralytics_box_loss(pred_dist, anchor_points, target_bboxes, target_scores,
                         target_scores_sum, fg_mask, reg_max=YOLO_REG_MAX):
    """v8DetectionLoss.bbox_decode + BboxLoss.forward (ultralytics/utils/loss.py, tal.py), as
    written: boolean-mask indexing of the foreground, DFLoss from two cross-entropies; returns
    (loss_iou, loss_dfl)."""
    b, a, c = pred_dist.shape
    proj = torch.arange(reg_max, dtype=torch.float, device=pred_dist.device)
    decoded = pred_dist.view(b, a, 4, c // 4).softmax(3).matmul(proj.type(pred_dist.dtype))
    lt, rb = decoded.chunk(2, -1)
    pred_bboxes = torch.cat((anchor_points - lt, anchor_points + rb), -1)  # dist2bbox, xyxy
    weight = target_scores.sum(-1)[fg_mask].unsqueeze(-1)
    iou = ultralytics_bbox_iou_ciou(pred_bboxes[fg_mask], target_bboxes[fg_mask])
    loss_iou = ((1.0 - iou) * weight).sum() / target_scores_sum
    x1y1, x2y2 = target_bboxes.chunk(2, -1)  # bbox2dist(anchor_points, target_bboxes, reg_max - 1)
    target_ltrb = torch.cat((anchor_points - x1y1, x2y2 - anchor_points), -1).clamp_(
        0, reg_max - 1 - 0.01)
    target = target_ltrb[fg_mask].clamp_(0, reg_max - 1 - 0.01)  # DFLoss.__call__
    pd = pred_dist[fg_mask].view(-1, reg_max)
    tl_ = target.long()
    tr = tl_ + 1
    wl = tr - target
    wr = 1 - wl
    dfl = (F.cross_entropy(pd, tl_.view(-1), reduction="none").view(tl_.shape) * wl
           + F.cross_entropy(pd, tr.view(-1), reduction="none").view(tl_.shape) * wr
           ).mean(-1, keepdim=True)
    loss_dfl = (dfl * weight).sum() / target_scores_sum
    return loss_iou, loss_dfl


def eager_yolo(x, t, w):
    """ultralytics' box part: hyp.box 7.5, hyp.dfl 1.5, target_scores_sum = max(sum, 1) (its
    Python ``max`` on a device tensor: a host sync, as upstream)."""
    anchors, boxes, scores, fg = t
    tss = max(scores.sum(), 1)
    loss_iou, loss_dfl = ultralytics_box_loss(x, anchors, boxes, scores, tss, fg)
    return loss_iou * 7.5 + loss_dfl * 1.5


def _fused_yolo(fl):
    def fused(x, t, w):
        anchors, boxes, scores, fg = t
        loss_iou, loss_dfl = fl.box.yolo_box_loss(x, anchors, boxes, scores.sum(-1),
                                                  scores.sum().clamp_min(1), fg_mask=fg,
                                                  loss_weight=(7.5, 1.5))
        return loss_iou + loss_dfl
    return fused


def yolo_bytes(mode: str, n: int, dtype: torch.dtype, weight: str) -> tuple[int, str]:
    """Per anchor: 64 logits, its target box (fp32, 4), anchor point (fp32, 2, shared over the
    batch), score (fp32) and foreground flag (bool).

    # I/O: fwd = read pred_dist (it n) + read boxes (16 n/64) + read anchors (8 n/64/B)
    #            + read scores (4 n/64) + read fg (n/64)
    #      bwd = write dpred_dist (it n)
    """
    it = dtype.itemsize
    b, a, _ = yolo_shape(n)
    rows = b * a
    reads = [(it * n, f"read pred_dist ({it}n)"), (16 * rows, "read boxes (0.25n)"),
             (8 * a, f"read anchors ({8 * a / n:g}n)"), (5 * rows, "read scores, fg (0.078n)")]
    return _bytes(mode, reads, (it * n, f"write dpred_dist ({it}n)"))


def module_lookup(target: str, build: Callable) -> Callable[[], Optional[Callable]]:
    """A resolver for a fused function built from the fusedloss package (None if absent)."""
    def resolve():
        try:
            fn = build(importlib.import_module("fusedloss"))
        except (ImportError, AttributeError):
            return None
        fn.__qualname__ = target
        return fn
    resolve.target = target
    return resolve


CASES += [
    # I/O: read x + write dx (the target is rendered, never read) -- heatmap_bytes
    Case("heatmap_mse", module_lookup("fusedloss.heatmap_loss(loss='mse')", _fused_heatmap),
         eager_heatmap_mse, "render Gaussians with torch ops (B, K, 64, 64), then F.mse_loss",
         heatmap_inputs, bytes_model=heatmap_bytes, shape=heatmap_shape),
    # I/O: read pred + read target + read w + write dpred -- box_bytes
    Case("box_giou", fused_lookup(None, "box_iou_loss", mode="giou"), eager_giou,
         "torchvision generalized_box_iou_loss formula (inline)", box_inputs,
         bytes_model=box_bytes, shape=lambda n: (max(n // 4, 1), 4),
         library_eager=_torchvision_giou,
         library_label="torchvision.ops.generalized_box_iou_loss"),
    # I/O: read logits + read target + read w + write dlogits -- dfl_bytes
    Case("dfl", fused_lookup(None, "distribution_focal_loss"), eager_dfl,
         "mmdet distribution_focal_loss (two F.cross_entropy)", dfl_inputs,
         bytes_model=dfl_bytes, shape=lambda n: (max(n // 16, 1), 16)),
    # I/O: read pred_dist + boxes + anchors + scores + fg + write dpred_dist -- yolo_bytes
    Case("yolo_box", module_lookup("fusedloss.box.yolo_box_loss", _fused_yolo), eager_yolo,
         "ultralytics bbox_decode + BboxLoss (CIoU + DFLoss, boolean indexing), box 7.5 dfl 1.5",
         yolo_inputs, bytes_model=yolo_bytes, shape=yolo_shape),
]


# --------------------------------------------------------------------------- segmentation (Dice)
# Dice needs each (image, class) sum before any gradient: every implementation reads the
# logits (and the target) twice for forward + backward unless they stay on chip.

DICE_CLASSES = 21  # Pascal VOC


def _square(pixels: int) -> tuple:
    w = 1 << max(0, (pixels.bit_length() - 1) // 2)
    return (max(pixels // w, 1), w)


def dice_shape(n: int) -> tuple:
    """(B, 21, H, W) with about n elements (B = 8 when n allows)."""
    b = 8 if n >= 8 * DICE_CLASSES * 64 else 1
    return (b, DICE_CLASSES) + _square(max(n // (b * DICE_CLASSES), 1))


def dice_inputs(n, dtype, weight, device, gen):
    """Logits (B, 21, H, W) ~ N(0, 2^2), int64 labels (B, H, W); weights per class: none,
    a bool mask of classes ("bool"), or in (0.05, 1.05) ("broadcast")."""
    shape = dice_shape(n)
    x = (2 * torch.randn(shape, device=device, generator=gen)).to(dtype)
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], device=device, generator=gen)
    return x, labels, _row_weight(shape[1], dtype, weight, device, gen)


def eager_dice(x, t, w, smooth=1e-5):
    """MONAI DiceLoss(softmax=True, to_onehot_y=True) as its forward computes it."""
    p = torch.softmax(x, 1)
    onehot = F.one_hot(t, x.shape[1]).movedim(-1, 1).to(p.dtype)
    dims = tuple(range(2, x.dim()))
    inter = (p * onehot).sum(dims)
    f = 1.0 - (2.0 * inter + smooth) / (p.sum(dims) + onehot.sum(dims) + smooth)
    return f.mean() if w is None else (f * w).mean()


def _fused_dice(fl):
    return lambda x, t, w: fl.dice_loss(x, t, activation="softmax", weight=w)


def _dice_bytes(n_elems: int, it: int, target_bytes: int, mode: str) -> tuple[int, str]:
    reads = [(it * n_elems, f"read x ({it}n)"), (target_bytes, f"read t ({target_bytes / n_elems:.3g}n)")]
    grad = (2 * it * n_elems + target_bytes, f"read x again ({it}n) + t again + write dx ({it}n)")
    return _bytes(mode, reads, grad)


def dice_bytes(mode: str, n: int, dtype: torch.dtype, weight: str) -> tuple[int, str]:
    """# I/O: fwd = read x (it n) + read labels (8 n / C)
    #      bwd = read x (it n) + read labels (8 n / C) + write dx (it n)
    (n: the elements of the actual shape, dice_shape(n))"""
    shape = dice_shape(n)
    elems = math.prod(shape)
    return _dice_bytes(elems, dtype.itemsize, 8 * elems // shape[1], mode)


def bce_dice_shape(n: int) -> tuple:
    b = 8 if n >= 8 * 64 else 1
    return (b, 1) + _square(max(n // b, 1))


def bce_dice_inputs(n, dtype, weight, device, gen):
    """Binary segmentation: logits (B, 1, H, W), a float mask (30 % foreground)."""
    shape = bce_dice_shape(n)
    x = (2 * torch.randn(shape, device=device, generator=gen)).to(dtype)
    t = (torch.rand(shape, device=device, generator=gen) < 0.3).to(dtype)
    return x, t, _row_weight(1, dtype, weight, device, gen)


def eager_bce_dice(x, t, w, smooth=1e-5):
    """BCE-with-logits (mean) + MONAI-style Dice on the sigmoid, as users add them."""
    bce = F.binary_cross_entropy_with_logits(x, t)
    p = torch.sigmoid(x)
    dims = tuple(range(2, x.dim()))
    f = 1.0 - (2.0 * (p * t).sum(dims) + smooth) / (p.sum(dims) + t.sum(dims) + smooth)
    return bce + (f.mean() if w is None else (f * w).mean())


def _fused_bce_dice(fl):
    return lambda x, t, w: fl.bce_dice_loss(x, t, weight=w)


def bce_dice_bytes(mode: str, n: int, dtype: torch.dtype, weight: str) -> tuple[int, str]:
    """# I/O: fwd = read x (it n) + read mask (it n); bwd = both again + write dx (it n)"""
    elems = math.prod(bce_dice_shape(n))
    return _dice_bytes(elems, dtype.itemsize, dtype.itemsize * elems, mode)


CASES += [
    # I/O: read x + labels; again + write dx in the backward -- dice_bytes
    Case("dice", module_lookup("fusedloss.dice_loss(activation='softmax')", _fused_dice),
         eager_dice, "MONAI DiceLoss(softmax=True, to_onehot_y=True) composition, C = 21",
         dice_inputs, bytes_model=dice_bytes, shape=dice_shape),
    # I/O: read x + mask; again + write dx in the backward -- bce_dice_bytes
    Case("bce_dice", module_lookup("fusedloss.bce_dice_loss", _fused_bce_dice), eager_bce_dice,
         "F.binary_cross_entropy_with_logits + sigmoid Dice (MONAI formula), C = 1",
         bce_dice_inputs, bytes_model=bce_dice_bytes, shape=bce_dice_shape),
]

CASE_BY_NAME = {c.name: c for c in CASES}
