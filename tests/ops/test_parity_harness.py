"""tools/parity.py: runs the allocation suite on CPU, reports a table, and fails when a backend is wrong."""
import dataclasses
import json

import numpy as np


def test_cpu_suite_passes_for_the_composed_ops_and_the_cpu_kernel(parity, capsys, tmp_path):
    out_json = tmp_path / "parity.json"
    # allocation rows only: the model-cell rows are checked in tests/convert/test_parity_cases.py
    status = parity.main(["--device_target", "CPU", "--no-model-cases", "--json", str(out_json)])
    output = capsys.readouterr().out
    assert status == 0, output
    rows = parity.read_table(output)
    suite = [case.name for case in parity._allocation_suite()]
    assert len(suite) >= 15 and {"img_gbpr/T1000-ties", "gbpr/T32-all-padding", "img_gbpr/T512-cap-below-demand",
                                  "img_gbpr/T512-cap-above-demand", "img_gbpr/T4096-mixed"} <= set(suite)
    for name in suite:
        assert rows[(name, "composed")] == "PASS" and rows[(name, "cpu")] == "PASS"
    report = json.loads(out_json.read_text())
    assert report["summary"]["failed"] == 0 and report["summary"]["passed"] == 2 * len(suite)
    assert {r["backend"] for r in report["rows"] if r["status"] == "PASS"} == {"composed", "cpu"}


def test_a_wrong_backend_makes_the_harness_fail(parity, capsys):
    def off_by_one_slot(case, device_target):
        def allocate(probs, is_image, valid, noise):
            expert, slot, counts = case.reference(probs, is_image, valid, noise)
            slot = slot.copy()
            slot[np.argmax(slot)] += 1  # one token in the wrong slot
            return expert, slot, counts
        return allocate

    parity.register_allocation_backend("off_by_one", off_by_one_slot)
    status = parity.main(["--device_target", "CPU", "--backends", "composed,off_by_one", "--cases", "/T64$",
                          "--no-model-cases"])
    output = capsys.readouterr().out
    assert status == 1
    rows = parity.read_table(output)
    assert rows[("gbpr/T64", "off_by_one")] == "FAIL" and rows[("gbpr/T64", "composed")] == "PASS"
    assert "slot: 1 differ" in output


def test_a_crashing_backend_is_a_failure_not_a_crash(parity, capsys):
    def crashing(case, device_target):
        def allocate(*inputs):
            raise RuntimeError("kernel exploded")
        return allocate

    parity.register_allocation_backend("crashing", crashing)
    status = parity.main(["--device_target", "CPU", "--backends", "crashing", "--cases", "^gbpr/T64$",
                          "--no-model-cases"])
    assert status == 1
    assert "kernel exploded" in capsys.readouterr().out


@dataclasses.dataclass
class _ModelCase:
    name: str
    requires: tuple
    error: float

    def run(self, device_target):
        return [("eve_ms-vs-torch", self.error, 1e-5)]


def test_model_cases_plug_in_and_are_skipped_without_their_requirements(parity, capsys):
    parity.register_case(_ModelCase("cells/needs-missing-package", ("no_such_package_for_parity",), 0.0))
    parity.register_case(_ModelCase("cells/within-tolerance", ("numpy",), 1e-7))
    status = parity.main(["--device_target", "CPU", "--cases", "^cells/"])
    output = capsys.readouterr().out
    assert status == 0
    rows = parity.read_table(output)
    assert rows[("cells/needs-missing-package", "-")] == "SKIP" and "no_such_package_for_parity not installed" in output
    assert rows[("cells/within-tolerance", "eve_ms-vs-torch")] == "PASS"

    parity.register_case(_ModelCase("cells/out-of-tolerance", ("numpy",), 1e-3))
    assert parity.main(["--device_target", "CPU", "--cases", "^cells/out"]) == 1


def test_unknown_case_filter_is_a_usage_error(parity, capsys):
    assert parity.main(["--device_target", "CPU", "--cases", "no-case-has-this-name"]) == 2
    assert "no parity case matches" in capsys.readouterr().err
