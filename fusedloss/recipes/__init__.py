"""``fusedloss.recipes``: drop-in replacements for losses users write by hand, one module per
user, each checked against a plain-torch transcription of the upstream code
(``tests/test_recipes.py``).

| module | replaces |
|---|---|
| :mod:`~fusedloss.recipes.cotracker` | CoTracker3's ``sequence_loss`` + ``reduce_masked_mean`` (visible + occluded terms) |
| :mod:`~fusedloss.recipes.deeplabcut` | DeepLabCut's ``WeightedMSECriterion``, ``WeightedHuberCriterion``, heatmap weights from visibility |
| :mod:`~fusedloss.recipes.ultralytics` | ultralytics' ``VarifocalLoss``, ``FocalLoss``, YOLOv8's classification BCE term |
| :mod:`~fusedloss.recipes.mmdet` | mmdetection 3.x ``FocalLoss``, ``QualityFocalLoss``, ``VarifocalLoss``, ``SmoothL1Loss``, ``L1Loss``, ``MSELoss``, ``IoULoss``, ``GIoULoss``, ``DIoULoss``, ``CIoULoss``, ``DistributionFocalLoss`` |

Each computes the upstream numbers (to float32 rounding) and gradients with no host sync, on
the public fused losses (:mod:`fusedloss`); what a recipe adds on the device beyond the fused
pass is stated in its docstring. :func:`count_launches` counts a step's launches.
"""
from . import cotracker, deeplabcut, mmdet, ultralytics
from ._launches import LaunchCount, count_launches
from .cotracker import cotracker_sequence_loss
from .deeplabcut import heatmap_weights
from .ultralytics import yolo_cls_loss

__all__ = ["cotracker", "deeplabcut", "ultralytics", "mmdet", "cotracker_sequence_loss",
           "heatmap_weights", "yolo_cls_loss", "count_launches", "LaunchCount"]
