"""Heatmap losses with targets rendered in the kernel from keypoints (issue 16): the renderer
against a float64 torch rendering and a transcription of DeepLabCut's generator, every loss
against float64 references (values and gradients, random grad_output and exactly 1), errors,
launches, host syncs, torch.compile."""
from __future__ import annotations

import math

import pytest
import torch

import fusedloss as fl
from fusedloss import _launch, runtime
from fusedloss.reference import heatmap as R
from conftest import DEVICE, REL_TOL, rel_err, trap_host_syncs

F64 = torch.float64


def _kp(B, K, H, W, stride, A=None, spread=1.3):
    """Keypoints (x, y) over (and a little beyond) the input image the heatmap covers."""
    shape = (B, K, 2) if A is None else (B, K, A, 2)
    scale = torch.tensor([W * stride, H * stride], dtype=F64)
    return ((torch.rand(shape, dtype=F64) * spread - (spread - 1) / 2) * scale).to(DEVICE)


def _vis(shape):
    return (torch.randint(-1, 2, shape, device=DEVICE)).float()


# ----------------------------------------------------------------- the renderer

@pytest.mark.parametrize("render", ["gaussian", "plateau"])
@pytest.mark.parametrize("A", [None, 1, 3])
@pytest.mark.parametrize("sigma,stride,offset", [(0.6, 1.0, 0.0), (4.0, 4.0, 2.0),
                                                 (30.0, 8.0, 4.0)])
def test_render_matches_float64(render, A, sigma, stride, offset):
    B, K, H, W = 2, 3, 7, 9
    kp = _kp(B, K, H, W, stride, A)
    vis = _vis(kp.shape[:-1])
    kp[vis <= 0] = float("nan")  # unlabelled: garbage coordinates must not leak
    got = fl.render_heatmaps(kp.float(), vis, (H, W), sigma, render=render, stride=stride,
                             offset=offset)
    want = R.render_heatmaps(kp, vis, (H, W), sigma, render=render, stride=stride, offset=offset)
    assert got.shape == (B, K, H, W) and got.dtype == torch.float32
    assert torch.isfinite(got).all()
    if render == "plateau":  # 0/1 decided on float32 keypoints, away from the radius exactly
        d_ok = (got.double() - want).abs() <= 1e-6
        assert float(d_ok.float().mean()) >= 0.995
    else:
        assert float((got.double() - want).abs().max()) <= 3e-7


def test_render_edge_cases():
    H, W = 6, 8
    kp = torch.tensor([[[2.0, 3.0], [7.5, 0.25], [-40.0, 3.0], [3.0, 1e4]]], device=DEVICE)
    kp = kp.view(1, 4, 1, 2).expand(1, 4, 2, 2).contiguous()  # two instances each
    kp[0, 0, 1] = torch.tensor([2.5, 3.0])  # overlapping peaks: the maximum
    vis = torch.ones(1, 4, 2, device=DEVICE)
    vis[0, 1, 1] = 0  # an instance with visibility 0 renders nothing
    maps = fl.render_heatmaps(kp, vis, (H, W), 1.0)
    want = R.render_heatmaps(kp.double(), vis, (H, W), 1.0)
    assert float((maps.double() - want).abs().max()) <= 3e-7
    assert float(maps[0, 0, 3, 2]) == 1.0  # a keypoint exactly at a pixel centre: exactly 1
    assert float(maps[0, 3].max()) == 0.0  # far outside the map: nothing, no NaN
    all_hidden = fl.render_heatmaps(kp, torch.zeros_like(vis), (H, W), 1.0)
    assert torch.equal(all_hidden, torch.zeros_like(all_hidden))
    visible_nan = kp.clone()
    visible_nan[0, 2, 0, 0] = float("nan")  # a visible NaN keypoint: NaN, as the reference
    assert torch.isnan(fl.render_heatmaps(visible_nan, vis, (H, W), 1.0)[0, 2]).all()
    single = fl.render_heatmaps(kp[..., :1, :], None, (H, 1), 2.0, stride=3.0)  # W == 1
    want1 = R.render_heatmaps(kp[..., :1, :].double(), None, (H, 1), 2.0, stride=3.0)
    assert float((single.double() - want1).abs().max()) <= 3e-7


def test_normalize_is_a_unit_sum_gaussian():
    kp = torch.tensor([[[32.3, 30.8], [34.0, 30.0]]], device=DEVICE)  # off and on a pixel centre
    maps = fl.render_heatmaps(kp, None, (16, 16), 6.0, stride=4.0, offset=2.0, normalize=True)
    for k in range(2):  # far from the borders: the sum is the unit integral
        assert abs(float(maps[0, k].sum()) - 1.0) <= 1e-4
    assert float(maps[0, 1].max()) == pytest.approx(16.0 / (2 * math.pi * 36.0), rel=1e-6)


