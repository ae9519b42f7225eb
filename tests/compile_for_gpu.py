"""Compile, for an NVIDIA GPU, every kernel variant the launcher emits, on a machine without one.

The Triton interpreter runs the kernels' Python semantics but never compiles them, so compile
errors (e.g. calling ``.to`` on an int argument that the runtime specialised to the constant 1)
would only show on a GPU. Here ``JITFunction.run`` is replaced by a function that builds the
signature with Triton's own runtime specialisation (``native_specialize_impl``) and compiles it
down to a cubin with the bundled ptxas; then the public API is driven through a matrix of cases
with CPU tensors (nothing is launched, so the results are never read).

Then the static checks (``tests/sass.py`` reads each cubin with Triton's bundled cuobjdump):

* no kernel variant spills (local memory 0);
* every float32 forward variant fits the register budget (REGISTER_BUDGET = 128 per thread:
  at 8 warps that keeps 2 CTAs per SM resident, so one CTA's loads overlap another's math);
  row variants that hold whole rows per thread (V > 0) and segment variants that hold all of
  a pixel's channels per thread (PIX > 0) instead keep >= 2 CTAs per SM and, in the users'
  layouts below, >= IN_FLIGHT_BUDGET bytes of loads in flight per SM;
* the int32-indexed float32 forward variants contain no CALL: no slow-path (64-bit) integer
  division or any other subroutine in the per-element body;
* contiguous operands move in 16-byte vectors (LDG.E.128) in the users' layouts below.

Run without TRITON_INTERPRET: ``python tests/compile_for_gpu.py [sm]`` (default sm 90).
"""
from __future__ import annotations

import os
import sys

assert not os.environ.get("TRITON_INTERPRET"), "run without TRITON_INTERPRET"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import CUDABackend  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction, native_specialize_impl  # noqa: E402

import fusedloss as fl  # noqa: E402
from fusedloss import _engine, _segments  # noqa: E402
import sass  # noqa: E402  (tests/sass.py)

TARGET = GPUTarget("cuda", int(sys.argv[1]) if len(sys.argv) > 1 else 90, 32)
BACKEND = CUDABackend(TARGET)
COMPILED: dict = {}  # compile key -> CompiledKernel
LAST_PTX: dict = {}  # kernel name -> PTX of its latest "launch"
LAUNCHED: list = []  # (kernel name, PTX) of every "launch"
VARIANTS: dict = {}  # compile key -> (kernel name, constexprs, num_warps, label of the first case)
CASE = [""]  # label of the case being compiled
REGISTER_BUDGET = 128
# rows held whole in one thread (the row driver's V > 0: YOLO's 64 logits) and pixels with all
# their channels in one thread (the segment kernels' PIX > 0: Dice's softmax over 21 classes)
# need ~160-210 registers; what they must keep is the memory parallelism: at least 2 CTAs per
# SM and 32 KiB of loads in flight per SM (an H100 SM's share of 3.35 TB/s over ~800 ns of
# DRAM latency is ~20 KiB)
IN_FLIGHT_BUDGET = 32 * 1024
LOAD_BYTES = {"128": 16, "64": 8, "32": 4, "U16": 2, "S16": 2, "U8": 1, "S8": 1}
FORWARD = ("fused_loss_fwd_kernel", "fused_loss_fwd_strided_kernel",
           "fused_loss_fwd_rendered_kernel", "fused_row_loss_fwd_kernel",
           "fused_segment_sums_kernel", "fused_segment_grad_kernel")


def compile_instead_of_launch(self, *args, grid, warmup=False, **kwargs):
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    bound = dict(zip(self.arg_names, args))
    bound.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(self.params):
        value = bound[param.name]
        kind, attr = "constexpr", None
        if not param.is_constexpr:
            kind, attr = native_specialize_impl(BACKEND, value, False, not param.do_not_specialize,
                                                not param.do_not_specialize_on_alignment)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[param.name] = value
        if attr == "D":  # divisible by 16, as the runtime tells the compiler
            attrs[(index,)] = [["tt.divisibility", 16]]
    key = (self.fn.__name__, tuple(signature.items()), tuple(sorted(attrs)),
           tuple((k, getattr(v, "__name__", repr(v))) for k, v in constexprs.items()), tuple(options.items()))
    if key not in COMPILED:
        COMPILED[key] = triton.compile(ASTSource(fn=self, signature=signature,
                                                 constexprs=constexprs, attrs=attrs),
                                       target=TARGET, options=options)
        VARIANTS[key] = (self.fn.__name__, constexprs, options.get("num_warps", 4), CASE[0])
    LAST_PTX[self.fn.__name__] = COMPILED[key].asm["ptx"]
    LAUNCHED.append((self.fn.__name__, COMPILED[key].asm["ptx"]))


