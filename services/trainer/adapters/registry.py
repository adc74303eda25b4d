"""The registry's HTTP API, as batch predictions need it: which version an alias or number names.

The registry owns versions and aliases; the trainer asks it rather than keep a
copy. The trainer calls it with a ``reader`` token: the configured one, else
one it issues itself in the shared token table (as serving does), renewed
when the registry refuses it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from libs.common import auth
from libs.common.auth import Role
from libs.common.errors import NotFound, TransientError
from libs.common.service import Runtime
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


class RegistryUnavailable(TransientError):
    code = "registry_unavailable"


class Registry:
    def __init__(self, rt: Runtime, settings: TrainerSettings) -> None:
        self.rt, self.settings = rt, settings
        self._client: httpx.AsyncClient | None = None
        self._token: str | None = settings.registry_token.get_secret_value() if settings.registry_token else None

    async def version(self, model: str, *, version: int | None, alias: str | None) -> dict[str, Any]:
        """The registry's record of ``model`` at ``version`` or ``alias``; NotFound naming the field at fault."""
        path = f"/v1/models/{model}/" + (f"versions/{version}" if version is not None else f"aliases/{alias}")
        answer = await self._get(path)
        if answer.status_code == 404:
            models = await self._get(f"/v1/models/{model}/versions")
            if models.status_code == 404:
                raise NotFound(f"model: the registry has no model {model!r}", field="model", model=model)
            if version is not None:
                raise NotFound(f"version: model {model!r} has no version {version}", field="version", version=version)
            raise NotFound(f"alias: model {model!r} has no {alias!r} alias", field="alias", alias=alias)
        if answer.status_code != 200:
            raise RegistryUnavailable(f"the registry answered {answer.status_code} for {path}")
        record: dict[str, Any] = answer.json()
        return record

    async def _get(self, path: str) -> httpx.Response:
        client = await self._connected()
        try:
            answer = await client.get(path, headers=await self._headers())
            if answer.status_code == 401 and self.settings.registry_token is None:  # our own token expired
                self._token = None
                answer = await client.get(path, headers=await self._headers())
        except (httpx.HTTPError, OSError) as exc:
            raise RegistryUnavailable(f"the registry at {self.settings.registry_url} is not reachable: {exc}") from exc
        return answer

    async def _headers(self) -> dict[str, str]:
        if self._token is None:
            issued = await auth.issue(
                self.rt.auth.db, "service:trainer", [Role.READER], created_by="trainer",
                expires_at=datetime.now(UTC) + timedelta(days=1),
            )  # fmt: skip
            self._token = issued.token
        return {"Authorization": f"Bearer {self._token}"}

    async def _connected(self) -> httpx.AsyncClient:
        if self._client is None:  # made on a thread: its TLS context reads the CA bundle (~100 ms of CPU)
            self._client = await asyncio.to_thread(httpx.AsyncClient, base_url=self.settings.registry_url, timeout=10)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
