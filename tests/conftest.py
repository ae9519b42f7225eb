"""Shared test helpers.

Device: CPU under the Triton interpreter (how CI runs: TRITON_INTERPRET=1 set before import),
or CUDA when a GPU is present and FUSEDLOSS_TEST_DEVICE=cuda (the one-call GPU check).
"""
import os
import zlib

import pytest
import torch

import fusedloss  # noqa: F401  (imported after TRITON_INTERPRET is read by triton)
from fusedloss import _engine

DEVICE = torch.device(os.environ.get("FUSEDLOSS_TEST_DEVICE", "cpu"))
if DEVICE.type == "cpu" and not _engine.INTERPRETED:
    raise RuntimeError("run the tests with TRITON_INTERPRET=1 (set before Python starts) on CPU: "
                       "otherwise the CPU path is the reference and the kernels go untested")

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# norm-relative error bounds against a float64 reference, per dtype of the computation
REL_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| over entries where ref is finite (0/0 counts as 0)."""
    out = out.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out)[finite], torch.ones_like(finite)[finite]), \
        "non-finite output where the reference is finite"
    diff = (out[finite] - ref[finite]).norm()
    scale = ref[finite].norm()
    if scale == 0:
        return float(diff)
    return float(diff / scale)


# the Tensor methods that read a device value on the host (a sync on a GPU)
HOST_SYNCS = ("item", "__bool__", "tolist", "__float__", "__int__", "__index__", "numpy",
              "nonzero")


def trap_host_syncs(monkeypatch, names=HOST_SYNCS) -> list:
    """Patch each Tensor method in ``names`` to record its name in the returned list (and still
    work); ``monkeypatch.undo()`` ends the trap."""
    calls = []
    for name in names:
        original = getattr(torch.Tensor, name)

        def trap(self, *a, _name=name, _orig=original, **k):
            calls.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, trap)
    return calls


@pytest.fixture(autouse=True)
def _seed(request):
    # fresh but reproducible random inputs per test
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture
def device():
    return DEVICE
