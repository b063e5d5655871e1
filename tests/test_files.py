"""quarklab.files: atomic writes and the one JSON-lines reader (metrics.jsonl and the judge cache)."""

import json

import pandas as pd
import pytest

from quarklab.errors import QuarkError
from quarklab.files import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl, write_parquet

FIX = "delete that line"


def test_a_missing_file_has_no_rows(tmp_path):
    read = read_jsonl(tmp_path / "none.jsonl", FIX)
    assert read.rows == [] and read.torn is None and read.clean_end


def test_rows_round_trip_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    write_jsonl(path, [{"a": 1}, {"b": [1, 2]}])
    path.write_text(path.read_text() + "\n")
    read = read_jsonl(path, FIX)
    assert read.rows == [{"a": 1}, {"b": [1, 2]}] and read.torn is None and read.clean_end


@pytest.mark.parametrize("tail", ['{"iteration": 2, "ki', '[1, 2]\n', "garbage\n"])
def test_a_bad_last_line_is_torn_and_left_out(tmp_path, tail):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n' + tail)
    read = read_jsonl(path, FIX)
    assert read.rows == [{"a": 1}] and read.torn == tail.rstrip("\n") and read.torn_number == 2
    assert not read.clean_end


def test_a_whole_last_line_without_its_newline_is_kept_but_not_a_clean_end(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}')
    read = read_jsonl(path, FIX)
    assert read.rows == [{"a": 1}, {"b": 2}] and read.torn is None and not read.clean_end


def test_a_bad_line_before_the_last_is_one_error_naming_file_line_and_fix(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(QuarkError, match=r"m.jsonl' line 2 is damaged .*interrupted write never leaves; delete that"):
        read_jsonl(path, FIX)


def test_atomic_writes_replace_whole_files_and_leave_no_temporary(tmp_path):
    atomic_write_json(tmp_path / "a" / "x.json", {"b": 1, "a": 2})
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"a": 2, "b": 1}
    atomic_write_text(tmp_path / "a" / "x.json", "new")
    write_parquet(tmp_path / "a" / "t.parquet", pd.DataFrame({"x": [1, 2]}))
    assert (tmp_path / "a" / "x.json").read_text() == "new"
    assert pd.read_parquet(tmp_path / "a" / "t.parquet")["x"].tolist() == [1, 2]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["t.parquet", "x.json"]
