"""The model registry: ImageIQ models in the BentoML model store.

A registered model is ``<name>:<version>`` (default name ``imageiq-classifier``) holding
``weights.pt`` (a state dict; no pickled code), any files registered with it (the data set's
snapshot ``dataset.jsonl``, the held-out evaluation ``evaluation.json``:
:func:`read_model_file`) and, in the store's metadata, a
:class:`ModelCard`: architecture, labels, heads, preprocessing, metrics, dataset fingerprint
and snapshot, training config and creation time. Loading rebuilds the network from the card.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bentoml
import torch
import torchvision
from bentoml.exceptions import BentoMLException
from bentoml.exceptions import NotFound as BentoNotFound
from pydantic import BaseModel, ConfigDict, Field

import imageiq
from imageiq.architectures import ImageIQNet, build_model
from imageiq.errors import ConfigurationError, ModelNotFound
from imageiq.preprocessing import PreprocessConfig

DEFAULT_MODEL_NAME = "imageiq-classifier"
WEIGHTS_FILE = "weights.pt"
# The held-out evaluation training registers with a model (training/report.py,
# held_out_evaluation): confusion matrix, per-class scores, reliability bins and ECE.
EVALUATION_FILE = "evaluation.json"
CARD_VERSION = 1
# Names a file registered with a model may have: plain names in the model's directory, never
# a path, and never one of the files the store or the weights already use.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RESERVED_FILES = frozenset({WEIGHTS_FILE, "model.yaml", "custom_objects.pkl"})


class ModelCard(BaseModel):
    """Everything needed to rebuild, serve and judge a model; stored as store metadata."""

    model_config = ConfigDict(extra="ignore")

    card_version: int = CARD_VERSION
    architecture: str
    labels: list[str] = Field(min_length=2)
    # Attribute heads: head name -> its values, e.g. {"shiny": ["no", "yes"]}.
    heads: dict[str, list[str]] = Field(default_factory=dict)
    preprocessing: PreprocessConfig
    metrics: dict[str, float] = Field(default_factory=dict)
    # Temperature per head, fitted on the held-out split: served scores are
    # softmax(logits / T), so a 0.9 means right about 9 times in 10. Absent: 1.
    temperature: dict[str, float] = Field(default_factory=dict)
    # Exported files in the model's directory (imageiq export): format -> file and check.
    exports: dict[str, dict[str, Any]] = Field(default_factory=dict)
    dataset_fingerprint: str | None = None
    # The data set's snapshot, a file registered with the model: {"file", "images", "sha256"}
    # (training/sources.py, snapshot_entry); what `--data snapshot:<tag>` rebuilds.
    dataset_snapshot: dict[str, Any] | None = None
    training_config: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    software: dict[str, str] = Field(
        default_factory=lambda: {
            "imageiq": imageiq.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        }
    )


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    card: ModelCard
    path: str

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"


def register_model(
    net: ImageIQNet,
    card: ModelCard,
    *,
    name: str = DEFAULT_MODEL_NAME,
    files: Mapping[str, bytes] | None = None,
) -> RegisteredModel:
    """Write ``net``'s weights, ``card`` and ``files`` (name -> content, next to the weights)
    to the store as a new version of ``name``. A card that names a snapshot file must come
    with that file, and its sha256 must match: a card never describes what is not there."""
    _check_matches(net, card)
    files = dict(files or {})
    for filename in files:
        _check_file_name(filename)
    _check_snapshot(card, files)
    metadata = _drop_none(card.model_dump(mode="json"))
    with bentoml.models.create(
        name,
        labels={"architecture": card.architecture, "framework": "imageiq"},
        metadata=metadata,
    ) as stored:
        torch.save(net.state_dict(), stored.path_of(WEIGHTS_FILE))
        for filename, content in files.items():
            Path(stored.path_of(filename)).write_bytes(content)
    return get_model(str(stored.tag))  # its path in the store, not the staging directory


def read_model_file(model: RegisteredModel, filename: str) -> bytes:
    """A file registered with ``model`` (``files`` of :func:`register_model`)."""
    _check_file_name(filename)
    try:
        return (Path(model.path) / filename).read_bytes()
    except FileNotFoundError as e:
        raise ModelNotFound(
            f"{model.tag} has no file {filename!r}: it was registered without it.",
            details={"model": model.tag, "file": filename},
        ) from e


def get_model(tag: str) -> RegisteredModel:
    """Resolve ``name:version`` (or ``name:latest``) to a registered ImageIQ model."""
    try:
        stored = bentoml.models.get(tag)
    except BentoNotFound as e:
        raise ModelNotFound(
            f"No model {tag!r} in the model store. Train one with `imageiq train` "
            "(or `make demo-model`), and list them with `imageiq models list`."
        ) from e
    except (ValueError, BentoMLException) as e:  # malformed tag (BentoML: "Invalid Tag")
        raise ModelNotFound(f"Invalid model tag {tag!r}: {e}") from e
    return _from_stored(stored)


def load_model(
    tag: str, *, device: str | torch.device = "cpu"
) -> tuple[RegisteredModel, ImageIQNet]:
    """The registered model and its network in eval mode on ``device``."""
    model = get_model(tag)
    card = model.card
    net = build_model(
        arch=card.architecture,
        num_classes=len(card.labels),
        heads={name: len(values) for name, values in card.heads.items()},
    )
    state = torch.load(f"{model.path}/{WEIGHTS_FILE}", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return model, net.eval().to(device)


def list_models(name: str = DEFAULT_MODEL_NAME) -> list[RegisteredModel]:
    """Registered versions of ``name``, newest first."""
    try:
        stored = bentoml.models.list(name)
    except BentoNotFound:
        return []
    stored = sorted(stored, key=lambda m: m.info.creation_time, reverse=True)
    return [_from_stored(m) for m in stored]


def _from_stored(stored: bentoml.Model) -> RegisteredModel:
    try:
        card = ModelCard.model_validate(stored.info.metadata)
    except ValueError as e:
        raise ConfigurationError(
            f"{stored.tag} is in the model store but is not an ImageIQ model: {e}"
        ) from e
    return RegisteredModel(stored.tag.name, str(stored.tag.version), card, stored.path)


def _drop_none(value: Any) -> Any:
    """BentoML metadata holds basic types but not None; an absent key reads back as None."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


