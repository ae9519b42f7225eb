"""fusedloss.recipes: each recipe against a plain-torch transcription of its user's code.

The transcriptions below are written from the upstream files (read with the search tool, never
imported): facebookresearch/co-tracker ``cotracker/models/core/cotracker/losses.py`` (CoTracker3
``sequence_loss``, ``reduce_masked_mean``, ``huber_loss``) and ``train_on_kubric.py`` (the 0.05 /
0.01 terms); DeepLabCut ``pose_estimation_pytorch/models/criterions/weighted.py`` and
``criterions/utils.py`` (``count_nonzero_elems``); ultralytics ``ultralytics/utils/loss.py``
(``VarifocalLoss``, ``FocalLoss``, ``v8DetectionLoss``'s BCE term); open-mmlab/mmdetection 3.x
``mmdet/models/losses`` (``utils.weight_reduce_loss``, ``focal_loss``, ``gfocal_loss``,
``varifocal_loss``, ``smooth_l1_loss``, ``mse_loss``). They run in float64 on the same input
values; values and gradients are compared by norm-relative error, driven by grad_output 1 and
a random grad_output.
"""
from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

import fusedloss as fl
from conftest import DEVICE, REL_TOL, rel_err, trap_host_syncs
from _cases import pairwise
from fusedloss import recipes
from fusedloss.recipes import cotracker as CT, deeplabcut as DLC, mmdet as MM, ultralytics as UL

F64 = torch.float64
# the interpreter evaluates masked-off lanes too (log(0) there): numpy warns
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _tol(dtype: torch.dtype) -> float:
    return REL_TOL[dtype]


def _go(kind: str) -> torch.Tensor:
    if kind == "one":
        return torch.ones((), device=DEVICE)
    return (torch.rand((), device=DEVICE) + 0.5) * 3


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(F64).requires_grad_(t.requires_grad)


def _check(got, want, inputs, inputs64, go_kind):
    """Values (float32 math: 2e-6; float64 inputs: 1e-12, which sees every eps) and input
    gradients (each input's dtype) vs the float64 transcription."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    value_dtype = F64 if all(x.dtype == F64 for x in inputs) else torch.float32
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert rel_err(g, w) <= _tol(value_dtype), (g, w)
    gos = [_go(go_kind) for _ in got]
    grads = torch.autograd.grad(got, inputs, [g.to(x.dtype) for g, x in zip(gos, got)])
    grads64 = torch.autograd.grad(want, inputs64, [g.to(F64) for g in gos])
    for x, g, g64 in zip(inputs, grads, grads64):
        assert g.dtype == x.dtype and g.shape == x.shape
        assert rel_err(g, g64) <= _tol(x.dtype), rel_err(g, g64)
    return grads


# =========================================================================== CoTracker3

def _ct_huber(x, y, delta):
    """co-tracker losses.py ``huber_loss``: flag on |d| <= delta."""
    diff = x - y
    abs_diff = diff.abs()
    flag = (abs_diff <= delta).to(diff.dtype)
    return flag * 0.5 * diff ** 2 + (1 - flag) * delta * (abs_diff - 0.5 * delta)


def _ct_reduce_masked_mean(x, mask):
    mask = mask.expand_as(x)
    return torch.sum(x * mask) / (1e-6 + torch.sum(mask))


def _ct_sequence_loss(flow_preds, flow_gt, valids, vis, gamma, add_huber_loss, delta):
    """co-tracker ``sequence_loss`` for one window, ``loss_only_for_visible=True``."""
    n_predictions = len(flow_preds)
    flow_loss = 0.0
    for i in range(n_predictions):
        i_weight = gamma ** (n_predictions - i - 1)
        if add_huber_loss:
            i_loss = _ct_huber(flow_preds[i], flow_gt, delta)
        else:
            i_loss = (flow_preds[i] - flow_gt).abs()
        i_loss = torch.mean(i_loss, dim=3)
        valid_ = valids.clone() * vis
        flow_loss = flow_loss + i_weight * _ct_reduce_masked_mean(i_loss, valid_)
    return flow_loss / n_predictions


def _ct_upstream(preds, gt, vis, valid, gamma=0.8, delta=6.0, wv=0.05, wo=0.01,
                 visible="huber", occluded="l1"):
    """train_on_kubric.py: 0.05 * visible term + 0.01 * occluded term (vis, valid as floats)."""
    vis = vis.to(F64)
    valid = torch.ones_like(vis) if valid is None else valid.to(F64)
    l_vis = _ct_sequence_loss(preds, gt, valid, vis, gamma, visible == "huber", delta)
    l_occ = _ct_sequence_loss(preds, gt, valid, 1 - vis, gamma, occluded == "huber", delta)
    return l_vis.mean() * wv, l_occ.mean() * wo


CT_FACTORS = {
    "iters": [1, 4],
    "dtype": [torch.float32, torch.bfloat16, F64],
    "container": ["list", "tensor"],
    "kinds": [("huber", "l1"), ("huber", "huber"), ("l1", "l1")],
    "valid": [None, "float", "bool"],
    "vis": ["bool", "float"],
    "return_terms": [False, True],
    "go": ["one", "random"],
}


@pytest.mark.parametrize("case", pairwise(CT_FACTORS),
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()).replace(
                             "torch.", ""))
def test_cotracker_matches_upstream(case):
    I, B, T, N = case["iters"], 2, 5, 7
    # spread beyond delta = 6 so both Huber branches occur
    preds = [(torch.randn(B, T, N, 2, device=DEVICE) * 6).to(case["dtype"]) for _ in range(I)]
    gt = torch.randn(B, T, N, 2, device=DEVICE) * 6  # fp32 ground truth
    vis = torch.rand(B, T, N, device=DEVICE) > 0.3
    vis = vis if case["vis"] == "bool" else vis.float()
    valid = None
    if case["valid"] is not None:
        valid = torch.rand(B, T, N, device=DEVICE) > 0.2
        valid = valid if case["valid"] == "bool" else valid.float()
    visible, occluded = case["kinds"]
    if case["container"] == "list":
        leaves = [_leaf(p) for p in preds]
        arg = leaves
    else:
        leaves = [_leaf(torch.stack(preds))]
        arg = leaves[0]
    leaves64 = [_f64(x) for x in leaves]
    preds64 = leaves64 if case["container"] == "list" else list(leaves64[0])
    got = CT.cotracker_sequence_loss(arg, gt, vis, valid, gamma=0.8, delta=6.0,
                                     visible=visible, occluded=occluded,
                                     return_terms=case["return_terms"])
    v64, o64 = _ct_upstream(preds64, gt.to(F64), vis, valid, visible=visible, occluded=occluded)
    want = (v64, o64) if case["return_terms"] else v64 + o64
    assert (got[0] if case["return_terms"] else got).dtype == (
        F64 if case["dtype"] == F64 else torch.float32)
    _check(got, want, leaves, leaves64, case["go"])


@pytest.mark.parametrize("empty", ["vis", "occluded", "valid"])
@pytest.mark.parametrize("kinds", [("huber", "l1"), ("huber", "huber")])
def test_cotracker_empty_masks(empty, kinds):
    """An empty mask: upstream's 1e-6 keeps 0 / 1e-6 = 0; ours gives exactly 0 and zero grads."""
    I, B, T, N = 4, 1, 3, 5
    preds = [_leaf(torch.randn(B, T, N, 2, device=DEVICE, dtype=torch.bfloat16) * 4)
             for _ in range(I)]
    gt = torch.randn(B, T, N, 2, device=DEVICE) * 4
    vis = {"vis": torch.zeros(B, T, N), "occluded": torch.ones(B, T, N),
           "valid": torch.rand(B, T, N).round()}[empty].to(DEVICE)
    valid = torch.zeros(B, T, N, device=DEVICE) if empty == "valid" else None
    got = CT.cotracker_sequence_loss(preds, gt, vis, valid, visible=kinds[0], occluded=kinds[1],
                                     return_terms=kinds[0] != kinds[1])
    preds64 = [_f64(p) for p in preds]
    want = _ct_upstream(preds64, gt.to(F64), vis, valid, visible=kinds[0], occluded=kinds[1])
    if kinds[0] != kinds[1]:
        zero_terms = {"vis": [0], "occluded": [1], "valid": [0, 1]}[empty]
        for k in zero_terms:
            assert float(got[k].detach()) == 0.0 and float(want[k].detach()) == 0.0
    else:
        want = want[0] + want[1]
    grads = _check(got, want, preds, preds64, "random")
    if empty == "valid":
        assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_cotracker_one_launch_per_iteration_and_term():
    """list preds: 2 I fused forward launches (Huber + L1), I when both terms are Huber; the
    backward is one no-pass rescale per fused launch; no stack of the predictions."""
    I = 4
    preds = [_leaf(torch.randn(1, 3, 8, 2, device=DEVICE)) for _ in range(I)]
    gt = torch.randn(1, 3, 8, 2, device=DEVICE)
    vis = torch.rand(1, 3, 8, device=DEVICE) > 0.5
    for kinds, fused in ((("huber", "l1"), 2 * I), (("huber", "huber"), I)):
        step = (lambda k=kinds: CT.cotracker_sequence_loss(preds, gt, vis, visible=k[0],
                                                           occluded=k[1]).backward())
        step()
        for p in preds:
            p.grad = None
        count = recipes.count_launches(step)
        forward = sum(v for k, v in count.ops.items() if k.startswith("fusedloss:fused_loss_fwd"))
        assert forward == fused, count.ops
        assert count.ops["fusedloss:rescale_kernel"] == fused, count.ops
        assert "aten::stack" not in count.ops or count.ops["aten::stack"] == 1  # the 2I scalars
        assert "aten::cat" not in count.ops


