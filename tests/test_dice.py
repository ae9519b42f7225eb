"""Dice and BCE + Dice (issue 17): the float64 reference against transcriptions of MONAI's and
segmentation_models.pytorch's (smp) DiceLoss under the documented argument mapping; the fused
``fusedloss.dice_loss`` / ``bce_dice_loss`` against the reference (pairwise coverage of the
options, values and gradients with random grad_output and exactly 1), gradcheck, empty masks,
out-of-range class indices, determinism, block size, host syncs, torch.compile and errors."""
from __future__ import annotations

import itertools
import math
import random
import warnings

import pytest
import torch
import torch.linalg as LA
import torch.nn.functional as F

import fusedloss as fl
from fusedloss import runtime
from fusedloss.reference import dice as R
from conftest import DEVICE, REL_TOL, rel_err, trap_host_syncs

F64 = torch.float64


# ================================================================= upstream, transcribed
# Nothing imported: MONAI and smp are not dependencies. Each function below is the upstream
# code with the module state turned into arguments; comments name the file and function.

def monai_one_hot(labels, num_classes, dtype=torch.float, dim=1):
    """MONAI monai/networks/utils.py ``one_hot``, as written upstream: labels (B, 1, *spatial)
    (any dtype, cast with .long()) -> (B, N, *spatial); scatter_ raises on an index outside
    [0, N)."""
    if labels.ndim < dim + 1:
        shape = list(labels.shape) + [1] * (dim + 1 - len(labels.shape))
        labels = torch.reshape(labels, shape)
    sh = list(labels.shape)
    if sh[dim] != 1:
        raise AssertionError("labels should have a channel with length equal to one.")
    sh[dim] = num_classes
    o = torch.zeros(size=sh, dtype=dtype, device=labels.device)
    labels = o.scatter_(dim=dim, index=labels.long(), value=1)
    return labels


def monai_compute_tp_fp_fn(input, target, reduce_axis, ord, soft_label, decoupled=True):
    """MONAI (>= 1.3) monai/losses/utils.py ``compute_tp_fp_fn``, as written upstream."""
    if ord == 1 and not soft_label:
        tp = torch.sum(input * target, dim=reduce_axis)
        if decoupled:
            fp = torch.sum(input, dim=reduce_axis) - tp
            fn = torch.sum(target, dim=reduce_axis) - tp
        else:
            fp = torch.sum(input * (1 - target), dim=reduce_axis)
            fn = torch.sum((1 - input) * target, dim=reduce_axis)
    else:
        pred_o = LA.vector_norm(input, ord=ord, dim=reduce_axis)
        ground_o = LA.vector_norm(target, ord=ord, dim=reduce_axis)
        difference = LA.vector_norm(input - target, ord=ord, dim=reduce_axis)
        if ord > 1:
            pred_o = torch.pow(pred_o, exponent=ord)
            ground_o = torch.pow(ground_o, exponent=ord)
            difference = torch.pow(difference, exponent=ord)
        tp = (pred_o + ground_o - difference) / 2
        fp = pred_o - tp
        fn = ground_o - tp
    return tp, fp, fn


def monai_dice_loss(input, target, *, include_background=True, to_onehot_y=False, sigmoid=False,
                    softmax=False, squared_pred=False, jaccard=False, reduction="mean",
                    smooth_nr=1e-5, smooth_dr=1e-5, batch=False, weight=None, soft_label=False):
    """MONAI (>= 1.3) monai/losses/dice.py ``DiceLoss.__init__`` + ``DiceLoss.forward``, as
    written upstream (other_act and the dev branch's ignore_index left out)."""
    if int(sigmoid) + int(softmax) > 1:
        raise ValueError("Incompatible values: more than 1 of [sigmoid=True, softmax=True].")
    class_weight = torch.as_tensor(weight) if weight is not None else None
    if sigmoid:
        input = torch.sigmoid(input)
    n_pred_ch = input.shape[1]
    if softmax:
        if n_pred_ch == 1:
            warnings.warn("single channel prediction, `softmax=True` ignored.")
        else:
            input = torch.softmax(input, 1)
    if to_onehot_y:
        if n_pred_ch == 1:
            warnings.warn("single channel prediction, `to_onehot_y=True` ignored.")
        else:
            target = monai_one_hot(target, num_classes=n_pred_ch)
    if not include_background:
        if n_pred_ch == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.")
        else:
            target = target[:, 1:]
            input = input[:, 1:]
    if target.shape != input.shape:
        raise AssertionError(f"ground truth has different shape ({target.shape}) from input "
                             f"({input.shape})")
    reduce_axis = torch.arange(2, len(input.shape)).tolist()
    if batch:
        reduce_axis = [0] + reduce_axis
    ord = 2 if squared_pred else 1
    tp, fp, fn = monai_compute_tp_fp_fn(input, target, reduce_axis, ord, soft_label)
    if not jaccard:
        fp *= 0.5
        fn *= 0.5
    numerator = 2 * tp + smooth_nr
    denominator = 2 * (tp + fp + fn) + smooth_dr
    f = 1 - numerator / denominator
    num_of_classes = target.shape[1]
    if class_weight is not None and num_of_classes != 1:
        if class_weight.ndim == 0:
            class_weight = torch.as_tensor([class_weight] * num_of_classes)
        elif class_weight.shape[0] != num_of_classes:
            raise ValueError("The length of the `weight` sequence should be the same as the "
                             "number of classes.")
        if class_weight.min() < 0:
            raise ValueError("the value/values of the `weight` should be no less than 0.")
        f = f * class_weight.to(f)
    if reduction == "mean":
        f = torch.mean(f)
    elif reduction == "sum":
        f = torch.sum(f)
    elif reduction == "none":
        broadcast_shape = list(f.shape[0:2]) + [1] * (len(input.shape) - 2)
        f = f.view(broadcast_shape)
    else:
        raise ValueError(f"Unsupported reduction: {reduction}")
    return f


def monai_legacy_dice_loss(input, target, *, include_background=True, to_onehot_y=False,
                           sigmoid=False, softmax=False, squared_pred=False, jaccard=False,
                           reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5, batch=False):
    """MONAI 0.5 - 1.2 monai/losses/dice.py ``DiceLoss.forward`` (intersection, ground_o,
    pred_o; before compute_tp_fp_fn), as written upstream."""
    if sigmoid:
        input = torch.sigmoid(input)
    n_pred_ch = input.shape[1]
    if softmax and n_pred_ch != 1:
        input = torch.softmax(input, 1)
    if to_onehot_y and n_pred_ch != 1:
        target = monai_one_hot(target, num_classes=n_pred_ch)
    if not include_background and n_pred_ch != 1:
        target = target[:, 1:]
        input = input[:, 1:]
    reduce_axis = torch.arange(2, len(input.shape)).tolist()
    if batch:
        reduce_axis = [0] + reduce_axis
    intersection = torch.sum(target * input, dim=reduce_axis)
    if squared_pred:
        target = torch.pow(target, 2)
        input = torch.pow(input, 2)
    ground_o = torch.sum(target, dim=reduce_axis)
    pred_o = torch.sum(input, dim=reduce_axis)
    denominator = ground_o + pred_o
    if jaccard:
        denominator = 2.0 * (denominator - intersection)
    f = 1.0 - (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)
    if reduction == "mean":
        f = torch.mean(f)
    elif reduction == "sum":
        f = torch.sum(f)
    return f


