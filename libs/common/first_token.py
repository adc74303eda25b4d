"""Issue a bearer token from inside a service's container, where the driftloop CLI is not installed.

    docker compose run --rm registry python -m libs.common.first_token --name me --role admin

The image carries the services only, yet someone must hold the first admin token of a
compose or Kubernetes deployment (nothing answers without one). This does what
``driftloop token create`` does, with the database URL of the container it runs in
(compose's entrypoint exports the service's own): it stores the token's hash and prints
the token once. Further tokens are best made with that token's holder's CLI.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from libs.common import auth
from libs.common.errors import DriftloopError
from libs.common.settings import DatabaseSettings


async def create(database: DatabaseSettings, name: str, roles: Sequence[str], *, trusted: bool) -> auth.IssuedToken:
    """A new token for ``name`` with ``roles``, its hash stored in the shared token table."""
    parsed = auth.parse_roles(r for value in roles for r in value.split(","))
    pool = await auth.connect(database, auth.AuthSettings())
    try:
        return await auth.issue(pool, name, parsed, created_by="first_token", trusted=trusted)
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the principal: who or what uses the token")
    parser.add_argument("--role", action="append", required=True, help="reader … admin (repeat, or comma-separated)")
    parser.add_argument("--trusted", action="store_true", help="its labels and rows may promote without an approver")
    args = parser.parse_args(argv)
    try:
        issued = asyncio.run(create(DatabaseSettings(), args.name, args.role, trusted=args.trusted))
    except DriftloopError as exc:
        parser.exit(2, f"{exc.message}\n")
    print(issued.token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
