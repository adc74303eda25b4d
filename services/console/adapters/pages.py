"""Rendering: the Jinja2 templates (autoescaped) and the page every route answers with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from services.console.adapters.sessions import Person
from services.console.domain.session import CSRF_FIELD, csrf_value

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent.parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _number(value: Any) -> Any:
    """Metrics with four significant digits; anything else as it is."""
    return f"{value:.4g}" if isinstance(value, float) else value


_env.filters["num"] = _number


def page(request: Request, template: str, who: Person | None, *, status: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(
        who=who, csrf=csrf_value(who.token) if who else "", csrf_field=CSRF_FIELD, path=request.url.path, **context
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


#: No script runs on these pages, none may be injected, and no other site may frame them.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
