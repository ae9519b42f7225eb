"""Dice and BCE + Dice for segmentation, fused: one pass over the logits for the sums, one
in the backward for the gradient (the engine's segment losses, ``fusedloss/_segments.py``).

Per segment (by default one (sample, class); one class over the batch when ``reduce_dims``
holds 0), with p the activated input and t the target (one-hot from class indices on the
fly, never materialised)::

    I = sum p t,  P = sum p (or p^2),  T = sum t (or t^2)      over the segment's elements
    score = (2 I + smooth_nr) / max(P + T + smooth_dr, eps)    (jaccard: P + T -> 2 (P + T - I))
    f = 1 - score   (log_loss: -log(max(score, eps)));  f *= [T > 0] with zero_absent_classes

then ``weight`` per segment, the reduction over the segments, ``loss_weight``. MONAI's
``DiceLoss`` and segmentation_models_pytorch's ``DiceLoss`` are both this formula with their
own defaults (README "Dice and BCE + Dice" maps their arguments).

Bytes per element (fp32 logits and targets, forward + backward): 4 + 4 read by the sums pass,
4 + 4 read and 4 written by the gradient pass = 20 (a class-index target: 8/C per element
instead of 4 per pass); BCE + Dice reads nothing more.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch

from ._segments import SegmentCall, apply_segments, register_segment_loss
from ._validate import (check_flag, check_no_grad, check_param, check_same_device,
                        check_scalar_arg, check_tensor)
from .kernels import dice as math_
from .kernels import engine as K

__all__ = ["dice_loss", "bce_dice_loss", "DiceLoss"]

Number = Union[float, torch.Tensor]

_SPEC = register_segment_loss("dice", math_.dice_elem, math_.dice_elem_grad,
                              math_.dice_segment)
_ACTIVATIONS = {"sigmoid": K.ACT_SIGMOID, "softmax": K.ACT_SOFTMAX}
_REDUCTIONS = ("none", "mean", "sum")


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}"


def _check_input_target(input, target):
    check_tensor("input", input)
    if not input.dtype.is_floating_point:
        raise TypeError(f"input must be floating (logits or probabilities); got "
                        f"{_describe(input)}")
    if not 3 <= input.dim() <= 5:
        raise ValueError(f"input must be (B, C, *spatial) with 1, 2 or 3 spatial dims; got "
                         f"{_describe(input)}")
    check_tensor("target", target)
    check_same_device("target", target, input)
    if target.requires_grad:
        raise TypeError("target gets no gradient from dice_loss but requires grad; pass "
                        "target.detach()")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        if target.shape != input.shape:
            raise ValueError(f"a floating (or bool) target must have input's shape "
                             f"{tuple(input.shape)}; got {_describe(target)} (class indices: "
                             f"an integer tensor of shape (B, *spatial))")
        return False
    if target.dtype.is_complex:
        raise TypeError(f"target must be floating, bool or integer; got {_describe(target)}")
    expected = (input.shape[0],) + tuple(input.shape[2:])
    if tuple(target.shape) != expected:
        hint = ""
        if target.dim() == input.dim() and target.shape[1] == 1:
            hint = " (MONAI-style labels (B, 1, *spatial): pass target.squeeze(1))"
        raise ValueError(f"an integer target holds class indices of shape (B, *spatial) = "
                         f"{expected}, without a class dim; got {_describe(target)}{hint}")
    return True


def _check_reduce_dims(reduce_dims, ndim: int) -> bool:
    """True when the segments span the batch (0 in reduce_dims)."""
    spatial = set(range(2, ndim))
    if reduce_dims is None:
        return False
    if isinstance(reduce_dims, numbers.Integral):
        reduce_dims = (reduce_dims,)
    if not isinstance(reduce_dims, Sequence) or \
            not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                    for d in reduce_dims):
        raise TypeError(f"reduce_dims must be a sequence of ints, got {reduce_dims!r}")
    dims = []
    for d in reduce_dims:
        if not -ndim <= d < ndim:
            raise ValueError(f"reduce_dims {tuple(reduce_dims)} out of range for an input of "
                             f"{ndim} dims")
        dims.append(d % ndim)
    if len(set(dims)) != len(dims):
        raise ValueError(f"reduce_dims has a repeated dim: {tuple(reduce_dims)}")
    if 1 in dims:
        raise ValueError(f"reduce_dims must not hold the channel dim 1 (one score per class); "
                         f"got {tuple(reduce_dims)}")
    if not spatial <= set(dims):
        raise ValueError(f"reduce_dims must hold every spatial dim {tuple(sorted(spatial))} "
                         f"(and optionally the batch dim 0); got {tuple(reduce_dims)}")
    return 0 in dims


def _check_weight(weight, input, channels: int, batch: bool):
    if weight is None:
        return None
    check_tensor("weight", weight)
    check_same_device("weight", weight, input)
    check_no_grad("weight", weight)
    if weight.dtype.is_complex:
        raise TypeError(f"weight must be real; got {_describe(weight)}")
    shapes = [(channels,)] if batch else [(channels,), (input.shape[0], channels)]
    if tuple(weight.shape) not in shapes:
        what = " or ".join(str(s) for s in shapes)
        raise ValueError(f"weight must have one value per score, shape {what} (classes after "
                         f"include_background); got {_describe(weight)}")
    return weight


def _prepare(input, target, from_logits, activation, reduce_dims, smooth_nr, smooth_dr,
             squared_pred, jaccard, include_background, log_loss, zero_absent_classes, eps,
             reduction, weight, loss_weight):
    class_index = _check_input_target(input, target)
    channels = input.shape[1]
    from_logits = check_flag("from_logits", from_logits)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
    act = _ACTIVATIONS[activation] if from_logits else K.ACT_NONE
    if act == K.ACT_SOFTMAX and channels == 1:
        raise ValueError("activation='softmax' over C = 1 channel is constant 1; use "
                         "activation='sigmoid' for a binary (B, 1, ...) input")
    if not check_flag("include_background", include_background) and channels == 1:
        raise ValueError("include_background=False drops channel 0, the only channel of a "
                         "(B, 1, ...) input")
    batch = _check_reduce_dims(reduce_dims, input.dim())
    params = (check_param("smooth_nr", smooth_nr, minimum=0.0),
              check_param("smooth_dr", smooth_dr, minimum=0.0),
              check_param("eps", eps, minimum=0.0), 0.0)
    variant = ((math_.SQUARED if check_flag("squared_pred", squared_pred) else 0)
               | (math_.JACCARD if check_flag("jaccard", jaccard) else 0)
               | (math_.LOG_LOSS if check_flag("log_loss", log_loss) else 0)
               | (math_.ZERO_ABSENT if check_flag("zero_absent_classes",
                                                        zero_absent_classes) else 0))
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    c_start = 0 if include_background else 1
    weight = _check_weight(weight, input, channels - c_start, batch)
    lw_value, lw_tensor = check_scalar_arg("loss_weight", loss_weight, input, positive=False)
    call = SegmentCall(act, variant, params, batch, c_start, reduction, 0.0, lw_value)
    return call, class_index, weight, lw_value, lw_tensor


def dice_loss(input: torch.Tensor, target: torch.Tensor, *, from_logits: bool = True,
              activation: str = "sigmoid", reduce_dims: Optional[Sequence[int]] = None,
              smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, squared_pred: bool = False,
              jaccard: bool = False, include_background: bool = True, log_loss: bool = False,
              zero_absent_classes: bool = False, eps: float = 0.0, reduction: str = "mean",
              weight: Optional[torch.Tensor] = None, loss_weight: Number = 1.0) -> torch.Tensor:
    """Dice loss per segment (see the module docstring for the formula), reduced.

    Args:
        input: (B, C, *spatial) logits (``from_logits``) or probabilities; float16 / bfloat16 /
            float32 / float64, read as they are (fp32 math and sums; fp64 for fp64).
        target: float or bool of input's shape, or integer class indices (B, *spatial) in
            [0, C) (one-hot on the fly; an index outside [0, C) is a pixel of no class: not
            checked on the device, which would sync). Gets no gradient.
        activation: "sigmoid" (each channel) or "softmax" (over the C channels); ignored when
            ``from_logits=False``.
        reduce_dims: the dims of ``input`` summed per segment: every spatial dim (default: one
            score per (b, c)), optionally with 0 (one score per class over the batch).
        smooth_nr, smooth_dr: MONAI's smoothing terms of numerator and denominator.
        squared_pred: sums of p^2 and t^2 in the denominator (MONAI).
        jaccard: the Jaccard (IoU) form 2 (P + T - I) of the denominator (MONAI).
        include_background: False drops channel 0 from the scores (after the activation).
        log_loss: -log(score) instead of 1 - score (smp).
        zero_absent_classes: a segment whose target is empty scores 0 (smp).
        eps: clamps the denominator and the score of log_loss from below (smp: 1e-7).
        reduction: "none" (the scores: (B, C') or (C',), C' the classes after
            include_background), "mean" or "sum" over them.
        weight: per class (C',) or per score (B, C'); multiplies each score.
        loss_weight: number or one-element tensor multiplying the result.

    Returns:
        float32 (float64 for a float64 input): a scalar, or the scores for "none".

    Example::

        >>> import torch, fusedloss
        >>> logits = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 16, 16))
        >>> loss = fusedloss.dice_loss(logits, labels, activation="softmax")
        >>> loss.backward()
    """
    call, _class_index, weight, lw_value, lw_tensor = _prepare(
        input, target, from_logits, activation, reduce_dims, smooth_nr, smooth_dr, squared_pred,
        jaccard, include_background, log_loss, zero_absent_classes, eps, reduction, weight,
        loss_weight)

    def reference():
        from .reference import dice as ref
        return ref.dice_loss(input, target, from_logits=from_logits, activation=activation,
                             reduce_dims=reduce_dims, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                             squared_pred=squared_pred, jaccard=jaccard,
                             include_background=include_background, log_loss=log_loss,
                             zero_absent_classes=zero_absent_classes, eps=eps,
                             reduction=reduction, weight=weight, loss_weight=loss_weight)
    return apply_segments(_SPEC, input, target, weight, lw_value, lw_tensor, call, reference)


def bce_dice_loss(input: torch.Tensor, target: torch.Tensor, *, bce_weight: float = 1.0,
                  dice_weight: float = 1.0, **dice_options) -> torch.Tensor:
    """``bce_weight * BCE-with-logits(input, target) + dice_weight * dice_loss(input, target,
    **dice_options)`` in the same passes: BCE is the mean over every element of ``input``
    (all C channels, include_background or not), with the one-hot target for class indices.
    Sigmoid on logits only; the Dice part reduced by "mean" (default) or "sum";
    ``loss_weight`` (in dice_options) multiplies the total.

    Example::

        >>> import torch, fusedloss
        >>> logits = torch.randn(2, 1, 32, 32, requires_grad=True)
        >>> mask = torch.rand(2, 1, 32, 32) > 0.7
        >>> fusedloss.bce_dice_loss(logits, mask.float(), bce_weight=0.5).backward()
    """
    unknown = set(dice_options) - set(_DICE_OPTIONS)
    if unknown:
        raise TypeError(f"bce_dice_loss got unexpected keyword(s) {sorted(unknown)}; the Dice "
                        f"options are {sorted(_DICE_OPTIONS)}")
    options = dict(_DICE_DEFAULTS, **dice_options)
    if options["activation"] != "sigmoid" or not options["from_logits"]:
        raise ValueError(f"bce_dice_loss takes logits with activation='sigmoid' (BCE with "
                         f"logits); got activation={options['activation']!r}, "
                         f"from_logits={options['from_logits']!r}")
    if options["reduction"] not in ("mean", "sum"):
        raise ValueError(f"bce_dice_loss reduces the Dice scores by 'mean' or 'sum' (the BCE "
                         f"term is a scalar); got reduction={options['reduction']!r}")
    bce_weight = check_param("bce_weight", bce_weight)
    dice_weight = check_param("dice_weight", dice_weight)
    call, _ci, weight, lw_value, lw_tensor = _prepare(input, target, **options)
    call = call._replace(variant=call.variant | math_.BCE,
                         global_scale=bce_weight, seg_factor=dice_weight)

    def reference():
        from .reference import dice as ref
        return ref.bce_dice_loss(input, target, bce_weight=bce_weight, dice_weight=dice_weight,
                                 **dice_options)
    return apply_segments(_SPEC, input, target, weight, lw_value, lw_tensor, call, reference)


_DICE_DEFAULTS = dict(from_logits=True, activation="sigmoid", reduce_dims=None, smooth_nr=1e-5,
                      smooth_dr=1e-5, squared_pred=False, jaccard=False, include_background=True,
                      log_loss=False, zero_absent_classes=False, eps=0.0, reduction="mean",
                      weight=None, loss_weight=1.0)
_DICE_OPTIONS = tuple(_DICE_DEFAULTS)


class DiceLoss(torch.nn.Module):
    """``dice_loss`` as a module: the options at construction, ``forward(input, target,
    weight=None)``.

    Example::

        >>> import torch, fusedloss
        >>> loss_fn = fusedloss.DiceLoss(activation="softmax", include_background=False)
        >>> logits = torch.randn(2, 4, 8, 8, requires_grad=True)
        >>> loss_fn(logits, torch.randint(0, 4, (2, 8, 8))).backward()
    """

    def __init__(self, **options):
        super().__init__()
        unknown = set(options) - set(_DICE_OPTIONS) - {"weight"}
        if unknown:
            raise TypeError(f"DiceLoss got unexpected keyword(s) {sorted(unknown)}")
        self.options = options

    def forward(self, input: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        options = dict(self.options)
        if weight is not None:
            options["weight"] = weight
        return dice_loss(input, target, **options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
