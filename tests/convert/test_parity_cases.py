"""Model-cell parity cases: `tools/parity.py` runs them on CPU, every eve-ms cell matches its PyTorch /
Hugging Face reference within 1e-4, and a corrupted weight turns a case into a failure."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np

from parity_cases import FP32_TOLERANCE, parity_cases  # tools/parity_cases.py

REPO = Path(__file__).resolve().parents[2]
MODEL_CASES = "^(llama|vision|adapter|evf)/"


def _status_by_case(parity, output):
    return {case: status for (case, _backend), status in parity.read_table(output).items()}


def test_every_model_cell_matches_its_reference_on_cpu(parity, capsys, tmp_path):
    out_json = tmp_path / "parity.json"
    status = parity.main(["--device_target", "CPU", "--cases", MODEL_CASES, "--json", str(out_json)])
    output = capsys.readouterr().out
    assert status == 0, output
    names = [case.name for case in parity_cases()]
    assert {"llama/gqa-untied", "llama/tied-mha-bias", "vision/siglip", "vision/clip", "vision/resnet",
            "adapter/ldp", "adapter/ldpv2", "adapter/mlp2x_gelu", "evf/language-only"} <= set(names)
    statuses = _status_by_case(parity, output)
    assert {name: statuses.get(name) for name in names} == {name: "PASS" for name in names}
    rows = json.loads(out_json.read_text())["rows"]
    model_rows = [r for r in rows if r["case"] in names]
    assert len(model_rows) == len(names)
    for row in model_rows:
        assert row["tolerance"] == FP32_TOLERANCE and 0 <= row["max_error"] <= FP32_TOLERANCE, row


def test_graph_mode_cache_decoding_and_evf_routing_match_their_references(parity, capsys):
    status = parity.main(["--device_target", "CPU", "--mode", "graph", "--cases",
                          "^(llama/kv-cache-decode|evf/multimodal-no-drop)$"])
    output = capsys.readouterr().out
    assert status == 0, output
    assert _status_by_case(parity, output) == {"llama/kv-cache-decode": "PASS", "evf/multimodal-no-drop": "PASS"}


def _nudge_matrix(which):
    """A tamper adding 0.1 to one entry of the cell's `which`-th weight matrix / kernel (a corrupted conversion)."""
    def tamper(cell):
        param = [p for p in cell.get_parameters() if len(p.shape) >= 2][which]
        value = param.asnumpy().copy()
        value.reshape(-1)[-1] += 0.1
        param.set_data(ms.Tensor(value))
    return tamper


def test_a_corrupted_weight_makes_the_case_fail(parity, capsys):
    cases = {case.name: case for case in parity_cases()}
    # the last matrix: lm_head, the last conv, the adapter's projection; the EVF layer's first is the language
    # FFN's gate (its last, the router, is rightly unused in language_only mode)
    for name, which in (("llama/gqa-untied", -1), ("vision/resnet", -1), ("adapter/ldp", -1),
                        ("evf/language-only", 0)):
        parity.register_case(dataclasses.replace(cases[name], name=f"tampered/{name}", tamper=_nudge_matrix(which)))
    status = parity.main(["--device_target", "CPU", "--cases", "^tampered/"])
    output = capsys.readouterr().out
    assert status == 1
    assert _status_by_case(parity, output) == {
        "tampered/llama/gqa-untied": "FAIL", "tampered/vision/resnet": "FAIL",
        "tampered/adapter/ldp": "FAIL", "tampered/evf/language-only": "FAIL",
    }


def test_a_missing_requirement_skips_the_case_instead_of_failing(parity, capsys):
    case = dataclasses.replace(parity_cases()[0], name="needs/absent", requires=("no_such_module_for_parity",))
    parity.register_case(case)
    assert parity.main(["--device_target", "CPU", "--cases", "^needs/"]) == 0
    output = capsys.readouterr().out
    assert _status_by_case(parity, output) == {"needs/absent": "SKIP"} and "no_such_module_for_parity" in output


def test_listing_the_cases_imports_neither_torch_nor_transformers():
    code = ("import sys; sys.path.insert(0, 'tools'); from parity_cases import parity_cases; parity_cases(); "
            "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_case_reports_a_shape_mismatch_and_a_nan_as_failures():
    def compare(tamper):
        return [("shape", np.zeros((2, 3)), np.zeros((3, 2))), ("nan", np.array([np.nan]), np.array([0.0]))]

    case = dataclasses.replace(parity_cases()[0], compare=compare)
    (_, shape_error, tolerance, detail), (_, nan_error, _, _) = case.run("CPU")
    assert not shape_error <= tolerance and "shape" in detail
    assert not nan_error <= tolerance  # NaN compares false: the harness marks it FAIL
