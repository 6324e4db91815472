"""Writers of benchmark files in their released formats, a few records each, for the evaluation tests.

Each writer lays files out as the benchmark's release (or the data package the protocol reads)
does: names, folders, headers, JSON layouts. The records are made up.
"""
import csv
import json
import os

MMLU = {  # subject -> (dev rows, test rows): question, A-D, answer
    "astronomy": ([(f"Dev astronomy question {i}?", "a", "b", "c", "d", "ABCD"[i % 4]) for i in range(5)],
                  [("Which planet is known as the red planet?", "Venus", "Mars", "Earth", "Jupiter", "B"),
                   ("What is the closest star to Earth?", "Sirius", "Vega", "The Sun", "Polaris", "C")]),
    "virology": ([(f"Dev virology question {i}?", "w", "x", "y", "z", "DCBA"[i % 4]) for i in range(5)],
                 [("Which of these is a virus?", "E. coli", "Yeast", "Influenza", "Algae", "C")]),
}
CEVAL = {  # subject -> (dev rows, val rows)
    "computer_network": ([(f"开发题{i}", "甲", "乙", "丙", "丁", "ABCD"[i % 4]) for i in range(5)],
                         [("TCP协议工作在哪一层？", "传输层", "网络层", "应用层", "物理层", "A"),
                          ("IP协议工作在哪一层？", "传输层", "应用层", "物理层", "网络层", "D")]),
}
CMMLU = {  # subject -> (dev rows, test rows)
    "agronomy": ([(f"农学开发题{i}", "一", "二", "三", "四", "BCDA"[i % 4]) for i in range(5)],
                 [("下列哪种肥料是氮肥？", "尿素", "磷酸钙", "氯化钾", "石灰", "A"),
                  ("水稻属于哪一科？", "豆科", "禾本科", "茄科", "菊科", "B")]),
}


