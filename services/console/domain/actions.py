"""What a person may do to a version from the console, by role: the registry's own rule, shown before it is asked.

The registry decides (it checks the token again on ``PUT /v1/models/{m}/aliases/{alias}``);
the console only offers the buttons the registry would accept, so nobody is shown an
action they will be refused. Moving ``champion`` forward (a newer version, or the first
champion) is the human approval step and needs ``approver``; moving it back to an older
version is a rollback and needs ``operator``, as does placing a version as ``canary`` or
``shadow``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    APPROVE = "approve"
    ROLLBACK = "rollback"
    PROMOTE = "promote"
    END = "end"
    """End a canary or shadow: its traffic returns to the champion."""


@dataclass(frozen=True)
class Action:
    kind: Kind
    alias: str
    version: int
    role: str
    """The role it needs (admin implies every role)."""
    label: str


def may(roles: Iterable[str], role: str) -> bool:
    held = set(roles)
    return role in held or "admin" in held


def actions_for(version: int, aliases: Mapping[str, int], roles: Iterable[str]) -> list[Action]:
    """The alias moves of ``version`` that a principal holding ``roles`` may make, given the model's ``aliases``."""
    held = list(roles)
    champion = aliases.get("champion")
    offered: list[Action] = []
    if champion is None or version > champion:
        offered.append(Action(Kind.APPROVE, "champion", version, "approver", f"Approve v{version} as champion"))
    elif version < champion:
        offered.append(Action(Kind.ROLLBACK, "champion", version, "operator", f"Roll champion back to v{version}"))
    offered += [
        Action(Kind.PROMOTE, alias, version, "operator", f"Make v{version} the {alias}")
        for alias in ("canary", "shadow")
        if champion is not None and champion != version and aliases.get(alias) != version  # the registry's rule
    ]
    offered += [
        Action(Kind.END, alias, version, "operator", f"End the {alias} (traffic back to the champion)")
        for alias in ("canary", "shadow")
        if aliases.get(alias) == version
    ]
    return [a for a in offered if may(held, a.role)]
