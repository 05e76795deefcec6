"""Every transfer syntax the node accepts decodes to the same intensity space (corpus encoded with DCMTK)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from monai_app.data.dicom_image import read_dicom_image
from testkit.corpus import build_transfer_syntax_corpus
from testkit.shared_data import shared_data_dir


@pytest.fixture(scope="module")
def transfer_syntax_corpus(tmp_path_factory: pytest.TempPathFactory) -> list:
    return build_transfer_syntax_corpus(tmp_path_factory.mktemp("ts"), shared=shared_data_dir())


def test_every_transfer_syntax_the_node_accepts_lands_in_the_same_intensity_space(transfer_syntax_corpus: list) -> None:
    from dicom_node.receive.scp import TRANSFER_SYNTAXES

    assert {f.transfer_syntax_uid for f in transfer_syntax_corpus} == set(TRANSFER_SYNTAXES)
    references = {  # per SOP class: DX attributes may set another display than CR
        f.sop_class_uid: read_dicom_image(f.path)
        for f in transfer_syntax_corpus if f.transfer_syntax_uid == pydicom.uid.ExplicitVRLittleEndian
    }
    for f in transfer_syntax_corpus:
        image, reference = read_dicom_image(f.path), references[f.sop_class_uid]
        assert image.shape == reference.shape and image.dtype == np.float32, f.description
        lossy = f.transfer_syntax_uid in (
            pydicom.uid.JPEGBaseline8Bit, pydicom.uid.JPEGExtended12Bit, pydicom.uid.JPEGLSNearLossless,
            pydicom.uid.JPEG2000,
        )
        if lossy:  # the same picture; 8-bit baseline maps 0-255 linearly, so compare shape not level
            assert np.corrcoef(image.ravel(), reference.ravel())[0, 1] > 0.995, f.description
        else:
            assert np.abs(image - reference).max() < 1e-6, f.description
