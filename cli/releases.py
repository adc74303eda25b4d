"""Release commands: ``driftloop models``, ``promote``, ``rollback`` and ``canary``.

They talk to the registry (aliases) and the monitor (live metrics) over HTTP with
the CLI's token (``$DRIFTLOOP_TOKEN``, else the one ``driftloop up`` wrote), at
the addresses of the running ``driftloop up`` or ``$DRIFTLOOP_REGISTRY_URL`` /
``$DRIFTLOOP_MONITOR_URL``. Every refusal is the service's own message, and the
exit status is 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cli import service_http

console = Console(stderr=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Reason = Annotated[str, typer.Option("--reason", help="Why; kept in the registry's audit log.")]
Home = Annotated[Path, typer.Option("--home", envvar="DRIFTLOOP_HOME", help="State directory.")]


def client(service: str, home: Path) -> httpx.Client:
    """A client for ``service``: ``$DRIFTLOOP_<SERVICE>_URL``, else the running `driftloop up`'s, else the default."""
    return service_http.client(service, home, os.environ.get(f"DRIFTLOOP_{service.upper()}_URL"), timeout=10)


def _answer(response: httpx.Response, as_json: bool) -> Any:
    """The JSON answer; a refusal is printed (the service's message) and exits 1."""
    try:
        body = response.json()
    except ValueError:
        body = {"error": "not_json", "message": response.text[:500]}
    if response.status_code >= 400:
        if as_json:
            print(json.dumps({"status": response.status_code, **body}))
        else:
            console.print(f"[red]{response.status_code} {body.get('error', '')}[/]: {body.get('message', body)}")
        raise typer.Exit(1)
    return body


def _call(service: str, home: Path, method: str, path: str, as_json: bool, **kwargs: Any) -> Any:
    with client(service, home) as http:
        return service_http.call(http, method, path, read=lambda response: _answer(response, as_json), **kwargs)


def models(home: Home = Path(".driftloop"), as_json: Json = False) -> None:
    """Models with their versions, aliases, canary share and live metrics per version."""
    listing = _call("registry", home, "GET", "/v1/models", as_json)
    out = []
    for entry in listing:
        versions = _call("registry", home, "GET", f"/v1/models/{entry['model']}/versions", as_json)
        live = _live(home, entry["model"])
        out.append({**entry, "versions": [_version(v) for v in versions], "live": live})
    if as_json:
        print(json.dumps(out, indent=2))
        return
    for model in out:
        console.print(_table(model))


def _live(home: Path, model: str) -> dict[str, Any] | None:
    """The monitor's live metrics per version (None when the model is not monitored or the monitor is away)."""
    try:
        with client("monitor", home) as http:
            answer = http.get(f"/v1/models/{model}/versions")
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


def _version(v: dict[str, Any]) -> dict[str, Any]:
    metric = v["primary_metric"]
    return {"version": v["version"], "aliases": v["aliases"], "decision": v["decision"],
            "holdout": {metric: v["metrics"].get(metric)}, "created_at": v["created_at"]}  # fmt: skip


def _table(model: dict[str, Any]) -> Table:
    canary = model.get("canary")
    title = f"{model['model']} (dataset {model['dataset']})"
    if canary:
        title += f" — canary v{canary['version']} at {canary['share']:g}%{'' if canary['judged'] else ' (A/B)'}"
    live = model.get("live") or {}
    served = {(v["version"], v["shadow"]): v for v in live.get("versions", [])}
    table = Table("version", "aliases", "decision", "holdout", "live (labels)", "vs champion (95% interval)",
                  title=title)  # fmt: skip
    challengers = {c["version"]: c for c in live.get("challengers", {}).values()}
    for v in model["versions"]:
        scores = [served[k] for k in ((v["version"], False), (v["version"], True)) if k in served]
        live_text = ", ".join(f"{s['mean']:.4f} ({s['labels']}{' shadow' if s['shadow'] else ''})" for s in scores)
        compared = (challengers.get(v["version"]) or {}).get("comparison")
        versus = (f"{compared['difference']:+.4f} [{compared['lower']:+.4f}, {compared['upper']:+.4f}]"
                  if compared else "")  # fmt: skip
        holdout = ", ".join(f"{k} {x:.4f}" for k, x in v["holdout"].items() if x is not None)
        table.add_row(str(v["version"]), ", ".join(v["aliases"]), v["decision"], holdout, live_text, versus)
    return table


