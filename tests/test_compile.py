"""torch.compile: every registered loss traces as one graph (custom_op), values and gradients
equal eager fusedloss, and torch.library.opcheck passes. On CPU the custom op's body runs the
interpreter kernels; on a GPU the compiled Triton kernels."""
from __future__ import annotations

import pytest
import torch

import fusedloss as fl
from conftest import DEVICE, rel_err

pytestmark = pytest.mark.compile


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
