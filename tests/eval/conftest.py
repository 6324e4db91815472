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


class FakeScorer:
    """Answers `loglik` from rules (text that must occur in the context, {continuation: value})."""

    def __init__(self, rules):
        self.rules = rules
        self.calls = []

    def loglik(self, contexts, continuations):
        self.calls.append((list(contexts), list(continuations)))
        values = []
        for context, continuation in zip(contexts, continuations):
            matches = [table for marker, table in self.rules if marker in context]
            assert len(matches) == 1, f"test bug: {len(matches)} rules match context {context!r}"
            values.append(matches[0][continuation])
        return values


@pytest.fixture
def fixtures_dir():
    return FIXTURES


@pytest.fixture
def fake_generator():
    return FakeGenerator


@pytest.fixture
def fake_scorer():
    return FakeScorer


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
