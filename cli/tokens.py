"""Tokens for the CLI and the embedded stack: ``<home>/token`` holds an admin
token that ``driftloop up`` creates (mode 0600) and the CLI and demo use."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from libs.common import auth
from libs.common.auth import AuthSettings, Role
from libs.common.errors import BadRequest
from libs.common.settings import DatabaseSettings

TOKEN_ENV = "DRIFTLOOP_TOKEN"
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def token_path(home: Path) -> Path:
    return home / "token"


def read_token(home: Path) -> str | None:
    """The token the CLI sends: ``$DRIFTLOOP_TOKEN``, else the one `driftloop up` wrote into ``home``."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    try:
        return token_path(home).read_text().strip() or None
    except OSError:
        return None


def write_token(home: Path, token: str) -> Path:
    """Write ``token`` readable by its owner only (created 0600, never world-readable for a moment)."""
    home.mkdir(parents=True, exist_ok=True)
    path = token_path(home)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    path.chmod(0o600)
    return path


async def ensure_admin_token(database: DatabaseSettings, home: Path) -> str:
    """The admin token in ``home``, still valid in the token table, or a new one written there."""
    pool = await auth.connect(database, AuthSettings())
    try:
        existing = token_path(home).read_text().strip() if token_path(home).exists() else ""
        if existing and await auth.lookup(pool, existing) is not None:
            return existing
        issued = await auth.issue(pool, "admin", [Role.ADMIN], created_by="driftloop up")
        write_token(home, issued.token)
        return issued.token
    finally:
        await pool.close()


def expiry(text: str | None) -> datetime | None:
    """``30d``, ``12h``, ``90m``, ``2w`` from now, or an ISO date/time; None: never."""
    if not text:
        return None
    match = _DURATION.match(text.strip())
    if match:
        return datetime.now(UTC) + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(f"--expires {text!r}: use 30d, 12h, 90m, 2w or an ISO date") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)
