"""The ``driftloop`` command: up, status, demo, tokens and operator tools."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cli import batch, datasets, ops, records, releases, tokens
from cli.demo import Demo, DemoConfig, DemoState
from cli.supervisor import CONSOLE, SERVICES, Supervisor, UpState, pid_alive
from devstack.embedded import port_open
from libs.common import auth
from libs.common.auth import AuthSettings
from libs.common.errors import DriftloopError
from libs.common.kafka import consumer_lag
from libs.common.kafka_security import client_options
from libs.common.service import ServiceSettings, ServiceSpec, build
from libs.common.settings import DatabaseSettings, KafkaSettings

app = typer.Typer(help="driftloop: drift detected, model retrained, judged and hot-swapped, with no human step.",
                  no_args_is_help=True, add_completion=False)  # fmt: skip
console = Console(stderr=True)

HomeOption = Annotated[Path, typer.Option("--home", envvar="DRIFTLOOP_HOME", help="State directory.")]
DEFAULT_HOME = Path(".driftloop")

#: Settings the demo gives the services it starts itself: the whole loop in minutes.
DEMO_ENV = {
    "DRIFTLOOP_TRAINER_MIN_ROWS_FIRST_MODEL": "2000",
    "DRIFTLOOP_TRAINER_MIN_NEW_ROWS": "1000000",  # only drift retrains during the demo
    "DRIFTLOOP_TRAINER_DRIFT_MIN_ROWS": "1500",
    "DRIFTLOOP_MONITOR_WINDOW_SIZE": "500",
}


@app.command()
def up(
    home: HomeOption = DEFAULT_HOME,
    json_logs: Annotated[bool, typer.Option(help="Services log JSON lines instead of text.")] = False,
) -> None:
    """Start PostgreSQL, the Kafka-compatible broker and the five services; Ctrl-C stops them all.

    With DRIFTLOOP_DATABASE_URL / DRIFTLOOP_KAFKA_BOOTSTRAP set, those are used and only the services start.
    """
    supervisor = Supervisor(home, json_logs=json_logs)
    _stop_on_sigterm()
    try:
        state = supervisor.start()
        console.print(_state_table(state))
        console.print(f"[bold green]driftloop is up.[/] Web console: [bold]{state.console}[/]")
        console.print("Ctrl-C stops everything.")
        while True:
            time.sleep(1)
            dead = [n for n in (*SERVICES, CONSOLE) if n not in supervisor.alive()]
            if dead:
                console.print(f"[red]service(s) exited: {', '.join(dead)}; stopping[/]")
                raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    finally:
        supervisor.stop()


@app.command()
def status(
    home: HomeOption = DEFAULT_HOME,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Say what `driftloop up` is running and whether each part is healthy."""
    state = UpState.read(home)
    if state is None or not pid_alive(state.pid):
        _emit({"running": False}, as_json, "[yellow]driftloop is not running[/] (start it with `driftloop up`)")
        raise typer.Exit(1)
    report = _health(state)
    healthy = all(part["healthy"] for part in report["parts"].values())
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        table = Table("part", "where", "healthy", title="driftloop status")
        for name, part in report["parts"].items():
            table.add_row(
                name, part["where"], "[green]yes[/]" if part["healthy"] else f"[red]no[/] {part.get('why', '')}"
            )
        console.print(table)
    raise typer.Exit(0 if healthy else 1)


@app.command()
def demo(
    home: HomeOption = DEFAULT_HOME,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stream.")] = 7,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 240.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one final JSON object instead of live progress.")
    ] = False,
    stationary: Annotated[int, typer.Option(help="Predictions before the drift is injected.")] = 3000,
    recovery: Annotated[int, typer.Option(help="Predictions measured on the retrained model.")] = 1500,
    drift: Annotated[
        str, typer.Option(help="What the drift changes: 'covariate+concept', or 'concept' (no feature moves).")
    ] = "covariate+concept",
    dataset: Annotated[
        str | None, typer.Option(help="Dataset and model name (default: churn-<run id>, new on every run).")
    ] = None,
) -> None:
    """Run the whole loop on synthetic data; exit 0 only if it closed (drift → retrain → promote → recover).

    Each run declares its own dataset and model, so the demo closes the loop again in the same home
    or against the same `driftloop up`.
    """
    if drift not in ("covariate+concept", "concept"):
        console.print(f"[red]--drift must be 'covariate+concept' or 'concept', not {drift!r}[/]")
        raise typer.Exit(2)
    config = DemoConfig(seed=seed, timeout_s=timeout, stationary_predictions=stationary, recovery_predictions=recovery,
                        drift=drift, dataset=dataset)  # type: ignore[arg-type]  # fmt: skip
    state = UpState.read(home)
    supervisor = None
    if state is None or not pid_alive(state.pid) or not _health(state)["healthy"]:
        run_home = home / "demo-run" if state is not None and pid_alive(state.pid) else home
        supervisor = Supervisor(run_home, ports=Supervisor.free_ports(), env=DEMO_ENV, log_to_files=True)
        if not as_json:
            console.print("starting the embedded stack and the five services…")
        try:
            state = supervisor.start()
        except RuntimeError as exc:
            console.print(f"[red]{exc}[/]")
            supervisor.stop()
            raise typer.Exit(2) from exc
    elif not as_json:
        console.print("using the running `driftloop up`")
    try:
        result = _run_demo(state, config, live=not as_json)
    finally:
        if supervisor is not None:
            supervisor.stop()
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print(_result_table(result))
        if supervisor is not None:
            console.print(f"service logs: {supervisor.home / 'logs'}")
    raise typer.Exit(0 if result["loop_closed"] else 1)