def _dlc_generator(coords, vis, height, width, stride, std):
    """DeepLabCut's HeatmapGaussianGenerator (pose_estimation_pytorch/models/target_generators/
    heatmap_targets.py), transcribed to torch: an integer grid ``int(i * stride + stride / 2)``,
    (y, x) order, one Gaussian per visible animal, the maximum where animals overlap."""
    B, K, A = coords.shape[:3]
    heatmap = torch.zeros(B, height, width, K, dtype=F64)
    grid_y, grid_x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    grid = torch.stack([grid_y, grid_x], dim=-1).to(torch.int64)
    grid[..., 0] = (grid[..., 0] * stride + stride / 2).to(torch.int64)  # numpy int assignment
    grid[..., 1] = (grid[..., 1] * stride + stride / 2).to(torch.int64)
    grid = grid.to(F64)
    for b in range(B):
        for k in range(K):
            for a in range(A):
                if vis[b, k, a] > 0:
                    keypoint = coords[b, k, a].flip(0)  # (x, y) -> (y, x)
                    dist = torch.linalg.norm(grid - keypoint, dim=2) ** 2
                    heatmap[b, :, :, k] = torch.maximum(heatmap[b, :, :, k],
                                                        torch.exp(-dist / (2 * std ** 2)))
    return heatmap.permute(0, 3, 1, 2)


