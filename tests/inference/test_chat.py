"""`eve-ms chat`: one-shot answers, bad images, and the interactive loop over stdin."""
import os
import subprocess
import sys

import pytest

from eve_ms.cli import main
from eve_ms.data.templates import Turn
from eve_ms.inference.generate import Generator
from eve_ms.inference.inputs import chat_prompt_ids, image_processor_for
from eve_ms.inference.sampling import GenerationConfig


def expected_answer(model, tokenizer, text, image=None, tokens=3):
    pixels = image_processor_for(model.config).load(image) if image else None
    ids = chat_prompt_ids(tokenizer, model.config, [Turn("human", text, image is not None)])
    return Generator(model, tokenizer).generate([ids], [pixels], GenerationConfig(max_new_tokens=tokens))[0].text


@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
def test_one_shot_chat_prints_the_greedy_answer(checkpoint_dir, evf_model, tokenizer, image_file, capsys,
                                                with_image):
    argv = ["chat", "--checkpoint", checkpoint_dir, "--prompt", "What is in the picture?", "--max-new-tokens", "3",
            "--exec-mode", "pynative"] + (["--image", image_file] if with_image else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    image = image_file if with_image else None
    assert out == expected_answer(evf_model, tokenizer, "What is in the picture?", image) + "\n"


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_bad_image_is_one_line_on_stderr_and_exit_status_2(checkpoint_dir, tmp_path, capsys, damage):
    path = tmp_path / "photo.jpg"
    if damage == "unreadable":
        path.write_bytes(b"this is not a picture")
    code = main(["chat", "--checkpoint", checkpoint_dir, "--image", str(path), "--prompt", "Hi"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]
    assert ("not found" if damage == "missing" else "cannot decode") in lines[0]


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["chat", "--checkpoint", str(tmp_path / "nowhere"), "--prompt", "Hi"]) == 2
    assert "model_config.yaml" in capsys.readouterr().err


def test_interactive_loop_answers_each_line_and_survives_a_bad_image(checkpoint_dir, evf_model, tokenizer,
                                                                     tmp_path):
    env = dict(os.environ, GLOG_v="3", EVE_DEVICE_TARGET="CPU",
               LOCAL_DEFAULT_PATH=str(tmp_path / "mindformers"))
    stdin = "What is in the picture?\n/image /no/such/picture.png\n\nThank you\n/quit\n"
    result = subprocess.run(
        [sys.executable, "-m", "eve_ms.cli", "chat", "--checkpoint", checkpoint_dir, "--max-new-tokens", "3",
         "--exec-mode", "pynative"],
        input=stdin, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answers = result.stdout.splitlines()
    assert len(answers) == 2 and all(line.startswith("ASSISTANT: ") for line in answers)
    assert answers[0] == "ASSISTANT: " + expected_answer(evf_model, tokenizer, "What is in the picture?")
    assert "image file not found: /no/such/picture.png" in result.stderr


def test_the_answer_budget_is_fitted_to_the_context_with_a_note(evf_model, tokenizer, capsys):
    """The default --max-new-tokens (256) exceeds the tiny model's 160 positions: the answer gets what is left."""
    from eve_ms.inference.chat import ChatSession

    positions = evf_model.config.llm.max_position_embeddings
    session = ChatSession(Generator(evf_model, tokenizer), evf_model.config, "v1", GenerationConfig(max_new_tokens=256))
    _, ids, generation = session._fitting_prompt("What is in the picture?")
    assert generation.max_new_tokens == positions - len(ids) and 0 < len(ids) < positions
    note = capsys.readouterr().err
    assert f"the prompt takes {len(ids)} of the model's {positions} positions" in note and "at most" in note
    with pytest.raises(ValueError, match="shorten the prompt"):
        session._fitting_prompt("word " * 400)
