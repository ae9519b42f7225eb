"""Addressing plan: collapse (size, stride) pairs shared by every operand of one launch.

The launch iterates over the row-major index of ``input.shape``. Each operand (input, target,
weight) is described by its strides in that shape (0 where it broadcasts). Adjacent
dimensions merge when every operand is contiguous across them, size-1 dimensions vanish, and
an operand whose collapsed strides are row-major needs no index arithmetic at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

MAX_DIMS = 6  # must equal fusedloss.kernels.engine.MAX_DIMS (checked by a test)


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]  # collapsed sizes, outermost first
    strides: tuple[tuple[int, ...], ...]  # per operand, in elements, outermost first
    contiguous: tuple[bool, ...]  # per operand: collapsed strides are row-major

    @property
    def ndim(self) -> int:
        return len(self.sizes)

    def kernel_args(self) -> list[int]:
        """Sizes then each operand's strides, innermost first, padded to MAX_DIMS."""
        def pad(values: Sequence[int]) -> list[int]:
            inner_first = list(reversed(values))
            return inner_first + [1] * (MAX_DIMS - len(inner_first))

        args = pad(self.sizes)
        for strides in self.strides:
            args += pad([s if s else 0 for s in strides])
        return args


def row_major_strides(sizes: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(sizes):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def collapse(shape: Sequence[int], operand_strides: Sequence[Sequence[int]]) -> Plan:
    """Merge dimensions of ``shape`` that are contiguous for every operand at once."""
    dims = [(size, [s[d] for s in operand_strides]) for d, size in enumerate(shape) if size != 1]
    merged: list[tuple[int, list[int]]] = []
    for size, strides in dims:
        if merged:
            outer_size, outer_strides = merged[-1]
            # outer dim d merges with inner dim d+1 when stride[d] == stride[d+1] * size[d+1]
            if all(o == i * size for o, i in zip(outer_strides, strides)):
                merged[-1] = (outer_size * size, strides)
                continue
        merged.append((size, list(strides)))
    sizes = tuple(size for size, _ in merged)
    per_operand = tuple(tuple(strides[k] for _, strides in merged) for k in range(len(operand_strides)))
    row_major = row_major_strides(sizes)
    contiguous = tuple(strides == row_major for strides in per_operand)
    return Plan(sizes, per_operand, contiguous)


def element_offset(index: int, plan: Plan, operand: int) -> int:
    """Python mirror of ``operand_offsets`` in the kernel: offset of row-major ``index``."""
    offset = 0
    for size, stride in zip(reversed(plan.sizes), reversed(plan.strides[operand])):
        offset += (index % size) * stride
        index //= size
    return offset
