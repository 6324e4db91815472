"""Batching: shapes, determinism, resume, sharding, modality grouping, buckets, bad samples, both backends."""
import json
import os
from collections import Counter

import numpy as np
import pytest

from eve_ms.config import IGNORE_INDEX, ConfigError, from_dict
from eve_ms.data.config import DataConfig
from eve_ms.data.dataset import BATCH_KEYS, LlavaLoader
from eve_ms.data.images import ImageProcessor
from eve_ms.data.report import BadSampleError, DataError

N_IMG = 4
PROC = ImageProcessor(16, (0.5,) * 3, (0.5,) * 3)


def make_loader(data, rank=0, world_size=1, log=None, accumulation_steps=1, **overrides):
    data_path, folder, tokenizer = data
    fields = dict(data_path=data_path, image_folder=folder, max_length=160, batch_size=2, backend="python",
                  num_workers=2, seed=7)
    fields.update(overrides)
    return LlavaLoader(DataConfig(**fields), tokenizer, PROC, N_IMG, rank, world_size, accumulation_steps,
                       log=log or (lambda s: None))


def epoch_batches(loader):
    return list(loader)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_has_documented_keys_shapes_and_dtypes(shapes_data):
    batch = make_loader(shapes_data).batch_at(0, 0)
    assert tuple(batch) == BATCH_KEYS
    b, length = batch["input_ids"].shape
    assert (b, length) == (2, 160)
    assert batch["labels"].shape == batch["attention_mask"].shape == (2, 160)
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["pixel_values"].dtype == np.float32
    assert batch["has_image"].shape == (2,)
    for k in ("input_ids", "labels", "attention_mask", "has_image"):
        assert batch[k].dtype == np.int32, k
    n_real = batch["attention_mask"].sum(1)
    for row in range(b):  # right padding: real tokens first, then pad ids with ignored labels
        assert batch["attention_mask"][row, :n_real[row]].all() and not batch["attention_mask"][row, n_real[row]:].any()
        assert (batch["input_ids"][row, n_real[row]:] == shapes_data[2].pad_token_id).all()
        assert (batch["labels"][row, n_real[row]:] == IGNORE_INDEX).all()


def test_text_only_batches_have_zero_pixels_and_image_batches_have_image_tokens(shapes_data):
    loader = make_loader(shapes_data)
    kinds = set()
    for batch in loader:
        kind = int(batch["has_image"][0])
        kinds.add(kind)
        assert (batch["has_image"] == kind).all()  # grouped by modality
        images = (batch["input_ids"] == -200).sum(1)
        if kind:
            assert (images == N_IMG).all() and np.abs(batch["pixel_values"]).sum() > 0
        else:
            assert (images == 0).all() and not batch["pixel_values"].any()
    assert kinds == {0, 1}


def test_without_modality_grouping_batches_mix(shapes_data):
    loader = make_loader(shapes_data, group_by_modality=False)
    mixed = [len(set(b["has_image"].tolist())) == 2 for b in loader]
    assert any(mixed)


def test_order_is_a_function_of_the_seed(shapes_data):
    a = epoch_batches(make_loader(shapes_data))
    b = epoch_batches(make_loader(shapes_data))
    assert_same_batches(a, b)
    c = make_loader(shapes_data, seed=8)
    assert not np.array_equal(make_loader(shapes_data).record_batches(0), c.record_batches(0))
    loader = make_loader(shapes_data)
    assert not np.array_equal(loader.record_batches(0), loader.record_batches(1))  # reshuffled per epoch


