"""Terminal table, results.json, results.md and speedup.png."""
from __future__ import annotations

import json
import math
import os
from typing import Optional

#: 2: bwd rows may have null times with a ``note`` (difference within noise); ``outputs``
SCHEMA = "fusedloss-bench/2"

#: every key a row of results.json carries (None where the table prints n/a). bwd rows:
#: ``noise_ms`` is the p20-p80 spread of fwd plus that of fwdbwd; when fwdbwd - fwd is not > 0
#: and > noise_ms the times (and GB/s, speedups) are None and ``note`` says why.
ROW_KEYS = (
    "loss", "n", "shape", "dtype", "weight", "mode", "impl", "impl_label",
    "median_ms", "p20_ms", "p80_ms", "noise_ms", "note",
    "speedup_vs_eager", "speedup_vs_compile",
    "floor_bytes", "floor_bytes_per_element", "io", "GBps", "pct_copy_bw",
    "peak_extra_bytes", "kernels", "kernel_detail", "fused_launches", "fused_launch_detail",
    "first_call_s", "check_loss_rel", "check_grad_rel", "check_ok", "error",
)

#: top-level keys of results.json
DOC_KEYS = ("schema", "created", "complete", "stopped_reason", "argv", "config", "env", "timing",
            "copy_bandwidth", "notes", "cases", "rows", "skipped", "profile", "elapsed_s",
            "outputs")

COLUMNS = (
    ("loss", "loss"), ("n", "n"), ("dtype", "dtype"), ("weight", "weight"), ("mode", "mode"),
    ("impl", "impl"), ("median ms", "median_ms"), ("p20", "p20_ms"), ("p80", "p80_ms"),
    ("x eager", "speedup_vs_eager"), ("x compile", "speedup_vs_compile"),
    ("B/elem", "floor_bytes_per_element"), ("GB/s", "GBps"), ("% copy", "pct_copy_bw"),
    ("peak MiB", "peak_extra_bytes"), ("kernels", "kernels"), ("check", "check_ok"),
    ("note", "note"),
)


def fmt_n(n: int) -> str:
    if n > 0 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


def _g(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}g}"


def fmt_cell(key: str, row: dict) -> str:
    v = row.get(key)
    if row.get("error") and key in ("median_ms", "p20_ms", "p80_ms"):
        return "error"
    if key == "n":
        return fmt_n(v)
    if key in ("median_ms", "p20_ms", "p80_ms"):
        return _g(v)
    if key in ("speedup_vs_eager", "speedup_vs_compile"):
        return "n/a" if v is None else f"{v:.2f}x"
    if key == "floor_bytes_per_element":
        return _g(v, 3)
    if key == "GBps":
        return "n/a" if v is None else (f"{v:.1f}" if v >= 100 else f"{v:.3g}")
    if key == "pct_copy_bw":
        return "n/a" if v is None else f"{v:.0f}%"
    if key == "peak_extra_bytes":
        return "n/a" if v is None else f"{v / 2**20:.1f}"
    if key == "kernels":
        return "n/a" if v is None else str(v)
    if key == "check_ok":
        return {True: "ok", False: "DIFF", None: "-"}[v]
    if key == "note":
        return "" if v is None else str(v)
    return "n/a" if v is None else str(v)


def table_lines(rows: list, markdown: bool = False) -> list:
    header = [c[0] for c in COLUMNS]
    body = [[fmt_cell(key, r) for _, key in COLUMNS] for r in rows]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(b) + " |" for b in body]
        return out
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(header)]
    # the last column (note) is left-aligned free text, empty on most rows
    line = "  ".join(h.rjust(w) for h, w in zip(header[:-1], widths)) + "  " + header[-1]
    out = [line, "-" * len(line)]
    prev_group = None
    for r, b in zip(rows, body):
        group = (r["loss"], r["n"], r["dtype"], r["weight"])
        if prev_group is not None and group != prev_group:
            out.append("")
        prev_group = group
        out.append("  ".join(c.rjust(w) for c, w in zip(b[:-1], widths)) + "  " + b[-1])
    return [o.rstrip() for o in out]


