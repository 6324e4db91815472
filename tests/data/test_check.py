"""`eve-ms data check`: every problem of a data set summarised, non-zero exit when any."""
import json
import os

import pytest

from eve_ms.cli import main


@pytest.fixture(scope="module")
def tokenizer_dir(shapes_data, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("check_tokenizer"))
    shapes_data[2].save_pretrained(path)
    return path


def check(capsys, *args):
    code = main(["data", "check", *args])
    return code, capsys.readouterr().out


def write(tmp_path, name, records, shapes_data):
    """The shapes records (image paths made absolute) followed by `records`."""
    data_path, folder, _ = shapes_data
    good = json.load(open(data_path))
    for r in good:
        if "image" in r:
            r["image"] = os.path.join(folder, r["image"])
    path = tmp_path / name
    path.write_text(json.dumps(good + records), encoding="utf-8")
    return str(path), len(good)


def test_clean_data_set_passes(capsys, shapes_data, tokenizer_dir):
    data_path, folder, _ = shapes_data
    code, out = check(capsys, data_path, "--image-folder", folder, "--tokenizer", tokenizer_dir,
                      "--num-image-tokens", "4", "--max-length", "160")
    assert code == 0, out
    assert "20 records (14 with an image, 6 text-only)" in out
    assert "no bad samples" in out and out.strip().endswith("OK")


def test_every_problem_is_listed_with_its_sample_id(capsys, tmp_path, shapes_data, tokenizer_dir):
    (tmp_path / "broken.png").write_bytes(b"garbage")
    ask = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]
    bad = [
        {"id": "p-missing", "image": "gone.png", "conversations": ask},
        {"id": "p-broken", "image": "broken.png", "conversations": ask},
        {"id": "p-noconv", "image": "x.png"},
        {"id": "p-role", "conversations": [{"from": "bot", "value": "x"}, {"from": "gpt", "value": "y"}]},
        {"id": "p-tags", "conversations": ask},
        {"id": "p-long", "conversations": [{"from": "human", "value": "What? " * 300}, {"from": "gpt", "value": "A cat."}]},
        {"id": "p-trunc", "conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "A cat. " * 300}]},
    ]
    path, n_good = write(tmp_path, "mixed.json", bad, shapes_data)
    code, out = check(capsys, path, "--image-folder", str(tmp_path), "--tokenizer", tokenizer_dir,
                      "--num-image-tokens", "4", "--max-length", "160", "-v")
    assert code == 1
    assert f"{n_good + len(bad)} records" in out
    assert "6 samples skipped" in out
    for reason, sample in [("missing_image", "p-missing"), ("image_decode_error", "p-broken"),
                           ("missing_conversations", "p-noconv"), ("bad_role", "p-role"),
                           ("too_many_image_tags", "p-tags"), ("no_labels", "p-long")]:
        line = next(l for l in out.splitlines() if f"skipped {reason}:" in l)
        assert sample in line, line
    assert "truncated: 1" in out and "p-trunc" in out  # a note, not a failure
    assert "gone.png" in out  # -v prints each problem's detail
    assert out.strip().endswith("FAILED")


def test_workers_find_the_same_problems(capsys, tmp_path, shapes_data):
    bad = [{"id": "w-missing", "image": "gone.png", "conversations": [{"from": "human", "value": "hi"},
                                                                      {"from": "gpt", "value": "yo"}]}]
    path, _ = write(tmp_path, "w.json", bad, shapes_data)
    one = check(capsys, path, "--image-folder", str(tmp_path))
    two = check(capsys, path, "--image-folder", str(tmp_path), "--workers", "2")
    assert one == two and one[0] == 1 and "w-missing" in one[1]


def test_malformed_json_is_reported_with_line_and_column(capsys, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"id": "a", "conversations": []},\n {"id": "b" "x"}\n]', encoding="utf-8")
    code, out = check(capsys, str(path))
    assert code == 1
    assert "FATAL" in out and "line 3, column 13" in out
    assert "missing_conversations: 1" in out  # what came before the break is still checked


def test_malformed_jsonl_lines_are_counted_and_checking_goes_on(capsys, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"id": "g", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    path.write_text(json.dumps(good) + "\n{oops\n" + json.dumps(good) + "\n", encoding="utf-8")
    code, out = check(capsys, str(path))
    assert code == 1
    assert "3 records" in out and "malformed_json: 1" in out and "line 2" in out


def test_tokenizer_without_image_token_count_is_refused(capsys, shapes_data, tokenizer_dir):
    code = main(["data", "check", shapes_data[0], "--tokenizer", tokenizer_dir])
    err = capsys.readouterr().err
    assert code == 2 and "--num-image-tokens" in err and len(err.strip().splitlines()) == 1
