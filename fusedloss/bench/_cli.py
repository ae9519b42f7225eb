"""The ``fusedloss-bench`` command line and the benchmark loop."""
from __future__ import annotations

import argparse
import datetime
import math
import os
import signal
import sys
import time
from typing import Optional

import torch

from .. import runtime
from . import _report
from ._registry import CASES, CASE_BY_NAME, DTYPES, IMPLS, MODES, WEIGHTS, Case
from ._timing import (GradOutputs, Timer, bwd_difference, copy_bandwidth, device_env,
                      device_kernels, free_memory, fused_launches, make_step, peak_extra_bytes,
                      rel_diff, sync)

CPU_WARNING = ("CPU run: these timings say nothing about GPU speed (host clock, Triton "
               "interpreter or reference fallback); use them only to check that the harness works")

#: the named matrices; CPU variants keep the interpreter affordable
PRESETS = {
    "quick": {
        "cuda": dict(sizes=[2**16, 2**20, 2**24], dtypes=["fp32"], weights=["none", "broadcast"],
                     modes=["fwd", "bwd", "fwdbwd"], impls=list(IMPLS)),
        "cpu": dict(sizes=[2**12, 2**14], dtypes=["fp32"], weights=["none", "bool"],
                    modes=["fwd", "bwd", "fwdbwd"], impls=["eager", "fused"]),
    },
    # decisions.md "Bench and the one-call GPU check"
    "standard": {
        dev: dict(sizes=[2**16, 2**20, 2**24, 2**26], dtypes=["fp32", "bf16"],
                  weights=["none", "broadcast"], modes=["fwdbwd"], impls=list(IMPLS))
        for dev in ("cuda", "cpu")
    },
    "full": {
        "cuda": dict(sizes=[2**k for k in range(12, 29, 2)], dtypes=list(DTYPES),
                     weights=list(WEIGHTS), modes=list(MODES), impls=list(IMPLS)),
        "cpu": dict(sizes=[2**k for k in range(12, 17, 2)], dtypes=list(DTYPES),
                    weights=list(WEIGHTS), modes=list(MODES), impls=list(IMPLS)),
    },
}

#: relative loss / gradient difference to the eager composition flagged as DIFF (informational:
#: eager itself rounds every intermediate in bf16/fp16)
CHECK_TOL = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}


class _Stopped(Exception):
    pass


#: set by the SIGTERM handler: code that wraps exceptions (the Triton interpreter, autograd) may
#: swallow the _Stopped the handler raises, so the loop also checks this flag
_STOP = {"requested": None}


def _check_stop() -> None:
    if _STOP["requested"]:
        raise _Stopped(_STOP["requested"])


def _stop_reason(exc: BaseException) -> str:
    """Why a run stopped early; re-raises any error that is not a requested stop."""
    if isinstance(exc, (_Stopped, KeyboardInterrupt)):
        return f"interrupted ({exc or type(exc).__name__})"
    if not _STOP["requested"]:
        raise exc
    return f"interrupted ({_STOP['requested']})"


# --------------------------------------------------------------------------- argument parsing

def parse_sizes(text: str) -> list:
    """'16,20' (exponents up to 40), '2^16', '65536', or 'a:b[:step]' (exponents)."""
    sizes = []
    for tok in text.replace(" ", "").split(","):
        if not tok:
            continue
        if ":" in tok:
            parts = [int(p) for p in tok.split(":")]
            lo, hi = parts[0], parts[1]
            step = parts[2] if len(parts) > 2 else 1
            sizes += [2**k for k in range(lo, hi + 1, step)]
        elif tok.startswith("2^") or tok.startswith("2**"):
            sizes.append(2 ** int(tok.split("^")[-1].split("**")[-1]))
        else:
            v = int(tok)
            sizes.append(2**v if v <= 40 else v)
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"bad --sizes {text!r}")
    return sizes


def _choices(allowed):
    def parse(text: str) -> list:
        if text == "all":
            return list(allowed)
        vals = [v for v in text.replace(" ", "").split(",") if v]
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"{bad or text!r}: choose from {', '.join(allowed)} "
                                             "or all (comma-separated)")
        return vals
    return parse