def cases():
    """(public function, kwargs, input factory) covering every branch of the launcher."""
    f32, f16, bf16, f64 = torch.float32, torch.float16, torch.bfloat16, torch.float64

    def xt(shape=(64, 8), xd=f32, td=f32, t_shape=None):
        x = torch.randn(shape, dtype=xd).requires_grad_(True)
        t = torch.randn(t_shape or shape, dtype=td).requires_grad_(True)
        return x, t

    def boxes(dtype=f32, grad_t=True):
        c, wh = torch.rand(64, 2) * 10, torch.rand(64, 2) * 3
        b = torch.cat([c - wh, c + wh], -1)
        t = (b + torch.rand(64, 4)).to(dtype)
        return b.to(dtype).requires_grad_(True), t.requires_grad_(grad_t)

    for mode in ("iou", "giou", "diou", "ciou"):
        yield fl.box_iou_loss, {"mode": mode, "reduction": "mean"}, lambda: boxes()
        yield fl.box_iou_loss, {"mode": mode, "reduction": "none", "box_format": "cxcywh",
                                "weight": torch.rand(64, 1)}, lambda: boxes(bf16, False)
    for module in (fl.IoULoss(), fl.GIoULoss(), fl.DIoULoss(), fl.CIoULoss()):
        yield module, {"avg_factor": torch.tensor(3.0)}, lambda: boxes(f32, False)
    dist = lambda: (torch.randn(64, 16, requires_grad=True), torch.rand(64) * 14)  # noqa: E731
    yield fl.distribution_focal_loss, {"reduction": "mean"}, dist
    yield fl.distribution_focal_loss, {"reduction": "none", "clamp_max": 14.99}, dist
    anchors = torch.rand(40, 2) * 20
    yolo_t = torch.cat([anchors - 2, anchors + 3], -1).expand(2, 40, 4)

    def yolo_box_loss(x, t, **k):  # t unused: the anchors' target boxes are yolo_t
        return torch.stack(fl.box.yolo_box_loss(x.view(2, 40, 64), anchors, yolo_t, t, **k))
    for dtype in (f32, bf16):
        yield yolo_box_loss, {"avg_factor": torch.tensor(7.0), "fg_mask": torch.rand(2, 40) > 0.5,
                              "loss_weight": (7.5, 1.5)}, \
            lambda dtype=dtype: (torch.randn(5120, dtype=dtype, requires_grad=True),
                                 torch.rand(2, 40))
    seg = lambda dtype=f32, labels=False: (  # noqa: E731  (B, C, H, W) logits and targets
        torch.randn(2, 5, 12, 10, dtype=dtype, requires_grad=True),
        torch.randint(0, 5, (2, 12, 10)) if labels else (torch.rand(2, 5, 12, 10) > 0.6).to(dtype))
    yield fl.dice_loss, {}, lambda: seg()
    yield fl.dice_loss, {"activation": "softmax", "include_background": False,
                         "weight": torch.rand(4), "reduction": "none"}, lambda: seg(bf16, True)
    yield fl.dice_loss, {"reduce_dims": (0, 2, 3), "squared_pred": True, "jaccard": True,
                         "log_loss": True, "eps": 1e-7, "zero_absent_classes": True,
                         "loss_weight": torch.tensor(0.5)}, lambda: seg(f16, True)
    yield fl.dice_loss, {"from_logits": False, "reduction": "sum"}, lambda: seg(f64)
    yield fl.bce_dice_loss, {"bce_weight": 0.5}, lambda: seg(f32, True)
    kp, vis = torch.rand(4, 8, 2) * 8, torch.ones(4, 8)
    for loss, extra in (("mse", {}), ("huber", {}), ("shrinkage", {}), ("gaussian_focal", {}),
                        ("gaussian_focal", {"from_logits": True, "alpha": 1.5})):
        def heatmap(x, t, loss=loss, extra=extra, **k):  # t unused: the target is rendered
            return fl.heatmap_loss(x.view(4, 8, 4, 4), kp, vis, sigma=2.0, loss=loss, **extra,
                                   **k)
        heatmap.__name__ = f"heatmap_loss[{loss}]"
        yield heatmap, {"reduction": "mean"}, \
            lambda: (torch.randn(512, requires_grad=True), torch.zeros(1))
    every_loss = [(fl.huber_loss, {"delta": 0.5}), (fl.smooth_l1_loss, {"beta": 0.5}),
                  (fl.l1_loss, {}), (fl.mse_loss, {}), (fl.shrinkage_loss, {}),
                  (fl.sigmoid_focal_loss, {}), (fl.sigmoid_focal_loss, {"from_logits": False}),
                  (fl.quality_focal_loss, {}), (fl.quality_focal_loss, {"from_logits": False}),
                  (fl.varifocal_loss, {}), (fl.varifocal_loss, {"from_logits": False})]
    for fn, params in every_loss:  # each loss's math: scalar and "none", fp32 and bf16
        yield fn, dict(params, reduction="mean"), lambda: xt()
        yield fn, dict(params, reduction="none"), lambda: xt(xd=bf16, td=bf16)
    h = fl.huber_loss
    one = torch.ones(())
    yield h, {"reduction": "weighted_mean", "weight": torch.rand(64, 8) > 0.5}, lambda: xt()
    yield h, {"reduction": "weighted_mean", "weight": torch.rand(1, 8)}, lambda: xt()
    yield h, {"reduction": "mean", "avg_factor": torch.tensor(3), "loss_weight": one * 0.5}, lambda: xt(xd=f16, td=f32)
    yield h, {"reduction": "sum", "weight": torch.randint(0, 3, (4, 1, 8), dtype=torch.uint8)}, \
        lambda: xt((5, 4, 6, 8), t_shape=(4, 6, 8))
    yield h, {"reduction": "mean"}, lambda: xt((1,))  # n == 1
    yield h, {"reduction": "mean"}, lambda: xt(xd=f64, td=f64)
    yield h, {"reduction": "none", "weight": torch.rand(64, 1)}, lambda: xt(xd=f16, td=f16, t_shape=(8,))
    yield fl.sigmoid_focal_loss, {"reduction": "sum"}, \
        lambda: (torch.randn(64, 8, requires_grad=True), torch.randint(0, 9, (64,)))
    yield fl.sigmoid_focal_loss, {"reduction": "mean", "weight": torch.rand(64, 1)}, \
        lambda: (torch.randn(64, 8, dtype=bf16, requires_grad=True), torch.randint(0, 9, (64,), dtype=torch.int32))


