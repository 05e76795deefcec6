"""Build the AI result as a TID 1500 Comprehensive 3D SR with highdicom (pure, no I/O).

The report sits in the source image's study, in a new series, and follows the IHE AI
Results (AIR) profile: Contributing Equipment item with purpose of reference
"Processing Algorithm" and a Device UID that changes with the weights, Verification Flag
UNVERIFIED, patient and study attributes copied from the source.

Content tree (TID 1500 "Imaging Measurement Report"); every container is SEPARATE, so
viewers and ``dsr2html`` show each concept name beside its value::

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
          NUM Probability (%)
            INFERRED FROM SCOORD POLYLINE <image region>      (closed outline on the source)
              SELECTED FROM IMAGE <source image>
          NUM Threshold Value (%)
          CODE COVID-19 = Present | Absent
          TEXT Comment = "COVID-19 suggested: 71 % (threshold 13 %)"  (the label viewers draw)
      CONTAINS CONTAINER Qualitative Evaluations
        TEXT Summary = finding, probability, threshold, "unverified AI result", model and version
        TEXT Operating point = threshold, its validation sensitivity / specificity, the calibration
        TEXT Similar case = "1. Known COVID-19; similarity 0.93; ..."   (one per similar case)
          INFERRED FROM IMAGE Similar image <similar image>

The image region is where the classifier looked (the region of highest Grad-CAM
relevance) or, without a relevance map, the lung fields the U-Net found; OHIF v3 draws it
on the radiograph with the group's values and the Comment as its label. The similar cases
carry no coordinates on the source, so they sit under Qualitative Evaluations, as lines a
radiologist reads. The summary image and the segmentation are listed with the source in
the Current Requested Procedure Evidence Sequence. The similar images belong to other studies: highdicom lists each one,
with its Study and Series Instance UIDs, in the Pertinent Other Evidence Sequence.
"""

from __future__ import annotations

import enum
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    CoordinatesForMeasurement,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageContentItem,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.uid import UID

from dicom_node.report import codes
from dicom_node.report.source import checked_source, source_instance_number
from dicom_node.report.uids import derived_uid
from monai_app.calibration import OperatingPoint
from monai_app.labels import CLASS_NAMES, DEFAULT_THRESHOLD, POSITIVE_CLASS

logger = logging.getLogger(__name__)