def smp_soft_dice_score(output, target, smooth=0.0, eps=1e-7, dims=None):
    """smp segmentation_models_pytorch/losses/_functional.py ``soft_dice_score``, as written
    upstream."""
    assert output.size() == target.size()
    if dims is not None:
        intersection = torch.sum(output * target, dim=dims)
        cardinality = torch.sum(output + target, dim=dims)
    else:
        intersection = torch.sum(output * target)
        cardinality = torch.sum(output + target)
    dice_score = (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    return dice_score


def smp_dice_loss(y_pred, y_true, mode, classes=None, log_loss=False, from_logits=True,
                  smooth=0.0, ignore_index=None, eps=1e-7):
    """smp segmentation_models_pytorch/losses/dice.py ``DiceLoss.__init__`` + ``forward`` +
    ``aggregate_loss`` (mean) + ``compute_score`` (soft_dice_score), as written upstream."""
    assert mode in {"binary", "multilabel", "multiclass"}
    if classes is not None:
        assert mode != "binary", "Masking classes is not supported with mode=binary"
        classes = torch.as_tensor(classes, dtype=torch.long)  # to_tensor
    assert y_true.size(0) == y_pred.size(0)
    if from_logits:
        if mode == "multiclass":
            y_pred = y_pred.log_softmax(dim=1).exp()
        else:
            y_pred = F.logsigmoid(y_pred).exp()
    bs = y_true.size(0)
    num_classes = y_pred.size(1)
    dims = (0, 2)
    if mode == "binary":
        y_true = y_true.view(bs, 1, -1)
        y_pred = y_pred.view(bs, 1, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred = y_pred * mask
            y_true = y_true * mask
    if mode == "multiclass":
        y_true = y_true.view(bs, -1)
        y_pred = y_pred.view(bs, num_classes, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred = y_pred * mask.unsqueeze(1)
            y_true = F.one_hot((y_true * mask).to(torch.long), num_classes)
            y_true = y_true.permute(0, 2, 1) * mask.unsqueeze(1)
        else:
            y_true = F.one_hot(y_true, num_classes)
            y_true = y_true.permute(0, 2, 1)
    if mode == "multilabel":
        y_true = y_true.view(bs, num_classes, -1)
        y_pred = y_pred.view(bs, num_classes, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred = y_pred * mask
            y_true = y_true * mask
    scores = smp_soft_dice_score(y_pred, y_true.type_as(y_pred), smooth=smooth, eps=eps,
                                 dims=dims)
    if log_loss:
        loss = -torch.log(scores.clamp_min(eps))
    else:
        loss = 1.0 - scores
    mask = y_true.sum(dims) > 0
    loss *= mask.to(loss.dtype)
    if classes is not None:
        loss = loss[classes]
    return loss.mean()


def smp_soft_jaccard_score(output, target, smooth=0.0, eps=1e-7, dims=None):
    """smp segmentation_models_pytorch/losses/_functional.py ``soft_jaccard_score``, as written
    upstream."""
    assert output.size() == target.size()
    if dims is not None:
        intersection = torch.sum(output * target, dim=dims)
        cardinality = torch.sum(output + target, dim=dims)
    else:
        intersection = torch.sum(output * target)
        cardinality = torch.sum(output + target)
    union = cardinality - intersection
    jaccard_score = (intersection + smooth) / (union + smooth).clamp_min(eps)
    return jaccard_score


def smp_jaccard_loss(y_pred, y_true, mode, classes=None, log_loss=False, from_logits=True,
                     smooth=0.0, eps=1e-7):
    """smp segmentation_models_pytorch/losses/jaccard.py ``JaccardLoss.forward``, as written
    upstream."""
    if classes is not None:
        classes = torch.as_tensor(classes, dtype=torch.long)
    if from_logits:
        if mode == "multiclass":
            y_pred = y_pred.log_softmax(dim=1).exp()
        else:
            y_pred = F.logsigmoid(y_pred).exp()
    bs = y_true.size(0)
    num_classes = y_pred.size(1)
    dims = (0, 2)
    if mode == "binary":
        y_true = y_true.view(bs, 1, -1)
        y_pred = y_pred.view(bs, 1, -1)
    if mode == "multiclass":
        y_true = y_true.view(bs, -1)
        y_pred = y_pred.view(bs, num_classes, -1)
        y_true = F.one_hot(y_true, num_classes)
        y_true = y_true.permute(0, 2, 1)
    if mode == "multilabel":
        y_true = y_true.view(bs, num_classes, -1)
        y_pred = y_pred.view(bs, num_classes, -1)
    scores = smp_soft_jaccard_score(y_pred, y_true.type(y_pred.dtype), smooth=smooth, eps=eps,
                                    dims=dims)
    if log_loss:
        loss = -torch.log(scores.clamp_min(eps))
    else:
        loss = 1.0 - scores
    mask = y_true.sum(dims) > 0
    loss *= mask.float()
    if classes is not None:
        loss = loss[classes]
    return loss.mean()


# ----------------------------------------------------------------- the documented mapping

def monai_to_fusedloss(ndim, *, sigmoid=False, softmax=False, to_onehot_y=False,
                       include_background=True, squared_pred=False, jaccard=False,
                       reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                       weight=None, soft_label=False):
    """MONAI DiceLoss(...) arguments -> fusedloss.dice_loss keywords (the README's table).
    to_onehot_y: pass the (B, 1, *spatial) labels as target[:, 0].long() (not done here)."""
    kw = dict(from_logits=sigmoid or softmax, activation="softmax" if softmax else "sigmoid",
              include_background=include_background, squared_pred=squared_pred,
              jaccard=jaccard, reduction=reduction, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    if batch:
        kw["reduce_dims"] = (0,) + tuple(range(2, ndim))
    if weight is not None:
        kw["weight"] = torch.as_tensor(weight, dtype=F64)
    return kw


def smp_to_fusedloss(ndim, num_classes, *, mode, classes=None, log_loss=False, from_logits=True,
                     smooth=0.0, eps=1e-7):
    """smp DiceLoss(mode, ...) arguments -> fusedloss.dice_loss keywords (the README's table).
    classes: a per-class weight counting each listed class, times C / len(classes)."""
    kw = dict(from_logits=from_logits, activation="softmax" if mode == "multiclass" else "sigmoid",
              reduce_dims=(0,) + tuple(range(2, ndim)), smooth_nr=smooth, smooth_dr=smooth,
              eps=eps, log_loss=log_loss, zero_absent_classes=True, reduction="mean")
    if classes is not None:
        idx = torch.as_tensor(classes, dtype=torch.long)
        w = torch.zeros(num_classes, dtype=F64).index_add_(0, idx, torch.ones(len(idx), dtype=F64))
        kw["weight"] = w * (num_classes / len(idx))
    return kw


def _labels(B, C, spatial, absent=True):
    """Class indices in [0, C): class C - 1 absent everywhere and class 1 absent from sample 0
    (when C > 2), so per-sample and per-batch empty masks both occur."""
    hi = C - 1 if absent and C > 2 else C
    idx = torch.randint(0, hi, (B, *spatial))
    if absent and C > 2:
        idx[0][idx[0] == 1] = 0
    return idx


def _grads_match(a_out, a_in, b_out, b_in, tol):
    go = torch.rand_like(a_out)
    ga, = torch.autograd.grad(a_out, a_in, go)
    gb, = torch.autograd.grad(b_out, b_in, go.reshape(b_out.shape))
    assert rel_err(gb, ga) <= tol


MONAI_CASES = [  # (C, spatial, target kind, DiceLoss kwargs)
    (3, (6, 7), "onehot", dict(sigmoid=True)),
    (4, (6, 7), "labels", dict(softmax=True, to_onehot_y=True)),
    (4, (5, 6), "labels", dict(softmax=True, to_onehot_y=True, include_background=False,
                               batch=True, reduction="sum")),
    (3, (6, 7), "soft", dict(sigmoid=True, squared_pred=True, jaccard=True, reduction="none")),
    (4, (3, 4, 5), "labels", dict(softmax=True, to_onehot_y=True, jaccard=True, batch=True,
                                  reduction="none", weight=[0.5, 1.0, 2.0, 0.0])),
    (3, (6, 7), "probs", dict(squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)),
    (1, (8, 9), "onehot", dict(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, reduction="none")),
    (3, (3, 4, 5), "labels", dict(softmax=True, to_onehot_y=True, include_background=False,
                                  weight=[0.2, 3.0], squared_pred=True)),
    (3, (6, 7), "onehot", dict(sigmoid=True, soft_label=True)),  # hard labels: same formula
    (3, (11,), "labels", dict(softmax=True, to_onehot_y=True, batch=True)),  # 1 spatial dim
]


@pytest.mark.parametrize("C,spatial,kind,kwargs", MONAI_CASES)
def test_reference_equals_monai(C, spatial, kind, kwargs):
    B = 2
    logits = torch.randn(B, C, *spatial, dtype=F64) * 2
    x = torch.softmax(logits, 1) if kind == "probs" else logits
    labels = _labels(B, C, spatial)
    if kind == "labels":  # MONAI's label map (B, 1, *spatial), float as loaders give it
        monai_target, ours_target = labels[:, None].to(F64), labels
    elif kind == "soft":
        monai_target = ours_target = torch.rand(B, C, *spatial, dtype=F64)
    elif C == 1:
        monai_target = ours_target = (torch.rand(B, 1, *spatial) < 0.3).to(F64)
    else:
        monai_target = ours_target = R.one_hot(labels, C, F64)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    want = monai_dice_loss(a, monai_target, **kwargs)
    ours = R.dice_loss(b, ours_target, **monai_to_fusedloss(x.dim(), **kwargs))
    if kwargs.get("reduction") == "none":  # MONAI keeps singleton spatial dims
        assert want.shape == ours.shape + (1,) * len(spatial)
    # MONAI's one_hot is float32 (its default dtype) and squared_pred takes the squared L2 norm
    # through sqrt and pow: ||t||^2 of a one-hot target is then rounded to float32 (~1e-7)
    tol = 1e-6 if kwargs.get("to_onehot_y") and kwargs.get("squared_pred") else 1e-12
    assert rel_err(ours.reshape(want.shape), want) <= tol
    _grads_match(want, a, ours, b, max(tol, 1e-10))
    legacy = {k: v for k, v in kwargs.items() if k not in ("weight", "soft_label")}
    if legacy == kwargs and kwargs.get("reduction") != "none":
        assert rel_err(ours, monai_legacy_dice_loss(x, monai_target, **legacy)) <= 1e-12


def test_monai_soft_label_differs_on_soft_targets():
    """MONAI's soft_label=True (no squared_pred) scores sum min(p, t) (its L1 form), not sum p t:
    the same for 0/1 targets (tested above), different for soft ones - not supported here."""
    x = torch.randn(2, 3, 6, 7, dtype=F64)
    t = torch.rand(2, 3, 6, 7, dtype=F64)
    soft = monai_dice_loss(x, t, sigmoid=True, soft_label=True)
    ours = R.dice_loss(x, t)
    assert monai_dice_loss(x, t, sigmoid=True).sub(ours).abs() <= 1e-14
    assert soft.sub(ours).abs() > 1e-3


def test_monai_single_channel_quirks():
    """C = 1: MONAI ignores softmax=True (with a warning: the logits are used as probabilities)
    and include_background=False; fusedloss raises ValueError for both instead."""
    x = torch.randn(2, 1, 5, 6, dtype=F64)
    t = (torch.rand(2, 1, 5, 6) < 0.4).to(F64)
    with pytest.warns(UserWarning, match="softmax=True"):
        quirk = monai_dice_loss(x, t, softmax=True)
    assert rel_err(R.dice_loss(x, t, from_logits=False), quirk) <= 1e-12
    with pytest.raises(ValueError):
        R.dice_loss(x, t, activation="softmax")
    with pytest.raises(ValueError):
        R.dice_loss(x, t, include_background=False)


SMP_CASES = [  # (mode, C, spatial, target kind, smp DiceLoss kwargs)
    ("binary", 1, (7, 9), "mask4d", dict()),
    ("binary", 1, (7, 9), "mask3d", dict(smooth=1.0, log_loss=True)),
    ("binary", 1, (7, 9), "mask4d", dict(from_logits=False, smooth=0.5)),
    ("multiclass", 4, (6, 7), "index", dict()),
    ("multiclass", 4, (6, 7), "index", dict(log_loss=True)),  # absent class: log clamp at eps
    ("multiclass", 5, (6, 7), "index", dict(classes=[1, 3], smooth=1.0)),
    ("multiclass", 4, (6, 7), "index", dict(from_logits=False, eps=50.0)),  # eps clamps den
    ("multiclass", 3, (3, 4, 5), "index", dict(smooth=0.1, log_loss=True, eps=1e-3)),
    ("multilabel", 3, (6, 7), "multi", dict()),
    ("multilabel", 4, (6, 7), "multi", dict(classes=[0, 2, 2], log_loss=True, smooth=1e-5)),
    ("multilabel", 3, (6, 7), "soft", dict(smooth=1.0)),
]


@pytest.mark.parametrize("mode,C,spatial,kind,kwargs", SMP_CASES)
def test_reference_equals_smp(mode, C, spatial, kind, kwargs):
    B = 3
    logits = torch.randn(B, C, *spatial, dtype=F64) * 2
    if not kwargs.get("from_logits", True):
        logits = torch.softmax(logits, 1) if mode == "multiclass" else torch.sigmoid(logits)
    labels = _labels(B, C, spatial)
    if kind == "index":  # (B, *spatial) long
        smp_target = ours_target = labels
    elif kind.startswith("mask"):  # binary mask, (B, 1, *spatial) or (B, *spatial)
        mask = (torch.rand(B, 1, *spatial) < 0.3).to(F64)
        mask[-1] = 0  # an empty mask in the last sample
        smp_target = mask if kind == "mask4d" else mask[:, 0]
        ours_target = mask
    elif kind == "multi":  # multi-label 0/1 with an absent class
        smp_target = ours_target = (torch.rand(B, C, *spatial) < 0.3).to(F64)
        smp_target[:, -1] = 0
    else:
        smp_target = ours_target = torch.rand(B, C, *spatial, dtype=F64)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    want = smp_dice_loss(a, smp_target, mode, **kwargs)
    ours = R.dice_loss(b, ours_target, **smp_to_fusedloss(logits.dim(), C, mode=mode, **kwargs))
    assert rel_err(ours, want) <= 1e-12
    _grads_match(want, a, ours, b, 1e-10)


@pytest.mark.parametrize("mode,C,kwargs", [("multiclass", 4, dict()),
                                             ("multiclass", 4, dict(smooth=0.5, log_loss=True)),
                                             ("multilabel", 3, dict(smooth=1.0, classes=[0, 2]))])
def test_reference_equals_smp_jaccard(mode, C, kwargs):
    """smp JaccardLoss(smooth=s, eps=e) = jaccard=True with smooth_nr = smooth_dr = 2 s and
    eps = 2 e: (2 I + 2 s) / max(2 (P + T - I) + 2 s, 2 e) = (I + s) / max(U + s, e). (The log
    clamp then sits at 2 e instead of e: equal unless a present class scores below 2 e.)"""
    logits = torch.randn(3, C, 6, 7, dtype=F64, requires_grad=True)
    if mode == "multiclass":
        target = _labels(3, C, (6, 7))
    else:
        target = (torch.rand(3, C, 6, 7) < 0.3).to(F64)
        target[:, -1] = 0
    want = smp_jaccard_loss(logits, target, mode, **kwargs)
    kw = smp_to_fusedloss(4, C, mode=mode, **kwargs)
    kw.update(jaccard=True, smooth_nr=2 * kw["smooth_nr"], smooth_dr=2 * kw["smooth_dr"],
              eps=2 * kw["eps"])
    ours = R.dice_loss(logits, target, **kw)
    assert rel_err(ours, want) <= 1e-12
    x = logits.detach().clone().requires_grad_(True)
    _grads_match(want, logits, R.dice_loss(x, target, **kw), x, 1e-10)


def test_reference_equals_monai_dice_ce_single_channel():
    """MONAI DiceCELoss(sigmoid=True, lambda_dice=a, lambda_ce=b) with C = 1 (its forward takes
    BCEWithLogitsLoss, mean over all elements, when input.shape[1] == 1) = bce_dice_loss."""
    x = torch.randn(2, 1, 6, 7, dtype=F64, requires_grad=True)
    t = (torch.rand(2, 1, 6, 7) < 0.3).to(F64)
    want = (0.7 * monai_dice_loss(x, t, sigmoid=True)
            + 1.3 * F.binary_cross_entropy_with_logits(x, t, reduction="mean"))
    xb = x.detach().clone().requires_grad_(True)
    ours = R.bce_dice_loss(xb, t, dice_weight=0.7, bce_weight=1.3)
    assert rel_err(ours, want) <= 1e-12
    _grads_match(want, x, ours, xb, 1e-10)


def test_reference_integer_targets_and_dtypes():
    """Integer targets equal one-hot float targets exactly; an index outside [0, C) is an
    all-zero row; results are float32 for fp16/bf16/fp32 inputs and float64 for float64."""
    x = torch.randn(2, 3, 5, 6, dtype=F64)
    idx = torch.randint(0, 3, (2, 5, 6))
    idx[0, 0, :3] = torch.tensor([-1, 3, 255])
    onehot = F.one_hot(idx.clamp(0, 2), 3).permute(0, 3, 1, 2).to(F64)
    onehot[0, :, 0, :3] = 0
    for kw in (dict(), dict(activation="softmax", reduction="none", include_background=False)):
        assert torch.equal(R.dice_loss(x, idx, **kw), R.dice_loss(x, onehot, **kw))
    for dtype, out in ((torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                       (torch.float32, torch.float32), (F64, F64)):
        assert R.dice_loss(x.to(dtype), idx).dtype == out
        assert R.dice_loss(x.to(dtype), idx, reduction="none").dtype == out
        assert R.bce_dice_loss(x.to(dtype), idx).dtype == out


def test_reference_bce_dice():
    x = torch.randn(2, 3, 5, 6, dtype=F64)
    idx = torch.randint(0, 3, (2, 5, 6))
    onehot = R.one_hot(idx, 3, F64)
    got = R.bce_dice_loss(x, idx, bce_weight=0.3, dice_weight=2.0, include_background=False,
                          reduction="sum", loss_weight=0.5)
    want = 0.5 * (0.3 * F.binary_cross_entropy_with_logits(x, onehot)
                  + 2.0 * R.dice_loss(x, idx, include_background=False, reduction="sum"))
    assert rel_err(got, want) <= 1e-14


# ================================================================= the fused losses

# fp32 math on the rounded inputs: values within fp32 sums; gradients stored in input dtype
VALUE_TOL = 4e-6
SMOOTH = {"monai": dict(smooth_nr=1e-5, smooth_dr=1e-5, eps=0.0),
          "smp": dict(smooth_nr=0.0, smooth_dr=0.0, eps=1e-7),
          "big": dict(smooth_nr=1.0, smooth_dr=2.0, eps=0.0)}

FACTORS = {
    "activation": ["sigmoid", "softmax"],
    "from_logits": [True, False],
    "batch": [False, True],
    "squared_pred": [False, True],
    "jaccard": [False, True],
    "include_background": [True, False],
    "log_loss": [False, True],
    "zero_absent_classes": [False, True],
    "reduction": ["mean", "sum", "none"],
    "weight": [None, "C", "BC"],
    "dtype": [torch.float32, torch.bfloat16, torch.float16],
    "target": ["int", "onehot", "soft"],
    "spatial": ["2d", "3d"],
    "C": [1, 3, 21],
    "smooth": ["monai", "smp", "big"],
    "loss_weight": [1.0, 0.5, "tensor"],
}


def _valid(case):
    if case["C"] == 1 and (case["activation"] == "softmax" or not case["include_background"]):
        return False
    return not (case["weight"] == "BC" and case["batch"])


def _pairwise(factors, valid, seed=17, candidates=80, patience=40):
    """Greedy all-pairs cover (AETG-like) with a fixed seed: each new case is the random valid
    candidate covering the most still-uncovered value pairs; stop after `patience` rounds
    without a new pair."""
    rng = random.Random(seed)
    names = list(factors)
    covered, cases, idle = set(), [], 0
    while idle < patience:
        best, gain = None, 0
        for _ in range(candidates):
            pick = {n: rng.randrange(len(factors[n])) for n in names}
            case = {n: factors[n][i] for n, i in pick.items()}
            if not valid(case):
                continue
            pairs = {(a, pick[a], b, pick[b]) for a, b in itertools.combinations(names, 2)}
            if len(pairs - covered) > gain:
                best, gain, best_pairs = case, len(pairs - covered), pairs
        if best is None:
            idle += 1
            continue
        idle = 0
        covered |= best_pairs
        cases.append(best)
    return cases


CASES = _pairwise(FACTORS, _valid)


def _case_id(c):
    return "-".join([c["activation"][:4], "logit" if c["from_logits"] else "prob",
                     "batch" if c["batch"] else "bc", str(c["dtype"]).split(".")[-1],
                     c["target"], c["spatial"], f"C{c['C']}", c["reduction"]])


def _spatial(kind, C):
    if kind == "2d":
        return (17, 23) if C < 21 else (9, 11)
    return (5, 7, 9) if C < 21 else (3, 5, 7)


def _target(B, C, spatial, kind):
    """int64 indices (C = 1: index 1 is out of range, an empty row; the last sample empty),
    their one-hot in float64, or soft float64 targets with the same absent channels."""
    if C == 1:
        idx = (torch.rand(B, *spatial) < 0.6).long()
        idx[-1] = 1
    else:
        idx = _labels(B, C, spatial)
    if kind == "int":
        return idx
    onehot = R.one_hot(idx, C, F64)
    if kind == "onehot":
        return onehot
    present = (onehot.sum(tuple(range(2, onehot.dim())), keepdim=True) > 0).to(F64)
    return (0.5 * onehot + 0.5 * torch.rand_like(onehot)) * present


def _inputs(B, C, spatial, dtype, activation="sigmoid", from_logits=True, target="int"):
    x = torch.randn(B, C, *spatial, dtype=F64) * 2
    if not from_logits:
        x = torch.softmax(x, 1) if activation == "softmax" else torch.sigmoid(x)
    t = _target(B, C, spatial, target)
    if t.dtype.is_floating_point:
        t = t.to(dtype)
    return x.to(dtype).to(DEVICE), t.to(DEVICE)


def _grad_tol(dtype, want_grad):
    """REL_TOL of the dtype, or twice the error of storing the exact gradient in that dtype
    (fp16 gradients of a mean over thousands of elements are partly subnormal)."""
    if dtype in (torch.float32, F64):
        return 2 * REL_TOL[dtype]
    return max(REL_TOL[dtype], 2 * rel_err(want_grad.to(dtype), want_grad))


def _compare(fused, ref, x, t, *, value_tol=VALUE_TOL):
    """fused(x, t) against ref on the same (rounded) input in float64: value, result dtype,
    gradient of x for a random grad_output (per score for "none") and for exactly 1."""
    xf = x.detach().clone().requires_grad_(True)
    out = fused(xf, t)
    x64 = x.detach().to(F64).requires_grad_(True)
    t64 = t.to(F64) if t.dtype.is_floating_point else t
    want = ref(x64, t64)
    assert out.shape == want.shape
    assert out.dtype == (F64 if x.dtype == F64 else torch.float32)
    assert rel_err(out, want) <= (1e-11 if x.dtype == F64 else value_tol)
    for go in (torch.rand_like(want) * 2, torch.ones_like(want)):
        g, = torch.autograd.grad(out, xf, go.to(out.dtype), retain_graph=True)
        w, = torch.autograd.grad(want, x64, go, retain_graph=True)
        assert g.dtype == x.dtype and g.shape == x.shape
        assert rel_err(g, w) <= (1e-11 if x.dtype == F64 else _grad_tol(x.dtype, w))
    return out


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_dice_loss_pairwise(case):
    B, C = 2, case["C"]
    spatial = _spatial(case["spatial"], C)
    x, t = _inputs(B, C, spatial, case["dtype"], case["activation"], case["from_logits"],
                   case["target"])
    Cp = C if case["include_background"] else C - 1
    weight = {None: None, "C": torch.rand(Cp) + 0.25, "BC": torch.rand(B, Cp)}[case["weight"]]
    if weight is not None:
        weight = weight.to(DEVICE)
        weight.view(-1)[0] = 0.0  # a zero weight among them
    lw = case["loss_weight"]
    if lw == "tensor":
        lw = torch.tensor(2.5, device=DEVICE)
    kw = dict(activation=case["activation"], from_logits=case["from_logits"],
              squared_pred=case["squared_pred"], jaccard=case["jaccard"],
              include_background=case["include_background"], log_loss=case["log_loss"],
              zero_absent_classes=case["zero_absent_classes"], reduction=case["reduction"],
              weight=weight, loss_weight=lw, **SMOOTH[case["smooth"]])
    if case["batch"]:
        kw["reduce_dims"] = (0,) + tuple(range(2, 2 + len(spatial)))
    out = _compare(lambda a, b: fl.dice_loss(a, b, **kw), lambda a, b: R.dice_loss(a, b, **kw),
                   x, t)
    if case["reduction"] == "none":
        assert out.shape == ((Cp,) if case["batch"] else (B, Cp))


def _possible(a, va, b, vb):
    """Whether some valid case holds a = va and b = vb (only a few factors are constrained)."""
    free = ("C", "activation", "include_background", "weight", "batch")
    base = {n: FACTORS[n][0] for n in FACTORS}
    return any(_valid({**base, **dict(zip(free, combo)), a: va, b: vb})
               for combo in itertools.product(*(FACTORS[n] for n in free)))


def test_pairwise_covers_all_pairs():
    """Every possible value pair of the factors appears in some case (a guard on the generator)."""
    names = list(FACTORS)
    seen = {(a, repr(c[a]), b, repr(c[b])) for c in CASES
            for a, b in itertools.combinations(names, 2)}
    for a, b in itertools.combinations(names, 2):
        for va, vb in itertools.product(FACTORS[a], FACTORS[b]):
            if _possible(a, va, b, vb):
                assert (a, repr(va), b, repr(vb)) in seen, (a, va, b, vb)
    assert all(_valid(c) for c in CASES) and len(CASES) <= 30


@pytest.mark.parametrize("spatial", [(37,), (17, 23), (5, 7, 9)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_odd_sizes_and_spatial_ranks(spatial, activation):
    x, t = _inputs(2, 3, spatial, torch.float32, activation)
    batch_dims = (0,) + tuple(range(2, 2 + len(spatial)))
    for kw in (dict(activation=activation),
               dict(activation=activation, reduction="none", reduce_dims=batch_dims)):
        _compare(lambda a, b: fl.dice_loss(a, b, **kw), lambda a, b: R.dice_loss(a, b, **kw), x, t)


EMPTY_OPTIONS = [
    dict(),
    dict(activation="softmax", include_background=False, reduction="none"),
    dict(activation="softmax", zero_absent_classes=True, log_loss=True, smooth_nr=0.0,
         smooth_dr=0.0, eps=1e-7),
    dict(reduce_dims=(0, 2, 3), jaccard=True, squared_pred=True, reduction="sum"),
    dict(zero_absent_classes=True, smooth_nr=1.0, smooth_dr=1.0, reduction="none"),
]


@pytest.mark.parametrize("kw", EMPTY_OPTIONS)
def test_all_background_and_empty_masks(kw):
    """Every pixel background (classes 1, 2 absent in every image) and a C = 1 all-empty mask."""
    x = torch.randn(2, 3, 9, 13, device=DEVICE) * 3
    t = torch.zeros(2, 9, 13, dtype=torch.long, device=DEVICE)
    _compare(lambda a, b: fl.dice_loss(a, b, **kw), lambda a, b: R.dice_loss(a, b, **kw), x, t)
    if kw.get("activation", "sigmoid") == "sigmoid" and kw.get("include_background", True):
        x1 = torch.randn(2, 1, 9, 13, device=DEVICE)
        t1 = torch.zeros(2, 1, 9, 13, device=DEVICE)
        _compare(lambda a, b: fl.dice_loss(a, b, **kw), lambda a, b: R.dice_loss(a, b, **kw),
                 x1, t1)


def test_out_of_range_indices_are_empty_rows():
    x, t = _inputs(2, 3, (9, 13), torch.float32, "softmax")
    t[0, 0, :4] = torch.tensor([-1, 3, 255, -100])
    t[1, 2:4] = 7
    onehot = R.one_hot(t, 3, torch.float32)
    for kw in (dict(activation="softmax"), dict(reduction="none", zero_absent_classes=True)):
        out = _compare(lambda a, b: fl.dice_loss(a, b, **kw), lambda a, b: R.dice_loss(a, b, **kw),
                       x, t)
        assert rel_err(out, fl.dice_loss(x, onehot, **kw)) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_integer_target_equals_onehot_target(dtype):
    x, t = _inputs(2, 4, (9, 13), dtype, "softmax")
    onehot = R.one_hot(t, 4, dtype)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a = fl.dice_loss(xa, t, activation="softmax", reduction="none")
    b = fl.dice_loss(xb, onehot, activation="softmax", reduction="none")
    assert rel_err(a, b) <= 1e-6
    go = torch.rand_like(a)
    assert rel_err(torch.autograd.grad(a, xa, go)[0], torch.autograd.grad(b, xb, go)[0]) <= 1e-6


@pytest.mark.parametrize("index_dtype", [torch.uint8, torch.int16, torch.int32])
def test_integer_index_dtypes(index_dtype):
    x, t = _inputs(2, 4, (9, 13), torch.float32, "softmax")
    kw = dict(activation="softmax", reduction="none")
    want = fl.dice_loss(x, t, **kw)
    assert rel_err(fl.dice_loss(x, t.to(index_dtype), **kw), want) <= 1e-7


@pytest.mark.parametrize("C", [1, 3])
def test_bool_target_equals_float_target(C):
    """A bool target of input's shape is a mask (as a float 0/1 target), not class indices."""
    x = torch.randn(2, C, 9, 13, device=DEVICE)
    mask = torch.rand(2, C, 9, 13, device=DEVICE) < 0.4
    for kw in (dict(reduction="none"), dict(zero_absent_classes=True, reduce_dims=(0, 2, 3))):
        want = R.dice_loss(x.double(), mask.double(), **kw)
        assert rel_err(R.dice_loss(x.double(), mask, **kw), want) <= 1e-15
        _compare(lambda a, b: fl.dice_loss(a, b, **kw), lambda a, b: R.dice_loss(a, b, **kw),
                 x, mask)


def test_empty_spatial():
    """No pixels: every score is (0 + smooth_nr) / (0 + smooth_dr) = 1, the loss 0."""
    x = torch.randn(2, 3, 0, 5, device=DEVICE, requires_grad=True)
    t = torch.zeros(2, 0, 5, dtype=torch.long, device=DEVICE)
    assert torch.equal(R.dice_loss(x.double(), t, reduction="none"), torch.zeros(2, 3, dtype=F64))
    out = fl.dice_loss(x, t, reduction="none")
    assert torch.equal(out, torch.zeros(2, 3, device=DEVICE))
    assert float(fl.dice_loss(x, torch.zeros(2, 3, 0, 5, device=DEVICE))) == 0.0
    assert torch.autograd.grad(out.sum(), x)[0].shape == x.shape


def test_empty_batch():
    """No samples: "mean" over no scores is NaN (as torch), "sum" 0, "none" empty."""
    x0 = torch.randn(0, 3, 4, 5, device=DEVICE, requires_grad=True)
    t0 = torch.zeros(0, 4, 5, dtype=torch.long, device=DEVICE)
    assert math.isnan(float(R.dice_loss(x0, t0)))
    assert math.isnan(float(fl.dice_loss(x0, t0)))
    assert float(fl.dice_loss(x0, t0, reduction="sum")) == 0.0
    assert fl.dice_loss(x0, t0, reduction="none").shape == (0, 3)


def test_absent_class_with_unclamped_log_is_zero():
    """eps = 0, smooth_nr = 0, log_loss: an absent class scores 0, -log(0) = inf; with
    zero_absent_classes its loss and gradient are exactly 0 (smp multiplies by the mask:
    inf * 0 = NaN there; smp's eps > 0 never gets there)."""
    x, t = _inputs(2, 3, (9, 13), torch.float32, "softmax")
    kw = dict(activation="softmax", log_loss=True, smooth_nr=0.0, smooth_dr=0.0, eps=0.0,
              zero_absent_classes=True, reduction="none")
    out = _compare(lambda a, b: fl.dice_loss(a, b, **kw), lambda a, b: R.dice_loss(a, b, **kw),
                   x, t)
    assert out[0, 1] == 0 and out[1, 2] == 0  # absent: class 1 in sample 0, class 2 everywhere


def test_eps_clamps():
    """eps larger than some segments' denominators (smp's clamp_min) and than some scores
    (the log clamp): the clamped quantities carry no gradient, as in the reference."""
    x, t = _inputs(2, 3, (5, 6), torch.float32, "softmax", target="onehot")
    for kw in (dict(activation="softmax", eps=12.0, reduction="none"),
               dict(activation="softmax", eps=0.3, log_loss=True, reduction="none"),
               dict(eps=8.0, jaccard=True, squared_pred=True, log_loss=True,
                    reduce_dims=(0, 2, 3))):
        _compare(lambda a, b: fl.dice_loss(a, b, **kw), lambda a, b: R.dice_loss(a, b, **kw), x, t)


def test_noncontiguous_input_and_target():
    x, t = _inputs(2, 3, (13, 9), torch.float32, target="soft")
    x, t = x.transpose(2, 3), t.transpose(2, 3)  # (2, 3, 9, 13) views
    assert not x.is_contiguous() and not t.is_contiguous()
    kw = dict(reduction="none", squared_pred=True)
    _compare(lambda a, b: fl.dice_loss(a, b, **kw), lambda a, b: R.dice_loss(a, b, **kw), x, t)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(activation="softmax", jaccard=True, reduction="none"),
    dict(log_loss=True, squared_pred=True, reduce_dims=(0, 2, 3), weight="C"),
    dict(activation="softmax", include_background=False, zero_absent_classes=True, eps=1e-7,
         smooth_nr=0.0, smooth_dr=0.0, log_loss=True, weight="BC", reduction="sum"),
])
def test_float64_matches_reference(kw):
    kw = dict(kw)
    x, t = _inputs(2, 4, (9, 13), F64, kw.get("activation", "sigmoid"), target="int")
    Cp = 4 if kw.get("include_background", True) else 3
    kw["weight"] = {None: None, "C": torch.rand(Cp, dtype=F64), "BC": torch.rand(2, Cp, dtype=F64)
                    }[kw.get("weight")]
    _compare(lambda a, b: fl.dice_loss(a, b, **kw), lambda a, b: R.dice_loss(a, b, **kw), x, t)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(activation="softmax", jaccard=True),
    dict(log_loss=True, squared_pred=True, reduce_dims=(0, 2, 3)),
    dict(activation="softmax", include_background=False, reduction="none", smooth_nr=0.5),
    dict(from_logits=False, jaccard=True, log_loss=True, reduction="sum"),
])
def test_gradcheck_float64(kw):
    x = torch.randn(2, 3, 4, 5, dtype=F64, device=DEVICE)
    if not kw.get("from_logits", True):
        x = torch.rand_like(x) * 0.8 + 0.1
    t = torch.randint(0, 3, (2, 4, 5), device=DEVICE)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: fl.dice_loss(a, t, **kw), (x,), eps=1e-6,
                                    atol=1e-7, fast_mode=True)


def test_gradcheck_float64_bce_dice():
    x = torch.randn(2, 3, 4, 5, dtype=F64, device=DEVICE, requires_grad=True)
    t = torch.rand(2, 3, 4, 5, dtype=F64, device=DEVICE)
    assert torch.autograd.gradcheck(
        lambda a: fl.bce_dice_loss(a, t, bce_weight=0.7, jaccard=True, reduction="sum"), (x,),
        eps=1e-6, atol=1e-7, fast_mode=True)


# ----------------------------------------------------------------- BCE + Dice

BCE_CASES = [
    (1, (17, 23), "onehot", torch.float32, dict()),
    (3, (17, 23), "int", torch.float32, dict(include_background=False, reduction="sum",
                                             bce_weight=0.5, dice_weight=2.0)),
    (4, (9, 13), "soft", torch.bfloat16, dict(squared_pred=True, jaccard=True,
                                              reduce_dims=(0, 2, 3), loss_weight="tensor")),
    (21, (9, 11), "int", torch.float16, dict(log_loss=True, zero_absent_classes=True, eps=1e-7,
                                             smooth_nr=0.0, smooth_dr=0.0, weight="C")),
    (3, (5, 7, 9), "onehot", torch.float32, dict(weight="BC", loss_weight=0.25, bce_weight=0.0)),
]


@pytest.mark.parametrize("C,spatial,kind,dtype,kw", BCE_CASES)
def test_bce_dice_loss(C, spatial, kind, dtype, kw):
    kw = dict(kw)
    x, t = _inputs(2, C, spatial, dtype, target=kind)
    Cp = C if kw.get("include_background", True) else C - 1
    if "weight" in kw:
        kw["weight"] = (torch.rand(Cp) if kw["weight"] == "C" else torch.rand(2, Cp)).to(DEVICE)
    if kw.get("loss_weight") == "tensor":
        kw["loss_weight"] = torch.tensor(1.5, device=DEVICE)
    _compare(lambda a, b: fl.bce_dice_loss(a, b, **kw), lambda a, b: R.bce_dice_loss(a, b, **kw),
             x, t)


def test_bce_part_is_bce_with_logits_over_all_channels():
    x, t = _inputs(2, 3, (9, 13), torch.float32, target="int")
    xa = x.clone().requires_grad_(True)
    got = fl.bce_dice_loss(xa, t, dice_weight=0.0, include_background=False)
    x64 = x.double().requires_grad_(True)
    want = F.binary_cross_entropy_with_logits(x64, R.one_hot(t, 3, F64))
    assert rel_err(got, want) <= VALUE_TOL
    assert rel_err(torch.autograd.grad(got, xa)[0], torch.autograd.grad(want, x64)[0]) <= 4e-6


# ----------------------------------------------------------------- engine properties

def _fwd_bwd(x, t, go=None, **kw):
    xa = x.clone().requires_grad_(True)
    out = fl.dice_loss(xa, t, **kw)
    g, = torch.autograd.grad(out, xa, torch.ones_like(out) if go is None else go)
    return out, g


def test_result_dtypes_and_shapes():
    x, t = _inputs(2, 3, (5, 6), torch.float32)
    for dtype, want in ((torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                        (torch.float32, torch.float32), (F64, F64)):
        xd = x.to(dtype)
        assert fl.dice_loss(xd, t).dtype == want and fl.dice_loss(xd, t).shape == ()
        none = fl.dice_loss(xd, t, reduction="none")
        assert none.dtype == want and none.shape == (2, 3)
        assert fl.dice_loss(xd, t, reduction="none", reduce_dims=(0, 2, 3)).shape == (3,)
        assert fl.bce_dice_loss(xd, t).dtype == want


def test_deterministic():
    x, t = _inputs(2, 21, (9, 11), torch.float32, "softmax", target="soft")
    w = torch.rand(21, device=DEVICE)
    for kw in (dict(activation="softmax", weight=w), dict(reduction="none", log_loss=True)):
        a, ga = _fwd_bwd(x, t, **kw)
        b, gb = _fwd_bwd(x, t, **kw)
        assert torch.equal(a, b) and torch.equal(ga, gb)


@pytest.mark.parametrize("kw", [dict(), dict(activation="softmax", reduce_dims=(0, 2, 3),
                                             reduction="none", squared_pred=True)])
def test_block_size_does_not_change_results(kw):
    x, t = _inputs(2, 3, (17, 23), torch.float32, kw.get("activation", "sigmoid"))
    go = torch.rand(() if kw.get("reduction", "mean") != "none" else (3,), device=DEVICE)
    a, ga = _fwd_bwd(x, t, go, **kw)
    with fl.engine_config(block=64):
        b, gb = _fwd_bwd(x, t, go, **kw)
    assert rel_err(b, a) <= 1e-6 and rel_err(gb, ga) <= 1e-6


def test_no_host_sync(monkeypatch):
    x, t = _inputs(2, 3, (9, 13), torch.float32, "softmax")
    w = torch.rand(2, 3, device=DEVICE)
    lw = torch.tensor(0.5, device=DEVICE)
    xa = x.clone().requires_grad_(True)
    calls = trap_host_syncs(monkeypatch)
    loss = fl.dice_loss(xa, t, activation="softmax", weight=w, loss_weight=lw, log_loss=True,
                        zero_absent_classes=True, eps=1e-7)
    loss = loss + fl.bce_dice_loss(xa, t, weight=w, reduction="sum", loss_weight=lw)
    loss.backward(torch.tensor(2.0, device=DEVICE))
    monkeypatch.undo()
    assert calls == []
    assert xa.grad is not None and torch.isfinite(xa.grad).all()


@pytest.mark.compile
def test_compile_fullgraph_matches_eager():
    x, t = _inputs(2, 3, (9, 13), torch.float32, "softmax")
    w = torch.rand(2, device=DEVICE)
    lw = torch.tensor(0.5, device=DEVICE)
    g = torch.rand(2, 2, device=DEVICE)

    def step(a):
        none = fl.dice_loss(a, t, activation="softmax", include_background=False, weight=w,
                            loss_weight=lw, reduction="none")
        return (none * g).sum() + fl.bce_dice_loss(a, t, reduce_dims=(0, 2, 3), jaccard=True)

    xa = x.clone().requires_grad_(True)
    torch._dynamo.reset()
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(xa)
    g_got, = torch.autograd.grad(got, xa)
    want = step(xa)
    g_want, = torch.autograd.grad(want, xa)
    assert rel_err(got, want) <= 1e-6 and rel_err(g_got, g_want) <= 1e-6


# ----------------------------------------------------------------- errors

_BAD_INPUTS = {  # fresh tensors by name, for the error cases below
    "x": lambda: torch.randn(2, 3, 5, 6, device=DEVICE),
    "t": lambda: torch.randint(0, 3, (2, 5, 6), device=DEVICE),
    "tf": lambda: R.one_hot(torch.randint(0, 3, (2, 5, 6), device=DEVICE), 3, torch.float32),
    "x1": lambda: torch.randn(2, 1, 5, 6, device=DEVICE),
    "t1": lambda: (torch.rand(2, 1, 5, 6, device=DEVICE) < 0.5).float(),
    "w4": lambda: torch.rand(4, device=DEVICE),
    "w23": lambda: torch.rand(2, 3, device=DEVICE),
    "w3": lambda: torch.rand(3, device=DEVICE),
}


def _bad(name):
    return _BAD_INPUTS[name]()


ERRORS = [  # (id, call(m, d) with d the inputs, error, match)
    ("input-2d", lambda m, d: m.dice_loss(d("x")[:, :, 0, 0], d("t")[:, 0, 0]), ValueError,
     "input"),
    ("input-6d", lambda m, d: m.dice_loss(d("x").view(2, 3, 5, 6, 1, 1),
                                          d("t").view(2, 5, 6, 1, 1)), ValueError, "input"),
    ("float-target-shape", lambda m, d: m.dice_loss(d("x"), d("tf")[:, :2]), ValueError, "target"),
    ("int-target-class-dim", lambda m, d: m.dice_loss(d("x"), d("t")[:, None]), ValueError,
     "target"),
    ("reduce-dims-channel", lambda m, d: m.dice_loss(d("x"), d("t"), reduce_dims=(1, 2, 3)),
     ValueError, "reduce_dims"),
    ("reduce-dims-partial", lambda m, d: m.dice_loss(d("x"), d("t"), reduce_dims=(2,)),
     ValueError, "reduce_dims"),
    ("reduce-dims-repeat", lambda m, d: m.dice_loss(d("x"), d("t"), reduce_dims=(2, 2, 3)),
     ValueError, "reduce_dims"),
    ("reduce-dims-range", lambda m, d: m.dice_loss(d("x"), d("t"), reduce_dims=(0, 2, 3, 4)),
     ValueError, "reduce_dims"),
    ("softmax-one-channel", lambda m, d: m.dice_loss(d("x1"), d("t1"), activation="softmax"),
     ValueError, "activation|softmax"),
    ("no-background-one-channel",
     lambda m, d: m.dice_loss(d("x1"), d("t1"), include_background=False), ValueError,
     "include_background"),
    ("activation", lambda m, d: m.dice_loss(d("x"), d("t"), activation="relu"), ValueError,
     "activation"),
    ("reduction", lambda m, d: m.dice_loss(d("x"), d("t"), reduction="batchmean"), ValueError,
     "reduction"),
    ("weight-shape", lambda m, d: m.dice_loss(d("x"), d("t"), weight=_bad("w4")), ValueError,
     "weight"),
    ("weight-bc-with-batch", lambda m, d: m.dice_loss(d("x"), d("t"), weight=_bad("w23"),
                                                      reduce_dims=(0, 2, 3)), ValueError, "weight"),
    ("weight-with-background", lambda m, d: m.dice_loss(d("x"), d("t"), weight=_bad("w3"),
                                                        include_background=False), ValueError,
     "weight"),
    ("smooth-nr", lambda m, d: m.dice_loss(d("x"), d("t"), smooth_nr=-1.0), ValueError,
     "smooth_nr"),
    ("smooth-dr", lambda m, d: m.dice_loss(d("x"), d("t"), smooth_dr=math.inf), ValueError,
     "smooth_dr"),
    ("eps", lambda m, d: m.dice_loss(d("x"), d("t"), eps=math.nan), ValueError, "eps"),
    ("target-grad", lambda m, d: m.dice_loss(d("x"), d("tf").requires_grad_(True)), TypeError,
     "target"),
    ("bce-softmax", lambda m, d: m.bce_dice_loss(d("x"), d("t"), activation="softmax"),
     ValueError, "activation|sigmoid"),
    ("bce-probabilities", lambda m, d: m.bce_dice_loss(d("x"), d("t"), from_logits=False),
     ValueError, "from_logits|logits"),
    ("bce-none", lambda m, d: m.bce_dice_loss(d("x"), d("t"), reduction="none"), ValueError,
     "reduction"),
]


@pytest.mark.parametrize("module", ["fused", "reference"])
@pytest.mark.parametrize("call,error,match", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_inputs_raise_before_any_kernel(module, call, error, match):
    m = fl if module == "fused" else R
    before = sum(runtime.launch_counts().values())
    with pytest.raises(error, match=match):
        call(m, _bad)
    assert sum(runtime.launch_counts().values()) == before
