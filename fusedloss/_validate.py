"""Argument checks shared by every loss. They run before any kernel and never sync the host."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch

REDUCTIONS = ("none", "mean", "sum", "weighted_mean")

Scalar = Union[float, int, torch.Tensor]


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _is_number(value) -> bool:
    kind = type(value)
    if kind is float or kind is int:  # the common case, ~10x cheaper than the ABC check
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value: float) -> bool:
    """``math.isfinite`` by comparisons: under ``torch.compile`` a float argument can be a
    symbolic float, on which ``math.isfinite`` is a graph break and comparisons are guards."""
    return -math.inf < value < math.inf


def check_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating(name: str, t: torch.Tensor) -> None:
    if not t.dtype.is_floating_point:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64); "
            f"got {_describe(t)}")


def check_broadcast(name: str, t: torch.Tensor, input: torch.Tensor) -> None:
    if t.shape == input.shape:
        return
    shape, full = tuple(t.shape), tuple(input.shape)
    if (len(shape) <= len(full) and all(
            a == b or a == 1 for a, b in zip(reversed(shape), reversed(full)))):
        return  # fast path (torch.broadcast_shapes costs ~20 us a call)
    try:
        out = torch.broadcast_shapes(t.shape, input.shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(t.shape)} is not broadcastable to input's shape "
                         f"{tuple(input.shape)}") from None
    if tuple(out) != tuple(input.shape):
        raise ValueError(f"{name} of shape {tuple(t.shape)} would grow the output beyond input's "
                         f"shape {tuple(input.shape)} (broadcast shape {tuple(out)}); the output "
                         f"always has input's shape")


def check_same_device(name: str, t: torch.Tensor, input: torch.Tensor) -> None:
    if (t.is_cpu and input.is_cpu) or (t.is_cuda and input.is_cuda
                                       and t.get_device() == input.get_device()):
        return  # the common cases, without building two torch.device objects
    if t.device != input.device:
        raise ValueError(f"{name} is on {t.device} but input is on {input.device}; "
                         f"all tensors must be on one device")


def check_no_grad(name: str, t: torch.Tensor) -> None:
    if t.requires_grad:
        raise TypeError(f"{name} gets no gradient from fusedloss but requires grad; pass "
                        f"{name}.detach()")


def check_param(name: str, value, *, minimum: float = -math.inf, strict: bool = False) -> float:
    """A finite Python number >= minimum (> minimum when strict)."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a real Python number, got {type(value).__name__}")
    value = float(value)
    bad = (value <= minimum) if strict else (value < minimum)
    if not _finite(value) or bad:
        relation = ">" if strict else ">="
        bound = f" and {relation} {minimum:g}" if minimum > -math.inf else ""
        raise ValueError(f"{name} must be finite{bound}, got {value!r}")
    return value


def check_flag(name: str, value) -> bool:
    """A Python bool (or int used as one)."""
    if not isinstance(value, (bool, int)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_target(input: torch.Tensor, target, *, allow_class_index: bool) -> bool:
    """Validate target; return True when it holds integer class indices."""
    check_tensor("target", target)
    check_same_device("target", target, input)
    if target.dtype.is_complex:
        raise TypeError(f"target must be a real tensor; got {_describe(target)}")
    if not target.dtype.is_floating_point:
        if allow_class_index and target.dtype != torch.bool:
            if input.dim() > 0 and tuple(target.shape) == tuple(input.shape):
                raise TypeError(
                    f"integer target of input's own shape {tuple(input.shape)} (dtype "
                    f"{target.dtype}) looks like per-class 0/1 labels: pass target.float(). "
                    f"Integer targets are class indices of shape input.shape[:-1] = "
                    f"{tuple(input.shape[:-1])}")
            if input.dim() == 0 or tuple(target.shape) != tuple(input.shape[:-1]):
                raise ValueError(
                    f"integer target holds class indices and must have shape input.shape[:-1] = "
                    f"{tuple(input.shape[:-1])}; got {_describe(target)}. For per-class 0/1 "
                    f"targets of input's shape pass target.float()")
            return True
        hint = " (integer targets of shape input.shape[:-1] are class indices)" if allow_class_index else ""
        raise TypeError(f"target must be a floating-point tensor; got {_describe(target)}. "
                        f"Pass target.float(){hint}")
    try:
        check_broadcast("target", target, input)
    except ValueError:
        if allow_class_index and input.dim() >= 1 and tuple(target.shape) == tuple(input.shape[:-1]):
            raise ValueError(
                f"target of shape {tuple(target.shape)} = input.shape[:-1] looks like class "
                f"indices but has dtype {target.dtype}; pass target.long() (or per-class targets "
                f"of input's shape {tuple(input.shape)})") from None
        raise
    return False


def check_weight(weight, input: torch.Tensor) -> Optional[torch.Tensor]:
    if weight is None:
        return None
    check_tensor("weight", weight)
    check_same_device("weight", weight, input)
    if weight.dtype.is_complex:
        raise TypeError(f"weight must be bool, integer or floating; got {_describe(weight)}")
    check_no_grad("weight", weight)
    check_broadcast("weight", weight, input)
    return weight


def check_scalar_arg(name: str, value, input: torch.Tensor, *, positive: bool):
    """A Python number or one-element tensor. Returns (float or None, tensor or None).

    Tensor values are never inspected (that would sync the host).
    """
    if isinstance(value, torch.Tensor):
        check_same_device(name, value, input)
        if value.numel() != 1:
            raise ValueError(f"{name} tensor must have exactly one element; got {_describe(value)}")
        if value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{name} tensor must have a real numeric dtype; got {_describe(value)}")
        check_no_grad(name, value)
        return None, value.reshape(())
    if not _is_number(value):
        raise TypeError(f"{name} must be a Python number or a one-element tensor, "
                        f"got {type(value).__name__}")
    value = float(value)
    if not _finite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {value!r}")
    return value, None


def check_call(input, target, weight, reduction: str, avg_factor, loss_weight, *,
               allow_class_index: bool = False):
    """Every check shared by the losses. Returns a tuple of normalised arguments:

    (class_index_target, weight, avg_factor_value, avg_factor_tensor, loss_weight_value,
    loss_weight_tensor).
    """
    if (weight is None and avg_factor is None and type(loss_weight) is float
            and reduction in REDUCTIONS and type(input) is torch.Tensor
            and type(target) is torch.Tensor and input.dtype.is_floating_point
            and target.dtype.is_floating_point and target.shape == input.shape
            and ((input.is_cpu and target.is_cpu) or (input.is_cuda and target.is_cuda and
                                                      input.get_device() == target.get_device()))
            and _finite(loss_weight)):
        # the common call, every check below passes: the same answer with less host time
        return False, None, None, None, loss_weight, None
    check_tensor("input", input)
    check_floating("input", input)
    class_index = check_target(input, target, allow_class_index=allow_class_index)
    weight = check_weight(weight, input)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    af_value = af_tensor = None
    if avg_factor is not None:
        if reduction != "mean":
            raise ValueError(f"avg_factor is only used with reduction='mean', got "
                             f"reduction={reduction!r}")
        af_value, af_tensor = check_scalar_arg("avg_factor", avg_factor, input, positive=True)
    lw_value, lw_tensor = check_scalar_arg("loss_weight", loss_weight, input, positive=False)
    return class_index, weight, af_value, af_tensor, lw_value, lw_tensor
