"""MMBench (dev): multiple choice with circular evaluation.

Accepted format: the released tsv (`mmbench_dev_*.tsv` / `MMBench_DEV_EN.tsv`) with
columns `index, question, hint, A, B, C, D, answer, image` (base64) and optionally
`category`; options are the letter columns up to the first empty one. Two layouts:
- plain: one row per question; each question is asked once per rotation of its options
  (options shifted left by k, the answer letter moved with them), ids `<index>/r<k>`;
- circular already (some `index` >= 1,000,000, as VLMEvalKit ships it): the rotated copies
  are rows of their own; a row belongs to question `index mod 1,000,000`.

A question counts as right only if every one of its rotations is answered right
("circular accuracy", the benchmark's score). The letter is read from the free-text
response without a judge model, the way the common MMBench tooling tries first: a unique
option letter standing alone among the response's words (a lone "A" in a longer
sentence is taken for the article and not trusted), else a unique option whose text
appears in the response; anything else is wrong.
"""
from __future__ import annotations

from collections import defaultdict

from eve_ms.eval.question import (
    OPTION_LETTERS, DataFormatError, Question, check_unique_ids, is_blank, lettered_options, read_table, require_keys,
)

LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
CIRCULAR_OFFSET = 1_000_000
_SEPARATORS = ".()[],:;!*#{}"


def _options(row: dict[str, str]) -> list[str]:
    options = []
    for letter in OPTION_LETTERS:
        if letter not in row or is_blank(row[letter]):
            break
        options.append(row[letter])
    return options


def load(data_path: str, image_folder: str | None = None) -> list[Question]:
    rows = read_table(data_path, delimiter="\t")
    for number, row in enumerate(rows, 2):
        require_keys(row, ("index", "question", "answer", "image"), f"{data_path}:{number}")
    indices = []
    for number, row in enumerate(rows, 2):
        try:
            indices.append(int(float(row["index"])))
        except ValueError:
            raise DataFormatError(f"{data_path}:{number}: index {row['index']!r} is not a number") from None
    already_circular = any(i >= CIRCULAR_OFFSET for i in indices)
    questions = []
    for number, (row, index) in enumerate(zip(rows, indices), 2):
        options = _options(row)
        answer = row["answer"].strip()
        if len(options) < 2 or answer not in tuple(OPTION_LETTERS[:len(options)]):
            raise DataFormatError(f"{data_path}:{number}: answer {answer!r} for options {OPTION_LETTERS[:len(options)]}"
                                  " (the test split has no answers and cannot be scored)")
        fields = {"question": row["question"], "hint": "" if is_blank(row.get("hint")) else row["hint"],
                  "category": row.get("category", "")}
        correct = OPTION_LETTERS.index(answer)
        if already_circular:
            questions.append(Question(id=str(index), answer=answer, image_b64=row["image"],
                                      group=str(index % CIRCULAR_OFFSET), fields={**fields, "options": options}))
            continue
        n = len(options)
        for k in range(n):
            rotated = options[k:] + options[:k]
            questions.append(Question(id=f"{index}/r{k}", answer=OPTION_LETTERS[(correct - k) % n],
                                      image_b64=row["image"], group=str(index),
                                      fields={**fields, "options": rotated}))
    return check_unique_ids(questions, data_path)


def build_prompt(question: Question) -> str:
    lines = [question.fields["hint"]] if question.fields["hint"] else []
    lines += [question.fields["question"], lettered_options(question.fields["options"]), LETTER_ANSWER]
    return "\n".join(lines)


def extract_choice(response: str, options: list[str]) -> str | None:
    """The option letter a free-text response gives, or None."""
    letters = OPTION_LETTERS[:len(options)]
    text = response
    for mark in _SEPARATORS:
        text = text.replace(mark, " ")
    words = text.split()
    named = [letter for letter in letters if letter in words]
    if len(named) == 1 and not (named[0] == "A" and len(words) > 3):
        return named[0]
    lowered = response.lower()
    matching = [letter for letter, option in zip(letters, options) if option.strip().lower() in lowered]
    if len(matching) == 1:
        return matching[0]
    return None


def score(questions: list[Question], responses: dict[str, str]) -> dict:
    groups: dict[str, list[bool]] = defaultdict(list)
    first_pass: dict[str, bool] = {}
    category: dict[str, str] = {}
    for q in questions:
        hit = extract_choice(responses[q.id], q.fields["options"]) == q.answer
        groups[q.unit].append(hit)
        first_pass.setdefault(q.unit, hit)  # the question as first listed: no rotation
        category[q.unit] = q.fields["category"]
    circular = {unit: all(hits) for unit, hits in groups.items()}
    by_category: dict[str, list[bool]] = defaultdict(list)
    for unit, ok in circular.items():
        if category[unit]:
            by_category[category[unit]].append(ok)
    accuracy = 100.0 * sum(circular.values()) / len(circular)
    return {
        "score": accuracy,
        "circular_accuracy": accuracy,
        "single_pass_accuracy": 100.0 * sum(first_pass.values()) / len(first_pass),
        "questions": len(circular),
        "rows": len(questions),
        "circular_accuracy_by_category": {c: 100.0 * sum(v) / len(v) for c, v in sorted(by_category.items())},
    }
