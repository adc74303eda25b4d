"""Who is calling: bearer tokens with roles, checked on every route of every service.

A token is 256 random bits (``dl_…``). PostgreSQL keeps only its SHA-256, with
the principal it belongs to, its roles, an expiry and a revocation time, in the
``auth`` schema. That schema is shared on purpose, like the outbox code: it is
owned by ``libs/common`` (which migrates it), every service reads it and none
owns it, so one ``driftloop token revoke`` locks a caller out of all five
services and no service has to ask another on its request path.

Why SHA-256 and not bcrypt: bcrypt's slowness protects guessable passwords;
a 256-bit random token cannot be guessed, so a fast hash loses nothing, and it
lets a token be found by its hash (an index lookup) instead of trying every
salted row at ~100 ms each on serving's hot path.

Verification is a dict lookup after the first hit. Cached verifications are
re-confirmed against the table every ``refresh_s`` seconds in the background,
so a revoked or expired token stops working within that time; a verification
that could not be re-confirmed for ``max_age_s`` is checked again inline.

Routes declare their role in one line::

    @router.put("/x", dependencies=[require(Role.OPERATOR)])
    async def x(...): ...

    async def y(principal: Annotated[Principal, require(Role.APPROVER)]): ...  # when the name is needed

``build`` (libs/common/service/app.py) refuses to start a service with a route
that declares no role, unless its path is one of :data:`OPEN_PATHS`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, Request, Security, params, routing
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.db import close_pool, connect_with_retry, load_migrations, migrate
from libs.common.errors import BadRequest, Forbidden, NotFound, TransientError, Unauthorized
from libs.common.jwt_auth import JwtRefused, JwtVerifier
from libs.common.settings import DatabaseSettings
from libs.common.tasks import cancel_and_wait

log = logging.getLogger(__name__)

AUTH_MIGRATIONS = Path(__file__).parent / "migrations" / "auth"
TOKEN_PREFIX = "dl_"

#: Routes anyone may call: liveness, readiness, metrics (unless a setting closes
#: them), the AsyncAPI document, and the Open Inference Protocol's health routes.
OPEN_PATHS = re.compile(r"^/(healthz|readyz|metrics|asyncapi\.json|v2/health/.*)$")


class Role(StrEnum):
    """What a token may do. ``admin`` may do everything; every valid token may read."""

    READER = "reader"
    """Read models, versions, datasets, jobs, drift reports."""
    PRODUCER = "producer"
    """Submit records and feedback labels."""
    PREDICTOR = "predictor"
    """Ask for predictions."""
    OPERATOR = "operator"
    """Run training jobs; move canary and shadow aliases, roll back."""
    APPROVER = "approver"
    """Move the champion alias by hand (the human approval step)."""
    ADMIN = "admin"
    """Tokens and dataset schemas; implies every other role."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    name: str
    roles: frozenset[Role]
    token_id: str
    trusted: bool = False
    """Whether labels and rows this principal sends may retrain and promote without an approver
    (the token's trust level; an admin is always trusted)."""

    def can(self, role: Role) -> bool:
        return role is Role.READER or role in self.roles or Role.ADMIN in self.roles


