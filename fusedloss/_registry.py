"""The loss registry: what a loss plugs into the engine, and ``register_loss``.

A loss is its ``@triton.jit`` math (``fusedloss/kernels/<family>.py``), its pure-PyTorch
reference (``fusedloss/reference/``) and one ``register_loss`` call in its public module; the
engine imports no loss.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


def _no_variant(params: tuple, t_binary: bool) -> int:
    return 0


@dataclass(frozen=True)
class LossSpec:
    """What a loss plugs into the engine.

    math: ``@triton.jit (x, t, p0, p1, p2, p3, T_BINARY, VARIANT) -> (loss, dloss/dx, dloss/dt)``.
    variant: host function ``(params, t_binary) -> int`` giving the constexpr VARIANT (e.g. an
    integer focal gamma, so ``q**2`` is a multiply instead of ``exp2(2 * log2 q)``); called per
    call, so keep it trivial, and return few distinct values (each one is a compiled kernel).
    """
    name: str
    math: Any
    reference: Callable  # pure-PyTorch function with the public signature
    param_names: tuple[str, ...] = ()
    reference_kwargs: dict = field(default_factory=dict)
    allow_class_index: bool = False
    variant: Callable[[tuple, bool], int] = _no_variant
    row_backward: Any = None  # two-output row losses: @triton.jit (x, saved, KX) -> dA
    row_backward_torch: Optional[Callable] = None  # the same in torch ops (compile, "none")
    op: Any = None  # the torch.library custom op, set by register_loss

    def variant_of(self, params: tuple, t_binary: bool) -> int:
        return self.variant(params, t_binary)

    # spec(input, target, params, reduction, weight, avg_factor, loss_weight) runs the loss:
    # ``LossSpec.__call__`` is ``_engine.apply_loss`` itself, bound when _engine is imported
    # (one Python frame less per call than a method that forwards to it)


REGISTRY: dict[str, LossSpec] = {}


def register_loss(name: str, math, reference: Callable, param_names: tuple[str, ...] = (), *,
                  reference_kwargs: Optional[dict] = None, allow_class_index: bool = False,
                  variant: Optional[Callable[[tuple, bool], int]] = None, row_backward=None,
                  row_backward_torch: Optional[Callable] = None) -> LossSpec:
    """Register a loss: returns the callable the public function forwards to.

    ``row_backward`` / ``row_backward_torch``: for a two-output row loss only (see
    ``Rows.nout``): the first term's gradient rebuilt from the input and the saved values."""
    from ._library import make_custom_op

    if len(param_names) > 4:
        raise ValueError("the engine passes at most 4 hyper-parameters to a loss's math")
    spec = LossSpec(name, math, reference, tuple(param_names), dict(reference_kwargs or {}),
                    allow_class_index, variant or _no_variant, row_backward, row_backward_torch)
    spec = dataclasses.replace(spec, op=make_custom_op(spec))
    REGISTRY[name] = spec
    return spec


from . import _engine  # noqa: E402  (at the end: _engine imports this module)
