"""Authentication and roles on every service.

The route test is generated from each service's OpenAPI document: a route
added tomorrow is checked by it without anyone remembering to.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm
from typer.testing import CliRunner

from cli import tokens
from cli.churn_stream import SCHEMA
from cli.main import app as cli
from libs.common import auth
from libs.common.auth import OPEN_PATHS, Authenticator, AuthSettings, Role, route_roles
from libs.common.errors import Forbidden, Unauthorized
from libs.common.service import ServiceSettings
from libs.common.settings import DatabaseSettings
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.monitor.app import create_app as monitor_app
from services.monitor.settings import MonitorSettings
from services.registry.app import create_app as registry_app
from services.registry.settings import RegistrySettings
from services.serving.app import create_app as serving_app
from services.serving.settings import ServingSettings
from services.trainer.app import create_app as trainer_app
from services.trainer.settings import TrainerSettings
from tests.conftest import Isolation, bearer, serve

pytestmark = pytest.mark.integration

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def _apps(isolated: Isolation, **overrides: Any) -> dict[str, FastAPI]:
    def settings(cls: type[ServiceSettings], **extra: Any) -> Any:
        return isolated.settings(cls, **overrides, **extra)

    return {
        "ingest": ingest_app(settings(IngestSettings))[0],
        "trainer": trainer_app(settings(TrainerSettings, workers=0))[0],
        "registry": registry_app(settings(RegistrySettings))[0],
        "serving": serving_app(settings(ServingSettings, registry_url="http://127.0.0.1:9"))[0],
        "monitor": monitor_app(settings(MonitorSettings))[0],
    }


def _url(path: str, operation: dict[str, Any]) -> str:
    """``path`` with plausible values for its parameters (so validation is not what answers)."""
    for param in operation.get("parameters", []):
        if param["in"] != "path":
            continue
        schema = param.get("schema", {})
        value = {"integer": "1", "number": "1"}.get(schema.get("type", ""), "churn")
        if schema.get("format") == "uuid":
            value = str(uuid.uuid4())
        path = path.replace("{" + param["name"] + "}", value)
    return path


async def _check_service(name: str, app: FastAPI, client: httpx.AsyncClient) -> set[tuple[str, str]]:
    """Check every route of ``name``'s OpenAPI document; return the (method, path) of those checked."""
    doc = (await client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": auth.bearer.model.description,
    }  # fmt: skip
    roles = route_roles(app)
    checked: set[tuple[str, str]] = set()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            url, verb, where = _url(path, operation), method.upper(), f"{name}: {method.upper()} {path}"
            if OPEN_PATHS.match(path):
                assert "security" not in operation, where
                assert (await client.request(verb, url, headers={"Authorization": ""})).status_code != 401, where
                continue
            assert operation.get("security") == [{"bearer": []}], f"{where} does not declare the bearer scheme"
            allowed = roles[(verb, path)]
            body: dict[str, Any] | None = {} if verb in MUTATING else None
            anonymous = await client.request(verb, url, json=body, headers={"Authorization": ""})
            assert anonymous.status_code == 401, f"{where} without a token: {anonymous.status_code}"
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            # The Open Inference Protocol's routes answer in its error shape, {"error": "<message>"}.
            protocol = path == "/v2" or path.startswith("/v2/")
            unauthorized, forbidden = (
                ("this route needs a bearer token", "principal 'wrong-role' lacks the role")
                if protocol
                else ("unauthorized", "forbidden")
            )
            assert anonymous.json()["error"].startswith(unauthorized)
            forged = await client.request(verb, url, json=body, headers={"Authorization": "Bearer dl_made-up"})
            assert forged.status_code == 401, f"{where} with a made-up token: {forged.status_code}"
            if verb in MUTATING:
                assert Role.READER not in allowed, f"{where} changes state but any token may call it"
                wrong = [r for r in Role if r not in allowed and r is not Role.ADMIN]
                headers = await bearer(app, *wrong, principal="wrong-role")
                refused = await client.request(verb, url, json=body, headers=headers)
                assert refused.status_code == 403, f"{where} with roles {wrong}: {refused.status_code}"
                assert refused.json()["error"].startswith(forbidden)
            else:
                reader = await client.request(verb, url, headers=await bearer(app, Role.READER))
                assert reader.status_code not in (401, 403), f"{where} refuses a reader"
            right = await client.request(verb, url, json=body, headers=await bearer(app, *allowed))
            assert right.status_code not in (401, 403), f"{where} refuses {sorted(allowed)}: {right.text}"
            checked.add((verb, path))
    return checked