def test_resume_from_a_saved_position_gives_exactly_the_remaining_batches(shapes_data):
    reference = make_loader(shapes_data)
    full = epoch_batches(reference) + epoch_batches(reference)

    first = make_loader(shapes_data)
    seen = []
    for batch in first:
        seen.append(batch)
        if len(seen) == 3:
            break
    state = json.loads(json.dumps(first.state_dict()))  # must survive a checkpoint (plain JSON types)
    assert (state["epoch"], state["samples_seen"]) == (0, 3 * 2)

    resumed = make_loader(shapes_data)
    resumed.load_state_dict(state)
    rest = epoch_batches(resumed)
    assert resumed.epoch == 1
    rest += epoch_batches(resumed)
    assert_same_batches(seen + rest, full)


def test_position_saved_after_the_last_batch_resumes_at_the_next_epoch(shapes_data):
    loader = make_loader(shapes_data)
    for batch in loader:
        state = loader.state_dict()  # as a trainer saves it after each step
    assert (state["epoch"], state["samples_seen"]) == (0, 2 * loader.steps_per_epoch)
    logged = []
    resumed = make_loader(shapes_data, log=logged.append)
    resumed.load_state_dict(state)
    assert epoch_batches(resumed) == [] and resumed.epoch == 1 and len(logged) == 1
    assert_same_batches(epoch_batches(resumed), epoch_batches(loader))


def test_position_is_the_same_on_every_rank(shapes_data):
    loaders = [make_loader(shapes_data, rank=r, world_size=2) for r in range(2)]
    for loader in loaders:
        for step, _ in enumerate(loader, start=1):
            if step == 2:
                break
    assert loaders[0].state_dict() == loaders[1].state_dict()
    assert loaders[0].state_dict()["samples_seen"] == 2 * 2 * 2


def test_resume_refuses_another_global_batch(shapes_data):
    state = make_loader(shapes_data).state_dict()
    with pytest.raises(DataError, match="global_batch"):
        make_loader(shapes_data, world_size=2).load_state_dict(state)


