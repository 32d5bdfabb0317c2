"""The SR (TID 1500 Measurement Report) of one reasoning record: Comprehensive 3D SR, or Comprehensive SR on request.

Layout of the content tree (root: Imaging Measurement Report, DCM 126000, for demo models too):
- observer context: device observer = the algorithm (UID from the weights hash; name, model, weights hash);
- procedure reported: XR (CID 100); image library: the source images, current and prior;
- imaging measurements (only when there are boxes): one planar ROI group (TID 1410) per detection box, an
  image-region SCOORD on its source image; its Finding is the finding's code (what a viewer labels the box with),
  its Finding Site the anatomy it was grounded on; the tracking identifier and a Comment name the box (its finding,
  or its anatomy and side: what OHIF lists a box by);
- qualitative evaluations (UMLS C0034375): <finding concept> = present | absent | uncertain for every checklist
  finding (study level, no geometry), with HAS PROPERTIES the model's probability of presence (DCM 111012
  Certainty of Finding, UCUM %) and the threshold that decided it (private Presence threshold, %) where the record
  has them, and a comment saying what decided presence;
- comments: the unverified statement, the demo statement, an algorithm summary;
- one container per stage with its status and a question/answer container per question; stage 5 (comparison) also
  cites each prior image the model compared as an IMAGE item (the prior is in the image library and in Pertinent
  Other Evidence too); stage 8 also holds the report findings and impression.

CompletionFlag is COMPLETE only when no stage failed and every answer parsed; otherwise PARTIAL, and a comment
lists why. VerificationFlag is UNVERIFIED and PreliminaryFlag PRELIMINARY: nobody has reviewed AI output.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
from highdicom import ContributingEquipment
from highdicom._standard_utils import is_multiframe_image
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageContentItem,
    ImageLibraryEntryDescriptors,
    ImageRegion,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from inference.record import (
    DEMO_STATEMENT,
    UNVERIFIED_STATEMENT,
    Box,
    Finding,
    QuestionResult,
    ReasoningRecord,
    StageResult,
)
from inference.triage import assess_record
from sr_writer import provenance as prov
from sr_writer import triage as triage_marks
from sr_writer.codes import CodeTable, load_table
from sr_writer.options import OutputOptions
from sr_writer.text import (
    completion_problems,
    dicom_text,
    operating_points_text,
    parsed_text,
    stage_status_text,
    sweep_text,
)

CONTAINS = RelationshipTypeValues.CONTAINS
_MAX_TRACKING_ID = 64


def _text(name: CodedConcept, value: str) -> TextContentItem:
    value = dicom_text(value)
    return TextContentItem(name=name, value=value if value.strip() else "(empty)", relationship_type=CONTAINS)


def _code_item(concept: CodedConcept) -> Dataset:
    """A plain copy of a code item (its own elements)."""
    item = Dataset()
    for element in concept:
        item.add(DataElement(element.tag, element.VR, element.value))
    return item


def _plain_text(name: CodedConcept, value: str) -> Dataset:
    """The TEXT item ``_text`` makes, as a plain dataset: for the stage containers (most of the tree), which join
    the SR after highdicom has made it; highdicom's item constructors check every attribute they set, which made
    them half of the SR's cost. The same elements, in the same order (``tests/sr/test_sr_items.py``)."""
    value = dicom_text(value)
    item = Dataset()
    item.add_new(0x0040A010, "CS", "CONTAINS")  # Relationship Type
    item.add_new(0x0040A040, "CS", "TEXT")  # Value Type
    item.add_new(0x0040A043, "SQ", DicomSequence([_code_item(name)]))  # Concept Name Code Sequence
    item.add_new(0x0040A160, "UT", value if value.strip() else "(empty)")  # Text Value
    return item


def _plain_container(name: CodedConcept) -> Dataset:
    """The CONTAINER item ``_container`` makes, as a plain dataset (see ``_plain_text``)."""
    item = Dataset()
    item.add_new(0x0040A010, "CS", "CONTAINS")
    item.add_new(0x0040A040, "CS", "CONTAINER")
    item.add_new(0x0040A043, "SQ", DicomSequence([_code_item(name)]))
    item.add_new(0x0040A050, "CS", "CONTINUOUS")  # Continuity Of Content
    item.add_new(0x0040A730, "SQ", DicomSequence())  # Content Sequence
    return item


