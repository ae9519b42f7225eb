"""fusedloss-bench: the bytes model, the registry, the JSON schema, a --quick CPU run.

Runs on the test device (CPU under the interpreter in CI, tiny sizes; CUDA in
bench/gpu_check.sh, where the GPU columns -- do_bench, peak memory, device kernels, copy
bandwidth -- are checked too).
"""
import gzip
import json
import math

import pytest
import torch

from fusedloss import bench
from fusedloss.bench import _cli
from fusedloss.bench._registry import elementwise_bytes

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
        t = t.double()
        w = w if w is None or w.dtype == torch.bool else w.double()
        assert x.abs().sum() > 0 and t.abs().sum() > 0  # never zeros
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
    "impl_label": str, "median_ms": float, "p20_ms": float, "p80_ms": float,
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
    assert bench.main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_run_writes_the_three_files(quick_run):
    out, doc = quick_run
    for name in ("results.json", "results.md", "speedup.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "| loss | n | dtype |" in md
    assert ("say nothing about GPU speed" in md) != CUDA
    for loss in ("huber", "l1"):
        for impl in ("eager", "fused"):
            with gzip.open(out / "traces" / f"{loss}-{impl}.json.gz", "rt") as f:
                assert "traceEvents" in json.load(f)


def test_quick_run_json_schema(quick_run):
    _, doc = quick_run
    assert set(doc) == set(bench.DOC_KEYS)
    assert doc["schema"] == bench.SCHEMA and doc["complete"] is True
    assert doc["stopped_reason"] is None
    env = doc["env"]
    for key in ("device", "device_name", "device_slug", "torch", "triton", "python", "fusedloss"):
        assert isinstance(env[key], str) and env[key], key
    assert env["torch"] == torch.__version__ and env["device"] == DEVICE.type
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
        if r["median_ms"] > 0:
            assert math.isclose(r["GBps"], expected / (r["median_ms"] * 1e-3) / 1e9)
        if impl == "eager":
            assert (r["kernels"] is None) != CUDA and r["check_ok"] is None
            if r["median_ms"] > 0:
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
            assert math.isclose(r["median_ms"], fb["median_ms"] - f["median_ms"])
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
