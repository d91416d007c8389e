"""The shared model repository: registered versions every replica can fetch.

Each replica serves from its own BentoML model store (baked into its image, or its
``BENTOML_HOME``). A version trained elsewhere (``imageiq retrain`` in a CronJob pod) is
published here, as the archive ``bentoml models export`` writes, and a replica asked to
serve a version its store lacks (an activation, a canary) imports it from here first. The
repository is the object store the service already uses: ``<s3_model_prefix><name>/
<version>.bentomodel`` in the bucket, or ``data_dir/models/`` without one.
"""

from __future__ import annotations

import logging
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bentoml

from imageiq.errors import ModelNotFound, StorageUnavailable
from imageiq.registry import RegisteredModel, get_model
from imageiq.settings import MODEL_TAG, TAG_PART, Settings

log = logging.getLogger(__name__)
_MISSING = {"404", "NoSuchKey", "NotFound"}


class ModelRepository:
    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_model_prefix
        self.root = settings.data_dir / "models"
        self._endpoint = settings.s3_endpoint_url
        self._client: Any = None

    def where(self, tag: str) -> str:
        name, version = _split(tag)
        if self.bucket:
            return f"s3://{self.bucket}/{self.prefix}{name}/{version}.bentomodel"
        return str(self.root / name / f"{version}.bentomodel")

    def publish(self, tag: str) -> str:
        """Copy ``tag`` from the local store to the repository; returns where it went."""
        model = get_model(tag)
        name, version = model.name, model.version
        with tempfile.TemporaryDirectory(prefix="imageiq-publish-") as tmp:
            archive = Path(tmp) / f"{version}.bentomodel"
            bentoml.models.export_model(model.tag, str(archive))
            try:
                if self.bucket:
                    self._s3().upload_file(
                        str(archive), self.bucket, f"{self.prefix}{name}/{version}.bentomodel"
                    )
                else:
                    target = self.root / name / f"{version}.bentomodel"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial = target.with_suffix(".partial")
                    partial.write_bytes(archive.read_bytes())
                    partial.replace(target)
            except Exception as e:  # boto3's and the file system's errors alike
                raise StorageUnavailable(
                    f"Could not publish {model.tag} to the model repository "
                    f"({self.where(model.tag)}): {e}"
                ) from e
        log.info("published %s to %s", model.tag, self.where(model.tag))
        return self.where(model.tag)

    def ensure_local(self, tag: str) -> RegisteredModel:
        """``tag`` from the local store, imported from the repository when absent there.
        ``ModelNotFound`` when neither has it."""
        if not re.fullmatch(MODEL_TAG, tag):
            raise ModelNotFound(f"Not a model tag (name or name:version): {tag[:200]!r}.")
        try:
            return get_model(tag)
        except ModelNotFound:
            if tag.endswith(":latest") or ":" not in tag:
                raise
        name, version = _split(tag)
        with tempfile.TemporaryDirectory(prefix="imageiq-fetch-") as tmp:
            archive = Path(tmp) / f"{version}.bentomodel"
            if not self._fetch(name, version, archive):
                raise ModelNotFound(
                    f"No model {tag!r} in the model store nor in the model repository "
                    f"({self.where(tag)}): publish it with `imageiq models publish {tag}`."
                )
            bentoml.models.import_model(str(archive))
        log.info("imported %s from %s", tag, self.where(tag))
        return get_model(tag)

    def published(self, name: str) -> dict[str, datetime]:
        """The versions of ``name`` in the repository and when each was published: one
        listing (of the bucket's prefix, or the directory), no archive read."""
        if not re.fullmatch(MODEL_TAG, name) or ":" in name:
            raise ModelNotFound(f"Not a model name: {name[:200]!r}.")
        found: dict[str, datetime] = {}
        try:
            if self.bucket:
                pages = self._s3().get_paginator("list_objects_v2")
                for page in pages.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}{name}/"):
                    for item in page.get("Contents", []):
                        version = _archive_version(item["Key"].rsplit("/", 1)[-1])
                        if version is not None:
                            found[version] = item["LastModified"].astimezone(timezone.utc)
                return found
            for path in (self.root / name).glob("*.bentomodel"):
                version = _archive_version(path.name)
                if version is not None:
                    found[version] = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        except Exception as e:  # boto3's and the file system's errors alike
            where = f"s3://{self.bucket}/{self.prefix}{name}/" if self.bucket else self.root / name
            raise StorageUnavailable(f"Could not list the model repository ({where}): {e}") from e
        return found

    def _fetch(self, name: str, version: str, dest: Path) -> bool:
        try:
            if self.bucket:
                key = f"{self.prefix}{name}/{version}.bentomodel"
                self._s3().download_file(self.bucket, key, str(dest))
                return True
            source = self.root / name / f"{version}.bentomodel"
            if not source.is_file():
                return False
            dest.write_bytes(source.read_bytes())
            return True
        except Exception as e:
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            if code in _MISSING:
                return False
            raise StorageUnavailable(
                f"Could not read the model repository ({self.where(f'{name}:{version}')}): {e}"
            ) from e

    def _s3(self) -> Any:
        if self._client is None:
            from boto3.session import Session

            self._client = Session().client("s3", endpoint_url=self._endpoint)
        return self._client


def _split(tag: str) -> tuple[str, str]:
    name, _, version = tag.partition(":")
    if not name or not version or not re.fullmatch(MODEL_TAG, tag):
        raise ModelNotFound(f"Not a model tag name:version: {tag!r}.")
    return name, version


def _archive_version(filename: str) -> str | None:
    """``<version>.bentomodel`` -> the version; None for anything else (a partial copy)."""
    version = filename.removesuffix(".bentomodel")
    return version if version != filename and re.fullmatch(TAG_PART, version) else None
