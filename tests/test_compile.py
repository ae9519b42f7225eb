"""torch.compile: every registered loss traces as one graph (custom_op), values and gradients
equal eager fusedloss, and torch.library.opcheck passes. On CPU the custom op's body runs the
interpreter kernels; on a GPU the compiled Triton kernels."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fusedloss as fl
from conftest import DEVICE, rel_err

pytestmark = pytest.mark.compile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _case(reduction):
    x = torch.randn(16, 5, device=DEVICE, requires_grad=True)
    t = torch.randn(5, device=DEVICE, requires_grad=True)  # broadcast target
    w = torch.rand(16, 1, device=DEVICE)
    kw = {"weight": w, "loss_weight": 0.5}
    if reduction == "mean":
        kw["avg_factor"] = (w.sum() * 5).clamp_min(1)  # tensor, no sync
    return x, t, kw


REDUCTIONS = ["none", "sum", "mean", "weighted_mean"]


def _losses():
    # every registered loss, called through its public function with default hyper-parameters
    import fusedloss.regression as reg
    yield "huber_loss", reg.huber_loss
    yield "l1_loss", reg.l1_loss


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,fn", list(_losses()))
def test_compiled_matches_eager(backend, reduction, name, fn):
    x, t, kw = _case(reduction)

    def step(x, t):
        out = fn(x, t, reduction, **kw)
        return out.sum() if reduction == "none" else out

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    got = compiled(x, t)
    gx, gt = torch.autograd.grad(got * 3, (x, t))
    want = step(x, t)
    wx, wt = torch.autograd.grad(want * 3, (x, t))
    assert rel_err(got, want) <= 1e-6
    assert rel_err(gx, wx) <= 1e-6 and rel_err(gt, wt) <= 1e-6


def test_inductor_matches_eager_and_one_graph():
    x, t, kw = _case("weighted_mean")

    def step(x, t):
        return fl.huber_loss(x, t, "weighted_mean", delta=0.5, **kw) + fl.mse_loss(x, t, "sum")

    explanation = torch._dynamo.explain(step)(x, t)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True)(x, t)
    gx, gt = torch.autograd.grad(got, (x, t))
    want = step(x, t)
    wx, wt = torch.autograd.grad(want, (x, t))
    assert rel_err(got, want) <= 1e-6
    assert rel_err(gx, wx) <= 1e-6 and rel_err(gt, wt) <= 1e-6


@pytest.mark.skipif(not hasattr(torch._dynamo.config, "trace_autograd_ops"),
                    reason="torch without trace_autograd_ops")
def test_whole_training_step_with_backward_inside_compiles():
    x, t, kw = _case("mean")
    weight = torch.randn(5, 5, device=DEVICE, requires_grad=True)

    def train_step(x, t):
        loss = fl.huber_loss(x @ weight, t, "mean", **kw)
        loss.backward()
        return loss.detach()

    with torch._dynamo.config.patch(trace_autograd_ops=True):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(train_step)(x.detach(), t.detach())
        assert explanation.graph_break_count == 0
        weight.grad = None
        torch._dynamo.reset()
        got = torch.compile(train_step, backend="aot_eager", fullgraph=True)(x.detach(), t.detach())
        got_grad = weight.grad.clone()
    weight.grad = None
    want = train_step(x.detach(), t.detach())
    assert rel_err(got, want) <= 1e-6 and rel_err(got_grad, weight.grad) <= 1e-6


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["huber_loss", "smooth_l1_loss", "l1_loss", "mse_loss"])
def test_opcheck(reduction, name):
    op = fl.REGISTRY[name].op
    x = torch.randn(6, 4, device=DEVICE, requires_grad=True)
    t = torch.randn(4, device=DEVICE, requires_grad=True)
    w = torch.rand(6, 1, device=DEVICE) > 0.3
    af = torch.tensor(3.0, device=DEVICE) if reduction == "mean" else None
    lw = torch.tensor(0.25, device=DEVICE)
    params = [0.7] if name in ("huber_loss", "smooth_l1_loss") else []
    result = torch.library.opcheck(op, (x, t, w, af, lw, params, reduction, None, None, True, True))
    assert all(v == "SUCCESS" for v in result.values()), result


# --------------------------------------------------------------------------- recipes, and the
# pure-PyTorch fallback (CPU without TRITON_INTERPRET) with fullgraph=True

# one training step through every loss family and every recipe; exec'd here and in a
# subprocess without TRITON_INTERPRET (where conftest cannot be imported)
STEP_CODE = '''
import torch
import fusedloss as fl
from fusedloss.recipes import cotracker as CT, deeplabcut as DLC, mmdet as MM, ultralytics as UL


def make_inputs(device):
    g = torch.Generator(device=device).manual_seed(11)

    def rn(*shape, scale=1.0):
        return torch.randn(*shape, device=device, generator=g) * scale

    def rand(*shape):
        return torch.rand(*shape, device=device, generator=g)

    leaves = {
        "preds": rn(3, 1, 4, 6, 2, scale=4), "heat": rn(2, 3, 5, 5), "scores": rn(2, 6, 4),
        "cls": rn(8, 4, scale=2), "x": rn(16, 5),
    }
    for v in leaves.values():
        v.requires_grad_(True)
    labels = torch.randint(0, 5, (8,), device=device, generator=g)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 5, (2, 6), device=device,
                                                       generator=g), 5)[..., :4]
    fixed = {
        "gt": rn(1, 4, 6, 2, scale=4), "vis": rand(1, 4, 6) > 0.3, "valid": rand(1, 4, 6).round(),
        "heat_t": rand(2, 3, 5, 5), "kp_vis": torch.randint(-1, 2, (2, 3, 2), device=device,
                                                            generator=g),
        "label": onehot, "gt_score": rand(2, 6, 1) * onehot, "labels": labels,
        "score": rand(8), "iou": rand(8, 4).round() * 0.7, "t": rn(5), "w": rand(16, 1),
    }
    return leaves, fixed


def step(preds, heat, scores, cls, x, gt, vis, valid, heat_t, kp_vis, label, gt_score, labels,
         score, iou, t, w):
    weights = DLC.heatmap_weights(kp_vis, gradient_masking=True, background_weight=0.0)
    losses = [
        fl.huber_loss(x, t, "weighted_mean", delta=0.5, weight=w, loss_weight=0.5),
        fl.mse_loss(x, t, "sum"),
        fl.smooth_l1_loss(x, t, beta=0.3),
        fl.l1_loss(x, t, "mean", weight=w, avg_factor=(w.sum() * 5).clamp_min(1)),
        fl.shrinkage_loss(x.sigmoid(), t.sigmoid()),
        fl.sigmoid_focal_loss(cls, labels, reduction="mean"),
        fl.quality_focal_loss(cls, iou),
        fl.varifocal_loss(cls, iou),
        CT.cotracker_sequence_loss(list(preds.unbind(0)), gt, vis, valid),
        CT.cotracker_sequence_loss(preds, gt, vis, occluded="huber"),
        DLC.WeightedMSECriterion()(heat, heat_t, weights),
        DLC.WeightedHuberCriterion(loss_weight=0.05)(heat, heat_t, 1.0),
        UL.VarifocalLoss()(scores, gt_score, label),
        UL.FocalLoss(alpha=0.0)(scores, label.float()),
        UL.yolo_cls_loss(scores, gt_score),
        MM.FocalLoss()(cls, labels, torch.ones_like(score), avg_factor=(labels < 4).sum()),
        MM.QualityFocalLoss()(cls, (labels, score), avg_factor=score.sum()),
        MM.VarifocalLoss()(cls, iou),
        MM.SmoothL1Loss(beta=1 / 9)(x, x.detach() + 0.1, avg_factor=16),
        MM.L1Loss()(x, x.detach() - 0.1, w),
        MM.MSELoss()(x, x.detach() * 2),
    ]
    return torch.stack(losses)
'''

FALLBACK_CODE = STEP_CODE + '''
from fusedloss import runtime
assert runtime.backend(torch.device("cpu")) == "reference"
leaves, fixed = make_inputs(torch.device("cpu"))
args = {**leaves, **fixed}
explanation = torch._dynamo.explain(step)(**args)
print("graphs", explanation.graph_count, "breaks", explanation.graph_break_count)
assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
torch._dynamo.reset()  # explain traced with the eager backend; now aot_eager, fullgraph
got = torch.compile(step, backend="aot_eager", fullgraph=True)(**args)
want = step(**args)
go = torch.rand(want.shape)
got_grads = torch.autograd.grad(got, list(leaves.values()), go)
want_grads = torch.autograd.grad(want, list(leaves.values()), go)
assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), (got, want)
for a, b in zip(got_grads, want_grads):
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
# float arguments that recompile as symbolic floats (the second and third call)
f = torch.compile(lambda x, t, d: fl.huber_loss(x, t, delta=d) + fl.shrinkage_loss(
    x.sigmoid(), t.sigmoid(), a=10 * d, c=d / 2), backend="eager", fullgraph=True)
for d in (0.5, 0.7, 0.9):
    f(args["x"], args["t"], d)
print("fallback fullgraph ok")
'''


def test_recipes_trace_as_one_graph_and_match_eager():
    namespace = {}
    exec(compile(STEP_CODE, "STEP_CODE", "exec"), namespace)
    leaves, fixed = namespace["make_inputs"](DEVICE)
    args = {**leaves, **fixed}
    step = namespace["step"]
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(step)(**args)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, \
        [b.reason for b in explanation.break_reasons]
    torch._dynamo.reset()
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(**args)
    want = step(**args)
    go = torch.rand(want.shape, device=DEVICE)
    got_grads = torch.autograd.grad(got, list(leaves.values()), go)
    want_grads = torch.autograd.grad(want, list(leaves.values()), go)
    assert rel_err(got, want) <= 1e-6
    for a, b in zip(got_grads, want_grads):
        assert rel_err(a, b) <= 1e-6


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the fallback is the CPU path without Triton")
def test_fallback_path_traces_with_no_graph_break():
    """CPU without TRITON_INTERPRET (a laptop): fusedloss.reference runs; a compiled step of
    every loss and recipe traces with 0 graph breaks (torch.result_type and math.isfinite
    were breaks) and fullgraph=True equals eager, floats recompiled as symbolic floats too."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", FALLBACK_CODE], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "graphs 1 breaks 0" in res.stdout and "fallback fullgraph ok" in res.stdout
