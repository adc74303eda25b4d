"""Figures of the code's shape, reproducible: module and function lengths, the
longest functions, and the import graph checked against the layers.

    python -m tools.codemetrics [--root DIR] [--top 15] [--json FILE]

Counts the shipped code (``libs``, ``services``, ``cli``, ``devstack``), not
tests or benchmarks. A module's length is its physical lines; a function's is
from its ``def`` to its last line (decorators excluded), nested functions and
methods counted on their own too.

Layers, lowest first: ``libs`` < ``devstack`` < ``services`` < ``cli``; an
import may only point to the same layer or below (``cli`` starts services and
the dev stack, ``devstack`` uses only ``libs``). Inside a service:
``settings``/``domain`` < ``adapters`` < ``handlers`` < ``api``/``api_*`` <
``app`` < ``__main__`` (settings are plain configuration every layer may read),
and no service imports another. Every import pointing up or
sideways is listed as a violation.

Also counted, because issue 14 names them: SQL calls outside ``adapters/``
(``fetch``, ``fetchrow``, ``fetchval``, ``execute``, ``executemany`` on a
connection or pool), ``assert isinstance`` in handlers, and routes whose answer
the OpenAPI does not describe (no ``response_model`` and a return annotation that
is missing, a ``dict``/``list``/``Any`` or a bare response class). A route left
out of the OpenAPI document (``include_in_schema=False``: the console's HTML
pages, whose app publishes no document) is counted apart, as
``routes_outside_openapi``: there is no document to describe its answer.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("libs", "services", "cli", "devstack")
TOP_LAYERS = {"libs": 0, "devstack": 1, "services": 2, "cli": 3}
SERVICE_LAYERS = {"settings": 0, "domain": 0, "adapters": 1, "handlers": 2, "api": 3, "app": 4, "__main__": 5}
SMELLS = ("sql_outside_adapters", "assert_isinstance_in_handlers", "routes_without_response_model")
COUNTS = (*SMELLS, "routes_outside_openapi")
SQL_METHODS = {"fetch", "fetchrow", "fetchval", "execute", "executemany"}


@dataclass(frozen=True)
class Function:
    module: str
    name: str
    line: int
    length: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(root: Path) -> list[Path]:
    return sorted(p for pkg in PACKAGES if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py"))


def functions(tree: ast.AST, module: str) -> list[Function]:
    """Every function and method, qualified by its enclosing classes and functions."""
    found: list[Function] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                found.append(Function(module, name, child.lineno, length))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """First-party modules ``module`` imports (relative imports resolved)."""
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            targets.add(name)
    return {t for t in targets if t.split(".")[0] in PACKAGES}


def service_part(module: str) -> tuple[str, int] | None:
    """(service, layer) of a module under ``services/``; None for other packages."""
    parts = module.split(".")
    if parts[0] != "services" or len(parts) < 2:
        return None
    part = parts[2] if len(parts) > 2 else "app"
    key = "api" if part.startswith("api") else part
    return parts[1], SERVICE_LAYERS.get(key, SERVICE_LAYERS["app"])


def violation(source: str, target: str) -> str | None:
    """Why ``source`` importing ``target`` breaks the layering, or None."""
    top_s, top_t = source.split(".")[0], target.split(".")[0]
    if TOP_LAYERS[top_t] > TOP_LAYERS[top_s]:
        return f"{top_s} imports the layer above it ({top_t})"
    s, t = service_part(source), service_part(target)
    if s and t:
        if s[0] != t[0]:
            return f"service {s[0]} imports service {t[0]}"
        if t[1] > s[1]:
            return "a service layer imports one above it"
    return None


def is_route(node: ast.AsyncFunctionDef | ast.FunctionDef) -> bool:
    for deco in node.decorator_list:
        func = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(func, ast.Attribute) and func.attr in {"get", "post", "put", "patch", "delete", "api_route"}:
            return True
    return False


def in_openapi(node: ast.AsyncFunctionDef | ast.FunctionDef) -> bool:
    """Whether the route is in its app's OpenAPI document (not declared ``include_in_schema=False``)."""
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call):
            for k in deco.keywords:
                if k.arg == "include_in_schema" and isinstance(k.value, ast.Constant) and k.value.value is False:
                    return False
    return True


def described(node: ast.AsyncFunctionDef | ast.FunctionDef) -> bool:
    """Whether the OpenAPI describes the route's answer: a ``response_model`` or a model return annotation."""
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call) and any(k.arg == "response_model" for k in deco.keywords):
            return True
    if node.returns is None:
        return False
    annotation = ast.unparse(node.returns)
    if annotation.startswith("list[") and annotation.endswith("]"):
        annotation = annotation[len("list[") : -1]  # a list of models is described; a list of dicts is not
    untyped = ("dict", "list", "Any", "JSONResponse", "Response", "ORJSONResponse", "object")
    return not annotation.startswith(untyped)


def smells(tree: ast.AST, module: str) -> Counter[str]:
    found: Counter[str] = Counter()
    in_adapters = ".adapters" in module or not module.startswith("services")
    for node in ast.walk(tree):
        if (
            not in_adapters
            and isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in SQL_METHODS
            and node.args
            and isinstance(node.args[0], ast.Constant | ast.JoinedStr)
        ):
            found["sql_outside_adapters"] += 1
        if (
            isinstance(node, ast.Assert)
            and isinstance(node.test, ast.Call)
            and isinstance(node.test.func, ast.Name)
            and node.test.func.id == "isinstance"
            and ".handlers" in module
        ):
            found["assert_isinstance_in_handlers"] += 1
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and is_route(node):
            if not in_openapi(node):
                found["routes_outside_openapi"] += 1
            elif not described(node):
                found["routes_without_response_model"] += 1
    return found


def measure(root: Path, top: int) -> dict[str, object]:
    lengths: dict[str, int] = {}
    funcs: list[Function] = []
    edges: set[tuple[str, str]] = set()
    counted: Counter[str] = Counter()
    for path in python_files(root):
        module = module_name(root, path)
        text = path.read_text()
        tree = ast.parse(text, str(path))
        lengths[module] = len(text.splitlines())
        funcs.extend(functions(tree, module))
        edges.update((module, t) for t in imports(tree, module, path.name == "__init__.py"))
        counted.update(smells(tree, module))
    nonempty = [n for m, n in lengths.items() if n > 0]
    violations = sorted(f"{s} -> {t}: {why}" for s, t in edges if (why := violation(s, t)))
    longest = sorted(funcs, key=lambda f: -f.length)[:top]
    longest_modules = sorted(lengths.items(), key=lambda kv: -kv[1])[:top]
    return {
        "modules": len(nonempty),
        "module_lines_median": statistics.median(nonempty),
        "module_lines_total": sum(nonempty),
        "functions": len(funcs),
        "function_lines_median": statistics.median(f.length for f in funcs),
        "functions_over_40_lines": sum(f.length > 40 for f in funcs),
        "longest_functions": [f"{f.length:4d}  {f.module}:{f.line} {f.name}" for f in longest],
        "longest_modules": [f"{n:4d}  {m}" for m, n in longest_modules],
        "import_edges": len(edges),
        "layer_violations": violations,
        **{k: counted[k] for k in COUNTS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--top", type=int, default=15, help="how many longest functions and modules to list")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = measure(args.root, args.top)
    for key, value in figures.items():
        if isinstance(value, list):
            print(f"{key} ({len(value)}):")
            for line in value:
                print(f"  {line}")
        else:
            print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if figures["layer_violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