def _check_file_name(filename: str) -> None:
    if not _FILE_NAME.fullmatch(filename) or filename in _RESERVED_FILES:
        raise ConfigurationError(
            f"{filename!r} cannot be a model's file: use a plain name of letters, digits, "
            f"'.', '_' and '-' (at most 128), other than {', '.join(sorted(_RESERVED_FILES))}."
        )


def _check_snapshot(card: ModelCard, files: Mapping[str, bytes]) -> None:
    snapshot = card.dataset_snapshot
    if snapshot is None:
        return
    filename = snapshot.get("file")
    if not isinstance(filename, str) or filename not in files:
        raise ConfigurationError(
            f"The card's dataset_snapshot names the file {filename!r}, which is not among the "
            f"files registered with the model ({', '.join(sorted(files)) or 'none'})."
        )
    expected = snapshot.get("sha256")
    if expected is not None and hashlib.sha256(files[filename]).hexdigest() != expected:
        raise ConfigurationError(
            f"The card's dataset_snapshot sha256 does not match the file {filename!r}."
        )


def _check_matches(net: ImageIQNet, card: ModelCard) -> None:
    expected = {"label": len(card.labels), **{k: len(v) for k, v in card.heads.items()}}
    actual = {name: head.out_features for name, head in net.heads.items()}
    if expected != actual:
        raise ConfigurationError(f"Card heads {expected} do not match the network's {actual}.")