def _container(name: CodedConcept) -> ContainerContentItem:
    item = ContainerContentItem(name=name, relationship_type=CONTAINS)
    item.ContentSequence = ContentSequence([])
    return item


def _source_index(datasets: Sequence[Dataset]) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def _library_images(datasets: Sequence[Dataset]) -> list[Dataset] | None:
    """Sources that highdicom can describe in the (optional) Image Library.

    highdicom needs e.g. Imager Pixel Spacing and Patient Orientation for projection images; sources without them
    (type 3 in CR) stay evidence but are left out of the library instead of failing the whole SR.
    """
    usable = []
    for ds in datasets:
        try:
            ImageLibraryEntryDescriptors(ds)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            continue
        usable.append(ds)
    return usable or None


def _algorithm_id(record: ReasoningRecord) -> AlgorithmIdentification:
    p = record.provenance
    return AlgorithmIdentification(
        name=p.model_name[:64],
        version=(p.model_version or p.software_version)[:64],
        parameters=[f"weights_sha256={p.weights_sha256}", f"quantization={p.quantization}", f"profile={p.profile}"],
    )


def _observation_context(record: ReasoningRecord, options: OutputOptions) -> ObservationContext:
    p = record.provenance
    device = DeviceObserverIdentifyingAttributes(
        uid=prov.device_uid(p),
        name=p.model_name,
        manufacturer_name=options.manufacturer,
        model_name=f"{prov.model_title(p)} (quantization {p.quantization})",
        serial_number=f"weights-sha256:{p.weights_sha256}",
    )
    return ObservationContext(
        observer_device_context=ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )


def _qualitative_item(finding: Finding, table: CodeTable) -> CodeContentItem | TextContentItem:
    """One study-level result: <finding concept> = present | absent | uncertain (TID 1500 Qualitative Evaluations).

    A post-coordinated finding carries its Finding Site as a HAS CONCEPT MOD child, and its probability of
    presence and operating point as HAS PROPERTIES numbers (``_score_items``). A key the table does not know
    (none today) is written as text under the generic Clinical finding concept, never under DCM 121071."""
    entry = table.finding(finding.key)
    presence = table.presence[finding.presence.value]
    if entry.code is None:
        return _text(table.structure["generic_finding"], f"{entry.label}: {finding.presence.value}")
    item = CodeContentItem(name=entry.code, value=presence, relationship_type=CONTAINS)
    children: list[CodeContentItem | NumContentItem] = []
    if entry.site is not None:
        children.append(CodeContentItem(name=codes.SCT.FindingSite, value=entry.site,
                                        relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD))
    children += _score_items(finding, table)
    if children:
        item.ContentSequence = ContentSequence(children)
    return item


def _score_items(finding: Finding, table: CodeTable) -> list[NumContentItem]:
    """The finding's probability of presence, (DCM 111012) Certainty of Finding in UCUM %, and the threshold
    that decided its presence (private Presence threshold, %), when the record has them (issue 26)."""
    return [NumContentItem(name=concept, value=value, unit=table.structure["percent"],
                           relationship_type=RelationshipTypeValues.HAS_PROPERTIES)
            for concept, value in table.scores(finding.probability, finding.threshold)]


def _qualitative_evaluations(record: ReasoningRecord, table: CodeTable) -> ContainerContentItem:
    """The Qualitative Evaluations container (UMLS C0034375): every checklist finding's presence, no geometry;
    and a comment saying what decided presence (the model's answer or the site's operating points)."""
    container = _container(table.structure["qualitative_evaluations"])
    container.ContentSequence.extend(_qualitative_item(f, table) for f in record.findings)
    if not record.findings:
        container.ContentSequence.append(_text(table.structure["comment"], "The record holds no checklist findings."))
    else:
        container.ContentSequence.append(_text(table.structure["comment"], operating_points_text(record)))
    return container


def _frame_numbers(source: Dataset, frame: int) -> list[int] | None:
    """The Referenced Frame Number of a reference to ``source``: only for a multi-frame SOP class with several frames
    (dciodvfy refuses one for a single-frame class, even when the instance says Number of Frames 2)."""
    several = int(getattr(source, "NumberOfFrames", 1) or 1) > 1
    return [frame] if several and is_multiframe_image(source) else None


