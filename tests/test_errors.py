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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"

# fixed CPU inputs: validation happens before any device work, so the table is device-free
x = torch.zeros(4, 3)
t = torch.zeros(4, 3)
cls = torch.zeros(4, dtype=torch.long)

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
