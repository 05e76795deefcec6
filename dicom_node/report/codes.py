"""Every coded concept the node writes into its reports and derived images, named once.

Standard codes come from :data:`pydicom.sr.codedict.codes` where pydicom has them; the
few it lacks are spelled out with their source. Codes from a non-standard coding scheme
(``99IHE``, ``99CXRAI``) must be declared in the SR's Coding Scheme Identification
Sequence (PS3.3 C.12.1.1.2.1): :func:`non_standard_coding_schemes` makes the items, and
:data:`NON_STANDARD_SCHEME_DESIGNATORS` lets a test check that nothing is left out.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99CXRAI"  # "99" prefix: a private scheme (PS3.16 Section 8.2)
IHE_INTERIM_SCHEME = "99IHE"

# --- The finding --------------------------------------------------------------------
# SNOMED CT 840539006. Its FSN "Disease caused by severe acute respiratory syndrome
# coronavirus 2 (disorder)" is 65 characters without the tag, one more than Code Meaning
# (LO, 64) allows; "COVID-19" is its SNOMED CT preferred term (US and GB) and the display
# HL7 uses, and it is what a radiologist expects to read.
COVID_19 = Code("840539006", "SCT", "COVID-19")
PRESENT = codes.SCT.Present  # 52101004
ABSENT = codes.SCT.Absent  # 272519000
LUNG = codes.SCT.Lung  # 39607008: finding site; the classifier sees the segmented lungs

# --- Measurements ---------------------------------------------------------------------
# DCM 122157 "Probability": the model's calibrated output for the group's finding
# (COVID-19). A standard concept exists, so no private "probability of COVID-19" code.
PROBABILITY = codes.DCM.Probability
# DCM 122411 "Threshold Value": the operating point that turns the probability into the
# present/absent evaluation, recorded so that the evaluation can be audited.
THRESHOLD_VALUE = codes.DCM.ThresholdValue
# UCUM "1": a dimensionless number (embedding distances, similarities).
NO_UNITS = codes.UCUM.NoUnits
# UCUM "%": probabilities and thresholds are shown as percentages, the form radiologists
# read in commercial chest X-ray AI reports (and in OHIF's measurement panel).
PERCENT = codes.UCUM.Percent

# --- Text a person reads -----------------------------------------------------------------
# TID 1500 row "Qualitative Evaluations" (UMLS C0034375): the container for the summary
# and the similar cases, which carry no image coordinates (OHIF v3 requires coordinates
# on every group under "Imaging Measurements").
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
SUMMARY = codes.DCM.Summary  # 121111: the plain-language summary of the result
COMMENT = codes.DCM.Comment  # 121106: the finding's label, drawn by viewers beside its region

# --- Report, procedure and observer ------------------------------------------------------
# SNOMED CT 399208008 "Plain chest X-ray (procedure)": the procedure reported (TID 1500).
PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
DEVICE_OBSERVER = codes.cid270.Device  # DCM 121007, observer type of an algorithm

# --- IHE AI Results -------------------------------------------------------------------
# IHE RAD AIR, 6.5.3.1 "General Result Encoding Requirements": the Purpose of Reference
# of the Contributing Equipment item that describes the algorithm. IHE assigned an
# interim code pending a DICOM one, hence a "99" scheme that must be declared.
PROCESSING_ALGORITHM = Code("Newcode1", IHE_INTERIM_SCHEME, "Processing Algorithm")

# --- Image retrieval (no standard concepts exist) ---------------------------------------
# DICOM and SNOMED CT have no concept for "a prior case retrieved as similar by an
# embedding index", so these are private codes.
SIMILAR_CASE = Code("SIMCASE", PRIVATE_SCHEME, "Similar case")
# The image a similar-case line refers to (DCM 121112 "Source of Measurement" is for
# measurements; this line is a retrieval result).
SIMILAR_IMAGE = Code("SIMIMG", PRIVATE_SCHEME, "Similar image")
# The threshold's validation sensitivity and specificity and the probability's calibration:
# no standard concept names an operating point, so a private code.
OPERATING_POINT = Code("OPPOINT", PRIVATE_SCHEME, "Operating point")

# --- Key Object Selection of the similar images (TID 2010) ---------------------------------
# Document title, CID 7010: DCM 113000 "Of Interest", the generic title of IHE Key Image Notes
# and the one PACS viewers list as key images. CID 7010 has no "similar cases" concept; the
# purpose-specific titles name human workflows (For Teaching, For Conference, ...), and the
# rejection titles (113001, 113037-113039) would make a PACS hide the referenced images.
KEY_IMAGES_TITLE = codes.DCM.OfInterest
# TID 2010: the concept name highdicom gives each selected object (SCT 260753009 "Source"),
# without pydicom's "(attribute)" suffix.
SELECTED_OBJECT = Code("260753009", "SCT", "Source")
KEY_OBJECT_DESCRIPTION = codes.DCM.KeyObjectDescription  # 113012

# --- Derived images (summary Secondary Capture, lung Segmentation) -------------------------
# DCM 121322 (CID 7202): purpose of the Source Image Sequence item of a derived image.
SOURCE_IMAGE_FOR_PROCESSING = codes.DCM.SourceImageForImageProcessingOperation
# Segment of the lung segmentation: category SCT 91723000 "Anatomical Structure", the
# code CID 7150 lists today (SCT 123037004 "Body structure" is its older form), type Lung.
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
# DCM 123110 (CID 7162): algorithm family of the U-Net.
ARTIFICIAL_INTELLIGENCE = codes.DCM.ArtificialIntelligence

# Designator -> (name, responsible organization) of each non-standard scheme used above.
_NON_STANDARD_SCHEMES: dict[str, tuple[str, str]] = {
    PRIVATE_SCHEME: ("CXR AI node private codes", "CXR AI node project"),
    IHE_INTERIM_SCHEME: ("IHE interim codes", "IHE International"),
}
NON_STANDARD_SCHEME_DESIGNATORS = frozenset(_NON_STANDARD_SCHEMES)


def non_standard_coding_schemes(*designators: str) -> list[CodingSchemeIdentificationItem]:
    """Return new Coding Scheme Identification items for the non-standard schemes.

    ``designators`` names the schemes an object uses (default: all of them).

    New items on every call: they are data sets, and an item shared between two reports
    would be one mutable object inside both.
    """
    return [
        CodingSchemeIdentificationItem(
            designator=designator, name=name, responsible_organization=organization
        )
        for designator, (name, organization) in _NON_STANDARD_SCHEMES.items()
        if not designators or designator in designators
    ]
