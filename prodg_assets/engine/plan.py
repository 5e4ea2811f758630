"""The plan: desired state vs live state → one action per service. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from .facts import Desired, Live

CREATE, RECREATE, UNCHANGED, REMOVE, ORPHAN = "create", "recreate", "unchanged", "remove", "orphan"


@dataclass(frozen=True)
class Action:
    service: str
    kind: str
    reasons: tuple[str, ...] = ()
    diff: tuple[tuple[str, str, str], ...] = ()  # (field, live, desired)
    container_id: Optional[str] = None

    @property
    def changes(self) -> bool:
        return self.kind in (CREATE, RECREATE, REMOVE)

    def markdown(self) -> str:
        if not self.diff:
            return f"**{self.service}**: {self.kind}" + (f" ({'; '.join(self.reasons)})" if self.reasons else "")
        rows = "\n".join(f"| {f} | `{a}` | `{b}` |" for f, a, b in self.diff)
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return f"**{self.service}**: {self.kind}{why}\n\n| field | live | desired |\n|---|---|---|\n{rows}"


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)

    def for_service(self, service: str) -> Action:
        return next(a for a in self.actions if a.service == service)

    @property
    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.changes]

    def table(self) -> str:
        rows = [("SERVICE", "ACTION", "WHY")]
        for a in self.actions:
            why = "; ".join(list(a.reasons) + [f"{f}: {live} -> {want}" for f, live, want in a.diff]) or "-"
            rows.append((a.service, a.kind, why))
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows)


def plan_service(desired: Desired, live: Optional[Live]) -> Action:
    if live is None:
        return Action(desired.service, CREATE, ("no container",))
    diff = live.facts.diff(desired.facts)
    rows = tuple((name, a, b) for name, (a, b) in sorted(diff.items()))
    reasons = []
    if live.spec_hash != desired.spec_hash:
        reasons.append("spec changed" if live.spec_hash else "container not managed by prodg (no spec-hash label)")
    if not live.facts.running:
        reasons.append("container is not running")
    if reasons or rows:
        return Action(desired.service, RECREATE, tuple(reasons), rows, live.container_id)
    return Action(desired.service, UNCHANGED, (), (), live.container_id)


def plan(desired: Mapping[str, Desired], live: Mapping[str, Live], prune: bool = False) -> Plan:
    """One action per desired service (sorted), then one per live managed container whose service left the spec:
    `remove` when pruning is on, `orphan` (reported only) otherwise."""
    actions = [plan_service(desired[name], live.get(name)) for name in sorted(desired)]
    for name in sorted(set(live) - set(desired)):
        kind = REMOVE if prune else ORPHAN
        why = "service left the spec" + ("" if prune else "; pruning is off (deploy.prune)")
        actions.append(Action(name, kind, (why,), (), live[name].container_id))
    return Plan(actions)
