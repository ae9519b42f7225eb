"""``fusedloss-bench --profile``: one training-like step per implementation under torch.profiler."""
from __future__ import annotations

import os
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ..runtime import launch_counts
from ._registry import DTYPES
from ._timing import GradOutputs, launch_delta, make_step, sync


def _device_kernels(prof) -> tuple[list, float]:
    agg: dict = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            c, us = agg.get(e.name, (0, 0.0))
            agg[e.name] = (c + 1, us + e.time_range.elapsed_us())
    kernels = [{"name": k, "count": c, "total_us": us}
               for k, (c, us) in sorted(agg.items(), key=lambda kv: -kv[1][1])]
    return kernels, sum(k["total_us"] for k in kernels)


def _cpu_ops(prof, top: int = 12) -> tuple[list, float]:
    step_us = 0.0
    ops = []
    for a in prof.key_averages():
        if a.key.startswith("bench::"):
            step_us = a.cpu_time_total
            continue
        ops.append({"name": a.key, "count": a.count, "total_us": a.self_cpu_time_total})
    ops.sort(key=lambda k: -k["total_us"])
    return ops[:top], step_us


def run_profile(cases: list, impl_fns: Callable, device: torch.device, n: int, dtype: str,
                weight: str, out_dir: str, go_value: float, progress=None,
                stop_requested=None, out_of_time=None) -> dict:
    """Profile one fwd+bwd step (grad_output 1) of each implementation of each case.

    ``impl_fns(case)`` returns {impl: fn(x, t, w)}; ``out_of_time()`` True skips the rest. Writes traces/<loss>-<impl>.json.gz and
    returns the summary that goes into results.json (and the terminal).
    """
    trace_dir = os.path.join(out_dir, "traces")
    os.makedirs(trace_dir, exist_ok=True)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    gos = GradOutputs()
    result = {"n": n, "dtype": dtype, "weight": weight, "mode": "fwdbwd",
              "trace_dir": trace_dir, "losses": {}}
    for case in cases:
        gen = torch.Generator(device=device)
        gen.manual_seed(1234)
        x, t, w = case.make_inputs(n, DTYPES[dtype], weight, device, gen)
        x.requires_grad_(True)
        sets = [(x, t, w)]
        per = result["losses"][case.name] = {}
        for impl, fn in impl_fns(case).items():
            if out_of_time is not None and out_of_time():
                per[impl] = {"error": "skipped: time limit"}
                continue
            if progress is not None:
                progress(f"profile {case.name} {impl}")
            try:
                step = make_step(fn, sets, "fwdbwd", go_value, gos)
                step()
                step()  # compile / JIT / autotune outside the trace
                sync(device)
                before = launch_counts()
                t0 = time.perf_counter()
                with profile(activities=activities) as prof:
                    with record_function(f"bench::{case.name}.{impl}.step"):
                        step()
                    sync(device)
                wall_us = (time.perf_counter() - t0) * 1e6
                launched = sum(launch_delta(before, launch_counts()).values())
                path = os.path.join(trace_dir, f"{case.name}-{impl}.json.gz")
                prof.export_chrome_trace(path)
                entry = {"trace": path, "wall_us": wall_us,
                         "fused_launches": launched if impl == "fused" else None}
                if device.type == "cuda":
                    kernels, dev_us = _device_kernels(prof)
                    entry.update(device_kernels=sum(k["count"] for k in kernels),
                                 device_time_us=dev_us, kernels=kernels)
                else:
                    ops, step_us = _cpu_ops(prof)
                    entry.update(device_kernels=None, device_time_us=None, cpu_time_us=step_us,
                                 kernels=ops)
                per[impl] = entry
            except Exception as e:  # noqa: BLE001 - one failing implementation must not end the run
                if stop_requested is not None and stop_requested():
                    raise
                per[impl] = {"error": f"{type(e).__name__}: {e}"[:500]}
        del sets, x, t, w
    return result
