"""Build the AI result as a TID 1500 Comprehensive 3D SR with highdicom (pure, no I/O).

The report sits in the source image's study, in a new series, and follows the IHE AI
Results (AIR) profile: Contributing Equipment item with purpose of reference
"Processing Algorithm" and a Device UID that changes with the weights, Verification Flag
UNVERIFIED, patient and study attributes copied from the source.

Content tree (TID 1500 "Imaging Measurement Report")::

    CONTAINER Imaging Measurement Report
      HAS CONCEPT MOD  Language of Content Item and Descendants = English
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID/Name/Manufacturer/Model
      HAS CONCEPT MOD  Procedure reported = Plain chest X-ray
      CONTAINS CONTAINER Imaging Measurements
        CONTAINS CONTAINER Measurement Group                  (TID 1501, the result)
          Tracking Identifier "COVID-19 classification", Tracking Unique Identifier
          Finding = COVID-19, Finding Site = Lung
          Algorithm Name / Algorithm Version / Algorithm Parameters   (TID 4019)
          Source of Measurement = IMAGE <source image>
          NUM Probability (1), NUM Threshold Value (1)
          CODE COVID-19 = Present | Absent
        CONTAINS CONTAINER Measurement Group                  (TID 1501, one per similar case)
          Tracking Identifier "Similar case <rank>", Tracking Unique Identifier
          Finding = Similar case (99CXRAI)
          Algorithm Name / Version                            (TID 4019)
          Source of Measurement = IMAGE <similar image>
          NUM Embedding distance (1)
          CODE COVID-19 = Present | Absent                    (the case's known label)

The similar images belong to other studies: highdicom lists each one, with its Study
and Series Instance UIDs, in the Pertinent Other Evidence Sequence.
"""

from __future__ import annotations

import enum
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.uid import UID

from dicom_node.report import codes
from dicom_node.report.source import checked_source, source_instance_number
from dicom_node.report.uids import derived_uid
from monai_app.labels import CLASS_NAMES, DEFAULT_THRESHOLD, POSITIVE_CLASS

logger = logging.getLogger(__name__)

DEFAULT_SERIES_DESCRIPTION = "AI chest X-ray: COVID-19 classification"
# Post-processing series conventionally sort after the acquired ones.
DEFAULT_SERIES_NUMBER = 9000

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_LO_MAX = 64  # VR LO: Manufacturer, Manufacturer's Model Name, Software Versions, ...


def _check_text(argument: str, value: object, max_length: int = _LO_MAX) -> None:
    if not isinstance(value, str):
        raise TypeError(f'Argument "{argument}" must be a string.')
    if not value.strip() or len(value) > max_length or "\\" in value or not value.isprintable():
        raise ValueError(
            f'Argument "{argument}" must be 1-{max_length} printable characters '
            "without backslash."
        )


def _check_unit_interval(argument: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'Argument "{argument}" must be a number.')
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f'Argument "{argument}" must be in [0, 1].')


def _check_uid(argument: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f'Argument "{argument}" must be a string.')
    if not UID(value).is_valid:
        raise ValueError(f'Argument "{argument}" must be a valid UID, got "{value}".')


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm that produced the result (TID 4019 and IHE AIR equipment).

    Parameters
    ----------
    name : str
        Algorithm name, e.g. from ``bundle/configs/metadata.json``.
    version : str
        Algorithm version, e.g. the bundle's ``version``.
    weights_sha256 : str
        SHA-256 of the model weights, 64 lower-case hex digits. The Device UID is
        derived from it, so new weights give a new Device UID (IHE AIR).
    manufacturer : str
        Who makes the algorithm (Manufacturer of the SR and of its equipment item).
    model_name : str or None
        Manufacturer's Model Name; ``None`` uses ``name``.
    """

    name: str
    version: str
    weights_sha256: str
    manufacturer: str
    model_name: str | None = None

    def __post_init__(self) -> None:
        _check_text("name", self.name)
        _check_text("version", self.version)
        _check_text("manufacturer", self.manufacturer)
        if self.model_name is not None:
            _check_text("model_name", self.model_name)
        if not isinstance(self.weights_sha256, str):
            raise TypeError('Argument "weights_sha256" must be a string.')
        if not _SHA256_HEX.fullmatch(self.weights_sha256):
            raise ValueError('Argument "weights_sha256" must be 64 lower-case hex digits.')

    @property
    def device_uid(self) -> UID:
        """Device UID of the algorithm: a function of the weights and nothing else."""
        return derived_uid("device", self.weights_sha256)

    @property
    def manufacturer_model_name(self) -> str:
        """Manufacturer's Model Name (``model_name``, else ``name``)."""
        return self.model_name if self.model_name is not None else self.name