# =========================================================================== DeepLabCut

def _dlc_count_nonzero_elems(losses, weights):
    """DeepLabCut criterions/utils.py ``count_nonzero_elems`` (per_batch=False)."""
    if isinstance(weights, float):
        return losses.numel() if weights != 0.0 else torch.tensor(0)
    weights = torch.as_tensor(weights, dtype=torch.float32)
    present = torch.where(weights == 0.0, torch.zeros_like(weights), torch.ones_like(weights))
    return torch.sum(present.expand_as(losses))


def _dlc_weighted(criterion, output, target, weights=1.0):
    """DeepLabCut ``WeightedCriterion.forward``."""
    loss = criterion(output, target)
    n_elems = _dlc_count_nonzero_elems(loss, weights)
    if n_elems == 0:
        n_elems = 1
    return torch.sum(loss * weights) / n_elems


DLC_CRITERIONS = {
    "mse": (DLC.WeightedMSECriterion, torch.nn.MSELoss(reduction="none")),
    "huber": (DLC.WeightedHuberCriterion, torch.nn.HuberLoss(reduction="none")),
}


@pytest.mark.parametrize("kind", ["mse", "huber"])
@pytest.mark.parametrize("weights,dtype,go", [
    ("keypoint", torch.float32, "one"), ("keypoint", torch.bfloat16, "random"),
    ("int_mask", torch.float32, "random"), ("zeros", torch.float32, "one"),
    (1.0, torch.bfloat16, "one"), (0.0, torch.float32, "random"), (0.5, torch.float32, "random"),
    ("bool_mask", torch.float16, "one"),
])
def test_deeplabcut_criterions_match_upstream(kind, weights, dtype, go):
    B, K, H, W = 2, 5, 6, 7
    out = _leaf((torch.randn(B, K, H, W, device=DEVICE) * 2).to(dtype))
    target = torch.rand(B, K, H, W, device=DEVICE)
    if weights == "keypoint":  # per-heatmap weights from visibility, some 0
        w = (torch.rand(B, K, 1, 1, device=DEVICE) > 0.3).float() * 0.7
    elif weights == "int_mask":  # the locref mask: integer, full size
        w = torch.randint(0, 2, (B, K, H, W), device=DEVICE)
    elif weights == "bool_mask":
        w = torch.rand(B, K, H, W, device=DEVICE) > 0.5
    elif weights == "zeros":  # n == 0 -> n = 1
        w = torch.zeros(B, K, 1, 1, device=DEVICE)
    else:
        w = weights
    module, criterion = DLC_CRITERIONS[kind]
    got = module()(out, target, w, extra_kwarg_ignored=1)
    out64 = _f64(out)
    w64 = w.to(F64) if isinstance(w, torch.Tensor) and w.dtype == torch.bool else w
    want = _dlc_weighted(criterion, out64, target.to(F64), w64)
    if weights in ("zeros", 0.0):
        assert float(got) == 0.0 and float(want) == 0.0
        g, = torch.autograd.grad(got, out)
        assert torch.count_nonzero(g) == 0
        return
    _check(got, want, [out], [out64], go)


