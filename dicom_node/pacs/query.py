"""C-FIND SCU (Study Root): the frontal chest radiographs a PACS holds in a date range.

The query walks the three levels: studies with CR or DX in ``ModalitiesInStudy`` and a study
date in range (plus any other study keys the site gives), their CR/DX series, then each
series' images. An image is taken when the node would analyse it, judged from its query
identifiers by the node's own header rule (:func:`dicom_node.analyse.applicability.check_header`:
SOP class, body part, view position and view code), so what an index or a training set takes
is what the node would read. A series description that names a lateral view is skipped too:
some PACS do not return View Position in a C-FIND.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from dicom_node.analyse.applicability import RADIOGRAPH_MODALITIES, Applicability, check_header
from dicom_node.errors import NodeError
from dicom_node.pacs.peer import PacsPeer, associate, scu_ae

logger = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
"""C-FIND statuses that carry a match."""
_DATE = re.compile(r"\d{8}")
_LATERAL_DESCRIPTION = re.compile(r"\b(LAT|LATERAL|LL|RL)\b")


class QueryError(NodeError):
    """The PACS refused or broke off a C-FIND."""


@dataclass(frozen=True)
class StudyQuery:
    """What to ask the PACS for.

    Parameters
    ----------
    date_from, date_to : str or None
        Study date range (DICOM DA ``YYYYMMDD``, inclusive); ``None`` leaves that end open.
    modalities : Sequence of str
        Modalities of the studies and series to take (CR and DX by default).
    study_keys : Mapping of str to str
        More study-level matching keys by DICOM keyword (e.g. ``{"StudyDescription": "*THORAX*"}``).

    >>> StudyQuery("20200101", "20200131").date_range
    '20200101-20200131'
    >>> StudyQuery(study_keys={"Nonsense": "x"})
    Traceback (most recent call last):
    ...
    ValueError: Argument "study_keys" has an unknown DICOM keyword 'Nonsense'.
    """

    date_from: str | None = None
    date_to: str | None = None
    modalities: tuple[str, ...] = ("CR", "DX")
    study_keys: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("date_from", "date_to"):
            value = getattr(self, name)
            if value is not None and not _DATE.fullmatch(value):
                raise ValueError(f'Argument "{name}" must be a DICOM date (YYYYMMDD), got {value!r}.')
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError('Argument "date_from" must not be after "date_to".')
        modalities = tuple(m.upper() for m in self.modalities)
        if not modalities or not set(modalities) <= RADIOGRAPH_MODALITIES:
            raise ValueError(f'Argument "modalities" must be among {sorted(RADIOGRAPH_MODALITIES)}, got {self.modalities!r}.')
        object.__setattr__(self, "modalities", modalities)
        for keyword in self.study_keys:
            if tag_for_keyword(keyword) is None:
                raise ValueError(f'Argument "study_keys" has an unknown DICOM keyword {keyword!r}.')

    @property
    def date_range(self) -> str:
        """The StudyDate matching value (``""``: any date)."""
        if not (self.date_from or self.date_to):
            return ""
        return f"{self.date_from or ''}-{self.date_to or ''}"


@dataclass(frozen=True)
class FoundInstance:
    """One image the PACS holds that the node would analyse.

    ``patient_id`` stays in memory only: it becomes a salted key and is never logged or written.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    study_date: str
    accession_number: str
    patient_id: str


@dataclass
class QueryCounts:
    """What the query found and why images were left out (reason categories, no patient data)."""

    studies: int = 0
    series: int = 0
    images: int = 0
    taken: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        category = reason.split(":", 1)[0]
        self.skipped[category] = self.skipped.get(category, 0) + 1


