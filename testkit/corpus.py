"""The generated DICOM corpora, for tests that use them rather than test them.

The builders live in ``scripts/dicom_corpus.py`` (also the benchmarks' corpus CLI);
tests of that script import it directly, every other test takes the corpora from here.
Building the transfer-syntax corpus runs DCMTK encoders (``dcmconv``, ``dcmcjpeg``, ...).
"""

from __future__ import annotations

from scripts.dicom_corpus import (
    CorpusFile,
    build_cxr_sized_corpus,
    build_small_corpus,
    build_transfer_syntax_corpus,
)

__all__ = ["CorpusFile", "build_cxr_sized_corpus", "build_small_corpus", "build_transfer_syntax_corpus"]
