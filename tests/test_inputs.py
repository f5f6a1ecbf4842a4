"""The one JSONL reader every user data file goes through (validation, ACCM data, calibration)."""

import json

import pytest

from accm.errors import InputError
from accm.inputs import jsonl_rows


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_resolve_images_against_the_file_and_keep_their_line(tmp_path):
    f = _write(tmp_path / "d.jsonl", [json.dumps({"image": "a.png", "question": "q ?"}), "",
                                      json.dumps({"image": "sub/b.png", "question": "r ?", "answer": "x"})])
    rows, problems = jsonl_rows(f, ("image", "question"))
    assert [r["_line"] for r in rows] == [1, 3] and problems == []
    assert rows[0]["image"] == str((tmp_path / "a.png").resolve()) and rows[1]["answer"] == "x"


@pytest.mark.parametrize("line,words", [("{not json", "valid JSON"), (json.dumps({"image": "a.png"}), "question"),
                                        (json.dumps([1, 2]), "image")])
def test_strict_reading_names_the_first_bad_line(tmp_path, line, words):
    f = _write(tmp_path / "d.jsonl", [json.dumps({"image": "a.png", "question": "q"}), line])
    with pytest.raises(InputError, match=f"d.jsonl:2: needs.*{words}"):
        jsonl_rows(f, ("image", "question"))


def test_lenient_reading_skips_and_describes_bad_lines(tmp_path):
    f = _write(tmp_path / "d.jsonl", ["{bad", json.dumps({"prompt": "p"}), json.dumps({"other": 1})])
    rows, problems = jsonl_rows(f, ("prompt",), lenient=True)
    assert [r["prompt"] for r in rows] == ["p"] and len(problems) == 2


def test_missing_or_empty_files_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        jsonl_rows(tmp_path / "nope.jsonl", ("image",), "validation")
    with pytest.raises(InputError, match="holds no samples"):
        jsonl_rows(_write(tmp_path / "e.jsonl", [""]), ("image",))