def scenarios():
    """The users' layouts of ``gpuproxy sass`` at the GPU's default block (4096): (label,
    forward + backward through the public API, contiguous operands whose loads must be 16-byte
    vectors: their count per thread)."""
    f32, bf16 = torch.float32, torch.bfloat16

    def leaf(*shape, dtype=f32):
        return torch.randn(*shape, dtype=dtype).requires_grad_(True)

    def cotracker(points):
        iter_w = (0.8 ** torch.arange(3, -1, -1.0)).view(4, 1, 1, 1, 1)
        vis = torch.rand(8, 8, points, 1) > 0.3
        fl.huber_loss(leaf(4, 8, 8, points, 2), torch.randn(8, 8, points, 2), "weighted_mean",
                      delta=6.0, weight=iter_w * vis).backward()

    def focal_labels(rows):
        fl.sigmoid_focal_loss(leaf(rows, 80), torch.randint(0, 81, (rows,)), reduction="mean",
                              avg_factor=torch.tensor(100.0)).backward()

    def dlc():
        kp_w = (torch.rand(8, 17, 1, 1) > 0.1).float()
        fl.mse_loss(leaf(8, 17, 64, 64), torch.rand(8, 17, 64, 64), "mean", weight=kp_w,
                    avg_factor=torch.tensor(1000.0)).backward()

    def heatmaps(instances, loss="mse", width=64, **kw):
        kp = torch.rand(8, 17, instances, 2) * 256
        vis = torch.randint(-1, 2, (8, 17, instances)).float()
        fl.heatmap_loss(leaf(8, 17, 64, width), kp, vis, sigma=11.3, stride=4.0, offset=2.0,
                        loss=loss, weight=torch.rand(8, 17, 1, 1), **kw).backward()

    n = 1 << 20
    def yolo_like(mode):  # 8400 anchors x 16 images, boxes (B, A, 4); DFL over 16 bins
        c, wh = torch.rand(16, 8400, 2) * 80, torch.rand(16, 8400, 2) * 10
        b = torch.cat([c - wh, c + wh], -1)
        fl.box_iou_loss(leaf(16, 8400, 4), b, mode, "sum", weight=torch.rand(16, 8400)).backward()

    yield "boxes ciou (16, 8400)", lambda: yolo_like("ciou"), 1
    yield "boxes giou (16, 8400)", lambda: yolo_like("giou"), 1
    def yolo_box(dtype):  # ultralytics' box loss: (16, 8400) anchors x 4 sides x 16 bins
        anchors = torch.rand(8400, 2) * 80
        c, wh = anchors + torch.randn(16, 8400, 2), torch.rand(16, 8400, 2) * 10 + 1
        scores = torch.rand(16, 8400) * (torch.rand(16, 8400) < 0.1)
        l_iou, l_dfl = fl.box.yolo_box_loss(leaf(16, 8400, 64, dtype=dtype), anchors,
                                            torch.cat([c - wh, c + wh], -1), scores,
                                            scores.sum().clamp_min(1), loss_weight=(7.5, 1.5))
        ((l_iou + l_dfl) * 16).backward()

    def dice(shape, dtype=f32, **kw):  # segmentation: logits (B, C, *spatial), class labels
        labels = torch.randint(0, shape[1], (shape[0],) + shape[2:])
        fl.dice_loss(leaf(*shape, dtype=dtype), labels, activation="softmax", **kw).backward()

    # C = 21 fp32: a pixel's 21 channels per thread, one 4-byte load per channel (the warp's
    # 32 pixels of a channel: 128 coalesced bytes); the in-flight rule applies instead
    yield "dice softmax (8, 21, 512, 512)", lambda: dice((8, 21, 512, 512)), 0
    yield "dice softmax bf16 (2, 3, 128^3)", lambda: dice((2, 3, 128, 128, 128), bf16), 1
    yield "yolo box loss fp32 (16, 8400, 64)", lambda: yolo_box(f32), 1
    yield "yolo box loss bf16 (16, 8400, 64)", lambda: yolo_box(bf16), 1
    yield "dfl (16*8400*4, 16)", lambda: fl.distribution_focal_loss(
        leaf(16 * 8400, 4, 16), torch.rand(16 * 8400, 4) * 14.9).backward(), 2
    yield "heatmap mse A=1", lambda: heatmaps(1), 4
    yield "heatmap mse A=10", lambda: heatmaps(10), 4
    yield "heatmap gaussian focal logits A=1", lambda: heatmaps(1, "gaussian_focal",
                                                                from_logits=True), 4
    yield "heatmap shrinkage A=2 odd width", lambda: heatmaps(2, "shrinkage", width=63), 0
    yield "huber fp32 2^20", lambda: fl.huber_loss(leaf(n), torch.randn(n)).backward(), 8
    yield "huber fp32 odd", lambda: fl.huber_loss(leaf(n - 3), torch.randn(n - 3)).backward(), 8
    yield "huber bf16 2^20", lambda: fl.huber_loss(leaf(n, dtype=bf16),
                                                   torch.randn(n, dtype=bf16)).backward(), 4
    yield "focal float t (8192,128)", lambda: fl.sigmoid_focal_loss(
        leaf(8192, 128), (torch.rand(8192, 128) > 0.99).float(), reduction="mean").backward(), 8
    yield "focal labels (16384,80)", lambda: focal_labels(16384), 4
    yield "focal labels (16383,80) odd", lambda: focal_labels(16383), 4
    yield "CoTracker I=4", lambda: cotracker(4096), 4
    yield "CoTracker I=4 odd N", lambda: cotracker(4095), 4
    yield "DLC heatmaps", dlc, 8
    yield "shrinkage", lambda: fl.shrinkage_loss(leaf(n), torch.rand(n)).backward(), 8