def test_split_of_the_global_batch_does_not_change_a_steps_samples(shapes_data):
    """G = 4 as 1 rank x 2 accumulation x 2 samples, or as 2 ranks x 2 accumulation x 1 sample."""
    one = make_loader(shapes_data, batch_size=2, accumulation_steps=2)
    two = [make_loader(shapes_data, rank=r, world_size=2, batch_size=1, accumulation_steps=2) for r in range(2)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == len(one)
    for epoch in range(2):
        a = one.record_batches(epoch).reshape(-1, 4)  # per optimizer step: 2 micro-batches of 2
        b = np.stack([ld.record_batches(epoch).reshape(-1, 2) for ld in two], axis=1)  # [step, rank, micro]
        assert a.shape[0] == b.shape[0]
        for step in range(a.shape[0]):
            assert sorted(a[step]) == sorted(b[step].ravel())
            global_order = one.plan.global_batches(epoch)[step]
            for r in range(2):  # micro-batch m of rank r = samples [(m * world + r) * b, ... + b)
                assert b[step, r].tolist() == [global_order[(m * 2 + r) * 1] for m in range(2)]
    # and a position saved under one split resumes under the other
    for step, _ in enumerate(one, start=1):
        if step == 4:
            break
    two[1].load_state_dict(one.state_dict())
    assert two[1].step == 4


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_shards_of_every_global_batch_covering_all_records(shapes_data, world_size):
    loaders = [make_loader(shapes_data, rank=r, world_size=world_size) for r in range(world_size)]
    has_image = loaders[0].index.has_image
    for epoch in range(2):
        shards = [ld.record_batches(epoch) for ld in loaders]
        assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
        seen = set()
        for step in range(len(shards[0])):
            global_batch = np.concatenate([s[step] for s in shards])
            assert len(set(global_batch.tolist())) == len(global_batch)  # disjoint across ranks
            assert len(set(has_image[global_batch].tolist())) == 1  # one modality per global step
            seen.update(global_batch.tolist())
        assert seen == set(range(len(has_image)))  # every record in every epoch


def test_batch_size_counts_per_rank(shapes_data):
    one = make_loader(shapes_data, batch_size=2)
    two = make_loader(shapes_data, batch_size=2, world_size=2)
    images, texts = int(one.index.has_image.sum()), int((~one.index.has_image).sum())
    assert one.steps_per_epoch == -(-images // 2) + -(-texts // 2)
    assert two.steps_per_epoch == -(-images // 4) + -(-texts // 4)
    dropped = make_loader(shapes_data, batch_size=4, drop_last=True)
    assert dropped.steps_per_epoch == images // 4 + texts // 4


def test_length_buckets_pad_to_the_smallest_fitting_bucket(shapes_data):
    loader = make_loader(shapes_data, length_buckets=[48, 64, 96, 128])
    lengths = set()
    for batch in loader:
        longest = int(batch["attention_mask"].sum(1).max())
        length = batch["input_ids"].shape[1]
        assert length == min(b for b in (48, 64, 96, 128, 160) if b >= longest)
        lengths.add(length)
    assert len(lengths) > 1


def test_mindspore_dataset_with_workers_gives_the_python_batches(shapes_data):
    python = make_loader(shapes_data, rank=1, world_size=2)
    workers = make_loader(shapes_data, rank=1, world_size=2, backend="mindspore", num_workers=2)
    assert_same_batches(epoch_batches(python), epoch_batches(workers))
    assert workers.epoch == 1 and python.last_report.state_dict() == workers.last_report.state_dict()


def test_data_config_loads_from_a_dict_strictly():
    config = from_dict(DataConfig, {"data_path": "d.json", "template": "plain", "length_buckets": [64]}, "run.yaml", "data")
    assert config.buckets == [64, 2048]
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        from_dict(DataConfig, {"data_path": "d.json", "batch_sise": 2}, "run.yaml", "data")
    with pytest.raises(ConfigError, match="missing required key 'data_path'"):
        from_dict(DataConfig, {}, "run.yaml", "data")
    with pytest.raises(ConfigError, match="image_aspect_ratio"):
        DataConfig(data_path="d.json", image_aspect_ratio="stretch")


# ------------------------------------------------------------------ bad samples through the loader


def write_bad_dataset(tmp_path, shapes_data, bad_records):
    """8 good records from the shapes data set plus `bad_records`, as JSON."""
    data_path, folder, _ = shapes_data
    good = json.load(open(data_path))[:8]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    for record in good:
        if "image" in record:
            record["image"] = os.path.join(folder, record["image"])
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(good + bad_records, indent=1), encoding="utf-8")
    return str(path), str(tmp_path)


def scheduled_ids(loader, epoch=0):
    """How often each sample id is scheduled in the epoch on this rank."""
    return Counter(loader.builder.describe(int(r)) for r in loader.record_batches(epoch).ravel())


LOAD_TIME_BAD = {
    "missing_image": {"id": "bad-missing", "image": "gone.png",
                      "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]},
    "image_decode_error": {"id": "bad-broken", "image": "broken.png",
                           "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]},
    "image_tokens_do_not_fit": {"id": "bad-long", "image": "broken.png",
                                "conversations": [{"from": "human", "value": "What? " * 200},
                                                  {"from": "gpt", "value": "A cat."},
                                                  {"from": "human", "value": "<image>\nAnd this?"},
                                                  {"from": "gpt", "value": "A dog."}]},
}
STRUCTURE_BAD = {
    "missing_conversations": {"id": "bad-noconv", "image": "x.png"},
    "bad_role": {"id": "bad-role", "conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "A cat."}]},
    "too_many_image_tags": {"id": "bad-tags", "conversations": [{"from": "human", "value": "<image> <image>"},
                                                                {"from": "gpt", "value": "A cat."}]},
}


def test_bad_samples_are_skipped_counted_and_reported_at_epoch_end(tmp_path, shapes_data):
    bad = list(LOAD_TIME_BAD.values()) + list(STRUCTURE_BAD.values())
    path, folder = write_bad_dataset(tmp_path, shapes_data, bad)
    logged = []
    loader = make_loader((path, folder, shapes_data[2]), log=logged.append)
    assert len(loader.index) == 8 + len(LOAD_TIME_BAD)  # structural problems are left out when indexing
    batches = epoch_batches(loader)
    report = loader.last_report
    scheduled = scheduled_ids(loader)  # a record may be scheduled twice when the last batch is filled up
    for reason, record in LOAD_TIME_BAD.items():
        assert report.counts[reason] == scheduled[record["id"]] >= 1, reason
        assert report.refs[reason] == [record["id"]]
    for reason, record in STRUCTURE_BAD.items():
        assert report.counts[reason] == 1 and report.refs[reason] == [record["id"]], reason
    load_time = sum(scheduled[r["id"]] for r in LOAD_TIME_BAD.values())
    assert report.counts["replaced"] == load_time  # their batch slots were filled
    assert report.num_skipped == load_time + len(STRUCTURE_BAD)
    assert len(logged) == 1 and f"{report.num_skipped} samples skipped" in logged[0] and "bad-missing" in logged[0]
    for batch in batches:  # no trace of the bad samples: every image row has its pixels
        assert batch["input_ids"].shape == (2, 160)
        assert (np.abs(batch["pixel_values"]).sum((1, 2, 3)) > 0).tolist() == batch["has_image"].astype(bool).tolist()


@pytest.mark.parametrize("reason", sorted(LOAD_TIME_BAD))
def test_without_skipping_a_bad_sample_is_an_error_naming_file_and_id(tmp_path, shapes_data, reason):
    path, folder = write_bad_dataset(tmp_path, shapes_data, [LOAD_TIME_BAD[reason]])
    loader = make_loader((path, folder, shapes_data[2]), skip_bad_samples=False)
    with pytest.raises(BadSampleError) as info:
        epoch_batches(loader)
    assert info.value.reason == reason
    assert path in str(info.value) and LOAD_TIME_BAD[reason]["id"] in str(info.value)
    text = open(path).read()
    id_line = text[:text.index(LOAD_TIME_BAD[reason]["id"])].count("\n") + 1
    assert f"(line {id_line - 1})" in str(info.value)  # the line where the record's "{" is


@pytest.mark.parametrize("reason", sorted(STRUCTURE_BAD))
def test_without_skipping_a_structural_problem_fails_at_start(tmp_path, shapes_data, reason):
    path, folder = write_bad_dataset(tmp_path, shapes_data, [STRUCTURE_BAD[reason]])
    with pytest.raises(BadSampleError) as info:
        make_loader((path, folder, shapes_data[2]), skip_bad_samples=False)
    assert info.value.reason == reason
    assert path in str(info.value) and STRUCTURE_BAD[reason]["id"] in str(info.value)


def test_worker_error_reaches_the_caller_with_the_sample_id(tmp_path, shapes_data):
    path, folder = write_bad_dataset(tmp_path, shapes_data, [LOAD_TIME_BAD["missing_image"]])
    loader = make_loader((path, folder, shapes_data[2]), skip_bad_samples=False, backend="mindspore")
    with pytest.raises(Exception, match="bad-missing"):
        epoch_batches(loader)


def test_mindspore_dataset_counts_bad_samples_like_the_python_path(tmp_path, shapes_data):
    path, folder = write_bad_dataset(tmp_path, shapes_data, list(LOAD_TIME_BAD.values()))
    data = (path, folder, shapes_data[2])
    python, workers = make_loader(data), make_loader(data, backend="mindspore", num_workers=2)
    assert_same_batches(epoch_batches(python), epoch_batches(workers))
    scheduled = scheduled_ids(python)
    assert workers.last_report.num_skipped == sum(scheduled[r["id"]] for r in LOAD_TIME_BAD.values())
    assert python.last_report.state_dict() == workers.last_report.state_dict()


def test_report_after_a_resume_covers_the_rest_of_the_epoch_and_says_so(tmp_path, shapes_data):
    path, folder = write_bad_dataset(tmp_path, shapes_data, [LOAD_TIME_BAD["missing_image"]])
    data = (path, folder, shapes_data[2])
    whole = make_loader(data)
    epoch_batches(whole)
    bad_step = next(i for i, records in enumerate(whole.record_batches(0))
                    if any(whole.builder.describe(int(r)) == "bad-missing" for r in records))
    logged = []
    before, after = make_loader(data), make_loader(data, log=logged.append)
    state = dict(before.state_dict(), samples_seen=2 * bad_step)  # resume just before the bad sample
    after.load_state_dict(state)
    epoch_batches(after)
    assert after.last_report.counts == whole.last_report.counts == {"missing_image": 1, "replaced": 1}
    assert f"micro-batches {bad_step}.." in logged[0] if bad_step else "micro-batches" not in logged[0]
    after_it = make_loader(data)
    after_it.load_state_dict(dict(state, samples_seen=2 * (bad_step + 1)))
    epoch_batches(after_it)
    assert after_it.last_report.num_skipped == 0  # what happened before the position is not re-counted


def test_empty_data_set_is_an_error(tmp_path, shapes_data):
    path = tmp_path / "empty.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match="no usable samples"):
        make_loader((str(path), str(tmp_path), shapes_data[2]))


def test_mindspore_dataset_resumes_mid_epoch_like_the_python_path(shapes_data):
    python = make_loader(shapes_data)
    workers = make_loader(shapes_data, backend="mindspore", num_workers=2)
    state = dict(python.state_dict(), step=3)
    python.load_state_dict(state)
    workers.load_state_dict(state)
    assert_same_batches(epoch_batches(python), epoch_batches(workers))


def test_stage_one_captions_with_the_plain_template(tmp_path, make_dataset):
    from eve_ms.data.tokenizer import conversation_texts, train_bpe_tokenizer

    data_path, folder = make_dataset(str(tmp_path), num_image=6, kind="caption", image_size=20, jsonl=True)
    tokenizer = train_bpe_tokenizer(conversation_texts(data_path), vocab_size=600)
    loader = make_loader((data_path, folder, tokenizer), template="plain", max_length=48, batch_size=3)
    records = [json.loads(line) for line in open(data_path)]
    for records_of_batch, batch in zip(loader.record_batches(0), loader):
        for row, record in enumerate(records_of_batch):
            labels = batch["labels"][row]
            caption = records[record]["conversations"][1]["value"]
            assert tokenizer.decode(labels[labels != IGNORE_INDEX]) == caption + "\n"
            first = int(np.flatnonzero(labels != IGNORE_INDEX)[0])
            assert first == 1 + N_IMG  # bos, then the image, then the caption


def test_the_epoch_report_comes_with_its_last_batch_and_a_stopped_run_reports_its_part(tmp_path, shapes_data):
    path, folder = write_bad_dataset(tmp_path, shapes_data, list(LOAD_TIME_BAD.values()))
    logged = []
    loader = make_loader((path, folder, shapes_data[2]), log=logged.append)
    batches = iter(loader)
    for _ in range(loader.steps_per_epoch):
        next(batches)
    # the trainer never asks for the batch after the last one when the run ends with the epoch
    assert len(logged) == 1 and "data report, epoch 0 (rank 0)" in logged[0]
    (record,) = loader.take_reports()
    assert record["event"] == "data_report" and record["complete"] and record["skipped"] == loader.report.num_skipped
    assert loader.finish_report() == [] and len(logged) == 1  # nothing is reported twice

    stopped = make_loader((path, folder, shapes_data[2]), log=logged.append)
    partial = iter(stopped)
    next(partial)
    next(partial)
    (record,) = stopped.finish_report("stop step")
    assert not record["complete"] and record["micro_batches"] == [0, 2]
    assert "micro-batches 0..1, stop step mid-epoch" in logged[-1]


def test_a_worker_error_keeps_its_message_and_type(tmp_path, shapes_data):
    path, folder = write_bad_dataset(tmp_path, shapes_data, [LOAD_TIME_BAD["missing_image"]])
    loader = make_loader((path, folder, shapes_data[2]), skip_bad_samples=False, backend="mindspore", num_workers=2)
    with pytest.raises(DataError) as info:
        epoch_batches(loader)
    message = str(info.value)
    assert "Traceback" not in message and "\n" not in message
    assert path in message and "sample id 'bad-missing'" in message and "missing_image" in message
    assert "data.skip_bad_samples is false" in message


def _fuzzed_file(tmp_path, shapes_data, seed=11):
    """JSONL records of every kind of problem (and of none), plus malformed and non-UTF-8 lines."""
    data_path, folder, _ = shapes_data
    good = json.load(open(data_path))
    for record in good:
        if "image" in record:
            record["image"] = os.path.join(folder, record["image"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    rng = np.random.default_rng(seed)

    def mutate(record, kind):
        record = json.loads(json.dumps(record))
        turns = record["conversations"]
        if kind == "drop_conversations":
            del record["conversations"]
        elif kind == "bad_role":
            turns[0]["from"] = "robot"
        elif kind == "tag_in_reply":
            turns[1]["value"] += " <image>"
        elif kind == "two_tags":
            turns[0]["value"] = "<image> <image> " + turns[0]["value"]
        elif kind == "missing_image":
            record["image"] = "gone.png"
        elif kind == "broken_image":
            record["image"] = str(tmp_path / "broken.png")
        elif kind == "too_long":
            turns[0]["value"] = "word " * int(rng.integers(20, 200)) + turns[0]["value"]
        elif kind == "gpt_first":
            record["conversations"] = [{"from": "gpt", "value": "hello"}] + turns
        elif kind == "no_reply":
            record["conversations"] = turns[:1]
        return record

    kinds = ["good", "drop_conversations", "bad_role", "tag_in_reply", "two_tags", "missing_image", "broken_image",
             "too_long", "gpt_first", "no_reply"]
    lines = []
    for i in range(60):
        record = mutate(good[int(rng.integers(len(good)))], kinds[int(rng.integers(len(kinds)))])
        record["id"] = f"fuzz-{i}"
        lines.append(json.dumps(record).encode("utf-8"))
    for position, raw in ((7, b'{"id": "cut", "conversations": ['), (23, b'{"id": "caf\xe9", "conversations": []}')):
        lines.insert(position, raw)
    path = tmp_path / "fuzzed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path), folder


def test_data_check_and_training_flag_the_same_samples_of_a_fuzzed_file(tmp_path, shapes_data):
    from eve_ms.data.check import check_dataset
    from eve_ms.data.report import SKIP_REASONS
    from eve_ms.data.samples import SampleEncoder
    from eve_ms.data.templates import get_template

    path, folder = _fuzzed_file(tmp_path, shapes_data)
    loader = make_loader((path, folder, shapes_data[2]), batch_size=1, max_reported_ids=1000)
    epoch_batches(loader)
    trained = {(code, ref) for code, refs in loader.last_report.refs.items() if code in SKIP_REASONS for ref in refs}

    encoder = SampleEncoder(get_template("v1"), shapes_data[2], num_image_tokens=N_IMG, max_length=160,
                            image_processor=PROC, image_folder=folder)
    checked = check_dataset(path, encoder, max_ids=1000).report
    flagged = {(code, ref) for code, refs in checked.refs.items() if code in SKIP_REASONS for ref in refs}
    assert len({code for code, _ in flagged}) >= 8  # the fuzzing reached most kinds of problem
    assert ("invalid_utf8", "line 24") in flagged and ("malformed_json", "line 8") in flagged
    assert flagged == trained
