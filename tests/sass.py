"""Static facts about a kernel compiled for an NVIDIA GPU, read from its cubin with the
``cuobjdump`` bundled in Triton's wheel: registers, spills, instructions, global load widths.

No GPU needed: tests/compile_for_gpu.py compiles every kernel variant the launcher emits for
sm_90 and checks these facts (no spills, a register budget, no slow-path division in the int32
per-element bodies, 16-byte vector loads on contiguous operands).
"""
from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# '/*0140*/  @!P0 LDG.E.128 R4, desc[UR6][R2.64] ;': address, predicate, opcode
INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


@dataclass(frozen=True)
class SassFacts:
    registers: int
    local_bytes: int  # spills and stack arrays (should be 0)
    stack_bytes: int
    opcodes: tuple  # every instruction's opcode, in order (NOPs dropped)

    def count(self, prefix: str) -> int:
        return sum(op.startswith(prefix) for op in self.opcodes)

    def load_widths(self) -> collections.Counter:
        """Global loads by width: '128' (16-byte vectors), '64', '32', 'U8', ..."""
        widths = collections.Counter()
        for op in self.opcodes:
            if op.startswith("LDG."):
                parts = [p for p in op.split(".")[1:] if p not in ("E", "STRONG", "GPU", "SYS",
                                                                   "CONSTANT", "EF", "EL", "LU")]
                widths[parts[0] if parts else "32"] += 1
        return widths


def _cuobjdump(*args) -> str:
    return subprocess.run([os.path.join(BIN, "cuobjdump"), *args], capture_output=True,
                          text=True, check=True).stdout


def facts(cubin: bytes) -> SassFacts:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)",
                          _cuobjdump("--dump-resource-usage", path))
        opcodes = tuple(m[2] for line in _cuobjdump("-sass", path).splitlines()
                        if (m := INSN.search(line)) and m[2] != "NOP")
    regs, stack, local = map(int, usage.groups())
    return SassFacts(regs, local, stack, opcodes)


def ctas_per_sm(registers: int, num_warps: int) -> int:
    """Resident CTAs per SM of a Hopper GPU from registers and threads (64K registers,
    allocated per warp in units of 256, 2048 threads, at most 32 CTAs)."""
    per_warp = -(-registers * 32 // 256) * 256
    return min(65536 // (per_warp * num_warps), 2048 // (32 * num_warps), 32)