def static_checks(vector_cases: dict) -> list:
    """Every rule of the module docstring over every compiled variant; returns the failures."""
    failures = []
    for key, kernel in COMPILED.items():
        name, constexprs, warps, case = VARIANTS[key]
        f = sass.facts(kernel.asm["cubin"])
        where = f"{name} [{case}] regs={f.registers}"
        if f.local_bytes or f.stack_bytes:
            failures.append(f"{where}: spills (local {f.local_bytes} B, stack {f.stack_bytes} B)")
        if name not in FORWARD or str(constexprs.get("ACC")) != "fp32":
            continue
        if constexprs.get("V") or constexprs.get("PIX"):
            # whole rows (V) or all of a pixel's channels (PIX) per thread: few threads, many
            # loads each
            ctas = sass.ctas_per_sm(f.registers, warps)
            in_flight = ctas * warps * 32 * sum(
                LOAD_BYTES.get(width, 4) * count for width, count in f.load_widths().items())
            if ctas < 2 or case in vector_cases and in_flight < IN_FLIGHT_BUDGET:
                failures.append(f"{where}: {ctas} CTA/SM at {warps} warps, "
                                f"{in_flight} B of loads in flight per SM (expected >= 2 "
                                f"and >= {IN_FLIGHT_BUDGET})")
        elif f.registers > REGISTER_BUDGET:
            failures.append(f"{where}: over the {REGISTER_BUDGET}-register budget "
                            f"({sass.ctas_per_sm(f.registers, warps)} CTA/SM at {warps} warps)")
        if not constexprs.get("IDX64") and f.count("CALL"):
            failures.append(f"{where}: {f.count('CALL')} CALL in the int32 body (slow path)")
        if case in vector_cases:
            wide = f.load_widths()["128"]
            if wide < vector_cases[case]:
                failures.append(f"{where}: {wide} LDG.E.128 per thread, expected >= "
                                f"{vector_cases[case]} ({dict(f.load_widths())})")
    return failures


