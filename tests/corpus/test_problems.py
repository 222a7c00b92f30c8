"""Prompt datasets: validation with file + row + reason, skip-and-count, formats, images."""

from __future__ import annotations

import json

import pytest

from corpus.problems import DataError, load_problems
from tests.helpers import gradient_image


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_loads_rows_with_images_relative_to_the_file(tmp_path):
    gradient_image(30, 30).save(tmp_path / "img.png")
    f = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": 1, "question": "q?", "answer": 3, "images": ["img.png"], "difficulty": 0.25},
            {"question": "q2?", "answer": "x", "verifier": "exact"},
        ],
    )
    ps = load_problems(f)
    a, b = ps.problems
    assert (a.id, a.answer, a.difficulty, a.images) == ("1", "3", 0.25, [str(tmp_path / "img.png")])
    assert (b.id, b.verifier, b.row) == ("2", "exact", 2)  # id defaults to the row number


def test_an_image_of_a_dataset_given_by_a_relative_path_is_named_absolutely(tmp_path, monkeypatch):
    # the configs give data.path relative to the repository; an actor of a cluster the driver joined runs
    # in another working directory, where "configs/tiny/data/images/x.png" named no file
    (tmp_path / "data").mkdir()
    gradient_image(30, 30).save(tmp_path / "data" / "img.png")
    write_jsonl(tmp_path / "data" / "d.jsonl", [{"question": "q?", "answer": 3, "images": ["img.png"]}])
    monkeypatch.chdir(tmp_path)
    (problem,) = load_problems("data/d.jsonl").problems
    assert problem.images == [str(tmp_path / "data" / "img.png")]


@pytest.mark.fault
@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ('{"question": "q"}', "row 2: missing column 'answer'"),
        ("not json", "row 2: not valid JSON"),
        ('{"question": "", "answer": 1}', "row 2: question must be non-empty"),
        ('{"question": 7, "answer": 1}', "row 2: question must be non-empty text"),
        ('{"question": "q", "answer": " "}', "row 2: answer is empty"),
        ('{"question": "q", "answer": [1, 2]}', "row 2: answer must be text or a number, got list"),
        ('{"question": "q", "answer": 1, "images": [5]}', "row 2: images\\[0\\] is a int"),
        ('{"question": "q", "answer": 1, "difficulty": 2}', "row 2: difficulty 2.0 is outside"),
        ('{"question": "q", "answer": 1, "difficulty": "NaN"}', "row 2: difficulty must be a number"),
        ('{"question": "q", "answer": 1, "verifier": "nope"}', "row 2: unknown verifier 'nope'"),
        ('{"question": "q", "answer": 1, "images": ["missing.png"]}', "row 2: image 0: no such file"),
        ('{"question": "q", "answer": 1, "images": ["empty.png"]}', "row 2: image 0: file .* is empty"),
        ('{"question": "q", "answer": 1, "images": ["corrupt.png"]}', "row 2: image 0: cannot decode"),
        ('{"id": "a", "question": "q", "answer": 1}', "row 2: duplicate id 'a' \\(first at row 1\\)"),
    ],
)
def test_bad_rows_name_file_row_and_reason(tmp_path, row, reason):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    f = write_jsonl(tmp_path / "d.jsonl", ['{"id": "a", "question": "ok?", "answer": 1}', row])
    with pytest.raises(DataError, match=f"d.jsonl, {reason}"):
        load_problems(f)


@pytest.mark.fault
def test_skip_and_count(tmp_path):
    f = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"question": "ok?", "answer": 1},
            "garbage",
            {"question": "q"},
            {"question": "q", "answer": 2, "difficulty": -1},
        ],
    )
    ps = load_problems(f, skip_bad_rows=True)
    assert len(ps) == 1 and sum(ps.skipped.values()) == 3


def test_parquet_via_datasets(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"id": "x", "question": "q?", "answer": "1"}]).to_parquet(
        str(tmp_path / "d.parquet")
    )
    assert load_problems(tmp_path / "d.parquet").problems[0].id == "x"


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_problems(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no usable rows"):
        load_problems(tmp_path / "e.jsonl")
