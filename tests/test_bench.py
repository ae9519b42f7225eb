"""fusedloss-bench: the bytes model, the registry, the JSON schema, a --quick CPU run.

Runs on the test device (CPU under the interpreter in CI, tiny sizes; CUDA in
bench/gpu_check.sh, where the GPU columns -- do_bench, peak memory, device kernels, copy
bandwidth -- are checked too).
"""
import ast
import contextlib
import gzip
import io
import json
import math
import pathlib
import sys

import pytest
import torch

from fusedloss import bench
from fusedloss.bench import _cli, _report
from fusedloss.bench._registry import elementwise_bytes
from fusedloss.bench._timing import bwd_difference

from conftest import DEVICE

CUDA = DEVICE.type == "cuda"

N = 2**20  # divisible by 64: input (2^14, 64), broadcast weight (2^14, 1)


# --------------------------------------------------------------------------- bytes model

@pytest.mark.parametrize("mode, dtype, weight, expected_per_element", [
    # fp32 x + fp32 t + bool full weight, fwdbwd = 4 + 4 + 1 + 4 = 13 bytes/element
    ("fwdbwd", torch.float32, "bool", 4 + 4 + 1 + 4),
    # grad_output != 1 has the same floor: each input read once, dx written once
    ("fwdbwd_go", torch.float32, "bool", 4 + 4 + 1 + 4),
    # forward only: read x + read t = 4 + 4
    ("fwd", torch.float32, "none", 4 + 4),
    # bwd = fwdbwd - fwd = write dx = 4
    ("bwd", torch.float32, "bool", 4),
    # fp32, no weight, fwdbwd = 4 + 4 + 4 = 12 (the decisions.md "fused floor 12")
    ("fwdbwd", torch.float32, "none", 12),
    # bf16 x + bf16 t + (n/64 rows x 1) bf16 weight + bf16 dx = 2 + 2 + 2/64 + 2 = 6.03125
    ("fwdbwd", torch.bfloat16, "broadcast", 2 + 2 + 2 / 64 + 2),
    # fp32 broadcast weight: 4 + 4 + 4/64 + 4 = 12.0625
    ("fwdbwd", torch.float32, "broadcast", 4 + 4 + 4 / 64 + 4),
    # fp16 with a bool mask, forward: 2 + 2 + 1 = 5
    ("fwd", torch.float16, "bool", 2 + 2 + 1),
    # fp16 fwd+bwd, no weight: 2 + 2 + 2 = 6
    ("fwdbwd", torch.float16, "none", 6),
])
def test_bytes_model_hand_computed(mode, dtype, weight, expected_per_element):
    nbytes, io = elementwise_bytes(mode, N, dtype, weight)
    assert nbytes == expected_per_element * N
    assert ("write dx" in io) == (mode != "fwd")
    assert ("read w" in io) == (weight != "none" and mode != "bwd")


def test_bytes_model_small_sizes_and_registry():
    # n = 1000 is not a multiple of 64: shape (1000, 1), the broadcast weight is full-size
    assert bench.input_shape(1000) == (1000, 1)
    assert elementwise_bytes("fwdbwd", 1000, torch.float32, "broadcast")[0] == 1000 * 16
    names = [c.name for c in bench.CASES]
    assert len(names) == len(set(names))
    for case in bench.CASES:  # one bytes model per entry, consistent across modes
        for dtype in bench.DTYPES.values():
            for w in bench.WEIGHTS:
                fwd = case.bytes_model("fwd", N, dtype, w)[0]
                bwd = case.bytes_model("bwd", N, dtype, w)[0]
                assert case.bytes_model("fwdbwd", N, dtype, w)[0] == fwd + bwd
                assert case.bytes_model("fwdbwd_go", N, dtype, w)[0] == fwd + bwd