async def test_every_route_of_every_service_needs_a_token_and_its_role(isolated: Isolation) -> None:
    checked: dict[str, set[tuple[str, str]]] = {}
    for name, app in _apps(isolated).items():
        async with serve(app, token=False) as client:
            checked[name] = await _check_service(name, app, client)
    assert all(len(routes) >= 2 for routes in checked.values()), checked
    # The six anonymous state changes of issue 10 are among the routes checked (a route that left the
    # OpenAPI document would otherwise escape this test).
    assert {("PUT", "/v1/datasets/{dataset}"), ("POST", "/v1/datasets/{dataset}/records")} <= checked["ingest"]
    assert ("POST", "/v1/training-jobs") in checked["trainer"]
    assert ("PUT", "/v1/models/{model}/aliases/{alias}") in checked["registry"]
    assert {("POST", "/v1/models/{model}/predict"), ("POST", "/v1/feedback")} <= checked["serving"]


async def test_metrics_can_be_put_behind_a_token(isolated: Isolation) -> None:
    settings = isolated.settings(RegistrySettings, auth=AuthSettings(metrics_token=True))
    app, _ = registry_app(settings)
    async with serve(app, token=False) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=await bearer(app, Role.READER))).status_code == 200
        assert (await client.get("/healthz")).status_code == 200


@pytest.fixture
async def authenticator(db_settings: DatabaseSettings) -> Any:
    settings = AuthSettings(database_schema=f"auth_{uuid.uuid4().hex[:10]}", refresh_s=0.2, max_age_s=5)
    authenticator = Authenticator(settings)
    await authenticator.start(db_settings)
    yield authenticator
    await authenticator.db.execute(f"DROP SCHEMA {settings.database_schema} CASCADE")
    await authenticator.stop()


async def test_tokens_are_stored_hashed_and_verified_from_memory(authenticator: Authenticator) -> None:
    issued = await auth.issue(authenticator.db, "ci-bot", [Role.PRODUCER], created_by="test")
    stored = await authenticator.db.fetchrow("SELECT * FROM tokens WHERE id = $1", issued.id)
    assert stored["token_sha256"] == auth.hash_token(issued.token) != issued.token
    assert issued.token not in str(dict(stored))
    principal = await authenticator.authorise(f"Bearer {issued.token}", Role.PRODUCER)
    assert (principal.name, principal.roles) == ("ci-bot", frozenset({Role.PRODUCER}))
    with pytest.raises(Forbidden, match="lacks the role 'operator'"):
        await authenticator.authorise(f"Bearer {issued.token}", Role.OPERATOR)
    with pytest.raises(Unauthorized):
        await authenticator.authorise("Basic abc", Role.READER)
    started = time.perf_counter()
    for _ in range(10_000):
        await authenticator.verify(issued.token)
    per_call = (time.perf_counter() - started) / 10_000
    assert per_call < 100e-6, f"a cached verification took {per_call * 1e6:.1f} µs"


async def test_revoked_and_expired_tokens_stop_working_within_seconds(authenticator: Authenticator) -> None:
    kept = await auth.issue(authenticator.db, "kept", [Role.READER], created_by="test")
    revoked = await auth.issue(authenticator.db, "leaked", [Role.ADMIN], created_by="test")
    soon = datetime.now(UTC) + timedelta(seconds=1)
    expiring = await auth.issue(authenticator.db, "temp", [Role.READER], created_by="test", expires_at=soon)
    for issued in (kept, revoked, expiring):
        await authenticator.verify(issued.token)  # cached now
    await auth.revoke(authenticator.db, revoked.id)
    started = time.monotonic()
    while True:
        try:
            await authenticator.verify(revoked.token)
        except Unauthorized:
            break
        assert time.monotonic() - started < 3, "a revoked token still works after 3 s"
        await asyncio.sleep(0.05)
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    with pytest.raises(Unauthorized, match=r"expired|not valid"):
        await authenticator.verify(expiring.token)
    assert (await authenticator.verify(kept.token)).name == "kept"
    listed = {t["id"]: t for t in await auth.list_tokens(authenticator.db)}
    assert listed[revoked.id]["revoked_at"] is not None
    assert listed[kept.id]["revoked_at"] is None