def test_deeplabcut_loss_weight_folds_the_aggregator_factor():
    out = _leaf(torch.randn(2, 4, 5, 5, device=DEVICE))
    target = torch.randn(2, 4, 5, 5, device=DEVICE)
    mask = torch.randint(0, 2, (2, 4, 5, 5), device=DEVICE)
    got = DLC.WeightedHuberCriterion(loss_weight=0.05)(out, target, mask)
    out64 = _f64(out)
    want = 0.05 * _dlc_weighted(torch.nn.HuberLoss(reduction="none"), out64, target.to(F64), mask)
    _check(got, want, [out], [out64], "one")


def _dlc_heatmap_weights_reference(vis, gradient_masking, background_weight):
    """Per (sample, keypoint), animal by animal: DeepLabCut's per-keypoint rule (-1 masks,
    0 -> background_weight under gradient masking, > 0 visible) with the multi-animal fix: the
    heatmap is masked only when no animal has the keypoint labelled."""
    v3 = vis if vis.dim() == 3 else vis.unsqueeze(-1)
    B, K, A = v3.shape
    out = torch.ones(B, K, 1, 1)
    for b in range(B):
        for k in range(K):
            values = [float(v) for v in v3[b, k]]
            if any(v > 0 for v in values):
                w = 1.0
            elif any(v == 0 for v in values):
                w = background_weight if gradient_masking else 1.0
            else:  # every animal -1 (not labelled), or no animal
                w = 0.0
            out[b, k] = w
    return out


@pytest.mark.parametrize("animals", [None, 1, 3, 0])
@pytest.mark.parametrize("gradient_masking,background_weight", [(False, 0.0), (True, 0.0),
                                                                (True, 0.3)])
def test_heatmap_weights(animals, gradient_masking, background_weight):
    shape = (4, 6) if animals is None else (4, 6, animals)
    vis = torch.randint(-1, 2, shape, device=DEVICE)
    if animals == 3:
        vis[0, 0] = torch.tensor([1, -1, -1])   # one animal labelled: not masked
        vis[0, 1] = torch.tensor([-1, -1, -1])  # none labelled: masked
        vis[0, 2] = torch.tensor([0, -1, 0])
        vis = vis.float()
    got = DLC.heatmap_weights(vis, gradient_masking=gradient_masking,
                              background_weight=background_weight)
    want = _dlc_heatmap_weights_reference(vis.cpu(), gradient_masking, background_weight)
    assert got.dtype == torch.float32 and got.shape == (4, 6, 1, 1)
    assert torch.equal(got.cpu(), want)


# =========================================================================== ultralytics

def _ul_varifocal(pred_score, gt_score, label, gamma=2.0, alpha=0.75):
    """ultralytics ``VarifocalLoss.forward`` (autocast off; .float() -> float64 here)."""
    weight = alpha * pred_score.sigmoid().pow(gamma) * (1 - label) + gt_score * label
    return (F.binary_cross_entropy_with_logits(pred_score.to(F64), gt_score.to(F64),
                                               reduction="none") * weight).mean(1).sum()


def _ul_focal(pred, label, gamma=1.5, alpha=0.25):
    """ultralytics ``FocalLoss.forward`` (alpha as a tensor: applied only if alpha > 0)."""
    loss = F.binary_cross_entropy_with_logits(pred, label, reduction="none")
    pred_prob = pred.sigmoid()
    p_t = label * pred_prob + (1 - label) * (1 - pred_prob)
    loss = loss * (1.0 - p_t) ** gamma
    alpha = torch.tensor(alpha)
    if (alpha > 0).any():
        alpha = alpha.to(device=pred.device, dtype=pred.dtype)
        loss = loss * (label * alpha + (1 - label) * (1 - alpha))
    return loss.mean(1).sum()


def _ul_cls(pred_scores, target_scores):
    """ultralytics v8DetectionLoss: bce(pred, target).sum() / max(target_scores.sum(), 1)."""
    target_scores_sum = max(target_scores.sum(), 1)
    return F.binary_cross_entropy_with_logits(pred_scores, target_scores,
                                              reduction="none").sum() / target_scores_sum


def _rtdetr_targets(shape, zero_iou=True):
    """RT-DETR's classification targets: int64 one-hot of the matched class per query and the
    IoU at it (some matched queries with IoU exactly 0)."""
    *lead, C = shape
    cls = torch.randint(0, C + 1, tuple(lead), device=DEVICE)  # C: unmatched
    label = F.one_hot(cls, C + 1)[..., :C]
    iou = torch.rand(tuple(lead) + (1,), device=DEVICE)
    if zero_iou:
        iou.view(-1)[::3] = 0.0
    return iou * label, label


@pytest.mark.parametrize("shape", [(12, 5), (2, 9, 4)])
@pytest.mark.parametrize("dtype,go", [(torch.float32, "one"), (torch.bfloat16, "random"),
                                      (torch.float16, "one")])
def test_ultralytics_varifocal_matches_upstream(shape, dtype, go):
    pred = _leaf((torch.randn(shape, device=DEVICE) * 2).to(dtype))
    gt, label = _rtdetr_targets(shape)
    assert ((label == 1) & (gt == 0)).any()  # the case a label-free VFL gets wrong
    got = UL.VarifocalLoss()(pred, gt, label)
    pred64 = _f64(pred)
    want = _ul_varifocal(pred64, gt.to(F64), label)
    assert got.dtype == torch.float32
    _check(got, want, [pred], [pred64], go)


