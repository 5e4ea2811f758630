"""What Telegram is told about watched checks, decided from what it was told before (pure; the check notifier keeps
`Told` in its sensor cursor, so a daemon restart resends nothing).

Per check: one message when it turns red, when what is wrong changes while it stays red, and when it turns green;
a reminder every `remind_s` while it stays red; a check that flips `flap_changes` times within `flap_window_s` is
told once as flapping, then nothing until it has not flipped for `flap_window_s`, when its settled state is told.
A message Telegram did not take is tried again at the next tick (its state is recorded only once sent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

GREEN = "green"


@dataclass(frozen=True)
class Evaluation:
    """The newest evaluation of one check: its key as the UI writes it ("redis:healthy"), whether it passed, what
    was wrong (already redacted), the evaluation's storage id, its run and its time."""

    check: str
    passed: bool
    problems: str
    event_id: int
    run_id: str
    at: float


@dataclass(frozen=True)
class Policy:
    remind_s: float = 6 * 3600
    flap_changes: int = 4
    flap_window_s: float = 3600


def _red(problems: str) -> str:
    import hashlib

    return "red:" + hashlib.sha256(problems.encode()).hexdigest()[:16]


def tell(told: dict, evaluations: Iterable[Evaluation], now: float, policy: Policy,
         send: Callable[[str, Evaluation], bool]) -> dict:
    """The new cursor state after telling what changed; `send(kind, evaluation)` sends one message of `kind`
    (red, changed, green, reminder, flapping, settled) and says whether Telegram took it."""
    out = {name: dict(rec) for name, rec in told.items()}
    for ev in evaluations:
        rec = out.setdefault(ev.check, {"told": GREEN, "told_at": 0.0, "seen": True, "changes": [],
                                        "flapping": False, "event": 0, "since": 0.0})
        if ev.event_id != rec["event"]:  # a new evaluation: count a flip of red/green
            rec["event"] = ev.event_id
            if ev.passed != rec["seen"]:
                rec["seen"] = ev.passed
                rec["since"] = ev.at
                rec["changes"] = [t for t in rec["changes"] if now - t < policy.flap_window_s] + [ev.at]
        state = GREEN if ev.passed else _red(ev.problems)
        recent = [t for t in rec["changes"] if now - t < policy.flap_window_s]
        kind: Optional[str] = None
        if rec["flapping"]:
            if recent:
                continue  # still flapping: told once already
            kind = "settled"
        elif len(recent) >= policy.flap_changes:
            kind = "flapping"
        elif state != rec["told"]:
            kind = "green" if ev.passed else ("red" if rec["told"] == GREEN else "changed")
        elif not ev.passed and now - rec["told_at"] >= policy.remind_s:
            kind = "reminder"
        if kind is None:
            continue
        if not send(kind, ev):
            continue  # tried again at the next tick
        rec["flapping"] = kind == "flapping"
        if kind != "flapping":
            rec["told"] = state
        rec["told_at"] = now
    return out


def since_text(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"
