"""Security guards: no code-executing parsers in the packages, no YAML tags that run code in configs."""

from __future__ import annotations

import ast

import pytest

from rewards import RewardConfig
from runkit.config import ConfigError, load_config
from tests.helpers import ROOT

PACKAGES = ["rl", "rollout", "rewards", "actors", "curriculum", "sft", "kimivl", "benchmarks"]

# Calls that execute text as code (or unpickle it): model outputs, datasets and configs reach these
# packages, so each use needs a reason here. Key: "path/from/repo/root.py: <stripped source line>"
# (the line's text, not its number, so edits elsewhere in the file keep the entry valid).
ALLOWED: dict[str, str] = {}

BANNED = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "pickle.load",
    "pickle.loads",
    "yaml.load",
    "yaml.unsafe_load",
    "yaml.full_load",
}
# sympy's parsers call eval on their input, wherever they are imported from
BANNED_ANYWHERE = {"sympify", "parse_expr", "parse_latex"}


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin, so `import pickle as pk` and `from yaml import load` are seen."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(func: ast.expr, imported: dict[str, str]) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None  # e.g. a call on a call's result: f().eval()
    parts.append(imported.get(func.id, func.id))
    return ".".join(reversed(parts))


def unsafe_calls(source: str, filename: str) -> list[str]:
    """`filename:line: name` for each banned call in `source`."""
    tree = ast.parse(source, filename)
    imported = _imported_names(tree)
    hits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, imported)
        if name and (name in BANNED or name.rsplit(".", 1)[-1] in BANNED_ANYWHERE):
            hits.append((node.lineno, name))
    lines = source.splitlines()
    return [
        f"{filename}:{line}: {name}"
        for line, name in hits
        if f"{filename}: {lines[line - 1].strip()}" not in ALLOWED
    ]


@pytest.mark.fault
def test_checker_flags_what_it_should():
    snippet = (
        "import re, pickle as pk\n"
        "from yaml import load\n"
        "from sympy.parsing.sympy_parser import parse_expr\n"
        "model.eval()\n"
        "re.compile('x')\n"
        "eval(x)\n"
        "pk.loads(b)\n"
        "load(text)\n"
        "parse_expr(s)\n"
    )
    assert unsafe_calls(snippet, "t.py") == [
        "t.py:6: eval",
        "t.py:7: pickle.loads",
        "t.py:8: yaml.load",
        "t.py:9: sympy.parsing.sympy_parser.parse_expr",
    ]


@pytest.mark.fault
def test_no_code_executing_calls_in_packages():
    files = sorted(f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py"))
    assert len(files) > 30, f"only {len(files)} files found; is ROOT {ROOT} right?"
    hits = [h for f in files for h in unsafe_calls(f.read_text(), str(f.relative_to(ROOT)))]
    assert not hits, (
        "calls that execute or unpickle text (add to ALLOWED with a reason if needed):\n" + "\n".join(hits)
    )


@pytest.mark.fault
def test_allow_list_entries_still_exist():
    for key in ALLOWED:
        path, _, line = key.partition(": ")
        assert line in (ROOT / path).read_text(), f"stale ALLOWED entry {key!r}"


@pytest.mark.fault
def test_config_refuses_python_yaml_tags(tmp_path):
    marker = tmp_path / "pwned"
    payload = f'!!python/object/apply:os.system ["echo pwned > {marker}"]'
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"verifier: {payload}\n")
    with pytest.raises(ConfigError) as err:
        load_config(RewardConfig, cfg)
    assert str(cfg) in str(err.value) and "python/object/apply" in str(err.value)
    with pytest.raises(ConfigError, match="verifier"):  # the same tag in a command-line override
        load_config(RewardConfig, None, [f"verifier={payload}"])
    assert not marker.exists()