class AuthSettings(BaseSettings):
    """Token verification (``DRIFTLOOP_AUTH_*``)."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_AUTH_", extra="ignore")

    database_schema: str = "auth"
    """Schema of the shared token table."""
    refresh_s: float = 2.0
    """Cached verifications are re-checked this often: a revoked token stops working within this time."""
    max_age_s: float = 15.0
    """A verification the background refresh could not re-confirm for this long is checked again inline."""
    metrics_token: bool = False
    """Require a token (any role) on ``/metrics``."""
    jwt_issuer: str | None = None
    """OIDC/JWT bearer tokens (libs/common/jwt_auth.py): the issuer (``iss``) they must name. Unset: only
    ``dl_`` tokens are accepted. Needs ``jwt_audience`` and ``jwt_jwks_file``."""
    jwt_audience: str | None = None
    """The audience (``aud``) a JWT must be issued for, e.g. ``driftloop``."""
    jwt_jwks_file: str | None = None
    """Path of the issuer's JWKS (its public signing keys, JSON); read from disk, never fetched."""
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256", "EdDSA"])
    """Accepted signature algorithms (asymmetric ones only)."""
    jwt_roles_claim: str = "roles"
    """Claim holding the driftloop roles, a dotted path for nested claims (Keycloak: ``realm_access.roles``)."""
    jwt_principal_claim: str = "sub"
    """Claim naming the principal (the audit's actor, the rate limits' key)."""
    jwt_trusted_claim: str | None = None
    """Boolean claim that marks the principal trusted (its data may retrain and promote by itself)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_roles(names: Iterable[str]) -> frozenset[Role]:
    roles = []
    for name in names:
        try:
            roles.append(Role(name.strip().lower()))
        except ValueError as exc:
            raise BadRequest(f"unknown role {name!r}; roles are {', '.join(r.value for r in Role)}") from exc
    if not roles:
        raise BadRequest("a token needs at least one role")
    return frozenset(roles)


# --- the token table -----------------------------------------------------------------------------------------


async def connect(database: DatabaseSettings, settings: AuthSettings) -> asyncpg.Pool:
    """A small pool on the auth schema, migrated."""
    small = database.model_copy(update={"min_pool_size": 1, "max_pool_size": 2})
    pool = await connect_with_retry(small, settings.database_schema)
    await migrate(pool, settings.database_schema, load_migrations(AUTH_MIGRATIONS))
    return pool


@dataclass(frozen=True)
class IssuedToken:
    id: str
    token: str
    """The secret; shown once, never stored."""
    principal: str
    roles: frozenset[Role]
    expires_at: datetime | None


async def issue(
    db: asyncpg.Pool | asyncpg.Connection,
    principal: str,
    roles: Iterable[Role],
    *,
    created_by: str,
    expires_at: datetime | None = None,
    trusted: bool = False,
) -> IssuedToken:
    """Create a token for ``principal``; only its hash is stored. ``trusted``: see :attr:`Principal.trusted`."""
    if not principal or len(principal) > 128:
        raise BadRequest("a principal name has 1 to 128 characters")
    token, token_id, roles = new_token(), "tok_" + secrets.token_hex(6), frozenset(roles)
    await db.execute(
        "INSERT INTO tokens (id, principal, roles, token_sha256, created_by, expires_at, trusted) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        token_id, principal, sorted(r.value for r in roles), hash_token(token), created_by, expires_at, trusted,
    )  # fmt: skip
    return IssuedToken(token_id, token, principal, roles, expires_at)


async def list_tokens(db: asyncpg.Pool | asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM tokens ORDER BY created_at")
    return [
        {
            "id": r["id"],
            "principal": r["principal"],
            "roles": list(r["roles"]),
            "trusted": r["trusted"],
            "created_by": r["created_by"],
            "created_at": r["created_at"].isoformat(),
            "expires_at": r["expires_at"].isoformat() if r["expires_at"] else None,
            "revoked_at": r["revoked_at"].isoformat() if r["revoked_at"] else None,
        }
        for r in rows
    ]


async def revoke(db: asyncpg.Pool | asyncpg.Connection, token_id: str) -> None:
    """Revoke one token by id; the services stop accepting it within ``refresh_s``."""
    done = await db.fetchval(
        "UPDATE tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING id", token_id
    )
    if done is None:
        raise NotFound(f"no token {token_id!r}", token_id=token_id)


async def lookup(db: asyncpg.Pool | asyncpg.Connection, token: str) -> Principal | None:
    """The principal of a valid (known, unexpired, unrevoked) token."""
    row = await db.fetchrow(
        "SELECT id, principal, roles, trusted FROM tokens WHERE token_sha256 = $1 AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > now())",
        hash_token(token),
    )
    if row is None:
        return None
    return _principal(row)


def _principal(row: asyncpg.Record) -> Principal:
    roles = frozenset(Role(r) for r in row["roles"] if r in Role._value2member_map_)
    return Principal(row["principal"], roles, row["id"], trusted=row["trusted"] or Role.ADMIN in roles)


def jwt_verifier(settings: AuthSettings) -> JwtVerifier | None:
    """The JWT verifier the settings ask for (None when no issuer is set); incomplete settings refuse to start."""
    if settings.jwt_issuer is None:
        return None
    if not settings.jwt_audience or not settings.jwt_jwks_file:
        raise ValueError("DRIFTLOOP_AUTH_JWT_ISSUER needs DRIFTLOOP_AUTH_JWT_AUDIENCE and DRIFTLOOP_AUTH_JWT_JWKS_FILE")
    return JwtVerifier(
        issuer=settings.jwt_issuer, audience=settings.jwt_audience, jwks_file=settings.jwt_jwks_file,
        algorithms=settings.jwt_algorithms, roles_claim=settings.jwt_roles_claim,
        principal_claim=settings.jwt_principal_claim, trusted_claim=settings.jwt_trusted_claim,
    )  # fmt: skip


# --- verification with a cache --------------------------------------------------------------------------------


@dataclass
class _Verified:
    principal: Principal
    expires_at: float | None
    """Wall-clock expiry of the token (epoch seconds)."""
    confirmed: float
    """Monotonic time the table last said the token is valid."""


class Authenticator:
    """Verifies bearer tokens for one service: a dict lookup after the first hit."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self._verified: dict[str, _Verified] = {}
        self._unknown: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.jwt = jwt_verifier(settings)

    async def start(self, database: DatabaseSettings) -> None:
        self.pool = await connect(database, self.settings)
        self._task = asyncio.create_task(self._refresh_forever(), name="auth-refresh")

    @property
    def db(self) -> asyncpg.Pool:
        """The pool on the token table (for issuing service tokens)."""
        if self.pool is None:
            raise RuntimeError("authentication is not started yet")
        return self.pool

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self.pool is not None:
            await close_pool(self.pool)
            self.pool = None

    async def verify(self, token: str) -> Principal:
        """The principal of ``token`` (a ``dl_`` token, or a JWT when an issuer is configured), or
        :class:`Unauthorized`."""
        if self.jwt is not None and not token.startswith(TOKEN_PREFIX) and token.count(".") == 2:
            return self._verify_jwt(self.jwt, token)
        digest = hash_token(token)
        now = time.monotonic()
        hit = self._verified.get(digest)
        if hit is not None and now - hit.confirmed < self.settings.max_age_s:
            if hit.expires_at is not None and hit.expires_at <= time.time():
                self._verified.pop(digest, None)
                raise Unauthorized("the bearer token has expired")
            return hit.principal
        if self._unknown.get(digest, 0.0) > now:
            raise Unauthorized("the bearer token is not valid (unknown, expired or revoked)")
        return await self._verify_in_table(token, digest, now)

    @staticmethod
    def _verify_jwt(verifier: JwtVerifier, token: str) -> Principal:
        try:
            found = verifier.verify(token)
        except JwtRefused as exc:
            raise Unauthorized(str(exc)) from exc
        roles = frozenset(Role(r) for r in found.roles if r in Role._value2member_map_)
        return Principal(found.principal, roles, found.token_id, trusted=found.trusted or Role.ADMIN in roles)

    async def _verify_in_table(self, token: str, digest: str, now: float) -> Principal:
        if self.pool is None:
            raise TransientError("the service is starting: tokens cannot be verified yet")
        try:
            row = await self.pool.fetchrow(
                "SELECT id, principal, roles, trusted, expires_at FROM tokens WHERE token_sha256 = $1 "
                "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                digest,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise TransientError(f"tokens cannot be verified now: {type(exc).__name__}") from exc
        if row is None:
            if len(self._unknown) > 10_000:
                self._unknown.clear()
            self._unknown[digest] = now + self.settings.refresh_s
            raise Unauthorized("the bearer token is not valid (unknown, expired or revoked)")
        principal = _principal(row)
        expires = row["expires_at"].timestamp() if row["expires_at"] else None
        self._verified[digest] = _Verified(principal, expires, now)
        return principal

    async def refresh(self) -> None:
        """Re-confirm every cached verification; drop the revoked, expired and deleted ones."""
        digests = list(self._verified)
        if not digests or self.pool is None:
            return
        started = time.monotonic()
        rows = await self.pool.fetch(
            "SELECT token_sha256 FROM tokens WHERE token_sha256 = ANY($1::text[]) "
            "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
            digests,
        )
        valid = {r["token_sha256"] for r in rows}
        for digest in digests:
            if digest in valid:
                entry = self._verified.get(digest)
                if entry is not None:
                    entry.confirmed = started
            else:
                self._verified.pop(digest, None)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_s)
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("token refresh failed (%s); cached verifications age", exc)

    async def authorise(self, authorization: str | None, *roles: Role) -> Principal:
        """Check an ``Authorization`` header value for one of ``roles``: 401 without a valid token,
        403 without the role."""
        if not authorization:
            raise Unauthorized("this route needs a bearer token (Authorization: Bearer …)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        principal = await self.verify(token.strip())
        if not any(principal.can(role) for role in roles):
            wanted = " or ".join(repr(r.value) for r in roles)
            raise Forbidden(
                f"principal {principal.name!r} lacks the role {wanted}",
                principal=principal.name,
                required_role=" or ".join(r.value for r in roles),
            )
        return principal


# --- FastAPI ------------------------------------------------------------------------------------------------

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A driftloop token (`driftloop token create --role ROLE --name NAME`).",
)


