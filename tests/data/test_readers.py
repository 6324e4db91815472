"""Streaming JSON/JSONL readers: records, byte offsets for random access, malformed input with line/column."""
import json

import numpy as np
import pytest

from eve_ms.data import readers
from eve_ms.data.readers import RecordReader, build_index, iter_raw_records
from eve_ms.data.report import BadSampleError, MalformedJSONError

RECORDS = [
    {"id": "a", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nhi"}]},
    {"id": "b", "conversations": [{"from": "human", "value": "größer? 日本 ✓"}]},  # multi-byte text
    {"id": "c", "conversations": [{"from": "gpt", "value": "x" * 300}]},
]


def has_image(record):
    return "image" in record


@pytest.fixture(params=["json", "jsonl"])
def data_file(request, tmp_path):
    path = tmp_path / f"data.{request.param}"
    if request.param == "json":
        path.write_text(json.dumps(RECORDS, indent=2, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS) + "\n", encoding="utf-8")
    return str(path)


def test_records_come_back_in_order(data_file):
    assert [r.value for r in iter_raw_records(data_file)] == RECORDS


def test_small_chunks_give_the_same_records_and_offsets(data_file, monkeypatch):
    whole = [(r.value, r.offset, r.size, r.line) for r in iter_raw_records(data_file)]
    monkeypatch.setattr(readers, "CHUNK_BYTES", 7)  # records straddle many chunk boundaries
    assert [(r.value, r.offset, r.size, r.line) for r in iter_raw_records(data_file)] == whole


def test_index_offsets_read_back_each_record_alone(data_file):
    index = build_index(data_file, has_image)
    raw = open(data_file, "rb").read()
    for i, record in enumerate(RECORDS):
        assert json.loads(raw[index.offsets[i]:index.offsets[i] + index.sizes[i]]) == record
    reader = RecordReader(index)
    assert [reader.read(i) for i in (2, 0, 1)] == [RECORDS[2], RECORDS[0], RECORDS[1]]
    assert index.has_image.tolist() == [True, False, False]


def test_index_lines_point_at_record_starts(data_file):
    index = build_index(data_file, has_image)
    raw = open(data_file, "rb").read()
    for offset, line in zip(index.offsets, index.lines):
        assert raw[offset:offset + 1] == b"{"
        assert raw[:offset].count(b"\n") + 1 == line


def test_records_stream_before_the_file_is_read_to_the_end(tmp_path, monkeypatch):
    """A list whose tail is broken still yields its first records first: nothing waits for the whole file."""
    monkeypatch.setattr(readers, "CHUNK_BYTES", 64)
    body = ",\n".join(json.dumps(r) for r in RECORDS * 50)
    path = tmp_path / "data.json"
    path.write_text("[\n" + body + ",\n{broken\n", encoding="utf-8")
    stream = iter_raw_records(str(path))
    assert next(stream).value == RECORDS[0]
    assert next(stream).value == RECORDS[1]
    with pytest.raises(MalformedJSONError):
        list(stream)


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_malformed_json_list_reports_line_and_column(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(readers, "CHUNK_BYTES", chunk)
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"id": "a", "conversations": []},\n  {"id": "b",, "x": 1}\n]\n', encoding="utf-8")
    with pytest.raises(MalformedJSONError) as info:
        list(iter_raw_records(str(path)))
    err = info.value
    with pytest.raises(json.JSONDecodeError) as reference:  # the whole file through Python's json
        json.loads(path.read_text(encoding="utf-8"))
    assert (err.line, err.column) == (reference.value.lineno, reference.value.colno) == (3, 14)
    assert str(path) in str(err) and "line 3, column 14" in str(err)


def test_missing_comma_between_list_elements_is_located(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"id": "a"}\n {"id": "b"}]', encoding="utf-8")
    with pytest.raises(MalformedJSONError, match="line 2, column 2"):
        list(iter_raw_records(str(path)))


def test_truncated_json_list_is_an_error(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[{"id": "a"}, {"id": "b", "conv', encoding="utf-8")
    with pytest.raises(MalformedJSONError, match="line 1"):
        list(iter_raw_records(str(path)))


def test_top_level_object_that_is_not_jsonl_is_an_error(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('"just a string"', encoding="utf-8")
    with pytest.raises(MalformedJSONError, match="expected a JSON list"):
        list(iter_raw_records(str(path)))


def test_malformed_jsonl_line_is_yielded_with_its_line_and_column(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b" "x": 1}\n{"id": "c"}\n', encoding="utf-8")
    items = list(iter_raw_records(str(path)))
    assert [getattr(i, "value", None) for i in items] == [{"id": "a"}, None, {"id": "c"}]
    err = items[1]
    assert isinstance(err, MalformedJSONError) and (err.line, err.column) == (3, 12)


def test_index_skips_and_counts_malformed_jsonl_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n', encoding="utf-8")
    index = build_index(str(path), lambda r: False, skip_bad_samples=True)
    assert len(index) == 2
    assert index.report.counts == {"malformed_json": 1}
    assert index.report.refs["malformed_json"] == ["line 2"]
    with pytest.raises(MalformedJSONError, match="line 2, column 1"):
        build_index(str(path), lambda r: False, skip_bad_samples=False)


def test_index_names_the_first_bad_record_when_not_skipping(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"id": "good"}, {"id": "bad-7"}]), encoding="utf-8")

    def validate(record):
        if record["id"].startswith("bad"):
            raise BadSampleError("missing_conversations", "no `conversations` list")
        return False

    with pytest.raises(BadSampleError) as info:
        build_index(str(path), validate, skip_bad_samples=False)
    assert str(path) in str(info.value) and "'bad-7'" in str(info.value)
    index = build_index(str(path), validate, skip_bad_samples=True)
    assert len(index) == 1 and index.report.refs["missing_conversations"] == ["bad-7"]


def test_utf8_bom_and_empty_list(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS[:2]).encode())
    index = build_index(str(path), has_image)
    assert [RecordReader(index).read(i) for i in range(2)] == RECORDS[:2]
    empty = tmp_path / "empty.json"
    empty.write_text("[ ]\n", encoding="utf-8")
    assert len(build_index(str(empty), has_image)) == 0


def test_index_holds_offsets_not_records(data_file):
    index = build_index(data_file, has_image)
    assert index.offsets.dtype == np.int64 and index.sizes.dtype == np.int64
    assert not any(isinstance(v, (dict, list)) for v in vars(index).values())


def test_index_cache_is_reused_until_the_file_changes(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    calls = []

    def validate(record):
        calls.append(record["id"])
        return has_image(record)

    cache = str(tmp_path / "cache")
    first = readers.cached_index(str(path), validate, cache_dir=cache, key="v1")
    second = readers.cached_index(str(path), validate, cache_dir=cache, key="v1")
    assert calls == ["a", "b", "c"]  # the second index came from the cache
    for name in ("offsets", "sizes", "lines", "has_image"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    readers.cached_index(str(path), validate, cache_dir=cache, key="plain")
    assert len(calls) == 6  # another key: scanned again
    path.write_text(json.dumps(RECORDS[:2]), encoding="utf-8")
    assert len(readers.cached_index(str(path), validate, cache_dir=cache, key="v1")) == 2
