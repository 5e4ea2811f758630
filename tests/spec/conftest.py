"""Shared helpers for the spec tests: a writable copy of the bundled config and located-error lookups."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from prodg_assets.desired import DirTree, SpecError, validate

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
# What the bundled config needs from the environment to validate: the ops group's Telegram chat id (it has no
# default: with Telegram on, an unset chat id is a validation error, never silence)
BUNDLED_ENV = {"TELEGRAM_CHAT_ID": "-1001234567890"}
COMPOSE_REL = "compose/docker-compose.yml"
PRODG_REL = "prodg.yaml"
LABEL = "config"  # every tree in these tests is labelled like the bundled one, so error files read the same


def tree(root: Path) -> DirTree:
    return DirTree(root, label=LABEL)


def copy_config(dest: Path) -> Path:
    """A private copy of the bundled config tree at dest/config."""
    root = dest / "config"
    shutil.copytree(CONFIG, root)
    return root


def edit(root: Path, rel: str, old: str | bytes, new: str | bytes, count: int = 1) -> bytes:
    """Replace `old` by `new` in one file of the tree (exactly `count` occurrences must exist); returns its bytes."""
    path = root / rel
    raw = path.read_bytes()
    old_b = old.encode() if isinstance(old, str) else old
    new_b = new.encode() if isinstance(new, str) else new
    assert raw.count(old_b) == count, f"{rel}: expected {count} x {old_b!r}, found {raw.count(old_b)}"
    raw = raw.replace(old_b, new_b)
    path.write_bytes(raw)
    return raw


def line_of(text: str | bytes, *needles: str | bytes) -> int:
    """1-based line of the last needle, each needle searched after the previous one (to pick one of many matches)."""
    data = text.encode() if isinstance(text, str) else text
    pos = 0
    for needle in needles:
        n = needle.encode() if isinstance(needle, str) else needle
        pos = data.index(n, pos)
    return data[:pos].count(b"\n") + 1


def find(errors: list[SpecError], field: str, fragment: str) -> SpecError:
    """The one error for `field` whose message contains `fragment`; fails listing every error otherwise."""
    hits = [e for e in errors if e.field == field and fragment in e.message]
    assert hits, f"no error on {field!r} containing {fragment!r}; got:\n" + "\n".join(map(str, errors))
    return hits[0]


@pytest.fixture(scope="session")
def bundled_errors() -> list[SpecError]:
    return validate(tree(CONFIG), BUNDLED_ENV)


@pytest.fixture
def config_copy(tmp_path: Path, bundled_errors: list[SpecError]) -> Path:
    """A writable copy of config/; the copy starts valid, so every error a test sees comes from its own edit."""
    assert bundled_errors == [], "bundled config does not validate:\n" + "\n".join(map(str, bundled_errors))
    return copy_config(tmp_path)


@pytest.fixture()
def built_nodes(monkeypatch):
    """A callable: the most values any YAML builder built during the test (`_Builder.nodes`, what MAX_NODES bounds).
    Hostile input is shown to be refused in bounded *work* — a count, not a wall-clock time a loaded machine can
    exceed."""
    from prodg_assets.desired import yamldoc

    builders: list = []
    init = yamldoc._Builder.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        builders.append(self)

    monkeypatch.setattr(yamldoc._Builder, "__init__", recording_init)
    return lambda: max((b.nodes for b in builders), default=0)