def require(*roles: Role) -> params.Depends:
    """The dependency that lets only principals with one of ``roles`` through (one line per route)."""
    if not roles:
        raise ValueError("require() needs at least one role")

    async def authorised(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> Principal:
        authenticator: Authenticator = request.app.state.auth
        header = f"Bearer {credentials.credentials}" if credentials is not None else None
        return await authenticator.authorise(header, *roles)

    authorised.driftloop_roles = roles  # type: ignore[attr-defined]
    dependency: params.Depends = Depends(authorised)
    return dependency


def unguarded_routes(app: FastAPI) -> list[str]:
    """``METHOD /path`` of every route that neither declares a role nor is open."""
    missing: list[str] = []
    for path, methods, dependant in _api_routes(app):
        if OPEN_PATHS.match(path):
            continue
        if not any(hasattr(dep.call, "driftloop_roles") for dep in _dependencies(dependant)):
            missing.extend(f"{method} {path}" for method in sorted(methods))
    return missing


def route_roles(app: FastAPI) -> dict[tuple[str, str], frozenset[Role]]:
    """``(METHOD, path) → roles`` (any of which is let through) of every guarded route."""
    found: dict[tuple[str, str], frozenset[Role]] = {}
    for path, methods, dependant in _api_routes(app):
        for dep in _dependencies(dependant):
            roles = getattr(dep.call, "driftloop_roles", None)
            if roles is not None:
                found.update({(m, path): frozenset(roles) for m in methods})
    return found


def _api_routes(app: FastAPI) -> list[tuple[str, set[str], Any]]:
    """(path, methods, dependant) of every API route, including those of included routers."""
    return [
        (context.path, set(context.methods or ()), context.dependant)
        for context in routing.iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute) and context.path is not None
    ]


def _dependencies(dependant: Any) -> list[Any]:
    found = []
    stack = list(dependant.dependencies)
    while stack:
        dep = stack.pop()
        found.append(dep)
        stack.extend(dep.dependencies)
    return found
