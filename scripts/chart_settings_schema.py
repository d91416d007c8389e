"""Keeps the chart's `config` schema in step with :class:`imageiq.settings.Settings`.

`helm/imageiq/values.schema.json` describes `config` (and `canary.config`) through
`$defs.settings`: one camelCase property per setting that is not a secret, with the
setting's type, bounds, enum and pattern, and nothing else allowed. This derives that block
from the settings model; `tests/k8s/test_chart.py` fails when the committed schema differs.

    python scripts/chart_settings_schema.py          # print the block
    python scripts/chart_settings_schema.py --write  # update values.schema.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from imageiq.settings import Settings

SCHEMA = Path(__file__).resolve().parents[1] / "helm/imageiq/values.schema.json"
# Set from Secrets (secrets.*) or by the chart itself (dataVolume.mountPath, metrics.port),
# never in config.
NOT_IN_CONFIG = frozenset(
    {
        "database_url",
        "redis_url",
        "jobs_broker_url",  # a secret: secrets.jobsBroker
        "api_key_pepper",
        "api_key",
        "data_dir",
        "metrics_port",
        "worker_metrics_port",  # worker.metrics.port
    }
)
_KEEP = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "pattern")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _property(schema: dict[str, Any]) -> dict[str, Any]:
    # An optional setting (X | None) is set by giving X and unset by leaving the key out.
    options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    (chosen,) = options
    out = {key: chosen[key] for key in _KEEP if key in chosen}
    if "items" in chosen:
        out["items"] = {key: chosen["items"][key] for key in _KEEP if key in chosen["items"]}
    if "description" in schema:
        out["description"] = schema["description"]
    return out


def settings_schema() -> dict[str, Any]:
    """`$defs.settings`: the settings a values file may set under `config`."""
    fields = Settings.model_json_schema()["properties"]
    return {
        "type": "object",
        "description": "ImageIQ settings (README 'Settings'), camelCase; secrets go in `secrets`.",
        "additionalProperties": False,
        "properties": {
            camel(name): _property(schema)
            for name, schema in fields.items()
            if name not in NOT_IN_CONFIG
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update values.schema.json")
    args = parser.parse_args()
    block = settings_schema()
    if not args.write:
        print(json.dumps(block, indent=2))
        return
    schema = json.loads(SCHEMA.read_text())
    schema["$defs"]["settings"] = block
    SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    main()
