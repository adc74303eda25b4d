"""The cards of a version: ``GET /v1/models/{model}/versions/{version}/card`` (JSON, both formats) and
``.../card.md`` (Markdown). The trainer stored them at training time; what has happened since (the
version number, the aliases and their audit trail) is added here, when they are read (docs/cards.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path
from pydantic import BaseModel, Field

from libs.common.artifacts import ArtifactStore
from libs.common.auth import Role, require
from libs.common.errors import NotFound
from libs.common.events import ArtifactRef
from libs.common.http import INT4_MAX, MarkdownResponse, errors
from libs.common.service import Runtime
from services.registry.adapters import repository

ModelName = Annotated[str, Path(description="Model name.")]
VersionNumber = Annotated[int, Path(ge=1, le=INT4_MAX, description="Model version.")]


class VersionCards(BaseModel):
    model: str
    version: int
    aliases: list[str] = Field(description="Aliases the version holds now.")
    alias_trail: list[dict[str, Any]] = Field(description="Audit rows that moved an alias to or from this version.")
    model_card: dict[str, Any] = Field(description="The model card's JSON (docs/cards.md), with version and aliases.")
    data_card: dict[str, Any] = Field(description="The data card's JSON.")
    model_markdown: str = Field(description="The model card in Markdown, its alias trail rendered now.")
    data_markdown: str


def mount(app: FastAPI, rt: Runtime, artifacts_root: str) -> None:
    router = APIRouter(prefix="/v1/models", tags=["cards"])
    store = ArtifactStore(artifacts_root)

    async def cards(model: str, version: int) -> VersionCards:
        row = await repository.version(rt.db, model, version)
        if row is None:
            raise NotFound(f"model {model!r} has no version {version}", model=model, version=version)
        if not row["cards"]:
            reason = row["card_error"] or "the version was trained before cards existed"
            raise NotFound(f"{model} v{version} has no cards: {reason}", model=model, version=version,
                           card_error=reason)  # fmt: skip
        refs = {k: ArtifactRef.model_validate(v) for k, v in json.loads(row["cards"]).items()}
        # Read off the loop: the store verifies each file's sha256.
        texts = await asyncio.to_thread(lambda: {k: store.get(ref).decode() for k, ref in refs.items()})
        aliases = (await repository.aliases_by_version(rt.db, model)).get(version, [])
        trail = [a for a in await repository.audit_out(rt.db, model, 1000)
                 if a["alias"] is not None and version in (a["to_version"], a["from_version"])]  # fmt: skip
        card = {**json.loads(texts["model_json"]), "version": version, "aliases": aliases, "alias_trail": trail}
        return VersionCards(
            model=model, version=version, aliases=aliases, alias_trail=trail, model_card=card,
            data_card=json.loads(texts["data_json"]), data_markdown=texts["data_markdown"],
            model_markdown=texts["model_markdown"].replace("# Model card: ", f"# Model card: v{version} of ", 1)
            + alias_markdown(version, aliases, trail),
        )  # fmt: skip

    @router.get("/{model}/versions/{version}/card", summary="The version's model card and data card (JSON and "
                "Markdown), with its alias trail", responses=errors(404),
                dependencies=[require(Role.READER)])  # fmt: skip
    async def show_cards(model: ModelName, version: VersionNumber) -> VersionCards:
        return await cards(model, version)

    @router.get("/{model}/versions/{version}/card.md", summary="The model card then the data card, as Markdown",
                response_class=MarkdownResponse, responses=errors(404),
                dependencies=[require(Role.READER)])  # fmt: skip
    async def show_markdown(model: ModelName, version: VersionNumber) -> MarkdownResponse:
        found = await cards(model, version)
        return MarkdownResponse(found.model_markdown + "\n" + found.data_markdown)

    app.include_router(router)


def alias_markdown(version: int, aliases: list[str], trail: list[dict[str, Any]]) -> str:
    """The alias section of the model card, from the registry's audit as it stands now."""
    lines = ["", "## Aliases", f"Now: {', '.join(aliases) if aliases else 'none'}.", ""]
    if not trail:
        return "\n".join([*lines, "No alias has pointed to this version."]) + "\n"
    lines += ["| at | action | alias | from | to | actor | reason |", "|---|---|---|---|---|---|---|"]
    for a in reversed(trail):  # oldest first
        reason = str(a["reason"]).replace("|", "\\|")
        lines.append(f"| {a['at']} | {a['action']} | {a['alias']} | {a['from_version']} | {a['to_version']} | "
                     f"{a['actor']} | {reason} |")  # fmt: skip
    return "\n".join(lines) + "\n"
