"""Weights files: export them compactly, read any of their forms, fingerprint them.

Two compact forms are written: an fp16 state dict (``torch.save``), and, for weights that
ship in the repository, an int8 form: each weight matrix or convolution kernel quantised
symmetrically per output channel (int8 values and one fp32 scale per channel), the other
tensors fp16, the whole ``torch.save`` output compressed with xz. :func:`read_weights`
reads either, and checkpoints holding the state dict under ``"model"``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import lzma
from collections.abc import Mapping
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
    return save_half_precision(read_weights(checkpoint, key), output)


def save_half_precision(state: Mapping[str, torch.Tensor], output: str | Path) -> str:
    """Save a state dict with its floating tensors in fp16; return the file's SHA-256."""
    half = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(half, output)
    digest = sha256_of(output)
    logger.info("exported %d tensors to %s (sha256 %s)", len(half), output.name, digest)
    return digest


XZ_MAGIC = b"\xfd7zXZ\x00"
"""First bytes of an xz stream: the int8 form of :func:`export_int8`."""


def quantize_int8(state: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """The int8 form of a state dict (before compression); see the module docstring.

    Floating tensors of two or more dimensions become ``{"int8": q, "scale": s}`` with
    ``q * s`` (``s`` broadcast over the output channel, dimension 0) close to the tensor;
    other floating tensors become fp16, the rest stay as they are.
    """
    out: dict[str, object] = {}
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.ndim >= 2:
            values = tensor.detach().float()
            scale = values.abs().amax(dim=tuple(range(1, values.ndim)), keepdim=True).clamp_min(1e-12) / 127.0
            out[name] = {"int8": torch.round(values / scale).to(torch.int8), "scale": scale}
        else:
            out[name] = tensor.half() if tensor.is_floating_point() else tensor
    return out


def dequantize_int8(packed: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The state dict (fp32 for quantised tensors) of an int8 form from :func:`quantize_int8`."""
    state: dict[str, torch.Tensor] = {}
    for name, value in packed.items():
        state[name] = value["int8"].float() * value["scale"] if isinstance(value, dict) else torch.as_tensor(value)
    return state


def read_weights(path: str | Path, key: str | None = "model") -> dict[str, torch.Tensor]:
    """The state dict in a weights file: fp32/fp16 ``torch.save`` file, checkpoint or int8 form.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    key : str, optional
        Entry of a checkpoint that holds the state dict (used when present).
    """
    raw = Path(path).read_bytes()
    if raw.startswith(XZ_MAGIC):
        packed = torch.load(io.BytesIO(lzma.decompress(raw)), map_location="cpu", weights_only=True)
        return dequantize_int8(packed)
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if key is not None and key in state and isinstance(state[key], dict):
        state = state[key]
    return state


def export_int8(weights: str | Path, output: str | Path) -> str:
    """Write the int8 form of a weights file (any form :func:`read_weights` reads).

    Returns
    -------
    str
        SHA-256 of the written file.
    """
    buffer = io.BytesIO()
    torch.save(quantize_int8(read_weights(weights)), buffer)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    digest = sha256_of(output)
    logger.info("exported the int8 form of %s to %s (%d bytes, sha256 %s)",
                Path(weights).name, output.name, output.stat().st_size, digest)
    return digest