def _kafka_and_db(home: Path) -> tuple[str, DatabaseSettings, str]:
    """Where the operator commands look: the environment first, then a running `driftloop up`."""
    prefix = os.environ.get("DRIFTLOOP_KAFKA_TOPIC_PREFIX", "")
    state = UpState.read(home)
    bootstrap = os.environ.get("DRIFTLOOP_KAFKA_BOOTSTRAP") or (state.kafka_bootstrap if state else None)
    url = os.environ.get("DRIFTLOOP_DATABASE_URL") or (state.database_url if state else None)
    if not bootstrap:
        console.print("[red]no Kafka to look at:[/] set DRIFTLOOP_KAFKA_BOOTSTRAP or start `driftloop up`")
        raise typer.Exit(2)
    return bootstrap, DatabaseSettings(url=url or DatabaseSettings().url, connect_timeout_s=10), prefix


@app.command()
def lag(
    home: HomeOption = DEFAULT_HOME,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    watch: Annotated[float, typer.Option(help="Refresh every N seconds (0: once).")] = 0.0,
) -> None:
    """Consumer lag per group, topic and partition: committed offset, end offset, lag."""
    bootstrap, _, prefix = _kafka_and_db(home)
    while True:
        rows = asyncio.run(consumer_lag(bootstrap, prefix, client_options(KafkaSettings())))
        if as_json:
            print(json.dumps([r.to_dict() for r in rows]))
        else:
            table = Table(
                "group", "topic", "partition", "committed", "end", "lag", title=f"consumer lag {time.strftime('%X')}"
            )
            for r in rows:
                table.add_row(r.group, r.topic, str(r.partition), str(r.committed), str(r.end),
                              f"[red]{r.lag}[/]" if r.lag else "0")  # fmt: skip
            console.print(table)
        if not watch:
            return
        time.sleep(watch)


