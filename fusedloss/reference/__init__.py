"""``fusedloss.reference``: the pure-PyTorch executable specification of every loss.

Same signatures and semantics as the fused functions; autograd through torch gives the
gradients. Also the CPU fallback when Triton cannot run (no TRITON_INTERPRET=1).
"""
from ._common import weight_reduce
from .regression import huber_loss, l1_loss, mse_loss, smooth_l1_loss
from .shrinkage import shrinkage_loss
from .focal import quality_focal_loss, sigmoid_focal_loss, varifocal_loss
from .heatmap import gaussian_focal_loss, heatmap_loss, render_heatmaps
from .box import box_iou_loss, distribution_focal_loss, yolo_box_loss
from .dice import bce_dice_loss, dice_loss

__all__ = ["weight_reduce", "huber_loss", "smooth_l1_loss", "l1_loss", "mse_loss", "shrinkage_loss",
           "sigmoid_focal_loss", "quality_focal_loss", "varifocal_loss", "heatmap_loss",
           "render_heatmaps", "gaussian_focal_loss", "box_iou_loss", "distribution_focal_loss",
           "yolo_box_loss", "dice_loss", "bce_dice_loss"]
