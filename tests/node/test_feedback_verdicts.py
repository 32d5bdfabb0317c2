"""Reading a report per finding (dicomnode.feedback.verdicts with the packaged rule set): negation, resolution,
uncertainty, what was asked, sections, clause ends, several mentions, devices; and the rule set's own checks."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import ConfigError, config_from_dict
from dicomnode.feedback.matching import agreement
from dicomnode.feedback.states import Agreement
from dicomnode.feedback.terms import TermsError, load_terms, packaged_terms
from dicomnode.feedback.verdicts import Verdict, read_report

P, A, U, N = Verdict.PRESENT, Verdict.ABSENT, Verdict.UNCERTAIN, Verdict.NOT_MENTIONED


def said(text: str) -> dict[str, Verdict]:
    """The findings the report mentions, with their verdicts."""
    return {k: v.verdict for k, v in read_report(text, packaged_terms()).items() if v.verdict is not N}


@pytest.mark.parametrize(("text", "expected"), [
    # the three
    ("No pneumothorax.", {"pneumothorax": A}),
    ("Pneumothorax has resolved.", {"pneumothorax": A}),
    ("Cannot exclude effusion.", {"pleural_effusion": U}),
    # negation: cue before, cue after, lists, "there is no"
    ("No evidence of pneumothorax or pleural effusion.", {"pneumothorax": A, "pleural_effusion": A}),
    ("No focal consolidation, pleural effusion, or pneumothorax is identified.",
     {"consolidation": A, "pleural_effusion": A, "pneumothorax": A}),
    ("The previously seen pneumothorax is no longer visible.", {"pneumothorax": A}),
    ("There is no pneumothorax. There is a small left effusion.", {"pneumothorax": A, "pleural_effusion": P}),
    ("Interval resolution of the right pleural effusion.", {"pleural_effusion": A}),
    # uncertainty wins over presence; after-cues too
    ("Possible small right apical pneumothorax.", {"pneumothorax": U}),
    ("Left basilar opacity may represent atelectasis or pneumonia.",
     {"lung_opacity": P, "atelectasis": U, "pneumonia": U}),
    ("A small effusion cannot be excluded.", {"pleural_effusion": U}),
    ("Consolidation concerning for pneumonia.", {"consolidation": P, "pneumonia": U}),
    # a clause ends at "but", at a comma before a new positive finding, at a sentence end
    ("No cardiomegaly but a small effusion.", {"cardiomegaly": A, "pleural_effusion": P}),
    ("No pneumothorax, small left effusion.", {"pneumothorax": A, "pleural_effusion": P}),
    ("No pneumothorax\nSmall left pleural effusion", {"pneumothorax": A, "pleural_effusion": P}),
    ("No pneumothorax or pleural\neffusion.", {"pneumothorax": A, "pleural_effusion": A}),  # a wrapped line
    # pseudo-negations are no negation
    ("No change in the small left pleural effusion.", {"pleural_effusion": P}),
    ("No significant increase in cardiomegaly.", {"cardiomegaly": P}),
    # statements of normal, and words that name no checklist finding
    ("Heart size is normal. The lungs are clear.", {"cardiomegaly": A, "lung_opacity": A}),
    ("Small pericardial effusion.", {}),
    # the reason for the exam and the patient's history give no verdict
    ("Rule out pneumothorax.", {}),
    ("History of pneumonia.", {}),
    # several mentions: present beats uncertain beats absent
    ("Left pleural effusion. No right pleural effusion.", {"pleural_effusion": P}),
    ("No pneumothorax. Possible tiny apical pneumothorax.", {"pneumothorax": U}),
    # devices: each implies support devices; a removed one is absent and implies nothing
    ("Endotracheal tube 4 cm above the carina. Right PICC tip in the SVC.",
     {"endotracheal_tube": P, "central_venous_catheter": P, "support_devices": P}),
    ("The right chest tube has been removed. No residual pneumothorax.", {"chest_tube": A, "pneumothorax": A}),
])
def test_verdicts(text: str, expected: dict[str, Verdict]) -> None:
    assert said(text) == expected


def test_skipped_sections_are_not_read_and_evidence_is_the_sentence() -> None:
    text = ("INDICATION: Shortness of breath, evaluate for pneumonia or effusion.\n"
            "COMPARISON: None.\n"
            "FINDINGS: The cardiomediastinal silhouette is normal. Small right pneumothorax.\n"
            "IMPRESSION: Small right pneumothorax. No pneumonia.")
    verdicts = read_report(text, packaged_terms())
    assert {k: v.verdict for k, v in verdicts.items() if v.verdict is not N} == {
        "enlarged_cardiomediastinum": A, "pneumothorax": P, "pneumonia": A}
    assert verdicts["pneumothorax"].evidence == "Small right pneumothorax."
    assert verdicts["pleural_effusion"].verdict is N  # named only in the indication
    assert set(verdicts) == set(packaged_terms().findings)  # every finding of the rule set gets a verdict


def test_every_stage_book_finding_has_terms() -> None:
    from inference.stages import load_stages

    assert {f.key for f in load_stages().findings} == set(packaged_terms().findings)


@pytest.mark.parametrize(("radiologist", "model", "expected"), [
    (P, "present", Agreement.AGREE), (A, "absent", Agreement.AGREE), (N, "absent", Agreement.AGREE),
    (N, "present", Agreement.DISAGREE), (A, "present", Agreement.DISAGREE), (P, "absent", Agreement.DISAGREE),
    (U, "present", Agreement.UNCERTAIN), (P, "uncertain", Agreement.UNCERTAIN), (P, None, Agreement.NOT_COMPARED),
])
def test_agreement(radiologist: Verdict, model: str | None, expected: Agreement) -> None:
    assert agreement(radiologist, model) is expected


def test_a_site_rule_set_is_read_and_checked(tmp_path: Path) -> None:
    site = tmp_path / "terms.yaml"
    text = (Path(__file__).resolve().parents[2] / "dicomnode" / "data" / "feedback_terms.yaml").read_text()
    site.write_text(text.replace("mentions: [pneumothorax,", "mentions: [collapsed lung, pneumothorax,"))
    terms = load_terms(site)
    assert read_report("Collapsed lung on the right.", terms)["pneumothorax"].verdict is P
    assert read_report("Collapsed lung on the right.", packaged_terms())["pneumothorax"].verdict is N

    site.write_text(text.replace("implies: [support_devices]", "implies: [supportdevices]", 1))
    with pytest.raises(TermsError, match="implies names unknown finding"):
        load_terms(site)
    site.write_text(text.replace('negation_before: ["no",', "negation_before: [no,"))
    with pytest.raises(TermsError, match=r"negation_before\.0: Input should be a valid string"):
        load_terms(site)  # YAML's bare no is false
    with pytest.raises(ConfigError, match="feedback: .*cannot read"):
        config_from_dict({"processing": {"processor": "passthrough"},
                          "feedback": {"enabled": True, "terms_file": str(tmp_path / "missing.yaml")}}, environ={})
