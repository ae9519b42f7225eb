"""Heatmap losses whose Gaussian targets are rendered inside the kernel, from keypoints.

Pose and tracking heads regress heatmaps against targets that are a pure function of a few
keypoints per channel. Here no target tensor is built, stored, copied or read: the fused kernel
renders each pixel's target from the keypoints as it computes the loss and its gradient
(DeepLabCut renders its targets in numpy after ``.cpu()`` every step: a host sync and a copy).
Bytes per pixel, fp32 prediction, forward + backward: read 4 + write the gradient 4 = 8 (a
rendered-then-read target adds 4 to the loss and 4 + 4 to render it).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional, Sequence, Union

import torch

from . import _runtime
from ._docs import fill
from ._engine import Render, apply_rendered, register_loss, register_renderer
from ._plan import udiv_magic
from ._validate import check_floating, check_flag, check_no_grad, check_param, check_same_device
from ._validate import check_tensor
from .kernels import focal as focal_math
from .kernels import heatmap as math_
from .kernels import regression as regression_math
from .kernels import shrinkage as shrinkage_math
from .reference import heatmap as ref

Number = Union[float, torch.Tensor]

RENDERS = ("gaussian", "plateau")
LOSSES = ("mse", "huber", "shrinkage", "gaussian_focal")
_LOG2E = 1.4426950408889634


_RENDERER = register_renderer(math_.render_keypoints)


def _focal_variant(params: tuple, t_binary: bool) -> int:
    return 1 if params[:2] == (2.0, 4.0) else 0


_SPECS = {
    "mse": register_loss("heatmap_mse", regression_math.mse, ref.heatmap_loss),
    "huber": register_loss("heatmap_huber", regression_math.huber, ref.heatmap_loss, ("delta",)),
    "shrinkage": register_loss("heatmap_shrinkage", shrinkage_math.shrinkage, ref.heatmap_loss,
                               ("a", "c", "exp_target_weight")),
    "gaussian_focal": register_loss("heatmap_gaussian_focal", math_.gaussian_focal,
                                    ref.heatmap_loss, ("alpha", "gamma"),
                                    variant=_focal_variant),
    "gaussian_focal_logits": register_loss("heatmap_gaussian_focal_logits",
                                           math_.gaussian_focal_logits, ref.heatmap_loss,
                                           ("alpha", "gamma"), variant=_focal_variant),
}
# hyper-parameters of each loss: name -> default
_PARAMS = {"mse": {}, "huber": {"delta": 1.0},
           "shrinkage": {"a": 10.0, "c": 0.2, "exp_target_weight": True},
           "gaussian_focal": {"alpha": 2.0, "gamma": 4.0}}


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_keypoints(pred: torch.Tensor, keypoints, visibility):
    """keypoints (B, K, 2) or (B, K, A, 2); visibility (B, K) or (B, K, A). Returns them
    contiguous (they are tiny) and the number of instances A."""
    check_tensor("keypoints", keypoints)
    check_same_device("keypoints", keypoints, pred)
    check_floating("keypoints", keypoints)
    check_no_grad("keypoints", keypoints)
    B, K = pred.shape[:2]
    if keypoints.dim() not in (3, 4) or tuple(keypoints.shape[:2]) != (B, K) \
            or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must have shape (B, K, 2) or (B, K, A, 2) with (B, K) = "
                         f"{(B, K)} from pred; got shape {tuple(keypoints.shape)}")
    instances = keypoints.shape[2] if keypoints.dim() == 4 else 1
    if visibility is not None:
        check_tensor("visibility", visibility)
        check_same_device("visibility", visibility, pred)
        check_no_grad("visibility", visibility)
        expected = tuple(keypoints.shape[:-1])
        if tuple(visibility.shape) != expected or visibility.dtype.is_complex:
            raise ValueError(f"visibility must be a real tensor of shape keypoints.shape[:-1] = "
                             f"{expected}; got shape {tuple(visibility.shape)}, dtype "
                             f"{visibility.dtype}")
        visibility = visibility.contiguous()
    return keypoints.contiguous(), visibility, instances


def _check_params(loss: str, loss_params: dict) -> tuple:
    allowed = _PARAMS[loss]
    unknown = sorted(set(loss_params) - set(allowed))
    if unknown:
        raise TypeError(f"loss={loss!r} takes the parameters {sorted(allowed) or 'none'}; "
                        f"got unexpected {unknown}")
    values = dict(allowed, **loss_params)
    if loss == "huber":
        return (check_param("delta", values["delta"], minimum=0.0, strict=True),)
    if loss == "shrinkage":
        return (check_param("a", values["a"], minimum=0.0, strict=True),
                check_param("c", values["c"]),
                1.0 if check_flag("exp_target_weight", values["exp_target_weight"]) else 0.0)
    if loss == "gaussian_focal":
        return (check_param("alpha", values["alpha"], minimum=0.0),
                check_param("gamma", values["gamma"], minimum=0.0))
    return ()


def _render_call(keypoints, visibility, width: int, instances: int, sigma: float, render: str,
                 stride: float, offset: float, normalize: bool):
    """(Render, (r0..r3), visibility) for ``kernels.heatmap.render_keypoints``."""
    kind = RENDERS.index(render) + (2 if width == 1 else 0)  # +2: a single column, no division
    r0 = _LOG2E / (2.0 * sigma * sigma) if render == "gaussian" else sigma * sigma
    norm = stride * stride / (2.0 * math.pi * sigma * sigma) if normalize else 1.0
    spec = Render(_RENDERER, kind, instances, 2, width, udiv_magic(max(width, 2)))
    return spec, (r0, stride, offset, norm), visibility


def _check_render(sigma, render, stride, offset, normalize):
    sigma = check_param("sigma", sigma, minimum=0.0, strict=True)
    render = _check_choice("render", render, RENDERS)
    stride = check_param("stride", stride, minimum=0.0, strict=True)
    offset = check_param("offset", offset)
    normalize = check_flag("normalize", normalize)
    if normalize and render != "gaussian":
        raise ValueError("normalize=True scales a Gaussian to unit sum; it needs "
                         f"render='gaussian', got render={render!r}")
    return sigma, render, stride, offset, normalize


def heatmap_loss(pred: torch.Tensor, keypoints: torch.Tensor,
                 visibility: Optional[torch.Tensor] = None, *, sigma: float, loss: str = "mse",
                 reduction: str = "mean", weight: Optional[torch.Tensor] = None,
                 render: str = "gaussian", stride: float = 1.0, offset: float = 0.0,
                 from_logits: bool = False, normalize: bool = False,
                 avg_factor: Optional[Number] = None, loss_weight: Number = 1.0,
                 **loss_params) -> torch.Tensor:
    """A heatmap loss against targets rendered in the kernel from keypoints (no target tensor).

    Heatmap pixel (row i, column j) stands at input-image coordinates
    ``(x, y) = (j * stride + offset, i * stride + offset)``; ``sigma`` is in input-image
    pixels. DeepLabCut's generator puts pixel (i, j) at ``int(i * stride + stride / 2)``:
    ``offset = stride // 2`` for its integer strides. The target of channel (b, k)::

        render="gaussian": max over visible instances a of exp(-d_a^2 / (2 sigma^2))
                           (DeepLabCut's rule where animals overlap: the maximum)
        render="plateau":  1 within radius sigma of a visible instance (d^2 <= sigma^2), else 0
        normalize=True:    the Gaussian times stride^2 / (2 pi sigma^2) (unit integral)

    with ``d_a`` the distance from the pixel to instance a's keypoint. An instance whose
    visibility is <= 0 renders no peak (DeepLabCut renders none for 0 either); how much such a
    heatmap counts in the loss is ``weight``'s business (e.g. DeepLabCut's per-heatmap weights
    (B, K, 1, 1) from ``fusedloss.recipes``), not the renderer's. ``loss``::

        "mse":            (p - t)^2
        "huber":          Huber with ``delta`` (default 1)
        "shrinkage":      DSLT's exp(t) l^2 sigmoid(a (l - c)), l = |p - t| (``a``=10, ``c``=0.2,
                          ``exp_target_weight``=True); the label Y is the rendered map
        "gaussian_focal": CenterNet / mmdet GaussianFocalLoss (``alpha``=2, ``gamma``=4):
                          -(1-p)^alpha log(p) where t == 1 (mmdet's ``eq(1)``: only a keypoint
                          exactly at a pixel centre renders a 1), -(1-t)^gamma p^alpha log(1-p)
                          elsewhere; on probabilities with mmdet's eps = 1e-12 inside the logs,
                          or on logits with ``from_logits=True`` (exact log-sigmoid form)

    ``weight`` / ``reduction`` / ``avg_factor`` / ``loss_weight`` follow every fusedloss loss
    (README "Reductions"); DeepLabCut's normaliser ``count_nonzero(w)`` over the broadcast
    weight is ``avg_factor=((w != 0).sum() * (H * W // w[0, 0].numel())).clamp_min(1)`` on the
    device. The gradient for ``pred`` is written by the forward; keypoints and visibility get
    no gradient (one that requires grad is a TypeError).

    Args:
        pred: (B, K, H, W) predictions, float16/bfloat16/float32/float64, any strides.
        keypoints: (B, K, 2) or multi-instance (B, K, A, 2), (x, y) in input-image pixels, any
            floating dtype; NaN coordinates are fine where visibility <= 0.
        visibility: None (all visible) or (B, K) / (B, K, A), DeepLabCut's -1/0/1.
{engine_args}

{engine_returns}

    Example (DeepLabCut-style: 17 keypoints, stride 8, per-heatmap weights)::

        >>> import torch, fusedloss
        >>> pred = torch.randn(2, 17, 32, 32, requires_grad=True)
        >>> kp = torch.rand(2, 17, 2) * 256
        >>> vis = torch.ones(2, 17)
        >>> loss = fusedloss.heatmap_loss(pred, kp, vis, sigma=11.33, stride=8.0, offset=4.0)
        >>> loss.backward()
    """
    check_tensor("input", pred)
    check_floating("input", pred)
    if pred.dim() != 4:
        raise ValueError(f"pred must be (B, K, H, W) heatmaps; got shape {tuple(pred.shape)}")
    if pred.shape[-1] * pred.shape[-2] >= 2 ** 31:
        raise ValueError(f"each heatmap must have fewer than 2^31 pixels; got "
                         f"{tuple(pred.shape[-2:])}")
    sigma, render, stride, offset, normalize = _check_render(sigma, render, stride, offset,
                                                             normalize)
    loss = _check_choice("loss", loss, LOSSES)
    from_logits = check_flag("from_logits", from_logits)
    if from_logits and loss != "gaussian_focal":
        raise ValueError(f"from_logits=True is for loss='gaussian_focal'; got loss={loss!r}")
    params = _check_params(loss, loss_params)
    keypoints, visibility, instances = _check_keypoints(pred, keypoints, visibility)
    render_call = _render_call(keypoints, visibility, pred.shape[-1], instances, sigma, render,
                               stride, offset, normalize)
    spec = _SPECS["gaussian_focal_logits" if from_logits else loss]
    reference = partial(ref.heatmap_loss, pred, keypoints, visibility, sigma=sigma, loss=loss,
                        reduction=reduction, weight=weight, render=render, stride=stride,
                        offset=offset, from_logits=from_logits, normalize=normalize,
                        avg_factor=avg_factor, loss_weight=loss_weight,
                        **dict(zip(_PARAMS[loss], params)))
    return apply_rendered(spec, pred, keypoints, render_call, params, reduction, weight,
                          avg_factor, loss_weight, reference)


def render_heatmaps(keypoints: torch.Tensor, visibility: Optional[torch.Tensor],
                    shape: Sequence[int], sigma: float, *, render: str = "gaussian",
                    stride: float = 1.0, offset: float = 0.0, normalize: bool = False,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The targets ``heatmap_loss`` renders, as a (B, K, H, W) tensor (to look at, and for
    tests): the same Triton function the loss calls (float32 math), or the reference where
    Triton cannot run. ``shape`` = (H, W); the other arguments as in ``heatmap_loss``.

    Example::

        >>> import torch, fusedloss
        >>> maps = fusedloss.render_heatmaps(torch.tensor([[[3.0, 2.0]]]), None, (5, 6), 1.5)
        >>> tuple(maps.shape), float(maps[0, 0, 2, 3])
        ((1, 1, 5, 6), 1.0)
    """
    sigma, render, stride, offset, normalize = _check_render(sigma, render, stride, offset,
                                                             normalize)
    if len(shape) != 2 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must be (H, W) with positive integers; got {tuple(shape)}")
    H, W = shape
    probe = torch.empty((*keypoints.shape[:2], 1, 1), device=keypoints.device)
    keypoints, visibility, instances = _check_keypoints(probe, keypoints, visibility)
    if not _runtime.uses_triton(keypoints.device):
        return ref.render_heatmaps(keypoints, visibility, (H, W), sigma, render=render,
                                   stride=stride, offset=offset, normalize=normalize,
                                   dtype=dtype)
    B, K = keypoints.shape[:2]
    out = _runtime.alloc((B, K, H, W), dtype, keypoints.device)
    n = out.numel()
    if n == 0:
        return out
    spec, floats, _ = _render_call(keypoints, visibility, W, instances, sigma, render, stride,
                                   offset, normalize)
    block = _runtime.pick_block(n)
    _runtime.LAUNCH_COUNTS["render_heatmaps_kernel"] += 1
    math_.render_heatmaps_kernel[(-(-n // block),)](
        out, keypoints, visibility, n, *floats, spec.k0, spec.k1, H * W, udiv_magic(max(H * W, 2)),
        RK=spec.kind, RA=instances, HAS_AUX=visibility is not None, BLOCK=block,
        num_warps=_runtime.num_warps(block))
    return out


fill(heatmap_loss, input="pred", target="pred",
     dtype_note=", pred's own dtype (the target is rendered, not read)")


class HeatmapLoss(torch.nn.Module):
    """``nn.Module`` wrapper of :func:`heatmap_loss`: rendering and loss options at
    construction, ``forward(pred, keypoints, visibility=None, weight=None, *, avg_factor=None)``."""

    def __init__(self, sigma: float, loss: str = "mse", reduction: str = "mean", *,
                 render: str = "gaussian", stride: float = 1.0, offset: float = 0.0,
                 from_logits: bool = False, normalize: bool = False,
                 loss_weight: Number = 1.0, **loss_params):
        super().__init__()
        self.options = dict(sigma=sigma, loss=loss, reduction=reduction, render=render,
                            stride=stride, offset=offset, from_logits=from_logits,
                            normalize=normalize, loss_weight=loss_weight, **loss_params)

    def forward(self, pred: torch.Tensor, keypoints: torch.Tensor,
                visibility: Optional[torch.Tensor] = None,
                weight: Optional[torch.Tensor] = None, *, avg_factor=None) -> torch.Tensor:
        return heatmap_loss(pred, keypoints, visibility, weight=weight, avg_factor=avg_factor,
                            **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
