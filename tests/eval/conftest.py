"""Shared pieces of the evaluation tests: the fixture folder and test doubles for the model.

The fakes stand in for the model only; the loaders, prompts, scorers and runner under
test are the real ones.
"""
import os

import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


class FakeGenerator:
    """Answers `predict` from a table question id -> text; records every call."""

    def __init__(self, answers, fail_on_call=None):
        self.answers = answers
        self.calls = []
        self.fail_on_call = fail_on_call

    def predict(self, items):
        self.calls.append(items)
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("simulated interruption")
        return [self.answers[item["id"]] for item in items]

    @property
    def asked_ids(self):
        return [item["id"] for call in self.calls for item in call]


class FakeChoice:
    """Answers `ppl` (and `loglik`) from rules (text that must occur in the candidate, {ending: value}).

    With `max_length`, it also counts tokens as characters, so the runner fits prompts to it.
    """

    def __init__(self, rules, max_length=None):
        self.rules = rules
        self.calls = []
        if max_length is not None:
            self.max_length = max_length
            self.num_tokens = len

    def _value(self, text):
        matches = [table for marker, table in self.rules if marker in text]
        assert len(matches) == 1, f"test bug: {len(matches)} rules match {text!r}"
        endings = [ending for ending in matches[0] if text.endswith(ending)]
        assert len(endings) == 1, f"test bug: endings {endings} for {text!r}"
        return matches[0][endings[0]]

    def ppl(self, texts):
        self.calls.append(("ppl", list(texts)))
        return [self._value(t) for t in texts]

    def loglik(self, contexts, continuations):
        self.calls.append(("loglik", list(contexts), list(continuations)))
        return [self._value(c + x) for c, x in zip(contexts, continuations)]


@pytest.fixture
def fixtures_dir():
    return FIXTURES


@pytest.fixture
def fake_generator():
    return FakeGenerator


@pytest.fixture
def fake_choice():
    return FakeChoice


@pytest.fixture
def touch_images():
    """Makes empty image files: the runner checks that images exist; the fakes never open them."""
    def touch(folder, names):
        for name in names:
            path = os.path.join(folder, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").close()
        return str(folder)
    return touch