def main() -> int:
    JITFunction.run = compile_instead_of_launch
    _engine.uses_triton = _segments.uses_triton = lambda device: True
    for one_launch in (False, True):
        for fn, kwargs, make in cases():
            CASE[0] = f"{getattr(fn, '__name__', type(fn).__name__)} {sorted(kwargs)}"
            x, t = make()
            with fl.engine_config(block=64, one_launch=one_launch):  # several programs
                loss = fn(x, t, **kwargs)
                go = torch.ones_like(loss) if loss.dim() == 0 else torch.rand_like(loss)
                needs = [v for v in (x, t) if v.requires_grad]
                torch.autograd.grad(loss, needs, go, retain_graph=True)
                torch.autograd.grad(loss, needs, go)  # the retained graph's second backward
    # the contiguous fast path moves memory in 16-byte vectors (fp32: v4.b32); a masked access
    # loses them if the runtime cannot see that n is divisible by 16 (e.g. do_not_specialize)
    x = torch.randn(1 << 20, requires_grad=True)
    fl.huber_loss(x, torch.randn(1 << 20), "mean")
    ptx = LAST_PTX["fused_loss_fwd_kernel"]
    vector_loads, scalar_loads = ptx.count("ld.global.v4.b32"), ptx.count("ld.global.b32")
    print(f"contiguous fp32 forward: {vector_loads} ld.global.v4.b32, {scalar_loads} ld.global.b32, "
          f"{ptx.count('st.global.v4.b32')} st.global.v4.b32")
    if vector_loads == 0 or scalar_loads:
        print("FAIL: the contiguous fp32 forward is not vectorised")
        return 1
    LAUNCHED.clear()
    for go in (1.0, 3.0):  # first backward (branch on grad_output) and a retained graph's second
        x.grad = None
        loss = fl.huber_loss(x, torch.randn(1 << 20), "mean")
        loss.backward(torch.tensor(go), retain_graph=True)
        loss.backward(torch.tensor(go))
    rescales = [ptx for name, ptx in LAUNCHED if name == "rescale_kernel"]
    if len(rescales) != 4 or not all("ld.global.v4.b32" in ptx for ptx in rescales):
        print("FAIL: the rescale of an fp32 gradient is not vectorised")
        return 1
    vector_cases = {}
    for label, run, wide_loads in scenarios():
        CASE[0] = label
        vector_cases[label] = wide_loads
        run()
    names = sorted({key[0] for key in COMPILED})
    print(f"compiled {len(COMPILED)} kernel variants for sm_{TARGET.arch} ({', '.join(names)}) "
          f"with triton {triton.__version__}")
    failures = static_checks(vector_cases)
    for failure in failures:
        print("FAIL:", failure)
    print(f"static checks: {len(COMPILED)} variants, {len(failures)} failures "
          f"(no spills; fp32 forward: <= {REGISTER_BUDGET} registers, no CALL when int32-indexed; "
          f"16-byte loads on contiguous operands)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
