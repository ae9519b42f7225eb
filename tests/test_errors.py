"""Bad inputs: every one is a ValueError/TypeError naming the argument, raised before any kernel
launch. The README's troubleshooting table is rendered from this table and checked here, so the
two cannot drift (regenerate with FUSEDLOSS_UPDATE_README=1)."""
from __future__ import annotations

import os
import re

import pytest
import torch

import fusedloss as fl
from fusedloss import _engine
from fusedloss.recipes import cotracker as CT, deeplabcut as DLC, mmdet as MM, ultralytics as UL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"

# fixed CPU inputs: validation happens before any device work, so the table is device-free
x = torch.zeros(4, 3)
t = torch.zeros(4, 3)
cls = torch.zeros(4, dtype=torch.long)
tracks = torch.zeros(1, 3, 5, 2)  # CoTracker (B, T, N, 2)
vis = torch.ones(1, 3, 5, dtype=torch.bool)
heat = torch.zeros(2, 3, 4, 4)  # DeepLabCut (B, K, H, W)
kps = torch.zeros(2, 3, 2)  # keypoints (B, K, 2)
boxes = torch.zeros(4, 4)
dist = torch.zeros(2, 5, 64)  # YOLO pred_dist (B, A, 4 * 16)
anchors = torch.zeros(5, 2)
yolo_boxes = torch.zeros(2, 5, 4)
scores = torch.zeros(2, 5)
seg_x = torch.zeros(2, 3, 4, 5)  # segmentation logits (B, C, H, W)
seg_labels = torch.zeros(2, 4, 5, dtype=torch.long)

