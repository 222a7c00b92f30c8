"""The README and docs cannot drift from the code.

Every command in a fenced ``bash`` block of README.md and docs/*.md is checked: ``kvrl`` commands are
parsed by kvrl's own argument parser, and those with ``--config`` have the config and every
``key=value`` override loaded against its schema; ``bash scripts/...`` must name a script that exists;
``ray job submit ... -- kvrl ...`` is checked for its kvrl part. In a usage synopsis the
``[optional]`` parts are left out and the rest is checked. The commands in :data:`RUN` also run (a
process each). The docs' Python snippet (docs/model.md: generation with vLLM) runs against a fresh
tiny checkpoint (slow tier).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# run in CI, not only parsed: cheap, and each checks what the docs say it prints
RUN = {
    ".venv/bin/kvrl verify --verifier math --answer 0.75 --response "
    "'◁think▷ 1/2 + 1/4 ◁/think▷ \\boxed{\\frac{3}{4}}'": '"correct": true',
    "PYTHONPATH=. .venv/bin/kvrl verify --verifier examples.my_verifier:verify --answer red "
    "--response 'The Red.'": '"correct": true',
    ".venv/bin/kvrl plan --config configs/kimi-vl-a3b/rl-1x8.yaml": "fits",
}


def commands(path: Path) -> list[str]:
    """Each command line of the file's bash blocks: continuation lines joined, comment lines dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line.strip())  # an inline comment
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _required(tokens: list[str]) -> list[str]:
    """A synopsis's tokens without its ``[optional]`` parts (checked: what is left must parse)."""
    out, depth = [], 0
    for t in tokens:
        depth += t.count("[") if not t.startswith("'") else 0
        if depth == 0:
            out.append(t)
        depth -= t.count("]") if not t.startswith("'") else 0
    return out


def _kvrl_part(tokens: list[str]) -> list[str] | None:
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # environment assignments
        tokens = tokens[1:]
    if tokens[:1] == ["ray"] and "--" in tokens:
        tokens = tokens[tokens.index("--") + 1 :]
    if tokens and tokens[0] in ("kvrl", ".venv/bin/kvrl"):
        return tokens[1:]
    return None


def check(line: str) -> str | None:
    """None when the line holds up; else what is wrong."""
    for part in re.split(r"\s&&\s", line):
        tokens = _required(shlex.split(part, comments=True))
        if tokens[:1] == ["bash"] and len(tokens) > 1 and not (ROOT / tokens[1]).is_file():
            return f"no script {tokens[1]}"
        argv = _kvrl_part(tokens)
        if argv is None:
            continue
        problem = _parse(argv)
        if problem:
            return problem
    return None


def _parse(argv: list[str]) -> str | None:
    from kvrl.cli import build_parser

    if argv[:2] == ["sft", "build"]:
        argv = ["sft-build", *argv[2:]]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return None if e.code == 0 else f"kvrl rejects {argv}"
    config = getattr(args, "config", None)
    if config and args.command in ("rl", "plan", "sft"):
        from runkit.config import load_config

        if args.command == "sft":
            from sft.trainer import SFTConfig as schema
        else:
            from rl.config import RLConfig as schema
        try:
            load_config(schema, ROOT / config, getattr(args, "overrides", []))
        except Exception as e:
            return f"{config}: {e}"
    return None


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_documented_command_parses(path, capsys):
    lines = commands(path)
    problems = {line: check(line) for line in lines}
    capsys.readouterr()  # --help output of documented help commands
    bad = {line: p for line, p in problems.items() if p}
    assert not bad, bad


def test_the_commands_ci_runs_are_in_the_docs_and_say_what_they_should():
    documented = {line for path in DOCS for line in commands(path)}
    for line, expected in RUN.items():
        assert line in documented, line
        env, tokens = {}, shlex.split(line)
        while "=" in tokens[0]:
            key, value = tokens.pop(0).split("=", 1)
            env[key] = str(ROOT / value) if key == "PYTHONPATH" else value
        proc = subprocess.run(
            [sys.executable, "-m", "kvrl", *tokens[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, **env},
        )
        assert proc.returncode == 0 and expected in proc.stdout, (
            line,
            proc.stdout[-500:],
            proc.stderr[-800:],
        )


def test_a_wrong_command_is_caught():
    assert "kvrl rejects" in check(".venv/bin/kvrl rl --confg configs/tiny/rl.yaml")
    assert "did you mean 'learner.zero_stage'" in check(
        ".venv/bin/kvrl rl --config configs/tiny/rl.yaml learner.zero_stag=3"
    )
    assert check("bash scripts/nope.sh") == "no script scripts/nope.sh"
    assert check(".venv/bin/kvrl demo [--profile full|quick]") is None  # a synopsis: its required part
    assert "kvrl rejects" in check(".venv/bin/kvrl demo --profil [--quick]")


def python_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "model.md").read_text(), flags=re.S)
    assert blocks, "docs/model.md has no python snippet"
    return blocks[0]


@pytest.mark.slow
def test_the_generation_snippet_runs_from_tiny(tmp_path):
    from kimivl.tiny import make_tiny

    make_tiny(tmp_path / "t")
    script = tmp_path / "snippet.py"
    script.write_text(python_snippet().replace('"/tmp/t"', repr(str(tmp_path / "t"))))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generated:" in proc.stdout


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(path):
    targets = [m.split("#")[0] for m in re.findall(r"\]\(([^)\s]+)\)", path.read_text())]
    missing = [t for t in targets if t and not re.match(r"[a-z]+://", t) and not (path.parent / t).exists()]
    assert not missing, missing