def _losses(text: str) -> list:
    if text == "all":
        return [c.name for c in CASES]
    out = []
    for v in text.replace(" ", "").split(","):
        name = v[:-5] if v.endswith("_loss") else v
        if name not in CASE_BY_NAME:
            raise argparse.ArgumentTypeError(
                f"unknown loss {v!r}: choose from {', '.join(CASE_BY_NAME)} or all")
        out.append(name)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusedloss-bench",
        description="Compare eager PyTorch, torch.compile and fusedloss for every registered "
                    "loss: time (median/p20/p80), speedups, floor bytes and GB/s, peak memory, "
                    "kernels per step. Writes results.json, results.md and (with matplotlib) "
                    "speedup.png.",
        epilog="Lists are comma-separated ('all' allowed). Explicit flags override the "
               "--quick/--standard presets. On CPU, run with TRITON_INTERPRET=1 set before "
               "Python starts to time the fused kernels under the interpreter (else fusedloss "
               "falls back to its PyTorch reference); CPU timings say nothing about GPU speed.")
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true",
                        help="a small matrix (CPU: 2^12, 2^14, fp32, no compile column)")
    preset.add_argument("--standard", action="store_true",
                        help="the standard matrix: each loss at 2^16, 2^20, 2^24, 2^26; fp32 and "
                             "bf16; no weight and broadcast weight; fwd+bwd with grad_output 1")
    p.add_argument("--loss", type=_losses, default=None, help="losses (default all)")
    p.add_argument("--sizes", type=parse_sizes, default=None,
                   help="element counts: exponents (16), 2^16, 65536, or 12:28:2")
    p.add_argument("--dtype", type=_choices(list(DTYPES)), default=None, help="fp32,bf16,fp16")
    p.add_argument("--mode", type=_choices(list(MODES)), default=None,
                   help="fwd, bwd (= fwdbwd - fwd; n/a when not above the timing noise), "
                        "fwdbwd (grad_output 1), fwdbwd_go (grad_output --grad-output)")
    p.add_argument("--weight", type=_choices(list(WEIGHTS)), default=None,
                   help="none, bool (full-size mask), broadcast ((rows, 1) weight)")
    p.add_argument("--impl", type=_choices(list(IMPLS)), default=None,
                   help="eager,compile,fused (default all; --quick on CPU drops compile)")
    p.add_argument("--out", default="bench-out", help="output directory (default %(default)s)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop starting new measurements so that results are written before "
                        "this many seconds; partial results are written after every case")
    p.add_argument("--profile", action="store_true",
                   help="profile one fwd+bwd step of each implementation (kernels, time per "
                        "kernel, gzip Chrome traces under OUT/traces); alone it skips the matrix")
    p.add_argument("--profile-size", type=parse_sizes, default=None,
                   help="size for --profile (default 2^24 on CUDA, 2^12 on CPU)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--warmup", type=float, default=5.0, help="warm-up ms (do_bench)")
    p.add_argument("--rep", type=float, default=20.0, help="repetition ms (do_bench)")
    p.add_argument("--grad-output", type=float, default=0.05,
                   help="grad_output of fwdbwd_go (default %(default)s, a typical loss weight)")
    p.add_argument("--compile-dynamic", choices=["false", "auto", "true"], default="false",
                   help="torch.compile(dynamic=...): false (default) compiles each shape as a "
                        "fixed-shape training step would")
    p.add_argument("--no-kernels", action="store_true",
                   help="on CUDA, skip counting device kernels with torch.profiler per row "
                        "(saves one profiled step per row)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the registry and exit")
    return p


