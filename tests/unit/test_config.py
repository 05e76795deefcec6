"""Configuration: defaults, TOML file, overrides, and refusal of bad values (the CLI: tests/integration/test_config_cli.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dicom_node.config import NodeConfig, config_from_mapping, default_config_text, load_config
from dicom_node.errors import ConfigError


def test_shipped_example_parses_to_the_embedded_defaults() -> None:
    assert config_from_mapping(tomllib.loads(default_config_text())) == NodeConfig()


def test_defaults_match_the_documented_values() -> None:
    config = NodeConfig()
    assert (config.ae_title, config.port, config.fsync) == ("CXR_AI", 11112, True)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nae_title = "FROM_FILE"\nport = 2000\n')
    config = load_config(path).with_overrides(port=3000, ae_title=None, spool=str(tmp_path / "s"))
    assert (config.ae_title, config.port, config.spool) == ("FROM_FILE", 3000, tmp_path / "s")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[node]\nport = 70000", r'"node.port" must be an integer in 1..65535'),
        ("[node]\nport = \"104\"", r'"node.port" must be an integer'),
        ("[node]\nae_title = \"MUCH_TOO_LONG_AE_TITLE\"", r'"node.ae_title" must be 1-16'),
        ("[node]\nae_title = \"BAD\\\\AE\"", r'"node.ae_title"'),
        ("[node]\nbind = \"not-an-ip\"", r'"node.bind" must be an IPv4 or IPv6 address'),
        ("[node]\nlog_level = \"LOUD\"", r'"node.log_level" must be one of'),
        ("[network]\nmax_associations = 0", r'"network.max_associations" must be an integer in 1..256'),
        ("[network]\nmax_associations_per_host = 0", r'"network.max_associations_per_host" must be an integer in 1..256'),
        ("[network]\nassociation_request_timeout = 0", r'"network.association_request_timeout" must be an integer in 1..3600'),
        ("[network]\nassociation_request_timeout = 2.5", r'"network.association_request_timeout" must be an integer'),
        ("[storage]\nfsync = \"yes\"", r'"storage.fsync" must be true or false'),
        ("[node]\nprot = 104", r'unknown key "node.prot"'),
        ("[nodes]\nport = 104", r'unknown table "nodes"'),
        ("[[allowed_callers]]\nae_title = \"DX1\"\nhosts = [\"10.0.0.300\"]", r'"allowed_callers.hosts"'),
        ("[inference]\ndevice = \"tpu\"", r'"inference.device" must be one of auto, cpu, cuda'),
        ("[inference]\nbatch_size = 0", r'"inference.batch_size" must be an integer in 1..256'),
        ("[inference]\nthreshold = 1.5", r'"inference.threshold" must be a number in 0..1'),
        ("[inference]\nsimilar_k = -1", r'"inference.similar_k" must be an integer in 0..50'),
        ("[inference]\nanalysis = 1", r'"inference.analysis" must be true or false'),
        ("[inference]\nbundle = 3", r'"inference.bundle" must be a directory path'),
        ("[results]\nkey_images = \"no\"", r'"results.key_images" must be true or false'),
        ("[inference]\nruntime = \"tensorrt\"", r'"inference.runtime" must be one of auto, pytorch, onnxruntime, openvino'),
    ],
)
def test_bad_values_are_refused_naming_the_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(tomllib.loads(toml))


def test_allow_list_matches_ae_title_and_optional_hosts() -> None:
    config = config_from_mapping(
        tomllib.loads(
            '[[allowed_callers]]\nae_title = "DX1"\n'
            '[[allowed_callers]]\nae_title = "DX2"\nhosts = ["127.0.0.1"]\n'
        )
    )
    assert config.allows("DX1", "10.1.2.3")
    assert config.allows("DX2", "127.0.0.1")
    assert not config.allows("DX2", "127.0.0.2")
    assert not config.allows("OTHER", "127.0.0.1")
    assert NodeConfig().allows("ANYONE", "127.0.0.1")


def test_inference_settings_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[inference]\ndevice = "cpu"\nbatch_size = 8\nthreshold = 0.4\nbundle = "/opt/bundle"\n')
    config = load_config(path)
    assert (config.device, config.batch_size, config.threshold, config.bundle) == ("cpu", 8, 0.4, Path("/opt/bundle"))
    assert config.analysis and config.similar_k == 4


def test_runtime_is_auto_by_default_and_each_named_one_parses() -> None:
    assert NodeConfig().runtime == "auto"
    for name in ("auto", "pytorch", "onnxruntime", "openvino"):
        assert config_from_mapping(tomllib.loads(f'[inference]\nruntime = "{name}"')).runtime == name


def test_key_images_are_on_by_default_and_can_be_switched_off() -> None:
    assert NodeConfig().key_images
    assert not config_from_mapping(tomllib.loads("[results]\nkey_images = false")).key_images


def test_max_instance_bytes_is_checked_by_name() -> None:
    import pytest

    from dicom_node.config import config_from_mapping
    from dicom_node.errors import ConfigError

    assert config_from_mapping({"node": {"max_instance_bytes": 64 * 1024**2}}).max_instance_bytes == 64 * 1024**2
    for bad in (0, 1024, "1G", 2**40, True):
        with pytest.raises(ConfigError, match="node.max_instance_bytes"):
            config_from_mapping({"node": {"max_instance_bytes": bad}})
