"""Property: no mutation of the valid config makes the loader crash; every problem comes back as a located error.

Mutations act on the parsed YAML (delete a key, replace a value, insert a key, duplicate a list item) and on the
bytes (truncate, flip). Each example writes into its own temporary copy of config/.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from prodg_assets.desired import ConfigInvalid, SpecError, load_desired_state, validate
from prodg_assets.desired.yamldoc import load_yaml

from .conftest import BUNDLED_ENV, COMPOSE_REL, CONFIG, LABEL, PRODG_REL, copy_config, tree

FILES = (COMPOSE_REL, PRODG_REL)
RAW = {rel: (CONFIG / rel).read_bytes() for rel in FILES}
DATA = {rel: load_yaml(rel, RAW[rel])[0].data for rel in FILES}

# No database (nothing written outside tests/), no explain phase (its line tracing makes a failing run take minutes).
FUZZ = settings(max_examples=150, deadline=None, database=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Values an operator (or a bad merge) might plausibly put anywhere, plus arbitrary ones.
NEAR_MISSES = st.sampled_from([
    "", "${PRODG_DATA}", "${POSTGRES_PASSWORD}", "${UNDECLARED}", "${", "$$", "$", "~", "..", "../..", "./x",
    "/etc/passwd", "/var/run/docker.sock", "/opt/prodg/data/x", "0.0.0.0:80:80", "localhost:1:1", "[::]:1:1",
    "1:2:3:4", "80/sctp", "10s", "1h2m", "-1", "T1", "tls", "caddy", "postgres", "hermes-api", "CMD",
    "CMD-SHELL", "on-failure:3", "prodg.x", "KEY=value", "=", "a: b", "- x",
])
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 40), max_value=2 ** 40)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | NEAR_MISSES)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8) | NEAR_MISSES, inner, max_size=3), max_leaves=6)
KEYS = st.text(max_size=10) | st.sampled_from(["image", "ports", "x-prodg", "layer", "services", "volumes",
                                                "networks", "environment", "depends_on", "host", "secrets",
                                                "backups", "targets", "compose_file", "variables", "<<"])


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/item path in the tree: the places a value can be deleted or replaced."""
    out: list[tuple] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        out.append(prefix + (key,))
        out.extend(paths(item, prefix + (key,)))
    return out


def at(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


def mutate(draw, data: Any) -> Any:
    """1-4 random edits; draws are paths (not objects), so a failing example reads as a list of edits."""
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["delete", "replace", "insert", "duplicate"]))
        every = paths(data)
        if op in ("delete", "replace"):
            if not every:
                continue
            path = draw(st.sampled_from(every))
            parent = at(data, path[:-1])
            if op == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(VALUES)
        elif op == "insert":
            path = draw(st.sampled_from([()] + [p for p in every if isinstance(at(data, p), (dict, list))]))
            target = at(data, path)
            if isinstance(target, dict):
                target[draw(KEYS)] = draw(VALUES)
            elif isinstance(target, list):
                target.insert(draw(st.integers(min_value=0, max_value=len(target))), draw(VALUES))
        else:
            lists = [p for p in every if isinstance(at(data, p), list) and at(data, p)]
            if lists:
                target = at(data, draw(st.sampled_from(lists)))
                target.append(copy.deepcopy(target[draw(st.integers(min_value=0, max_value=len(target) - 1))]))
    return data


def damage_bytes(draw, raw: bytes) -> bytes:
    if raw and draw(st.booleans()):
        raw = raw[: draw(st.integers(min_value=0, max_value=len(raw)))]
    if raw:
        buf = bytearray(raw)
        for _ in range(draw(st.integers(min_value=0, max_value=5))):
            i = draw(st.integers(min_value=0, max_value=len(buf) - 1))
            buf[i] ^= draw(st.integers(min_value=1, max_value=255))
        raw = bytes(buf)
    return raw


def check(root: Path, written: dict[str, bytes]) -> None:
    """validate() returns located SpecErrors (never raises), and load_desired_state agrees with it."""
    errors = validate(tree(root), BUNDLED_ENV)
    assert isinstance(errors, list)
    for e in errors:
        assert isinstance(e, SpecError)
        assert e.file.startswith(LABEL + "/"), str(e)
        assert isinstance(e.line, int) and e.line >= 1, str(e)
        rel = e.file[len(LABEL) + 1:]
        if rel in written:
            assert e.line <= written[rel].count(b"\n") + 1, f"line past the end of the file: {e}"
        assert e.field and e.message, str(e)  # one-line messages are checked in test_yamldoc / test_validate_cli
    if errors:
        with pytest.raises(ConfigInvalid) as raised:
            load_desired_state(tree(root), BUNDLED_ENV)
        assert raised.value.errors == errors
    else:
        load_desired_state(tree(root), BUNDLED_ENV)


def run(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="prodg-fuzz-") as tmp:
        root = copy_config(Path(tmp))
        for rel, raw in files.items():
            (root / rel).write_bytes(raw)
        check(root, files)


def dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120).encode()


@FUZZ
@given(st.data())
def test_data_mutations_never_crash_the_loader(data):
    chosen = data.draw(st.sets(st.sampled_from(FILES), min_size=1), label="files")
    run({rel: dump(mutate(data.draw, DATA[rel])) for rel in chosen})


@FUZZ
@given(st.data())
def test_byte_damage_never_crashes_the_loader(data):
    rel = data.draw(st.sampled_from(FILES), label="file")
    run({rel: damage_bytes(data.draw, RAW[rel])})


@FUZZ
@given(st.data())
def test_data_mutations_then_byte_damage_never_crash_the_loader(data):
    rel = data.draw(st.sampled_from(FILES), label="file")
    run({rel: damage_bytes(data.draw, dump(mutate(data.draw, DATA[rel])))})


def test_unmutated_round_trip_is_valid():
    """The harness itself: re-serialising the parsed config changes nothing the loader cares about."""
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_config(Path(tmp))
        for rel in FILES:
            (root / rel).write_bytes(dump(DATA[rel]))
        assert validate(tree(root), BUNDLED_ENV) == []