def test_ultralytics_varifocal_zero_iou_probe():
    """A matched query with IoU 0: ultralytics gives it weight 0; the label-free varifocal loss
    treats it as a negative (the issue's 5.891 vs 5.882). The recipe matches ultralytics."""
    pred = _leaf(torch.randn(3, 20, 6, device=DEVICE) * 2)
    gt, label = _rtdetr_targets((3, 20, 6))
    want = _ul_varifocal(_f64(pred), gt.to(F64), label)
    got = UL.VarifocalLoss()(pred, gt, label)
    label_free = fl.varifocal_loss(pred, gt, 0.75, 2.0, reduction="sum") / 20
    assert rel_err(got, want) <= 2e-6
    assert rel_err(label_free, want) > 1e-4


@pytest.mark.parametrize("shape", [(12, 5), (2, 9, 4)])
@pytest.mark.parametrize("alpha,gamma,dtype,go", [(0.25, 1.5, torch.float32, "random"),
                                                  (0.0, 1.5, torch.bfloat16, "one"),
                                                  (-0.5, 2.0, torch.float32, "one"),
                                                  (0.75, 0.5, torch.float16, "random")])
def test_ultralytics_focal_matches_upstream(shape, alpha, gamma, dtype, go):
    pred = _leaf((torch.randn(shape, device=DEVICE) * 2).to(dtype))
    _, label = _rtdetr_targets(shape, zero_iou=False)
    label = label.float()
    got = UL.FocalLoss(gamma=gamma, alpha=alpha)(pred, label)
    pred64 = _f64(pred)
    want = _ul_focal(pred64, label.to(F64), gamma, alpha)
    _check(got, want, [pred], [pred64], go)


@pytest.mark.parametrize("dtype,go,scale", [(torch.float32, "one", 1.0),
                                            (torch.float16, "random", 1.0),
                                            (torch.bfloat16, "one", 0.0),
                                            (torch.float32, "random", 1e-3)])
def test_yolo_cls_loss_matches_upstream(dtype, go, scale):
    """target_scores.sum() above 1, 0 (empty image) and below 1: max(., 1) on the device."""
    pred = _leaf((torch.randn(2, 30, 6, device=DEVICE) * 3).to(dtype))
    target = torch.rand(2, 30, 6, device=DEVICE) * (torch.rand(2, 30, 6, device=DEVICE) > 0.8)
    target = target * scale
    got = UL.yolo_cls_loss(pred, target)
    pred64 = _f64(pred)
    want = _ul_cls(pred64, target.to(F64))
    _check(got, want, [pred], [pred64], go)


# =========================================================================== mmdetection

MM_EPS = torch.finfo(torch.float32).eps


