"""The README's Python snippet runs as written against a fresh tiny checkpoint."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python snippet"
    return blocks[0]


@pytest.mark.slow
def test_readme_snippet_generates_from_tiny(tmp_path):
    from kimivl.tiny import make_tiny

    make_tiny(tmp_path / "t")
    script = tmp_path / "snippet.py"
    script.write_text(readme_snippet().replace('"/tmp/t"', repr(str(tmp_path / "t"))))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generated:" in proc.stdout
