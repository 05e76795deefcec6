"""Derive test and benchmark DICOM files from the real images in the shared data.

Three corpora, all written to a caller-chosen directory and never committed:

* :func:`build_transfer_syntax_corpus`: one small real chest CR (fo-dicom
  ``CR-MONO1-10-chest.dcm``, 440 x 440) in every transfer syntax the node accepts,
  for each of the three SOP classes (CR, DX For Presentation, DX For Processing).
* :func:`build_cxr_sized_corpus`: DX For Presentation files of detector size
  (2500 x 2048, 12 bits stored, explicit VR LE, about 10 MB each), upscaled from the
  shared PNG/JPEG chest images, optionally mixed with the real chest DICOMs decoded.
* :func:`build_small_corpus`: the same at 256 x 256 (about 130 KB each).

Every file gets its own deterministic SOP Instance UID (derived from a fixed seed and the
file's role), so two runs produce byte-identical files. Patient identifiers are synthetic
(``CORPUS-...``); nothing from the source files' patient or study attributes is copied.

Run ``python -m scripts.dicom_corpus OUT_DIR [--cxr-sized N] [--small N]`` from the repo
root. The shared data folder is ``<repo>/../shared/data`` unless ``CXR_SHARED_DATA`` is set.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

SHARED_DATA_ENV = "CXR_SHARED_DATA"

CR_IMAGE_STORAGE = uid.UID("1.2.840.10008.5.1.4.1.1.1")
DX_FOR_PRESENTATION = uid.UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_FOR_PROCESSING = uid.UID("1.2.840.10008.5.1.4.1.1.1.1.1")
SOP_CLASSES: tuple[uid.UID, ...] = (CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING)
_SOP_SHORT: dict[str, str] = {CR_IMAGE_STORAGE: "cr", DX_FOR_PRESENTATION: "dxpres", DX_FOR_PROCESSING: "dxproc"}

# The small real chest radiograph every transfer-syntax file is made from (raw implicit
# VR LE dataset without preamble or file meta; 16 bits allocated, 10 stored, MONOCHROME1).
TS_SOURCE = "dicom/fo-dicom/CR-MONO1-10-chest.dcm"
# Real chest DICOMs of detector size that decode with pydicom 3.0.2 + pylibjpeg.
REAL_CXR_DICOMS: tuple[str, ...] = (
    "dicom/pylibjpeg-data/DX_chest_Canon_966_fixed.dcm",
    "dicom/pydicom-data/RG1_J2KI.dcm",
)

CXR_SHAPE = (2500, 2048)  # rows, columns: a 35 x 43 cm detector at ~0.17 mm
SMALL_SHAPE = (256, 256)
_UID_SEED = "cxr-ai-node/scripts/dicom_corpus/v1"


@dataclass(frozen=True)
class CorpusFile:
    """One generated DICOM file and what it is meant to exercise.

    Attributes
    ----------
    path : Path
        Where the file was written.
    sop_class_uid : str
        Its SOP Class UID (one of :data:`SOP_CLASSES`).
    transfer_syntax_uid : str
        The transfer syntax it is encoded in.
    description : str
        Human-readable summary (encoder and options); carries no patient data.
    """

    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str
    description: str


@dataclass(frozen=True)
class Encoding:
    """How to produce one transfer syntax from an explicit VR LE file.

    ``dcmtk`` is the DCMTK argv (program and options, input and output appended);
    ``None`` means pydicom's own encoder (``Dataset.compress``), lossy JPEG 2000 at
    ``j2k_ratio`` if that is set.
    """

    transfer_syntax: uid.UID
    dcmtk: tuple[str, ...] | None
    description: str
    j2k_ratio: float | None = None


# +un keeps the SOP Instance UID we assigned (DCMTK invents one for lossy output
# otherwise, which would break determinism). +sr scales lossy JPEG input linearly from
# the BitsStored range instead of stretching min..max pixel values; DCMTK updates
# BitsStored and the window to match. DCMTK 3.6.7 has no JPEG 2000 encoder: pydicom's
# (pylibjpeg-openjpeg) writes .90 and .91.
ENCODINGS: tuple[Encoding, ...] = (
    Encoding(uid.ImplicitVRLittleEndian, ("dcmconv", "+ti"), "dcmconv +ti"),
    Encoding(uid.ExplicitVRLittleEndian, ("dcmconv", "+te"), "dcmconv +te"),
    Encoding(uid.DeflatedExplicitVRLittleEndian, ("dcmconv", "+td"), "dcmconv +td"),
    Encoding(uid.JPEGBaseline8Bit, ("dcmcjpeg", "+eb", "+sr", "+un"),
             "dcmcjpeg +eb +sr (rescaled to 8 bits, lossy)"),
    Encoding(uid.JPEGExtended12Bit, ("dcmcjpeg", "+ee", "+sr", "+un"),
             "dcmcjpeg +ee +sr (rescaled to 12 bits, lossy)"),
    Encoding(uid.JPEGLossless, ("dcmcjpeg", "+el", "+un"), "dcmcjpeg +el (process 14, SV6)"),
    Encoding(uid.JPEGLosslessSV1, ("dcmcjpeg", "+e1", "+un"), "dcmcjpeg +e1 (process 14, SV1)"),
    Encoding(uid.JPEGLSLossless, ("dcmcjpls", "+el", "+un"), "dcmcjpls +el"),
    Encoding(uid.JPEGLSNearLossless, ("dcmcjpls", "+en", "+un"), "dcmcjpls +en (NEAR=2)"),
    Encoding(uid.JPEG2000Lossless, None, "pydicom compress (pylibjpeg-openjpeg)"),
    Encoding(uid.JPEG2000, None, "pydicom compress (pylibjpeg-openjpeg), ratio 10", 10.0),
    Encoding(uid.RLELossless, ("dcmcrle",), "dcmcrle"),
)
TRANSFER_SYNTAXES: tuple[uid.UID, ...] = tuple(e.transfer_syntax for e in ENCODINGS)


def shared_data_dir() -> Path:
    """Return the shared data folder.

    Returns
    -------
    Path
        ``$CXR_SHARED_DATA`` if set, else ``<repo>/../shared/data``.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def corpus_uid(*parts: object) -> uid.UID:
    """Return a UID that depends only on ``parts`` (stable across runs and machines).

    Parameters
    ----------
    *parts : object
        Anything identifying the UID's role, e.g. ``("cxr", 7, "sop")``.

    Returns
    -------
    pydicom.uid.UID
        A UID under pydicom's root, derived from a hash of ``parts``.
    """
    return uid.generate_uid(entropy_srcs=[_UID_SEED, *map(str, parts)])


