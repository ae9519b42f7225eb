"""The README's test command is the one .ci/run runs, and its examples run."""
import os
import re

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    with open(os.path.join(REPO, path)) as f:
        return f.read()


def test_readme_test_command_is_what_ci_runs():
    ci = _read(".ci/run")
    command = re.search(r"TEST_COMMAND='([^']+)'", ci).group(1)
    assert f"\n{command}\n" in _read("README.md")


def test_readme_usage_example_runs():
    block = re.search(r"## Usage\n\n```python\n(.*?)```", _read("README.md"), re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    loss = namespace["loss"]
    assert loss.shape == () and torch.isfinite(loss)
    for name in ("pred", "preds", "heat", "boxes", "resp", "logits"):
        grad = namespace[name].grad
        assert grad is not None and torch.isfinite(grad).all(), name
