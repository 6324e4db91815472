"""The choice benchmarks' texts are OpenCompass's ppl configs filled in, character for character.

The expected texts are written out from the configs (open-compass/opencompass at 5c6dc908,
`configs/datasets/*/*_ppl_*.py`) and the rules that turn them into a base model's input: the
in-context examples joined by "\\n" and closed by "\\n" (`BaseRetriever.generate_ice`), the turns
of a HUMAN/BOT template and those separators joined by "\\n" (`LMTemplateParser` without a meta
template). Cross-checked once against OpenCompass's own PromptTemplate, retriever and parser
code on the same records.
"""
import os

import pytest
import released_formats as formats

from eve_ms.eval import language, opencompass
from eve_ms.eval.opencompass import fill, join_turns


def _texts(candidates):
    return [context + continuation for context, continuation in candidates]


def test_join_turns_puts_a_newline_before_every_item_after_the_first_even_an_empty_first():
    assert join_turns(["a", "b", "\n", "c"]) == "a\nb\n\n\nc"
    assert join_turns(["\n", "h", "x"]) == "\n\nh\nx"
    assert join_turns(["", "h"]) == "\nh"


def test_fill_replaces_fields_in_entry_order_and_leaves_other_braces():
    assert fill("{a} {b} {c}", {"a": "{b}", "b": "B"}) == "B B {c}"


def test_ceval_five_shot_text(tmp_path):
    q = language.load_ceval(formats.write_ceval(tmp_path))[0]
    head = "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n"
    examples = "".join(f"{head}开发题{i}\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案: \n{'ABCD'[i % 4]}\n\n\n" for i in range(5))
    question = f"{head}TCP协议工作在哪一层？\nA. 传输层\nB. 网络层\nC. 应用层\nD. 物理层\n答案: "
    assert _texts(opencompass.ceval(q, 5)) == [f"{examples}\n\n{question}\n{label}" for label in "ABCD"]
    context, continuation = opencompass.ceval(q, 5)[1]
    assert continuation == "B" and context.endswith("答案: \n")


def test_ceval_zero_shot_starts_with_the_empty_example_block(tmp_path):
    q = language.load_ceval(formats.write_ceval(tmp_path))[0]
    text = _texts(opencompass.ceval(q, 0))[0]
    assert text == ("\n\n以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n"
                    "TCP协议工作在哪一层？\nA. 传输层\nB. 网络层\nC. 应用层\nD. 物理层\n答案: \nA")


def test_mmlu_one_shot_text_keeps_the_double_space_of_the_config(tmp_path):
    q = language.load_mmlu(formats.write_mmlu(tmp_path))[0]
    assert q.fields["subject_name"] == "astronomy"
    expected = ("The following are multiple choice questions (with answers) about  astronomy.\n\n"
                "Dev astronomy question 0?\nA. a\nB. b\nC. c\nD. d\nAnswer: A\n\n"
                "Which planet is known as the red planet?\nA. Venus\nB. Mars\nC. Earth\nD. Jupiter\nAnswer: ")
    assert _texts(opencompass.mmlu(q, 1)) == [expected + label for label in "ABCD"]
    zero = _texts(opencompass.mmlu(q, 0))[3]
    assert zero.startswith("The following are multiple choice questions (with answers) about  astronomy.\n\n\n"
                           "Which planet")
    assert zero.endswith("D. Jupiter\nAnswer: D")


def test_cmmlu_two_shot_text_with_the_chinese_subject_name(tmp_path):
    q = language.load_cmmlu(formats.write_cmmlu(tmp_path))[1]
    head = "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n"
    examples = "".join(f"{head}题目：农学开发题{i}\nA. 一\nB. 二\nC. 三\nD. 四\n答案是: {'BCDA'[i]}\n\n\n"
                       for i in range(2))
    question = f"{head}题目：水稻属于哪一科？\nA. 豆科\nB. 禾本科\nC. 茄科\nD. 菊科"
    candidates = opencompass.cmmlu(q, 2)
    assert _texts(candidates) == [f"{examples}\n\n{question}\n答案是: {label}" for label in "ABCD"]
    assert [continuation for _, continuation in candidates] == list("ABCD")  # the shared "答案是: " is context


