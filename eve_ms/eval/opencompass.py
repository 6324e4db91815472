"""The prompts of Table 11's multiple-choice benchmarks, filled in as OpenCompass's ppl configs fill them.

The paper follows Tang et al. 2024 (PanGu-pi Pro), who evaluate with OpenCompass's perplexity
configs. Every question becomes one text per label (`candidates`): the label's template filled
with the question (and, for the subject benchmarks, the first k dev examples of its subject),
as (context, continuation) so that the whole text is `context + continuation`. The ppl scoring
compares the mean token loss of the whole texts; the log-likelihood option scores the
continuation alone.

Sources (open-compass/opencompass at 5c6dc908, 2024-01-30; the defaults `*_ppl.py` pointed to then,
unchanged in the prompts since):
- `configs/datasets/mmlu/mmlu_ppl_ac766d.py`, `ceval/ceval_ppl_578f8d.py`, `cmmlu/cmmlu_ppl_8b9c76.py`
  (5-shot: FixKRetriever over dev rows 0-4), `SuperGLUE_BoolQ/SuperGLUE_BoolQ_ppl_314b96.py`,
  `SuperGLUE_AX_b/SuperGLUE_AX_b_ppl_6db806.py`, `piqa/piqa_ppl_1cf9f0.py`,
  `FewCLUE_eprstmt/FewCLUE_eprstmt_ppl_f1e631.py` (0-shot: ZeroRetriever);
- how a template becomes text: `openicl/icl_prompt_template.py` (labels are the template's keys, in
  order; `{field}` replaced field by field in entry order, the in-context block first),
  `openicl/icl_retriever/icl_base_retriever.py` (`generate_ice`: examples joined by "\\n", then "\\n"),
  and `models/base.py` `LMTemplateParser` without a meta template (a base model): the prompts of
  the HUMAN/BOT turns and the separator strings joined by "\\n" (`join_turns`).
"""
from __future__ import annotations

from eve_ms.eval.question import Question

MMLU_SHOTS = CEVAL_SHOTS = CMMLU_SHOTS = 5  # fix_id_list=[0, 1, 2, 3, 4]
ICE_SEPARATOR = ICE_EOS = "\n"  # BaseRetriever's ice_separator and ice_eos_token defaults


def fill(template: str, entry: dict) -> str:
    """OpenCompass's `safe_format`: each `{key}` replaced in turn, other braces left alone."""
    for key, value in entry.items():
        template = template.replace("{" + str(key) + "}", str(value))
    return template


def join_turns(items: list[str]) -> str:
    """`LMTemplateParser.parse_template` without a meta template: non-empty items after a "\\n" separator.

    The separator is set after every item, empty ones included, so a leading empty item still
    puts a newline before the next one.
    """
    text, separator = "", ""
    for item in items:
        if item:
            text += separator + item
        separator = "\n"
    return text


def _dialogue_candidates(human: str, bots: list[str], entry: dict, ice: list[str], answer_prefix: str = ""
                         ) -> list[tuple[str, str]]:
    """Texts of a HUMAN/BOT-turn template per label: the ICE items, the HUMAN turn, the label's BOT turn.

    Every item is filled with the test entry (PromptList.format runs over the spliced-in examples
    too). The BOT turns share `answer_prefix`, which goes to the context.
    """
    items = [fill(item, entry) for item in ice + [human]]
    context = join_turns(items) + "\n" + answer_prefix
    return [(context, fill(bot, entry)[len(answer_prefix):]) for bot in bots]


def _dialogue_ice(human: str, bot: str, dev: list[dict], shots: int, gold: str) -> list[str]:
    """`generate_ice` for a dict template of HUMAN/BOT turns: each example's two turns and a separator, then eos."""
    items = []
    for example in dev[:shots]:
        items += [fill(human, example), fill(bot.format(label=example[gold].strip()), example), ICE_SEPARATOR]
    return items + [ICE_EOS]


# ---- the subject benchmarks (5-shot) ---------------------------------------------------------

def mmlu(q: Question, shots: int) -> list[tuple[str, str]]:
    hint = f"The following are multiple choice questions (with answers) about  {q.fields['subject_name']}.\n\n"
    question = "{input}\nA. {A}\nB. {B}\nC. {C}\nD. {D}"
    examples = [fill(f"{question}\nAnswer: {example['target'].strip()}\n", example)
                for example in q.fields["dev"][:shots]]
    ice = ICE_SEPARATOR.join(examples) + ICE_EOS  # a string template: the examples are plain strings
    context = fill(f"{hint}{ice}{question}\nAnswer: ", q.fields["entry"])
    return [(context, label) for label in "ABCD"]


def ceval(q: Question, shots: int) -> list[tuple[str, str]]:
    human = (f"以下是中国关于{q.fields['subject_name']}考试的单项选择题，请选出其中的正确答案。\n"
             "{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案: ")
    ice = _dialogue_ice(human, "{label}", q.fields["dev"], shots, "answer")
    return _dialogue_candidates(human, list("ABCD"), q.fields["entry"], ice)


def cmmlu(q: Question, shots: int) -> list[tuple[str, str]]:
    human = (f"以下是关于{q.fields['subject_name']}的单项选择题，请直接给出正确答案的选项。\n"
             "题目：{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}")
    ice = _dialogue_ice(human, "答案是: {label}", q.fields["dev"], shots, "answer")
    return _dialogue_candidates(human, [f"答案是: {label}" for label in "ABCD"], q.fields["entry"], ice,
                                answer_prefix="答案是: ")


# ---- the sentence benchmarks (0-shot) --------------------------------------------------------

def boolq(q: Question, shots: int = 0) -> list[tuple[str, str]]:
    return _dialogue_candidates("{passage}\nQuestion: {question}?", ["No", "Yes"], q.fields["entry"], [])


def axb(q: Question, shots: int = 0) -> list[tuple[str, str]]:
    human = "{sentence1}\n{sentence2}\nIs the sentence below entailed by the sentence above?"
    return _dialogue_candidates(human, ["Yes", "No"], q.fields["entry"], [])  # entailment, not_entailment


def eprstmt(q: Question, shots: int = 0) -> list[tuple[str, str]]:
    return _dialogue_candidates('内容： "{sentence}"。情绪分类：', ["消极。", "积极。"], q.fields["entry"], [])


def piqa(q: Question, shots: int = 0) -> list[tuple[str, str]]:
    # string templates, one per label: the text is the filled template itself
    context = fill("The following makes sense: \nQ: {goal}\nA: ", q.fields["entry"])
    return [(context, fill("{sol1}\n", q.fields["entry"])), (context, fill("{sol2}\n", q.fields["entry"]))]
