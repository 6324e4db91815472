"""`eve-ms serve` over HTTP with the official openai client: the answers of `eve-ms chat`, batching, bad input."""
import base64
import concurrent.futures
import io
import json
import time

import httpx
import numpy as np
import pytest
from openai import OpenAI

from eve_ms.cli import main
from serve_setup import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

PROMPT = "What is in the picture?"
SAMPLING = {"temperature": 0.9, "top_p": 0.95, "seed": 11}


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)


def chat_answer(checkpoint, capsys, image=None, tokens=4):
    """What `eve-ms chat --prompt` prints, sampling as SAMPLING says."""
    argv = ["chat", "--checkpoint", checkpoint, "--prompt", PROMPT, "--max-new-tokens", str(tokens),
            "--temperature", str(SAMPLING["temperature"]), "--top-p", str(SAMPLING["top_p"]),
            "--seed", str(SAMPLING["seed"])] + (["--image", image] if image else [])
    assert main(argv) == 0
    return capsys.readouterr().out[:-1]  # without the newline chat ends with


def user_message(text, image_url=None):
    if image_url is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                        {"type": "text", "text": text}]}


def ask(client, model, message, stream=False, tokens=4, **sampling):
    """(reply text, finish reason, streamed pieces or None)."""
    response = client.chat.completions.create(model=model, messages=[message], max_tokens=tokens, stream=stream,
                                              **(sampling or SAMPLING))
    if not stream:
        return response.choices[0].message.content, response.choices[0].finish_reason, None
    pieces, reason = [], None
    for chunk in response:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            reason = chunk.choices[0].finish_reason or reason
    return "".join(pieces), reason, pieces


def test_models_and_health(client, server, serve_checkpoint):
    assert [m.id for m in client.models.list().data] == ["tiny-eve"]
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-eve" and health["max_batch"] == 8


@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
def test_openai_client_gets_what_eve_ms_chat_prints(client, serve_checkpoint, picture, capsys, with_image):
    path, data_url = picture
    expected = chat_answer(serve_checkpoint, capsys, path if with_image else None)
    assert expected  # four sampled tokens decode to some text
    message = user_message(PROMPT, data_url if with_image else None)
    text, reason, _ = ask(client, "tiny-eve", message)
    assert text == expected and reason in ("stop", "length")
    streamed, streamed_reason, pieces = ask(client, "tiny-eve", message, stream=True)
    assert (streamed, streamed_reason) == (expected, reason) and len([p for p in pieces if p]) >= 2
    if with_image:  # the same file by a file URL (the server runs with --allow-local-files)
        assert ask(client, "tiny-eve", user_message(PROMPT, "file://" + path))[0] == expected
        # language-only and multimodal answers differ: the image reached the model
        assert ask(client, "tiny-eve", user_message(PROMPT))[0] != expected


def test_eight_concurrent_requests_complete_and_match_their_sequential_answers(client, server, picture):
    _, data_url = picture
    requests = [  # text and image prompts, greedy and sampled, streamed and not, all in one batch
        dict(message=user_message(question, data_url if i % 2 else None), stream=i % 3 == 0, tokens=3 + i % 3,
             temperature=0.0 if i % 4 == 0 else 0.8, seed=100 + i)
        for i, question in enumerate([PROMPT, "How many birds are there?", "Describe the image in one sentence.",
                                      "Is the cat on the sofa?"] * 2)
    ]
    sequential = [ask(client, "tiny-eve", **r)[:2] for r in requests]
    before = httpx.get(server + "/health").json()
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        concurrent_answers = list(pool.map(lambda r: ask(client, "tiny-eve", **r)[:2], requests))
    assert concurrent_answers == sequential
    after = httpx.get(server + "/health").json()
    assert after["completed"] - before["completed"] == len(requests)
    assert after["largest_batch"] >= 2  # clients shared decode steps
    assert after["failed"] == 0


def _png(size, noise=True) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8) if noise else \
        np.zeros((size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _bad_requests():
    ok_image = _data_url(_png((8, 8)))
    big_file = _png((200, 200))
    assert len(big_file) > MAX_IMAGE_BYTES
    many_pixels = _png((1100, 1000), noise=False)
    assert len(many_pixels) < MAX_IMAGE_BYTES and 1100 * 1000 > MAX_IMAGE_PIXELS
    image = lambda url, text="Hi": [user_message(text, url)]  # noqa: E731
    return [  # (id, body: a dict or raw bytes, status, param)
        ("malformed-json", b'{"messages": [{"role": "user", "content": "Hi"}', 400, "body"),
        ("unknown-role", {"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "messages.0.role"),
        ("two-images", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": ok_image}}, {"type": "text", "text": "Hi"},
            {"type": "image_url", "image_url": {"url": ok_image}}]}]}, 400, "messages.0.content.2.image_url.url"),
        ("undecodable-image", {"messages": image(_data_url(b"this is not a picture"))}, 400,
         "messages.0.content.0.image_url.url"),
        ("not-base64", {"messages": image("data:image/png;base64,@@@")}, 400, "messages.0.content.0.image_url.url"),
        ("remote-image", {"messages": image("http://127.0.0.1:9/x.png")}, 400, "messages.0.content.0.image_url.url"),
        ("oversized-image", {"messages": image(_data_url(big_file))}, 413, "messages.0.content.0.image_url.url"),
        ("too-many-pixels", {"messages": image(_data_url(many_pixels))}, 413, "messages.0.content.0.image_url.url"),
        ("max-tokens-beyond-context", {"messages": [user_message("Hi")], "max_tokens": 1000}, 400, "max_tokens"),
        ("bad-part-type", {"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}, 400,
         "messages.0.content.0"),
        ("no-user-message-last", {"messages": [user_message("Hi"), {"role": "assistant", "content": "Hello"}]},
         400, "messages"),
        ("temperature", {"messages": [user_message("Hi")], "temperature": 7}, 400, "temperature"),
        ("negative-seed", {"messages": [user_message("Hi")], "seed": -1}, 400, "seed"),
        ("other-model", {"model": "gpt-4o", "messages": [user_message("Hi")]}, 404, "model"),
    ]


@pytest.mark.parametrize("body,status,param", [case[1:] for case in _bad_requests()],
                         ids=[case[0] for case in _bad_requests()])
def test_bad_input_gets_a_4xx_json_error_naming_the_field(server, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(server + "/v1/chat/completions", content=content,
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    assert httpx.get(server + "/health").json()["status"] == "ok"  # still serving


def test_a_client_that_disconnects_stops_its_generation(server, client):
    message = user_message("Hello, how are you today?")  # its greedy reply runs to max_tokens: no eos
    before = httpx.get(server + "/health").json()
    body = {"model": "tiny-eve", "messages": [message], "temperature": 0, "max_tokens": 90, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first piece of the reply: hang up
    deadline = time.monotonic() + 60
    while (health := httpx.get(server + "/health").json())["cancelled"] == before["cancelled"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    assert health["cancelled"] == before["cancelled"] + 1 and health["completed"] == before["completed"]