def summary_lines(rows: list) -> list:
    """One line per case and mode: the fused time and its speedups."""
    out = []
    for r in rows:
        if r["impl"] != "fused" or r.get("error"):
            continue
        head = (f"{r['loss']:>14} {fmt_n(r['n']):>5} {r['dtype']:>4} {r['weight']:>9} "
                f"{r['mode']:>9}: ")
        if r["median_ms"] is None and r.get("note"):
            out.append(head + f"fused n/a ({r['note']})")
            continue
        out.append(head + f"fused {_g(r['median_ms'])} ms, "
                   f"{fmt_cell('speedup_vs_eager', r)} eager, "
                   f"{fmt_cell('speedup_vs_compile', r)} compile, "
                   f"{fmt_cell('GBps', r)} GB/s ({fmt_cell('pct_copy_bw', r)} of copy)"
                   + ("" if r.get("check_ok") in (True, None) else "  CHECK DIFF"))
    return out


def header_lines(doc: dict) -> list:
    env = doc["env"]
    bw = doc.get("copy_bandwidth")
    lines = [
        f"device: {env['device']} ({env['device_name']}), fused backend "
        f"{env.get('backend', 'n/a')}, torch {env['torch']}, "
        f"triton {env['triton']}, fusedloss {env['fusedloss']}",
        f"timing: {doc['timing']['method']} (median, p20, p80 in ms; warm-up excluded; "
        f"warmup={doc['timing']['warmup_ms']} ms, rep={doc['timing']['rep_ms']} ms)",
        "copy bandwidth: " + ("n/a" if not bw else f"{bw['GBps']:.0f} GB/s "
                              f"(device-to-device copy, read + write)"),
    ]
    lines += [f"note: {n}" for n in doc.get("notes", [])]
    return lines


def write_json(path: str, doc: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)


def write_md(path: str, doc: dict) -> None:
    lines = ["# fusedloss-bench results", ""]
    lines += [f"- {h}" for h in header_lines(doc)]
    lines += [f"- created {doc['created']}; complete: {doc['complete']}"
              + (f" (stopped: {doc['stopped_reason']})" if doc.get("stopped_reason") else "")]
    lines += ["", "Implementations per case:", ""]
    for c in doc.get("cases", []):
        lines.append(f"- **{c['name']}**: eager = {c['eager']}; compile = torch.compile of "
                     f"{c['compile']}; fused = {c['fused']}")
    lines += ["", "Floor bytes (`B/elem`): each input read once, the input gradient written once "
              "(bwd = fwdbwd - fwd = write dx). GB/s = floor bytes / median time. "
              "bwd rows are fwdbwd - fwd of the medians, reported only when > 0 and larger than "
              "the noise (p80 - p20 of fwd + p80 - p20 of fwdbwd); otherwise n/a, with the "
              "reason in `note`. "
              "`peak MiB` = torch.cuda.max_memory_allocated delta over one step, the returned "
              "gradient included. `kernels` = device kernels per step (torch.profiler) on CUDA; "
              "on CPU, fusedloss launches (its own counter) and n/a for eager/compile.", ""]
    lines += table_lines(doc["rows"], markdown=True)
    if doc.get("skipped"):
        lines += ["", "Skipped:", ""]
        lines += [f"- {s}" for s in doc["skipped"]]
    prof = doc.get("profile")
    if prof:
        lines += ["", "## Profile (one fwd+bwd step per implementation)", ""]
        lines += profile_lines(prof)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def profile_lines(prof: dict) -> list:
    lines = [f"size {fmt_n(prof['n'])}, {prof['dtype']}, weight {prof['weight']}, "
             f"mode {prof['mode']}; traces in {prof['trace_dir']}"]
    for loss, impls in prof["losses"].items():
        lines.append("")
        lines.append(f"{loss}:")
        for impl, p in impls.items():
            if p.get("error"):
                lines.append(f"  {impl:>8}: error: {p['error']}")
                continue
            if p["device_kernels"] is not None:
                lines.append(f"  {impl:>8}: {p['device_kernels']} kernels, "
                             f"{p['device_time_us']:.1f} us on the device")
                for k in p["kernels"]:
                    lines.append(f"            {k['count']:>3} x {k['total_us']:>9.1f} us  "
                                 f"{k['name'][:90]}")
            else:
                fl = p.get("fused_launches")
                lines.append(f"  {impl:>8}: kernels n/a on CPU"
                             + (f" (fusedloss launches: {fl})" if fl is not None else "")
                             + f", step {p['cpu_time_us']:.0f} us host; top ops by self CPU time:")
                for k in p["kernels"]:
                    lines.append(f"            {k['count']:>3} x {k['total_us']:>9.1f} us  "
                                 f"{k['name'][:90]}")
    return lines


