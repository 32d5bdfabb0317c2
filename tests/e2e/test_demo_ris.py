"""`cxr-node demo --ris` as a function: the demo's study goes out as an HL7 ORU^R01 to npm node-hl7-server and as a
FHIR Bundle to @medplum/fhir-router, and the demo prints what each received; the triage agrees in every place."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.demo.run import print_result, run_demo

pytestmark = pytest.mark.slow


def test_demo_sends_to_the_ris_peers(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", timeout=600, say=lines.append, ris=True)
    print_result(result, lines.append)  # what `cxr-node demo --ris` prints at the end
    segments = [s for s in result.oru.split("\r") if s]
    assert segments[0].startswith("MSH|^~\\&|CXRNODE|DEMO|RIS|DEMO|") and "|ORU^R01^ORU_R01|" in segments[0]
    assert result.oru_fields["result_status"] == "P" and result.oru_fields["placer"] == "DEMO0001"
    assert any(f"    {segments[1]}" == line for line in lines)  # printed as received
    kinds = [str(r["resourceType"]) for r in result.fhir_resources]
    assert kinds.count("DiagnosticReport") == 1 and kinds.count("Observation") == 18
    report = next(r for r in result.fhir_resources if r["resourceType"] == "DiagnosticReport")
    assert report["status"] == "preliminary" and str(report["conclusion"]).startswith("AI-generated, not verified")
    # the untrained model answers at random; whatever it said, every output tells the same priority
    raised = result.triage.startswith(("stat", "urgent"))
    assert (result.oru_fields["priority"] != "") == raised
    assert any(r["resourceType"] == "Flag" for r in result.fhir_resources) == raised
    assert all(p.is_file() for p in result.ris_files)
    assert any(line.startswith("  FHIR server stored (each checked by @medplum/core validateResource)")
               for line in lines)
