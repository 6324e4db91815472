"""What CI installs is what the README says, and every dependency is pinned in constraints.txt."""
import os
import re
from importlib import metadata

from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as f:
        return f.read()


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraints():
    pins = {}
    for line in _read("constraints.txt").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_canonical(name)] = version
    return pins


def test_ci_runs_the_readme_test_command_verbatim_with_the_constraints():
    readme = [line.strip() for line in _read("README.md").splitlines()]
    command = next(line for line in readme if "python -m pytest -q tests" in line and line.startswith("pip "))
    assert "-c constraints.txt" in command
    ci_lines = [line.strip() for line in _read(".ci", "run").splitlines()]
    assert command in ci_lines
    demo = next(line for line in readme if line.endswith("eve-ms demo") and line.startswith("pip "))
    assert "-c constraints.txt" in demo


def test_every_requirement_and_test_tool_has_an_exact_pin():
    pins = _constraints()
    requirements = [Requirement(r) for r in metadata.requires("eve-ms")]
    assert any(r.marker and r.marker.evaluate({"extra": "test"}) for r in requirements)  # the test extra is seen
    for req in requirements:
        name = _canonical(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    for tool in ("pytest", "hypothesis", "torch", "pluggy", "iniconfig"):
        assert tool in pins
