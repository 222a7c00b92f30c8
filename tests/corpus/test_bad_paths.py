"""Every command that reads a data set answers a bad path with one line naming it and what was expected,
exit code 2 and no traceback, before any processor, verifier pool, engine or Ray starts: a path that does
not exist, a folder of several data files (what ``kvrl data synth`` writes), and a file of the other kind
(SFT conversations given as prompts, prompts given as SFT conversations)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

PROMPTS = "prompts (rows of id, question, answer)"
CONVERSATIONS = "SFT conversations (rows with a 'messages' list)"
PROMPT_ROW = {"id": "p", "question": "What is 1+1?", "answer": "2"}
SFT_ROW = {
    "id": "c",
    "messages": [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "◁think▷1 plus 1 is 2.◁/think▷2"},
    ],
}


def write_jsonl(path: Path, row: dict, n: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({**row, "id": f"{row['id']}{i}"}) + "\n" for i in range(n)))
    return path


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    """A folder as ``kvrl data synth`` writes it (prompts and SFT conversations side by side), its
    files, and a path that does not exist."""
    folder = tmp_path / "synth"
    return {
        "folder": folder,
        "prompts": write_jsonl(folder / "train.jsonl", PROMPT_ROW),
        "heldout": write_jsonl(folder / "heldout.jsonl", PROMPT_ROW),
        "sft": write_jsonl(folder / "sft_train.jsonl", SFT_ROW),
        "missing": tmp_path / "nope.jsonl",
    }


@pytest.fixture
def tiny(tiny_dir) -> Path:
    return tiny_dir


def guard(monkeypatch, processor: bool = True) -> None:
    """Starting Ray, a verifier pool or (with ``processor``) loading a checkpoint fails the test: the data
    must be checked first."""
    import ray

    from kimivl import KimiVLProcessor
    from rewards.sandbox import VerifierPool

    def refuse(what: str):
        def started(*args, **kwargs):
            pytest.fail(f"{what} started before the data were checked")

        return started

    monkeypatch.setattr(ray, "init", refuse("Ray"))
    monkeypatch.setattr(VerifierPool, "__init__", refuse("a verifier pool"))
    if processor:
        monkeypatch.setattr(KimiVLProcessor, "from_pretrained", refuse("a checkpoint"))


def error_line(capsys, argv: list[str]) -> str:
    """The one line ``kvrl ARGV`` writes to stderr, after checking it exits 2 with it alone."""
    from kvrl.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def expected_for_prompts(case: str, d: dict[str, Path]) -> str:
    return {
        "missing": f"{d['missing']} does not exist; expected a file of {PROMPTS}",
        "folder": f"{d['folder']} is a folder holding heldout.jsonl, sft_train.jsonl, train.jsonl; "
        f"give one file of {PROMPTS}, e.g. {d['prompts']}",
        "sft": f"{d['sft']} holds {CONVERSATIONS}; expected {PROMPTS}",
    }[case]


def expected_for_sft(case: str, d: dict[str, Path]) -> str:
    return {
        "missing": f"{d['missing']} does not exist; expected a file of {CONVERSATIONS}",
        "folder": f"{d['folder']} is a folder holding heldout.jsonl, sft_train.jsonl, train.jsonl; "
        f"give one file of {CONVERSATIONS}, e.g. {d['sft']}",
        "prompts": f"{d['prompts']} holds {PROMPTS}; expected {CONVERSATIONS}",
    }[case]


PROMPT_CASES = ("missing", "folder", "sft")
SFT_CASES = ("missing", "folder", "prompts")


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_eval_tts(case, data, tiny, tmp_path, capsys, monkeypatch):
    guard(monkeypatch)  # --checkpoint is checked before --data: it is a real one
    argv = ["eval", "tts", "--checkpoint", str(tiny), "--data", str(data[case]), "--out", str(tmp_path / "o")]
    assert error_line(capsys, argv) == f"kvrl eval tts: error: {expected_for_prompts(case, data)}"


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_difficulty(case, data, tmp_path, capsys, monkeypatch):
    guard(monkeypatch)  # the data are read first: the checkpoint need not exist
    argv = ["difficulty", "--checkpoint", str(tmp_path / "no-ckpt"), "--data", str(data[case])]
    assert error_line(capsys, argv) == f"kvrl difficulty: error: {expected_for_prompts(case, data)}"


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_sft_build(case, data, tmp_path, capsys, monkeypatch):
    guard(monkeypatch)  # the data are read first: the checkpoint need not exist
    argv = ["sft", "build", "--checkpoint", str(tmp_path / "no-ckpt"), "--data", str(data[case])]
    argv += ["--out", str(tmp_path / "out.jsonl")]
    assert error_line(capsys, argv) == f"kvrl sft build: error: {expected_for_prompts(case, data)}"
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_rl(case, data, tiny, tmp_path, capsys, monkeypatch):
    guard(monkeypatch)  # model: is checked (a directory) before data.path: it is a real one
    run = tmp_path / "run"
    argv = ["rl", "--config", str(ROOT / "configs/tiny/rl.yaml"), f"model={tiny}"]
    argv += [f"trainer.output_dir={run}", f"data.path={data[case]}"]
    assert error_line(capsys, argv) == f"kvrl rl: error: {expected_for_prompts(case, data)}"
    assert not run.exists()


@pytest.mark.parametrize(
    ("key", "case"), [*(("data.path", c) for c in SFT_CASES), ("data.eval_path", "prompts")]
)
def test_sft(key, case, data, tiny, tmp_path, capsys, monkeypatch):
    # The trainer loads the processor before it reads the data; Ray must not start.
    guard(monkeypatch, processor=False)
    run = tmp_path / "run"
    argv = ["sft", "--config", str(ROOT / "configs/tiny/sft.yaml"), f"model={tiny}"]
    argv += [f"trainer.output_dir={run}", f"data.path={data['sft']}", f"{key}={data[case]}"]
    assert error_line(capsys, argv) == f"kvrl sft: error: {expected_for_sft(case, data)}"
    assert not run.exists()


@pytest.mark.parametrize("case", ["missing", "folder"])
def test_verify_jsonl(case, data, capsys, monkeypatch):
    guard(monkeypatch)
    rows = '{"response", "answer"[, "verifier"]} objects'
    expected = {
        "missing": f"{data['missing']} does not exist; expected a jsonl file of {rows}",
        "folder": f"{data['folder']} is a folder holding heldout.jsonl, sft_train.jsonl, train.jsonl; "
        f"give one jsonl file of {rows}",
    }[case]
    assert error_line(capsys, ["verify", "--jsonl", str(data[case])]) == f"kvrl verify: error: {expected}"


def test_files_datasets_cannot_parse_name_the_path(tmp_path):
    from corpus.problems import load_problems
    from corpus.rows import DataError

    (tmp_path / "bad.csv").write_text('question,answer\n"1+1?,2\n')  # a quote left open
    (tmp_path / "bad.parquet").write_text("not parquet\n")
    for kind in ("csv", "parquet"):
        with pytest.raises(DataError) as err:
            load_problems(tmp_path / f"bad.{kind}")
        message = str(err.value)
        assert message.startswith(f"{tmp_path / f'bad.{kind}'}: could not be read as {kind} ("), message
        assert "\n" not in message, message


def test_a_folder_of_one_data_file_reads_it(data):
    from corpus.problems import load_problems

    one = data["prompts"].parent.parent / "one"
    write_jsonl(one / "train.jsonl", PROMPT_ROW)
    assert [p.id for p in load_problems(one).problems] == ["p0", "p1", "p2"]


def test_the_tokenizing_bar_ends_at_100_percent(tiny, capsys):
    from kimivl import KimiVLProcessor
    from sft.data import load_conversations
    from sft.format import encode_all

    conversations = load_conversations(write_jsonl(Path(tiny).parent / "sft.jsonl", SFT_ROW)).conversations
    encode_all(KimiVLProcessor.from_pretrained(tiny), conversations, 256, False, "sft.jsonl")
    draws = capsys.readouterr().err.split("\r")
    assert any(d.startswith("tokenizing sft.jsonl: 100%|") and " 3/3 " in d for d in draws), draws


# A bar as `kvrl sft` drew it in the demo's log (out runs/demo): a description of 41 characters.
TOKENIZING = (
    "tokenizing runs/demo/data/sft_train.jsonl:  97%|█████████▋| 1887/1940 [00:02<00:00, 609.86conv/s]"
)


def test_demo_progress_keeps_the_whole_description(tmp_path):
    from kvrl.demo import last_progress

    log_path = tmp_path / "sft.log"
    log_path.write_text(f"$ kvrl sft --config c.yaml\n\r{TOKENIZING}\r")
    assert last_progress(log_path) == "tokenizing runs/demo/data/sft_train.jsonl 97% 1887/1940"
    long = TOKENIZING.replace("runs/demo", "/home/someone/experiments/kvrl/demo-full-seed3")
    log_path.write_text(f"$ kvrl sft --config c.yaml\n\r{long}\r")
    assert last_progress(log_path) == "tokenizing …demo-full-seed3/data/sft_train.jsonl 97% 1887/1940"


def test_demo_progress_after_the_last_bar(tmp_path):
    """Finished bars read as done, not as still running; a line logged after them says what came next."""
    from kvrl.demo import last_progress

    done = TOKENIZING.replace(" 97%|█████████▋| 1887/1940", " 100%|██████████| 1940/1940")
    held = "tokenizing held-out: 100%|██████████| 60/60 [00:00<00:00, 525.74conv/s]"
    log_path = tmp_path / "sft.log"
    log_path.write_text(f"$ kvrl sft\n\r{TOKENIZING}\r{done}\r{held}\r")
    assert last_progress(log_path) == "tokenizing held-out done"
    with open(log_path, "a") as f:
        f.write("2026-11-30 14:07:27,148 INFO actors.placement: Ray cluster 10.0.0.2:6379: 1 node(s)\n")
    assert last_progress(log_path) == "Ray cluster 10.0.0.2:6379: 1 node(s)"
    # The last 16 KB of a long log may start inside a bar's line: its cut description is not read.
    bar = "RL iterations:  10%|#         | 4/40 [00:52<07:50, 13.1s/it]\n"
    logged = "2026-11-30 14:09:00,000 INFO rl.trainer: checkpoint written\n"
    head = "x" * 100 + "\r"
    filler = "y" * (16384 - len(bar) + 3 - len(logged) - 1) + "\n"
    log_path.write_text(head + bar + filler + logged)
    assert log_path.stat().st_size - 16384 == len(head) + 3  # the tail starts at "iterations: ..."
    assert last_progress(log_path) == "checkpoint written"


def test_a_mixed_folder_suggests_the_plainest_train_file(data):
    from corpus import rows

    write_jsonl(data["folder"] / "train.difficulty.jsonl", PROMPT_ROW)  # what kvrl difficulty writes
    with pytest.raises(rows.DataError, match=re.escape(f"e.g. {data['prompts']}")):
        rows.data_file(data["folder"], rows.PROMPTS)