def _region(box: Box, source: Dataset, frame: int) -> ImageRegion:
    """The box as an image-region SCOORD on its source. The source reference is built from its UIDs, not with
    ``SourceImageForRegion.from_source_image``, which reads Modality (Type 1, yet absent in some real headers)."""
    rows, cols = int(source.Rows), int(source.Columns)
    x1, y1, x2, y2 = box.pixels
    x1, x2 = sorted((min(max(x1, 0.0), cols), min(max(x2, 0.0), cols)))
    y1, y2 = sorted((min(max(y1, 0.0), rows), min(max(y2, 0.0), rows)))
    points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=float)
    return ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=points,
        source_image=SourceImageForRegion(referenced_sop_class_uid=str(source.SOPClassUID),
                                          referenced_sop_instance_uid=str(source.SOPInstanceUID),
                                          referenced_frame_numbers=_frame_numbers(source, frame)),
    )


def _box_group(
    number: int,
    box: Box,
    finding: Finding | None,
    source: Dataset,
    frame: int,
    table: CodeTable,
    algorithm: AlgorithmIdentification,
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """A TID 1410 planar ROI group: the finding as its coded Finding (what a viewer labels the box with), the
    anatomy it was grounded on (or the finding's own site) as Finding Site."""
    entry = table.finding(finding.key) if finding is not None else None
    anatomy = table.anatomy.get(box.target)
    label = entry.label if entry is not None else (anatomy.label if anatomy else table.finding(box.target).label)
    tracking = TrackingIdentifier(uid=generate_uid(), identifier=f"Box {number}: {label}"[:_MAX_TRACKING_ID])
    finding_type = entry.code if entry is not None and entry.code is not None else table.structure["generic_finding"]
    if anatomy is not None and anatomy.code is not None:  # the table gives every anatomy entry a code
        sites = [FindingSite(anatomic_location=anatomy.code, laterality=anatomy.laterality)]
    elif entry is not None and entry.site is not None:
        sites = [FindingSite(anatomic_location=entry.site)]
    else:
        sites = None
    evaluations = None
    if finding is not None and entry is not None and entry.code is not None:
        evaluations = [QualitativeEvaluation(name=entry.code, value=table.presence[finding.presence.value])]
    group = PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=_region(box, source, frame), algorithm_id=algorithm,
        finding_type=finding_type, finding_sites=sites, qualitative_evaluations=evaluations,
    )
    # The box's name as a Comment (DCM 121106): what OHIF labels a hydrated measurement with (the Measurements
    # panel), where it would otherwise fall back to the Finding's meaning ("Clinical finding" for an anatomy box).
    group[0].ContentSequence.append(_text(table.structure["comment"], label))
    return group


def collect_boxes(record: ReasoningRecord) -> list[tuple[Box, Finding | None]]:
    """Every detection box once: findings' boxes linked to their finding, then other stage-3 boxes."""
    by_key = {f.key: f for f in record.findings}
    seen: list[Box] = []
    result: list[tuple[Box, Finding | None]] = []
    for finding in record.findings:
        for box in finding.boxes:
            if box not in seen:
                seen.append(box)
                result.append((box, finding))
    for stage in record.stages:
        for question in stage.questions:
            for box in question.parsed.boxes:
                if box not in seen:
                    seen.append(box)
                    result.append((box, by_key.get(question.finding or box.target) or by_key.get(box.target)))
    return result


def _qa_container(question: QuestionResult, table: CodeTable) -> Dataset:
    private = table.private
    qa = _plain_container(private["question_answer"])
    items = [_plain_text(private["question_id"], question.id),
             _plain_text(private["question"], _question_text(question))]
    if question.parsed.think:
        items.append(_plain_text(private["model_reasoning"], question.parsed.think))
    items.append(_plain_text(private["answer"], question.raw_answer))
    value = parsed_text(question)
    if value:
        items.append(_plain_text(private["parsed_answer"], value))
    if not question.parsed.ok:
        items.append(_plain_text(private["parse_error"], question.parsed.error or "answer did not parse"))
    qa.ContentSequence.extend(items)
    return qa


def _question_text(question: QuestionResult) -> str:
    if question.options and not all(o in question.question for o in question.options):
        return f"{question.question} Options: " + " | ".join(question.options)
    return question.question