def resolve_config(args: argparse.Namespace, device: torch.device) -> dict:
    dev = "cuda" if device.type == "cuda" else "cpu"
    name = "quick" if args.quick else "standard" if args.standard else "full"
    base = dict(PRESETS[name][dev])
    cfg = {
        "preset": name,
        "losses": args.loss or [c.name for c in CASES],
        "sizes": args.sizes or base["sizes"],
        "dtypes": args.dtype or base["dtypes"],
        "weights": args.weight or base["weights"],
        "modes": args.mode or base["modes"],
        "impls": [i for i in IMPLS if i in (args.impl or base["impls"])],
        "grad_output": args.grad_output,
        "compile_dynamic": args.compile_dynamic,
        "warmup_ms": args.warmup,
        "rep_ms": args.rep,
        "time_limit_s": args.time_limit,
        "profile": args.profile,
        "profile_size": (args.profile_size or [2**24 if dev == "cuda" else 2**12])[0],
        "seed": args.seed,
        "count_kernels": not args.no_kernels,
    }
    # --profile alone profiles only; with a preset or explicit sizes the matrix runs too
    cfg["matrix"] = not args.profile or args.quick or args.standard or args.sizes is not None
    return cfg


# --------------------------------------------------------------------------- implementations

_COMPILED: dict = {}


def _compiled(case: Case, dynamic: str):
    key = (case.name, dynamic)
    if key not in _COMPILED:
        import torch._dynamo.config as dcfg
        for attr in ("cache_size_limit", "recompile_limit"):
            if hasattr(dcfg, attr):
                setattr(dcfg, attr, max(getattr(dcfg, attr), 512))
        for attr in ("accumulated_cache_size_limit", "accumulated_recompile_limit"):
            if hasattr(dcfg, attr):
                setattr(dcfg, attr, max(getattr(dcfg, attr), 4096))
        dyn = {"false": False, "auto": None, "true": True}[dynamic]
        _COMPILED[key] = torch.compile(case.compile_fn(), dynamic=dyn)
    return _COMPILED[key]


def impl_labels(case: Case, device: torch.device, dynamic: str) -> dict:
    how = {"compiled": "Triton" if device.type == "cuda"
           else "Triton, compiled (FUSEDLOSS_FORCE_COMPILED)",
           "interpreter": "Triton interpreter",
           "reference": "reference fallback: pure PyTorch, TRITON_INTERPRET unset",
           }[runtime.backend(device)]
    return {"eager": case.eager_impl()[1],
            "compile": f"torch.compile({case.eager_label}, dynamic={dynamic})",
            "fused": f"{case.fused_target} ({how})"}


def impl_functions(case: Case, impls: list, dynamic: str) -> dict:
    fns = {}
    for impl in impls:
        if impl == "eager":
            fns[impl] = case.eager_impl()[0]
        elif impl == "compile":
            fns[impl] = _compiled(case, dynamic)
        elif impl == "fused":
            fn = case.fused_fn()
            if fn is not None:
                fns[impl] = fn
    return fns


# --------------------------------------------------------------------------- measuring

def n_input_sets(device: torch.device, env: dict, set_bytes: int) -> int:
    """Rotate among enough input sets that repeated calls do not find them in L2."""
    if device.type != "cuda":
        return 2
    l2 = env.get("l2_bytes") or 64 << 20
    k = max(2, min(16, math.ceil(2 * l2 / max(set_bytes, 1))))
    free = free_memory(device) or 0
    while k > 1 and k * set_bytes > free // 4:
        k -= 1
    return k


def _check(fn, sets, ref) -> tuple:
    x, t, w = sets[0]
    with torch.enable_grad():
        loss = fn(x, t, w)
    (g,) = torch.autograd.grad(loss, x)
    if ref is None:
        return loss.detach(), g, None, None
    return loss.detach(), g, rel_diff(loss, ref[0]), rel_diff(g, ref[1])


def measure_impl(fn, sets, timed_modes, cfg, timer, device, gos, ref) -> dict:
    t0 = time.perf_counter()
    steps = {m: make_step(fn, sets, m, cfg["grad_output"], gos) for m in timed_modes}
    for m in timed_modes:
        steps[m]()  # first call: compile / JIT
    sync(device)
    out = {"first_call_s": time.perf_counter() - t0, "modes": {}}
    loss, grad, dl, dg = _check(fn, sets, ref)
    out.update(check_loss_rel=dl, check_grad_rel=dg, ref=(loss, grad))
    for m in timed_modes:
        med, p20, p80 = timer(steps[m])
        rec = {"median_ms": med, "p20_ms": p20, "p80_ms": p80,
               "peak_extra_bytes": peak_extra_bytes(steps[m], device)}
        kern = device_kernels(steps[m], device) if cfg.get("count_kernels", True) else None
        rec["kernels"], rec["kernel_detail"] = kern if kern is not None else (None, None)
        rec["fused_launches"], rec["fused_launch_detail"] = fused_launches(steps[m])
        out["modes"][m] = rec
    return out


