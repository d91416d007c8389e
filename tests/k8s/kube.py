"""Offline checks of Kubernetes objects: render the chart or a kustomization, validate strictly.

Strict means what the API server would refuse fails here too: an unknown field, a wrong type, a
value outside an enum, and an apiVersion/kind that the target Kubernetes version does not serve.
Built-in kinds are checked by kubernetes-validate against its bundled schemas for
``KUBERNETES_VERSION``, then for the enumerated fields those schemas leave out (imagePullPolicy,
Service type, ...); the prometheus-operator kinds against JSON schemas generated from the pinned
``@kubernetes-models/prometheus-operator`` package. Both come from ``tools/crd-schemas.mjs``, run on
first use. KEDA's kinds (the workers' ScaledObject and TriggerAuthentication), which no pinned
package describes, against the schemas written for them in ``tests/k8s/schemas``. Any other kind
is an error: an object nothing checked is not an object that passed.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
SCHEMAS = TOOLS / "schemas"

# The Kubernetes version the chart targets; kubernetes-validate bundles its schemas.
KUBERNETES_VERSION = "1.33.0"
# What `.Capabilities.APIVersions.Has` sees in `helm template` (there is no cluster to ask).
API_VERSIONS = ("monitoring.coreos.com/v1", "autoscaling/v2", "policy/v1")
# The custom resources the chart renders, by (apiVersion, kind).
CRD_KINDS = frozenset(
    {
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
    }
)
# Hand-written schemas of the custom kinds no pinned package describes (KEDA's).
LOCAL_SCHEMAS = Path(__file__).resolve().parent / "schemas"

_ENV = {"helm": "HELM", "kubectl": "KUBECTL", "promtool": "PROMTOOL"}
_INSTALL = {
    "helm": "run `make tools` (npm ci --prefix tools installs helm v3.10.1)",
    "kubectl": "install kubectl >= 1.21 (`kubectl kustomize` is built in from 1.21 on)",
    "promtool": "install the Debian package `prometheus` (apt-get install prometheus)",
    "node": "install Node.js and run `make tools`",
}
# metadata.name of every object: a DNS-1123 subdomain, as the API server requires.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def tool(name: str) -> str:
    """Path of a tool: $HELM/$KUBECTL/$PROMTOOL, then tools/node_modules/.bin, then PATH.

    The pinned copy under tools/ comes before PATH so that a newer or older helm on a developer's
    machine does not change what the tests render.
    """
    env = _ENV.get(name)
    override = os.environ.get(env) if env else None
    if override:
        found = shutil.which(override)
        if found is None:
            raise RuntimeError(f"{env}={override!r} is not an executable file")
        return found
    local = TOOLS / "node_modules" / ".bin" / name
    if os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        where = f"${env}, {local}, PATH" if env else f"{local}, PATH"
        hint = _INSTALL.get(name, f"install {name}")
        raise RuntimeError(f"{name} not found (looked at {where}): {hint}")
    return found


def _run(args: list[str], *, what: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{result.stderr.strip()}")
    return result.stdout


def render(
    chart_dir: str | os.PathLike[str],
    *,
    values_files: Iterable[str | os.PathLike[str]] = (),
    set_values: Iterable[str] = (),
    release: str = "imageiq",
    namespace: str = "imageiq",
) -> str:
    """The manifests `helm template` renders, as the target cluster would see them.

    ``set_values`` are ``key=value`` strings for ``--set``. Raises RuntimeError with helm's
    stderr when the chart does not render (a template error or a values.schema.json violation).
    """
    args = [tool("helm"), "template", release, os.fspath(chart_dir), "--namespace", namespace]
    args += ["--kube-version", KUBERNETES_VERSION]
    for api_version in API_VERSIONS:
        args += ["--api-versions", api_version]
    for path in values_files:
        args += ["--values", os.fspath(path)]
    for assignment in set_values:
        args += ["--set", assignment]
    return _run(args, what="helm template")


def kustomize(directory: str | os.PathLike[str]) -> str:
    """The manifests `kubectl kustomize` builds from a kustomization directory."""
    return _run([tool("kubectl"), "kustomize", os.fspath(directory)], what="kubectl kustomize")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads a bare `=` as the string it is (PyYAML cannot construct its tag)."""