@app.command()
def topics(
    home: HomeOption = DEFAULT_HOME,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Topics with their partitions and retained messages."""
    bootstrap, _, prefix = _kafka_and_db(home)
    rows = asyncio.run(ops.topic_table(bootstrap, prefix))
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("topic", "partitions", "messages", title="topics")
    for row in rows:
        table.add_row(row["topic"], str(row["partitions"]), str(row["messages"]))
    console.print(table)


dlq_app = typer.Typer(help="Dead-lettered messages: list, show, replay.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
app.add_typer(batch.app, name="batch")
app.add_typer(records.app, name="records")
app.add_typer(datasets.app, name="datasets")


@dlq_app.command("list")
def dlq_list(
    home: HomeOption = DEFAULT_HOME,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every dead-lettered message with its reason and origin."""
    bootstrap, database, prefix = _kafka_and_db(home)
    letters = asyncio.run(ops.dead_letters(bootstrap, prefix))
    replayed = asyncio.run(ops.replayed_refs(database)) if letters else set()
    rows = [d.summary(d.ref in replayed) for d in letters]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("ref", "original", "group", "error", "reason", "replayed", title=f"{len(rows)} dead letters")
    for r in rows:
        table.add_row(r["ref"], r["original"], r["group"] or "", r["error_type"] or "", (r["reason"] or "")[:80],
                      "yes" if r["replayed"] else "")  # fmt: skip
    console.print(table)


@dlq_app.command("show")
def dlq_show(
    ref: Annotated[str, typer.Argument(help="topic:partition:offset")], home: HomeOption = DEFAULT_HOME
) -> None:
    """One dead letter in full: headers and body."""
    bootstrap, _, _ = _kafka_and_db(home)
    topic = ref.rsplit(":", 2)[0]
    letter = next((d for d in asyncio.run(ops.dead_letters(bootstrap, topic=topic)) if d.ref == ref), None)
    if letter is None:
        console.print(f"[red]no dead letter at {ref}[/]")
        raise typer.Exit(1)
    print(json.dumps({**letter.summary(), "headers": letter.headers,
                      "body": letter.value.decode(errors="replace")}, indent=2))  # fmt: skip


@dlq_app.command("replay")
def dlq_replay(
    ref: Annotated[str, typer.Argument(help="topic:partition:offset")],
    home: HomeOption = DEFAULT_HOME,
    actor: Annotated[str | None, typer.Option(help="Who replays (recorded).")] = None,
) -> None:
    """Send a dead letter back to its original topic (once) after its cause is fixed."""
    bootstrap, database, _ = _kafka_and_db(home)
    try:
        print(json.dumps(asyncio.run(ops.replay(bootstrap, database, ref, actor=actor))))
    except DriftloopError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc


token_app = typer.Typer(help="Bearer tokens: create, list, revoke.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _database(home: Path) -> DatabaseSettings:
    state = UpState.read(home)
    url = os.environ.get("DRIFTLOOP_DATABASE_URL") or (state.database_url if state else None)
    if not url:
        console.print("[red]no database to look at:[/] set DRIFTLOOP_DATABASE_URL or start `driftloop up`")
        raise typer.Exit(2)
    return DatabaseSettings(url=url, connect_timeout_s=10)


async def _with_tokens(home: Path, work: Any) -> Any:
    pool = await auth.connect(_database(home), AuthSettings())
    try:
        return await work(pool)
    finally:
        await pool.close()


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="The principal: who or what uses the token.")],
    role: Annotated[
        list[str], typer.Option("--role", help="reader, producer, predictor, operator, approver or admin (repeat).")
    ],
    expires: Annotated[str | None, typer.Option(help="30d, 12h, 90m, 2w or an ISO date; never when unset.")] = None,
    trusted: Annotated[
        bool, typer.Option(help="Its labels and rows may retrain and promote without an approver (upstream systems).")
    ] = False,
    home: HomeOption = DEFAULT_HOME,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a token; it is printed once and only its hash is stored."""
    try:
        roles = auth.parse_roles(r for value in role for r in value.split(","))
        until = tokens.expiry(expires)
        issued = asyncio.run(_with_tokens(home, lambda pool: auth.issue(
            pool, name, roles, created_by=os.environ.get("USER", "cli"), expires_at=until, trusted=trusted,
        )))  # fmt: skip
    except DriftloopError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(2) from exc
    doc = {"id": issued.id, "principal": issued.principal, "roles": sorted(r.value for r in issued.roles),
           "trusted": trusted, "expires_at": until.isoformat() if until else None, "token": issued.token}  # fmt: skip
    if as_json:
        print(json.dumps(doc))
        return
    console.print(f"token {issued.id} for {name} ({', '.join(doc['roles'])}); shown once:")
    print(issued.token)


@token_app.command("list")
def token_list(
    home: HomeOption = DEFAULT_HOME,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every token: id, principal, roles, expiry, revocation (never the secret)."""
    rows = asyncio.run(_with_tokens(home, auth.list_tokens))
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("id", "principal", "roles", "trusted", "created", "expires", "revoked", title=f"{len(rows)} tokens")
    for r in rows:
        expires, revoked = (r["expires_at"] or "never")[:19], (r["revoked_at"] or "")[:19]
        table.add_row(r["id"], r["principal"], ",".join(r["roles"]), "yes" if r["trusted"] else "no",
                      r["created_at"][:19], expires, revoked)  # fmt: skip
    console.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (tok_…), from `driftloop token list`.")],
    home: HomeOption = DEFAULT_HOME,
) -> None:
    """Revoke a token; every service refuses it within seconds."""
    try:
        asyncio.run(_with_tokens(home, lambda pool: auth.revoke(pool, token_id)))
    except DriftloopError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc
    console.print(f"revoked {token_id}")


@app.command()
def docs(out: Annotated[Path, typer.Option(help="Directory for the documents.")] = Path("docs/asyncapi")) -> None:
    """Write the AsyncAPI document of every service (the topics it consumes and publishes)."""
    from libs.common.asyncapi import document

    out.mkdir(parents=True, exist_ok=True)
    for name, (spec, settings) in service_specs().items():
        _, runtime = build(spec, settings)
        path = out / f"{name}.json"
        path.write_text(
            json.dumps(document(name, runtime.broker, spec.publishes, spec.description, spec.receives), indent=2) + "\n"
        )
        console.print(f"wrote {path}")


def service_specs() -> dict[str, tuple[ServiceSpec, ServiceSettings]]:
    """Each service's spec and default settings, built without starting anything."""
    from services.ingest import app as ingest
    from services.ingest.settings import IngestSettings
    from services.monitor import app as monitor
    from services.monitor.settings import MonitorSettings
    from services.registry import app as registry
    from services.registry.settings import RegistrySettings
    from services.serving import app as serving
    from services.serving.settings import ServingSettings
    from services.trainer import app as trainer
    from services.trainer.settings import TrainerSettings

    settings: list[tuple[str, Any, ServiceSettings]] = [
        ("ingest", ingest, IngestSettings()), ("trainer", trainer, TrainerSettings()),
        ("registry", registry, RegistrySettings()), ("serving", serving, ServingSettings()),
        ("monitor", monitor, MonitorSettings()),
    ]  # fmt: skip
    return {name: (module.spec(config), config) for name, module, config in settings}


