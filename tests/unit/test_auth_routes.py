"""A route that declares no role cannot be mounted: the service refuses to build."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI

from libs.common.auth import Principal, Role, require, route_roles, unguarded_routes
from libs.common.service import ServiceSettings, ServiceSpec, build


def _routes(app: FastAPI, guarded: bool) -> None:
    router = APIRouter(prefix="/v1/things")

    @router.get("", dependencies=[require(Role.READER)])
    async def things() -> list[str]:
        return []

    if guarded:

        @router.post("/{name}", dependencies=[require(Role.OPERATOR, Role.APPROVER)])
        async def make(name: str) -> None: ...

    else:

        @router.post("/{name}")
        async def make_anonymously(name: str) -> None: ...

    app.include_router(router)


def test_a_route_without_a_role_stops_the_service_from_building() -> None:
    with pytest.raises(RuntimeError, match=r"routes without a role: POST /v1/things/\{name\}"):
        build(ServiceSpec("things", None, routes=lambda app, rt: _routes(app, guarded=False)), ServiceSettings())
    app, _ = build(ServiceSpec("things", None, routes=lambda app, rt: _routes(app, guarded=True)), ServiceSettings())
    assert unguarded_routes(app) == []
    roles = route_roles(app)
    assert roles[("POST", "/v1/things/{name}")] == {Role.OPERATOR, Role.APPROVER}
    assert roles[("GET", "/v1/things")] == {Role.READER}


def test_admin_implies_every_role_and_every_token_reads() -> None:
    admin = Principal("root", frozenset({Role.ADMIN}), "tok_1")
    producer = Principal("upstream", frozenset({Role.PRODUCER}), "tok_2")
    assert all(admin.can(role) for role in Role)
    assert producer.can(Role.READER)
    assert producer.can(Role.PRODUCER)
    assert not producer.can(Role.PREDICTOR)
    assert not producer.can(Role.APPROVER)