@dataclass(frozen=True)
class Finding:
    """The classifier's output for COVID-19 on one image.

    Parameters
    ----------
    probability : float
        Model probability of COVID-19, in [0, 1].
    threshold : float
        Operating point, in [0, 1]: the finding is present when
        ``probability >= threshold``.
    """

    probability: float
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        _check_unit_interval("probability", self.probability)
        _check_unit_interval("threshold", self.threshold)

    @property
    def is_present(self) -> bool:
        """Whether the finding is reported as present at the threshold."""
        return self.probability >= self.threshold


class KnownLabel(enum.Enum):
    """Ground-truth label of a case in the similarity index (``manifest.csv`` ``label``)."""

    COVID = CLASS_NAMES[POSITIVE_CLASS]
    NON_COVID = CLASS_NAMES[1 - POSITIVE_CLASS]


@dataclass(frozen=True)
class SimilarStudy:
    """A prior case the embedding index found close to the source image.

    Parameters
    ----------
    study_instance_uid, series_instance_uid, sop_instance_uid, sop_class_uid : str
        UIDs of the similar image.
    distance : float
        Distance between the two embeddings (finite, >= 0; smaller is more similar).
    label : KnownLabel or str
        The case's known label, ``"covid"`` or ``"non_covid"``.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    distance: float
    label: KnownLabel | str

    def __post_init__(self) -> None:
        for argument in ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "sop_class_uid"):
            _check_uid(argument, getattr(self, argument))
        if isinstance(self.distance, bool) or not isinstance(self.distance, (int, float)):
            raise TypeError('Argument "distance" must be a number.')
        if not (math.isfinite(self.distance) and self.distance >= 0):
            raise ValueError('Argument "distance" must be finite and >= 0.')
        try:
            object.__setattr__(self, "label", KnownLabel(self.label))
        except ValueError:
            known = ", ".join(f'"{label.value}"' for label in KnownLabel)
            raise ValueError(f'Argument "label" must be one of {known}, got {self.label!r}.') from None

    def as_evidence(self) -> Dataset:
        """The identifiers highdicom needs to list this image as evidence."""
        reference = Dataset()
        reference.StudyInstanceUID = self.study_instance_uid
        reference.SeriesInstanceUID = self.series_instance_uid
        reference.SOPInstanceUID = self.sop_instance_uid
        reference.SOPClassUID = self.sop_class_uid
        return reference


class ProcessingAlgorithmEquipment(hd.ContributingEquipment):
    """Contributing Equipment item describing the algorithm, as IHE AIR requires.

    highdicom's :class:`~highdicom.ContributingEquipment` validates every attribute but
    accepts only the CID 7005 purposes; IHE AIR mandates its interim code (Newcode1,
    99IHE, "Processing Algorithm") and a Device UID, which this subclass adds.
    """

    def __init__(self, algorithm: AlgorithmInfo) -> None:
        """
        Parameters
        ----------
        algorithm : AlgorithmInfo
            The algorithm that produced the result.
        """
        super().__init__(
            manufacturer=algorithm.manufacturer,
            purpose_of_reference=pydicom_codes.DCM.ProcessingEquipment,
            manufacturer_model_name=algorithm.manufacturer_model_name,
            software_versions=algorithm.version,
            contribution_description="AI algorithm that produced the results",
        )
        self.PurposeOfReferenceCodeSequence = [CodedConcept.from_code(codes.PROCESSING_ALGORITHM)]
        self.DeviceUID = algorithm.device_uid


def report_series_instance_uid(source: Dataset, algorithm: AlgorithmInfo) -> UID:
    """Series Instance UID of the reports one algorithm writes for one source series."""
    return derived_uid(
        "sr-series", str(source.SeriesInstanceUID), algorithm.name, algorithm.version,
        algorithm.weights_sha256,
    )


def report_sop_instance_uid(source: Dataset, finding: Finding, algorithm: AlgorithmInfo) -> UID:
    """SOP Instance UID of the report on ``source``: the same inputs give the same UID.

    A report rebuilt and re-sent after a crash therefore carries the same UID and the
    PACS stores it once; new weights, version or threshold give a new report.
    """
    return derived_uid(
        "sr-instance", str(source.SOPInstanceUID), algorithm.name, algorithm.version,
        algorithm.weights_sha256, repr(float(finding.threshold)),
    )


def _algorithm_identification(algorithm: AlgorithmInfo, parameters: Sequence[str] | None = None) -> AlgorithmIdentification:
    return AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=parameters,
        manufacturer=algorithm.manufacturer,
    )


def _finding_group(
    source: Dataset, finding: Finding, algorithm: AlgorithmInfo, sop_instance_uid: str
) -> MeasurementsAndQualitativeEvaluations:
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            identifier="COVID-19 classification",
            uid=derived_uid("tracking", sop_instance_uid, "finding"),
        ),
        finding_type=codes.COVID_19,
        finding_sites=[FindingSite(anatomic_location=codes.LUNG)],
        algorithm_id=_algorithm_identification(algorithm, [f"threshold={finding.threshold:g}"]),
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=[
            Measurement(name=codes.PROBABILITY, value=finding.probability, unit=codes.NO_UNITS),
            Measurement(name=codes.THRESHOLD_VALUE, value=finding.threshold, unit=codes.NO_UNITS),
        ],
        qualitative_evaluations=[
            QualitativeEvaluation(
                name=codes.COVID_19,
                value=codes.PRESENT if finding.is_present else codes.ABSENT,
            )
        ],
    )


def _similar_case_group(
    rank: int, similar: SimilarStudy, algorithm: AlgorithmInfo, sop_instance_uid: str
) -> MeasurementsAndQualitativeEvaluations:
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            identifier=f"Similar case {rank}",
            uid=derived_uid("tracking", sop_instance_uid, "similar", similar.sop_instance_uid),
        ),
        finding_type=codes.SIMILAR_CASE,
        algorithm_id=_algorithm_identification(algorithm),
        source_images=[
            SourceImageForMeasurementGroup(
                referenced_sop_class_uid=similar.sop_class_uid,
                referenced_sop_instance_uid=similar.sop_instance_uid,
            )
        ],
        measurements=[
            Measurement(name=codes.EMBEDDING_DISTANCE, value=similar.distance, unit=codes.NO_UNITS)
        ],
        qualitative_evaluations=[
            QualitativeEvaluation(
                name=codes.COVID_19,
                value=codes.PRESENT if similar.label is KnownLabel.COVID else codes.ABSENT,
            )
        ],
    )


def build_report(
    source: Dataset,
    finding: Finding,
    similar: Sequence[SimilarStudy],
    algorithm: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_number: int | None = None,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    institution_name: str | None = None,
) -> Comprehensive3DSR:
    """Build the TID 1500 Comprehensive 3D SR reporting ``finding`` on ``source``.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The classified image (pixel data not needed). Patient and study attributes are
        copied from it; missing Type 2 ones are written empty, with a warning.
    finding : Finding
        Probability and threshold of COVID-19.
    similar : Sequence[SimilarStudy]
        Similar cases from the embedding index, most similar first (may be empty).
    algorithm : AlgorithmInfo
        Name, version, weights hash and manufacturer of the algorithm.
    series_instance_uid : str or None
        ``None`` derives it from the source series and the algorithm
        (:func:`report_series_instance_uid`).
    sop_instance_uid : str or None
        ``None`` derives it from the source instance, the algorithm and the threshold
        (:func:`report_sop_instance_uid`), so a rebuilt report keeps its UID.
    series_number : int
        Series Number of the report series.
    instance_number : int or None
        ``None`` uses the source's Instance Number (1 if it has none).
    series_description : str
        Series Description shown in the PACS worklist.
    institution_name : str or None
        Institution Name of the equipment that created the report.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The report, Verification Flag UNVERIFIED, Completion Flag COMPLETE, Preliminary
        Flag PRELIMINARY (an unverified AI result).

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        An argument has a wrong value (e.g. the source lacks its UIDs, two similar
        cases are the same image).
    """
    source = checked_source(source)
    if not isinstance(finding, Finding):
        raise TypeError('Argument "finding" must have type Finding.')
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError('Argument "algorithm" must have type AlgorithmInfo.')
    similar = list(similar)
    if not all(isinstance(case, SimilarStudy) for case in similar):
        raise TypeError('Items of argument "similar" must have type SimilarStudy.')
    referenced = [source.SOPInstanceUID, *(case.sop_instance_uid for case in similar)]
    if len(set(referenced)) != len(referenced):
        raise ValueError('Argument "similar" must list distinct images other than the source.')
    _check_text("series_description", series_description)
    if instance_number is None:
        instance_number = source_instance_number(source)

    if series_instance_uid is None:
        series_instance_uid = report_series_instance_uid(source, algorithm)
    if sop_instance_uid is None:
        sop_instance_uid = report_sop_instance_uid(source, finding, algorithm)
    _check_uid("series_instance_uid", series_instance_uid)
    _check_uid("sop_instance_uid", sop_instance_uid)
    if series_instance_uid == source.SeriesInstanceUID:
        raise ValueError('Argument "series_instance_uid" must differ from the source series.')

    observer = ObserverContext(
        observer_type=codes.DEVICE_OBSERVER,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid,
            name=algorithm.name,
            manufacturer_name=algorithm.manufacturer,
            model_name=algorithm.manufacturer_model_name,
        ),
    )
    groups = [_finding_group(source, finding, algorithm, sop_instance_uid)]
    groups += [
        _similar_case_group(rank, case, algorithm, sop_instance_uid)
        for rank, case in enumerate(similar, start=1)
    ]
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PLAIN_CHEST_XRAY,
        imaging_measurements=groups,
    )
    return Comprehensive3DSR(
        evidence=[source, *(case.as_evidence() for case in similar)],
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.manufacturer_model_name,
        software_versions=algorithm.version,
        institution_name=institution_name,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description,
        coding_schemes=codes.non_standard_coding_schemes(),
        contributing_equipment=[ProcessingAlgorithmEquipment(algorithm)],
    )

