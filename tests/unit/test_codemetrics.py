"""The code-shape figures count what issue 14 names, and only that."""

from __future__ import annotations

import ast

from tools.codemetrics import smells

ROUTES = """
@router.get("/typed")
async def typed() -> Model: ...

@router.get("/declared", response_model=Model)
async def declared() -> Response: ...

@router.get("/loose")
async def loose() -> dict[str, str]: ...

@router.post("/bare")
async def bare() -> JSONResponse: ...

@app.get("/page", include_in_schema=False)
async def page() -> Response: ...
"""


def test_routes_are_counted_by_whether_the_openapi_describes_their_answer() -> None:
    found = smells(ast.parse(ROUTES), "services.x.api")
    assert found["routes_without_response_model"] == 2  # loose, bare
    assert found["routes_outside_openapi"] == 1  # page: in no document, so nothing to describe


def test_sql_and_isinstance_asserts_are_smells_where_issue_14_says() -> None:
    code = 'async def h(conn, e):\n    assert isinstance(e, X)\n    await conn.fetch("SELECT 1")\n'
    assert smells(ast.parse(code), "services.x.handlers.h")["sql_outside_adapters"] == 1
    assert smells(ast.parse(code), "services.x.handlers.h")["assert_isinstance_in_handlers"] == 1
    assert smells(ast.parse(code), "services.x.adapters.repo")["sql_outside_adapters"] == 0