def _run_demo(state: UpState, config: DemoConfig, *, live: bool) -> dict[str, Any]:
    prefix = os.environ.get("DRIFTLOOP_KAFKA_TOPIC_PREFIX", "")
    token = tokens.read_token(Path(state.home)) if state.home else None
    if not live:
        return asyncio.run(Demo(state.services, state.kafka_bootstrap, config, topic_prefix=prefix, token=token).run())
    with Live(console=console, refresh_per_second=4) as view:
        runner = Demo(state.services, state.kafka_bootstrap, config, topic_prefix=prefix, token=token,
                      on_update=lambda s: view.update(_progress(s)))  # fmt: skip
        return asyncio.run(runner.run())


def _progress(s: DemoState) -> Group:
    table = Table(title=f"driftloop demo — {s.phase}", show_header=False, min_width=70)
    table.add_row("elapsed", f"{time.monotonic() - s.started:.0f}s")
    table.add_row(
        "records sent / accepted / rejected", f"{s.records_sent} / {s.records_accepted} / {s.records_rejected}"
    )
    table.add_row("dataset version", str(s.dataset_version))
    table.add_row("model version served", str(s.serving_version or "—"))
    table.add_row("predictions", str(len(s.predictions)))
    table.add_row("live accuracy (last 500)", f"{s.live_accuracy:.3f}" if s.live_accuracy is not None else "—")
    table.add_row("drift events", str(len(s.drift_events)))
    top = sorted(s.drift_scores.items(), key=lambda kv: -kv[1])[:4]
    table.add_row("drift scores (PSI)", ", ".join(f"{k} {v:.2f}" for k, v in top) or "—")
    events = Table("topic", "events", title="events per topic")
    for name, count in sorted(s.events_per_topic.items()):
        events.add_row(name, str(count))
    return Group(table, events)


def _result_table(result: dict[str, Any]) -> Table:
    table = Table("", "", title="loop closed" if result["loop_closed"] else "loop NOT closed", show_header=False)
    for key in ("initial_version", "retrained_version", "accuracy_before_drift", "accuracy_during_drift",
                "accuracy_after_recovery", "drift_detected_after_rows", "false_drift_events_before_injection",
                "time_to_recover_s", "dlq_messages", "duration_s"):  # fmt: skip
        table.add_row(key, str(result[key]))
    table.add_row("records", json.dumps(result["records"]))
    if result["errors"]:
        table.add_row("errors", "\n".join(result["errors"]))
    return table


def _health(state: UpState) -> dict[str, Any]:
    parts: dict[str, dict[str, Any]] = {}
    for name, pid in state.stack_pids.items():
        where = state.database_url if name == "postgres" else state.kafka_bootstrap
        parts[name] = {"where": where, "healthy": bool(pid and pid_alive(pid))}
    if "kafka" not in parts:
        host, _, port = state.kafka_bootstrap.split(",")[0].rpartition(":")
        parts["kafka"] = {"where": state.kafka_bootstrap, "healthy": port_open(host, int(port))}
    with httpx.Client(timeout=2) as client:
        for name, url in [*state.services.items(), *([(CONSOLE, state.console)] if state.console else [])]:
            try:
                answer = client.get(f"{url}/readyz")
                parts[name] = {"where": url, "healthy": answer.status_code == 200}
                if answer.status_code != 200:
                    parts[name]["why"] = json.dumps(answer.json().get("checks"))
            except httpx.HTTPError as exc:
                parts[name] = {"where": url, "healthy": False, "why": type(exc).__name__}
    return {"running": True, "healthy": all(p["healthy"] for p in parts.values()), "parts": parts}


def _state_table(state: UpState) -> Table:
    table = Table("part", "where", title="driftloop up")
    table.add_row("postgres", state.database_url)
    table.add_row("kafka", state.kafka_bootstrap)
    table.add_row("artifacts", state.artifacts_root)
    for name, url in state.services.items():
        table.add_row(name, f"{url}  (docs: {url}/docs)")
    if state.console:
        table.add_row("console", f"{state.console}  (sign in with the token in {Path(state.home) / 'token'})")
    return table


def _emit(doc: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(doc))
    else:
        console.print(text)


def _stop_on_sigterm() -> None:
    """SIGTERM (a process manager, CI) stops `up` as cleanly as Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


releases.register(app)  # models, promote, rollback, canary


def main() -> None:
    app(prog_name="driftloop")


if __name__ == "__main__":
    main()
