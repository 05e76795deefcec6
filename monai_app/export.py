"""Export trained weights compactly (fp16 state dict) and fingerprint them."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_half_precision(
    checkpoint: str | Path, output: str | Path, key: str | None = "model"
) -> str:
    """Save a checkpoint's network weights as an fp16 state dict.

    Parameters
    ----------
    checkpoint : str or pathlib.Path
        A ``CheckpointSaver`` file: a state dict, or a dict holding one under ``key``.
    output : str or pathlib.Path
        Target ``.pt`` file. Loading it into an fp32 network casts the weights back.
    key : str, optional
        Entry of the checkpoint holding the network's state dict.

    Returns
    -------
    str
        SHA-256 of the written file.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if key is not None and key in state and isinstance(state[key], dict):
        state = state[key]
    half = {
        name: tensor.half() if tensor.is_floating_point() else tensor
        for name, tensor in state.items()
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(half, output)
    digest = sha256_of(output)
    logger.info("exported %d tensors to %s (sha256 %s)", len(half), output.name, digest)
    return digest
