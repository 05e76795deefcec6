"""The Application Entity: which SOP classes and transfer syntaxes the node accepts.

Anything else is refused at association negotiation, the standard way: the presentation
context is rejected ("abstract syntax not supported" or "transfer syntaxes not supported").
"""

from __future__ import annotations

from pydicom import uid
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

from dicom_node.config import NodeConfig
from dicom_node.receive.server import ConnectionLimits

# The chest radiographs a portable X-ray machine sends, and Secondary Capture: converted and
# digitised X-rays (SIIM/RSNA exports, film digitisers) come as SC with Modality CR or DX, and
# refusing SC would fail a mixed send; the worker ends SC of other modalities as not analysed.
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

# Stored exactly as received: the node never transcodes, so it accepts what modalities
# commonly send, uncompressed first.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)


def configure_pynetdicom_logging() -> None:
    """Keep query identifiers (patient data) out of pynetdicom's logs."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"


def build_ae(config: NodeConfig) -> AE:
    """Build the node's AE with its timeouts, limits, allow-list and presentation contexts."""
    configure_pynetdicom_logging()
    ae = AE(ae_title=config.ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = [c.ae_title for c in config.allowed_callers]
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    ae.maximum_pdu_size = config.maximum_pdu_size
    # max_associations and the per-host limit are enforced by receive.server
    ae.add_supported_context(Verification, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    return ae


def connection_limits(config: NodeConfig) -> ConnectionLimits:
    """The connection policy of :mod:`dicom_node.receive.server` from the config."""
    return ConnectionLimits(
        association_request_timeout=config.association_request_timeout,
        network_timeout=config.network_timeout,
        max_associations=config.max_associations,
        max_associations_per_host=config.max_associations_per_host,
        maximum_pdu_size=config.maximum_pdu_size,
    )