COMPARISON_STAGE = 5


def _prior_images(record: ReasoningRecord, sources: dict[str, Dataset], table: CodeTable) -> list[ImageContentItem]:
    """IMAGE items (CONTAINS) citing each prior image of the record that is among the sources: what stage 5
    compared the current study with."""
    items = []
    for ref in record.images:
        source = sources.get(ref.sop_instance_uid)
        if ref.role != "prior" or source is None:
            continue
        items.append(ImageContentItem(
            name=table.private["prior_image"], referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
            referenced_frame_numbers=_frame_numbers(source, ref.frame),
            relationship_type=CONTAINS))
    return items


def _stage_container(stage: StageResult, record: ReasoningRecord, table: CodeTable,
                     sources: dict[str, Dataset]) -> Dataset:
    container = _plain_container(table.stage_code(stage.number, stage.title))
    container.ContentSequence.append(_plain_text(table.private["stage_status"], stage_status_text(stage)))
    if stage.number == COMPARISON_STAGE and stage.questions:
        container.ContentSequence.extend(_prior_images(record, sources, table))
    for question in stage.questions:
        container.ContentSequence.append(_qa_container(question, table))
    if stage.number == 8:
        if record.report.findings:
            container.ContentSequence.append(_plain_text(table.structure["report_findings"], record.report.findings))
        if record.report.impression:
            container.ContentSequence.append(_plain_text(table.structure["report_impression"],
                                                         record.report.impression))
    return container


def _imaging_measurements(root: Dataset) -> Dataset | None:
    """The Imaging Measurements container (DCM 126010) of a TID 1500 root, or None."""
    wanted = codes.DCM.ImagingMeasurements.value
    return next((item for item in root.ContentSequence if item.ValueType == "CONTAINER"
                 and item.ConceptNameCodeSequence[0].CodeValue == wanted), None)


def _drop_imaging_measurements(root: Dataset) -> None:
    """Take the Imaging Measurements container (DCM 126010) out of a TID 1500 root (when no group has geometry)."""
    wanted = codes.DCM.ImagingMeasurements.value
    root.ContentSequence = [item for item in root.ContentSequence
                            if not (item.ValueType == "CONTAINER"
                                    and item.ConceptNameCodeSequence[0].CodeValue == wanted)]


def _original_source_references(items: Sequence[Dataset], name: CodedConcept) -> None:
    """Name every IMAGE that a SCOORD is SELECTED FROM ``name`` (DCM 111040 "Original Source", what Orthanc
    Stone reads; highdicom writes SCT 260753009 "Source")."""
    for item in items:
        children = item.get("ContentSequence", [])
        if item.ValueType == "SCOORD":
            for child in children:
                if child.ValueType == "IMAGE" and child.RelationshipType == "SELECTED FROM":
                    child.ConceptNameCodeSequence = [name]
        else:
            _original_source_references(children, name)


