"""The five services' HTTP APIs, called with the signed-in person's own token.

Every answer the console shows comes from here, and every error a service gives
comes back as the project's own error (its status and message kept), so a page can
say "no model 'x' in the registry" instead of failing.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from libs.common.errors import BadRequest, Conflict, DriftloopError, Forbidden, NotFound, Unauthorized
from services.console.settings import ConsoleSettings


class BackendUnavailable(DriftloopError):
    """A service did not answer (down, starting, or too slow)."""

    status_code = 502
    code = "backend_unavailable"


class BackendError(DriftloopError):
    """A service answered with an error the console has no better name for."""

    status_code = 502
    code = "backend_error"


_BY_STATUS: dict[int, type[DriftloopError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 422: BadRequest,
}  # fmt: skip


class Backends:
    """One HTTP client for the five services."""

    def __init__(self, settings: ConsoleSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.urls = {
            "ingest": settings.ingest_url, "trainer": settings.trainer_url, "registry": settings.registry_url,
            "serving": settings.serving_url, "monitor": settings.monitor_url,
        }  # fmt: skip
        self.client = httpx.AsyncClient(timeout=settings.request_timeout_s, transport=transport)

    async def close(self) -> None:
        await self.client.aclose()

    async def get(self, service: str, path: str, token: str | None, **params: Any) -> Any:
        """The JSON answer of ``GET path`` on ``service``."""
        return (await self._call("GET", service, path, token, params=params)).json()

    async def get_optional(self, service: str, path: str, token: str | None, **params: Any) -> Any:
        """Like :meth:`get`, but None where the service says 404 (a model not monitored yet, say)."""
        try:
            return await self.get(service, path, token, **params)
        except NotFound:
            return None

    async def text(self, service: str, path: str, token: str | None) -> str:
        return (await self._call("GET", service, path, token)).text

    async def put(self, service: str, path: str, token: str, body: dict[str, Any], idempotency_key: str) -> Any:
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return (await self._call("PUT", service, path, token, json=body, headers=headers)).json()

    async def delete(self, service: str, path: str, token: str, **params: Any) -> Any:
        return (await self._call("DELETE", service, path, token, params=params)).json()

    async def _call(
        self, method: str, service: str, path: str, token: str | None, headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:  # fmt: skip
        url = self.urls[service] + path
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        try:
            answer = await self.client.request(method, url, headers=sent, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"the {service} service does not answer at {self.urls[service]} "
                                     f"({type(exc).__name__})", service=service) from exc  # fmt: skip
        if answer.status_code < 400:
            return answer
        raise _error(service, answer)


def _error(service: str, answer: httpx.Response) -> DriftloopError:
    try:
        message = str(answer.json().get("message") or answer.text[:300])
    except (ValueError, AttributeError):
        message = answer.text[:300]
    cls = _BY_STATUS.get(answer.status_code)
    if cls is None:
        return BackendError(f"the {service} service answered {answer.status_code}: {message}", service=service)
    return cls(message, service=service)