def test_matches_deeplabcut_generator():
    """offset = stride // 2 reproduces DeepLabCut's integer grid for an integer stride."""
    B, K, A, H, W, stride = 2, 4, 3, 12, 10, 8
    std = 2 * 17 / 3  # pos_dist_thresh 17, DeepLabCut's default config
    coords = _kp(B, K, H, W, stride, A).cpu()
    vis = torch.randint(-1, 2, (B, K, A))
    want = _dlc_generator(coords, vis, H, W, stride, std)
    got = fl.render_heatmaps(coords.float().to(DEVICE), vis.to(DEVICE), (H, W), std,
                             stride=float(stride), offset=float(stride // 2))
    assert float((got.double().cpu() - want).abs().max()) <= 3e-7


# ----------------------------------------------------------------- the losses

LOSS_PARAMS = {"mse": {}, "huber": {"delta": 0.3}, "shrinkage": {"a": 10.0, "c": 0.2},
               "gaussian_focal": {}}


def _case(loss, dtype, A=None, from_logits=False):
    B, K, H, W, stride = 2, 3, 8, 9, 4.0
    kp = _kp(B, K, H, W, stride, A)
    # put some keypoints exactly on pixel centres: the focal loss's positives (t == 1)
    kp[0, 0] = torch.tensor([3 * stride + 2.0, 5 * stride + 2.0], dtype=F64)
    vis = _vis(kp.shape[:-1])
    vis[0, 0] = 1
    if loss == "gaussian_focal" and not from_logits:
        pred = torch.rand(B, K, H, W, dtype=F64, device=DEVICE) * 0.98 + 0.01
    else:
        pred = torch.randn(B, K, H, W, dtype=F64, device=DEVICE)
    return pred.to(dtype), kp.float(), vis, dict(sigma=5.0, stride=stride, offset=2.0)


@pytest.mark.parametrize("loss", ["mse", "huber", "shrinkage", "gaussian_focal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction,weight,af,go", [
    ("mean", None, None, "one"), ("none", "channel", None, "random"),
    ("sum", "full", None, "random"), ("weighted_mean", "channel", None, "one"),
    ("mean", "channel", "tensor", "random"), ("mean", None, 7.0, "one")])
def test_loss_matches_float64_reference(loss, dtype, reduction, weight, af, go):
    pred, kp, vis, render = _case(loss, dtype)
    B, K, H, W = pred.shape
    w = None
    if weight == "channel":
        w = (torch.rand(B, K, 1, 1, device=DEVICE) * (torch.rand(B, K, 1, 1, device=DEVICE) > 0.3))
    elif weight == "full":
        w = torch.rand(B, K, H, W, device=DEVICE) > 0.2
    avg = (torch.tensor(11.0, device=DEVICE) if af == "tensor" else af)
    kw = dict(render, loss=loss, reduction=reduction, weight=w, avg_factor=avg, loss_weight=0.7,
              **LOSS_PARAMS[loss])
    x = pred.detach().requires_grad_(True)
    out = fl.heatmap_loss(x, kp, vis, **kw)
    x64 = pred.detach().double().requires_grad_(True)
    want = R.heatmap_loss(x64, kp.double(), vis, **kw)
    assert out.shape == want.shape
    assert out.dtype == (dtype if reduction == "none" else torch.float32)
    tol = REL_TOL[dtype]
    assert rel_err(out, want) <= tol
    g = torch.ones_like(out) if go == "one" else torch.rand_like(out) * 3
    gx, = torch.autograd.grad(out, x, g)
    gw, = torch.autograd.grad(want, x64, g.double())
    assert rel_err(gx, gw) <= tol


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("alpha,gamma", [(2.0, 4.0), (1.5, 2.5)])
def test_gaussian_focal_positives_and_both_forms(from_logits, alpha, gamma):
    """Positives (t == 1) exist and both the integer (2, 4) and the generic exponents match."""
    pred, kp, vis, render = _case("gaussian_focal", torch.float32, A=2, from_logits=from_logits)
    maps = fl.render_heatmaps(kp, vis, pred.shape[-2:], render["sigma"],
                              stride=render["stride"], offset=render["offset"])
    assert int((maps == 1).sum()) >= 1
    kw = dict(render, loss="gaussian_focal", reduction="sum", from_logits=from_logits,
              alpha=alpha, gamma=gamma)
    x = pred.detach().requires_grad_(True)
    out = fl.heatmap_loss(x, kp, vis, **kw)
    x64 = pred.detach().double().requires_grad_(True)
    want = R.heatmap_loss(x64, kp.double(), vis, **kw)
    assert rel_err(out, want) <= 2e-6
    assert rel_err(torch.autograd.grad(out, x)[0], torch.autograd.grad(want, x64)[0]) <= 2e-6


@pytest.mark.parametrize("loss", ["mse", "huber", "shrinkage", "gaussian_focal"])
def test_gradcheck_float64(loss):
    pred, kp, vis, render = _case(loss, F64, A=2, from_logits=True)
    pred = pred[:1, :2, :3, :4].contiguous().requires_grad_(True)
    kp, vis = kp[:1, :2].double(), vis[:1, :2]
    kw = dict(render, loss=loss, reduction="sum", from_logits=loss == "gaussian_focal",
              **LOSS_PARAMS[loss])
    assert torch.autograd.gradcheck(lambda p: fl.heatmap_loss(p, kp, vis, **kw), (pred,),
                                    eps=1e-6, atol=1e-6)


def test_strided_pred_and_multi_instance():
    pred, kp, vis, render = _case("mse", torch.float32, A=4)
    x = pred.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_(True)  # not contiguous
    assert not x.is_contiguous()
    out = fl.heatmap_loss(x, kp, vis, **render, reduction="sum")
    x64 = pred.double().requires_grad_(True)
    want = R.heatmap_loss(x64, kp.double(), vis, **render, reduction="sum")
    assert rel_err(out, want) <= 2e-6
    assert rel_err(torch.autograd.grad(out, x)[0], torch.autograd.grad(want, x64)[0]) <= 2e-6


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_blocks_inside_one_channel(reduction):
    """Blocks that each lie in one heatmap (H * W a multiple of the block): the channel, its
    keypoints and a per-channel weight become per-program scalars; same results."""
    B, K, H, W, stride = 2, 3, 8, 8, 4.0
    kp = _kp(B, K, H, W, stride, 2).float()
    vis = _vis(kp.shape[:-1])
    pred = torch.randn(B, K, H, W, device=DEVICE)
    w = torch.rand(K, 1, 1, device=DEVICE)  # per channel, broadcast over b
    kw = dict(sigma=5.0, stride=stride, offset=2.0, loss="huber", reduction=reduction, weight=w)
    x64 = pred.double().requires_grad_(True)
    want = R.heatmap_loss(x64, kp.double(), vis, **kw)
    g = torch.rand_like(want)
    want_g, = torch.autograd.grad(want, x64, g)
    for block in (64, 128):  # one heatmap per block, and two
        with fl.engine_config(block=block):
            x = pred.clone().requires_grad_(True)
            out = fl.heatmap_loss(x, kp, vis, **kw)
            gx, = torch.autograd.grad(out, x, g.float())
        assert rel_err(out, want) <= 2e-6 and rel_err(gx, want_g) <= 2e-6


def test_deeplabcut_count_nonzero_normaliser_on_the_device():
    pred, kp, vis, render = _case("mse", torch.float32)
    B, K, H, W = pred.shape
    w = (vis >= 0).float().view(B, K, 1, 1)  # not-labelled heatmaps weigh 0
    count = ((w != 0).sum() * H * W).clamp_min(1)
    x = pred.detach().requires_grad_(True)
    out = fl.heatmap_loss(x, kp, vis, **render, weight=w, avg_factor=count)
    t = R.render_heatmaps(kp.double(), vis, (H, W), **render)
    x64 = pred.detach().double().requires_grad_(True)
    want = (((x64 - t) ** 2) * w.double()).sum() / count.double()  # DeepLabCut's criterion
    assert rel_err(out, want) <= 2e-6
    assert rel_err(torch.autograd.grad(out, x)[0], torch.autograd.grad(want, x64)[0]) <= 2e-6


def test_module_matches_functional():
    pred, kp, vis, render = _case("huber", torch.float32)
    module = fl.HeatmapLoss(loss="huber", delta=0.3, **render)
    assert torch.equal(module(pred, kp, vis), fl.heatmap_loss(pred, kp, vis, loss="huber",
                                                              delta=0.3, **render))
    assert "huber" in repr(module)


# ----------------------------------------------------------------- launches, bytes, syncs

def test_no_target_tensor_is_read_and_one_launch(monkeypatch):
    """The rendered driver's only full-size arguments are pred and what it writes."""
    pred, kp, vis, render = _case("mse", torch.float32)
    seen = []
    real = _launch.KernelLauncher.__call__

    def spy(self, grid, key, ptrs, *args):
        seen.append((self.name, [p for p in ptrs if p is not None]))
        return real(self, grid, key, ptrs, *args)

    monkeypatch.setattr(_launch.KernelLauncher, "__call__", spy)
    x = pred.detach().requires_grad_(True)
    before = runtime.launch_counts()
    fl.heatmap_loss(x, kp, vis, **render).backward()
    after = runtime.launch_counts()
    launched = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    assert launched == {"fused_loss_fwd_rendered_kernel": 1, "rescale_kernel": 1}
    name, ptrs = seen[0]
    assert name == "fused_loss_fwd_rendered_kernel"
    big = [p for p in ptrs if p.numel() >= pred.numel()]
    assert len(big) == 2 and big[0] is x  # pred read, the gradient written: no target
    assert all(p.numel() <= kp.numel() for p in ptrs if p.numel() < pred.numel() and p.dim())


def test_no_host_sync(monkeypatch):
    pred, kp, vis, render = _case("gaussian_focal", torch.float32)
    x = pred.detach().requires_grad_(True)
    af = torch.tensor(5.0, device=DEVICE)
    calls = trap_host_syncs(monkeypatch)
    loss = fl.heatmap_loss(x, kp, vis, **render, loss="gaussian_focal", avg_factor=af,
                           loss_weight=torch.tensor(0.5, device=DEVICE))
    loss.backward(torch.tensor(2.0, device=DEVICE))
    monkeypatch.undo()
    assert calls == []


@pytest.mark.compile
def test_compile_fullgraph_matches_eager():
    pred, kp, vis, render = _case("huber", torch.float32)
    x = pred.detach().requires_grad_(True)

    def step(p):
        return fl.heatmap_loss(p, kp, vis, **render, loss="huber", delta=0.3, loss_weight=0.5)

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = compiled(x)
    g_got, = torch.autograd.grad(got * 3, x)
    want = step(x)
    g_want, = torch.autograd.grad(want * 3, x)
    assert rel_err(got, want) <= 1e-6 and rel_err(g_got, g_want) <= 1e-6


# ----------------------------------------------------------------- errors before kernels

@pytest.mark.parametrize("call,error,match", [
    (lambda p, k, v: fl.heatmap_loss(p, k[:, :2], v, sigma=2.0), ValueError, "keypoints"),
    (lambda p, k, v: fl.heatmap_loss(p, k, v, sigma=0.0), ValueError, "sigma"),
    (lambda p, k, v: fl.heatmap_loss(p, k, v, sigma=2.0, render="disk"), ValueError, "render"),
    (lambda p, k, v: fl.heatmap_loss(p, k, v, sigma=2.0, loss="l1"), ValueError, "loss"),
    (lambda p, k, v: fl.heatmap_loss(p, k, v[:, :2], sigma=2.0), ValueError, "visibility"),
    (lambda p, k, v: fl.heatmap_loss(p, k.requires_grad_(True), v, sigma=2.0), TypeError,
     "keypoints"),
    (lambda p, k, v: fl.heatmap_loss(p, k, v, sigma=2.0, render="plateau", normalize=True),
     ValueError, "normalize"),
    (lambda p, k, v: fl.heatmap_loss(p, k, v, sigma=2.0, from_logits=True), ValueError,
     "from_logits"),
    (lambda p, k, v: fl.heatmap_loss(p, k, v, sigma=2.0, loss="huber", beta=1.0), TypeError,
     "beta"),
    (lambda p, k, v: fl.heatmap_loss(p[0], k, v, sigma=2.0), ValueError, "pred"),
])
def test_bad_inputs_raise_before_any_kernel(call, error, match):
    pred, kp, vis, _ = _case("mse", torch.float32)
    before = sum(runtime.launch_counts().values())
    with pytest.raises(error, match=match):
        call(pred, kp, vis)
    assert sum(runtime.launch_counts().values()) == before