def build_sr(
    record: ReasoningRecord,
    current: Sequence[Dataset],
    prior: Sequence[Dataset] = (),
    options: OutputOptions | None = None,
    predecessor: Dataset | None = None,
    table: CodeTable | None = None,
) -> Dataset:
    """The SR dataset for ``record`` (not validated here; see ``sr_writer.build_result_objects``)."""
    options = options or OutputOptions()
    table = table or load_table()
    if not current:
        raise ValueError("at least one current source dataset is needed")
    p = record.provenance
    sources = _source_index([*current, *prior])
    algorithm = _algorithm_id(record)

    box_groups: list = []
    for box, finding in collect_boxes(record):
        ref = record.images[box.image_index] if 0 <= box.image_index < len(record.images) else None
        source = sources.get(ref.sop_instance_uid) if ref is not None else None
        if ref is None or source is None:
            continue  # box on an image we were not given: it stays as text in the stage containers
        box_groups.append(_box_group(len(box_groups) + 1, box, finding, source, ref.frame, table, algorithm))
    # highdicom wants one measurement group; without a box a placeholder satisfies it and the Imaging Measurements
    # container is taken out again: every group there must have geometry (OHIF reads a SCOORD in each), and TID
    # 1500 needs only one of Imaging Measurements and Qualitative Evaluations.
    placeholder = [MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier="none"), algorithm_id=algorithm)]

    # The document title is always DCM 126000 (viewers show TID 1500 measurements only under it); demo output is
    # labelled in the series description, a comment and the algorithm identification.
    report = MeasurementReport(
        observation_context=_observation_context(record, options),
        procedure_reported=table.structure["procedure_reported"],
        imaging_measurements=box_groups or placeholder,
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=_library_images([*current, *prior]),  # TID 1600: a prior compared is referenced too
    )
    root = report[0]
    if not box_groups:
        _drop_imaging_measurements(root)
    comment = table.structure["comment"]
    problems = completion_problems(record)
    # the rest of the root: no image references in it (see below where it joins the root)
    triage = assess_record(record, options.triage_rules)  # a raised priority: coded item, comment, series label
    rest = [triage_marks.add_priority(_qualitative_evaluations(record, table), triage, table),
            *triage_marks.comments(triage, table), _text(comment, UNVERIFIED_STATEMENT),
            *([_text(comment, DEMO_STATEMENT)] if p.demo_model else []),
            _text(table.private["algorithm"], prov.summary(p)),
            *([_text(comment, "Incomplete (PARTIAL): " + "; ".join(problems))] if problems else [])]
    if not box_groups:  # then the root needs its qualitative evaluations while highdicom makes the SR
        root.ContentSequence.extend(rest)

    now = dt.datetime.now(dt.UTC)
    equipment = ContributingEquipment(
        manufacturer=options.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=prov.model_title(p)[:64],
        software_versions=prov.software_versions(p),
        device_serial_number=prov.device_uid(p),  # the device UID: changes when the weights change
        institution_name=options.institution_name,
        station_name=options.station_name,
        contribution_datetime=now,
        contribution_description=f"Processing Algorithm: {prov.summary(p)}"[:64],
    )
    sr_class = ComprehensiveSR if options.sr_sop_class == "comprehensive" else Comprehensive3DSR
    # The box groups (all but one) and the rest of the root are held out while highdicom makes the SR: it
    # deep-copies and re-parses the whole content and searches it twice for image references (two thirds of the
    # SR's cost with the 20-odd boxes of a study), yet the evidence it records is every dataset given as
    # ``evidence`` whatever the content references, and every box references one of them (``sources``). They go
    # back where they were afterwards (highdicom's SR shares the root's items): the same tree.
    measurements = _imaging_measurements(root) if box_groups else None
    held = list(measurements.ContentSequence) if measurements is not None else []
    if measurements is not None:
        measurements.ContentSequence = held[:1]  # one group keeps the container as highdicom checks it
    sr = sr_class(
        evidence=[*current, *prior],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=options.sr_series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=options.manufacturer,
        is_complete=not problems,
        is_final=False,
        is_verified=False,
        institution_name=options.institution_name,
        institutional_department_name=options.institutional_department_name,
        previous_versions=[predecessor] if predecessor is not None else None,
        contributing_equipment=[equipment],
        specific_character_set="ISO_IR 192",
        series_description=options.series_description(
            triage_marks.series_description(options.sr_series_description, triage), p.demo_model),
        manufacturer_model_name=prov.model_title(p)[:64],
        software_versions=prov.software_versions(p),
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=table.private_designator,
                name=table.private_name,
                responsible_organization=table.private_organization,
            )
        ],
    )
    if measurements is not None:
        sr_measurements = _imaging_measurements(sr)
        assert sr_measurements is not None
        sr_measurements.ContentSequence = held
        sr.ContentSequence.extend(rest)
    if options.sr_sop_class == "comprehensive":
        _original_source_references(sr.ContentSequence, table.structure["original_source"])
    sr.SeriesDate, sr.SeriesTime = sr.ContentDate, sr.ContentTime
    # The stage containers (most of the tree) are appended after highdicom has collected the evidence and copied the
    # content, so they cost no second copy; their only image references (stage 5's prior images) are evidence
    # already (Pertinent Other Evidence).
    stages = [_stage_container(stage, record, table, sources)
              for stage in sorted(record.stages, key=lambda s: s.number)]
    sr.ContentSequence = DicomSequence([*sr.ContentSequence, *stages])  # plain items: a plain sequence
    sweep_text(sr)  # no TAB or control character in any text, whatever it came from (sr_writer.text)
    return sr
