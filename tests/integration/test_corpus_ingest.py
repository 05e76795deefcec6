"""The node receives every transfer-syntax corpus file in its own transfer syntax, unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
from pydicom.uid import ImplicitVRLittleEndian

from testkit.corpus import build_transfer_syntax_corpus
from testkit.peers import dcmtk, dcmtk_env


def _send(argv: list[str], port: int, files: list[Path]) -> None:
    result = subprocess.run([*argv, "-aet", "MODALITY", "-aec", "CXR_AI", "127.0.0.1", str(port),
                             *map(str, files)],
                            env=dcmtk_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_corpus_file_is_stored_in_its_own_transfer_syntax(
    start_node, shared_data: Path, tmp_path: Path
) -> None:
    files = build_transfer_syntax_corpus(tmp_path / "corpus", shared=shared_data)
    node = start_node()
    implicit = [f.path for f in files if f.transfer_syntax_uid == ImplicitVRLittleEndian]
    others = [f.path for f in files if f.transfer_syntax_uid != ImplicitVRLittleEndian]
    # dcmsend offers each file's own syntax; -dn stops it also offering a decompressed
    # alternative (which the node would pick). It always adds explicit VR LE for implicit
    # files, so those go with storescu -xi (implicit VR LE only).
    _send([dcmtk("dcmsend"), "-dn"], node.port, others)
    _send([dcmtk("storescu"), "-xi"], node.port, implicit)
    for f in files:
        sent = pydicom.dcmread(f.path)
        stored = pydicom.dcmread(node.spool / "instances" / f"{sent.SOPInstanceUID}.dcm")
        assert stored.file_meta.TransferSyntaxUID == f.transfer_syntax_uid, f.description
        assert stored.SOPClassUID == f.sop_class_uid
        assert stored.PixelData == sent.PixelData, f.description
