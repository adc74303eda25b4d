"""OIDC / JWT bearer tokens, verified offline against the issuer's published keys.

An organisation with an identity provider (Keycloak, Entra ID, Okta, Dex …) can let its
people and workloads call driftloop with the access tokens the provider already issues,
next to driftloop's own ``dl_`` tokens. A JWT is accepted when:

- its signature verifies under the key its ``kid`` names in the configured JWKS file, with an
  algorithm from the allowed list: asymmetric ones only, never ``none`` or an HMAC (with an
  HMAC, the published keys would be the signing secret);
- ``iss`` is the configured issuer, ``aud`` holds the configured audience, ``exp`` lies ahead
  (``nbf`` and ``iat`` are honoured, with a small leeway for clocks);
- it names its principal (the ``sub`` claim unless configured otherwise).

Roles come from one claim (``roles``, or a dotted path such as Keycloak's
``realm_access.roles``); names that are not driftloop roles are ignored, and a token with none
can still read. A principal is trusted when the configured boolean claim says so (or it is an
admin), as with ``driftloop token create --trusted``.

The keys are read from a file and never fetched at run time: the services need no route to the
provider, and whoever can meddle with the network cannot swap them. To rotate, write the
provider's new JWKS into the file (a CronJob or a sidecar); a token naming a ``kid`` that is not
loaded makes the verifier read the file again, at most once every ``RELOAD_S`` seconds.

A JWT cannot be revoked before it expires; keep their lifetime short (providers issue access
tokens for minutes) and use ``dl_`` tokens, which can be revoked, for long-lived accounts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

log = logging.getLogger(__name__)

#: Asymmetric algorithms only; ``none`` and the HMACs are refused whatever the settings say.
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
#: Smallest interval between two reads of the JWKS file prompted by unknown key ids.
RELOAD_S = 10.0
LEEWAY_S = 30
#: Verified tokens kept in memory (each until it expires); beyond this the cache starts afresh.
CACHE_SIZE = 10_000


class JwtRefused(Exception):
    """Why a JWT is not accepted (the message is safe to show the caller)."""


@dataclass(frozen=True)
class VerifiedJwt:
    """What a valid JWT says about its bearer."""

    principal: str
    roles: tuple[str, ...]
    trusted: bool
    token_id: str
    expires_at: float


class JwtVerifier:
    """Checks JWTs against one issuer, one audience and the keys of a JWKS file."""

    def __init__(
        self, *, issuer: str, audience: str, jwks_file: str, algorithms: Sequence[str], roles_claim: str = "roles",
        principal_claim: str = "sub", trusted_claim: str | None = None,
    ) -> None:  # fmt: skip
        refused = set(algorithms) - ASYMMETRIC
        if refused or not algorithms:
            raise ValueError(
                f"JWT algorithms must be asymmetric ones of {sorted(ASYMMETRIC)}; refused: {sorted(refused)}"
            )
        self.issuer, self.audience, self.algorithms = issuer, audience, list(algorithms)
        self.jwks_file = Path(jwks_file)
        self.roles_claim, self.principal_claim, self.trusted_claim = roles_claim, principal_claim, trusted_claim
        self._keys: dict[str, Any] = {}
        self._read_at = float("-inf")
        self._cache: dict[str, VerifiedJwt] = {}
        self._load()
        if not self._keys:
            raise ValueError(f"{self.jwks_file} holds no usable signing key")

    def verify(self, token: str) -> VerifiedJwt:
        """What ``token`` says about its bearer, or :class:`JwtRefused`."""
        hit = self._cache.get(token)
        if hit is not None and hit.expires_at > time.time():
            return hit
        key_id = None
        try:
            header = jwt.get_unverified_header(token)
            key_id = header.get("kid")
            key = self._key(key_id)
            claims = jwt.decode(
                token, key, algorithms=self.algorithms, audience=self.audience, issuer=self.issuer, leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", self.principal_claim]},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            raise JwtRefused(f"the JWT is not valid: {exc}") from exc
        except (TypeError, ValueError) as exc:  # e.g. an ES256 header naming an RSA key: PyJWT's key check
            raise JwtRefused(f"the JWT is not valid: its algorithm does not fit key {key_id!r}") from exc
        verified = self._read(token, claims)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = verified
        return verified

    def _read(self, token: str, claims: dict[str, Any]) -> VerifiedJwt:
        principal = claims[self.principal_claim]
        if not isinstance(principal, str) or not principal or len(principal) > 128:
            raise JwtRefused(f"the JWT's {self.principal_claim!r} claim is not a principal name")
        roles = _claim(claims, self.roles_claim)
        if isinstance(roles, str):
            roles = roles.split()  # a space-separated list, like OAuth's "scope"
        names = tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else ()
        trusted = self.trusted_claim is not None and _claim(claims, self.trusted_claim) is True
        token_id = "jwt_" + str(claims.get("jti") or hashlib.sha256(token.encode()).hexdigest()[:12])
        return VerifiedJwt(principal, names, trusted, token_id[:64], float(claims["exp"]))

    def _key(self, kid: object) -> Any:
        if not isinstance(kid, str):
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))  # a provider with a single key may omit the kid
            raise jwt.InvalidTokenError("the token names no key (kid)")
        if kid not in self._keys and time.monotonic() - self._read_at >= RELOAD_S:
            self._load()  # a rotated key the file now holds
        if kid not in self._keys:
            raise jwt.InvalidTokenError(f"key {kid!r} is not one of the issuer's keys")
        return self._keys[kid]

    def _load(self) -> None:
        self._read_at = time.monotonic()
        try:
            document = json.loads(self.jwks_file.read_text())
            keys = jwt.PyJWKSet.from_dict(document).keys
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            log.warning("JWKS %s not readable (%s); keeping the keys loaded before", self.jwks_file, exc)
            return
        usable = {k.key_id or "": k.key for k in keys if k.public_key_use in (None, "sig")}
        self._keys = usable


def _claim(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` (``realm_access.roles``), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