def test_sanitize_and_sizes():
    assert bench.sanitize("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert bench.sanitize("a/b (c)*") == "a-b-c"
    assert bench.sanitize("///") == "unknown"
    assert _cli.parse_sizes("16,2^20,65536,12:16:2") == [2**16, 2**20, 65536, 2**12, 2**14,
                                                          2**16]


# --------------------------------------------------------------------------- registry

def _double(t):
    if isinstance(t, tuple):
        return tuple(_double(v) for v in t)
    return t.double() if t.dtype.is_floating_point else t


@pytest.mark.parametrize("case", bench.CASES, ids=lambda c: c.name)
def test_registry_eager_matches_fused(case):
    """The eager composition and the fused call compute the same loss and input gradient
    (otherwise the benchmark compares different things)."""
    fused = case.fused_fn()
    if fused is None:
        pytest.skip(f"{case.fused_target} not in this fusedloss")
    eager, _ = case.eager_impl()
    gen = torch.Generator(device=DEVICE)
    gen.manual_seed(0)
    for weight in bench.WEIGHTS:
        x, t, w = case.make_inputs(1024, torch.float32, weight, DEVICE, gen)
        x = x.double().requires_grad_(True)
        t = _double(t)  # a tensor, or a tuple of them (keypoints and visibility, anchors...)
        w = w if w is None or w.dtype == torch.bool else w.double()
        assert x.abs().sum() > 0  # never zeros
        assert all(v.double().abs().sum() > 0 for v in (t if isinstance(t, tuple) else (t,)))
        le = eager(x, t, w)
        (ge,) = torch.autograd.grad(le, x)
        lf = fused(x, t, w)
        (gf,) = torch.autograd.grad(lf, x)
        torch.testing.assert_close(lf.double(), le.double(), rtol=1e-9, atol=1e-12,
                                   msg=lambda m: f"{case.name} weight={weight}: {m}")
        torch.testing.assert_close(gf.double(), ge.double(), rtol=1e-9, atol=1e-12,
                                   msg=lambda m: f"{case.name} weight={weight}: {m}")


# --------------------------------------------------------------------------- --quick CPU run

NONE = type(None)
ROW_TYPES = {
    "loss": str, "n": int, "shape": list, "dtype": str, "weight": str, "mode": str, "impl": str,
    "impl_label": str, "median_ms": (float, NONE), "p20_ms": (float, NONE),
    "p80_ms": (float, NONE), "noise_ms": (float, NONE), "note": (str, NONE),
    "speedup_vs_eager": (float, type(None)), "speedup_vs_compile": (float, type(None)),
    "floor_bytes": int, "floor_bytes_per_element": float, "io": str,
    "GBps": (float, NONE), "pct_copy_bw": (float, NONE) if CUDA else NONE,
    "peak_extra_bytes": (int, NONE) if CUDA else NONE,
    "kernels": (int, NONE), "kernel_detail": (dict, NONE) if CUDA else NONE,
    "fused_launches": (int, type(None)), "fused_launch_detail": (dict, type(None)),
    "first_call_s": float, "check_loss_rel": (float, type(None)),
    "check_grad_rel": (float, type(None)), "check_ok": (bool, type(None)),
    "error": type(None),
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--device", DEVICE.type, "--loss", "huber,l1", "--sizes", "10",
            "--impl", "eager,fused", "--weight", "none,bool", "--mode", "fwd,bwd,fwdbwd",
            "--rep", "2", "--warmup", "1", "--profile", "--profile-size", "10",
            "--out", str(out)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert bench.main(argv) == 0
    return out, json.loads((out / "results.json").read_text()), stdout.getvalue()


def _wrote_line(stdout: str) -> str:
    lines = [l for l in stdout.splitlines() if l.startswith("wrote ")]
    assert len(lines) == 1, stdout[-2000:]
    return lines[0]


def _written_names(line: str, out) -> list:
    """The file names a 'wrote A, B, C in DIR; ...' line lists."""
    listed, _, rest = line[len("wrote "):].partition(f" in {out}")
    assert rest == "" or rest.startswith(";"), line
    return [name.split(" (")[0] for name in listed.split(", ")]


def test_quick_run_writes_the_three_files(quick_run):
    out, doc, stdout = quick_run
    for name in ("results.json", "results.md", "speedup.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the last message names exactly what is on disk: three files and the 4 traces
    line = _wrote_line(stdout)
    assert _written_names(line, out) == ["results.json", "results.md", "speedup.png", "traces/"]
    assert "traces/ (4 traces)" in line and "not written" not in line
    assert sorted(p.name for p in (out / "traces").iterdir()) == sorted(
        f"{loss}-{impl}.json.gz" for loss in ("huber", "l1") for impl in ("eager", "fused"))
    md = (out / "results.md").read_text()
    assert "| loss | n | dtype |" in md
    assert ("say nothing about GPU speed" in md) != CUDA
    for loss in ("huber", "l1"):
        for impl in ("eager", "fused"):
            with gzip.open(out / "traces" / f"{loss}-{impl}.json.gz", "rt") as f:
                assert "traceEvents" in json.load(f)


def test_quick_run_json_schema(quick_run):
    _, doc, _ = quick_run
    assert set(doc) == set(bench.DOC_KEYS)
    assert doc["schema"] == bench.SCHEMA and doc["complete"] is True
    assert doc["stopped_reason"] is None
    env = doc["env"]
    for key in ("device", "device_name", "device_slug", "torch", "triton", "python", "fusedloss"):
        assert isinstance(env[key], str) and env[key], key
    assert env["torch"] == torch.__version__ and env["device"] == DEVICE.type
    # CI runs CPU tests under TRITON_INTERPRET=1 (conftest insists), the GPU check on CUDA
    assert env["backend"] == ("compiled" if CUDA else "interpreter")
    if CUDA:
        assert doc["copy_bandwidth"]["GBps"] > 100
        assert doc["timing"]["method"] == "triton.testing.do_bench"
    else:
        assert doc["copy_bandwidth"] is None  # n/a on CPU
        assert doc["timing"]["method"] == "time.perf_counter"
        assert any("say nothing about GPU speed" in n for n in doc["notes"])
    # 2 losses x (fwd, bwd, fwdbwd) x (none, bool) x (eager, fused)
    rows = doc["rows"]
    assert len(rows) == 2 * 3 * 2 * 2
    assert {r["impl"] for r in rows} == {"eager", "fused"}
    for r in rows:
        assert set(r) == set(bench.ROW_KEYS)
        for key, typ in ROW_TYPES.items():
            assert isinstance(r[key], typ), (key, r[key])
    by = {(r["loss"], r["weight"], r["mode"], r["impl"]): r for r in rows}
    for (loss, weight, mode, impl), r in by.items():
        assert r["n"] == 1024 and r["shape"] == [16, 64]
        expected = elementwise_bytes(mode, 1024, torch.float32, weight)[0]
        assert r["floor_bytes"] == expected
        if mode != "bwd":  # measured directly: always a time, never a note
            assert isinstance(r["median_ms"], float) and r["note"] is None
            assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        if r["median_ms"] is not None and r["median_ms"] > 0:
            assert math.isclose(r["GBps"], expected / (r["median_ms"] * 1e-3) / 1e9)
        if impl == "eager":
            assert (r["kernels"] is None) != CUDA and r["check_ok"] is None
            if r["median_ms"] is not None and r["median_ms"] > 0:
                assert r["speedup_vs_eager"] == 1.0
        else:
            assert r["check_ok"] is True
            assert r["fused_launches"] >= (0 if mode == "bwd" else 1)
            if CUDA:  # the profiler also sees torch's own kernels
                assert mode == "bwd" or r["kernels"] >= r["fused_launches"]
            else:  # on CPU the kernels column is the package's counter
                assert r["kernels"] == r["fused_launches"]
        if CUDA and mode != "bwd":
            assert r["peak_extra_bytes"] > 0 and r["pct_copy_bw"] is not None
        if mode == "bwd":
            fb, f = by[(loss, weight, "fwdbwd", impl)], by[(loss, weight, "fwd", impl)]
            diff = fb["median_ms"] - f["median_ms"]
            noise = (f["p80_ms"] - f["p20_ms"]) + (fb["p80_ms"] - fb["p20_ms"])
            assert math.isclose(r["noise_ms"], noise)
            if diff > 0 and diff > noise:
                assert math.isclose(r["median_ms"], diff) and r["note"] is None
                assert math.isclose(r["p20_ms"], fb["p20_ms"] - f["p80_ms"])
            else:  # not meaningful: no time, no derived figures, a reason
                assert r["median_ms"] is r["p20_ms"] is r["p80_ms"] is None
                assert r["GBps"] is r["speedup_vs_eager"] is None
                assert r["note"].startswith("fwdbwd - fwd = ")
    # fused forward: one launch without a weight (2^10 elements: one program), plus the
    # torch.sum over a bool weight for weighted_mean
    assert by[("huber", "none", "fwd", "fused")]["fused_launches"] == 1
    assert by[("huber", "bool", "fwd", "fused")]["fused_launch_detail"]["torch.sum(weight)"] == 1
    prof = doc["profile"]
    assert set(prof["losses"]) == {"huber", "l1"}
    assert prof["losses"]["huber"]["fused"]["fused_launches"] >= 1


def test_time_limit_writes_partial_results(tmp_path):
    argv = ["--quick", "--device", DEVICE.type, "--loss", "huber", "--sizes", "10",
            "--time-limit", "0", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["complete"] is False and doc["stopped_reason"] == "time limit"
    assert doc["rows"] == [] and any("time limit" in s for s in doc["skipped"])
    assert (tmp_path / "results.md").exists() and (tmp_path / "speedup.png").exists()


# --------------------------------------------------------------------------- bwd = fwdbwd - fwd

def _rec(median, p20, p80):
    return {"median_ms": median, "p20_ms": p20, "p80_ms": p80}


@pytest.mark.parametrize("fwd, fwdbwd, expected_ms, reason", [
    # the case: fwdbwd's median 30 ms below fwd's (noise 20 + 10 = 30 ms)
    (_rec(50.0, 40.0, 60.0), _rec(20.0, 15.0, 25.0), None, "-30 ms <= 0: within noise 30 ms"),
    # negative by more than the noise (2 + 2 ms): still not a backward time
    (_rec(50.0, 49.0, 51.0), _rec(20.0, 19.0, 21.0), None, "-30 ms <= 0: beyond noise 4 ms"),
    # exactly zero, no spread at all
    (_rec(1.0, 1.0, 1.0), _rec(1.0, 1.0, 1.0), None, "0 us <= 0"),
    # positive, below the noise: 2 us < 3 us + 2 us
    (_rec(0.010, 0.009, 0.012), _rec(0.012, 0.011, 0.013), None, "2 us <= noise 5 us"),
    # positive, exactly the noise (0.5 + 0.5 ms; exact in binary): not above it
    (_rec(1.0, 0.75, 1.25), _rec(2.0, 1.75, 2.25), None, "1 ms <= noise 1 ms"),
    # a clear positive difference: 2 ms against 0.02 + 0.04 ms of noise
    (_rec(1.0, 0.99, 1.01), _rec(3.0, 2.98, 3.02), 2.0, None),
])
def test_bwd_difference_rule(fwd, fwdbwd, expected_ms, reason):
    row = bwd_difference(fwd, fwdbwd)
    noise = (fwd["p80_ms"] - fwd["p20_ms"]) + (fwdbwd["p80_ms"] - fwdbwd["p20_ms"])
    assert math.isclose(row["noise_ms"], noise)
    if expected_ms is None:
        assert row["median_ms"] is row["p20_ms"] is row["p80_ms"] is None
        assert reason in row["note"], row["note"]
    else:
        assert math.isclose(row["median_ms"], expected_ms) and row["note"] is None
        # the range: p20(fwdbwd) - p80(fwd) .. p80(fwdbwd) - p20(fwd)
        assert math.isclose(row["p20_ms"], 2.98 - 1.01)
        assert math.isclose(row["p80_ms"], 3.02 - 0.99)


def test_bwd_na_carries_through_rows_tables_and_summary():
    case = bench.CASE_BY_NAME["huber"]
    cfg = {"modes": ["fwd", "bwd", "fwdbwd"], "impls": ["eager", "fused"]}

    def measured(fwd, fwdbwd):
        modes = {}
        for mode, (med, p20, p80) in (("fwd", fwd), ("fwdbwd", fwdbwd)):
            modes[mode] = {"median_ms": med, "p20_ms": p20, "p80_ms": p80,
                           "peak_extra_bytes": None, "kernels": None, "kernel_detail": None,
                           "fused_launches": 1, "fused_launch_detail": {"k": 1}}
        return {"first_call_s": 0.1, "check_loss_rel": None, "check_grad_rel": None,
                "modes": modes}

    measures = {"eager": measured((1.0, 0.9, 1.1), (3.0, 2.9, 3.1)),      # bwd 2 ms > 0.4
                "fused": measured((50.0, 40.0, 60.0), (20.0, 15.0, 25.0))}  # bwd -30 ms
    rows = _cli.build_rows(case, 1024, "fp32", "none", cfg, measures,
                           {"eager": "e", "fused": "f"}, None, torch.device("cpu"))
    by = {(r["mode"], r["impl"]): r for r in rows}
    eager, fused = by[("bwd", "eager")], by[("bwd", "fused")]
    assert math.isclose(eager["median_ms"], 2.0) and eager["note"] is None
    assert math.isclose(eager["GBps"], 4 * 1024 / 2e-3 / 1e9)  # write dx, 4 B/element
    assert fused["median_ms"] is None and fused["GBps"] is None
    assert fused["speedup_vs_eager"] is None and "-30 ms" in fused["note"]
    assert math.isclose(by[("fwd", "fused")]["speedup_vs_eager"], 1.0 / 50.0)
    table = "\n".join(_report.table_lines(rows))
    md = "\n".join(_report.table_lines(rows, markdown=True))
    for text in (table, md):
        line = next(l for l in text.splitlines() if "bwd" in l and "fused" in l)
        assert "-30 ms <= 0" in line and "n/a" in line and "-30.0" not in line
    summary = "\n".join(_report.summary_lines(rows))
    assert "bwd: fused n/a (fwdbwd - fwd = -30 ms" in summary


# --------------------------------------------------------------------------- files written

def test_final_message_lists_only_written_files(tmp_path, monkeypatch, capsys):
    (tmp_path / "speedup.png").write_bytes(b"a previous run's plot")
    monkeypatch.setattr(_report, "write_png", lambda path, rows: "matplotlib is not installed")
    argv = ["--quick", "--device", DEVICE.type, "--loss", "huber", "--sizes", "10",
            "--impl", "eager", "--weight", "none", "--mode", "fwd", "--rep", "1",
            "--warmup", "0", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    line = _wrote_line(capsys.readouterr().out)
    assert _written_names(line, tmp_path) == ["results.json", "results.md"]
    assert line.endswith("; speedup.png not written: matplotlib is not installed")
    # on disk: exactly the two files (the stale plot is gone, no temporary left)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["outputs"]["not_written"] == {"speedup.png": "matplotlib is not installed"}
    assert "speedup.png not written: matplotlib is not installed" in doc["notes"]
    assert "speedup.png not written" in (tmp_path / "results.md").read_text()


def test_write_png_without_matplotlib(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert _report.write_png(str(tmp_path / "speedup.png"), []) == "matplotlib is not installed"
    assert not (tmp_path / "speedup.png").exists()


# --------------------------------------------------------------------------- engine boundary

BENCH_DIR = pathlib.Path(bench.__file__).parent


def _private_fusedloss_imports(source: str, module: str) -> list:
    """Modules of fusedloss outside fusedloss.bench with a private (_-prefixed) name that
    ``source`` (the module ``module``, e.g. fusedloss.bench._cli) imports."""
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            if parts[0] == "fusedloss" and parts[1:2] != ["bench"] and \
                    any(p.startswith("_") and not p.startswith("__") for p in parts[1:2]):
                found.append(t)
    return found


def test_import_checker_catches_engine_imports():
    mod = "fusedloss.bench._timing"
    assert _private_fusedloss_imports("from .._engine import LAUNCH_COUNTS", mod) == [
        "fusedloss._engine", "fusedloss._engine.LAUNCH_COUNTS"]
    assert _private_fusedloss_imports("from .. import _engine", mod) == ["fusedloss._engine"]
    assert _private_fusedloss_imports("import fusedloss._runtime as r", mod) == [
        "fusedloss._runtime"]
    assert _private_fusedloss_imports(
        "from ..runtime import launch_counts\nfrom .. import __version__\n"
        "from ._timing import sync\nfrom . import _report", mod) == []


def test_bench_reaches_the_engine_only_through_fusedloss_runtime():
    files = sorted(BENCH_DIR.glob("*.py"))
    assert {"_cli.py", "_profile.py", "_timing.py"} <= {f.name for f in files}
    for f in files:
        source = f.read_text()
        assert _private_fusedloss_imports(source, f"fusedloss.bench.{f.stem}") == [], f.name
        # nor by name (importlib, strings in messages)
        assert "_engine" not in source and "LAUNCH_COUNTS" not in source, f.name
