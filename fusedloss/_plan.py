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

    def kernel_args(self, operands: int = 3) -> list[int]:
        """Sizes, division magics (dims 0..MAX_DIMS-2), then each operand's strides, innermost
        first, padded to MAX_DIMS (the order of ``operand_offsets``); missing operands get
        stride 0."""
        def pad(values: Sequence[int], fill: int = 1, length: int = MAX_DIMS) -> list[int]:
            inner_first = list(reversed(values))
            return inner_first + [fill] * (length - len(inner_first))

        args = pad(self.sizes)
        # a size below 2 only occurs in an empty launch (size-1 dims are collapsed away)
        magics = [udiv_magic(max(s, 2)) for s in self.sizes]
        args += pad(magics, udiv_magic(2), MAX_DIMS)[:MAX_DIMS - 1]
        strides = list(self.strides) + [(0,) * self.ndim] * (operands - len(self.strides))
        for per_operand in strides:
            args += pad(per_operand)
        return args

    def zero_masks(self, operands: int = 3) -> tuple[int, ...]:
        """Per operand, bit k (k = 0 innermost) set where its collapsed stride k is 0."""
        masks = []
        for k in range(operands):
            strides = self.strides[k] if k < len(self.strides) else (0,) * self.ndim
            masks.append(sum(1 << d for d, s in enumerate(reversed(strides)) if s == 0))
        return tuple(masks)

    def max_offset(self, operand: int) -> int:
        """The largest element offset ``operand`` addresses (0 for an empty launch)."""
        if any(s == 0 for s in self.sizes):
            return 0
        return sum((size - 1) * stride for size, stride in zip(self.sizes, self.strides[operand]))


def udiv_magic(d: int) -> int:
    """Magic for ``_udiv`` in the kernel: floor(n / d) == (n * m) >> (32 + s) for every
    0 <= n < 2^31, packed as m + ((s + 1) << 32) (Granlund & Montgomery 1994, Theorem 4.2,
    N = 31).

    m = ceil(2^(31 + l) / d) with l = ceil(log2 d) lies in [2^31, 2^32), s = l - 1 >= 0. The
    +1 keeps the packed value >= 2^32, so it is an int64 argument both compiled and under the
    interpreter (which types an int in [2^31, 2^32) as uint32).
    """
    if d < 2:
        raise ValueError(f"udiv_magic needs a divisor >= 2, got {d}")
    l = (d - 1).bit_length()
    m = -(-(1 << (31 + l)) // d)
    return m + (l << 32)


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