_COLORS = {"compile": "tab:orange", "fused": "tab:blue"}
_MARKERS = {"fwd": "s", "bwd": "v", "fwdbwd": "o", "fwdbwd_go": "^"}
_STYLES = {"fwd": ":", "bwd": "-.", "fwdbwd": "-", "fwdbwd_go": "--"}


def write_png(path: str, rows: list) -> Optional[str]:
    """Speedup vs eager against size: one panel per (loss, dtype, weight), one line per
    implementation and mode. Returns an error string instead of raising."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    except Exception as e:  # noqa: BLE001
        return f"matplotlib unavailable: {type(e).__name__}: {e}"
    try:
        _plot(plt, path, rows)
    except Exception as e:  # noqa: BLE001
        plt.close("all")
        return f"plotting failed: {type(e).__name__}: {e}"
    return None


def _plot(plt, path: str, rows: list) -> None:
    # rows without a time (errors, bwd within noise) have no speedup: no point
    good = [r for r in rows if r.get("speedup_vs_eager") is not None and r["impl"] != "eager"]
    losses = list(dict.fromkeys(r["loss"] for r in good))
    combos = list(dict.fromkeys((r["dtype"], r["weight"]) for r in good))
    if not good:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.text(0.5, 0.5, "no speedups measured", ha="center", va="center")
        ax.set_axis_off()
    else:
        nr, nc = len(losses), len(combos)
        fig, axes = plt.subplots(nr, nc, figsize=(min(4.2 * nc, 40), min(3.2 * nr, 60)),
                                 squeeze=False, sharex=True)
        for i, loss in enumerate(losses):
            for j, (dt, w) in enumerate(combos):
                ax = axes[i][j]
                sel = [r for r in good if r["loss"] == loss and r["dtype"] == dt
                       and r["weight"] == w]
                for key in dict.fromkeys((r["impl"], r["mode"]) for r in sel):
                    pts = sorted((r["n"], r["speedup_vs_eager"]) for r in sel
                                 if (r["impl"], r["mode"]) == key)
                    ax.plot([math.log2(p[0]) for p in pts], [p[1] for p in pts],
                            color=_COLORS.get(key[0]), marker=_MARKERS.get(key[1], "o"),
                            linestyle=_STYLES.get(key[1], "-"), label=f"{key[0]} {key[1]}")
                ax.axhline(1.0, color="gray", linewidth=0.8, label="eager")
                ax.set_yscale("log")
                ax.set_title(f"{loss} {dt} w={w}", fontsize=9)
                ax.set_xlabel("log2(elements)", fontsize=8)
                ax.set_ylabel("speedup vs eager", fontsize=8)
                ax.tick_params(labelsize=7)
                if sel:
                    ax.legend(fontsize=6)
        fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