def _identifier(level: str, keys: Mapping[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def image_verdict(series: Dataset, image: Dataset) -> Applicability:
    """Whether the node would analyse this image, from its series and image query identifiers.

    The image's own Body Part Examined wins over its series'; then the node's header rule.

    >>> s = Dataset(); s.Modality = "DX"; s.BodyPartExamined = "CHEST"; s.SeriesDescription = "Chest PA"
    >>> i = Dataset(); i.ViewPosition = "PA"; i.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    >>> image_verdict(s, i).applicable
    True
    >>> i.ViewPosition = "LL"; image_verdict(s, i).reason
    'lateral view: View Position LL'
    >>> i.ViewPosition = ""; s.SeriesDescription = "Thorax lat"; image_verdict(s, i).reason
    'lateral view: Series Description'
    """
    header = Dataset()
    header.Modality = _text(series, "Modality")
    header.BodyPartExamined = _text(image, "BodyPartExamined") or _text(series, "BodyPartExamined")
    for keyword in ("SOPClassUID", "ViewPosition"):
        if _text(image, keyword):
            setattr(header, keyword, _text(image, keyword))
    if "ViewCodeSequence" in image:
        header.ViewCodeSequence = image.ViewCodeSequence
    verdict = check_header(header)
    if verdict.applicable and _LATERAL_DESCRIPTION.search(_text(series, "SeriesDescription").upper()):
        return Applicability(False, "lateral view: Series Description")
    return verdict


class PacsQuery:
    """One C-FIND association to ``peer``, walking study -> series -> image.

    Use as a context manager; :meth:`instances` yields what the node would analyse.
    """

    def __init__(self, peer: PacsPeer, calling_ae_title: str, timeout: float = 30.0) -> None:
        self.peer = peer
        self.ae = scu_ae(calling_ae_title, timeout)
        self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self.assoc: Association | None = None
        self.counts = QueryCounts()

    def __enter__(self) -> PacsQuery:
        assoc = associate(self.ae, self.peer)
        if not assoc.is_established:
            raise QueryError(f"C-FIND association to {self.peer} was not accepted")
        self.assoc = assoc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None

    def find(self, identifier: Dataset) -> list[Dataset]:
        """The matches of one C-FIND request (all of them: a level's answers are small)."""
        if self.assoc is None:
            raise QueryError("PacsQuery must be used as a context manager")
        matches = []
        for status, match in self.assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if "Status" not in status:  # no answer: timed out or aborted
                raise QueryError(f"C-FIND to {self.peer} got no answer")
            code = int(status.Status)
            if code in PENDING:
                if match is not None:
                    matches.append(match)
            elif code != 0x0000:
                raise QueryError(f"C-FIND to {self.peer} failed with status 0x{code:04X}")
        return matches

    def studies(self, query: StudyQuery) -> list[Dataset]:
        keys = {
            "StudyInstanceUID": "", "StudyDate": query.date_range, "AccessionNumber": "", "PatientID": "",
            "ModalitiesInStudy": "\\".join(query.modalities), **query.study_keys,
        }
        found = self.find(_identifier("STUDY", keys))
        # A PACS may ignore ModalitiesInStudy or the date: the series level checks modality,
        # and the date is checked here.
        return [s for s in found if _in_range(_text(s, "StudyDate"), query) and _text(s, "StudyInstanceUID")]

    def series(self, study_uid: str, query: StudyQuery) -> list[Dataset]:
        keys = {
            "StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": "", "BodyPartExamined": "",
            "SeriesDescription": "",
        }
        return [s for s in self.find(_identifier("SERIES", keys)) if _text(s, "Modality").upper() in query.modalities]

    def images(self, study_uid: str, series_uid: str) -> list[Dataset]:
        keys = {
            "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": "", "SOPClassUID": "",
            "ViewPosition": "", "ImageLaterality": "", "BodyPartExamined": "",
        }
        return self.find(_identifier("IMAGE", keys))

    def instances(self, query: StudyQuery) -> Iterator[FoundInstance]:
        """The images of the query the node would analyse, study by study (sorted by Study Instance UID)."""
        for study in sorted(self.studies(query), key=lambda s: _text(s, "StudyInstanceUID")):
            self.counts.studies += 1
            study_uid = _text(study, "StudyInstanceUID")
            for series in sorted(self.series(study_uid, query), key=lambda s: _text(s, "SeriesInstanceUID")):
                self.counts.series += 1
                series_uid = _text(series, "SeriesInstanceUID")
                for image in sorted(self.images(study_uid, series_uid), key=lambda i: _text(i, "SOPInstanceUID")):
                    self.counts.images += 1
                    verdict = image_verdict(series, image)
                    if not verdict.applicable:
                        self.counts.skip(verdict.reason)
                        continue
                    self.counts.taken += 1
                    yield FoundInstance(
                        study_instance_uid=study_uid, series_instance_uid=series_uid,
                        sop_instance_uid=_text(image, "SOPInstanceUID"), sop_class_uid=_text(image, "SOPClassUID"),
                        study_date=_text(study, "StudyDate"), accession_number=_text(study, "AccessionNumber"),
                        patient_id=_text(study, "PatientID"),
                    )


def _in_range(date: str, query: StudyQuery) -> bool:
    if not (query.date_from or query.date_to):
        return True
    if not _DATE.fullmatch(date):
        return False
    return (query.date_from or "") <= date <= (query.date_to or "99999999")


def find_frontal_chest_instances(
    peer: PacsPeer, query: StudyQuery, calling_ae_title: str, timeout: float = 30.0
) -> tuple[list[FoundInstance], QueryCounts]:
    """Every image of ``query`` that the node would analyse, in a stable order, and the counts.

    Raises
    ------
    QueryError
        The PACS refused the association or a request.
    """
    with PacsQuery(peer, calling_ae_title, timeout) as pacs:
        found = list(pacs.instances(query))
    logger.info(
        "C-FIND %s: %d studies, %d series, %d images, %d taken, skipped %s",
        peer, pacs.counts.studies, pacs.counts.series, pacs.counts.images, pacs.counts.taken,
        pacs.counts.skipped or "none",
    )
    return found, pacs.counts


def unique_by_sop(instances: Sequence[FoundInstance]) -> list[FoundInstance]:
    """``instances`` without repeats of a SOP Instance UID (first kept)."""
    seen: set[str] = set()
    kept = []
    for instance in instances:
        if instance.sop_instance_uid not in seen:
            seen.add(instance.sop_instance_uid)
            kept.append(instance)
    return kept
