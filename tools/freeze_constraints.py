"""Write the pins of everything `pip install -e ".[test]"` brings in, as a pip constraints file.

CI and the README's test command install with `-c constraints.txt`, so a new release of any
dependency (a test tool included) cannot change what CI runs. To refresh the pins: in a fresh
virtual environment run `pip install -e ".[test]"` (without `-c`), check that
`python -m pytest -q tests` passes, then `python tools/freeze_constraints.py > constraints.txt`.
Only installed distributions reachable from eve-ms's requirements (with the `test` extra) are
written, so tools installed beside the project do not end up in the file.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.requirements import Requirement

ROOT = "eve-ms"
EXTRAS = ("test",)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = ROOT, extras=EXTRAS) -> dict[str, str]:
    """Installed name -> version for every distribution the root needs, transitively."""
    pins: dict[str, str] = {}
    queue = [(root, set(extras))]
    seen: set[tuple[str, frozenset]] = set()
    while queue:
        name, wanted = queue.pop()
        key = (_canonical(name), frozenset(wanted))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency for another platform or Python
        if _canonical(name) != _canonical(root):
            pins[_canonical(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in {"", *wanted}):
                continue  # another platform's dependency, or an extra nobody asked for
            queue.append((req.name, set(req.extras)))
    return pins


def main() -> int:
    pins = closure()
    print("# Pins of eve-ms's dependencies with the test extra; written by tools/freeze_constraints.py.")
    print("# Used by .ci/run and the README's test command (`-c constraints.txt`); refresh as that script says.")
    for name in sorted(pins):
        version = pins[name].split("+")[0]  # local labels (torch's +cpu) are matched by the public version
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
