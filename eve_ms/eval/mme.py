"""MME: yes/no questions in pairs per image; acc and acc+ per subtask, summed scores.

Accepted formats (`--data`):
- the MME eval tool's result-template folder: one `<subtask>.txt` per subtask, lines
  `image<TAB>question<TAB>answer` (a fourth column, a previous model's answer, is
  ignored); images are `<image_folder>/<subtask>/<image>` or
  `<image_folder>/<subtask>/images/<image>` (the released image folder);
- the released `MME_Benchmark_release_version` folder itself: `<subtask>/` holding either
  `images/` and `questions_answers_YN/*.txt`, or image and txt files side by side; each
  txt file holds `question<TAB>answer` lines for the image of the same name.

Only the fourteen official subtasks are read. A response is "yes"/"no" when it is exactly
that (after lower-casing and trimming), else by whether its first four characters contain
"yes" or else "no", else it is wrong (MME's own `calculation.py`). Per subtask, acc is
the share of questions answered right and acc+ the share of images whose questions are
all right; the subtask's score is 100 * (acc + acc+). The perception score (max 2000,
the MME_P of the paper's tables) sums the ten perception subtasks; cognition the other
four. The benchmark's score is the perception sum.
"""
from __future__ import annotations

import os
from collections import defaultdict

from eve_ms.eval.question import DataFormatError, Question, check_unique_ids

SHORT_ANSWER = "Answer the question using a single word or phrase."
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def _read_lines(path: str, columns: int) -> list[tuple[int, list[str]]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < columns:
                raise DataFormatError(f"{path}:{number}: expected {columns} tab-separated columns, got {len(parts)}")
            rows.append((number, parts))
    return rows


def _template_rows(data_path: str, image_folder: str | None, subtask: str) -> list[tuple[str, str, str, str]]:
    """(image name, image path, question, answer) from an eval-tool `<subtask>.txt`."""
    path = os.path.join(data_path, f"{subtask}.txt")
    base = image_folder or data_path
    rows = []
    for _, parts in _read_lines(path, 3):
        name = parts[0]
        candidates = [os.path.join(base, subtask, name), os.path.join(base, subtask, "images", name)]
        image = next((c for c in candidates if os.path.exists(c)), candidates[0])
        rows.append((name, image, parts[1], parts[2]))
    return rows


def _release_rows(subtask_dir: str) -> list[tuple[str, str, str, str]]:
    """(image name, image path, question, answer) from a released `<subtask>/` folder."""
    if os.path.isdir(os.path.join(subtask_dir, "questions_answers_YN")):
        text_dir, image_dir = os.path.join(subtask_dir, "questions_answers_YN"), os.path.join(subtask_dir, "images")
    else:
        text_dir = image_dir = subtask_dir
    rows = []
    for text_name in sorted(n for n in os.listdir(text_dir) if n.endswith(".txt")):
        stem = text_name[:-4]
        image_name = next((stem + ext for ext in _IMAGE_EXTENSIONS
                           if os.path.exists(os.path.join(image_dir, stem + ext))), None)
        if image_name is None:
            raise FileNotFoundError(f"no image for {os.path.join(text_dir, text_name)} in {image_dir}")
        for _, parts in _read_lines(os.path.join(text_dir, text_name), 2):
            rows.append((image_name, os.path.join(image_dir, image_name), parts[0], parts[1]))
    return rows


def load(data_path: str, image_folder: str | None) -> list[Question]:
    if not os.path.isdir(data_path):
        raise FileNotFoundError(f"MME data must be a folder (eval-tool templates or the released benchmark): "
                                f"{data_path}")
    questions = []
    for subtask in PERCEPTION + COGNITION:
        if os.path.exists(os.path.join(data_path, f"{subtask}.txt")):
            rows = _template_rows(data_path, image_folder, subtask)
        elif os.path.isdir(os.path.join(data_path, subtask)):
            rows = _release_rows(os.path.join(data_path, subtask))
        else:
            continue
        count_per_image: dict[str, int] = defaultdict(int)
        for name, image, question, answer in rows:
            answer = answer.strip().lower()
            if answer not in ("yes", "no"):
                raise DataFormatError(f"MME {subtask}/{name}: answer {answer!r} is not yes/no")
            k = count_per_image[name]
            count_per_image[name] += 1
            questions.append(Question(
                id=f"{subtask}/{name}/{k}", answer=answer, image=image, group=f"{subtask}/{name}",
                fields={"question": question, "subtask": subtask},
            ))
    if not questions:
        raise FileNotFoundError(f"no MME subtask (<subtask>.txt or <subtask>/) in {data_path}")
    return check_unique_ids(questions, data_path)


def build_prompt(question: Question) -> str:
    return f"{question.fields['question']}\n{SHORT_ANSWER}"


def parse_yes_no(response: str) -> str:
    text = response.strip().lower()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    if "no" in text[:4]:
        return "no"
    return "other"


def score(questions: list[Question], responses: dict[str, str]) -> dict:
    per_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for q in questions:
        per_image[q.fields["subtask"]][q.unit].append(parse_yes_no(responses[q.id]) == q.answer)
    subtasks = {}
    for subtask, images in per_image.items():
        answers = [hit for hits in images.values() for hit in hits]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(hits) for hits in images.values()) / len(images)
        subtasks[subtask] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                             "questions": len(answers), "images": len(images)}
    perception = sum(m["score"] for t, m in subtasks.items() if t in PERCEPTION)
    cognition = sum(m["score"] for t, m in subtasks.items() if t in COGNITION)
    has_perception = any(t in PERCEPTION for t in subtasks)
    return {"score": perception if has_perception else cognition,
            "perception": perception if has_perception else None,
            "cognition": cognition if any(t in COGNITION for t in subtasks) else None,
            "subtasks": {t: subtasks[t] for t in PERCEPTION + COGNITION if t in subtasks}}
