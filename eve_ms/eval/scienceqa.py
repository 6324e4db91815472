"""ScienceQA-IMG: option accuracy on the test questions that come with an image.

Accepted formats (ground truth always comes from the official `problems.json`):
- the ScienceQA data folder holding `problems.json` (and `pid_splits.json`), or the path
  of `problems.json` itself: test split (from `pid_splits.json`, else each problem's
  `split`), problems with an image; images are `<image_folder>/<pid>/<image>` (point
  `--image-folder` at ScienceQA's `test` image folder);
- LLaVA's converted `llava_test_CQM-A.json` with `problems.json` beside it: the records
  that have an `image`, prompted with LLaVA's own question text; images are
  `<image_folder>/<record image>`.

The prompt ends with LLaVA's instruction to answer with the option letter. The letter is
read from the response as LLaVA's ScienceQA evaluation does: the whole response is one
letter, or it starts with "X. ", or it says "The answer is X"; anything else is wrong.
"""
from __future__ import annotations

import os
import re

from eve_ms.eval.question import (
    OPTION_LETTERS, DataFormatError, Question, check_unique_ids, lettered_options, read_json, require_keys,
    require_path,
)

LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
_ANSWER_IS = re.compile(r"The answer is ([A-E])")


def _problems_path(data_path: str) -> str:
    if os.path.isdir(data_path):
        return require_path(os.path.join(data_path, "problems.json"), "ScienceQA problems.json")
    if os.path.basename(data_path) == "problems.json":
        return data_path
    return require_path(os.path.join(os.path.dirname(data_path), "problems.json"),
                        f"problems.json beside {data_path} (ScienceQA ground truth)")


def _test_pids(problems: dict, problems_path: str) -> list[str]:
    splits_path = os.path.join(os.path.dirname(problems_path), "pid_splits.json")
    if os.path.exists(splits_path):
        splits = read_json(splits_path)
        if "test" not in splits:
            raise DataFormatError(f"{splits_path}: no 'test' split")
        return [str(pid) for pid in splits["test"]]
    return [pid for pid, p in problems.items() if p.get("split") == "test"]


def load(data_path: str, image_folder: str | None) -> list[Question]:
    problems_path = _problems_path(data_path)
    problems = read_json(problems_path)
    converted = not (os.path.isdir(data_path) or os.path.basename(data_path) == "problems.json")
    if converted:
        records = read_json(data_path)
        if not isinstance(records, list):
            raise DataFormatError(f"{data_path}: expected LLaVA's list of converted ScienceQA records")
        entries = []
        for number, record in enumerate(records):
            require_keys(record, ("id", "conversations"), f"{data_path}: record {number}")
            if record.get("image"):
                prompt = record["conversations"][0]["value"].replace("<image>", "").strip()
                entries.append((str(record["id"]), prompt, os.path.join(image_folder or "", record["image"])))
    else:
        entries = []
        for pid in _test_pids(problems, problems_path):
            if pid in problems and problems[pid].get("image"):
                entries.append((pid, None, os.path.join(image_folder or "", pid, problems[pid]["image"])))
    questions = []
    for pid, prompt, image in entries:
        if pid not in problems:
            raise DataFormatError(f"{data_path}: question {pid} is not in {problems_path}")
        problem = problems[pid]
        require_keys(problem, ("question", "choices", "answer"), f"{problems_path}: problem {pid}")
        if not 0 <= int(problem["answer"]) < len(problem["choices"]) <= len(OPTION_LETTERS):
            raise DataFormatError(f"{problems_path}: problem {pid} has answer {problem['answer']} "
                                  f"for {len(problem['choices'])} choices")
        questions.append(Question(
            id=pid, answer=int(problem["answer"]), image=image,
            fields={"question": problem["question"], "choices": list(problem["choices"]),
                    "hint": problem.get("hint") or "", "llava_prompt": prompt},
        ))
    return check_unique_ids(questions, data_path)


def build_prompt(question: Question) -> str:
    body = question.fields.get("llava_prompt")
    if not body:
        lines = []
        if question.fields["hint"]:
            lines.append(f"Context: {question.fields['hint']}")
        lines += [question.fields["question"], lettered_options(question.fields["choices"])]
        body = "\n".join(lines)
    return f"{body}\n{LETTER_ANSWER}"


def extract_letter(response: str, num_choices: int) -> str | None:
    """The option letter a response gives, or None when it gives none of the valid ones."""
    valid = tuple(OPTION_LETTERS[:num_choices])
    text = response.replace("\n", ". ")
    if text.strip() in valid:
        return text.strip()
    if len(text) >= 3 and text[0] in valid and text[1:3] == ". ":
        return text[0]
    match = _ANSWER_IS.search(text)
    if match and match.group(1) in valid:
        return match.group(1)
    return None


def score(questions: list[Question], responses: dict[str, str]) -> dict:
    correct = unparsed = 0
    for q in questions:
        letter = extract_letter(responses[q.id], len(q.fields["choices"]))
        unparsed += letter is None
        correct += letter == OPTION_LETTERS[q.answer]
    accuracy = 100.0 * correct / len(questions)
    return {"score": accuracy, "accuracy": accuracy, "correct": correct, "total": len(questions),
            "unparsed": unparsed}
