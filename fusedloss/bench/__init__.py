"""``fusedloss-bench``: eager PyTorch vs torch.compile vs fusedloss, in one process and one run.

Run ``fusedloss-bench --help`` (or ``python -m fusedloss.bench``). The registry
(:data:`CASES`, one :class:`Case` per loss) is shared with the pytest-benchmark suite in
``bench/``; adding a loss to the benchmark is adding one entry there.
"""
from ._cli import PRESETS, build_parser, main, run
from ._registry import (CASE_BY_NAME, CASES, DTYPES, IMPLS, MODES, WEIGHTS, Case,
                        elementwise_bytes, input_shape, weight_bytes, weight_shape)
from ._report import DOC_KEYS, ROW_KEYS, SCHEMA
from ._timing import GradOutputs, Timer, make_step, sanitize

__all__ = ["main", "run", "build_parser", "PRESETS", "CASES", "CASE_BY_NAME", "Case", "DTYPES",
           "IMPLS", "MODES", "WEIGHTS", "elementwise_bytes", "input_shape", "weight_bytes",
           "weight_shape", "SCHEMA", "ROW_KEYS", "DOC_KEYS", "GradOutputs", "Timer", "make_step",
           "sanitize"]
