"""The Comprehensive 3D SR (TID 1500 Measurement Report) of one reasoning record.

Layout of the content tree (root: Imaging Measurement Report, or a DEMO title for demo models):
- observer context: device observer = the algorithm (UID from the weights hash; name, model, weights hash);
- procedure reported: chest imaging; image library: the source images;
- imaging measurements: one group (TID 1501) per checklist finding with a qualitative evaluation
  <finding concept> = present | absent | uncertain (uncoded findings as text "Finding" = "<label>: <presence>"),
  and one planar ROI group (TID 1410) per detection box, an image-region SCOORD on its source image, whose finding
  type and tracking identifier name its finding;
- comments: the unverified statement, the demo statement, an algorithm summary;
- one container per stage with its status and a question/answer container per question; stage 8 also holds the
  report findings and impression.

CompletionFlag is COMPLETE only when no stage failed and every answer parsed; otherwise PARTIAL, and a comment
lists why. VerificationFlag is UNVERIFIED and PreliminaryFlag PRELIMINARY: nobody has reviewed AI output.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
from highdicom import ContributingEquipment
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageLibraryEntryDescriptors,
    ImageRegion,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.valuerep import DA
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
from sr_writer import provenance as prov
from sr_writer.codes import CodeTable, load_table
from sr_writer.options import OutputOptions
from sr_writer.text import completion_problems, dicom_text, parsed_text, stage_status_text

CONTAINS = RelationshipTypeValues.CONTAINS
_MAX_TRACKING_ID = 64


def _text(name: CodedConcept, value: str) -> TextContentItem:
    value = dicom_text(value)
    return TextContentItem(name=name, value=value if value.strip() else "(empty)", relationship_type=CONTAINS)


def _container(name: CodedConcept) -> ContainerContentItem:
    item = ContainerContentItem(name=name, relationship_type=CONTAINS)
    item.ContentSequence = []
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


def _finding_group(finding: Finding, table: CodeTable, algorithm: AlgorithmIdentification) -> MeasurementsAndQualitativeEvaluations:
    entry = table.finding(finding.key)
    presence = table.presence[finding.presence.value]
    tracking = TrackingIdentifier(uid=generate_uid(), identifier=f"Finding: {entry.label}"[:_MAX_TRACKING_ID])
    if entry.code is not None:
        return MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=entry.code,
            algorithm_id=algorithm,
            qualitative_evaluations=[QualitativeEvaluation(name=entry.code, value=presence)],
        )
    group = MeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, algorithm_id=algorithm)
    group[0].ContentSequence.append(
        _text(table.structure["finding_text"], f"{entry.label}: {finding.presence.value} (no verified code)")
    )
    return group


def _region(box: Box, source: Dataset, frame: int) -> ImageRegion:
    rows, cols = int(source.Rows), int(source.Columns)
    x1, y1, x2, y2 = box.pixels
    x1, x2 = sorted((min(max(x1, 0.0), cols), min(max(x2, 0.0), cols)))
    y1, y2 = sorted((min(max(y1, 0.0), rows), min(max(y2, 0.0), rows)))
    points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=float)
    frames = [frame] if int(getattr(source, "NumberOfFrames", 1) or 1) > 1 else None
    return ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=points,
        source_image=SourceImageForRegion.from_source_image(source, referenced_frame_numbers=frames),
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
    key = finding.key if finding is not None else box.target
    entry = table.finding(key)
    tracking = TrackingIdentifier(uid=generate_uid(), identifier=f"Box {number}: {entry.label}"[:_MAX_TRACKING_ID])
    kwargs: dict = {}
    if key in table.anatomy:
        sites = [FindingSite(anatomic_location=entry.code, laterality=entry.laterality)] if entry.code else None
        kwargs["finding_sites"] = sites
    else:
        kwargs["finding_type"] = entry.code or table.structure["generic_finding"]
        if finding is not None and entry.code is not None:
            kwargs["qualitative_evaluations"] = [
                QualitativeEvaluation(name=entry.code, value=table.presence[finding.presence.value])
            ]
    group = PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=_region(box, source, frame), algorithm_id=algorithm, **kwargs
    )
    if entry.code is None:
        presence = finding.presence.value if finding is not None else "grounded"
        group[0].ContentSequence.append(_text(table.structure["finding_text"], f"{entry.label}: {presence}"))
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


def _qa_container(question: QuestionResult, table: CodeTable) -> ContainerContentItem:
    private = table.private
    qa = _container(private["question_answer"])
    items = [_text(private["question_id"], question.id), _text(private["question"], _question_text(question))]
    if question.parsed.think:
        items.append(_text(private["model_reasoning"], question.parsed.think))
    items.append(_text(private["answer"], question.raw_answer))
    value = parsed_text(question)
    if value:
        items.append(_text(private["parsed_answer"], value))
    if not question.parsed.ok:
        items.append(_text(private["parse_error"], question.parsed.error or "answer did not parse"))
    qa.ContentSequence.extend(items)
    return qa


def _question_text(question: QuestionResult) -> str:
    if question.options and not all(o in question.question for o in question.options):
        return f"{question.question} Options: " + " | ".join(question.options)
    return question.question


def _stage_container(stage: StageResult, record: ReasoningRecord, table: CodeTable) -> ContainerContentItem:
    container = _container(table.stage_code(stage.number, stage.title))
    container.ContentSequence.append(_text(table.private["stage_status"], stage_status_text(stage)))
    for question in stage.questions:
        container.ContentSequence.append(_qa_container(question, table))
    if stage.number == 8:
        if record.report.findings:
            container.ContentSequence.append(_text(table.structure["report_findings"], record.report.findings))
        if record.report.impression:
            container.ContentSequence.append(_text(table.structure["report_impression"], record.report.impression))
    return container


def _imaging_measurements(sr: Dataset) -> Dataset:
    """The Imaging Measurements container (DCM 126010) of a TID 1500 SR's root."""
    wanted = codes.DCM.ImagingMeasurements.value
    for item in sr.ContentSequence:
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == wanted:
            return item
    raise ValueError("the SR has no Imaging Measurements container")


