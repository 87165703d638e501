"""Contract: every route is in the OpenAPI document, and real responses validate against what it declares."""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute

from api.routes import adapters, artifacts, evals, files, health, jobs, review

from .support import Harness, realign_body, register_adapter, tenant_of

_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool,
          "null": type(None)}


def validate(instance: Any, schema: dict[str, Any], spec: dict[str, Any], where: str = "$") -> None:
    """A small JSON Schema checker for the keywords pydantic emits ($ref, type, properties, required, items,
    anyOf, enum, const, additionalProperties)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return validate(instance, spec["components"]["schemas"][name], spec, where)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return validate(instance, option, spec, where)
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{where}: matches no anyOf option: {errors}")
    if "const" in schema:
        assert instance == schema["const"], f"{where}: {instance!r} != const {schema['const']!r}"
    if "enum" in schema:
        assert instance in schema["enum"], f"{where}: {instance!r} not in {schema['enum']}"
    kind = schema.get("type")
    if kind:
        expected = _TYPES[kind]
        ok = isinstance(instance, expected) and not (kind in ("integer", "number") and isinstance(instance, bool))
        assert ok, f"{where}: {instance!r} is not {kind}"
    if isinstance(instance, dict):
        for name in schema.get("required", []):
            assert name in instance, f"{where}: missing required {name!r}"
        properties = schema.get("properties", {})
        for name, value in instance.items():
            if name in properties:
                validate(value, properties[name], spec, f"{where}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(value, schema["additionalProperties"], spec, f"{where}.{name}")
            else:
                assert schema.get("additionalProperties", True) is not False, f"{where}: unexpected {name!r}"
    if isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            validate(item, schema["items"], spec, f"{where}[{index}]")
    return None


def check(spec: dict[str, Any], path: str, method: str, response: Any) -> None:
    operation = spec["paths"][path][method]
    declared = operation["responses"].get(str(response.status_code))
    assert declared is not None, f"{method.upper()} {path} answered {response.status_code}, not declared"
    media = response.headers["content-type"].split(";")[0]
    assert media in declared["content"], f"{method.upper()} {path}: {media} not declared {list(declared['content'])}"
    validate(response.json(), declared["content"][media]["schema"], spec)


def test_every_route_is_documented(harness: Harness) -> None:
    spec = harness.app.openapi()
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    routers = (files.router, health.router, jobs.router, adapters.router, artifacts.router, evals.router,
               review.router)
    routes = {(r.path, m) for router in routers for r in router.routes if isinstance(r, APIRoute) for m in r.methods}
    assert routes == documented
    assert {"/v1/realign", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/cancel",
            "/v1/jobs/{job_id}/triage", "/v1/files", "/v1/files/{file_id}", "/healthz", "/readyz",
            "/metrics", "/v1/adapters", "/v1/adapters/{adapter_id}", "/v1/adapters/{adapter_id}/download",
            "/v1/evals", "/v1/evals/{job_id}", "/v1/jobs/{job_id}/artifacts", "/v1/jobs/{job_id}/artifacts/{name}",
            "/v1/jobs/{job_id}/metrics", "/v1/jobs/{job_id}/scores", "/v1/jobs/{job_id}/review",
            "/v1/jobs/{job_id}/triage/{pair_id}", "/v1/jobs/{job_id}/continue"} <= set(spec["paths"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert harness.client.get("/docs").status_code == 200


def test_responses_match_their_declared_schemas(harness: Harness) -> None:
    spec, client, headers = harness.app.openapi(), harness.client, harness.headers
    submitted = client.post("/v1/realign", json=realign_body(), headers=headers)
    check(spec, "/v1/realign", "post", submitted)
    job_id = submitted.json()["id"]
    check(spec, "/v1/realign", "post", client.post("/v1/realign", json={"policy": {}}, headers=headers))
    check(spec, "/v1/jobs", "get", client.get("/v1/jobs", params={"limit": 1}, headers=headers))
    check(spec, "/v1/jobs", "get", client.get("/v1/jobs"))  # 401
    check(spec, "/v1/jobs/{job_id}", "get", client.get(f"/v1/jobs/{job_id}", headers=headers))
    check(spec, "/v1/jobs/{job_id}", "get", client.get("/v1/jobs/job_missing", headers=headers))
    check(spec, "/v1/jobs/{job_id}/events", "get", client.get(f"/v1/jobs/{job_id}/events", headers=headers))
    check(spec, "/v1/jobs/{job_id}/triage", "get", client.get(f"/v1/jobs/{job_id}/triage", headers=headers))
    check(spec, "/v1/jobs/{job_id}/artifacts", "get", client.get(f"/v1/jobs/{job_id}/artifacts", headers=headers))
    check(spec, "/v1/jobs/{job_id}/artifacts/{name}", "get",
          client.get(f"/v1/jobs/{job_id}/artifacts/triaged", headers=headers))  # 404: not triaged yet
    check(spec, "/v1/jobs/{job_id}/metrics", "get", client.get(f"/v1/jobs/{job_id}/metrics", headers=headers))
    check(spec, "/v1/jobs/{job_id}/scores", "get", client.get(f"/v1/jobs/{job_id}/scores", headers=headers))  # 404
    check(spec, "/v1/jobs/{job_id}/cancel", "post", client.post(f"/v1/jobs/{job_id}/cancel", headers=headers))
    check(spec, "/v1/jobs/{job_id}/cancel", "post", client.post(f"/v1/jobs/{job_id}/cancel", headers=headers))  # 409
    upload = client.post("/v1/files", headers=headers,
                         files={"file": ("p.jsonl", b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n')})
    check(spec, "/v1/files", "post", upload)
    check(spec, "/v1/files", "post", client.post("/v1/files", headers=headers, files={"file": ("p.jsonl", b"{")}))
    check(spec, "/v1/files", "get", client.get("/v1/files", headers=headers))
    check(spec, "/v1/files/{file_id}", "get", client.get(f"/v1/files/{upload.json()['id']}", headers=headers))
    adapter_id = register_adapter(harness.sessions, harness.settings, tenant_of(harness.sessions, headers))
    check(spec, "/v1/adapters/{adapter_id}", "get", client.get(f"/v1/adapters/{adapter_id}", headers=headers))
    check(spec, "/v1/adapters", "get", client.get("/v1/adapters", headers=headers))
    check(spec, "/healthz", "get", client.get("/healthz"))
    check(spec, "/readyz", "get", client.get("/readyz"))


def test_the_validator_rejects_a_wrong_response(harness: Harness) -> None:
    spec = harness.app.openapi()
    job_schema = {"$ref": "#/components/schemas/JobOut"}
    try:
        validate({"id": 1}, job_schema, spec)
    except AssertionError:
        return
    raise AssertionError("validator accepted a malformed job")
