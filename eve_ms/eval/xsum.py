"""XSum: one-sentence summaries of BBC articles, scored by ROUGE against the reference.

Accepted format: JSON lines (or a JSON list) of `{"document", "summary", "id"?}` records,
the layout of the Hugging Face `xsum` test split exported to JSON. No image: the model
answers through its language-only path. Only the first non-empty line of a response is
the summary (models tend to continue past it). The score is the mean ROUGE-1 F-measure in
percent; ROUGE-2 and ROUGE-L are reported beside it.
"""
from __future__ import annotations

from eve_ms.eval.question import Question, check_unique_ids, read_jsonl, require_keys
from eve_ms.eval.rouge import rouge_scores


def load(data_path: str, image_folder: str | None = None) -> list[Question]:
    questions = []
    for number, record in enumerate(read_jsonl(data_path)):
        require_keys(record, ("document", "summary"), f"{data_path}: record {number}")
        questions.append(Question(id=str(record.get("id", number)), answer=record["summary"],
                                  fields={"document": record["document"]}))
    return check_unique_ids(questions, data_path)


def build_prompt(question: Question) -> str:
    return f"Document: {question.fields['document']}\nBased on the previous text, provide a brief single summary:"


def first_line(response: str) -> str:
    return next((line.strip() for line in response.splitlines() if line.strip()), "")


def score(questions: list[Question], responses: dict[str, str]) -> dict:
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for q in questions:
        for name, value in rouge_scores(first_line(responses[q.id]), q.answer).items():
            totals[name] += value
    means = {name: 100.0 * value / len(questions) for name, value in totals.items()}
    return {"score": means["rouge1"], **means, "total": len(questions)}