@dataclass(frozen=True)
class InstanceIds:
    """Identifiers of one instance; all synthetic, none copied from a source file."""

    patient_id: str
    accession_number: str
    study_uid: uid.UID
    series_uid: uid.UID
    sop_uid: uid.UID
    instance_number: int


def instance_ids(corpus: str, study: int, instance: int) -> InstanceIds:
    """Build the synthetic identifiers of one instance.

    Parameters
    ----------
    corpus : str
        Corpus name; it separates the UIDs and patient IDs of different corpora.
    study : int
        Study number within the corpus (one patient per study).
    instance : int
        Instance number within the study, from 0.

    Returns
    -------
    InstanceIds
        Deterministic identifiers: same arguments, same UIDs.
    """
    return InstanceIds(
        patient_id=f"CORPUS-{corpus.upper()}-{study:04d}",
        accession_number=f"{corpus.upper()[:9]}{study:05d}",  # at most 16 characters
        study_uid=corpus_uid(corpus, study, "study"),
        series_uid=corpus_uid(corpus, study, "series"),
        sop_uid=corpus_uid(corpus, study, instance, "sop"),
        instance_number=instance + 1,
    )


def _code(value: str, meaning: str) -> Dataset:
    """Return a SNOMED CT code item."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def radiograph_dataset(
    pixels: np.ndarray,
    sop_class_uid: str,
    ids: InstanceIds,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    pixel_spacing_mm: float = 0.17,
) -> Dataset:
    """Wrap a 2-D unsigned pixel array into a plausible chest CR or DX instance.

    Parameters
    ----------
    pixels : numpy.ndarray
        2-D ``uint8`` or ``uint16`` array; values must fit in ``bits_stored`` bits.
    sop_class_uid : str
        One of :data:`SOP_CLASSES`; DX classes get the DX modules, CR the CR ones.
    ids : InstanceIds
        Patient, study, series and instance identifiers.
    bits_stored : int
        Bits Stored (High Bit is one less); Bits Allocated follows the array dtype.
    photometric : str
        ``MONOCHROME1`` or ``MONOCHROME2``.
    pixel_spacing_mm : float
        Imager pixel spacing in mm.

    Returns
    -------
    pydicom.dataset.Dataset
        A dataset with file meta for explicit VR little endian, ready to save.
    """
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8/uint16 array, got {pixels.dtype} {pixels.shape}")
    is_dx = sop_class_uid != CR_IMAGE_STORAGE
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = uid.UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = ids.sop_uid
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]  # every corpus image is resized or re-encoded
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, ids.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ids.accession_number
    ds.Modality = "DX" if is_dx else "CR"
    ds.Manufacturer = "CXR AI node test corpus"
    ds.ReferringPhysicianName = ""
    ds.PatientName = f"Corpus^{ids.patient_id}"
    ds.PatientID = ids.patient_id
    ds.PatientBirthDate = ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ids.study_uid, ids.series_uid
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, ids.instance_number
    ds.PatientOrientation = ["L", "F"] if is_dx else ""
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "U"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.ImagerPixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    if is_dx:
        _add_dx_modules(ds, sop_class_uid, pixels)
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def _add_dx_modules(ds: Dataset, sop_class_uid: str, pixels: np.ndarray) -> None:
    """Add the DX Series, Image, Detector, Anatomy and Positioning attributes."""
    for_presentation = sop_class_uid == DX_FOR_PRESENTATION
    ds.PresentationIntentType = "FOR PRESENTATION" if for_presentation else "FOR PROCESSING"
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
    ds.DetectorType = "SCINTILLATOR"
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = Sequence()
    ds.AnatomicRegionSequence = Sequence([_code("51185008", "Chest")])
    view = _code("399348003", "postero-anterior")
    view.ViewModifierCodeSequence = Sequence()
    ds.ViewCodeSequence = Sequence([view])
    inverse = ds.PhotometricInterpretation == "MONOCHROME1"
    ds.PresentationLUTShape = "INVERSE" if inverse else "IDENTITY"
    if for_presentation:
        # Required for FOR PRESENTATION: how to display it without a VOI LUT sequence.
        low, high = int(pixels.min()), int(pixels.max())
        ds.WindowCenter, ds.WindowWidth = (low + high) / 2, max(high - low, 1)


def _save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (preamble + file meta) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools (Nagle off, as for every DCMTK process here)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def encode(src: Path, dst: Path, encoding: Encoding) -> Path:
    """Write ``src`` (explicit VR LE) to ``dst`` in ``encoding``'s transfer syntax.

    Parameters
    ----------
    src : Path
        An explicit VR little endian DICOM file.
    dst : Path
        Output file.
    encoding : Encoding
        One of :data:`ENCODINGS`.

    Returns
    -------
    Path
        ``dst``.

    Raises
    ------
    RuntimeError
        If the DCMTK tool fails or writes another transfer syntax than intended.
    """
    if encoding.dcmtk is not None:
        # Full path: the venv's bin may shadow DCMTK program names.
        argv = [f"/usr/bin/{encoding.dcmtk[0]}", *encoding.dcmtk[1:], str(src), str(dst)]
        done = subprocess.run(argv, capture_output=True, text=True, env=_dcmtk_env())
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:-2])} failed: {done.stderr.strip()[-500:]}")
    else:
        ds = pydicom.dcmread(src)
        ratio = encoding.j2k_ratio
        # Keep the UID we assigned (pydicom would invent a random one).
        ds.compress(encoding.transfer_syntax, generate_instance_uid=False,
                    j2k_cr=[ratio] if ratio else None)
        if ratio:  # pydicom does not record lossy compression itself
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionMethod = "ISO_15444_1"
            ds.LossyImageCompressionRatio = ratio
        ds.save_as(dst, enforce_file_format=True)
    written = pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if written != encoding.transfer_syntax:
        raise RuntimeError(f"{dst.name}: wanted {encoding.transfer_syntax}, got {written}")
    return dst


def _read_ts_source(shared: Path) -> tuple[np.ndarray, str, int]:
    """Return the pixels, photometric interpretation and bits stored of the TS source."""
    ds = pydicom.dcmread(shared / TS_SOURCE, force=True)  # raw dataset, no file meta
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
    return ds.pixel_array, str(ds.PhotometricInterpretation), int(ds.BitsStored)


def build_transfer_syntax_corpus(
    out_dir: Path,
    sop_classes: tuple[str, ...] = SOP_CLASSES,
    shared: Path | None = None,
) -> list[CorpusFile]:
    """Write the real 440 x 440 chest CR in every accepted transfer syntax and SOP class.

    Parameters
    ----------
    out_dir : Path
        Output folder (created). Files are named ``<sop>_<transfer syntax UID>.dcm``.
    sop_classes : tuple of str
        SOP classes to produce; one file per SOP class and transfer syntax.
    shared : Path, optional
        Shared data folder; default :func:`shared_data_dir`.

    Returns
    -------
    list of CorpusFile
        One entry per file, in ``sop_classes`` x :data:`ENCODINGS` order. Every file is
        decoded with pydicom before it is returned.
    """
    pixels, photometric, bits_stored = _read_ts_source(shared or shared_data_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[CorpusFile] = []
    with tempfile.TemporaryDirectory(prefix="ts-corpus-") as tmp:
        for s, sop_class in enumerate(sop_classes):
            short = _SOP_SHORT[sop_class]
            for e, encoding in enumerate(ENCODINGS):
                ds = radiograph_dataset(pixels, sop_class, instance_ids("ts", s, e),
                                        bits_stored=bits_stored, photometric=photometric,
                                        pixel_spacing_mm=0.8)
                src = _save(ds, Path(tmp) / f"{short}_{e}.dcm")
                dst = out_dir / f"{short}_{encoding.transfer_syntax}.dcm"
                encode(src, dst, encoding)
                _ = pydicom.dcmread(dst).pixel_array  # fail here, not in a test, if it won't decode
                files.append(CorpusFile(dst, str(sop_class), str(encoding.transfer_syntax),
                                        f"{short} chest 440x440, {encoding.description}"))
    return files


def chest_image_paths(shared: Path | None = None) -> list[Path]:
    """List the shared chest PNG/JPEG images whose licence allows derivatives.

    Parameters
    ----------
    shared : Path, optional
        Shared data folder; default :func:`shared_data_dir`.

    Returns
    -------
    list of Path
        Sorted by ``image_path``; no-derivatives (``-ND``) images are left out because
        resizing them would make a derivative.
    """
    shared = shared or shared_data_dir()
    with open(shared / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [shared / r["image_path"] for r in sorted(rows, key=lambda r: r["image_path"])
            if "-ND" not in r["license"]]


def image_to_pixels(path: Path, shape: tuple[int, int], bits_stored: int = 12) -> np.ndarray:
    """Load an 8-bit image and fit it into ``shape`` as ``uint16`` with ``bits_stored`` bits.

    Parameters
    ----------
    path : Path
        PNG or JPEG file (any mode; converted to grayscale).
    shape : tuple of int
        ``(rows, columns)`` of the result.
    bits_stored : int
        The 0..255 range is mapped onto 0..2**bits_stored - 1.

    Returns
    -------
    numpy.ndarray
        ``uint16`` array of ``shape``; aspect ratio kept, borders filled with 0.
    """
    with Image.open(path) as img:
        # Resample in float so upscaling fills the 12-bit range instead of 256 levels.
        gray = img.convert("L").convert("F")
    fitted = ImageOps.pad(gray, (shape[1], shape[0]), Image.Resampling.BICUBIC, color=0)
    scaled = np.asarray(fitted) * ((2**bits_stored - 1) / 255.0)
    return np.clip(np.rint(scaled), 0, 2**bits_stored - 1).astype(np.uint16)


def _real_dicom_pixels(shared: Path) -> Iterator[tuple[np.ndarray, str, int]]:
    """Yield (pixels, photometric, bits stored) of each real detector-size chest DICOM."""
    for rel in REAL_CXR_DICOMS:
        ds = pydicom.dcmread(shared / rel)
        yield ds.pixel_array, str(ds.PhotometricInterpretation), int(ds.BitsStored)


def _build_image_corpus(
    out_dir: Path,
    n: int,
    corpus: str,
    shape: tuple[int, int],
    *,
    images_per_study: int,
    real_every: int,
    shared: Path | None,
) -> list[Path]:
    """Write ``n`` DX For Presentation files from the shared images (see callers)."""
    if n < 0 or images_per_study < 1 or real_every < 0:
        raise ValueError("n >= 0, images_per_study >= 1 and real_every >= 0 are required")
    shared = shared or shared_data_dir()
    sources = chest_image_paths(shared)
    real = list(_real_dicom_pixels(shared)) if real_every and n else []
    spacing = 0.17 * CXR_SHAPE[1] / shape[1]  # same field of view at every size
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in range(n):
        ids = instance_ids(corpus, i // images_per_study, i % images_per_study)
        if real and i % real_every == real_every - 1:
            pixels, photometric, bits = real[(i // real_every) % len(real)]
            ds = radiograph_dataset(pixels, DX_FOR_PRESENTATION, ids, bits_stored=bits,
                                    photometric=photometric, pixel_spacing_mm=0.15)
        else:
            # Beyond len(sources) images repeat, but every file keeps its own UIDs.
            pixels = image_to_pixels(sources[i % len(sources)], shape)
            ds = radiograph_dataset(pixels, DX_FOR_PRESENTATION, ids, bits_stored=12,
                                    pixel_spacing_mm=round(spacing, 4))
        paths.append(_save(ds, out_dir / f"{corpus}_{i:05d}.dcm"))
    return paths


def build_cxr_sized_corpus(
    out_dir: Path,
    n: int,
    *,
    images_per_study: int = 2,
    real_every: int = 0,
    shared: Path | None = None,
) -> list[Path]:
    """Write ``n`` detector-size DX For Presentation files (2500 x 2048, 12 bits, ~10 MB).

    Parameters
    ----------
    out_dir : Path
        Output folder (created); files are ``cxr_00000.dcm`` ...
    n : int
        Number of files; each has its own SOP Instance UID.
    images_per_study : int
        Consecutive files sharing one patient, study and series.
    real_every : int
        If > 0, every ``real_every``-th file is a real chest DICOM (Canon DX 2128 x 2000,
        Philips CR 1955 x 1841) decoded to explicit VR LE at its native size instead.
    shared : Path, optional
        Shared data folder; default :func:`shared_data_dir`.

    Returns
    -------
    list of Path
        The files, in order.
    """
    corpus = "cxr" if not real_every else f"cxrmix{real_every}"
    return _build_image_corpus(out_dir, n, corpus, CXR_SHAPE,
                               images_per_study=images_per_study,
                               real_every=real_every, shared=shared)


def build_small_corpus(
    out_dir: Path, n: int, *, images_per_study: int = 2, shared: Path | None = None
) -> list[Path]:
    """Write ``n`` small (256 x 256, 12 bits, ~130 KB) DX For Presentation files.

    Parameters
    ----------
    out_dir : Path
        Output folder (created); files are ``small_00000.dcm`` ...
    n : int
        Number of files; each has its own SOP Instance UID.
    images_per_study : int
        Consecutive files sharing one patient, study and series.
    shared : Path, optional
        Shared data folder; default :func:`shared_data_dir`.

    Returns
    -------
    list of Path
        The files, in order.
    """
    return _build_image_corpus(out_dir, n, "small", SMALL_SHAPE,
                               images_per_study=images_per_study, real_every=0, shared=shared)


def main(argv: list[str] | None = None) -> int:
    """Command line: build the transfer-syntax corpus and optionally the image corpora."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="output folder (created)")
    parser.add_argument("--cxr-sized", type=int, default=0, metavar="N",
                        help="also write N detector-size files to OUT_DIR/cxr")
    parser.add_argument("--real-every", type=int, default=0, metavar="K",
                        help="with --cxr-sized: every K-th file is a decoded real chest DICOM")
    parser.add_argument("--small", type=int, default=0, metavar="N",
                        help="also write N 256x256 files to OUT_DIR/small")
    args = parser.parse_args(argv)
    if shutil.which("/usr/bin/dcmconv") is None:
        parser.error("DCMTK not found at /usr/bin (apt-get install dcmtk)")
    for f in build_transfer_syntax_corpus(args.out_dir / "transfer_syntaxes"):
        print(f"{f.path}  {f.transfer_syntax_uid}  {f.description}")
    if args.cxr_sized:
        paths = build_cxr_sized_corpus(args.out_dir / "cxr", args.cxr_sized,
                                       real_every=args.real_every)
        print(f"{len(paths)} detector-size files in {args.out_dir / 'cxr'}")
    if args.small:
        paths = build_small_corpus(args.out_dir / "small", args.small)
        print(f"{len(paths)} small files in {args.out_dir / 'small'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