@pytest.mark.parametrize("writer, loader, render, expected", [
    (formats.write_boolq, language.load_boolq, opencompass.boolq,
     ["The Sun is the star at the center of the Solar System.\nQuestion: is the sun a star?\nNo",
      "The Sun is the star at the center of the Solar System.\nQuestion: is the sun a star?\nYes"]),
    (formats.write_axb, language.load_axb, opencompass.axb,
     ["The cat sat on the mat.\nA cat was on a mat.\nIs the sentence below entailed by the sentence above?\nYes",
      "The cat sat on the mat.\nA cat was on a mat.\nIs the sentence below entailed by the sentence above?\nNo"]),
    (formats.write_piqa, language.load_piqa, opencompass.piqa,
     ["The following makes sense: \nQ: To fill a glass with water\nA: Use a spoon.\n",
      "The following makes sense: \nQ: To fill a glass with water\nA: Pour the water slowly into the glass.\n"]),
    (formats.write_eprstmt, language.load_eprstmt, opencompass.eprstmt,
     ['内容： "质量很好，非常满意"。情绪分类：\n消极。', '内容： "质量很好，非常满意"。情绪分类：\n积极。']),
])
def test_zero_shot_benchmark_texts_in_label_order(tmp_path, writer, loader, render, expected):
    q = loader(writer(tmp_path))[0]
    assert _texts(render(q, 0)) == expected


def test_loaders_read_the_released_layouts(tmp_path):
    mmlu = language.load_mmlu(formats.write_mmlu(tmp_path / "mmlu"))
    assert [q.id for q in mmlu] == ["astronomy/0", "astronomy/1", "virology/0"]
    assert [q.answer for q in mmlu] == [1, 2, 2] and len(mmlu[2].fields["dev"]) == 5
    ceval = language.load_ceval(formats.write_ceval(tmp_path / "ceval"))
    assert [q.answer for q in ceval] == [0, 3] and ceval[0].fields["subject_name"] == "计算机网络"
    assert language.load_cmmlu(formats.write_cmmlu(tmp_path / "cmmlu"))[1].answer == 1
    assert [q.answer for q in language.load_boolq(formats.write_boolq(tmp_path))] == [1, 0, 0]
    assert [q.answer for q in language.load_axb(formats.write_axb(tmp_path))] == [0, 1]
    assert [q.answer for q in language.load_piqa(formats.write_piqa(tmp_path))] == [1, 0]
    assert [q.answer for q in language.load_eprstmt(formats.write_eprstmt(tmp_path))] == [1, 0]


def test_boolq_accepts_opencompass_string_labels(tmp_path):
    records = [{**r, "label": "true" if r["label"] else "false"} for r in formats.BOOLQ]
    assert [q.answer for q in language.load_boolq(formats.write_boolq(tmp_path, records))] == [1, 0, 0]


def test_subject_benchmark_without_its_dev_examples_is_named(tmp_path):
    root = formats.write_mmlu(tmp_path)
    os.remove(os.path.join(root, "dev", "virology_dev.csv"))
    with pytest.raises(FileNotFoundError, match="dev examples of virology.*virology_dev.csv"):
        language.load_mmlu(root)


def test_unknown_subject_and_bad_answer_are_named(tmp_path):
    root = formats.write_ceval(tmp_path / "a", {"not_a_subject": formats.CEVAL["computer_network"]})
    with pytest.raises(ValueError, match="'not_a_subject' is not one of the benchmark's 52 subjects"):
        language.load_ceval(root)
    dev, val = formats.CMMLU["agronomy"]
    root = formats.write_cmmlu(tmp_path / "b", {"agronomy": (dev, [val[0][:5] + ("E",)])})
    with pytest.raises(ValueError, match=r"agronomy.csv:2: answer 'E'"):
        language.load_cmmlu(root)
