"""TLS configuration: [tls], TLS keys of [[destinations]], certificate subjects in [[allowed_callers]]."""

from __future__ import annotations

import tomllib

import pytest

from dicom_node.config import NodeConfig, config_from_mapping
from dicom_node.errors import ConfigError
from dicom_node.tls import parse_subject

TLS = '[tls]\nenabled = true\ncertificate = "node.pem"\nprivate_key = "node.key"\n'
DESTINATION = '[[destinations]]\nname = "main"\nae_title = "PACS"\nhost = "pacs.example"\nport = 2762\n'
MODALITY = '[[allowed_callers]]\nae_title = "MODALITY"\n'


def _config(toml: str) -> NodeConfig:
    return config_from_mapping(tomllib.loads(toml))


def test_tls_is_off_by_default_and_plaintext_stays_on_11112() -> None:
    config = NodeConfig()
    assert (config.tls_enabled, config.tls_port, config.tls_only, config.plaintext_port) == (False, 2762, False, 11112)


def test_tls_listener_beside_the_plaintext_port() -> None:
    config = _config(TLS + 'ca_file = "ca.pem"\nport = 2763\n')
    assert (config.tls_enabled, config.tls_port, config.plaintext_port) == (True, 2763, 11112)
    assert str(config.tls_ca_file) == "ca.pem"


def test_tls_only_switches_the_plaintext_port_off() -> None:
    assert _config(TLS + "only = true\n").plaintext_port is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[tls]\nenabled = true\n", r'"tls.certificate" is needed'),
        ('[tls]\nenabled = true\ncertificate = "c.pem"\n', r'"tls.private_key" is needed'),
        (TLS + "port = 11112\n", r'"tls.port" must differ from node.port'),
        (TLS + "port = 0\n", r'"tls.port" must be an integer in 1..65535'),
        ("[tls]\nonly = true\n", r'"tls.only" needs tls.enabled'),
        ('[tls]\nenabled = "yes"\n', r'"tls.enabled" must be true or false'),
        (TLS.replace('"node.pem"', "3"), r'"tls.certificate" must be a file path'),
        ("[tls]\nciphers = 'ALL'\n", r'unknown key "tls.ciphers"'),
        (MODALITY + 'certificate_subject = "CN=X"\n', r'"allowed_callers.certificate_subject" needs mutual TLS'),
        (TLS + MODALITY + 'certificate_subject = "CN=X"\n', r'"allowed_callers.certificate_subject" needs mutual TLS'),
        (TLS + 'ca_file = "ca.pem"\n' + MODALITY + 'certificate_subject = "NOPE"\n', r'"allowed_callers.certificate_subject"'),
        (TLS + 'ca_file = "ca.pem"\n' + MODALITY + "certificate_subject = 5\n", r'"allowed_callers.certificate_subject" must be'),
        (DESTINATION + 'tls = "true"\n', r'"pacs.main.tls" must be true or false'),
        (DESTINATION + 'tls_ca_file = "ca.pem"\n', r'"pacs.main.tls_ca_file" is set but "pacs.main.tls" is false'),
        (DESTINATION + 'tls = true\ntls_certificate = "c.pem"\n', r'"pacs.main.tls_private_key" is needed too'),
        (DESTINATION + 'tls = true\ntls_private_key = "c.key"\n', r'"pacs.main.tls_certificate" is needed too'),
        (DESTINATION + 'tls = true\ntls_server_name = "a b"\n', r'"pacs.main.tls_server_name" must be a host name'),
        (DESTINATION + "tls = true\ntls_check_hostname = 0\n", r'"pacs.main.tls_check_hostname" must be true or false'),
        (DESTINATION + "tls = true\ntls_ciphers = 1\n", r'unknown key "destinations.tls_ciphers"'),
    ],
)
def test_bad_tls_values_name_their_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(toml)


def test_destination_tls_keys() -> None:
    toml = DESTINATION + 'tls = true\ntls_ca_file = "ca.pem"\ntls_certificate = "c.pem"\ntls_private_key = "c.key"\n'
    destination = _config(toml).destinations[0]
    assert destination.tls and str(destination.tls_certificate) == "c.pem"
    assert destination.server_name == "pacs.example"  # checked against the host by default
    named = _config(DESTINATION + 'tls = true\ntls_server_name = "pacs.hospital.example"\n').destinations[0]
    assert named.server_name == "pacs.hospital.example" and named.tls_ca_file is None


def test_plaintext_destination_is_unchanged() -> None:
    destination = _config(DESTINATION).destinations[0]
    assert (destination.tls, destination.tls_ca_file, destination.tls_check_hostname) == (False, None, True)


MUTUAL = TLS + 'ca_file = "ca.pem"\n'
ROOM_1 = parse_subject("k", "CN=CR-ROOM-1,O=Test Hospital")
ROOM_2 = parse_subject("k", "CN=CR-ROOM-2,O=Test Hospital")
OTHER = parse_subject("k", "CN=OTHER-ROOM,O=Test Hospital")


def test_certificate_subject_admits_only_listed_subjects() -> None:
    config = _config(MUTUAL + MODALITY + 'certificate_subject = "O=Test Hospital, CN=CR-ROOM-1"\n')
    assert config.allows("MODALITY", "10.0.0.1", ROOM_1)
    assert config.refusal("MODALITY", "10.0.0.1", OTHER) == "certificate subject not allowed"
    assert config.refusal("MODALITY", "10.0.0.1", None) == "no client certificate"  # plaintext port
    assert config.refusal("STRANGER", "10.0.0.1", ROOM_1) == "calling AE title not listed"


def test_a_list_of_subjects_and_entries_sharing_an_ae_title() -> None:
    toml = (
        MUTUAL + MODALITY + 'certificate_subject = ["CN=CR-ROOM-1,O=Test Hospital", "CN=CR-ROOM-2,O=Test Hospital"]\n'
        + MODALITY + 'hosts = ["10.0.0.9"]\ncertificate_subject = "CN=OTHER-ROOM,O=Test Hospital"\n'
    )
    config = _config(toml)
    assert config.allows("MODALITY", "10.0.0.1", ROOM_1) and config.allows("MODALITY", "10.0.0.1", ROOM_2)
    assert config.allows("MODALITY", "10.0.0.9", OTHER)
    assert not config.allows("MODALITY", "10.0.0.1", OTHER)


def test_entries_without_subjects_accept_plaintext_as_before() -> None:
    config = _config(MODALITY + 'hosts = ["10.0.0.1"]\n')
    assert config.allows("MODALITY", "10.0.0.1")
    assert config.refusal("MODALITY", "10.0.0.2") == "host not allowed"
