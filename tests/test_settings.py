"""Operator settings: archive defaults, environment overrides, and refusing bad values at load."""

import dataclasses
import ipaddress

import pytest

from objdetect.settings import EXACT_PATH, SPEED_SWITCHES, Settings

pytestmark = pytest.mark.unit


def test_defaults_are_the_documented_ones():
    settings = Settings.load({}, {})
    assert settings.max_pixels == 40_000_000
    assert settings.max_download_bytes == 20 * 1024 * 1024
    assert settings.max_redirects == 3
    assert settings.url_allowed_hosts == () and settings.api_keys == ()


def test_environment_overrides_the_archive_config():
    settings = Settings.load(
        {"max_pixels": 1000, "url_allowed_hosts": ["a.example.com"], "default_threshold": 0.3},
        {"OBJDETECT_MAX_PIXELS": "60000000", "OBJDETECT_API_KEYS": "k1, k2", "UNRELATED": "x"},
    )
    assert settings.max_pixels == 60_000_000
    assert settings.url_allowed_hosts == ("a.example.com",)
    assert settings.api_keys == ("k1", "k2")
    assert settings.default_threshold == 0.3


def test_switches_take_the_usual_spellings():
    assert Settings.load({"jpeg_draft": False}, {}).jpeg_draft is False
    overridden = Settings.load({}, {"OBJDETECT_PRE_RESIZE": "off", "OBJDETECT_JPEG_DRAFT": "0"})
    assert overridden.pre_resize is False and overridden.jpeg_draft is False
    assert Settings.load({"cuda_fp16": False}, {"OBJDETECT_CUDA_FP16": "TRUE"}).cuda_fp16 is True


def test_api_keys_never_appear_in_logs():
    assert "s3cret" not in repr(Settings.load({}, {"OBJDETECT_API_KEYS": "s3cret"}))


@pytest.mark.parametrize("config, env, words", [
    ({"max_pixel": 5}, {}, "unknown handler setting 'max_pixel'"),
    ({}, {"OBJDETECT_MAX_PIXELS": "lots"}, "max_pixels must be int"),
    ({"max_pixels": 2.5}, {}, "max_pixels must be int"),
    ({}, {"OBJDETECT_MAX_PIXELS": "0"}, "max_pixels must be positive"),
    ({"default_threshold": 3}, {}, "default_threshold must be within 0..1"),
    ({}, {"OBJDETECT_URL_TRUSTED_NETWORKS": "10.0.0.0/8,not-a-network"}, "url_trusted_networks"),
    ({"fetch_read_timeout_s": True}, {}, "fetch_read_timeout_s must be float"),
    ({}, {"OBJDETECT_JPEG_DRAFT": "maybe"}, "jpeg_draft must be bool"),
])
def test_bad_values_stop_the_load_and_name_the_setting(config, env, words):
    with pytest.raises(ValueError, match=words):
        Settings.load(config, env)


def test_every_speed_switch_is_a_setting_that_defaults_on_and_the_exact_path_turns_all_off():
    """The exact path (the tests' and the benchmark's) on any device: every switch off, eager torch."""
    settings = Settings.load({}, {})
    assert set(SPEED_SWITCHES) <= {f.name for f in dataclasses.fields(Settings)}
    assert {"cuda_fp16", "cuda_jpeg_decode"} <= set(SPEED_SWITCHES)
    assert all(getattr(settings, name) is True for name in SPEED_SWITCHES)
    assert (settings.runtime, settings.cpu_precision) == ("openvino", "bf16")
    exact = Settings.load(EXACT_PATH, {})
    assert not any(getattr(exact, name) for name in SPEED_SWITCHES) and exact.runtime == "torch"


@pytest.mark.parametrize("name, value, words", [
    ("runtime", "tensorrt", "runtime must be one of torch, openvino"),
    ("cpu_precision", "int8", "cpu_precision must be one of fp32, bf16"),
    ("runtime", 3, "runtime must be str"),
])
def test_the_runtime_and_precision_are_one_of_their_choices(name, value, words):
    with pytest.raises(ValueError, match=words):
        Settings.load({name: value}, {})


def test_the_runtime_and_precision_take_any_case():
    settings = Settings.load({}, {"OBJDETECT_RUNTIME": " Torch ", "OBJDETECT_CPU_PRECISION": "FP32"})
    assert (settings.runtime, settings.cpu_precision) == ("torch", "fp32")


def test_the_fetch_policy_carries_the_url_settings_only():
    settings = Settings.load({"url_trusted_networks": ["10.20.0.0/16"], "max_redirects": 1},
                             {"OBJDETECT_API_KEYS": "s3cret", "OBJDETECT_URL_ALLOWED_HOSTS": "*.example.com"})
    policy = settings.fetch_policy()
    assert policy.trusted_networks == (ipaddress.ip_network("10.20.0.0/16"),)
    assert policy.allowed_hosts == ("*.example.com",) and policy.max_redirects == 1
    assert policy.max_bytes == settings.max_download_bytes
    assert "s3cret" not in repr(policy)