def _move(home: Path, model: str, alias: str, body: dict[str, Any], as_json: bool) -> None:
    moved = _call("registry", home, "PUT", f"/v1/models/{model}/aliases/{alias}", as_json, json=body)
    if as_json:
        print(json.dumps(moved))
    else:
        before = f"v{moved['from_version']}" if moved["from_version"] is not None else "nothing"
        console.print(f"{model}: {alias} {before} → v{moved['to_version']}")


def promote(model: str, version: int, reason: Reason, home: Home = Path(".driftloop"), as_json: Json = False) -> None:
    """Make VERSION the champion of MODEL (needs the approver role)."""
    _move(home, model, "champion", {"version": version, "reason": reason}, as_json)


def rollback(model: str, version: int, reason: Reason, home: Home = Path(".driftloop"), as_json: Json = False) -> None:
    """Put MODEL's champion back to the earlier VERSION; if VERSION is the running canary, end the canary."""
    listing = _call("registry", home, "GET", "/v1/models", as_json)
    aliases: dict[str, int] = next((m["aliases"] for m in listing if m["model"] == model), {})
    if aliases.get("canary") == version:
        ended = _call("registry", home, "DELETE", f"/v1/models/{model}/aliases/canary", as_json,
                      params={"reason": reason})  # fmt: skip
        _emit(ended, as_json, f"{model}: canary v{version} ended, its traffic back on the champion")
        return
    champion = aliases.get("champion")
    if champion is not None and version >= champion:
        message = f"v{version} is not earlier than the champion v{champion}: use `driftloop promote` to move forward"
        _emit({"status": 422, "error": "validation_failed", "message": message}, as_json, f"[red]{message}[/]")
        raise typer.Exit(1)
    _move(home, model, "champion", {"version": version, "reason": reason}, as_json)


def canary(
    model: str,
    version: Annotated[int | None, typer.Argument(help="The version to release as a canary.")] = None,
    share: Annotated[float | None, typer.Option(help="Percentage of traffic (0-100); default: the registry's.")] = None,
    ab: Annotated[
        bool, typer.Option("--ab", help="A/B test: fixed share, no automatic promotion or rollback.")
    ] = False,
    stop: Annotated[bool, typer.Option("--stop", help="End MODEL's canary (traffic back to the champion).")] = False,
    reason: Annotated[str, typer.Option(help="Why; kept in the registry's audit log.")] = "canary release",
    home: Home = Path(".driftloop"),
    as_json: Json = False,
) -> None:
    """Send --share percent of MODEL's traffic to VERSION, judged live against the champion (or --stop it)."""
    if stop:
        ended = _call("registry", home, "DELETE", f"/v1/models/{model}/aliases/canary", as_json,
                      params={"reason": reason})  # fmt: skip
        _emit(ended, as_json, f"{model}: canary ended (was v{ended['from_version']})")
        return
    if version is None:
        console.print("[red]VERSION is needed (or --stop)[/]")
        raise typer.Exit(2)
    body: dict[str, Any] = {"version": version, "reason": reason, "judged": not ab}
    if share is not None:
        body["share"] = share
    _move(home, model, "canary", body, as_json)


def _emit(doc: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(doc))
    else:
        console.print(text)


def register(app: typer.Typer) -> None:
    """Add the release commands to the ``driftloop`` app."""
    for command in (models, promote, rollback, canary):
        app.command()(command)
