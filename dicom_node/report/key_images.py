"""List the similar prior images in a DICOM Key Object Selection document (pure, no I/O).

PACS viewers that show key images open a KOS's references with one click, so the report's
similar cases (:class:`~dicom_node.report.sr.SimilarStudy`, nearest first) are also sent as
a Key Object Selection Document (PS3.3 A.35.4, content TID 2010) in the source's study, in
a series of its own::

    CONTAINER Of Interest                                  (DCM 113000, CID 7010)
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID/Name/Manufacturer/Model
      CONTAINS TEXT    Key Object Description = "Similar prior images found by ... nearest first"
      CONTAINS IMAGE   Source = <similar image 1>          (nearest first)
      CONTAINS IMAGE   Source = <similar image 2> ...

Decisions, with their reasons:

* Title "Of Interest": see :data:`dicom_node.report.codes.KEY_IMAGES_TITLE`.
* The source image is not selected. The document is "the similar prior images" and its
  description says so; selecting the source as a key image of its own study would make
  viewers flag the radiograph itself as AI-selected, and the SR already references it.
* The Current Requested Procedure Evidence Sequence lists exactly the selected images,
  grouped by study and series, since the Key Object Document Module defines it as the
  instances the content references (whatever their study). highdicom 0.28's
  :class:`~highdicom.ko.KeyObjectSelectionDocument` takes patient and study from its first
  evidence item, keeps only that study's instances there and refuses references to more
  than one other study, so the document is assembled here from
  highdicom's :class:`~highdicom.base.SOPClass`, its SR content items and its evidence
  grouping. It is returned as that data set: ``KeyObjectSelectionDocument.from_dataset``
  reads it back (the tests do), but in the node it would deep-copy the document and parse
  its content into objects nobody reads, half the time of building it.
* No Identical Documents Sequence, although the Key Object Document Module asks for one
  when a KOS references more than one study (a copy of the KOS in each referenced study,
  C.17.6.2.1): the similar images are other patients' studies, and a copy there would
  put this patient's identity into their studies. This is a documented deviation
  (docs/conformance_statement.md).

Like the other result objects it copies the patient and study attributes of the source
(through :func:`~dicom_node.report.source.checked_source`; nothing from the similar
images but their UIDs), carries the algorithm as Contributing Equipment (IHE AIR), and
has deterministic UIDs: a re-analysis with the same algorithm and index rebuilds the
same document, while another list of images gets another SOP Instance UID.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import (
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    ObserverContext,
    RelationshipTypeValues,
    TextContentItem,
)
from highdicom.sr.utils import collect_evidence
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, KeyObjectSelectionDocumentStorage

from dicom_node.report import codes
from dicom_node.report.source import checked_source, source_instance_number
from dicom_node.report.sr import DISCLAIMER, AlgorithmInfo, ProcessingAlgorithmEquipment, SimilarStudy, _check_text
from dicom_node.report.uids import derived_uid

DEFAULT_SERIES_NUMBER = 9003  # after the report (9000), summary image (9001) and segmentation (9002)
DEFAULT_SERIES_DESCRIPTION = "AI chest X-ray: similar prior images"
TEMPLATE_ID = "2010"  # TID 2010 Key Object Selection


def key_images_series_instance_uid(source: Dataset, algorithm: AlgorithmInfo) -> UID:
    """Series Instance UID of the similar-image selections one algorithm makes for one source series."""
    return derived_uid(
        "ko-series", str(source.SeriesInstanceUID), algorithm.name, algorithm.version,
        algorithm.weights_sha256,
    )


def key_images_sop_instance_uid(source: Dataset, similar: Sequence[SimilarStudy], algorithm: AlgorithmInfo) -> UID:
    """SOP Instance UID of the selection of ``similar`` for ``source``: the same inputs give the same UID.

    The selected images are part of the name: a rebuilt index that finds other images gives
    a new document rather than a second, different document with the first one's UID.
    """
    return derived_uid(
        "ko-instance", str(source.SOPInstanceUID), algorithm.name, algorithm.version,
        algorithm.weights_sha256, *(case.sop_instance_uid for case in similar),
    )


def key_object_description(algorithm: AlgorithmInfo) -> str:
    """The Key Object Description viewers show beside the key images."""
    return (
        f"Similar prior images found by {algorithm.name} {algorithm.version} "
        f"({DISCLAIMER[0].lower()}{DISCLAIMER[1:].rstrip('.')}); nearest first"
    )


def build_similar_images_selection(
    source: Dataset,
    similar: Sequence[SimilarStudy],
    algorithm: AlgorithmInfo,
    *,
    series_number: int = DEFAULT_SERIES_NUMBER,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    institution_name: str | None = None,
) -> hd.SOPClass:
    """Build the Key Object Selection Document listing the images similar to ``source``.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The analysed image (pixel data not needed). The document is in its study; patient
        and study attributes are copied from it through
        :func:`~dicom_node.report.source.checked_source`.
    similar : Sequence[SimilarStudy]
        The similar images from the index, nearest first (at least one): selected in this
        order, each with its Study, Series and SOP Instance UIDs and SOP Class.
    algorithm : AlgorithmInfo
        The algorithm that found them (observer, Manufacturer, model, software versions,
        Contributing Equipment, UIDs).
    series_number : int
        Series Number of the key-image series.
    series_description : str
        Series Description shown in the PACS worklist.
    institution_name : str or None
        Institution Name of the equipment that created the document.

    Returns
    -------
    highdicom.SOPClass
        A Key Object Selection Document (read with
        :meth:`highdicom.ko.KeyObjectSelectionDocument.from_dataset` for its content): modality
        KO, Explicit VR Little Endian, one IMAGE item per similar image.

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        An argument has a wrong value (no similar image, the same image twice, the source
        itself among them, the source lacks its UIDs).
    """
    source = checked_source(source)
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError('Argument "algorithm" must have type AlgorithmInfo.')
    similar = list(similar)
    if not all(isinstance(case, SimilarStudy) for case in similar):
        raise TypeError('Items of argument "similar" must have type SimilarStudy.')
    if not similar:
        raise ValueError('Argument "similar" must list at least one image (TID 2010 selects 1-n).')
    selected = [case.sop_instance_uid for case in similar]
    if len(set(selected)) != len(selected) or source.SOPInstanceUID in selected:
        raise ValueError('Argument "similar" must list distinct images other than the source.')
    _check_text("series_description", series_description)
    series_instance_uid = key_images_series_instance_uid(source, algorithm)
    if series_instance_uid == source.SeriesInstanceUID:
        raise ValueError("The key-image series must differ from the source series.")

    content = _selection_content(similar, algorithm)
    sop_instance_uid = key_images_sop_instance_uid(source, similar, algorithm)
    document = hd.SOPClass(
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=KeyObjectSelectionDocumentStorage,
        instance_number=source_instance_number(source),
        modality="KO",
        manufacturer=algorithm.manufacturer,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_id=source.PatientID,
        patient_name=source.PatientName,
        patient_birth_date=source.PatientBirthDate,
        patient_sex=source.PatientSex,
        accession_number=source.AccessionNumber,
        study_id=source.StudyID,
        study_date=source.StudyDate,
        study_time=source.StudyTime,
        referring_physician_name=source.ReferringPhysicianName,
        # The Contributing Equipment purpose is IHE's interim code: its scheme is declared.
        coding_schemes=codes.non_standard_coding_schemes(codes.IHE_INTERIM_SCHEME),
        series_description=series_description,
        manufacturer_model_name=algorithm.manufacturer_model_name,
        software_versions=algorithm.version,
        institution_name=institution_name,
        specific_character_set=source.get("SpecificCharacterSet"),
    )
    document.ContributingEquipmentSequence = [ProcessingAlgorithmEquipment(algorithm)]
    for element in content[0]:
        document.add(element)
    same_study, other_studies = collect_evidence(
        [case.as_evidence() for case in similar], content[0], study_instance_uid=source.StudyInstanceUID,
    )
    document.CurrentRequestedProcedureEvidenceSequence = [*same_study, *other_studies]
    document.ReferencedPerformedProcedureStepSequence = []  # Type 2 (Key Object Document Series)
    return document


def _selection_content(similar: Sequence[SimilarStudy], algorithm: AlgorithmInfo) -> hd.ko.KeyObjectSelection:
    """TID 2010 content: title, the algorithm as device observer, description, one IMAGE per image."""
    root = ContainerContentItem(name=codes.KEY_IMAGES_TITLE, template_id=TEMPLATE_ID)
    root.ContentSequence = ContentSequence()
    observer = ObserverContext(
        observer_type=codes.DEVICE_OBSERVER,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid,
            name=algorithm.name,
            manufacturer_name=algorithm.manufacturer,
            model_name=algorithm.manufacturer_model_name,
        ),
    )
    root.ContentSequence.extend(observer)
    root.ContentSequence.append(
        TextContentItem(
            name=codes.KEY_OBJECT_DESCRIPTION, value=key_object_description(algorithm),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
    )
    # highdicom's KeyObjectSelection makes an IMAGE item only for data sets with Rows and
    # Columns; the index knows UIDs only, and every reference-set entry is an image.
    for case in similar:
        root.ContentSequence.append(
            ImageContentItem(
                name=codes.SELECTED_OBJECT,
                referenced_sop_class_uid=case.sop_class_uid,
                referenced_sop_instance_uid=case.sop_instance_uid,
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        )
    # Read back as TID 2010: checks the root container and its template identifier.
    return hd.ko.KeyObjectSelection.from_sequence([root], is_root=True)
