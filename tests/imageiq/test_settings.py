import pytest
from pydantic import ValidationError

from imageiq.settings import Settings


def test_defaults() -> None:
    s = Settings()
    assert s.model_tag == "imageiq-classifier:latest"
    assert s.max_batch_size >= 2 and s.max_latency_ms > 0
    assert s.max_image_bytes == 20 * 1024 * 1024
    assert s.max_image_pixels == 50_000_000
    assert s.default_top_k == 5


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEIQ_MODEL_VERSION", "abc123")
    monkeypatch.setenv("IMAGEIQ_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("IMAGEIQ_DEVICE", "cpu")
    s = Settings()
    assert s.model_tag == "imageiq-classifier:abc123"
    assert s.max_batch_size == 32
    assert s.device == "cpu"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGEIQ_MAX_BATCH_SIZE", "1"),  # BentoML batching needs at least 2
        ("IMAGEIQ_MAX_BATCH_SIZE", "lots"),
        ("IMAGEIQ_DEVICE", "tpu"),
        ("IMAGEIQ_MODEL_NAME", "Not A Tag"),
        ("IMAGEIQ_DEFAULT_TOP_K", "0"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_are_immutable() -> None:
    with pytest.raises(ValidationError):
        Settings().max_batch_size = 3  # type: ignore[misc]
