"""Every tensor the learner rank makes is made on a device it names.

On a GPU every tensor a NCCL collective touches must live on the rank's GPU; a ``torch.zeros(1)`` lands on
the CPU and the collective fails ("No backend type associated with device type cpu"), at any world size.
The CPU suite cannot see that by running (CPU is the learner's device here), so it reads the code: in the
modules that run on a learner rank once its batch is on the device, a tensor factory must say where.
Host-side builders (``learner/experience.py``, ``learner/packing.py``) make CPU tensors on purpose; the
learner moves their output with ``.to(self.device)``.
"""

from __future__ import annotations

import ast

import pytest

from tests.helpers import ROOT

RANK_MODULES = [
    "learner/rank.py",
    "learner/logprobs.py",
    "learner/loss.py",
    "learner/optim.py",
    "learner/qkclip.py",
    "rl/losses.py",
    "sft/loss.py",
]
FACTORIES = {
    "arange",
    "as_tensor",
    "empty",
    "eye",
    "full",
    "linspace",
    "ones",
    "rand",
    "randint",
    "randn",
    "tensor",
    "zeros",
}


def factories_without_device(source: str) -> list[tuple[int, str]]:
    """(line, call) of each ``torch.<factory>(...)`` call without a ``device=`` keyword."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        named = any(k.arg == "device" for k in node.keywords)
        if isinstance(owner, ast.Name) and owner.id == "torch" and node.func.attr in FACTORIES and not named:
            found.append((node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize("module", RANK_MODULES)
def test_rank_code_names_the_device_of_every_tensor_it_makes(module):
    bad = factories_without_device((ROOT / module).read_text())
    assert not bad, f"{module}: tensors made without device= (CPU on a GPU rank): {bad}"


def test_the_scan_finds_the_nan_guard_bug():
    # The learner's NaN guard once read ``bad = torch.zeros(1)``: all-reduced under NCCL, it failed every
    # step on CUDA. The scan must flag that line and pass the fixed one.
    assert factories_without_device("bad = torch.zeros(1)\n") == [(1, "torch.zeros(1)")]
    assert factories_without_device("bad = torch.zeros(1, device=self.device)\n") == []
    assert factories_without_device("x = hidden.new_zeros(3)\ny = torch.zeros_like(x)\n") == []
