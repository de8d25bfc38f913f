"""Write .cog/openapi_schema.json for predict.py, using Cog's own Python inspector.

`cog build` writes this file with the Go CLI; the Python server (`python -m cog.server.http`)
validates requests against it and serves it at /openapi.json. Running without Docker or the Go
CLI (tests, local serving), this script writes the same schema so inputs are validated exactly as
in the built image.

    python -m scripts.cog_schema [--output .cog/openapi_schema.json]
"""

import argparse
import json
import sys
from pathlib import Path

from cog._inspector import create_predictor

from latentsync.config import REPO_ROOT


def input_schema(info) -> dict:
    properties, required = {}, []
    for name, field in sorted(info.inputs.items(), key=lambda item: item[1].order):
        prop = {**field.type.json_type(), "title": name.replace("_", " ").title(), "x-order": field.order}
        for key, value in (
            ("description", field.description),
            ("default", field.default),
            ("minimum", field.ge),
            ("maximum", field.le),
            ("minLength", field.min_length),
            ("maxLength", field.max_length),
            ("pattern", field.regex),
            ("enum", field.choices),
        ):
            if value is not None:
                prop[key] = value
        if field.default is None and field.type.repetition.name == "REQUIRED":
            required.append(name)
        properties[name] = prop
    schema = {"type": "object", "title": "Input", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def openapi_schema(module: str = "predict", class_name: str = "Predictor") -> dict:
    info = create_predictor(module, class_name)
    status = {"title": "Status", "enum": ["starting", "processing", "succeeded", "canceled", "failed"], "type": "string"}
    request = _prediction_object(
        "PredictionRequest",
        webhook={"title": "Webhook", "type": "string", "format": "uri"},
        webhook_events_filter={"type": "array", "items": {"enum": ["start", "output", "logs", "completed"], "type": "string"}},
    )
    response = _prediction_object(
        "PredictionResponse",
        output={"$ref": "#/components/schemas/Output"},
        status={"$ref": "#/components/schemas/Status"},
        error={"title": "Error", "type": "string"},
        logs={"title": "Logs", "type": "string", "default": ""},
        metrics={"title": "Metrics", "type": "object"},
    )
    return {
        "openapi": "3.0.2",
        "info": {"title": "LatentSync lip-sync", "version": "1.0.0"},
        "paths": {
            "/predictions": {
                "post": {
                    "summary": "Predict",
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}}}},
                    "responses": {"200": {"description": "Successful Response", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionResponse"}}}}},
                }
            }
        },
        "components": {
            "schemas": {
                "Input": input_schema(info),
                "Output": info.output.json_type(),
                "Status": status,
                "PredictionRequest": request,
                "PredictionResponse": response,
            }
        },
    }


def _prediction_object(title: str, **properties) -> dict:
    """A prediction request or response: its id and input, then `properties`."""
    common = {"id": {"title": "Id", "type": "string"}, "input": {"$ref": "#/components/schemas/Input"}}
    return {"title": title, "type": "object", "properties": {**common, **properties}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO_ROOT / ".cog" / "openapi_schema.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    schema = openapi_schema()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(schema, indent=2))
    print(f"Wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