def build_rows(case: Case, n: int, dtype: str, weight: str, cfg: dict, measures: dict,
               labels: dict, copy_gbps: Optional[float], device: torch.device) -> list:
    rows = []
    tol = CHECK_TOL[dtype]
    for mode in cfg["modes"]:
        for impl in cfg["impls"]:
            m = measures.get(impl)
            if m is None:
                continue
            floor, io = case.bytes_model(mode, n, DTYPES[dtype], weight)
            row = dict.fromkeys(_report.ROW_KEYS)
            row.update(loss=case.name, n=n, shape=list(case.shape(n)), dtype=dtype,
                       weight=weight, mode=mode, impl=impl, impl_label=labels[impl],
                       floor_bytes=floor, floor_bytes_per_element=floor / n, io=io)
            if m.get("error"):
                row["error"] = m["error"]
                rows.append(row)
                continue
            row["first_call_s"] = m["first_call_s"]
            row["check_loss_rel"] = m["check_loss_rel"]
            row["check_grad_rel"] = m["check_grad_rel"]
            if m["check_loss_rel"] is not None:
                row["check_ok"] = bool(m["check_loss_rel"] <= tol and m["check_grad_rel"] <= tol)
            if mode == "bwd":
                f, fb = m["modes"]["fwd"], m["modes"]["fwdbwd"]
                # a difference of two noisy medians: None + note when not above the noise
                row.update(bwd_difference(f, fb))
                if fb["kernels"] is not None and f["kernels"] is not None:
                    row["kernels"] = fb["kernels"] - f["kernels"]
                if impl == "fused" or device.type != "cuda":
                    row["fused_launches"] = fb["fused_launches"] - f["fused_launches"]
            else:
                rec = m["modes"][mode]
                for k in ("median_ms", "p20_ms", "p80_ms", "peak_extra_bytes", "kernels",
                          "kernel_detail", "fused_launches", "fused_launch_detail"):
                    row[k] = rec[k]
            if impl != "fused":
                row["fused_launches"] = row["fused_launch_detail"] = None
            elif device.type != "cuda":
                row["kernels"] = row["fused_launches"]  # CPU: the package's own counter
            med = row["median_ms"]
            if med is not None and med > 0:
                row["GBps"] = floor / (med * 1e-3) / 1e9
                if copy_gbps:
                    row["pct_copy_bw"] = 100.0 * row["GBps"] / copy_gbps
            rows.append(row)
    # speedups within each mode
    for mode in cfg["modes"]:
        by_impl = {r["impl"]: r for r in rows if r["mode"] == mode and not r.get("error")}
        for r in by_impl.values():
            for ref_impl, key in (("eager", "speedup_vs_eager"), ("compile", "speedup_vs_compile")):
                ref = by_impl.get(ref_impl)
                if ref is not None and r["median_ms"] and r["median_ms"] > 0 \
                        and ref["median_ms"] and ref["median_ms"] > 0:
                    r[key] = ref["median_ms"] / r["median_ms"]
    return rows


# --------------------------------------------------------------------------- the run