def drop_invalid_patient_dates(datasets: Sequence[Dataset]) -> list[str]:
    """Blank a PatientBirthDate that is not a valid DA in these (in-memory) source datasets, so a defect inherited
    from the source header never withholds the result. Returns what was dropped, by name only (never the value:
    it is patient data)."""
    dropped = []
    for ds in datasets:
        value = str(ds.get("PatientBirthDate", "") or "").strip()
        if not value:
            continue
        try:
            DA(value)
        except (ValueError, TypeError):
            ds.PatientBirthDate = ""
            dropped.append("PatientBirthDate (invalid date)")
    return dropped


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

    finding_groups: list = [_finding_group(f, table, algorithm) for f in record.findings]
    box_groups: list = []
    for box, finding in collect_boxes(record):
        ref = record.images[box.image_index] if 0 <= box.image_index < len(record.images) else None
        source = sources.get(ref.sop_instance_uid) if ref else None
        if source is None:
            continue  # box on an image we were not given: it stays as text in the stage containers
        box_groups.append(_box_group(len(box_groups) + 1, box, finding, source, ref.frame, table, algorithm))

    if not finding_groups and not box_groups:  # TID 1500 needs one measurement group: say that none were reported
        empty = MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier="Findings: none reported"),
            algorithm_id=algorithm,
        )
        empty[0].ContentSequence.append(_text(table.structure["comment"], "The record holds no checklist findings."))
        finding_groups.append(empty)
    # highdicom deep-copies the content tree and walks it for evidence when the SR is constructed. Finding groups
    # reference no image, so they are given to it only when no box group is there to satisfy TID 1500; the rest
    # are inserted after construction, ahead of the box groups, costing neither a copy nor a walk.
    constructed = box_groups or finding_groups[:1]
    deferred = finding_groups if box_groups else finding_groups[1:]

    title = table.private["demo_title"] if p.demo_model else codes.DCM.ImagingMeasurementReport
    report = MeasurementReport(
        observation_context=_observation_context(record, options),
        procedure_reported=table.structure["procedure_reported"],
        imaging_measurements=constructed,
        title=title,
        referenced_images=_library_images(current),
    )
    root = report[0]
    comment = table.structure["comment"]
    root.ContentSequence.append(_text(comment, UNVERIFIED_STATEMENT))
    if p.demo_model:
        root.ContentSequence.append(_text(comment, DEMO_STATEMENT))
    root.ContentSequence.append(_text(table.private["algorithm"], prov.summary(p)))
    problems = completion_problems(record)
    if problems:
        root.ContentSequence.append(_text(comment, "Incomplete (PARTIAL): " + "; ".join(problems)))

    now = dt.datetime.now(dt.timezone.utc)
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
    drop_invalid_patient_dates([*current, *prior])
    sr = Comprehensive3DSR(
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
        series_description=options.series_description(options.sr_series_description, p.demo_model),
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
    measurements = _imaging_measurements(sr)
    position = 0 if box_groups else len(measurements.ContentSequence)
    for group in reversed(deferred):
        for item in reversed(group):
            measurements.ContentSequence.insert(position, item)
    # The stage containers (most of the tree) hold text only, no image references: appended after highdicom has
    # collected the evidence and copied the content, they add nothing to evidence and cost no second copy.
    for stage in sorted(record.stages, key=lambda s: s.number):
        sr.ContentSequence.append(_stage_container(stage, record, table))
    return sr
