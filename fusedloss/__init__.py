"""fusedloss: fused Triton losses (loss + mask + reduction + gradient in one pass) for PyTorch."""
from . import distributed, reference, runtime
from ._engine import REGISTRY, engine_config
from .regression import (HuberLoss, L1Loss, MSELoss, SmoothL1Loss, huber_loss, l1_loss,
                         mse_loss, smooth_l1_loss)
from .shrinkage import ShrinkageLoss, shrinkage_loss
from .focal import (FocalLoss, QualityFocalLoss, VarifocalLoss, quality_focal_loss,
                    sigmoid_focal_loss, varifocal_loss)
from .heatmap import HeatmapLoss, heatmap_loss, render_heatmaps
from .box import box_iou_loss, distribution_focal_loss
from .dice import DiceLoss, bce_dice_loss, dice_loss
from . import recipes
from .recipes.mmdet import CIoULoss, DIoULoss, DistributionFocalLoss, GIoULoss, IoULoss

__version__ = "0.1.0"

__all__ = [
    "reference", "distributed", "runtime", "REGISTRY", "engine_config",
    "huber_loss", "smooth_l1_loss", "l1_loss", "mse_loss",
    "HuberLoss", "SmoothL1Loss", "L1Loss", "MSELoss",
    "shrinkage_loss", "ShrinkageLoss",
    "sigmoid_focal_loss", "quality_focal_loss", "varifocal_loss",
    "FocalLoss", "QualityFocalLoss", "VarifocalLoss",
    "heatmap_loss", "render_heatmaps", "HeatmapLoss",
    "box_iou_loss", "distribution_focal_loss", "IoULoss", "GIoULoss", "DIoULoss", "CIoULoss",
    "DistributionFocalLoss",
    "dice_loss", "bce_dice_loss", "DiceLoss",
    "recipes",
]