def _mm_weight_reduce_loss(loss, weight=None, reduction="mean", avg_factor=None):
    """mmdet 3.x ``weight_reduce_loss``."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        return loss
    if reduction == "mean":
        return loss.sum() / (avg_factor + MM_EPS)
    if reduction != "none":
        raise ValueError('avg_factor can not be used with reduction="sum"')
    return loss


def _mm_focal_weight(weight, loss):
    if weight is not None and weight.shape != loss.shape:
        if weight.size(0) == loss.size(0):
            weight = weight.view(-1, 1)
        else:
            assert weight.numel() == loss.numel()
            weight = weight.view(loss.size(0), -1)
    return weight


def _mm_focal(pred, target, weight=None, gamma=2.0, alpha=0.25, reduction="mean",
              avg_factor=None, activated=False):
    """mmdet 3.x ``FocalLoss.forward`` -> py_sigmoid_focal_loss / py_focal_loss_with_prob
    (integer targets one-hot encoded over C + 1 classes, the last one dropped)."""
    if pred.dim() != target.dim():
        num_classes = pred.size(1)
        target = F.one_hot(target, num_classes=num_classes + 1)[:, :num_classes]
    target = target.type_as(pred)
    p = pred if activated else pred.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    if activated:
        loss = F.binary_cross_entropy(pred, target, reduction="none") * focal_weight
    else:
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    weight = _mm_focal_weight(weight, loss)
    return _mm_weight_reduce_loss(loss, weight, reduction, avg_factor)


def _mm_qfl(pred, target, weight=None, beta=2.0, reduction="mean", avg_factor=None,
            activated=False):
    """mmdet 3.x ``quality_focal_loss`` [``_with_prob``] for (label, score), and
    ``quality_focal_loss_tensor_target`` for a score tensor; per-anchor sum, then reduced."""
    bce = F.binary_cross_entropy if activated else F.binary_cross_entropy_with_logits
    pred_sigmoid = pred if activated else pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = bce(pred, zerolabel, reduction="none") * scale_factor.pow(beta)
    if isinstance(target, torch.Tensor):
        target = target.type_as(pred)
        pos = target != 0
        scale_factor = target[pos] - pred_sigmoid[pos]
        loss[pos] = bce(pred[pos], target[pos], reduction="none") * scale_factor.abs().pow(beta)
    else:
        label, score = target
        bg_class_ind = pred.size(1)
        pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
        pos_label = label[pos].long()
        scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
        loss[pos, pos_label] = bce(pred[pos, pos_label], score[pos],
                                   reduction="none") * scale_factor.abs().pow(beta)
    loss = loss.sum(dim=1, keepdim=False)
    return _mm_weight_reduce_loss(loss, weight, reduction, avg_factor)


def _mm_vfl(pred, target, weight=None, alpha=0.75, gamma=2.0, iou_weighted=True,
            reduction="mean", avg_factor=None):
    """mmdet ``varifocal_loss``."""
    pred_sigmoid = pred.sigmoid()
    target = target.type_as(pred)
    pos = (target > 0.0).to(pred.dtype)
    neg = (target <= 0.0).to(pred.dtype)
    if iou_weighted:
        focal_weight = target * pos + alpha * (pred_sigmoid - target).abs().pow(gamma) * neg
    else:
        focal_weight = pos + alpha * (pred_sigmoid - target).abs().pow(gamma) * neg
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    return _mm_weight_reduce_loss(loss, weight, reduction, avg_factor)


def _mm_regression(kind, pred, target, weight=None, reduction="mean", avg_factor=None,
                   beta=1.0):
    """mmdet smooth_l1_loss / l1_loss (empty target: pred.sum() * 0) / mse_loss."""
    if kind in ("smooth_l1", "l1") and target.numel() == 0:
        loss = pred.sum() * 0
    elif kind == "smooth_l1":
        diff = torch.abs(pred - target)
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    elif kind == "l1":
        loss = torch.abs(pred - target)
    else:
        loss = F.mse_loss(pred, target, reduction="none")
    return _mm_weight_reduce_loss(loss, weight, reduction, avg_factor)


def _avg(kind):
    if kind == "number":
        return 7
    if kind == "tensor":
        return torch.tensor(6.5, device=DEVICE)
    return None


MM_FOCAL_CASES = pairwise({
    "target": ["index", "onehot", "int_onehot"],
    "weight": [None, "anchor", "flat", "full"],
    "reduction": ["mean", "sum", "none"],
    "avg": [None, "number", "tensor"],
    "activated": [False, True],
    "dtype": [torch.float32, torch.bfloat16, F64],
    "go": ["one", "random"],
})


@pytest.mark.parametrize("case", MM_FOCAL_CASES,
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()).replace(
                             "torch.", ""))
def test_mmdet_focal_matches_upstream(case):
    if case["reduction"] == "sum" and case["avg"] is not None:
        case = dict(case, avg=None)
    N, C = 10, 4
    x = torch.randn(N, C, device=DEVICE) * 2
    pred = _leaf((x.sigmoid() if case["activated"] else x).to(case["dtype"]))
    labels = torch.randint(0, C + 1, (N,), device=DEVICE)  # C: background
    target = {"index": labels, "onehot": F.one_hot(labels, C + 1)[:, :C].float(),
              "int_onehot": F.one_hot(labels, C + 1)[:, :C]}[case["target"]]
    weight = {None: None, "anchor": torch.rand(N, device=DEVICE),
              "flat": torch.rand(N * C, device=DEVICE),
              "full": torch.rand(N, C, device=DEVICE)}[case["weight"]]
    avg = _avg(case["avg"])
    module = MM.FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.25, reduction="sum",
                          loss_weight=0.5, activated=case["activated"])
    got = module(pred, target, weight, avg_factor=avg, reduction_override=case["reduction"])
    pred64 = _f64(pred)
    want = 0.5 * _mm_focal(pred64, target.to(F64) if target.dtype.is_floating_point else target,
                           None if weight is None else weight.to(F64), 2.0, 0.25,
                           case["reduction"], avg, case["activated"])
    if case["reduction"] == "none":
        out_tol = _tol(case["dtype"])
        assert got.shape == want.shape and rel_err(got, want) <= out_tol
        g = torch.rand_like(want)
        grad, = torch.autograd.grad(got, pred, g.to(got.dtype))
        grad64, = torch.autograd.grad(want, pred64, g)
        assert rel_err(grad, grad64) <= _tol(case["dtype"])
        return
    _check(got, want, [pred], [pred64], case["go"])


@pytest.mark.parametrize("target_kind,weight,reduction,avg,activated,dtype,go", [
    ("pair", "anchor", "mean", "number", False, torch.float32, "one"),
    ("pair", None, "mean", None, False, torch.bfloat16, "random"),  # mean over the N anchors
    ("pair", "anchor", "none", "tensor", True, torch.float32, "random"),
    ("pair", None, "sum", None, True, torch.bfloat16, "one"),
    ("tensor", "anchor", "mean", "tensor", False, torch.bfloat16, "random"),
    ("tensor", None, "mean", None, True, torch.float32, "one"),
    ("tensor", "anchor", "none", None, False, torch.float32, "one"),
])
def test_mmdet_quality_focal_matches_upstream(target_kind, weight, reduction, avg, activated,
                                              dtype, go):
    N, C = 10, 4
    x = torch.randn(N, C, device=DEVICE) * 2
    pred = _leaf((x.sigmoid() if activated else x).to(dtype))
    labels = torch.randint(-1, C + 1, (N,), device=DEVICE)  # -1 ignored, C background
    score = torch.rand(N, device=DEVICE)
    if target_kind == "pair":
        target, target64 = (labels, score), (labels, score.to(F64))
    else:
        valid = (labels >= 0) & (labels < C)
        dense = F.one_hot(labels.clamp(0, C - 1), C) * (score * valid)[:, None]
        target, target64 = dense, dense.to(F64)
    w = torch.rand(N, device=DEVICE) if weight == "anchor" else None
    avg_factor = _avg(avg)
    module = MM.QualityFocalLoss(use_sigmoid=True, beta=2.0, reduction=reduction,
                                 loss_weight=2.0, activated=activated)
    got = module(pred, target, w, avg_factor=avg_factor)
    pred64 = _f64(pred)
    want = 2.0 * _mm_qfl(pred64, target64, None if w is None else w.to(F64), 2.0, reduction,
                         avg_factor, activated)
    if reduction == "none":
        assert got.shape == (N,)
        got, want = (got * torch.arange(1.0, N + 1)).sum(), (want * torch.arange(1.0, N + 1)).sum()
    _check(got, want, [pred], [pred64], go)


@pytest.mark.parametrize("iou_weighted,weight,reduction,avg,dtype,go", [
    (True, None, "mean", "tensor", torch.float32, "one"),
    (False, "full", "mean", None, torch.bfloat16, "random"),
    (True, "anchor_col", "sum", None, torch.float32, "random"),
    (True, "full", "mean", "number", torch.float16, "one"),
])
def test_mmdet_varifocal_matches_upstream(iou_weighted, weight, reduction, avg, dtype, go):
    N, C = 10, 4
    pred = _leaf((torch.randn(N, C, device=DEVICE) * 2).to(dtype))
    target = torch.rand(N, C, device=DEVICE) * (torch.rand(N, C, device=DEVICE) > 0.7)
    w = {None: None, "full": torch.rand(N, C, device=DEVICE),
         "anchor_col": torch.rand(N, 1, device=DEVICE)}[weight]
    avg_factor = _avg(avg)
    module = MM.VarifocalLoss(use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=iou_weighted,
                              reduction=reduction, loss_weight=1.5)
    got = module(pred, target, w, avg_factor)
    pred64 = _f64(pred)
    want = 1.5 * _mm_vfl(pred64, target.to(F64), None if w is None else w.to(F64), 0.75, 2.0,
                         iou_weighted, reduction, avg_factor)
    _check(got, want, [pred], [pred64], go)


@pytest.mark.parametrize("kind", ["smooth_l1", "l1", "mse"])
@pytest.mark.parametrize("weight,reduction,avg,dtype,go", [
    ("full", "mean", "number", torch.float32, "one"),
    (None, "mean", None, torch.bfloat16, "random"),
    ("full", "sum", None, torch.float32, "random"),
    ("full", "mean", "tensor", torch.float16, "one"),
])
def test_mmdet_regression_matches_upstream(kind, weight, reduction, avg, dtype, go):
    pred = _leaf((torch.randn(9, 4, device=DEVICE) * 0.3).to(dtype))
    target = torch.randn(9, 4, device=DEVICE) * 0.3
    w = torch.rand(9, 4, device=DEVICE) * (torch.rand(9, 4, device=DEVICE) > 0.3) \
        if weight else None
    avg_factor = _avg(avg)
    module = {"smooth_l1": lambda: MM.SmoothL1Loss(beta=1.0 / 9.0, loss_weight=2.0),
              "l1": lambda: MM.L1Loss(loss_weight=2.0),
              "mse": lambda: MM.MSELoss(loss_weight=2.0)}[kind]()
    got = module(pred, target, w, avg_factor=avg_factor, reduction_override=reduction)
    pred64 = _f64(pred)
    want = 2.0 * _mm_regression(kind, pred64, target.to(F64), None if w is None else w.to(F64),
                                reduction, avg_factor, beta=1.0 / 9.0)
    _check(got, want, [pred], [pred64], go)


@pytest.mark.parametrize("kind", ["smooth_l1", "l1"])
@pytest.mark.parametrize("reduction,avg", [("mean", None), ("sum", None), ("mean", "number")])
def test_mmdet_empty_target_is_zero_like_mmdet(kind, reduction, avg):
    pred = _leaf(torch.randn(0, 4, device=DEVICE))
    target = torch.randn(0, 4, device=DEVICE)
    module = MM.SmoothL1Loss(loss_weight=2.0) if kind == "smooth_l1" else MM.L1Loss(loss_weight=2.0)
    got = module(pred, target, avg_factor=_avg(avg), reduction_override=reduction)
    want = 2.0 * _mm_regression(kind, pred.double(), target.double(), None, reduction, _avg(avg))
    assert float(got) == float(want) == 0.0
    got.backward()
    assert pred.grad.shape == pred.shape


def test_mmdet_register_in_a_registry():
    class Registry(dict):  # mmengine's Registry.register_module(name, force, module)
        def register_module(self, name=None, force=False, module=None):
            if name in self and not force:
                raise KeyError(name)
            self[name] = module
    registry = Registry()
    names = MM.register(registry)
    assert names == ["Fused" + n for n in ("FocalLoss", "QualityFocalLoss", "VarifocalLoss",
                                           "SmoothL1Loss", "L1Loss", "MSELoss", "IoULoss",
                                           "GIoULoss", "DIoULoss", "CIoULoss",
                                           "DistributionFocalLoss")]
    assert registry["FusedFocalLoss"] is MM.FocalLoss
    # a config dict as mmdet builds it
    cfg = dict(type="FusedFocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
    loss = registry[cfg.pop("type")](**cfg)
    assert loss.use_sigmoid and loss.gamma == 2.0
    with pytest.raises(KeyError):
        MM.register(registry)
    MM.register(registry, prefix="", force=True)
    assert registry["QualityFocalLoss"] is MM.QualityFocalLoss


# =========================================================================== shared

def _every_recipe_step(dtype=torch.float32):
    """One training step through every recipe (tensor avg_factors: nothing read on the host)."""
    g = torch.Generator(device=DEVICE).manual_seed(3)

    def rn(*shape, scale=1.0):
        return (torch.randn(*shape, device=DEVICE, generator=g) * scale).to(dtype)

    preds = [rn(1, 4, 6, 2, scale=4).requires_grad_(True) for _ in range(3)]
    gt = torch.randn(1, 4, 6, 2, device=DEVICE, generator=g) * 4
    vis = torch.rand(1, 4, 6, device=DEVICE, generator=g) > 0.3
    valid = torch.ones(1, 4, 6, device=DEVICE)
    heat = rn(2, 3, 5, 5).requires_grad_(True)
    kp_vis = torch.randint(-1, 2, (2, 3, 2), device=DEVICE, generator=g)
    scores = rn(2, 6, 4, scale=2).requires_grad_(True)
    gt_score, label = _rtdetr_targets((2, 6, 4))
    cls = rn(8, 4, scale=2).requires_grad_(True)
    labels = torch.randint(0, 5, (8,), device=DEVICE, generator=g)
    boxes = rn(8, 4).requires_grad_(True)
    losses = [
        CT.cotracker_sequence_loss(preds, gt, vis, valid),
        CT.cotracker_sequence_loss(preds, gt, vis, valid, occluded="huber"),
        DLC.WeightedMSECriterion()(heat, heat.detach() * 0.5, DLC.heatmap_weights(
            kp_vis, gradient_masking=True, background_weight=0.0)),
        DLC.WeightedHuberCriterion(loss_weight=0.05)(heat, heat.detach() * 0.5,
                                                     torch.ones_like(heat, dtype=torch.long)),
        UL.VarifocalLoss()(scores, gt_score, label),
        UL.FocalLoss(alpha=0.0)(scores, label.float()),
        UL.yolo_cls_loss(scores, gt_score),
        MM.FocalLoss()(cls, labels, torch.ones(8, device=DEVICE),
                       avg_factor=(labels < 4).sum().clamp_min(1)),
        MM.QualityFocalLoss()(cls, (labels, torch.rand(8, device=DEVICE)),
                              avg_factor=torch.tensor(3.0, device=DEVICE)),
        MM.VarifocalLoss()(cls, torch.rand(8, 4, device=DEVICE).round() * 0.6),
        MM.SmoothL1Loss(beta=1 / 9)(boxes, boxes.detach() + 0.1, torch.ones(8, 4, device=DEVICE),
                                    avg_factor=torch.tensor(8.0, device=DEVICE)),
        MM.L1Loss()(boxes, boxes.detach() - 0.1),
        MM.MSELoss()(boxes, boxes.detach() * 2),
    ]
    return losses, preds + [heat, scores, cls, boxes]



def test_no_host_sync_in_any_recipe(monkeypatch):
    _every_recipe_step()  # plans and compiled kernels exist: the trapped run is a steady step
    calls = trap_host_syncs(monkeypatch)
    losses, leaves = _every_recipe_step()
    total = torch.stack(losses).sum()
    total.backward(torch.tensor(0.7, device=DEVICE))
    monkeypatch.undo()
    assert calls == []
    assert all(torch.isfinite(x.grad).all() for x in leaves)


def test_docstring_examples_run():
    for module in (CT, DLC, UL, MM, recipes._launches):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_count_launches_counts_eager_ops_and_fused_launches():
    x = _leaf(torch.randn(32, 4, device=DEVICE))
    t = torch.randn(32, 4, device=DEVICE)

    def eager():
        F.huber_loss(x, t).backward()

    def fused():
        fl.huber_loss(x, t).backward()
    for step in (eager, fused, eager, fused):
        x.grad = None
        step()
    x.grad = None
    e = recipes.count_launches(eager)
    x.grad = None
    f = recipes.count_launches(fused)
    # eager: huber forward, the ones_like of .backward(), huber backward
    assert e.fusedloss == 0 and e.torch == 3, e.ops
    # fused: forward kernel + no-pass rescale, and the ones_like of .backward()
    assert f.fusedloss == 2 and f.torch == 1, f.ops


@pytest.mark.parametrize("avg", [0.5, "tensor64"])
def test_mmdet_avg_factor_plus_eps_in_float64(avg):
    """float64 throughout: sum / (avg_factor + float32 eps) exactly as mmdet (1e-12 sees eps)."""
    avg_factor = torch.tensor(0.5, device=DEVICE, dtype=F64) if avg == "tensor64" else avg
    N, C = 6, 3
    pred = _leaf(torch.randn(N, C, device=DEVICE, dtype=F64))
    labels = torch.randint(0, C + 1, (N,), device=DEVICE)
    score = torch.rand(N, device=DEVICE, dtype=F64)
    iou = torch.rand(N, C, device=DEVICE, dtype=F64) * (torch.rand(N, C, device=DEVICE) > 0.5)
    box_t = torch.randn(N, C, device=DEVICE, dtype=F64)
    cases = [
        (MM.FocalLoss(), labels, lambda p: _mm_focal(p, labels, avg_factor=avg_factor)),
        (MM.QualityFocalLoss(), (labels, score),
         lambda p: _mm_qfl(p, (labels, score), avg_factor=avg_factor)),
        (MM.VarifocalLoss(), iou, lambda p: _mm_vfl(p, iou, avg_factor=avg_factor)),
        (MM.SmoothL1Loss(beta=0.5), box_t,
         lambda p: _mm_regression("smooth_l1", p, box_t, avg_factor=avg_factor, beta=0.5)),
        (MM.L1Loss(), box_t, lambda p: _mm_regression("l1", p, box_t, avg_factor=avg_factor)),
        (MM.MSELoss(), box_t, lambda p: _mm_regression("mse", p, box_t, avg_factor=avg_factor)),
    ]
    for module, target, upstream in cases:
        got = module(pred, target, avg_factor=avg_factor)
        pred64 = _f64(pred)
        _check(got, upstream(pred64), [pred], [pred64], "random")


# =========================================================================== README launch table

LAUNCH_BEGIN, LAUNCH_END = "<!-- recipe-launches:begin -->", "<!-- recipe-launches:end -->"


def _launch_steps():
    """Each user's training step, eager (the transcription) and fused: name, shapes, leaves,
    eager step, fused step. Every fused call covers > 4096 elements, so the engine's launch
    plan is the one a GPU gets (more than one program: a finalize launch per fused launch)."""
    g = torch.Generator(device=DEVICE).manual_seed(5)

    def rn(*shape, scale=1.0, dtype=torch.float32):
        return (torch.randn(*shape, device=DEVICE, generator=g) * scale).to(dtype)

    def rand(*shape):
        return torch.rand(*shape, device=DEVICE, generator=g)

    steps = []
    I, B, T, N = 4, 1, 16, 256
    preds = [rn(B, T, N, 2, scale=6, dtype=torch.bfloat16).requires_grad_() for _ in range(I)]
    gt, vis, valid = rn(B, T, N, 2, scale=6), (rand(B, T, N) > 0.2).float(), torch.ones(B, T, N)

    def ct_eager(occluded):  # train_on_kubric.py's two terms, vis/valid float32 as upstream
        return lambda: (
            _ct_sequence_loss(preds, gt, valid, vis, 0.8, True, 6.0).mean() * 0.05
            + _ct_sequence_loss(preds, gt, valid, 1 - vis, 0.8, occluded == "huber",
                                6.0).mean() * 0.01)
    steps.append(("CoTracker3: visible Huber + occluded L1 (upstream's flags)",
                  f"{I} x bf16 ({B}, {T}, {N}, 2), fp32 gt", preds, ct_eager("l1"),
                  lambda: CT.cotracker_sequence_loss(preds, gt, vis, valid)))
    steps.append(("CoTracker3: Huber for both terms (paper)", "same", preds, ct_eager("huber"),
                  lambda: CT.cotracker_sequence_loss(preds, gt, vis, valid, occluded="huber")))

    heat, target = rn(2, 17, 16, 16).requires_grad_(), rand(2, 17, 16, 16)
    weights = DLC.heatmap_weights(torch.randint(-1, 2, (2, 17), device=DEVICE, generator=g),
                                  gradient_masking=False, background_weight=0.0)
    steps.append(("DeepLabCut: WeightedMSECriterion, (B, K, 1, 1) weights", "(2, 17, 16, 16)",
                  [heat], lambda: _dlc_weighted(torch.nn.MSELoss(reduction="none"), heat, target,
                                                weights),
                  lambda: DLC.WeightedMSECriterion()(heat, target, weights)))
    locref, locref_t = rn(2, 34, 16, 16).requires_grad_(), rn(2, 34, 16, 16)
    mask = torch.randint(0, 2, (2, 34, 16, 16), device=DEVICE, generator=g)
    steps.append(("DeepLabCut: WeightedHuberCriterion, int mask, x 0.05", "(2, 34, 16, 16)",
                  [locref], lambda: 0.05 * _dlc_weighted(torch.nn.HuberLoss(reduction="none"),
                                                         locref, locref_t, mask),
                  lambda: DLC.WeightedHuberCriterion(loss_weight=0.05)(locref, locref_t, mask)))

    scores = rn(2, 60, 80, scale=2).requires_grad_()
    gt_score, label = _rtdetr_targets((2, 60, 80))
    steps.append(("ultralytics: VarifocalLoss (RT-DETR)", "(2, 60, 80)", [scores],
                  lambda: _ul_varifocal(scores, gt_score, label),
                  lambda: UL.VarifocalLoss()(scores, gt_score, label)))
    steps.append(("ultralytics: FocalLoss", "(2, 60, 80)", [scores],
                  lambda: _ul_focal(scores, label.float()),
                  lambda: UL.FocalLoss()(scores, label.float())))
    pred_scores = rn(2, 64, 80, scale=2).requires_grad_()
    target_scores = rand(2, 64, 80) * (rand(2, 64, 80) > 0.95)
    steps.append(("ultralytics: YOLOv8 classification BCE", "(2, 64, 80)", [pred_scores],
                  lambda: _ul_cls(pred_scores, target_scores),
                  lambda: UL.yolo_cls_loss(pred_scores, target_scores)))

    cls = rn(128, 80, scale=2).requires_grad_()
    labels = torch.randint(0, 81, (128,), device=DEVICE, generator=g)
    label_weights = torch.ones(128, device=DEVICE)
    avg = (labels < 80).sum().float().clamp_min(1)
    steps.append(("mmdet: FocalLoss (labels, per-anchor weight, avg_factor)", "(128, 80)", [cls],
                  lambda: _mm_focal(cls, labels, label_weights, avg_factor=avg),
                  lambda: MM.FocalLoss()(cls, labels, label_weights, avg_factor=avg)))
    score = rand(128)
    steps.append(("mmdet: QualityFocalLoss ((label, score), avg_factor)", "(128, 80)", [cls],
                  lambda: _mm_qfl(cls, (labels, score), label_weights, avg_factor=avg),
                  lambda: MM.QualityFocalLoss()(cls, (labels, score), label_weights,
                                                avg_factor=avg)))
    iou = rand(128, 80) * (rand(128, 80) > 0.95)
    steps.append(("mmdet: VarifocalLoss (avg_factor)", "(128, 80)", [cls],
                  lambda: _mm_vfl(cls, iou, avg_factor=avg),
                  lambda: MM.VarifocalLoss()(cls, iou, avg_factor=avg)))
    box, box_t, box_w = rn(2560, 4).requires_grad_(), rn(2560, 4), rand(2560, 4)
    for kind, module in (("smooth_l1", MM.SmoothL1Loss(beta=1 / 9)), ("l1", MM.L1Loss()),
                         ("mse", MM.MSELoss())):
        steps.append((f"mmdet: {type(module).__name__} (weights, avg_factor)", "(2560, 4)", [box],
                      lambda k=kind: _mm_regression(k, box, box_t, box_w, avg_factor=avg,
                                                    beta=1 / 9),
                      lambda m=module: m(box, box_t, box_w, avg_factor=avg)))
    return steps


def _measure(leaves, fn):
    def step():
        fn().backward()
    for x in leaves:
        x.grad = None
    step()  # first call: plans, compiled kernels
    for x in leaves:
        x.grad = None
    return recipes.count_launches(step)


def render_launch_table() -> str:
    rows = ["| training step (forward + backward) | shapes | eager (transcription) | fusedloss "
            "(fused + torch ops) | host syncs eager / fused |", "|---|---|---|---|---|"]
    for name, shapes, leaves, eager, fused in _launch_steps():
        e, f = _measure(leaves, eager), _measure(leaves, fused)
        rows.append(f"| {name} | {shapes} | {e.total} | {f.total} ({f.fusedloss} + {f.torch}) "
                    f"| {e.syncs} / {f.syncs} |")
    return "\n".join(rows)


def test_readme_launch_table_is_current():
    """The README's launch counts are measured here (regenerate: FUSEDLOSS_UPDATE_README=1)."""
    import os
    import re
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(path) as f:
        readme = f.read()
    block = f"{LAUNCH_BEGIN}\n{render_launch_table()}\n{LAUNCH_END}"
    if os.environ.get("FUSEDLOSS_UPDATE_README"):
        readme = re.sub(re.escape(LAUNCH_BEGIN) + ".*?" + re.escape(LAUNCH_END),
                        lambda _: block, readme, flags=re.S)
        with open(path, "w") as f:
            f.write(readme)
    assert block in readme, ("README recipe launch table is stale: rerun with "
                             "FUSEDLOSS_UPDATE_README=1")
