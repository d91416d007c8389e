from pathlib import Path

import pytest
from pydantic import ValidationError

from imageiq.errors import ConfigurationError
from imageiq.settings import Settings, load_settings


def test_defaults() -> None:
    s = Settings()
    assert s.models == ["imageiq-classifier:latest"]
    assert s.model_tag == "imageiq-classifier:latest" and s.model_name == "imageiq-classifier"
    assert s.max_batch_size >= 2 and s.max_latency_ms > 0
    assert s.max_image_bytes == 20 * 1024 * 1024
    assert s.max_image_pixels == 50_000_000
    assert s.default_top_k == 5
    assert s.max_batch_images == 32
    assert s.precision == "auto" and s.channels_last is True
    assert s.log_format == "json"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEIQ_MODELS", "imageiq-classifier:abc123, species")
    monkeypatch.setenv("IMAGEIQ_ACTIVE_MODEL", "species")
    monkeypatch.setenv("IMAGEIQ_MAX_BATCH_SIZE", "1")  # batching off
    monkeypatch.setenv("IMAGEIQ_DEVICE", "cpu")
    s = Settings()
    assert s.models == ["imageiq-classifier:abc123", "species:latest"]
    assert s.model_tag == "species:latest"
    assert s.max_batch_size == 1
    assert s.device == "cpu"
    monkeypatch.setenv("IMAGEIQ_MODELS", '["a:1", "b:2"]')
    monkeypatch.setenv("IMAGEIQ_ACTIVE_MODEL", "b:2")
    assert Settings().model_tag == "b:2"


def test_config_file_overrides_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "imageiq.yaml"
    config.write_text("models: [x:1, y]\nactive_model: y\nmax_batch_size: 4\n")
    monkeypatch.setenv("IMAGEIQ_MODELS", "z:9")
    monkeypatch.setenv("IMAGEIQ_CONFIG_FILE", str(config))
    s = Settings()
    assert s.models == ["x:1", "y:latest"] and s.model_tag == "y:latest"
    assert s.max_batch_size == 4
    config.write_text("modles: [x:1]\n")  # a typo is an error, not a silent default
    with pytest.raises(ValidationError, match="modles"):
        Settings()
    config.write_text("models: [x:1\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        Settings()
    monkeypatch.setenv("IMAGEIQ_CONFIG_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGEIQ_MAX_BATCH_SIZE", "0"),
        ("IMAGEIQ_MAX_BATCH_SIZE", "lots"),
        ("IMAGEIQ_DEVICE", "tpu"),
        ("IMAGEIQ_PRECISION", "int4"),
        ("IMAGEIQ_MODELS", "Not A Tag"),
        ("IMAGEIQ_MODELS", ""),
        ("IMAGEIQ_MODELS", "a:1,a:1"),
        ("IMAGEIQ_MODELS", "a,a:latest"),
        ("IMAGEIQ_ACTIVE_MODEL", "not-served"),
        ("IMAGEIQ_DEFAULT_TOP_K", "0"),
        ("IMAGEIQ_MODEL_VERSION", "abc123"),  # retired: refused with the way forward
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_retired_variables_name_their_replacement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEIQ_MODEL_NAME", "x")
    with pytest.raises(ValidationError, match="IMAGEIQ_MODELS"):
        Settings()


def test_settings_are_immutable() -> None:
    with pytest.raises(ValidationError):
        Settings().max_batch_size = 3  # type: ignore[misc]


def test_oidc_is_off_by_default_and_checked_when_on(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.oidc_issuer is None and s.oidc_algorithms == ["RS256"]
    assert s.oidc_scopes_claim == "scope" and s.oidc_subject_claim == "sub"
    assert s.oidc_classify_values == ["imageiq:classify"] and s.oidc_leeway_s == 60
    monkeypatch.setenv("IMAGEIQ_OIDC_ISSUER", "https://idp.example.com/realms/imageiq")
    monkeypatch.setenv("IMAGEIQ_OIDC_AUDIENCE", "imageiq")
    monkeypatch.setenv("IMAGEIQ_OIDC_ALGORITHMS", "RS256, ES256")
    monkeypatch.setenv("IMAGEIQ_OIDC_ADMIN_VALUES", "")  # no admin through tokens
    monkeypatch.setenv("IMAGEIQ_OIDC_LABEL_VALUES", '["imageiq:label", "ml-team"]')
    s = Settings()
    assert s.oidc_algorithms == ["RS256", "ES256"] and s.oidc_admin_values == []
    assert s.oidc_label_values == ["imageiq:label", "ml-team"]
    monkeypatch.setenv("IMAGEIQ_OIDC_ISSUER", "http://127.0.0.1:8080/realms/test")
    assert Settings().oidc_issuer == "http://127.0.0.1:8080/realms/test"  # loopback: http


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"oidc_issuer": "http://idp.example.com", "oidc_audience": "a"}, "must be https"),
        ({"oidc_issuer": "https://idp.example.com?x=1", "oidc_audience": "a"}, "plain"),
        ({"oidc_issuer": "idp.example.com", "oidc_audience": "a"}, "plain"),
        ({"oidc_issuer": "https://idp.example.com"}, "oidc_audience is required"),
        ({"oidc_audience": "a"}, "without oidc_issuer"),
        ({"oidc_jwks_url": "https://idp.example.com/keys"}, "without oidc_issuer"),
        (
            {"oidc_issuer": "https://i", "oidc_audience": "a", "oidc_jwks_url": "http://i/k"},
            "must be https",
        ),
        ({"oidc_issuer": "https://i", "oidc_audience": "a", "oidc_algorithms": "HS256"}, "RS256"),
        ({"oidc_issuer": "https://i", "oidc_audience": "a", "oidc_algorithms": "none"}, "RS256"),
        ({"oidc_issuer": "https://i", "oidc_audience": "a", "oidc_algorithms": ""}, "at least"),
        ({"oidc_leeway_s": 3600}, "less than or equal"),
        ({"oidc_jwks_min_refresh_s": 0}, "greater than or equal"),
        ({"oidc_scopes_claim": "has space"}, "pattern"),
    ],
)
def test_invalid_oidc_settings_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(**values)
