"""OIDC/JWT bearer tokens: accepted only when signed by a key of the configured JWKS file, for the
configured issuer and audience, unexpired; roles from a claim; every forgery refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from libs.common import jwt_auth
from libs.common.auth import Authenticator, AuthSettings, Role
from libs.common.errors import Unauthorized
from libs.common.jwt_auth import JwtRefused, JwtVerifier

ISSUER = "https://id.bank.example/realms/ml"


def jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    doc = json.loads(algorithm.to_jwk(key.public_key()))
    return {**doc, "kid": kid, "use": "sig"}


@pytest.fixture
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
    }


@pytest.fixture
def jwks(tmp_path: Path, keys: dict[str, Any]) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(keys["rsa"], "rsa-1"), jwk(keys["ec"], "ec-1")]}))
    return path


def verifier(jwks: Path, **overrides: Any) -> JwtVerifier:
    options: dict[str, Any] = {"issuer": ISSUER, "audience": "driftloop", "jwks_file": str(jwks),
                               "algorithms": ["RS256", "ES256"], **overrides}  # fmt: skip
    return JwtVerifier(**options)


def token(key: Any, kid: str | None, algorithm: str = "RS256", **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": "driftloop", "sub": "alice", "exp": int(time.time()) + 300, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm,
                      headers={"kid": kid} if kid else None)  # fmt: skip


def test_a_valid_token_names_its_principal_and_roles(jwks: Path, keys: dict[str, Any]) -> None:
    check = verifier(jwks, trusted_claim="driftloop_trusted")
    found = check.verify(token(keys["rsa"], "rsa-1", roles=["approver", "offline_access", "reader"]))
    assert found.principal == "alice"
    assert found.roles == ("approver", "offline_access", "reader")
    assert found.trusted is False
    ec_token = token(keys["ec"], "ec-1", "ES256", sub="crm-export", roles="producer", driftloop_trusted=True)
    found = check.verify(ec_token)
    assert (found.principal, found.roles, found.trusted) == ("crm-export", ("producer",), True)


def test_roles_can_come_from_a_nested_claim(jwks: Path, keys: dict[str, Any]) -> None:
    check = verifier(jwks, roles_claim="realm_access.roles", principal_claim="preferred_username")
    found = check.verify(token(keys["rsa"], "rsa-1", realm_access={"roles": ["operator"]}, preferred_username="bob"))
    assert (found.principal, found.roles) == ("bob", ("operator",))
    assert check.verify(token(keys["rsa"], "rsa-1", preferred_username="carol")).roles == ()


@pytest.mark.parametrize(
    ("forge", "why"),
    [
        (lambda k: token(k["rsa"], "rsa-1", exp=int(time.time()) - 3600), "expired"),
        (lambda k: token(k["rsa"], "rsa-1", iss="https://evil.example"), "issuer"),
        (lambda k: token(k["rsa"], "rsa-1", aud="another-app"), "Audience"),
        (lambda k: token(k["rsa"], "rsa-1", sub=None), "sub"),
        (lambda k: token(k["rsa"], "rsa-1", exp=None), "exp"),
        (lambda k: token(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-1"), "Signature"),
        (lambda k: token(k["rsa"], "rsa-9"), "not one of the issuer's keys"),
        (
            lambda k: token(k["ec"], "rsa-1", "ES256"),
            "does not fit key 'rsa-1'",
        ),  # an EC signature under the RSA key's id
        (
            lambda k: jwt.encode(
                {"iss": ISSUER, "aud": "driftloop", "sub": "x", "exp": int(time.time()) + 60},
                None,  # type: ignore[arg-type]
                algorithm="none",
                headers={"kid": "rsa-1"},
            ),
            "alg value is not allowed",
        ),
    ],
)
def test_forged_and_stale_tokens_are_refused(jwks: Path, keys: dict[str, Any], forge: Any, why: str) -> None:
    with pytest.raises(JwtRefused, match=why):
        verifier(jwks).verify(forge(keys))


def test_the_public_key_cannot_be_used_as_an_hmac_secret(jwks: Path, keys: dict[str, Any]) -> None:
    """Algorithm confusion: HS256 keyed with the (public) RSA key must not verify."""
    public_pem = (
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    claims = {"iss": ISSUER, "aud": "driftloop", "sub": "mallory", "exp": int(time.time()) + 60, "roles": ["admin"]}

    def b64(data: dict[str, Any] | bytes) -> str:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signed = b64({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}) + "." + b64(claims)
    hs = signed + "." + b64(hmac.new(public_pem, signed.encode(), hashlib.sha256).digest())
    with pytest.raises(JwtRefused, match="alg value is not allowed"):
        verifier(jwks).verify(hs)
    with pytest.raises(ValueError, match="asymmetric"):
        verifier(jwks, algorithms=["RS256", "HS256"])


def test_a_rotated_key_is_picked_up_from_the_file(
    jwks: Path, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    check = verifier(jwks)
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(JwtRefused, match="not one of the issuer's keys"):
        check.verify(token(new, "rsa-2"))
    jwks.write_text(json.dumps({"keys": [jwk(keys["rsa"], "rsa-1"), jwk(new, "rsa-2")]}))
    with pytest.raises(JwtRefused):  # the file was read a moment ago: not again yet (a flood of kids is cheap)
        check.verify(token(new, "rsa-2"))
    monkeypatch.setattr(jwt_auth, "RELOAD_S", 0.0)
    assert check.verify(token(new, "rsa-2")).principal == "alice"


async def test_the_authenticator_takes_jwts_next_to_its_own_tokens(jwks: Path, keys: dict[str, Any]) -> None:
    settings = AuthSettings(jwt_issuer=ISSUER, jwt_audience="driftloop", jwt_jwks_file=str(jwks))
    authenticator = Authenticator(settings)
    principal = await authenticator.verify(token(keys["rsa"], "rsa-1", roles=["admin"]))
    assert principal.name == "alice"
    assert principal.can(Role.APPROVER)
    assert principal.trusted  # an admin is always trusted
    assert principal.token_id.startswith("jwt_")
    with pytest.raises(Unauthorized, match="expired"):
        await authenticator.verify(token(keys["rsa"], "rsa-1", exp=int(time.time()) - 3600))
    assert Authenticator(AuthSettings()).jwt is None  # off unless an issuer is configured
    with pytest.raises(ValueError, match="AUDIENCE"):
        Authenticator(AuthSettings(jwt_issuer=ISSUER, jwt_jwks_file=str(jwks)))
