"""Argument checks shared by the recipes: they run before any device work and never sync.

Messages name the user's own argument (``preds``, ``vis``, ``weights``, ``reduction_override``
...), its shape/dtype/value and what was expected, in the wording of ``fusedloss._validate``.
Whatever the engine checks itself (input dtypes, broadcasting, ``avg_factor``) is left to it
unless a recipe does device work on that argument first.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._validate import check_flag, check_no_grad, check_param

__all__ = ["describe", "tensor", "floating", "real", "shape", "same_device", "no_grad", "choice",
           "number", "flag", "scalar_dtype"]

number = check_param  # a finite Python number >= minimum (> minimum when strict)
flag = check_flag


def describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def floating(name: str, value) -> torch.Tensor:
    tensor(name, value)
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or "
                        f"float64); got {describe(value)}")
    return value


def real(name: str, value, *, allow_bool: bool = True) -> torch.Tensor:
    """A bool (if allowed), integer or floating tensor."""
    tensor(name, value)
    if value.dtype.is_complex or (value.dtype == torch.bool and not allow_bool):
        kinds = "bool, integer or floating" if allow_bool else "integer or floating"
        raise TypeError(f"{name} must be {kinds}; got {describe(value)}")
    return value


def shape(name: str, value: torch.Tensor, expected: Sequence[int], meaning: str) -> None:
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({meaning}); got "
                         f"{describe(value)}")


def same_device(name: str, value: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if value.device != ref.device:
        raise ValueError(f"{name} is on {value.device} but {ref_name} is on {ref.device}; all "
                         f"tensors must be on one device")


no_grad = check_no_grad  # the engine's message, word for word


def choice(name: str, value, choices: Sequence) -> None:
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def scalar_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """The engine's compute dtype for these operands: float64 if any is float64, else float32
    (also the dtype of the normalisers a recipe computes on the device)."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32