def _write_csv(path, rows, header=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def _write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return str(path)


def write_mmlu(root, subjects=MMLU):
    """Hendrycks' `data/`: `dev/<s>_dev.csv` and `test/<s>_test.csv`, no header."""
    for subject, (dev, test) in subjects.items():
        _write_csv(os.path.join(root, "dev", f"{subject}_dev.csv"), dev)
        _write_csv(os.path.join(root, "test", f"{subject}_test.csv"), test)
    return str(root)


def write_ceval(root, subjects=CEVAL):
    """ceval-exam: `dev/<s>_dev.csv` (with explanations), `val/<s>_val.csv`, header id,question,A-D,answer,..."""
    for subject, (dev, val) in subjects.items():
        _write_csv(os.path.join(root, "dev", f"{subject}_dev.csv"),
                   [(i, *row, f"解析{i}") for i, row in enumerate(dev)],
                   ["id", "question", "A", "B", "C", "D", "answer", "explanation"])
        _write_csv(os.path.join(root, "val", f"{subject}_val.csv"), [(i, *row) for i, row in enumerate(val)],
                   ["id", "question", "A", "B", "C", "D", "answer"])
    return str(root)


def write_cmmlu(root, subjects=CMMLU):
    """CMMLU: `dev/<s>.csv` and `test/<s>.csv`, header `,Question,A,B,C,D,Answer` (a pandas index first)."""
    for subject, (dev, test) in subjects.items():
        header = ["", "Question", "A", "B", "C", "D", "Answer"]
        _write_csv(os.path.join(root, "dev", f"{subject}.csv"), [(i, *row) for i, row in enumerate(dev)], header)
        _write_csv(os.path.join(root, "test", f"{subject}.csv"), [(i, *row) for i, row in enumerate(test)], header)
    return str(root)


BOOLQ = [
    {"question": "is the sun a star", "passage": "The Sun is the star at the center of the Solar System.",
     "idx": 0, "label": True},
    {"question": "is a whale a fish", "passage": "Whales are marine mammals.", "idx": 1, "label": False},
    {"question": "can penguins fly", "passage": "Penguins are flightless birds.", "idx": 2, "label": False},
]
AXB = [
    {"sentence1": "The cat sat on the mat.", "sentence2": "A cat was on a mat.", "idx": 0, "label": "entailment"},
    {"sentence1": "The dog barked.", "sentence2": "The dog was silent.", "idx": 1, "label": "not_entailment"},
]
PIQA = [
    ({"id": "p0", "goal": "To fill a glass with water", "sol1": "Use a spoon.",
      "sol2": "Pour the water slowly into the glass."}, 1),
    ({"id": "p1", "goal": "To open a jar", "sol1": "Twist the lid.", "sol2": "Paint the lid."}, 0),
]
EPRSTMT = [
    {"id": 0, "sentence": "质量很好，非常满意", "label": "Positive"},
    {"id": 1, "sentence": "太差了，不会再买", "label": "Negative"},
]
XSUM = [
    {"dialogue": "The council voted to close the old bridge after engineers found cracks.",
     "summary": "The old bridge will close after cracks were found.", "id": "x1"},
    {"dialogue": "Heavy storms hit the northern coast on Monday, cutting power to thousands.",
     "summary": "Storms hit the coast.", "id": "x2"},
]


def write_boolq(root, records=BOOLQ):
    """SuperGLUE `BoolQ/val.jsonl` (JSON boolean labels)."""
    return _write_jsonl(os.path.join(root, "BoolQ", "val.jsonl"), records)


def write_axb(root, records=AXB):
    """SuperGLUE `AX-b/AX-b.jsonl`."""
    return _write_jsonl(os.path.join(root, "AX-b", "AX-b.jsonl"), records)


def write_piqa(root, records=PIQA, name="dev"):
    """PIQA: `<name>.jsonl` without labels and `<name>-labels.lst` beside it."""
    path = _write_jsonl(os.path.join(root, f"{name}.jsonl"), [record for record, _ in records])
    with open(os.path.join(root, f"{name}-labels.lst"), "w", encoding="utf-8") as f:
        f.write("".join(f"{label}\n" for _, label in records))
    return path


def write_eprstmt(root, records=EPRSTMT):
    """FewCLUE `eprstmt/dev_few_all.json` (JSON lines despite the name)."""
    return _write_jsonl(os.path.join(root, "eprstmt", "dev_few_all.json"), records)


def write_xsum(root, records=XSUM, article_key="dialogue"):
    """OpenCompass's `Xsum/dev.jsonl` (`dialogue`), or with `document` as the Hugging Face split has it."""
    records = [{(article_key if k == "dialogue" else k): v for k, v in r.items()} for r in records]
    return _write_jsonl(os.path.join(root, "Xsum", "dev.jsonl"), records)


TEXTVQA = [  # (annotation, LLaVA question record or None)
    ({"question": "what brand is the drink?", "image_id": "img_a", "question_id": 34602,
      "answers": ["coca cola"] * 4 + ["coke"] * 3 + ["cola"] * 3},
     {"question_id": "img_a", "image": "img_a.jpg", "category": "default",
      "text": "What brand is the drink?\nReference OCR token: COCA, Cola, Classic\n"
              "Answer the question using a single word or phrase."}),
    ({"question": "how many people are there?", "image_id": "img_a", "question_id": 34603,
      "answers": ["2", "2", "two"] + ["three"] * 7},
     {"question_id": "img_a", "image": "img_a.jpg", "category": "default",
      "text": "How many people are there?\nAnswer the question using a single word or phrase."}),
    ({"question": "what does the sign say?", "image_id": "img_c", "question_id": 34604,
      "answers": ["stop"] + ["stop sign"] * 9},
     {"question_id": "img_c", "image": "img_c.jpg", "category": "default",
      "text": "What does the sign say?\nReference OCR token: STOP, ahead\n"
              "Answer the question using a single word or phrase."}),
]


def write_textvqa(root, records=TEXTVQA):
    """`TextVQA_0.5.1_val.json` and LLaVA's `llava_textvqa_val_v051_ocr.jsonl` side by side."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "TextVQA_0.5.1_val.json"), "w", encoding="utf-8") as f:
        json.dump({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
                   "data": [annotation for annotation, _ in records]}, f)
    _write_jsonl(os.path.join(root, "llava_textvqa_val_v051_ocr.jsonl"), [q for _, q in records if q is not None])
    return str(root)
