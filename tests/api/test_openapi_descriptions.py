"""The OpenAPI document explains itself: every operation, parameter, response and schema property has a
description, `variant` lists the engine's variants one line each, and the request examples are valid requests
(against the JSON schema, against the pydantic models, and, for the synthetic ones, as real submissions)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.openapi import REQUEST_EXAMPLES
from core.jobspec import EVAL_EXAMPLES, REALIGN_EXAMPLES, EvalRequest, RealignRequest
from core.settings import Settings
from trace_engine.variants import VARIANTS

from .support import Harness, RecordingEnqueuer

REPO = Path(__file__).resolve().parents[2]
MODELS = {"RealignRequest": RealignRequest, "EvalRequest": EvalRequest}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The whole document, the gateway's routes included (they are mounted only with a serving backend; the
    document is generated without contacting it)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"), serving_url="http://127.0.0.1:9/v1",
                        serving_isolation="off")
    app: FastAPI = create_app(settings, RecordingEnqueuer())
    with TestClient(app) as client:
        response = client.get("/openapi.json")
        assert response.status_code == 200
        yield response.json()
    app.state.engine.dispose()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def undescribed_properties(node: Any, where: str) -> Iterator[str]:
    """Every property of every schema below `node` (components, inline request bodies, nested objects) that has
    no description."""
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            if isinstance(prop, dict) and not str(prop.get("description", "")).strip():
                yield f"{where}.{name}"
        for key, value in node.items():
            yield from undescribed_properties(value, f"{where}.{key}" if key != "properties" else where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from undescribed_properties(value, f"{where}[{index}]")


def test_the_document_covers_the_gateway(spec: dict[str, Any]) -> None:
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/realign", "/v1/evals"} <= set(spec["paths"])


def test_every_operation_parameter_and_response_is_described(spec: dict[str, Any]) -> None:
    missing = []
    for name, operation in operations(spec):
        for key in ("summary", "description"):
            if not str(operation.get(key, "")).strip():
                missing.append(f"{name}: no {key}")
        for parameter in operation.get("parameters", []):
            if not str(parameter.get("description", "")).strip():
                missing.append(f"{name}: parameter {parameter['name']} has no description")
        for status, response in operation.get("responses", {}).items():
            if not str(response.get("description", "")).strip():
                missing.append(f"{name}: response {status} has no description")
    assert not missing, "\n".join(missing)


def test_every_tag_is_described_and_public_routes_need_no_key(spec: dict[str, Any]) -> None:
    used = {tag for _, operation in operations(spec) for tag in operation.get("tags", [])}
    described = {tag["name"]: tag.get("description") for tag in spec["tags"]}
    assert used == set(described) and all(described.values()), described
    public = {name for name, operation in operations(spec) if operation.get("security") == []}
    assert public == {"GET /healthz", "GET /readyz"}
    assert not [name for name, operation in operations(spec)
                for status, response in operation["responses"].items() if response["description"] ==
                "Successful Response"]


def test_every_schema_property_is_described(spec: dict[str, Any]) -> None:
    missing = list(undescribed_properties(spec["components"]["schemas"], "components"))
    missing += undescribed_properties(spec["paths"], "paths")
    assert not missing, f"{len(missing)} properties without a description:\n" + "\n".join(missing)


def test_the_walk_finds_an_undescribed_property() -> None:
    """The checker itself can fail (nested and inline schemas included)."""
    schema = {"A": {"properties": {"ok": {"type": "string", "description": "fine"},
                                   "inner": {"description": "an object", "properties": {"bare": {"type": "integer"}}}}},
              "B": {"items": {"properties": {"x": {"type": "string", "description": " "}}}}}
    assert sorted(undescribed_properties(schema, "s")) == ["s.A.inner.bare", "s.B.items.x"]


def test_variant_is_an_enum_with_one_line_per_variant(spec: dict[str, Any]) -> None:
    variant = spec["components"]["schemas"]["MethodIn"]["properties"]["variant"]
    assert variant["enum"] == list(VARIANTS)
    lines = [line for line in variant["description"].splitlines() if line.startswith("- `")]
    assert [line.split("`")[1] for line in lines] == list(VARIANTS)
    for line, spec_ in zip(lines, VARIANTS.values(), strict=True):
        assert line.endswith(spec_.description) and spec_.description


def _validator(spec: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    """A JSON Schema 2020-12 validator for `schema`, with the document's components to resolve its $refs."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]})


def request_examples(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], Any]]:
    """(operation, example name, body schema, value) for every named example of every JSON request body."""
    for name, operation in operations(spec):
        media = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if media is None:
            continue
        assert media.get("examples"), f"{name}: its JSON request body has no examples"
        for example_name, example in media["examples"].items():
            assert example.get("summary"), f"{name}: example {example_name} has no summary"
            yield name, example_name, media["schema"], example["value"]


def test_request_examples_validate_against_their_schemas(spec: dict[str, Any]) -> None:
    seen = set()
    for operation, name, schema, value in request_examples(spec):
        errors = [e.message for e in _validator(spec, schema).iter_errors(value)]
        assert not errors, f"{operation} example {name}: {errors}"
        model = MODELS.get(schema.get("$ref", "").rsplit("/", 1)[-1])
        if model is not None:
            model.model_validate(value)  # the validators the JSON schema cannot express (judge fields, sizes)
        seen.add((operation, name))
    assert {("POST /v1/realign", "synthetic"), ("POST /v1/realign", "own_data"), ("POST /v1/evals", "synthetic"),
            ("POST /v1/evals", "adapter"), ("POST /v1/chat/completions", "example"),
            ("POST /v1/completions", "example")} <= seen
    for component in MODELS:  # the models' schema-level copies are the same values
        expected = [e["value"] for e in REQUEST_EXAMPLES[component].values()]
        assert spec["components"]["schemas"][component]["examples"] == expected


def test_a_broken_example_is_caught(spec: dict[str, Any]) -> None:
    """The validation above can fail: a wrong variant and a missing field are both reported."""
    schema = {"$ref": "#/components/schemas/RealignRequest"}
    body = {**REALIGN_EXAMPLES["synthetic"]["value"], "method": {"variant": "sft"}}
    assert not _validator(spec, schema).is_valid(body)
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert not _validator(spec, chat).is_valid({"model": "x"})  # no messages


def test_the_demo_request_is_the_synthetic_example_family() -> None:
    """examples/synthetic_realign.json (what `make demo` submits) is a valid request too."""
    RealignRequest.model_validate_json((REPO / "examples" / "synthetic_realign.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("path", "body"), [("/v1/realign", REALIGN_EXAMPLES["synthetic"]["value"]),
                                            ("/v1/evals", EVAL_EXAMPLES["synthetic"]["value"])])
def test_the_synthetic_examples_are_accepted(harness: Harness, path: str, body: dict[str, Any]) -> None:
    response = harness.client.post(path, json=body, headers=harness.headers)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "queued"
