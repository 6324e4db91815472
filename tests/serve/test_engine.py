"""The engine's bounded queue behind the HTTP app, in process: a full queue answers 503 with Retry-After,
a cancelled waiting job leaves the queue, and the worker thread runs what waits once it starts."""
import threading

import pytest

from eve_ms.inference.sampling import GenerationConfig
from eve_ms.serve.engine import Engine, Job, QueueFull

BODY = {"model": "tiny-eve", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}


def test_a_full_queue_answers_503_with_retry_after_and_waiting_jobs_run_once_the_worker_starts(serve_checkpoint):
    from starlette.testclient import TestClient

    from eve_ms.checkpoint_dir import load_eve_checkpoint
    from eve_ms.data.templates import Turn, get_template
    from eve_ms.inference.generate import Generator
    from eve_ms.inference.inputs import chat_prompt_ids
    from eve_ms.serve.app import create_app

    model, config, tokenizer = load_eve_checkpoint(serve_checkpoint)
    engine = Engine(Generator(model, tokenizer), max_batch=2, max_queue=2)
    app = create_app(engine, tokenizer, config, get_template("v1"), "tiny-eve")
    ids = chat_prompt_ids(tokenizer, config, [Turn("human", "Hi")])
    finished = []
    all_done = threading.Event()

    def job():
        def done(output):
            finished.append(output)
            if len(finished) == 2:
                all_done.set()
        return Job(ids, None, GenerationConfig(max_new_tokens=2), lambda piece: None, done)

    first, dropped, second = job(), job(), job()
    engine.submit(first)
    engine.submit(dropped)  # the worker has not started: two jobs fill the queue
    with pytest.raises(QueueFull):
        engine.submit(job())
    engine.cancel(dropped)  # its client went away before it ran (found by identity behind another job)
    engine.submit(second)
    with TestClient(app) as http:
        assert http.get("/health").json()["waiting"] == 2
        busy = http.post("/v1/chat/completions", json=BODY)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["type"] == "server_busy"
        engine.start()
        assert all_done.wait(300)
        assert [o.finish_reason for o in finished] == ["length", "length"]
        answer = http.post("/v1/chat/completions", json=BODY)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == finished[0].text
        health = http.get("/health").json()
    engine.stop()
    assert (health["waiting"], health["cancelled"], health["completed"], health["largest_batch"]) == (0, 1, 3, 2)
