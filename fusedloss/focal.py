"""Focal family on the fused engine: sigmoid focal loss, quality focal loss, varifocal loss.

``sigmoid_focal_loss`` is a drop-in for ``torchvision.ops.sigmoid_focal_loss`` (same positional
order and defaults) that also takes mmdet-style integer class indices, probabilities
(``from_logits=False``), a broadcast ``weight``, ``avg_factor`` and ``loss_weight``.
``quality_focal_loss`` and ``varifocal_loss`` are the elementwise GFL/VarifocalNet losses of
mmdet and ultralytics.
"""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch

from ._docs import fill
from ._engine import FusedLossModule, register_loss
from ._validate import check_flag, check_param
from .kernels import focal as math
from .reference import focal as ref

Number = Union[float, torch.Tensor]

_INTEGER_EXPONENTS = (0.0, 1.0, 2.0, 3.0, 4.0)


def _exponent_variant(index: int):
    """The kernels' VARIANT: the modulator's exponent params[index] when it is an integer
    0..4 (multiplications instead of exp2/log2), else -1 (any real exponent)."""
    def variant(params: tuple, t_binary: bool) -> int:
        g = params[index]
        return int(g) if g in _INTEGER_EXPONENTS else -1
    return variant


_FOCAL = register_loss("sigmoid_focal_loss", math.sigmoid_focal, ref.sigmoid_focal_loss,
                       ("alpha", "gamma"), allow_class_index=True, variant=_exponent_variant(1))
_FOCAL_PROB = register_loss("sigmoid_focal_loss_prob", math.sigmoid_focal_prob,
                            ref.sigmoid_focal_loss, ("alpha", "gamma"),
                            reference_kwargs={"from_logits": False}, allow_class_index=True,
                            variant=_exponent_variant(1))
_QFL = register_loss("quality_focal_loss", math.quality_focal, ref.quality_focal_loss, ("beta",),
                     variant=_exponent_variant(0))
_QFL_PROB = register_loss("quality_focal_loss_prob", math.quality_focal_prob,
                          ref.quality_focal_loss, ("beta",),
                          reference_kwargs={"from_logits": False}, variant=_exponent_variant(0))
_VFL = register_loss("varifocal_loss", math.varifocal, ref.varifocal_loss,
                     ("alpha", "gamma", "iou_weighted"), variant=_exponent_variant(1))
_VFL_PROB = register_loss("varifocal_loss_prob", math.varifocal_prob, ref.varifocal_loss,
                          ("alpha", "gamma", "iou_weighted"),
                          reference_kwargs={"from_logits": False}, variant=_exponent_variant(1))

_COMMON_DOC = """
    Args:
        inputs: logits (or probabilities with ``from_logits=False``), any shape, float16 /
            bfloat16 / float32 / float64, any strides. For classification the last dimension
            is the class dimension C.
        targets: floating targets in [0, 1] (hard or soft), broadcastable to ``inputs.shape``
            (read without a copy; its gradient, when it requires grad, is reduced over the
            broadcast dimensions). {targets_extra}
        from_logits: ``False`` takes probabilities p in [0, 1] (mmdet ``activated=True``) and
            copies ``F.binary_cross_entropy``: logs clamped at -100, d/dp =
            (p - t) / max(p (1 - p), 1e-12) (torch's float32 1e-12, in float64 too),
            d/dt = log(1 - p) - log(p) (+-inf at p in {0, 1}).
            p outside [0, 1] is not checked (that would sync the host) and gives NaN.
{engine_args}

{engine_returns}

    Numerics: stable for any finite logit (no overflow at +-1e4 in any dtype); fp16/bf16 are
    computed in fp32. Gradients are analytic. Where the literal autograd of the formula is
    0 * inf = NaN but the derivative has a finite limit, the limit is returned: (1 - p_t)^(g-1)
    for 0 < g < 1 once p_t rounds to 1 (torchvision is NaN there for |x| >= ~37 in float64,
    ~17 in float32), |t - s(x)|^(b-1) at t == s(x) for b < 1 (0, the symmetric choice, as the
    derivative of ``abs`` at 0), and probabilities with p == t in {0, 1}.
"""


