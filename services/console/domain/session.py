"""The browser session: the bearer token in an HttpOnly cookie, and the CSRF rules of every POST.

The cookie holds the person's own driftloop token (HttpOnly, so page scripts cannot read
it; SameSite=Strict, so no other site's page can send it). Every form carries a CSRF
value derived from that token with HMAC: a page on another origin can neither read the
cookie nor compute the value, and a POST whose ``Origin`` names another site is refused
before anything else, which also covers the login form (no session yet).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

COOKIE = "driftloop_session"
CSRF_FIELD = "csrf"


def csrf_value(token: str) -> str:
    """The CSRF value of the session holding ``token``."""
    return hmac.new(token.encode(), b"driftloop-console-csrf", hashlib.sha256).hexdigest()


def csrf_ok(token: str, submitted: str | None) -> bool:
    return submitted is not None and hmac.compare_digest(csrf_value(token), submitted)


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """Whether a POST comes from the console's own pages: its ``Origin`` (or, without one, its
    ``Referer``) must name the host the request was sent to. Neither header: refused."""
    source = origin if origin and origin != "null" else referer
    if not source or not host:
        return False
    return urlsplit(source).netloc == host


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never ``//evil`` or ``https://…``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/models"
    return target
