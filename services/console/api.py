"""The console's pages: sign-in, models, a model, a version, its drift report, training jobs, operations,
and the alias moves (approve, promote, roll back). Each page reads the services' APIs with the person's token."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import escape

from libs.common.errors import BadRequest, DriftloopError, Forbidden, NotFound, PayloadTooLarge, Unauthorized
from libs.common.http import MarkdownResponse
from services.console.adapters.backends import Backends
from services.console.adapters.pages import page
from services.console.adapters.sessions import Person, Sessions
from services.console.domain import ops
from services.console.domain.actions import actions_for, may
from services.console.domain.session import COOKIE, CSRF_FIELD, csrf_ok, csrf_value, safe_next, same_origin
from services.console.settings import ConsoleSettings

MOVABLE = ("champion", "canary", "shadow")
MAX_FORM_BYTES = 16 * 1024


class LoginRequired(Exception):
    """No valid session: the page sends the browser to the sign-in form, then back."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


def mount(app: FastAPI, backends: Backends, sessions: Sessions, settings: ConsoleSettings) -> None:
    people = _People(sessions)
    _mount_session(app, people, settings)
    _mount_models(app, backends, people)
    _mount_versions(app, backends, people)
    _mount_moves(app, backends, people)
    _mount_operations(app, backends, people)


class _People:
    """Who a request comes from: the session cookie's token, checked with the services."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    async def person(self, request: Request) -> Person:
        token = request.cookies.get(COOKIE)
        if not token:
            raise LoginRequired(request.url.path)
        try:
            who = await self.sessions.person(token)
        except Unauthorized as exc:
            raise LoginRequired(request.url.path) from exc
        request.state.who = who  # an error page still shows who is signed in, and the way out
        return who


def _mount_session(app: FastAPI, people: _People, settings: ConsoleSettings) -> None:
    """Sign in with a token (kept in an HttpOnly, SameSite=Strict cookie) and out."""

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/models", status_code=303)

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request, next: str = "/models") -> HTMLResponse:
        return page(request, "login.html", None, next=safe_next(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        _check_origin(request)
        form = await _form(request)
        token, target = form.get("token", "").strip(), safe_next(form.get("next"))
        try:
            if not token:
                raise Unauthorized("paste a driftloop token (driftloop token create --name you --role reader)")
            await people.sessions.person(token)
        except Unauthorized as exc:
            return page(request, "login.html", None, status=401, next=target, error=exc.message)
        answer = RedirectResponse(target, status_code=303)
        answer.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=settings.cookie_secure, path="/")
        return answer

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> RedirectResponse:
        who = await people.person(request)
        await _check_form(request, who)
        people.sessions.forget(who.token)
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=settings.cookie_secure)
        return answer


def _mount_models(app: FastAPI, backends: Backends, people: _People) -> None:
    """The models and a model's page (versions, aliases, audit, drift, jobs, live group metrics)."""

    @app.get("/models", include_in_schema=False)
    async def models(request: Request) -> HTMLResponse:
        who = await people.person(request)
        listed, monitored = await asyncio.gather(
            backends.get("registry", "/v1/models", who.token),
            _optional(backends.get("monitor", "/v1/models", who.token)),
        )
        live = {m["model"]: m for m in monitored or []}
        return page(request, "models.html", who, models=listed, live=live, monitor_down=monitored is None)

    @app.get("/models/{model}", include_in_schema=False)
    async def model(request: Request, model: str, done: str | None = None) -> HTMLResponse:
        who = await people.person(request)
        m = quote(model, safe="")
        versions, audit, drift, jobs, groups = await asyncio.gather(
            backends.get("registry", f"/v1/models/{m}/versions", who.token),
            backends.get("registry", f"/v1/models/{m}/audit", who.token, limit=100),
            _optional(backends.get_optional("monitor", f"/v1/models/{m}/drift", who.token), missing=False),
            _optional(backends.get("trainer", "/v1/training-jobs", who.token, model=model, limit=20)),
            _optional(backends.get_optional("monitor", f"/v1/models/{m}/groups", who.token)),
        )
        aliases = {a: v["version"] for v in versions for a in v["aliases"]}
        actions = {v["version"]: actions_for(v["version"], aliases, who.roles) for v in versions}
        champion: dict[str, Any] = next((v for v in versions if v["version"] == (groups or {}).get("champion")), {})
        return page(request, "model.html", who, model=model, versions=versions, audit=audit, drift=drift, jobs=jobs,
                    aliases=aliases, actions=actions, done=done, key=uuid.uuid4().hex, groups=groups,
                    champion_fairness=champion.get("fairness"))  # fmt: skip


