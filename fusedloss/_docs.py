"""One wording of the engine's contract, shared by every loss's docstring.

A loss's docstring holds ``{engine_args}`` at the end of its Args section and
``{engine_returns}`` where Returns and the dispatch paragraph belong; :func:`fill` puts them in.
"""
from __future__ import annotations


def _engine_args(input: str) -> str:
    return f"""        reduction: ``"none"`` | ``"mean"`` (sum / numel, or / avg_factor) | ``"sum"`` |
            ``"weighted_mean"`` (sum(w*l) / sum(w) over the broadcast weight; 0 when sum(w) == 0).
        weight: bool, integer or floating tensor broadcastable to ``{input}.shape``, never
            expanded into a copy. A zero weight excludes its element from loss and gradient even
            where input or target is NaN/inf.
        avg_factor: with ``"mean"`` only: a number > 0 or a one-element tensor (never read on the
            host, so it may come from an all-reduce, e.g. ``num_pos.clamp_min(1)``).
        loss_weight: number or 0-d tensor multiplying the loss; folded into the gradient the
            forward writes, so the backward of ``sum(losses)`` costs no pass over memory."""


def _engine_returns(input: str, target: str, dtype_note: str) -> str:
    return f"""    Returns:
        ``"none"``: a contiguous tensor of ``{input}.shape`` and dtype
        ``torch.result_type({input}, {target})``{dtype_note}.
        Otherwise a 0-d tensor, float32 for float16/bfloat16 inputs (what torch returns under
        autocast), float64 for float64.

    CUDA tensors run the fused Triton kernels; CPU tensors run them under the Triton
    interpreter when ``TRITON_INTERPRET=1`` is set before import, and otherwise use
    ``fusedloss.reference`` (pure PyTorch)."""


def fill(fn, *, input: str = "input", target: str = "target", dtype_note: str = "", **extra: str):
    """Replace ``{engine_args}``, ``{engine_returns}`` and any ``{name}`` given in ``extra``."""
    doc = fn.__doc__
    doc = doc.replace("{engine_args}", _engine_args(input))
    doc = doc.replace("{engine_returns}", _engine_returns(input, target, dtype_note))
    for key, value in extra.items():
        doc = doc.replace("{" + key + "}", value)
    fn.__doc__ = doc
    return fn