DEFAULT_SERIES_DESCRIPTION = "AI chest X-ray: COVID-19 classification"
# Post-processing series conventionally sort after the acquired ones.
DEFAULT_SERIES_NUMBER = 9000

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DICOM_DATE = re.compile(r"[0-9]{8}")
DISCLAIMER = "Unverified AI research result, not for diagnostic use."
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
        Decision threshold, in [0, 1]: the finding is present when
        ``probability >= threshold``.
    operating_point : OperatingPoint or None
        Validation sensitivity and specificity at ``threshold`` (the bundle's); ``None`` when
        none was measured for it (a threshold set by the node's configuration).
    calibration : str
        How ``probability`` was calibrated, in words (``"temperature scaling, T = 1.70"``).
    """

    probability: float
    threshold: float = DEFAULT_THRESHOLD
    operating_point: OperatingPoint | None = None
    calibration: str = "uncalibrated"

    def __post_init__(self) -> None:
        _check_unit_interval("probability", self.probability)
        _check_unit_interval("threshold", self.threshold)

    @property
    def is_present(self) -> bool:
        """Whether the finding is reported as present at the threshold."""
        return self.probability >= self.threshold

    @property
    def probability_percent(self) -> float:
        """The probability in percent, to one decimal (the precision the model supports).

        More decimals only where rounding would contradict the finding: 12.96 % with a
        threshold of 13 % must not read "13.0 % < 13 %".

        >>> Finding(0.0645749, 0.13).probability_percent, Finding(0.12996, 0.13).probability_percent
        (6.5, 12.996)
        """
        threshold = 100 * self.threshold
        for decimals in range(1, 10):
            value = round(100 * self.probability, decimals)
            if (value >= threshold) == self.is_present:
                return value
        return round(100 * self.probability, 1)

    @property
    def threshold_percent(self) -> float:
        """The threshold in percent, to one decimal."""
        return round(100 * self.threshold, 1)

    def label(self) -> str:
        """Short label viewers draw beside the region, e.g. ``"COVID-19 suggested: 71.2 % (threshold 13 %)"``.

        >>> Finding(0.0645, 0.13).label()
        'COVID-19 not suggested: 6.5 % (threshold 13 %)'
        """
        call = "suggested" if self.is_present else "not suggested"
        return f"COVID-19 {call}: {self.probability_percent:g} % (threshold {self.threshold_percent:g} %)"

    def operating_point_text(self) -> str:
        """Which threshold the call uses, its validation sensitivity and specificity, and the calibration.

        >>> Finding(0.3, 0.2143, OperatingPoint(0.882, 0.778, 94, "within_source"),
        ...         "temperature scaling, T = 1.70").operating_point_text()
        'Operating point: threshold 21.4 % (validation sensitivity 0.88, specificity 0.78, 94 images of the sources with both labels); probability calibrated by temperature scaling, T = 1.70'
        """
        point = self.operating_point
        if point is None:
            measured = "no validation sensitivity or specificity recorded for this threshold"
        else:
            images = "the sources with both labels" if point.subset == "within_source" else "all sources"
            measured = (
                f"{point.split.replace('val', 'validation')} sensitivity {point.sensitivity:.2f}, "
                f"specificity {point.specificity:.2f}, {point.n} images of {images}"
            )
        return (
            f"Operating point: threshold {self.threshold_percent:g} % ({measured}); "
            f"probability {'calibrated by ' + self.calibration if self.calibration != 'uncalibrated' else 'not calibrated'}"
        )

    def operating_point_line(self) -> str:
        """The operating point in one short line (the summary image's banner).

        >>> Finding(0.3, 0.2143, OperatingPoint(0.882, 0.778, 94, "within_source"), "temperature scaling, T = 1.70").operating_point_line()
        'Validation at this threshold: sensitivity 0.88, specificity 0.78; temperature scaling, T = 1.70'
        """
        point = self.operating_point
        measured = (
            "no validation figures for this threshold" if point is None
            else f"Validation at this threshold: sensitivity {point.sensitivity:.2f}, specificity {point.specificity:.2f}"
        )
        return f"{measured}; {self.calibration}"

    def summary(self, algorithm: AlgorithmInfo, region: ImageRegion | None = None) -> str:
        """The result in plain language: finding, probability, threshold, status and model."""
        verdict = "suggests" if self.is_present else "does not suggest"
        sign = ">=" if self.is_present else "<"
        text = (
            f"The AI model {verdict} COVID-19: probability {self.probability_percent:g} % "
            f"{sign} operating threshold {self.threshold_percent:g} %. "
        )
        if region is not None:
            text += f"Outlined on the image: {region.description}. "
        return text + f"{DISCLAIMER} Model: {algorithm.name} {algorithm.version}."


class KnownLabel(enum.Enum):
    """Ground-truth label of a case in the similarity index (``manifest.csv`` ``label``).

    ``UNKNOWN`` is a prior study with no known result (a hospital's unlabelled prior): listed as
    a similar prior, with no label.
    """

    COVID = CLASS_NAMES[POSITIVE_CLASS]
    NON_COVID = CLASS_NAMES[1 - POSITIVE_CLASS]
    UNKNOWN = "unknown"


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
        The case's known label, ``"covid"`` or ``"non_covid"``; ``"unknown"`` for a prior with no known label.
    similarity : float or None
        Cosine similarity of the two embeddings (-1..1; 1 = same direction), when known.
    study_date : str or None
        The similar study's date (DICOM DA, ``YYYYMMDD``), when known.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    distance: float
    label: KnownLabel | str
    similarity: float | None = None
    study_date: str | None = None

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
        if self.similarity is not None:
            if isinstance(self.similarity, bool) or not isinstance(self.similarity, (int, float)):
                raise TypeError('Argument "similarity" must be a number.')
            if not (math.isfinite(self.similarity) and -1.0 - 1e-6 <= self.similarity <= 1.0 + 1e-6):
                raise ValueError('Argument "similarity" must be in [-1, 1].')
        if self.study_date is not None and not _DICOM_DATE.fullmatch(self.study_date):
            raise ValueError('Argument "study_date" must be a DICOM date (YYYYMMDD).')

    def summary_line(self, rank: int) -> str:
        """The case as one line a radiologist reads, e.g. ``"1. Known label: COVID-19; similarity 0.93; ..."``."""
        label = KnownLabel(self.label)
        parts = [f"{rank}. Similar prior, no known label" if label is KnownLabel.UNKNOWN else f"{rank}. Known label: {_LABEL_WORDS[label]}"]
        if self.similarity is not None:
            parts.append(f"similarity {self.similarity:.2f}")
        parts.append(f"embedding distance {self.distance:.2f}")
        if self.study_date is not None:
            parts.append(f"study date {self.study_date[:4]}-{self.study_date[4:6]}-{self.study_date[6:]}")
        return "; ".join(parts)

    def as_evidence(self) -> Dataset:
        """The identifiers highdicom needs to list this image as evidence."""
        reference = Dataset()
        reference.StudyInstanceUID = self.study_instance_uid
        reference.SeriesInstanceUID = self.series_instance_uid
        reference.SOPInstanceUID = self.sop_instance_uid
        reference.SOPClassUID = self.sop_class_uid
        return reference


_LABEL_WORDS = {KnownLabel.COVID: "COVID-19", KnownLabel.NON_COVID: "no COVID-19"}


@dataclass(frozen=True)
class ImageRegion:
    """A closed outline on the source image that the finding was inferred from.

    Parameters
    ----------
    points : Sequence of (row, column)
        At least three vertices in the source's pixel grid, continuous coordinates with
        the top-left corner of the top-left pixel at (0, 0) (the DICOM SCOORD convention);
        the outline is closed by repeating the first point.
    description : str
        What the region is, for the summary text (e.g. "region of highest relevance").
    """

    points: tuple[tuple[float, float], ...]
    description: str

    def __post_init__(self) -> None:
        points = tuple((float(row), float(column)) for row, column in self.points)
        if len(points) < 3:
            raise ValueError('Argument "points" must have at least three vertices.')
        if not all(math.isfinite(v) and v >= 0 for point in points for v in point):
            raise ValueError('Argument "points" must be finite, non-negative coordinates.')
        object.__setattr__(self, "points", points)
        _check_text("description", self.description)

    def graphic_data(self) -> np.ndarray:
        """SCOORD Graphic Data: (column, row) pairs, closed (first point repeated at the end)."""
        columns_rows = np.array([(column, row) for row, column in self.points], dtype=np.float32)
        if not np.array_equal(columns_rows[0], columns_rows[-1]):
            columns_rows = np.vstack([columns_rows, columns_rows[:1]])
        return columns_rows

    def fits(self, rows: int, columns: int) -> bool:
        """Whether every vertex lies on an image of ``rows`` x ``columns`` pixels."""
        return all(row <= rows and column <= columns for row, column in self.points)


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
    source: Dataset, finding: Finding, algorithm: AlgorithmInfo, sop_instance_uid: str, region: ImageRegion | None
) -> MeasurementsAndQualitativeEvaluations:
    coordinates = None
    if region is not None:
        coordinates = [
            CoordinatesForMeasurement(
                graphic_type=GraphicTypeValues.POLYLINE,
                graphic_data=region.graphic_data(),
                source_image=SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
            )
        ]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            identifier="COVID-19 classification",
            uid=derived_uid("tracking", sop_instance_uid, "finding"),
        ),
        finding_type=codes.COVID_19,
        finding_sites=[FindingSite(anatomic_location=codes.LUNG)],
        algorithm_id=_algorithm_identification(
            algorithm, [f"threshold={finding.threshold:g}", f"calibration={finding.calibration}"]
        ),
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=[
            Measurement(
                name=codes.PROBABILITY, value=finding.probability_percent, unit=codes.PERCENT,
                referenced_coordinates=coordinates,
            ),
            Measurement(name=codes.THRESHOLD_VALUE, value=finding.threshold_percent, unit=codes.PERCENT),
        ],
        qualitative_evaluations=[
            QualitativeEvaluation(
                name=codes.COVID_19,
                value=codes.PRESENT if finding.is_present else codes.ABSENT,
            )
        ],
    )
    group[0].ContentSequence.append(
        TextContentItem(name=codes.COMMENT, value=finding.label(), relationship_type=RelationshipTypeValues.CONTAINS)
    )
    return group


def _qualitative_evaluations(
    finding: Finding, similar: Sequence[SimilarStudy], algorithm: AlgorithmInfo, region: ImageRegion | None
) -> ContainerContentItem:
    container = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence()
    container.ContentSequence.append(
        TextContentItem(
            name=codes.SUMMARY, value=finding.summary(algorithm, region), relationship_type=RelationshipTypeValues.CONTAINS
        )
    )
    container.ContentSequence.append(
        TextContentItem(
            name=codes.OPERATING_POINT, value=finding.operating_point_text(),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
    )
    for rank, case in enumerate(similar, start=1):
        line = TextContentItem(
            name=codes.SIMILAR_CASE, value=case.summary_line(rank), relationship_type=RelationshipTypeValues.CONTAINS
        )
        line.ContentSequence = ContentSequence(
            [
                ImageContentItem(
                    name=codes.SIMILAR_IMAGE,
                    referenced_sop_class_uid=case.sop_class_uid,
                    referenced_sop_instance_uid=case.sop_instance_uid,
                    relationship_type=RelationshipTypeValues.INFERRED_FROM,
                )
            ]
        )
        container.ContentSequence.append(line)
    return container


def _separate_containers(items: Sequence[Dataset]) -> None:
    """Make every container SEPARATE: its items are read one by one, each with its name."""
    for item in items:
        if item.get("ValueType") == "CONTAINER":
            item.ContinuityOfContent = "SEPARATE"
        if "ContentSequence" in item:
            _separate_containers(item.ContentSequence)


def build_report(
    source: Dataset,
    finding: Finding,
    similar: Sequence[SimilarStudy],
    algorithm: AlgorithmInfo,
    *,
    region: ImageRegion | None = None,
    companions: Sequence[Dataset] = (),
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
    region : ImageRegion or None
        The outline on the source the finding was inferred from (a SCOORD viewers draw).
        Without one the finding has no image coordinates, which OHIF v3 cannot display.
    companions : Sequence[pydicom.dataset.Dataset]
        Objects the node made with the report in the source's study (summary image,
        segmentation): listed as evidence (Current Requested Procedure Evidence).
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
    if region is not None:
        if not isinstance(region, ImageRegion):
            raise TypeError('Argument "region" must have type ImageRegion.')
        if "Rows" in source and not region.fits(int(source.Rows), int(source.Columns)):
            raise ValueError('Argument "region" must lie on the source image.')
    companions = list(companions)
    for companion in companions:
        if not isinstance(companion, Dataset) or companion.get("StudyInstanceUID") != source.StudyInstanceUID:
            raise ValueError('Argument "companions" must be data sets in the source\'s study.')
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
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PLAIN_CHEST_XRAY,
        imaging_measurements=[_finding_group(source, finding, algorithm, sop_instance_uid, region)],
    )
    report[0].ContentSequence.append(_qualitative_evaluations(finding, similar, algorithm, region))
    _separate_containers(report)
    return Comprehensive3DSR(
        evidence=[source, *companions, *(case.as_evidence() for case in similar)],
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

