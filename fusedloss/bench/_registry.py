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

CASE_BY_NAME = {c.name: c for c in CASES}
