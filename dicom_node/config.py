"""Typed node configuration: TOML file + command-line overrides, validated at start-up.

Every value is checked when the config is built; a bad one raises
:class:`~dicom_node.errors.ConfigError` naming the key and the allowed range, so the node
never starts on a half-valid configuration.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from dicom_node.errors import ConfigError
from dicom_node.tls import Subject, parse_subject

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("auto", "pytorch", "onnxruntime", "openvino")
"""``inference.runtime``: what runs the networks (as :data:`monai_app.runtime.RUNTIMES`; not imported: no torch here)."""
BACKENDS = ("local", "ray")
"""``inference.backend``: the networks in the node's process, or on a Ray Serve deployment (docs/scale_out.md)."""
MIN_INSTANCE_BYTES = 1024**2
"""Smallest allowed ``node.max_instance_bytes`` (1 MiB: below it no radiograph fits)."""
MAX_INSTANCE_BYTES = 64 * 1024**3
"""Largest allowed ``node.max_instance_bytes`` (64 GiB)."""
MIN_AUDIT_FILE_BYTES = 1024**2
"""Smallest allowed ``audit.max_file_bytes`` (1 MiB); the largest is 64 GiB."""


def shipped_bundle() -> Path:
    """The model bundle this installation ships: package ``cxr_bundle`` (the source tree's
    ``bundle/`` folder, mapped by pyproject.toml), found without importing anything."""
    spec = importlib.util.find_spec("cxr_bundle")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "bundle"  # a source tree that was never installed


DEFAULT_BUNDLE = shipped_bundle()
"""The repository's MONAI bundle (beside this package)."""


def default_config_text() -> str:
    """Return the commented default configuration file shipped with the package."""
    return resources.files("dicom_node").joinpath("default_config.toml").read_text()


def check_ae_title(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f'"{key}" must be a string of 1-16 characters, got {value!r}')
    title = value.strip()
    if not 1 <= len(title) <= 16 or "\\" in title or not title.isascii() or not title.isprintable():
        raise ConfigError(
            f'"{key}" must be 1-16 printable ASCII characters without backslash, got {value!r}'
        )
    return title


def check_int(key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f'"{key}" must be an integer in {low}..{high}, got {value!r}')
    return value


def check_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f'"{key}" must be true or false, got {value!r}')
    return value


def check_directory_path(key: str, value: object) -> Path:
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ConfigError(f'"{key}" must be a directory path, got {value!r}')
    return Path(value)


