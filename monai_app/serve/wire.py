"""The wire format between a node and the Serve deployment: ``.npy`` / ``.npz`` bodies over HTTP.

Numpy only (no Ray, no torch): the node's client and the deployment both import it. Arrays
travel as ``.npy`` (one array) or uncompressed ``.npz`` (several), read back with
``allow_pickle=False`` so an answer can never run code on the node. The model's identity
travels in response headers, so every answer says which bundle made it.

Routes under the application's prefix (``/<application>``):

- ``POST lung``: ``(B, 1, 256, 256)`` float32 U-Net inputs -> ``.npy`` logits, same shape;
- ``POST predict`` (``?relevance=1`` for Grad-CAM): ``(B, 3, 224, 224)`` classifier inputs ->
  ``.npz`` with ``probability`` ``(B,)``, ``embedding`` ``(B, 128)`` and, when asked, ``relevance``
  ``(B, 224, 224)``;
- ``GET identity``: the model's identity as JSON.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

NPY = "application/x-npy"
NPZ = "application/x-npz"
VERSION_HEADER = "x-cxr-bundle-version"
SHA256_HEADER = "x-cxr-weights-sha256"
CALIBRATION_HEADER = "x-cxr-calibration-sha256"
NAME_HEADER = "x-cxr-bundle-name"
REPLICA_HEADER = "x-cxr-replica"
"""Which replica answered: ``<host>:<pid>`` (for tests and logs; no patient data)."""


@dataclass(frozen=True)
class WireIdentity:
    """What an answer says about the model that made it (the parts of the bundle's ``ModelIdentity`` that decide a report)."""

    name: str
    version: str
    sha256: str
    calibration_sha256: str

    def headers(self) -> dict[str, str]:
        return {NAME_HEADER: self.name, VERSION_HEADER: self.version, SHA256_HEADER: self.sha256,
                CALIBRATION_HEADER: self.calibration_sha256}

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> WireIdentity:
        """The identity in an answer's headers (case-insensitive names); missing ones read ``""``.

        >>> i = WireIdentity("cxr", "0.8.0", "ab", "cd")
        >>> WireIdentity.from_headers({k.upper(): v for k, v in i.headers().items()}) == i
        True
        """
        lower = {k.lower(): v for k, v in headers.items()}
        return cls(lower.get(NAME_HEADER, ""), lower.get(VERSION_HEADER, ""), lower.get(SHA256_HEADER, ""),
                   lower.get(CALIBRATION_HEADER, ""))

    def differences(self, other: WireIdentity) -> list[str]:
        """What differs from ``other``, as ``field: ours != theirs`` (empty: the same model).

        >>> WireIdentity("cxr", "0.8.0", "ab", "cd").differences(WireIdentity("cxr", "0.9.0", "ab", "cd"))
        ['version: 0.8.0 != 0.9.0']
        """
        return [
            f"{name}: {mine} != {theirs}"
            for name, mine, theirs in (
                ("name", self.name, other.name), ("version", self.version, other.version),
                ("weights_sha256", self.sha256, other.sha256),
                ("calibration_sha256", self.calibration_sha256, other.calibration_sha256),
            )
            if mine != theirs
        ]


def encode_array(array: np.ndarray) -> bytes:
    """One array as ``.npy`` bytes.

    >>> decode_array(encode_array(np.arange(3, dtype=np.float32))).tolist()
    [0.0, 1.0, 2.0]
    """
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    """The array of ``.npy`` bytes (no pickles)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Named arrays as uncompressed ``.npz`` bytes (float maps barely compress; zlib would cost CPU for little).

    >>> sorted(decode_arrays(encode_arrays({"a": np.zeros(2), "b": np.ones(1)})))
    ['a', 'b']
    """
    buffer = io.BytesIO()
    contiguous: dict[str, Any] = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    np.savez(buffer, **contiguous)
    return buffer.getvalue()


def decode_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The named arrays of ``.npz`` bytes (no pickles)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
