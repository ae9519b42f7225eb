"""DDP with a global normaliser equals single-process training on the concatenated batch.

Two gloo ranks on CPU (the kernels run under the interpreter in each process)."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fusedloss as fl
from fusedloss.distributed import global_avg_factor
from conftest import DEVICE, rel_err

WORLD = 2


def _batch():
    g = torch.Generator().manual_seed(1234)
    inp = torch.randn(2 * 24, 8, generator=g)
    target = torch.randn(2 * 24, 3, generator=g)
    # very unequal visibility between the halves: rank 0 sees few points
    vis = torch.rand(2 * 24, 1, generator=g) > torch.linspace(0.9, 0.1, 2 * 24).unsqueeze(1)
    return inp, target, vis


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 3)


def _rank_main(rank, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    inp, target, vis = _batch()
    shard = slice(rank * 24, (rank + 1) * 24)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    pred = model(inp[shard])
    af = global_avg_factor(vis[shard], like=pred)
    loss = fl.huber_loss(pred, target[shard], "mean", weight=vis[shard], avg_factor=af)
    loss.backward()
    if rank == 0:
        torch.save(model.module.weight.grad, out_file)
    dist.destroy_process_group()


@pytest.mark.skipif(DEVICE.type != "cpu", reason="gloo test runs on CPU")
def test_ddp_global_normaliser_matches_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "grad.pt")
        mp.spawn(_rank_main, args=(os.path.join(tmp, "init"), out_file), nprocs=WORLD, join=True)
        ddp_grad = torch.load(out_file)
    inp, target, vis = _batch()
    model = _model()
    loss = fl.huber_loss(model(inp), target, "weighted_mean", weight=vis)
    loss.backward()
    assert rel_err(ddp_grad, model.weight.grad) <= 1e-6


def test_global_avg_factor_without_process_group():
    w = torch.rand(4, 1, device=DEVICE) > 0.5
    x = torch.randn(4, 6, device=DEVICE)
    af = global_avg_factor(w, like=x)
    assert af.shape == () and float(af) == float(w.sum()) * 6
    assert float(global_avg_factor(torch.zeros(3, device=DEVICE), clamp_min=1.0)) == 1.0
    with pytest.raises(TypeError, match="weight_or_count"):
        global_avg_factor(3)
