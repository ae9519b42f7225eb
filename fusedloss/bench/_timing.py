"""Device facts, step functions, timers, memory and launch counting."""
from __future__ import annotations

import math
import os
import platform
import re
import time
from typing import Callable, Optional

import torch

QUANTILES = (0.5, 0.2, 0.8)


def sanitize(name: str) -> str:
    """A GPU name usable in a path: [A-Za-z0-9._-] only.

    "NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3"."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug or "unknown"


def device_env(device: torch.device) -> dict:
    import triton

    from .. import __version__ as fl_version
    from ..runtime import INTERPRETED, backend, uses_triton
    env = {
        "device": device.type,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "fusedloss": fl_version,
        "triton_interpret": bool(INTERPRETED),
        "fused_kernels": bool(uses_triton(device)),
        # "compiled" | "interpreter" | "reference": how the fused column runs on this device
        "backend": backend(device),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except Exception:  # noqa: BLE001
        env["torchvision"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        env.update({
            "device_name": props.name,
            "sm_count": props.multi_processor_count,
            "l2_bytes": getattr(props, "L2_cache_size", None),
            "total_memory_bytes": total,
            "free_memory_bytes_at_start": free,
            "cuda": torch.version.cuda,
            "capability": f"{props.major}.{props.minor}",
        })
    else:
        env.update({"device_name": platform.processor() or platform.machine() or "cpu",
                    "sm_count": None, "l2_bytes": None})
    env["device_slug"] = sanitize(env["device_name"])
    return env


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


# --------------------------------------------------------------------------- steps

class GradOutputs:
    """0-d grad_output tensors made once per (dtype, value), so no step times a fill kernel."""

    def __init__(self):
        self._cache = {}

    def __call__(self, loss: torch.Tensor, value: float) -> torch.Tensor:
        key = (loss.dtype, loss.device, value)
        g = self._cache.get(key)
        if g is None:
            g = self._cache[key] = torch.full((), value, dtype=loss.dtype, device=loss.device)
        return g


def make_step(fn: Callable, sets: list, mode: str, go_value: float,
              grad_outputs: GradOutputs) -> Callable[[], object]:
    """One step of ``mode`` over rotating input sets.

    fwd: the forward of a training step (grad enabled, input requires grad: fusedloss writes
    its gradient here). fwdbwd / fwdbwd_go: forward, then ``torch.autograd.grad`` with
    grad_output 1 / ``go_value`` (no leaf ``.grad`` accumulation, so no extra copy is timed).
    """
    state = {"i": 0}
    k = len(sets)

    def pick():
        i = state["i"]
        state["i"] = i + 1 if i + 1 < k else 0
        return sets[i]

    if mode == "fwd":
        def step():
            x, t, w = pick()
            with torch.enable_grad():
                return fn(x, t, w)
    elif mode in ("fwdbwd", "fwdbwd_go"):
        value = 1.0 if mode == "fwdbwd" else go_value

        def step():
            x, t, w = pick()
            with torch.enable_grad():
                loss = fn(x, t, w)
            return torch.autograd.grad(loss, x, grad_outputs=grad_outputs(loss, value))
    else:
        raise ValueError(f"no step for mode {mode!r} (bwd is derived)")
    return step


# --------------------------------------------------------------------------- timers

def _quantile(sorted_vals: list, q: float) -> float:
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def fmt_ms(ms: float) -> str:
    """A duration for a sentence: "30.1 ms", "2.1 us" (3 significant digits)."""
    if abs(ms) >= 1.0:
        return f"{ms:.3g} ms"
    return f"{ms * 1e3:.3g} us"


def bwd_difference(fwd: dict, fwdbwd: dict) -> dict:
    """The bwd row, ``fwdbwd - fwd``, from two timer records (``median_ms``, ``p20_ms``,
    ``p80_ms``), or n/a when the difference is not meaningful.

    noise = (p80 - p20 of fwd) + (p80 - p20 of fwdbwd): the spread of the two measurements
    added, which is also the width of the bwd range [p20(fwdbwd) - p80(fwd),
    p80(fwdbwd) - p20(fwd)]. The difference of the medians is reported only when it is > 0
    and > noise; otherwise median/p20/p80 are None and ``note`` says why. Returns
    ``{"median_ms", "p20_ms", "p80_ms", "noise_ms", "note"}``.
    """
    diff = fwdbwd["median_ms"] - fwd["median_ms"]
    noise = (fwd["p80_ms"] - fwd["p20_ms"]) + (fwdbwd["p80_ms"] - fwdbwd["p20_ms"])
    out = {"median_ms": None, "p20_ms": None, "p80_ms": None, "noise_ms": noise, "note": None}
    if not diff > 0:
        out["note"] = (f"fwdbwd - fwd = {fmt_ms(diff)} <= 0: "
                       + (f"within noise {fmt_ms(noise)}" if -diff <= noise else
                          f"beyond noise {fmt_ms(noise)}, fwd and fwdbwd timings disagree"))
    elif not diff > noise:
        out["note"] = f"fwdbwd - fwd = {fmt_ms(diff)} <= noise {fmt_ms(noise)}"
    else:
        out.update(median_ms=diff, p20_ms=fwdbwd["p20_ms"] - fwd["p80_ms"],
                   p80_ms=fwdbwd["p80_ms"] - fwd["p20_ms"])
    return out


class Timer:
    """Median / p20 / p80 in milliseconds.

    CUDA: ``triton.testing.do_bench(fn, warmup, rep, quantiles=[0.5, 0.2, 0.8])`` (CUDA events,
    L2 flushed before each call, warm-up excluded). CPU: ``time.perf_counter`` around each call
    after warm-up calls, at least ``min_reps`` calls and until ``rep`` ms have been spent.
    """

    def __init__(self, device: torch.device, warmup_ms: float, rep_ms: float, min_reps: int = 5,
                 max_reps: int = 1000):
        self.device = device
        self.warmup_ms = warmup_ms
        self.rep_ms = rep_ms
        self.min_reps = min_reps
        self.max_reps = max_reps

    @property
    def method(self) -> str:
        return "triton.testing.do_bench" if self.device.type == "cuda" else "time.perf_counter"

    def describe(self) -> dict:
        return {"method": self.method, "warmup_ms": self.warmup_ms, "rep_ms": self.rep_ms,
                "quantiles": list(QUANTILES), "unit": "ms",
                "min_reps_cpu": self.min_reps if self.device.type != "cuda" else None}

    def __call__(self, fn: Callable) -> tuple[float, float, float]:
        if self.device.type == "cuda":
            from triton.testing import do_bench
            med, p20, p80 = do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms,
                                     quantiles=list(QUANTILES))
            return float(med), float(p20), float(p80)
        # CPU: do_bench needs a GPU driver; time with the host clock
        t_end = time.perf_counter() + self.warmup_ms / 1e3
        fn()
        while time.perf_counter() < t_end:
            fn()
        times = []
        spent = 0.0
        while len(times) < self.min_reps or (spent < self.rep_ms and len(times) < self.max_reps):
            t0 = time.perf_counter()
            fn()
            dt = (time.perf_counter() - t0) * 1e3
            times.append(dt)
            spent += dt
        times.sort()
        return tuple(_quantile(times, q) for q in QUANTILES)  # type: ignore[return-value]


def copy_bandwidth(device: torch.device, timer: Timer) -> Optional[dict]:
    """A large device-to-device copy: (bytes read + bytes written) / median time. None on CPU."""
    if device.type != "cuda":
        return None
    free = torch.cuda.mem_get_info(device)[0]
    nbytes = int(min(1 << 30, free // 8)) // 16 * 16
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    from triton.testing import do_bench
    med = do_bench(lambda: dst.copy_(src), warmup=5, rep=max(50, timer.rep_ms),
                   quantiles=[0.5])
    med = float(med[0] if isinstance(med, (list, tuple)) else med)
    del src, dst
    torch.cuda.empty_cache()
    return {"bytes_moved": 2 * nbytes, "median_ms": med, "GBps": 2 * nbytes / (med * 1e-3) / 1e9}


# --------------------------------------------------------------------------- memory and launches

def peak_extra_bytes(step: Callable, device: torch.device) -> Optional[int]:
    """torch.cuda.max_memory_allocated delta over one step (the returned gradient included)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)


def launch_delta(before: dict, after: dict) -> dict:
    """The non-zero per-name differences of two ``fusedloss.runtime.launch_counts()`` snapshots."""
    delta = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in delta.items() if v}


def fused_launches(step: Callable) -> tuple[int, dict]:
    """fusedloss's own launch counter (``fusedloss.runtime.launch_counts()``) as a delta around
    one step."""
    from ..runtime import launch_counts
    before = launch_counts()
    step()
    delta = launch_delta(before, launch_counts())
    return sum(delta.values()), delta


def device_kernels(step: Callable, device: torch.device) -> Optional[tuple[int, dict]]:
    """Device kernels (and memsets / copies) one step launches, read off torch.profiler.
    None on CPU (interpreter launches are not profiler kernels)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize(device)
    names: dict = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            names[e.name] = names.get(e.name, 0) + 1
    return sum(names.values()), names


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (on the tensors' device)."""
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    den = b.norm()
    num = (a - b).norm()
    return float(num / den) if float(den) != 0 else float(num)
