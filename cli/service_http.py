"""The CLI's side of a service's HTTP API: its address, the CLI's token, and its answers.

The address is ``--url`` (or the command's ``$DRIFTLOOP_<SERVICE>_URL``, which typer reads into
it), else the one ``driftloop up`` started, else the service's default port on this machine; the
token is ``$DRIFTLOOP_TOKEN``, else the one ``driftloop up`` wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from cli import tokens
from cli.supervisor import DEFAULT_PORTS, UpState

console = Console(stderr=True)


def base_url(service: str, home: Path, url: str | None) -> str:
    """Where ``service`` answers: ``url``, else where `driftloop up` started it, else its default port."""
    state = UpState.read(home)
    found = url or (state.services.get(service) if state else None) or f"http://127.0.0.1:{DEFAULT_PORTS[service]}"
    return found.rstrip("/")


def client(service: str, home: Path, url: str | None, timeout: float = 60) -> httpx.Client:
    """An HTTP client for ``service`` carrying the CLI's token."""
    token = tokens.read_token(home)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base_url(service, home, url), headers=headers, timeout=timeout)


def message(response: httpx.Response) -> str:
    """What a refusal says: its JSON ``message``, else its text."""
    try:
        return str(response.json().get("message", response.text))
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return response.text


def answer(response: httpx.Response) -> Any:
    """The JSON body of a success; an error's message on stderr and exit code 1 otherwise."""
    if response.is_success:
        return response.json()
    console.print(f"[red]{response.status_code}[/] {escape(message(response))}", highlight=False)
    raise typer.Exit(1)


def call(
    http: httpx.Client, method: str, path: str, *, read: Callable[[httpx.Response], Any] = answer, **options: Any
) -> Any:
    """``read`` (:func:`answer`) of the answer to a request; a service that cannot be reached is said so on
    stderr, exit code 1."""
    try:
        response = http.request(method, path, **options)
    except httpx.TransportError as exc:
        console.print(f"[red]{http.base_url} not reachable:[/] {escape(str(exc) or type(exc).__name__)}")
        raise typer.Exit(1) from exc
    return read(response)