def check_file_path(key: str, value: object) -> Path:
    """A non-empty path; whether the file exists and parses is checked when the node starts."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ConfigError(f'"{key}" must be a file path, got {value!r}')
    return Path(value)


def check_optional_file_path(key: str, value: object) -> Path | None:
    return None if value is None else check_file_path(key, value)


def check_number(key: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f'"{key}" must be a number in {low:g}..{high:g}, got {value!r}')
    return float(value)


def check_unit_interval(key: str, value: object) -> float:
    return check_number(key, value, 0.0, 1.0)


def check_ip(key: str, value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ConfigError(f'"{key}" must be an IPv4 or IPv6 address, got {value!r}') from None


# RFC 1123 host name labels, or an IPv4/IPv6 literal (checked loosely: the resolver has
# the last word, this only stops typos such as spaces or a URL in the config).
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_IP_LITERAL = re.compile(r"[0-9A-Fa-f:.]+")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_host(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f'"{key}" must be a host name or IP address, got {value!r}')
    host = value.strip()
    is_name = 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in host.split("."))
    if not (is_name or (host and _IP_LITERAL.fullmatch(host))):
        raise ConfigError(f'"{key}" must be a host name or IP address, got {value!r}')
    return host


@dataclass(frozen=True)
class PacsDestination:
    """A PACS the node sends its reports to.

    Parameters
    ----------
    name : str
        Name used in the config, in logs and in the outbox (letters, digits, ``_.-``).
    ae_title : str
        Called AE title of the PACS (1-16 printable ASCII characters, no backslash).
    host : str
        Host name or IP address.
    port : int
        TCP port, 1-65535.
    tls : bool
        Associate over DICOM TLS (TLS 1.2+); the PACS's certificate is always verified.
    tls_ca_file : pathlib.Path or None
        PEM CA certificates the PACS's certificate must chain to; ``None``: the system's.
    tls_certificate, tls_private_key : pathlib.Path or None
        The node's client certificate and unencrypted key, for a PACS that requires one.
    tls_server_name : str or None
        Name the PACS's certificate must carry; ``None``: ``host``.
    tls_check_hostname : bool
        Check that name (``false`` only for a PACS whose certificate names neither).

    Raises
    ------
    dicom_node.errors.ConfigError
        A value is invalid; the message names the key, e.g. ``pacs.main.port``.
    """

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_server_name: str | None = None
    tls_check_hostname: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(
                f'"pacs.name" must be 1-64 letters, digits or "_.-", got {self.name!r}'
            )
        prefix = f"pacs.{self.name}"
        object.__setattr__(self, "ae_title", check_ae_title(f"{prefix}.ae_title", self.ae_title))
        object.__setattr__(self, "host", check_host(f"{prefix}.host", self.host))
        check_int(f"{prefix}.port", self.port, 1, 65535)
        check_bool(f"{prefix}.tls", self.tls)
        check_bool(f"{prefix}.tls_check_hostname", self.tls_check_hostname)
        for key in ("tls_ca_file", "tls_certificate", "tls_private_key"):
            object.__setattr__(self, key, check_optional_file_path(f"{prefix}.{key}", getattr(self, key)))
        if self.tls_server_name is not None:
            object.__setattr__(self, "tls_server_name", check_host(f"{prefix}.tls_server_name", self.tls_server_name))
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            missing = "tls_private_key" if self.tls_private_key is None else "tls_certificate"
            raise ConfigError(f'"{prefix}.{missing}" is needed too: a client certificate comes with its key')
        used = [k for k in ("tls_ca_file", "tls_certificate", "tls_server_name") if getattr(self, k) is not None]
        if used and not self.tls:
            # A TLS setting on a plaintext destination is a forgotten `tls = true`, not a no-op.
            raise ConfigError(f'"{prefix}.{used[0]}" is set but "{prefix}.tls" is false')

    @property
    def server_name(self) -> str:
        """The name the PACS's certificate is checked against."""
        return self.tls_server_name or self.host


@dataclass(frozen=True)
class AllowedCaller:
    """A calling AE title the node accepts, optionally only from some IP addresses and,
    over mutual TLS, only with a client certificate whose subject is listed.

    ``certificate_subjects`` are parsed by :func:`dicom_node.tls.parse_subject`; with any,
    a caller without a verified client certificate (plaintext, or no ``tls.ca_file``) is
    refused.
    """

    ae_title: str
    hosts: tuple[str, ...] = ()
    certificate_subjects: tuple[Subject, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title("allowed_callers.ae_title", self.ae_title))
        hosts = tuple(check_ip("allowed_callers.hosts", h) for h in self.hosts)
        object.__setattr__(self, "hosts", hosts)
        subjects = tuple(
            s if isinstance(s, tuple) else parse_subject("allowed_callers.certificate_subject", s)
            for s in self.certificate_subjects
        )
        object.__setattr__(self, "certificate_subjects", subjects)

    def refusal(self, host: str, subject: Subject | None) -> str | None:
        """Why this entry does not admit a caller from ``host`` with ``subject``; ``None`` if it does."""
        if self.hosts and host not in self.hosts:
            return "host not allowed"
        if self.certificate_subjects and subject not in self.certificate_subjects:
            return "no client certificate" if subject is None else "certificate subject not allowed"
        return None