def _equals_sign(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:value", _equals_sign)


def load_all(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream; empty documents (`---` alone) are skipped."""
    objects = []
    for number, document in enumerate(yaml.load_all(text, Loader=_Loader), start=1):
        if document is None:
            continue
        if not isinstance(document, dict):
            kind = type(document).__name__
            raise ValueError(f"YAML document {number} is a {kind}, not a mapping")
        objects.append(document)
    return objects


def validate(objects: Iterable[dict[str, Any]]) -> list[str]:
    """Every problem found, one line each (``Kind/name: path: message``); empty when all pass."""
    errors: list[str] = []
    for number, obj in enumerate(objects, start=1):
        errors += [f"{_label(obj, number)}: {problem}" for problem in _problems(obj)]
    return errors


def _label(obj: dict[str, Any], number: int) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"{obj.get('kind') or '?'}/{name if isinstance(name, str) else f'#{number}'}"


def _problems(obj: dict[str, Any]) -> Iterator[str]:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        yield "apiVersion: missing or not a string"
        return
    if not isinstance(kind, str) or not kind:
        yield "kind: missing or not a string"
        return
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if name is None:
        yield "metadata.name: missing"
    elif not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 253:
        yield f"metadata.name: {name!r} is not a DNS-1123 subdomain (lower case, digits, '-', '.')"
    if (api_version, kind) in CRD_KINDS:
        validator = _crd_validator(api_version, kind)
        yield from (_describe(error) for error in _in_order(validator.iter_errors(obj)))
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        yield f"no schema for {api_version}/{kind} in Kubernetes {KUBERNETES_VERSION}"
        return
    except kubernetes_validate.ValidationError as error:
        # kubernetes-validate stops at the first error; the enum pass below still runs.
        yield _describe(error)
    except kubernetes_validate.utils.VersionNotSupportedError as error:
        raise RuntimeError(f"{error.message}: upgrade kubernetes-validate") from error
    definition = _builtin_definitions()[1].get((api_version, kind))
    if definition is not None:
        errors = _enum_validator(definition).iter_errors(obj)
        yield from (_describe(e) for e in _in_order(errors) if e.validator == "enum")


def _in_order(errors: Iterable[jsonschema.ValidationError]) -> list[jsonschema.ValidationError]:
    return sorted(errors, key=lambda error: [str(part) for part in error.path])


def _describe(error: jsonschema.ValidationError) -> str:
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.path)
    message = error.message
    if error.validator == "enum":  # without the null the enum pass allows, as the schemas do
        allowed = [value for value in error.validator_value if value is not None]
        message = f"{error.instance!r} is not one of {allowed}"
    return f"{path.lstrip('.')}: {message}" if path else message


@cache
def _builtin_definitions() -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """kubernetes-validate's definitions with the enums added, and each kind's definition name.

    The enums come from kubernetes-models' type declarations (tools/crd-schemas.mjs), matched by
    definition name: io.k8s.api.core.v1.Container is IoK8sApiCoreV1Container there.
    """
    directory = f"v{KUBERNETES_VERSION}-local-strict"
    files = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / directory
    definitions = json.loads((files / "_definitions.json").read_text())
    by_flat_name = {
        "".join(part[:1].upper() + part[1:] for part in name.split(".")): schema
        for name, schema in definitions["$defs"].items()
    }
    for flat_name, fields in _generated("kubernetes-enums.json").items():
        if not isinstance(fields, dict):  # $comment
            continue
        properties = by_flat_name.get(flat_name, {}).get("properties", {})
        for field, fragment in fields.items():
            if field in properties:
                target, values = properties[field], fragment.get("enum")
                if "items" in fragment:
                    target, values = target.get("items", {}), fragment["items"]["enum"]
                target["enum"] = [*values, None]
    kinds = {}
    for name, schema in definitions["$defs"].items():
        for gvk in schema.get("x-kubernetes-group-version-kind", ()):
            group_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            kinds[group_version, gvk["kind"]] = name
    return definitions, kinds


@cache
def _enum_validator(definition: str) -> jsonschema.protocols.Validator:
    definitions = _builtin_definitions()[0]
    registry: referencing.Registry[Any] = (
        referencing.Resource.from_contents(definitions) @ referencing.Registry()
    )
    schema = {"$ref": f"{definitions['$id']}#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


@cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = _strict(_crd_schema(api_version, kind))
    # ObjectMeta as the API server checks it (a missing name is reported for every kind above).
    metadata = schema["properties"]["metadata"]
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    for field in ("labels", "annotations"):
        metadata["properties"][field] = string_map
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    name = f"{api_version.replace('/', '-')}-{kind.lower()}.json"
    local = LOCAL_SCHEMAS / name
    if local.exists():
        schema: dict[str, Any] = json.loads(local.read_text())
        return schema
    return _generated(name)


def _generated(name: str) -> dict[str, Any]:
    """A file of tools/schemas, (re)generated when missing or older than the npm lock file."""
    path = SCHEMAS / name
    lock = TOOLS / "package-lock.json"
    if not path.exists() or path.stat().st_mtime < lock.stat().st_mtime:
        _run([tool("node"), str(TOOLS / "crd-schemas.mjs"), str(SCHEMAS)], what="crd-schemas.mjs")
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


_SUBSCHEMA = ("additionalProperties", "items", "not", "if", "then", "else")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs")


def _strict(schema: Any) -> Any:
    """A copy in which every object schema that lists its properties refuses any other.

    CRD schemas leave unknown fields to pruning, which drops them silently at apply time: a typo
    would vanish instead of failing. Fields marked x-kubernetes-preserve-unknown-fields stay open.
    Only subschemas are walked, never data such as enum values or defaults.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA:
        if isinstance(schema.get(key), dict):
            out[key] = _strict(schema[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            out[key] = [_strict(item) for item in schema[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            out[key] = {name: _strict(sub) for name, sub in schema[key].items()}
    if (
        isinstance(schema.get("properties"), dict)
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out