def _check_alpha(alpha) -> float:
    """Any finite number; None or a negative value disables the alpha term (-1.0)."""
    if alpha is None:
        return -1.0
    alpha = check_param("alpha", alpha)
    return alpha if alpha >= 0 else -1.0


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: Optional[float] = 0.25,
                       gamma: float = 2.0, reduction: str = "none",
                       weight: Optional[torch.Tensor] = None, *,
                       avg_factor: Optional[Number] = None, from_logits: bool = True,
                       loss_weight: Number = 1.0) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet), fused; equals ``torchvision.ops.sigmoid_focal_loss``.

    Elementwise, with ``p = sigmoid(x)`` (or ``p = x`` when ``from_logits=False``)::

        ce    = BCE(x, t)                       # binary_cross_entropy[_with_logits]
        p_t   = p t + (1 - p)(1 - t)
        loss  = alpha_t * ce * (1 - p_t) ** gamma
        alpha_t = alpha t + (1 - alpha)(1 - t)  if alpha >= 0, else 1 (alpha None or < 0)

    ``gamma`` must be finite and >= 0 (any real, e.g. 0.5; 0 gives alpha-weighted BCE);
    ``alpha`` any finite number (torchvision accepts alpha > 1 too). The default reduction is
    ``"none"``, as torchvision.
    {common}
    Example (torchvision call, then mmdet-style class indices with a background class)::

        >>> import torch, fusedloss
        >>> logits = torch.randn(8, 5, requires_grad=True)       # 8 anchors, 5 classes
        >>> onehot = torch.zeros(8, 5); onehot[0, 2] = 1
        >>> fusedloss.sigmoid_focal_loss(logits, onehot, 0.25, 2.0, "sum").backward()
        >>> labels = torch.tensor([2, 5, 5, 0, 5, 5, 1, 5])     # 5 == C: background
        >>> loss = fusedloss.sigmoid_focal_loss(logits, labels, reduction="mean",
        ...                                     avg_factor=3.0, loss_weight=1.0)
    """
    alpha = _check_alpha(alpha)
    gamma = check_param("gamma", gamma, minimum=0.0)
    from_logits = check_flag("from_logits", from_logits)
    spec = _FOCAL if from_logits else _FOCAL_PROB
    return spec(inputs, targets, (alpha, gamma), reduction, weight, avg_factor, loss_weight)


def quality_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, beta: float = 2.0,
                       reduction: str = "mean", weight: Optional[torch.Tensor] = None, *,
                       avg_factor: Optional[Number] = None, from_logits: bool = True,
                       loss_weight: Number = 1.0) -> torch.Tensor:
    """Quality focal loss (GFL, Li et al. 2020), fused, elementwise::

        loss = BCE(x, t) * |t - sigmoid(x)| ** beta

    ``targets`` are IoU-quality scores: the score at the positive class of a row, 0 elsewhere
    (all-zero rows are negatives). mmdet's ``QualityFocalLoss`` with ``(label, score)`` is the
    same elementwise loss summed over classes: with ``avg_factor`` both return
    sum / avg_factor; without it mmdet's ``"mean"`` divides by N and ours by N * C (every
    elementwise loss here does), i.e. mmdet's value is ours times C (or ``"sum"`` / N).
    ``beta`` must be finite and >= 0. Float targets only.
    {common}
    Example::

        >>> import torch, fusedloss
        >>> logits = torch.randn(6, 4, requires_grad=True)
        >>> score = torch.zeros(6, 4); score[1, 3] = 0.7; score[4, 0] = 0.9   # IoU at the label
        >>> fusedloss.quality_focal_loss(logits, score, reduction="mean", avg_factor=2.0).backward()
    """
    beta = check_param("beta", beta, minimum=0.0)
    from_logits = check_flag("from_logits", from_logits)
    spec = _QFL if from_logits else _QFL_PROB
    return spec(inputs, targets, (beta,), reduction, weight, avg_factor, loss_weight)


def varifocal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.75,
                   gamma: float = 2.0, iou_weighted: bool = True, reduction: str = "mean",
                   weight: Optional[torch.Tensor] = None, *,
                   avg_factor: Optional[Number] = None, from_logits: bool = True,
                   loss_weight: Number = 1.0) -> torch.Tensor:
    """Varifocal loss (VarifocalNet, Zhang et al. 2021), fused, elementwise::

        w    = t (or 1 if not iou_weighted)          where t > 0
             = alpha * |sigmoid(x) - t| ** gamma    where t <= 0
        loss = BCE(x, t) * w

    as mmdet's ``varifocal_loss`` (the weight is not detached). Ultralytics'
    ``VarifocalLoss(pred, gt, label)`` (``alpha * sigmoid(x)**gamma * (1 - label) + gt *
    label``) equals this loss only where ``label == (gt > 0)``: it takes the label separately,
    so a matched entry whose IoU is exactly 0 has weight 0 there and is a negative here; its
    ``.mean(1).sum()`` is ``reduction="sum"`` divided by ``inputs.shape[1]`` (C for (N, C)
    scores, but the number of queries nq for RT-DETR's (B, nq, C)).
    :class:`fusedloss.recipes.ultralytics.VarifocalLoss` is the drop-in for both.
    ``gamma`` must be finite and >= 0, ``alpha`` any finite number. Float targets only.
    {common}
    Example::

        >>> import torch, fusedloss
        >>> logits = torch.randn(6, 4, requires_grad=True)
        >>> iou = torch.zeros(6, 4); iou[2, 1] = 0.8
        >>> fusedloss.varifocal_loss(logits, iou, avg_factor=iou.sum().clamp_min(1)).backward()
    """
    alpha = check_param("alpha", alpha)
    gamma = check_param("gamma", gamma, minimum=0.0)
    iou_weighted = check_flag("iou_weighted", iou_weighted)
    from_logits = check_flag("from_logits", from_logits)
    spec = _VFL if from_logits else _VFL_PROB
    return spec(inputs, targets, (alpha, gamma, 1.0 if iou_weighted else 0.0), reduction, weight,
                avg_factor, loss_weight)


_TARGETS_EXTRA = {
    sigmoid_focal_loss: "Or integer class indices (any integer dtype) of shape "
                        "``inputs.shape[:-1]``: k in [0, C) is the row's positive class, any other "
                        "value (C, -1, ...) is background; values and gradients equal the one-hot "
                        "float targets exactly, and no one-hot tensor is built. An integer or bool "
                        "target of inputs' own shape is a TypeError (pass ``.float()``).",
    quality_focal_loss: "",
    varifocal_loss: "",
}
for _fn, _extra in _TARGETS_EXTRA.items():
    _fn.__doc__ = _fn.__doc__.replace("{common}", _COMMON_DOC)
    fill(_fn, input="inputs", target="targets", dtype_note=" (inputs' dtype for class indices)",
         targets_extra=_extra)


class FocalLoss(FusedLossModule):
    """``nn.Module`` wrapper of :func:`sigmoid_focal_loss`, mmdet-style: default
    ``reduction="mean"`` (the function's is torchvision's ``"none"``), hyper-parameters and
    ``loss_weight`` at construction; ``forward(input, target, weight=None, *, avg_factor=None)``."""
    functional = staticmethod(sigmoid_focal_loss)

    def __init__(self, alpha: Optional[float] = 0.25, gamma: float = 2.0, reduction: str = "mean",
                 *, from_logits: bool = True, loss_weight: Number = 1.0):
        super().__init__(reduction, loss_weight=loss_weight, alpha=alpha, gamma=gamma,
                         from_logits=from_logits)


class QualityFocalLoss(FusedLossModule):
    """``nn.Module`` wrapper of :func:`quality_focal_loss`."""
    functional = staticmethod(quality_focal_loss)

    def __init__(self, beta: float = 2.0, reduction: str = "mean", *, from_logits: bool = True,
                 loss_weight: Number = 1.0):
        super().__init__(reduction, loss_weight=loss_weight, beta=beta, from_logits=from_logits)


class VarifocalLoss(FusedLossModule):
    """``nn.Module`` wrapper of :func:`varifocal_loss`."""
    functional = staticmethod(varifocal_loss)

    def __init__(self, alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True,
                 reduction: str = "mean", *, from_logits: bool = True, loss_weight: Number = 1.0):
        super().__init__(reduction, loss_weight=loss_weight, alpha=alpha, gamma=gamma,
                         iou_weighted=iou_weighted, from_logits=from_logits)
