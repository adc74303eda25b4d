"""The OpenAPI documents describe every answer (issue 11 item 5, issue 14 item 5).

Walked from each service's generated document, so a route added tomorrow is checked without
anyone remembering to: every success names its body's schema (a response model), every error
status has a body, and a route taking an ``Idempotency-Key`` declares the 409 of a reused key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI

from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.monitor.app import create_app as monitor_app
from services.monitor.settings import MonitorSettings
from services.serving.app import create_app as serving_app
from services.serving.settings import ServingSettings

APPS: dict[str, Callable[[], FastAPI]] = {
    "ingest": lambda: ingest_app(IngestSettings())[0],
    "serving": lambda: serving_app(ServingSettings(registry_url="http://127.0.0.1:9"))[0],
    "monitor": lambda: monitor_app(MonitorSettings())[0],
}
NO_BODY = {"204", "304"}


def _operations(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{method.upper()} {path}", op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def _schema(response: dict[str, Any]) -> dict[str, Any]:
    """The schema of a response's body (JSON, or the first media type declared)."""
    content = response.get("content", {})
    media: dict[str, Any] = content.get("application/json") or next(iter(content.values()), {})
    return dict(media.get("schema", {}))


@pytest.fixture(scope="module", params=sorted(APPS))
def document(request: pytest.FixtureRequest) -> dict[str, Any]:
    return APPS[request.param]().openapi()


def test_every_success_names_its_schema(document: dict[str, Any]) -> None:
    undescribed = []
    for where, op in _operations(document):
        for status, response in op["responses"].items():
            if not status.startswith("2") or status in NO_BODY:
                continue
            schema = _schema(response)
            described = "$ref" in schema or schema.get("type") in {"string", "integer", "number", "boolean"}
            items = schema.get("items", {})
            if schema.get("type") == "array":
                described = "$ref" in items  # a list of models, not of anything
            if not described:
                undescribed.append(f"{where} {status}: {schema or 'no schema'}")
    assert not undescribed, "answers without a response model:\n" + "\n".join(undescribed)


def test_every_error_status_has_a_body(document: dict[str, Any]) -> None:
    bare = [
        f"{where} {status}"
        for where, op in _operations(document)
        for status, response in op["responses"].items()
        if status[0] in "45" and not _schema(response)
    ]
    assert not bare, "error statuses without a body schema: " + ", ".join(bare)


def test_the_statuses_every_route_can_answer_are_declared(document: dict[str, Any]) -> None:
    missing = []
    for where, op in _operations(document):
        method, path = where.split(" ", 1)
        expected = {"400", "422", "503"}
        expected |= {"401", "403", "429"} if op.get("security") else set()
        expected |= {"404"} if "{" in path else set()
        expected |= {"413"} if method in {"POST", "PUT", "PATCH"} else set()
        headers = {p["name"].lower() for p in op.get("parameters", []) if p["in"] == "header"}
        expected |= {"409"} if "idempotency-key" in headers else set()
        if lacking := expected - set(op["responses"]):
            missing.append(f"{where}: {', '.join(sorted(lacking))}")
    assert not missing, "undeclared statuses:\n" + "\n".join(missing)
