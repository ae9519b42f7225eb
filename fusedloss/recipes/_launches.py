"""Count the launches of a training step: fusedloss's own counter plus ``torch.profiler``.

A step's launches are

* **fusedloss**: the delta of :func:`fusedloss.runtime.launch_counts` (the fused kernels, the
  backward's rescale launches, and the engine's own weight sums), and
* **torch**: the aten ops that compute (one device kernel each for the ops used here), from a
  ``torch.profiler`` trace: every *top-level* aten op (called from Python or from an autograd
  node, not from inside another aten op) that is not a view, an allocation or metadata, or
  that calls one that computes (``aten::to`` counts only when it copies). Ops inside
  fusedloss's own autograd nodes are left to the first count (under the Triton interpreter
  they include the interpreter's own copies).

It also counts the step's **host syncs**: aten ops that read a device value on the host
(``.item()``, ``bool(t)``, Python ``max``/``min`` on a tensor: ``aten::_local_scalar_dense``)
or size an output by data (``aten::nonzero``, as boolean-mask indexing does).

The same rule applies to the eager code a recipe replaces, so the two are comparable. It is a
proxy for CUDA kernel launches that errs on eager's side: an aten call counts once, while a
few launch two kernels on a GPU (``F.huber_loss(..., reduction="mean")``: the elementwise loss
and the mean; its backward: a zero fill and the gradient). Compiled graphs are not counted.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

from .. import runtime

__all__ = ["LaunchCount", "count_launches", "NO_KERNEL", "SYNCS"]

#: aten ops that launch no kernel of their own: views, allocations, metadata, dispatch wrappers
NO_KERNEL = frozenset("aten::" + name for name in (
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view", "view_as",
    "_unsafe_view", "_reshape_alias", "reshape", "expand", "expand_as", "as_strided", "select",
    "slice", "unbind", "split", "split_with_sizes", "chunk", "narrow", "unsqueeze", "squeeze",
    "t", "transpose", "permute", "detach", "detach_", "alias", "lift_fresh", "broadcast_tensors",
    "result_type", "resolve_conj", "resolve_neg", "to", "_to_copy", "contiguous", "set_",
    "flatten", "unflatten", "diagonal", "numpy_T", "_has_compatible_shallow_copy_type",
    "is_nonzero", "item", "real", "lift", "_local_scalar_dense"))

#: aten ops that wait for the device to read a value on the host (at any depth)
SYNCS = frozenset(("aten::_local_scalar_dense", "aten::nonzero", "aten::unique",
                   "aten::_unique2", "aten::masked_select"))

#: profiler scopes whose contents fusedloss's launch counter already covers: the fused
#: autograd function's forward and backward (not autograd's ``evaluate_function`` around the
#: backward, which also accumulates gradients), and the custom ops
_FUSED_SCOPES = frozenset(("FusedLossFunction", "FusedLossFunctionBackward"))


@dataclass
class LaunchCount:
    """Launches of one step: ``fusedloss`` + ``torch`` = ``total``; ``ops`` by name;
    ``syncs``: host syncs."""
    fusedloss: int
    torch: int
    syncs: int = 0
    ops: collections.Counter = field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        return self.fusedloss + self.torch


def _computes(event) -> bool:
    if event.name not in NO_KERNEL:
        return True
    return any(_computes(child) for child in event.cpu_children
               if child.name.startswith("aten::"))


def _inside_fused(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in _FUSED_SCOPES or parent.name.startswith("fusedloss::"):
            return True
        parent = parent.cpu_parent
    return False


def count_launches(step: Callable[[], Any]) -> LaunchCount:
    """Run ``step()`` once under ``torch.profiler`` and count its launches (see the module
    docstring). Run the step once before (first calls compile kernels and plan launches) and
    clear the ``.grad`` of leaves first if the step must not count gradient accumulation.

    Example::

        >>> import torch, fusedloss
        >>> from fusedloss.recipes import count_launches
        >>> x, t = torch.randn(64, requires_grad=True), torch.randn(64)
        >>> count_launches(lambda: torch.nn.functional.huber_loss(x, t).backward()).torch >= 3
        True
    """
    before = runtime.launch_counts()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    after = runtime.launch_counts()
    fused = sum(after.values()) - sum(before.values())
    ops: collections.Counter = collections.Counter()
    syncs = 0
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        if event.name in SYNCS and not _inside_fused(event):
            syncs += 1
        parent = event.cpu_parent
        if parent is not None and parent.name.startswith("aten::"):
            continue  # not top-level: part of its parent op
        if _computes(event) and not _inside_fused(event):
            ops[event.name] += 1
    for name in after:
        delta = after[name] - before.get(name, 0)
        if delta:
            ops[f"fusedloss:{name}"] += delta
    torch_ops = sum(v for k, v in ops.items() if not k.startswith("fusedloss:"))
    return LaunchCount(fused, torch_ops, syncs, ops)
