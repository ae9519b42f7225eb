"""``gpuproxy sass`` for the scenarios its own list does not have (heatmaps rendered in the
kernel, boxes, DFL, ultralytics' box loss). The tool's directory is read-only, so its machinery
(``sass_report.kernel_rows`` / ``estimate`` / ``print_report``) runs here over our list.

    PYTHON=.venv/bin/python python bench/gpuproxy_scenarios.py [--tool ../shared/tools/gpuproxy]

Each scenario: (label, forward + backward through the public API, the DRAM floor in bytes per
element of the main kernel's grid: each operand read once in its dtype, the gradient written
once). The figures are ESTIMATES for an H100 from sm_90 SASS (see the tool's README).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

B, A = 16, 8400  # YOLOv8 at 640 px: 8400 anchors per image


def scenarios(leaf):
    import fusedloss as fl

    def heatmap(instances, loss="mse", height=64, **kw):
        kp = torch.rand(64, 17, instances, 2) * 256
        vis = torch.randint(-1, 2, (64, 17, instances)).float()
        w = (vis.amax(-1) >= 0).float().view(64, 17, 1, 1)
        return lambda: fl.heatmap_loss(leaf(64, 17, height, 64), kp, vis, sigma=11.3, stride=4.0,
                                       offset=2.0, loss=loss, weight=w,
                                       avg_factor=torch.tensor(1000.0), **kw).backward()

    def boxes(mode, dtype=torch.float32):
        c, wh = torch.rand(B, A, 2) * 80, torch.rand(B, A, 2) * 10
        b = torch.cat([c - wh, c + wh], -1).to(dtype)
        return lambda: fl.box_iou_loss(leaf(B, A, 4, dtype=dtype), b, mode, "sum",
                                       weight=torch.rand(B, A)).backward()

    def yolo(dtype):
        anchors = torch.rand(A, 2) * 80
        c, wh = anchors + torch.randn(B, A, 2), torch.rand(B, A, 2) * 10 + 1
        scores = torch.rand(B, A) * (torch.rand(B, A) < 0.1)

        def run():
            l_iou, l_dfl = fl.box.yolo_box_loss(leaf(B, A, 64, dtype=dtype), anchors,
                                                torch.cat([c - wh, c + wh], -1), scores,
                                                scores.sum().clamp_min(1), loss_weight=(7.5, 1.5))
            ((l_iou + l_dfl) * B).backward()
        return run

    def dice(shape, dtype=torch.float32, grad=True, bce=False):
        labels = torch.randint(0, shape[1], (shape[0],) + shape[2:])
        mask = (torch.rand(shape) > 0.7).to(dtype)

        def run():
            x = leaf(*shape, dtype=dtype)
            if bce:
                loss = fl.bce_dice_loss(x, mask)
            else:
                loss = fl.dice_loss(x, labels, activation="softmax")
            if grad:
                loss.backward()
        return run

    # floors per element: heatmaps read the logits and write their gradient (8 B fp32; the
    # keypoints, visibility and weights are per channel); boxes per coordinate: pred 4 + target 4
    # + gradient 4 + the weight 4/4; DFL per logit: 4 + 4 + the target 4/16; YOLO per logit:
    # 4 + 4 (2 + 2 in bf16) + the target box 16/64 + the anchor 8/64 + the weight 4/64
    return [
        ("heatmap mse A=1 (64,17,64,64)", heatmap(1), 8),
        ("heatmap mse A=10", heatmap(10), 8),
        ("heatmap gaussian focal logits A=1", heatmap(1, "gaussian_focal", from_logits=True), 8),
        ("heatmap gaussian focal prob A=1", heatmap(1, "gaussian_focal"), 8),
        ("heatmap shrinkage A=1", heatmap(1, "shrinkage"), 8),
        ("heatmap mse A=1 (64,17,48,64)", heatmap(1, height=48), 8),
        ("box iou (16,8400)", boxes("iou"), 13),
        ("box giou (16,8400)", boxes("giou"), 13),
        ("box diou (16,8400)", boxes("diou"), 13),
        ("box ciou (16,8400)", boxes("ciou"), 13),
        ("box ciou bf16", boxes("ciou", torch.bfloat16), 6.5),
        ("dfl (16*8400*4, 16)", lambda: fl.distribution_focal_loss(
            leaf(B * A, 4, 16), torch.rand(B * A, 4) * 14.9).backward(), 8.25),
        # Dice, per element of (B, C, *spatial): the sums pass reads x and the int64 labels
        # (8 B per pixel = 8/C per element); the gradient pass reads both again and writes dx.
        # The tool's elements per thread count the channels padded to a power of two (CP), so
        # its floors are per padded element (x C / CP); the second figure, per real element of
        # the sums pass alone, prices its grid-stride loop body (printed after the tool's table)
        ("dice softmax fwd (8,21,512,512)", dice((8, 21, 512, 512), grad=False),
         ((4 + 8 / 21) * 21 / 32, 4 + 8 / 21)),
        ("dice softmax fwd+bwd (8,21,512,512)", dice((8, 21, 512, 512)),
         ((8 + 8 / 21) * 21 / 32, 4 + 8 / 21)),
        ("dice softmax bf16 fwd (2,3,128^3)", dice((2, 3, 128, 128, 128), torch.bfloat16,
                                                   grad=False), ((2 + 8 / 3) * 3 / 4, 2 + 8 / 3)),
        ("dice softmax bf16 fwd+bwd (2,3,128^3)", dice((2, 3, 128, 128, 128), torch.bfloat16),
         ((4 + 8 / 3) * 3 / 4, 2 + 8 / 3)),
        ("bce+dice fwd+bwd (8,1,512,512) float mask", dice((8, 1, 512, 512), bce=True), (12, 8)),
        ("yolo box loss fp32 (16,8400,4x16)", yolo(torch.float32), 8.44),
        ("yolo box loss bf16 (16,8400,4x16)", yolo(torch.bfloat16), 4.44),
    ]


def loop_estimates(rows, launches, floors, tmp, sass_report):
    """The tool counts a kernel's SASS once, so a grid-stride loop (the Dice sums pass) reads
    as nearly free. For such kernels: the loop body (the instructions between the loop's
    backward branch and its target) over the real elements one iteration covers per thread
    (C x BLOCK_S / threads: padded channels excluded), priced like the tool's estimate."""
    out = []
    for row in rows:
        kernel, consts = launches.get((row["scenario"], row["kernel"]), (None, None))
        if kernel is None or "BLOCK_S" not in consts:
            continue
        cubin = os.path.join(tmp, f"{kernel.hash}.loop.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        insns = [(int(m[1], 16), m[3], int(m[4], 16) if m[4] else -1)
                 for line in sass_report.cuobjdump("-sass", cubin).splitlines()
                 if (m := sass_report.INSN.search(line)) and m[3] != "NOP"]
        loops = [(addr - target, target, addr) for addr, op, target in insns
                 if op.startswith("BRA") and 0 <= target < addr]
        if not loops:
            continue
        _, start, end = max(loops)
        body = [op for addr, op, _ in insns if start <= addr <= end]
        threads = 32 * kernel.metadata.num_warps
        real = consts["C"] * consts["BLOCK_S"] / threads
        per = {"sass": len(body) / real}
        for pipe in ("fp32", "int", "mufu"):
            per[pipe] = sum(sass_report.pipe(op) == pipe for op in body) / real
        est = sass_report.estimate(dict(row, per_element=per), floors[row["scenario"]][1])
        out.append((row["scenario"], row["kernel"], len(body), real, per, est))
    if out:
        print("\nGrid-stride loops (the Dice sums pass): per real element of one iteration, "
              "same H100 ESTIMATE model, floor = the pass's own bytes per real element")
        print(f"{'scenario':42s} {'kernel':26s} {'body':>5s} {'el/thr':>6s} {'SASS/el':>7s} "
              f"{'fp32':>5s} {'int':>5s} {'MUFU':>5s} {'B/el':>5s}  compute/mem")
        for scenario, kernel, n_body, real, per, est in out:
            print(f"{scenario:42s} {kernel:26s} {n_body:5d} {real:6.1f} {per['sass']:7.1f} "
                  f"{per['fp32']:5.1f} {per['int']:5.1f} {per['mufu']:5.1f} "
                  f"{est['floor_bytes_per_element']:5.2f}  {est['compute_mem_ratio']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--tool", default=os.path.join(here, "..", "..", "shared", "tools",
                                                       "gpuproxy"))
    parser.add_argument("-k", default="", help="only scenarios whose label contains this")
    args = parser.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    sys.dont_write_bytecode = True  # the tool's directory is read-only
    sys.path.insert(0, os.path.abspath(args.tool))
    sys.path.insert(0, os.path.dirname(here))
    import fakegpu
    import sass_report
    from triton.runtime.jit import JITFunction

    print("#", fakegpu.force_compiled_path())
    rows, estimates, cache, launches, floors = [], [], {}, {}, {}
    real_run = JITFunction.run
    recorded = []  # (kernel, constexprs) of the scenario being run

    def run(self, *a, grid, warmup, **kwargs):  # keeps each launch's constexprs
        kernel = real_run(self, *a, grid=grid, warmup=warmup, **kwargs)
        if kernel is not None and not warmup:
            recorded.append((kernel, kwargs))
        return kernel

    JITFunction.run = run
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label, fn, floor in scenarios(sass_report.leaf):
                if args.k not in label:
                    continue
                floor, loop_floor = floor if isinstance(floor, tuple) else (floor, None)
                recorded.clear()
                with fakegpu.recording() as log:
                    fn()
                found = sass_report.kernel_rows(label, log, tmp, cache)
                rows += found
                estimates += [sass_report.estimate(r, floor) for r in found if r["main"]]
                if loop_floor is not None:
                    floors[label] = (floor, loop_floor)
                    for kernel, kwargs in recorded:
                        if kernel.name == "fused_segment_sums_kernel":
                            launches[(label, kernel.name)] = (kernel, kwargs)
            sass_report.print_report(rows, estimates)
            loop_estimates(rows, launches, floors, tmp, sass_report)
    finally:
        JITFunction.run = real_run


if __name__ == "__main__":
    main()