def _mount_versions(app: FastAPI, backends: Backends, people: _People) -> None:
    """A version with its model and data cards (and the cards as Markdown), and a model's drift report."""

    @app.get("/models/{model}/versions/{version}", include_in_schema=False)
    async def version(request: Request, model: str, version: int) -> HTMLResponse:
        who = await people.person(request)
        path = f"/v1/models/{quote(model, safe='')}/versions/{version}"
        found = await backends.get("registry", path, who.token)
        cards = (
            await _optional(backends.get_optional("registry", f"{path}/card", who.token))
            if found.get("cards")
            else None
        )
        return page(request, "version.html", who, model=model, v=found, cards=cards)

    @app.get("/models/{model}/versions/{version}/card.md", include_in_schema=False)
    async def card_markdown(request: Request, model: str, version: int) -> MarkdownResponse:
        """The model card and the data card as one Markdown file, as the registry renders them."""
        who = await people.person(request)
        text = await backends.text(
            "registry", f"/v1/models/{quote(model, safe='')}/versions/{version}/card.md", who.token
        )
        name = f"{model}-v{version}-card.md".replace('"', "")
        return MarkdownResponse(text, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/models/{model}/drift", include_in_schema=False)
    async def drift(request: Request, model: str) -> HTMLResponse:
        who = await people.person(request)
        report = await backends.text("monitor", f"/v1/models/{quote(model, safe='')}/drift/report", who.token)
        back = f'<p><a href="/models/{escape(quote(model, safe=""))}">&larr; {escape(model)} in the console</a></p>'
        return HTMLResponse(report.replace("<body>", "<body>\n" + back, 1))


def _mount_moves(app: FastAPI, backends: Backends, people: _People) -> None:
    """The alias moves a person's roles allow (promote, approve, canary, shadow, end), from CSRF-checked forms."""

    @app.post("/models/{model}/aliases/{alias}", include_in_schema=False)
    async def move(request: Request, model: str, alias: str) -> RedirectResponse:
        who = await people.person(request)
        form = await _check_form(request, who)
        if alias not in MOVABLE:
            raise NotFound(f"the console moves {', '.join(MOVABLE)}, not {alias!r}", alias=alias)
        target, reason = _int(form.get("version"), "version"), form.get("reason", "").strip()
        m = quote(model, safe="")
        versions = await backends.get("registry", f"/v1/models/{m}/versions", who.token)
        aliases = {a: v["version"] for v in versions for a in v["aliases"]}
        allowed = [a for a in actions_for(target, aliases, who.roles) if a.alias == alias]
        if not allowed:
            raise Forbidden(f"{who.name} may not move {alias} of {model!r} to version {target} "
                            f"(roles: {', '.join(who.roles) or 'none'})")  # fmt: skip
        _check_reason(reason)
        body: dict[str, Any] = {"version": target, "reason": reason}
        if alias == "canary" and form.get("share"):
            body["share"] = _number(form["share"], "share")
        await backends.put("registry", f"/v1/models/{m}/aliases/{alias}", who.token, body, form.get("key", ""))
        done = urlencode({"done": f"{allowed[0].kind.value}: {alias} is now version {target}"})
        return RedirectResponse(f"/models/{m}?{done}", status_code=303)

    @app.post("/models/{model}/aliases/{alias}/end", include_in_schema=False)
    async def end(request: Request, model: str, alias: str) -> RedirectResponse:
        who = await people.person(request)
        form = await _check_form(request, who)
        if alias not in ("canary", "shadow"):
            raise NotFound(f"only a canary or a shadow can be ended, not {alias!r}", alias=alias)
        if not may(who.roles, "operator"):
            raise Forbidden(f"ending a {alias} needs the role 'operator', which {who.name} lacks")
        reason = form.get("reason", "").strip()
        _check_reason(reason)
        m = quote(model, safe="")
        await backends.delete("registry", f"/v1/models/{m}/aliases/{alias}", who.token, reason=reason)
        return RedirectResponse(f"/models/{m}?{urlencode({'done': f'end: the {alias} is ended'})}", status_code=303)


def _mount_operations(app: FastAPI, backends: Backends, people: _People) -> None:
    """Training jobs, and the operations page: consumer lag, dead letters with their reasons, services down."""

    @app.get("/jobs", include_in_schema=False)
    async def jobs(request: Request, model: str | None = None) -> HTMLResponse:
        who = await people.person(request)
        params: dict[str, Any] = {"limit": 100} | ({"model": model} if model else {})
        listed = await backends.get("trainer", "/v1/training-jobs", who.token, **params)
        return page(request, "jobs.html", who, jobs=listed, model=model)

    @app.get("/ops", include_in_schema=False)
    async def operations(request: Request) -> HTMLResponse:
        who = await people.person(request)
        names = list(backends.urls)
        letters_read = _optional(backends.get("monitor", "/v1/dead-letters", who.token, per_topic=5))
        *texts, letters = await asyncio.gather(
            *(_optional(backends.text(n, "/metrics", who.token)) for n in names), letters_read
        )
        lag = ops.lag_by_topic(ops.consumer_lag(texts[names.index("monitor")] or ""))
        dead = [row for name, text in zip(names, texts, strict=True) if text for row in ops.dead_lettered(name, text)]
        down = [name for name, text in zip(names, texts, strict=True) if text is None]
        return page(request, "ops.html", who, lag=lag, dead=dead, down=down, operator=may(who.roles, "operator"),
                    letters=letters)  # fmt: skip


async def _check_form(request: Request, who: Person) -> dict[str, str]:
    _check_origin(request)
    form = await _form(request)
    if not csrf_ok(who.token, form.get(CSRF_FIELD)):
        raise Forbidden("the form's CSRF value is missing or wrong: reload the page and try again")
    return form


def _check_origin(request: Request) -> None:
    if not same_origin(request.headers.get("origin"), request.headers.get("referer"), request.headers.get("host")):
        raise Forbidden("a form posted from another site (or without an Origin header) is refused")


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PayloadTooLarge(f"a console form is at most {MAX_FORM_BYTES} bytes")
    return {k: v[0] for k, v in parse_qs(body.decode(errors="replace"), keep_blank_values=True).items()}


def _check_reason(reason: str) -> None:
    if len(reason) < 3:
        raise BadRequest("say why in the reason field (at least 3 characters); it goes into the audit trail")


def _number(value: str, field: str) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise BadRequest(f"{field}: {value!r} is not a number", field=field) from exc


def _int(value: str | None, field: str) -> int:
    try:
        return int(value or "")
    except ValueError as exc:
        raise BadRequest(f"{field}: {value!r} is not a whole number", field=field) from exc


async def _optional(call: Any, missing: Any = None) -> Any:
    """A part of a page that may fail alone: None (``missing``) when its service is down or refuses."""
    try:
        return await call
    except DriftloopError as exc:
        if isinstance(exc, Unauthorized):
            raise
        return missing


__all__ = ["CSRF_FIELD", "LoginRequired", "csrf_value", "mount"]