@dataclass(frozen=True)
class NodeConfig:
    """Everything the node needs to start; built by :func:`load_config`."""

    ae_title: str = "CXR_AI"
    port: int = 11112
    bind: str = "0.0.0.0"
    spool: Path = Path("spool")
    log_level: str = "INFO"
    max_instance_bytes: int = 1024**3
    acse_timeout: int = 30
    dimse_timeout: int = 60
    network_timeout: int = 60
    maximum_pdu_size: int = 131072
    max_associations: int = 16
    max_associations_per_host: int = 4
    association_request_timeout: int = 10
    shutdown_grace_seconds: int = 10
    fsync: bool = True
    allowed_callers: tuple[AllowedCaller, ...] = field(default_factory=tuple)
    destinations: tuple[PacsDestination, ...] = field(default_factory=tuple)
    max_attempts: int = 20
    max_age_hours: int = 72
    retry_initial_seconds: int = 10
    retry_max_seconds: int = 600
    analysis: bool = True
    bundle: Path = DEFAULT_BUNDLE
    device: str = "auto"
    batch_size: int = 4
    batch_wait_ms: int = 100
    overlap_reports: bool = True
    similar_k: int = 4
    threshold: float | None = None
    num_threads: int = 0
    runtime: str = "auto"
    backend: str = "local"
    serve_url: str = "http://127.0.0.1:8000"  # Ray Serve's HTTP proxy (backend = "ray")
    serve_application: str = "cxr"  # the Serve application's name and route prefix
    serve_timeout_seconds: float = 60.0
    backend_retry_max_seconds: float = 60.0  # backoff cap while the backend cannot answer
    accept_other_model: bool = False
    relevance_map: bool = True
    summary_image: bool = True
    lung_segmentation: bool = False
    key_images: bool = True
    retention_enabled: bool = True
    retention_instances_days: float = 30.0
    retention_results_days: float = 30.0
    retention_records_days: float = 365.0
    retention_high_water_percent: float = 90.0
    retention_interval_minutes: float = 60.0
    metrics_port: int = 0  # 0: no metrics endpoint
    metrics_bind: str = "127.0.0.1"
    tls_enabled: bool = False
    tls_port: int = 2762
    tls_only: bool = False
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_file: Path | None = None
    index_directory: Path | None = None  # None: the bundle's models/index
    index_grow: bool = False
    index_grow_directory: Path | None = None  # None: <spool>/grown_index
    index_rebuild_minutes: float = 60.0
    audit_enabled: bool = True
    audit_directory: Path | None = None  # None: <spool>/audit
    audit_max_file_bytes: int = 64 * 1024**2
    audit_keep_days: int = 0  # 0: keep every file

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title("node.ae_title", self.ae_title))
        check_int("node.port", self.port, 1, 65535)
        object.__setattr__(self, "bind", check_ip("node.bind", self.bind))
        object.__setattr__(self, "spool", check_directory_path("node.spool", self.spool))
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f'"node.log_level" must be one of {", ".join(LOG_LEVELS)}, got {self.log_level!r}')
        check_int("node.max_instance_bytes", self.max_instance_bytes, MIN_INSTANCE_BYTES, MAX_INSTANCE_BYTES)
        for key in ("acse_timeout", "dimse_timeout", "network_timeout"):
            check_int(f"network.{key}", getattr(self, key), 1, 3600)
        check_int("network.maximum_pdu_size", self.maximum_pdu_size, 0, 2**32 - 1)
        check_int("network.max_associations", self.max_associations, 1, 256)
        check_int("network.max_associations_per_host", self.max_associations_per_host, 1, 256)
        check_int("network.association_request_timeout", self.association_request_timeout, 1, 3600)
        check_int("network.shutdown_grace_seconds", self.shutdown_grace_seconds, 0, 600)
        check_bool("storage.fsync", self.fsync)
        check_int("delivery.max_attempts", self.max_attempts, 1, 10000)
        check_int("delivery.max_age_hours", self.max_age_hours, 1, 24 * 365)
        check_int("delivery.retry_initial_seconds", self.retry_initial_seconds, 1, 86400)
        check_int("delivery.retry_max_seconds", self.retry_max_seconds, self.retry_initial_seconds, 86400)
        check_bool("inference.analysis", self.analysis)
        object.__setattr__(self, "bundle", check_directory_path("inference.bundle", self.bundle))
        if self.device not in DEVICES:
            raise ConfigError(f'"inference.device" must be one of {", ".join(DEVICES)}, got {self.device!r}')
        check_int("inference.batch_size", self.batch_size, 1, 256)
        check_int("inference.batch_wait_ms", self.batch_wait_ms, 0, 60000)
        check_bool("inference.overlap_reports", self.overlap_reports)
        check_int("inference.similar_k", self.similar_k, 0, 50)
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_unit_interval("inference.threshold", self.threshold))
        check_int("inference.num_threads", self.num_threads, 0, 1024)
        if self.runtime not in RUNTIMES:
            raise ConfigError(f'"inference.runtime" must be one of {", ".join(RUNTIMES)}, got {self.runtime!r}')
        self._check_backend()
        for key in ("relevance_map", "summary_image", "lung_segmentation", "key_images"):
            check_bool(f"results.{key}", getattr(self, key))
        self._check_retention()
        check_int("metrics.port", self.metrics_port, 0, 65535)
        object.__setattr__(self, "metrics_bind", check_ip("metrics.bind", self.metrics_bind))
        if self.metrics_port and self.metrics_port == self.port and self.metrics_bind == self.bind:
            raise ConfigError(f'"metrics.port" must differ from node.port ({self.port})')
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ConfigError(f'"destinations.name" must be unique, got {names}')
        self._check_tls()
        self._check_audit()
        self._check_index()

    def _check_backend(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f'"inference.backend" must be one of {", ".join(BACKENDS)}, got {self.backend!r}')
        url = urllib.parse.urlsplit(self.serve_url) if isinstance(self.serve_url, str) else None
        if url is None or url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f'"inference.serve_url" must be an http(s) URL such as http://ray-head:8000, got {self.serve_url!r}')
        if not isinstance(self.serve_application, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.serve_application):
            raise ConfigError(f'"inference.serve_application" must be 1-64 letters, digits, "_" or "-", got {self.serve_application!r}')
        check_number("inference.serve_timeout_seconds", self.serve_timeout_seconds, 1, 3600)
        check_number("inference.backend_retry_max_seconds", self.backend_retry_max_seconds, 1, 86400)
        check_bool("inference.accept_other_model", self.accept_other_model)

    def _check_audit(self) -> None:
        check_bool("audit.enabled", self.audit_enabled)
        if self.audit_directory is not None and str(self.audit_directory) == "":
            object.__setattr__(self, "audit_directory", None)  # the TOML default: inside the spool
        elif self.audit_directory is not None:
            object.__setattr__(self, "audit_directory", check_directory_path("audit.directory", self.audit_directory))
        check_int("audit.max_file_bytes", self.audit_max_file_bytes, MIN_AUDIT_FILE_BYTES, MAX_INSTANCE_BYTES)
        check_int("audit.keep_days", self.audit_keep_days, 0, 36500)

    def _check_index(self) -> None:
        for key in ("directory", "grow_directory"):
            value = getattr(self, f"index_{key}")
            if value is not None and str(value) == "":
                object.__setattr__(self, f"index_{key}", None)  # the TOML default
            elif value is not None:
                object.__setattr__(self, f"index_{key}", check_directory_path(f"index.{key}", value))
        check_bool("index.grow", self.index_grow)
        object.__setattr__(self, "index_rebuild_minutes", check_number(
            "index.rebuild_minutes", self.index_rebuild_minutes, 0.01, 10080
        ))

    @property
    def index_path(self) -> Path:
        """The similar-study index the node starts from: ``index.directory``, or the bundle's."""
        return self.index_directory if self.index_directory is not None else self.bundle / "models" / "index"

    @property
    def grown_index_path(self) -> Path:
        """Where the index grown from traffic lives: ``index.grow_directory``, or ``grown_index`` in the spool."""
        return self.index_grow_directory if self.index_grow_directory is not None else self.spool / "grown_index"

    @property
    def audit_path(self) -> Path:
        """Where the audit files go: ``audit.directory``, or ``audit`` inside the spool."""
        return self.audit_directory if self.audit_directory is not None else self.spool / "audit"

    def _check_retention(self) -> None:
        check_bool("retention.enabled", self.retention_enabled)
        for kind in ("instances", "results", "records"):
            key = f"retention_{kind}_days"
            object.__setattr__(self, key, check_number(f"retention.{kind}_days", getattr(self, key), 0, 36500))
        if self.retention_records_days < max(self.retention_instances_days, self.retention_results_days):
            # A record is what says an instance was analysed and delivered: it outlives the files.
            raise ConfigError('"retention.records_days" must be at least instances_days and results_days')
        object.__setattr__(self, "retention_high_water_percent", check_number(
            "retention.high_water_percent", self.retention_high_water_percent, 0, 99
        ))
        object.__setattr__(self, "retention_interval_minutes", check_number(
            "retention.interval_minutes", self.retention_interval_minutes, 0.01, 10080
        ))

    def _check_tls(self) -> None:
        check_bool("tls.enabled", self.tls_enabled)
        check_int("tls.port", self.tls_port, 1, 65535)
        check_bool("tls.only", self.tls_only)
        for key in ("certificate", "private_key", "ca_file"):
            object.__setattr__(self, f"tls_{key}", check_optional_file_path(f"tls.{key}", getattr(self, f"tls_{key}")))
        if self.tls_enabled:
            for key in ("certificate", "private_key"):
                if getattr(self, f"tls_{key}") is None:
                    raise ConfigError(f'"tls.{key}" is needed with tls.enabled = true')
            if not self.tls_only and self.tls_port == self.port:
                raise ConfigError(
                    f'"tls.port" must differ from node.port ({self.port}), or set tls.only = true'
                )
        elif self.tls_only:
            raise ConfigError('"tls.only" needs tls.enabled = true (else the node would not listen at all)')
        if any(c.certificate_subjects for c in self.allowed_callers) and not (
            self.tls_enabled and self.tls_ca_file is not None
        ):
            # Without mutual TLS no caller has a verified certificate: the entry would lock it out.
            raise ConfigError(
                '"allowed_callers.certificate_subject" needs mutual TLS: tls.enabled = true and tls.ca_file'
            )

    @property
    def plaintext_port(self) -> int | None:
        """The port without TLS, ``None`` when ``tls.only`` switches it off."""
        return None if self.tls_only else self.port

    def with_overrides(self, **overrides: Any) -> NodeConfig:
        """Return a copy with the non-``None`` overrides applied (command-line flags)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def allows(self, ae_title: str, host: str, subject: Subject | None = None) -> bool:
        """Return whether a calling AE title from ``host`` (client certificate ``subject``) may associate."""
        return self.refusal(ae_title, host, subject) is None

    def refusal(self, ae_title: str, host: str, subject: Subject | None = None) -> str | None:
        """Why a caller is refused (``None``: it is allowed); any matching entry admits it."""
        if not self.allowed_callers:
            return None
        entries = [c for c in self.allowed_callers if c.ae_title == ae_title.strip()]
        if not entries:
            return "calling AE title not listed"
        reasons = [c.refusal(host, subject) for c in entries]
        return None if None in reasons else reasons[0]


# TOML table -> (key -> NodeConfig field). Anything else is a typo and stops start-up.
_SCHEMA: dict[str, dict[str, str]] = {
    "node": {k: k for k in ("ae_title", "port", "bind", "spool", "log_level", "max_instance_bytes")},
    "network": {
        k: k
        for k in (
            "acse_timeout",
            "dimse_timeout",
            "network_timeout",
            "maximum_pdu_size",
            "max_associations",
            "max_associations_per_host",
            "association_request_timeout",
            "shutdown_grace_seconds",
        )
    },
    "storage": {"fsync": "fsync"},
    "delivery": {k: k for k in ("max_attempts", "max_age_hours", "retry_initial_seconds", "retry_max_seconds")},
    "inference": {
        k: k for k in ("analysis", "bundle", "device", "batch_size", "batch_wait_ms", "overlap_reports", "similar_k",
                       "threshold", "num_threads",
                       "runtime", "backend", "serve_url", "serve_application", "serve_timeout_seconds",
                       "backend_retry_max_seconds", "accept_other_model")
    },
    "results": {k: k for k in ("relevance_map", "summary_image", "lung_segmentation", "key_images")},
    "retention": {
        k: f"retention_{k}"
        for k in ("enabled", "instances_days", "results_days", "records_days", "high_water_percent", "interval_minutes")
    },
    "metrics": {"port": "metrics_port", "bind": "metrics_bind"},
    "tls": {k: f"tls_{k}" for k in ("enabled", "port", "only", "certificate", "private_key", "ca_file")},
    "audit": {k: f"audit_{k}" for k in ("enabled", "directory", "max_file_bytes", "keep_days")},
    "index": {k: f"index_{k}" for k in ("directory", "grow", "grow_directory", "rebuild_minutes")},
}
_TABLE_ARRAYS = ("allowed_callers", "destinations")


def config_from_mapping(data: Mapping[str, Any]) -> NodeConfig:
    """Build a :class:`NodeConfig` from parsed TOML, rejecting unknown keys by name."""
    values: dict[str, Any] = {}
    for table, content in data.items():
        if table == "allowed_callers":
            values["allowed_callers"] = _parse_allowed_callers(content)
            continue
        if table == "destinations":
            values["destinations"] = _parse_destinations(content)
            continue
        if table not in _SCHEMA:
            raise ConfigError(f'unknown table "{table}" (known: {", ".join([*_SCHEMA, *_TABLE_ARRAYS])})')
        if not isinstance(content, Mapping):
            raise ConfigError(f'"{table}" must be a table')
        for key, value in content.items():
            if key not in _SCHEMA[table]:
                raise ConfigError(f'unknown key "{table}.{key}" (known: {", ".join(_SCHEMA[table])})')
            values[_SCHEMA[table][key]] = value
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
        unknown = set(entry) - {"ae_title", "hosts", "certificate_subject"}
        if unknown:
            raise ConfigError(
                f'unknown key "allowed_callers.{sorted(unknown)[0]}" (known: ae_title, hosts, certificate_subject)'
            )
        hosts = entry.get("hosts", [])
        if not isinstance(hosts, list):
            raise ConfigError('"allowed_callers.hosts" must be an array of IP addresses')
        subjects = entry.get("certificate_subject", [])
        if isinstance(subjects, str):
            subjects = [subjects]  # one subject, or an array of them
        if not isinstance(subjects, list):
            raise ConfigError('"allowed_callers.certificate_subject" must be a distinguished name or an array of them')
        callers.append(AllowedCaller(entry["ae_title"], tuple(hosts), tuple(subjects)))
    return tuple(callers)


_DESTINATION_TLS_KEYS = (
    "tls", "tls_ca_file", "tls_certificate", "tls_private_key", "tls_server_name", "tls_check_hostname",
)


def _parse_destinations(content: object) -> tuple[PacsDestination, ...]:
    if not isinstance(content, list):
        raise ConfigError('"destinations" must be an array of tables ([[destinations]])')
    destinations = []
    for entry in content:
        if not isinstance(entry, Mapping):
            raise ConfigError("each [[destinations]] entry must be a table")
        required = ("name", "ae_title", "host", "port")
        known = (*required, *_DESTINATION_TLS_KEYS)
        unknown = set(entry) - set(known)
        if unknown:
            raise ConfigError(f'unknown key "destinations.{sorted(unknown)[0]}" (known: {", ".join(known)})')
        missing = [k for k in required if k not in entry]
        if missing:
            raise ConfigError(f'[[destinations]] entry lacks "destinations.{missing[0]}"')
        tls = {k: entry[k] for k in _DESTINATION_TLS_KEYS if k in entry}
        destinations.append(PacsDestination(entry["name"], entry["ae_title"], entry["host"], entry["port"], **tls))
    return tuple(destinations)


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