class _Bar:
    def __init__(self, total: int):
        try:
            from tqdm import tqdm
            # disable=None: a bar on a terminal, nothing in a log file
            self._bar = tqdm(total=total, unit="impl", dynamic_ncols=True, file=sys.stderr,
                             disable=None)
        except ImportError:  # pragma: no cover
            self._bar = None

    def desc(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text[:60])

    def update(self, k: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(k)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _new_doc(argv, cfg, env, timer) -> dict:
    doc = dict.fromkeys(_report.DOC_KEYS)
    doc.update(schema=_report.SCHEMA,
               created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               complete=False, argv=list(argv), config=cfg, env=env, timing=timer.describe(),
               notes=[], cases=[], rows=[], skipped=[], elapsed_s=0.0)
    return doc


def _write(doc: dict, out_dir: str, png: bool) -> None:
    """Write results.json and results.md (and, with ``png``, speedup.png first, so that
    ``doc["outputs"]`` in the JSON says which files this run wrote and why one is missing)."""
    if png:
        written, missing = ["results.json", "results.md"], {}
        path = os.path.join(out_dir, "speedup.png")
        err = _report.write_png(path, doc["rows"])
        if err:
            missing["speedup.png"] = err
            # never leave a previous run's (or a half-written) plot next to these results
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            doc["notes"].append(f"speedup.png not written: {err}")
        else:
            written.append("speedup.png")
        traces = [p["trace"] for per in (doc.get("profile") or {}).get("losses", {}).values()
                  for p in per.values() if p.get("trace")]
        if traces:
            written.append(f"traces/ ({len(traces)} traces)")
        doc["outputs"] = {"dir": out_dir, "written": written, "not_written": missing}
    _report.write_json(os.path.join(out_dir, "results.json"), doc)
    _report.write_md(os.path.join(out_dir, "results.md"), doc)


def run(argv: list, cfg: dict, device: torch.device, out_dir: str) -> dict:
    t_start = time.perf_counter()
    limit = cfg["time_limit_s"]
    deadline = None if limit is None else t_start + limit - min(10.0, 0.1 * limit)
    os.makedirs(out_dir, exist_ok=True)
    env = device_env(device)
    timer = Timer(device, cfg["warmup_ms"], cfg["rep_ms"])
    doc = _new_doc(argv, cfg, env, timer)
    notes = doc["notes"]
    if device.type != "cuda":
        notes.append(CPU_WARNING)
        notes.append("on CPU: peak memory and device kernels are n/a; the kernels column counts "
                     "fusedloss launches (fusedloss.runtime.launch_counts())")
        if not env["fused_kernels"]:
            notes.append("TRITON_INTERPRET is not set: the fused column runs fusedloss's "
                         "pure-PyTorch reference fallback, not the kernels")
        if "compile" not in cfg["impls"]:
            notes.append("compile column skipped on CPU (inductor takes 10-20 s per shape "
                         "here): n/a")
    notes.append("fwd = the forward of a training step (grad enabled; fusedloss writes the "
                 "gradient there); bwd = fwdbwd - fwd, n/a unless > 0 and > the noise (p80 - p20 "
                 "of fwd + p80 - p20 of fwdbwd); fwdbwd times torch.autograd.grad")
    cases = []
    for name in cfg["losses"]:
        case = CASE_BY_NAME[name]
        if case.fused_fn() is None:
            doc["skipped"].append(f"{name}: {case.fused_target} not available in this fusedloss")
            continue
        cases.append(case)
        labels = impl_labels(case, device, cfg["compile_dynamic"])
        doc["cases"].append({"name": name, "eager": labels["eager"],
                             "compile": case.eager_label, "fused": labels["fused"]})
    for line in _report.header_lines(doc):
        print(line, flush=True)

    bw = copy_bandwidth(device, timer)
    doc["copy_bandwidth"] = bw
    copy_gbps = bw["GBps"] if bw else None
    if bw:
        print(f"copy bandwidth: {copy_gbps:.0f} GB/s", flush=True)
    _write(doc, out_dir, png=False)

    def out_of_time(estimate: float = 0.0) -> bool:
        return deadline is not None and time.perf_counter() + estimate > deadline

    stopped = None

    _STOP["requested"] = None

    def _term(signum, frame):  # `timeout` sends SIGTERM: stop and still write the files
        _STOP["requested"] = f"signal {signum}"
        raise _Stopped(_STOP["requested"])
    try:
        prev_handler = signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread
        prev_handler = None

    try:
        if cfg["profile"] and cases:
            from ._profile import run_profile
            print("profiling one fwd+bwd step per implementation at "
                  f"{_report.fmt_n(cfg['profile_size'])}", flush=True)
            doc["profile"] = run_profile(
                cases, lambda c: impl_functions(c, cfg["impls"], cfg["compile_dynamic"]), device,
                cfg["profile_size"], cfg["dtypes"][0], cfg["weights"][0], out_dir,
                cfg["grad_output"], progress=lambda s: print(s, file=sys.stderr, flush=True),
                stop_requested=lambda: _STOP["requested"],
                # the profile may take at most 30 % of --time-limit when the matrix runs too
                out_of_time=None if limit is None else (
                    lambda: time.perf_counter() > t_start + (0.3 if cfg["matrix"] else 1.0)
                    * (deadline - t_start)))
            if any(p.get("error") == "skipped: time limit"
                   for per in doc["profile"]["losses"].values() for p in per.values()):
                notes.append("profile cut short by --time-limit (30 % of it when the matrix "
                             "runs too)")
            _write(doc, out_dir, png=False)

        if cfg["matrix"]:
            stopped = _matrix(doc, cfg, cases, device, env, timer, copy_gbps, out_dir,
                              out_of_time)
    except (Exception, KeyboardInterrupt) as e:
        stopped = _stop_reason(e)
    finally:
        if prev_handler is not None:
            signal.signal(signal.SIGTERM, prev_handler)
    doc["complete"] = stopped is None
    doc["stopped_reason"] = stopped
    doc["elapsed_s"] = time.perf_counter() - t_start
    _write(doc, out_dir, png=True)
    return doc


def _matrix(doc, cfg, cases, device, env, timer, copy_gbps, out_dir, out_of_time):
    """Time every (dtype, weight, loss, size) case in two passes: first eager and fused, then
    torch.compile (the compiles take most of the time), so a run cut short by --time-limit
    still has eager vs fused for the whole matrix and compile for as much as time allowed."""
    timed_modes = []
    for m in cfg["modes"]:
        need = ["fwd", "fwdbwd"] if m == "bwd" else [m]
        timed_modes += [x for x in need if x not in timed_modes]
    # order: dtype, weight, loss, size -- a run cut short still covers every loss in fp32
    keys = [(dt, wt, case, n) for dt in cfg["dtypes"] for wt in cfg["weights"]
            for case in cases for n in cfg["sizes"]]
    passes = [[i for i in cfg["impls"] if i != "compile"],
              [i for i in cfg["impls"] if i == "compile"]]
    passes = [p for p in passes if p]
    bar = _Bar(len(keys) * len(cfg["impls"]))
    gos = GradOutputs()
    unit_cost: dict = {}
    measures_by_key: dict = {}
    rows_by_key: dict = {}
    memory_skipped: set = set()
    stopped = None
    try:
        for impls in passes:
            for key in keys:
                dt, wt, case, n = key
                tag = f"{case.name} {_report.fmt_n(n)} {dt} w={wt}"
                if stopped:
                    doc["skipped"].append(f"{tag} {','.join(impls)}: {stopped}")
                    continue
                if key in memory_skipped:
                    bar.update(len(impls))
                    continue
                dtype = DTYPES[dt]
                set_bytes = case.bytes_model("fwdbwd", n, dtype, wt)[0]
                k = n_input_sets(device, env, set_bytes)
                free = free_memory(device)
                # inputs + the worst eager composition's saved intermediates (~16 fp32 tensors)
                need = k * set_bytes + 16 * 4 * n
                if free is not None and need > 0.7 * free:
                    doc["skipped"].append(f"{tag}: needs ~{need / 2**30:.1f} GiB, "
                                          f"{free / 2**30:.1f} GiB free")
                    memory_skipped.add(key)
                    bar.update(len(impls))
                    continue
                gen = torch.Generator(device=device)
                gen.manual_seed(cfg["seed"] * 7919 + n)  # the same inputs in both passes
                sets = []
                for _ in range(k):
                    x, t, w = case.make_inputs(n, dtype, wt, device, gen)
                    sets.append((x.requires_grad_(True), t, w))
                fns = impl_functions(case, impls, cfg["compile_dynamic"])
                labels = impl_labels(case, device, cfg["compile_dynamic"])
                measures = measures_by_key.setdefault(key, {})
                ref = None
                if "eager" not in fns:  # the check compares with eager on the same inputs
                    try:
                        ref = _check(case.eager_impl()[0], sets, None)[:2]
                    except Exception:  # noqa: BLE001 - eager's own failure is reported by eager
                        _check_stop()
                for impl in impls:
                    if impl not in fns:
                        bar.update()
                        continue
                    if out_of_time(unit_cost.get(impl, 0.0)):
                        stopped = "time limit"
                        doc["skipped"].append(f"{tag} {impl}: time limit")
                        break
                    bar.desc(f"{tag} {impl}")
                    t0 = time.perf_counter()
                    try:
                        m = measure_impl(fns[impl], sets, timed_modes, cfg, timer, device, gos,
                                         ref)
                        if impl == "eager":
                            ref = m["ref"]
                        m.pop("ref", None)
                    except (_Stopped, KeyboardInterrupt):
                        raise
                    except Exception as e:  # noqa: BLE001 - record and go on
                        _check_stop()
                        m = {"error": f"{type(e).__name__}: {e}"[:500]}
                    _check_stop()
                    measures[impl] = m
                    unit_cost[impl] = max(unit_cost.get(impl, 0.0), time.perf_counter() - t0)
                    bar.update()
                rows_by_key[key] = build_rows(case, n, dt, wt, cfg, measures, labels, copy_gbps,
                                              device)
                doc["rows"] = [r for kk in keys if kk in rows_by_key for r in rows_by_key[kk]]
                del sets, fns, ref
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                _write(doc, out_dir, png=False)
    except (Exception, KeyboardInterrupt) as e:
        stopped = _stop_reason(e)
    finally:
        bar.close()
    return stopped


def print_results(doc: dict) -> None:
    print()
    for line in _report.table_lines(doc["rows"]):
        print(line)
    if doc.get("skipped"):
        print("\nskipped:")
        for s in doc["skipped"]:
            print(f"  {s}")
    if doc.get("profile"):
        print("\nprofile (one fwd+bwd step, grad_output 1):")
        for line in _report.profile_lines(doc["profile"]):
            print(line)
    summary = _report.summary_lines(doc["rows"])
    if summary:
        print("\nsummary (fused):")
        for line in summary:
            print(line)
    for line in doc["notes"]:
        if line == CPU_WARNING:
            print(f"\nNOTE: {line}")
    print("\n" + written_message(doc), flush=True)


def written_message(doc: dict) -> str:
    """The last line of a run: exactly the files it wrote, and why any is missing."""
    outputs = doc.get("outputs") or {}
    written = outputs.get("written") or []
    msg = f"wrote {', '.join(written) or 'nothing'}"
    if outputs.get("dir"):
        msg += f" in {outputs['dir']}"
    for name, why in (outputs.get("not_written") or {}).items():
        msg += f"; {name} not written: {why}"
    if doc.get("stopped_reason"):
        msg += f"; stopped early: {doc['stopped_reason']}"
    return msg


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("fusedloss-bench: --device cuda but no CUDA device is available", file=sys.stderr)
            return 2
    if args.list:
        for c in CASES:
            fused = c.fused_fn() is not None
            print(f"{c.name:>14}: fused {c.fused_target} ({'ok' if fused else 'absent'}); "
                  f"eager {c.eager_impl()[1]}")
            print(f"{'':>16}bytes fwdbwd fp32 w=bool: "
                  f"{c.bytes_model('fwdbwd', 1, torch.float32, 'bool')[1]}")
        return 0
    cfg = resolve_config(args, device)
    doc = run(argv, cfg, device, args.out)
    print_results(doc)
    errors = [r for r in doc["rows"] if r.get("error")]
    if errors:
        print(f"{len(errors)} rows failed; see 'error' in results.json", file=sys.stderr)
    return 0