# (what the user did, argument named in the message, exception, call)
BAD_INPUTS = [
    ("input is not a tensor", "input", TypeError, lambda: fl.huber_loss([[0.0]], t)),
    ("integer input", "input", TypeError, lambda: fl.mse_loss(x.long(), t)),
    ("bool input", "input", TypeError, lambda: fl.l1_loss(x > 0, t)),
    ("complex input", "input", TypeError, lambda: fl.huber_loss(x.to(torch.complex64), t)),
    ("integer target for a regression loss", "target", TypeError, lambda: fl.mse_loss(x, t.long())),
    ("target shape mismatch", "target", ValueError, lambda: fl.huber_loss(x, torch.zeros(5, 3))),
    ("target that would grow the output", "target", ValueError, lambda: fl.l1_loss(x[0], t)),
    ("target on another device", "target", ValueError, lambda: fl.mse_loss(x, t.to("meta"))),
    ("complex weight", "weight", TypeError,
     lambda: fl.huber_loss(x, t, weight=torch.ones(4, 3, dtype=torch.complex64))),
    ("weight not broadcastable", "weight", ValueError, lambda: fl.mse_loss(x, t, weight=torch.ones(2, 3))),
    ("weight that would grow the output", "weight", ValueError,
     lambda: fl.l1_loss(x, t, weight=torch.ones(2, 4, 3))),
    ("weight that requires grad", "weight", TypeError,
     lambda: fl.huber_loss(x, t, weight=torch.ones(4, 3, requires_grad=True))),
    ("unknown reduction", "reduction", ValueError, lambda: fl.mse_loss(x, t, "avg")),
    ("avg_factor with reduction='sum'", "avg_factor", ValueError, lambda: fl.huber_loss(x, t, "sum", avg_factor=2.0)),
    ("avg_factor with reduction='none'", "avg_factor", ValueError, lambda: fl.l1_loss(x, t, "none", avg_factor=2.0)),
    ("avg_factor <= 0", "avg_factor", ValueError, lambda: fl.mse_loss(x, t, avg_factor=0.0)),
    ("avg_factor NaN", "avg_factor", ValueError, lambda: fl.mse_loss(x, t, avg_factor=float("nan"))),
    ("avg_factor tensor of several elements", "avg_factor", ValueError,
     lambda: fl.huber_loss(x, t, avg_factor=torch.ones(2))),
    ("avg_factor tensor that requires grad", "avg_factor", TypeError,
     lambda: fl.huber_loss(x, t, avg_factor=torch.ones((), requires_grad=True))),
    ("loss_weight inf", "loss_weight", ValueError, lambda: fl.mse_loss(x, t, loss_weight=float("inf"))),
    ("loss_weight tensor that requires grad", "loss_weight", TypeError,
     lambda: fl.mse_loss(x, t, loss_weight=torch.tensor(2.0, requires_grad=True))),
    ("Huber delta <= 0", "delta", ValueError, lambda: fl.huber_loss(x, t, delta=0.0)),
    ("Huber delta NaN", "delta", ValueError, lambda: fl.huber_loss(x, t, delta=float("nan"))),
    ("smooth-L1 beta < 0", "beta", ValueError, lambda: fl.smooth_l1_loss(x, t, beta=-0.1)),
    ("shrinkage a <= 0", "a", ValueError, lambda: fl.shrinkage_loss(x, t, a=0.0)),
    ("shrinkage a inf", "a", ValueError, lambda: fl.shrinkage_loss(x, t, a=float("inf"))),
    ("shrinkage c NaN", "c", ValueError, lambda: fl.shrinkage_loss(x, t, c=float("nan"))),
    ("focal gamma < 0", "gamma", ValueError, lambda: fl.sigmoid_focal_loss(x, t, gamma=-1.0)),
    ("focal alpha NaN", "alpha", ValueError, lambda: fl.sigmoid_focal_loss(x, t, alpha=float("nan"))),
    ("QFL beta < 0", "beta", ValueError, lambda: fl.quality_focal_loss(x, t, beta=-2.0)),
    ("VFL gamma inf", "gamma", ValueError, lambda: fl.varifocal_loss(x, t, gamma=float("inf"))),
    ("integer class targets of the wrong shape", "target", ValueError,
     lambda: fl.sigmoid_focal_loss(x, torch.zeros(3, dtype=torch.long))),
    ("integer targets of input's shape (0/1 per class)", "target", TypeError,
     lambda: fl.sigmoid_focal_loss(x, t.long())),
    ("float class indices of shape input.shape[:-1]", "target", ValueError,
     lambda: fl.sigmoid_focal_loss(x, cls.float())),
    ("integer targets for QFL", "target", TypeError, lambda: fl.quality_focal_loss(x, cls)),
    # heatmaps rendered in the kernel
    ("heatmap pred not (B, K, H, W)", "pred", ValueError,
     lambda: fl.heatmap_loss(heat[0], kps, sigma=2.0)),
    ("heatmap keypoints not (B, K, 2) / (B, K, A, 2)", "keypoints", ValueError,
     lambda: fl.heatmap_loss(heat, kps[..., :1], sigma=2.0)),
    ("heatmap visibility of another shape", "visibility", ValueError,
     lambda: fl.heatmap_loss(heat, kps, torch.ones(2, 2), sigma=2.0)),
    ("heatmap keypoints that require grad", "keypoints", TypeError,
     lambda: fl.heatmap_loss(heat, kps.clone().requires_grad_(), sigma=2.0)),
    ("heatmap sigma <= 0", "sigma", ValueError, lambda: fl.heatmap_loss(heat, kps, sigma=0.0)),
    ("heatmap unknown loss", "loss", ValueError,
     lambda: fl.heatmap_loss(heat, kps, sigma=2.0, loss="l1")),
    ("heatmap unknown render", "render", ValueError,
     lambda: fl.heatmap_loss(heat, kps, sigma=2.0, render="disk")),
    ("heatmap parameter of another loss", "loss", TypeError,
     lambda: fl.heatmap_loss(heat, kps, sigma=2.0, loss="mse", delta=1.0)),
    ("heatmap from_logits for a loss on values", "from_logits", ValueError,
     lambda: fl.heatmap_loss(heat, kps, sigma=2.0, loss="huber", from_logits=True)),
    # Dice
    ("Dice input without a spatial dim", "input", ValueError,
     lambda: fl.dice_loss(seg_x[..., 0, 0], seg_labels[..., 0, 0])),
    ("Dice float target of another shape (channel mismatch)", "target", ValueError,
     lambda: fl.dice_loss(seg_x, seg_x[:, :2])),
    ("Dice integer target with a class dim", "target", ValueError,
     lambda: fl.dice_loss(seg_x, seg_labels[:, None])),
    ("Dice target that requires grad", "target", TypeError,
     lambda: fl.dice_loss(seg_x, seg_x.clone().requires_grad_())),
    ("Dice reduce_dims out of range", "reduce_dims", ValueError,
     lambda: fl.dice_loss(seg_x, seg_labels, reduce_dims=(2, 3, 4))),
    ("Dice reduce_dims with the channel dim", "reduce_dims", ValueError,
     lambda: fl.dice_loss(seg_x, seg_labels, reduce_dims=(1, 2, 3))),
    ("Dice reduce_dims missing a spatial dim", "reduce_dims", ValueError,
     lambda: fl.dice_loss(seg_x, seg_labels, reduce_dims=(2,))),
    ("Dice softmax over C = 1", "softmax", ValueError,
     lambda: fl.dice_loss(seg_x[:, :1], seg_x[:, :1], activation="softmax")),
    ("Dice include_background=False with C = 1", "include_background", ValueError,
     lambda: fl.dice_loss(seg_x[:, :1], seg_x[:, :1], include_background=False)),
    ("Dice unknown activation", "activation", ValueError,
     lambda: fl.dice_loss(seg_x, seg_labels, activation="tanh")),
    ("Dice weight of neither (C,) nor (B, C)", "weight", ValueError,
     lambda: fl.dice_loss(seg_x, seg_labels, weight=torch.ones(2))),
    ("Dice smooth_nr < 0", "smooth_nr", ValueError,
     lambda: fl.dice_loss(seg_x, seg_labels, smooth_nr=-1.0)),
    ("BCE + Dice with softmax", "activation", ValueError,
     lambda: fl.bce_dice_loss(seg_x, seg_labels, activation="softmax")),
    ("BCE + Dice with reduction='none'", "reduction", ValueError,
     lambda: fl.bce_dice_loss(seg_x, seg_labels, reduction="none")),
    # boxes
    ("boxes whose last dim is not 4", "pred", ValueError, lambda: fl.box_iou_loss(x, t)),
    ("box target of another shape", "target", ValueError,
     lambda: fl.box_iou_loss(boxes, boxes[:2])),
    ("integer boxes", "target", TypeError, lambda: fl.box_iou_loss(boxes, boxes.long())),
    ("unknown IoU mode", "mode", ValueError, lambda: fl.box_iou_loss(boxes, boxes, "wiou")),
    ("unknown box_format", "box_format", ValueError,
     lambda: fl.box_iou_loss(boxes, boxes, box_format="yxyx")),
    ("mmdet IoULoss unknown mode", "mode", ValueError, lambda: fl.IoULoss(mode="cube")),
    ("DFL target not pred.shape[:-1]", "target", ValueError,
     lambda: fl.distribution_focal_loss(x, t)),
    ("YOLO pred_dist not (B, A, 4 reg_max)", "pred_dist", ValueError,
     lambda: fl.box.yolo_box_loss(dist[..., :60], anchors, yolo_boxes, scores, 1.0)),
    ("YOLO reg_max not a power of two", "reg_max", ValueError,
     lambda: fl.box.yolo_box_loss(dist[..., :48], anchors, yolo_boxes, scores, 1.0, reg_max=12)),
    ("YOLO anchor_points not (A, 2)", "anchor_points", ValueError,
     lambda: fl.box.yolo_box_loss(dist, anchors[:2], yolo_boxes, scores, 1.0)),
    ("YOLO fg_mask not bool (B, A)", "fg_mask", ValueError,
     lambda: fl.box.yolo_box_loss(dist, anchors, yolo_boxes, scores, 1.0, fg_mask=scores)),
    ("YOLO target_bboxes that require grad", "target_bboxes", TypeError,
     lambda: fl.box.yolo_box_loss(dist, anchors, yolo_boxes.clone().requires_grad_(), scores, 1.0)),
    ("YOLO avg_factor missing", "avg_factor", TypeError,
     lambda: fl.box.yolo_box_loss(dist, anchors, yolo_boxes, scores, None)),
    ("YOLO loss_weight not a (box, dfl) pair", "loss_weight", TypeError,
     lambda: fl.box.yolo_box_loss(dist, anchors, yolo_boxes, scores, 1.0, loss_weight=7.5)),
    # fusedloss.recipes
    ("CoTracker preds neither a tensor nor a list", "preds", TypeError,
     lambda: CT.cotracker_sequence_loss("tracks", tracks, vis)),
    ("CoTracker preds tensor that is not (I, B, T, N, D)", "preds", ValueError,
     lambda: CT.cotracker_sequence_loss(tracks, tracks, vis)),
    ("CoTracker empty preds list", "preds", ValueError,
     lambda: CT.cotracker_sequence_loss([], tracks, vis)),
    ("CoTracker iterations of different shapes", "preds", ValueError,
     lambda: CT.cotracker_sequence_loss([tracks, tracks[:, :2]], tracks, vis)),
    ("CoTracker gt of another shape", "gt", ValueError,
     lambda: CT.cotracker_sequence_loss([tracks], tracks[..., :1], vis)),
    ("CoTracker vis with a coordinate dim", "vis", ValueError,
     lambda: CT.cotracker_sequence_loss([tracks], tracks, vis[..., None])),
    ("CoTracker valid that requires grad", "valid", TypeError,
     lambda: CT.cotracker_sequence_loss([tracks], tracks, vis, vis.float().requires_grad_())),
    ("CoTracker unknown term loss", "occluded", ValueError,
     lambda: CT.cotracker_sequence_loss([tracks], tracks, vis, occluded="l2")),
    ("CoTracker gamma < 0", "gamma", ValueError,
     lambda: CT.cotracker_sequence_loss([tracks], tracks, vis, gamma=-0.8)),
    ("DeepLabCut weights neither a tensor nor a number", "weights", TypeError,
     lambda: DLC.WeightedMSECriterion()(heat, heat, [1.0])),
    ("DeepLabCut weights that would grow the heatmaps", "weights", ValueError,
     lambda: DLC.WeightedHuberCriterion()(heat, heat, torch.ones(3, 2, 3, 1, 1))),
    ("heatmap_weights visibility of 4 dims", "visibility", ValueError,
     lambda: DLC.heatmap_weights(heat.long(), gradient_masking=True, background_weight=0.0)),
    ("heatmap_weights bool visibility", "visibility", TypeError,
     lambda: DLC.heatmap_weights(vis[0], gradient_masking=False, background_weight=0.0)),
    ("ultralytics VarifocalLoss scores without a dim 1", "pred_score", ValueError,
     lambda: UL.VarifocalLoss()(x[0], t[0], t[0])),
    ("ultralytics VarifocalLoss label of another shape", "label", ValueError,
     lambda: UL.VarifocalLoss()(x, t, cls)),
    ("ultralytics FocalLoss per-class alpha tensor", "alpha", TypeError,
     lambda: UL.FocalLoss(alpha=torch.tensor([0.25, 0.5, 0.75]))),
    ("yolo_cls_loss targets of another shape", "target_scores", ValueError,
     lambda: UL.yolo_cls_loss(x, t[:2])),
    ("mmdet unknown reduction_override", "reduction_override", ValueError,
     lambda: MM.L1Loss()(x, t, reduction_override="avg")),
    ("mmdet avg_factor with reduction 'sum'", "avg_factor", ValueError,
     lambda: MM.FocalLoss(reduction="sum")(x, cls, avg_factor=2.0)),
    ("mmdet use_sigmoid=False", "use_sigmoid", ValueError,
     lambda: MM.QualityFocalLoss(use_sigmoid=False)),
    ("mmdet FocalLoss alpha < 0", "alpha", ValueError, lambda: MM.FocalLoss(alpha=-0.25)),
    ("mmdet FocalLoss weight neither (N,), (N*C,) nor (N, C)", "weight", ValueError,
     lambda: MM.FocalLoss()(x, cls, torch.ones(5))),
    ("mmdet QFL target of three tensors", "target", ValueError,
     lambda: MM.QualityFocalLoss()(x, (cls, t[:, 0], t[:, 0]))),
    ("mmdet QFL label of another shape", "label", ValueError,
     lambda: MM.QualityFocalLoss()(x, (cls[:2], t[:, 0]))),
    ("mmdet VarifocalLoss target of another shape", "target", ValueError,
     lambda: MM.VarifocalLoss()(x, t[:, :1])),
    ("mmdet SmoothL1Loss beta 0", "beta", ValueError, lambda: MM.SmoothL1Loss(beta=0.0)),
]


@pytest.mark.parametrize("index", range(len(BAD_INPUTS)), ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_raises_naming_the_argument_before_any_launch(index):
    _, name, exc, call = BAD_INPUTS[index]
    before = sum(_engine.LAUNCH_COUNTS.values())
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc
    assert re.search(rf"\b{re.escape(name)}\b", str(info.value)), str(info.value)
    assert sum(_engine.LAUNCH_COUNTS.values()) == before


def render_table() -> str:
    rows = ["| what was passed | error | message |", "|---|---|---|"]
    for what, _, exc, call in BAD_INPUTS:
        try:
            call()
        except exc as err:
            message = str(err).replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {what} | `{exc.__name__}` | {message} |")
    return "\n".join(rows)


def test_readme_troubleshooting_table_is_current():
    path = os.path.join(REPO, "README.md")
    with open(path) as f:
        readme = f.read()
    block = f"{BEGIN}\n{render_table()}\n{END}"
    if os.environ.get("FUSEDLOSS_UPDATE_README"):
        readme = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, readme, flags=re.S)
        with open(path, "w") as f:
            f.write(readme)
    assert block in readme, "README troubleshooting table is stale: rerun with FUSEDLOSS_UPDATE_README=1"