def test_the_cli_creates_lists_and_revokes_tokens(
    db_settings: DatabaseSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_DATABASE_URL", db_settings.url)
    run = CliRunner().invoke
    created = run(cli, ["token", "create", "--role", "producer,predictor", "--name", "shop", "--expires", "30d",
                        "--home", str(tmp_path), "--json"])  # fmt: skip
    assert created.exit_code == 0, created.output
    issued = json.loads(created.stdout)
    assert issued["token"].startswith("dl_")
    assert issued["roles"] == ["predictor", "producer"]
    listed = json.loads(run(cli, ["token", "list", "--home", str(tmp_path), "--json"]).stdout)
    mine = next(t for t in listed if t["id"] == issued["id"])
    assert mine["principal"] == "shop"
    assert mine["expires_at"] is not None
    assert issued["token"] not in json.dumps(listed)
    assert run(cli, ["token", "revoke", issued["id"], "--home", str(tmp_path)]).exit_code == 0
    listed = json.loads(run(cli, ["token", "list", "--home", str(tmp_path), "--json"]).stdout)
    assert next(t for t in listed if t["id"] == issued["id"])["revoked_at"] is not None
    bad = run(cli, ["token", "create", "--role", "root", "--name", "x", "--home", str(tmp_path)])
    assert bad.exit_code == 2
    assert "unknown role 'root'" in bad.output


async def test_up_writes_an_admin_token_readable_by_its_owner_only(
    db_settings: DatabaseSettings, tmp_path: Path
) -> None:
    token = await tokens.ensure_admin_token(db_settings, tmp_path)
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    assert await tokens.ensure_admin_token(db_settings, tmp_path) == token  # kept while valid
    authenticator = Authenticator(AuthSettings())
    await authenticator.start(db_settings)
    try:
        principal = await authenticator.verify(token)
        assert principal.can(Role.ADMIN)
        await auth.revoke(authenticator.db, principal.token_id)
        assert await tokens.ensure_admin_token(db_settings, tmp_path) != token  # replaced once revoked
    finally:
        await authenticator.stop()


async def test_the_first_token_can_be_issued_inside_a_service_container(db_settings: DatabaseSettings) -> None:
    """The image has no driftloop CLI: ``python -m libs.common.first_token`` issues the first admin token."""
    env = {**os.environ, "DRIFTLOOP_DATABASE_URL": db_settings.url}
    command = [sys.executable, "-m", "libs.common.first_token", "--name", "ops", "--role", "admin"]
    made = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("dl_")
    authenticator = Authenticator(AuthSettings())
    await authenticator.start(db_settings)
    try:
        principal = await authenticator.verify(token)
        assert principal.name == "ops"
        assert principal.can(Role.ADMIN)
    finally:
        await authenticator.stop()
    bad = await asyncio.to_thread(subprocess.run, [*command[:-1], "root"], env=env, capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
    assert bad.returncode == 2
    assert "unknown role 'root'" in bad.stderr


async def test_oidc_jwts_carry_their_roles_on_a_real_service(isolated: Isolation, tmp_path: Path) -> None:
    """An identity provider's JWT (signed by a key of the JWKS file) is a bearer token like a dl_ one."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "k1"}]}))
    issuer = "https://id.bank.example"
    settings = AuthSettings(jwt_issuer=issuer, jwt_audience="driftloop", jwt_jwks_file=str(jwks))
    app, _ = ingest_app(isolated.settings(IngestSettings, auth=settings))

    def bearer_jwt(roles: list[str], lifetime_s: int = 300) -> dict[str, str]:
        claims = {"iss": issuer, "aud": "driftloop", "sub": "alice@bank.example", "roles": roles,
                  "exp": int(time.time()) + lifetime_s}  # fmt: skip
        return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})}

    schema = SCHEMA
    async with serve(app, token=False) as client:
        assert (await client.put("/v1/datasets/jwt", json=schema, headers=bearer_jwt(["producer"]))).status_code == 403
        declared = await client.put("/v1/datasets/jwt", json=schema, headers=bearer_jwt(["admin"]))
        assert declared.status_code == 201, declared.text
        assert (await client.get("/v1/datasets/jwt", headers=bearer_jwt([]))).status_code == 200  # every token reads
        expired = await client.get("/v1/datasets/jwt", headers=bearer_jwt(["admin"], lifetime_s=-3600))
        assert expired.status_code == 401
        assert "expired" in expired.json()["message"]
        other = ec.generate_private_key(ec.SECP256R1())
        claims = {
            "iss": issuer,
            "aud": "driftloop",
            "sub": "mallory",
            "roles": ["admin"],
            "exp": int(time.time()) + 300,
        }
        forged = jwt.encode(claims, other, algorithm="ES256", headers={"kid": "k1"})
        answer = await client.put("/v1/datasets/jwt", json=schema, headers={"Authorization": f"Bearer {forged}"})
        assert answer.status_code == 401
