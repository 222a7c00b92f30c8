"""A kvrl verifier plug-in to copy. Contract (docs/verifiers.md):

    verify(prediction: str, gold: str) -> bool

``prediction`` is the model's extracted final answer (after ``◁/think▷``, narrowed to the last
``\\boxed{…}`` or "answer is …"); ``gold`` is the dataset's ``answer``. Raise to refuse an input: the
sample scores 0 and your message is recorded. Never eval/exec model text.

Use it with ``kvrl verify --verifier examples.my_verifier:verify …``, ``rewards.verifier:
examples.my_verifier:verify`` in a config, or a ``verifier`` column in the dataset.
"""

import re

_COLOR_WORDS = {"red", "green", "blue", "yellow", "black", "white"}


def verify(prediction: str, gold: str) -> bool:
    """Example: a color answer, case-insensitive, ignoring articles ("The Red." == "red")."""
    words = re.findall(r"[a-z]+", prediction.lower())
    colors = [w for w in words if w in _COLOR_WORDS]
    if len(colors) > 1:
        raise ValueError(f"more than one color named: {colors}")
    return bool(colors) and colors[0] == gold.strip().lower()
