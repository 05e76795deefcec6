"""Typed node configuration: TOML file + command-line overrides, validated at start-up.

Every value is checked when the config is built; a bad one raises
:class:`~dicom_node.errors.ConfigError` naming the key and the allowed range, so the node
never starts on a half-valid configuration.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from dicom_node.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def default_config_text() -> str:
    """Return the commented default configuration file shipped with the package."""
    return resources.files("dicom_node").joinpath("default_config.toml").read_text()


def _check_ae_title(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f'"{key}" must be a string of 1-16 characters, got {value!r}')
    title = value.strip()
    if not 1 <= len(title) <= 16 or "\\" in title or not title.isascii() or not title.isprintable():
        raise ConfigError(
            f'"{key}" must be 1-16 printable ASCII characters without backslash, got {value!r}'
        )
    return title


def _check_int(key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f'"{key}" must be an integer in {low}..{high}, got {value!r}')
    return value


def _check_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f'"{key}" must be true or false, got {value!r}')
    return value


def _check_ip(key: str, value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ConfigError(f'"{key}" must be an IPv4 or IPv6 address, got {value!r}') from None


@dataclass(frozen=True)
class AllowedCaller:
    """A calling AE title the node accepts, optionally only from some IP addresses."""

    ae_title: str
    hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", _check_ae_title("allowed_callers.ae_title", self.ae_title))
        hosts = tuple(_check_ip("allowed_callers.hosts", h) for h in self.hosts)
        object.__setattr__(self, "hosts", hosts)


@dataclass(frozen=True)
class NodeConfig:
    """Everything the node needs to start; built by :func:`load_config`."""

    ae_title: str = "CXR_AI"
    port: int = 11112
    bind: str = "0.0.0.0"
    spool: Path = Path("spool")
    log_level: str = "INFO"
    acse_timeout: int = 30
    dimse_timeout: int = 60
    network_timeout: int = 60
    maximum_pdu_size: int = 131072
    max_associations: int = 16
    shutdown_grace_seconds: int = 10
    fsync: bool = True
    allowed_callers: tuple[AllowedCaller, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", _check_ae_title("node.ae_title", self.ae_title))
        _check_int("node.port", self.port, 1, 65535)
        object.__setattr__(self, "bind", _check_ip("node.bind", self.bind))
        if not str(self.spool).strip():
            raise ConfigError('"node.spool" must be a directory path, got an empty string')
        object.__setattr__(self, "spool", Path(self.spool))
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f'"node.log_level" must be one of {", ".join(LOG_LEVELS)}, got {self.log_level!r}')
        for key in ("acse_timeout", "dimse_timeout", "network_timeout"):
            _check_int(f"network.{key}", getattr(self, key), 1, 3600)
        _check_int("network.maximum_pdu_size", self.maximum_pdu_size, 0, 2**32 - 1)
        _check_int("network.max_associations", self.max_associations, 1, 256)
        _check_int("network.shutdown_grace_seconds", self.shutdown_grace_seconds, 0, 600)
        _check_bool("storage.fsync", self.fsync)

    def with_overrides(self, **overrides: Any) -> NodeConfig:
        """Return a copy with the non-``None`` overrides applied (command-line flags)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def allows(self, ae_title: str, host: str) -> bool:
        """Return whether a calling AE title from ``host`` may associate."""
        if not self.allowed_callers:
            return True
        for caller in self.allowed_callers:
            if caller.ae_title == ae_title.strip():
                return not caller.hosts or host in caller.hosts
        return False


# TOML table -> (key -> NodeConfig field). Anything else is a typo and stops start-up.
_SCHEMA: dict[str, dict[str, str]] = {
    "node": {k: k for k in ("ae_title", "port", "bind", "spool", "log_level")},
    "network": {
        k: k
        for k in (
            "acse_timeout",
            "dimse_timeout",
            "network_timeout",
            "maximum_pdu_size",
            "max_associations",
            "shutdown_grace_seconds",
        )
    },
    "storage": {"fsync": "fsync"},
}


def config_from_mapping(data: Mapping[str, Any]) -> NodeConfig:
    """Build a :class:`NodeConfig` from parsed TOML, rejecting unknown keys by name."""
    values: dict[str, Any] = {}
    for table, content in data.items():
        if table == "allowed_callers":
            values["allowed_callers"] = _parse_allowed_callers(content)
            continue
        if table not in _SCHEMA:
            raise ConfigError(f'unknown table "{table}" (known: {", ".join([*_SCHEMA, "allowed_callers"])})')
        if not isinstance(content, Mapping):
            raise ConfigError(f'"{table}" must be a table')
        for key, value in content.items():
            if key not in _SCHEMA[table]:
                raise ConfigError(f'unknown key "{table}.{key}" (known: {", ".join(_SCHEMA[table])})')
            values[_SCHEMA[table][key]] = value
    if "spool" in values:
        if not isinstance(values["spool"], str):
            raise ConfigError(f'"node.spool" must be a directory path, got {values["spool"]!r}')
        values["spool"] = Path(values["spool"])
    if "log_level" in values and isinstance(values["log_level"], str):
        values["log_level"] = values["log_level"].upper()
    return NodeConfig(**values)


def _parse_allowed_callers(content: object) -> tuple[AllowedCaller, ...]:
    if not isinstance(content, list):
        raise ConfigError('"allowed_callers" must be an array of tables ([[allowed_callers]])')
    callers = []
    for entry in content:
        if not isinstance(entry, Mapping) or "ae_title" not in entry:
            raise ConfigError('each [[allowed_callers]] entry needs "ae_title"')
        unknown = set(entry) - {"ae_title", "hosts"}
        if unknown:
            raise ConfigError(f'unknown key "allowed_callers.{sorted(unknown)[0]}" (known: ae_title, hosts)')
        hosts = entry.get("hosts", [])
        if not isinstance(hosts, list):
            raise ConfigError('"allowed_callers.hosts" must be an array of IP addresses')
        callers.append(AllowedCaller(entry["ae_title"], tuple(hosts)))
    return tuple(callers)


def load_config(path: Path | None) -> NodeConfig:
    """Read a TOML config file; ``None`` gives the embedded defaults."""
    if path is None:
        return NodeConfig()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return config_from_mapping(data)
