"""The one YAML loader: values, the line of every key and item, and bounded behaviour on hostile input."""

from __future__ import annotations

import pytest

from prodg_assets.desired import SpecError
from prodg_assets.desired.yamldoc import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    Doc,
    field_name,
    load_yaml,
)

F = "config/x.yml"


def load(text: str | bytes):
    return load_yaml(F, text.encode() if isinstance(text, str) else text)


def test_values_and_the_line_of_every_key_and_item():
    doc, errors = load("# comment\nservices:\n  redis:\n    ports:\n      - 80:80\n      - 443:443\n"
                       "    flow: [a, {b: c}]\n")
    assert errors == []
    assert doc.data == {"services": {"redis": {"ports": ["80:80", "443:443"], "flow": ["a", {"b": "c"}]}}}
    assert doc.lines[("services",)] == 2
    assert doc.lines[("services", "redis")] == 3
    assert doc.lines[("services", "redis", "ports", 0)] == 5
    assert doc.lines[("services", "redis", "ports", 1)] == 6
    assert doc.lines[("services", "redis", "flow", 1, "b")] == 7


def test_line_of_a_missing_path_falls_back_to_its_nearest_parent():
    doc, _ = load("a:\n  b:\n    c: 1\n")
    assert doc.line(("a", "b", "nope", 3)) == 2
    assert doc.line(("zzz",)) == 1
    assert doc.error(("a", "b", "nope"), "m") == SpecError(F, 2, "a.b.nope", "m")


@pytest.mark.parametrize("path, name", [
    ((), "(document)"),
    (("services",), "services"),
    (("services", "redis", "ports", 0), "services.redis.ports[0]"),
    (("a", 0, 1, "b"), "a[0][1].b"),
    (("services", "node-exporter", "x-prodg", "layer"), "services.node-exporter.x-prodg.layer"),
])
def test_field_names_read_like_the_yaml_path(path, name):
    assert field_name(path) == name


@pytest.mark.parametrize("text, data", [
    ("", {}),
    ("# only a comment\n", {}),
    ("on: 1\nyes: 2\nno: 3\n", {"on": 1, "yes": 2, "no": 3}),  # keys stay the strings the operator wrote
    ("80: http\n", {"80": "http"}),
    ("\ufeffa: 1\n", {"a": 1}),  # a byte order mark is not an error
    ("a: '${X}'\nb: $$c\n", {"a": "${X}", "b": "$$c"}),
    ("d: 2026-11-01\n", None),  # dates parse (checked below), they do not crash
])
def test_plain_values(text, data):
    doc, errors = load(text)
    assert errors == []
    if data is not None:
        assert doc.data == data


def test_merge_keys_follow_yaml_precedence_and_are_not_duplicates():
    doc, errors = load("base: &b {x: 1, y: 1}\nother: &o {y: 2, z: 2}\nm:\n  <<: [*b, *o]\n  x: 3\n")
    assert errors == []
    assert doc.data["m"] == {"x": 3, "y": 1, "z": 2}  # explicit keys win, then earlier merge sources
    assert doc.lines[("m", "x")] == 5


def test_merge_of_a_non_mapping_is_located():
    doc, errors = load("a: 1\nm:\n  <<: [1]\n")
    assert errors == [SpecError(F, 3, "m", "'<<' merges mappings only")]


def test_duplicate_key_is_an_error_at_the_second_occurrence():
    doc, errors = load("services:\n  redis:\n    image: a\n    user: x\n    image: b\n")
    assert errors == [SpecError(F, 5, "services.redis.image", "duplicate key")]
    assert doc.data["services"]["redis"]["image"] == "a"


def test_non_scalar_keys_are_errors():
    _, errors = load("a: 1\n? [x, y]\n: z\n")
    assert errors == [SpecError(F, 2, "(document)", "mapping keys must be plain strings")]


@pytest.mark.parametrize("text, line, fragment", [
    ("a: 1\nb: 2\nrestart: unless-stopped: now\n", 3, "mapping values are not allowed here"),
    ("a:\n  b: 1\n\tc: 2\n", 3, "cannot start any token"),
    ("a: [1, 2\nb: 3\n", 2, "invalid YAML"),
    ("a: 1\n---\nb: 2\n", 2, "another document"),
    ("a: *nowhere\n", 1, "undefined alias"),
])
def test_syntax_errors_name_the_line(text, line, fragment):
    doc, errors = load(text)
    assert doc is None and len(errors) == 1
    assert (errors[0].file, errors[0].line, errors[0].field) == (F, line, "(document)")
    assert fragment in errors[0].message


@pytest.mark.parametrize("text, line", [
    (b"\ra: 1\nb: 2\nb: 3\n", 3),  # a lone CR: a line break to YAML, not to an editor
    (b"a: 1\r\nb: 2\r\nb: 3\r\n", 3),  # CRLF
    ('a: "x\u2028y"\nb: 2\nb: 3\n'.encode(), 3),  # LINE SEPARATOR inside a quoted value
    ('a: "x\x85y"\nb: 2\nb: 3\n'.encode(), 3),  # NEL
])
def test_lines_are_counted_as_an_editor_counts_them(text, line):
    _, errors = load(text)
    assert [(e.line, e.field, e.message) for e in errors] == [(line, "b", "duplicate key")]


def test_a_document_that_is_a_lone_cr_and_a_word_is_located_on_its_only_line():
    _, errors = load(b"\ra: [")
    assert [e.line for e in errors] == [1]  # YAML's own count says 2: past the end of a one-line file


def test_unknown_tags_are_located_errors_with_a_one_line_message():
    doc, errors = load("a: 1\nb: !vault secret-name\n")
    assert len(errors) == 1
    assert (errors[0].line, errors[0].field) == (2, "b")
    assert "\n" not in errors[0].message  # errors print as one `file:line: field: message` line


def test_control_character_is_reported_at_its_line_in_one_line():
    doc, errors = load("a: 1\nb: 2\nc: 3\nd: x\x01y\n")
    assert doc is None and len(errors) == 1
    assert errors[0].line == 4
    assert "\n" not in errors[0].message


def test_sexagesimal_looking_port_is_an_int_not_a_silent_string():
    # YAML 1.1: unquoted 22:22 is the integer 1342; the Compose reader must then reject it, never publish port 1342.
    doc, errors = load("ports:\n  - 22:22\n")
    assert errors == [] and doc.data["ports"] == [1342]


def test_python_tags_never_construct_objects():
    doc, errors = load("a: !!python/object/apply:os.system ['false']\nb: !!python/name:os.system\n")
    values = [] if doc is None else list(doc.data.values())
    assert not any(callable(v) for v in values)
    assert doc is None or errors  # either refused outright or reported; never silently executed


def test_non_utf8_byte_is_reported_at_its_line():
    doc, errors = load(b"a: 1\nb: 2\nc: caf\xe9\n")
    assert doc is None
    assert errors == [SpecError(F, 3, "(document)", "not UTF-8 text (byte 0xe9)")]


def test_size_limit_is_exact():
    at_limit = b"a: 1\n" + b"#" * (MAX_BYTES - 6) + b"\n"
    assert len(at_limit) == MAX_BYTES
    assert load(at_limit)[1] == []
    doc, errors = load(at_limit + b"\n")
    assert doc is None
    assert errors == [SpecError(F, 1, "(document)", f"file is {MAX_BYTES + 1} bytes, larger than {MAX_BYTES}")]


def test_depth_limit():
    assert load("[" * MAX_DEPTH + "]" * MAX_DEPTH)[1] == []
    doc, errors = load("[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2))
    assert doc is None and errors[0].message == f"nested deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize("text", [
    "[" * 10_000,
    "{" * 10_000,
    "[" * 10_000 + "]" * 10_000,
    "a: " + "[" * 5_000 + "]" * 5_000 + "\n",
    "".join("  " * i + f"k{i}:\n" for i in range(300)),
    "a: &a [*a]\n",  # a recursive alias
])
def test_pathological_nesting_is_an_error_not_a_crash(text, built_nodes):
    doc, errors = load(text)
    assert built_nodes() <= MAX_NODES + 1  # bounded work: the builder stops at its limits, whatever the input
    assert doc is None and len(errors) == 1 and errors[0].line >= 1


def test_billion_laughs_stops_at_the_node_limit_quickly(built_nodes):
    text = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))
    doc, errors = load(text)
    assert built_nodes() == MAX_NODES + 1  # 10^10 values on expansion: the builder stopped at the limit
    assert doc is None
    assert len(errors) == 1 and f"more than {MAX_NODES} values" in errors[0].message


def test_moderate_alias_use_is_fine():
    doc, errors = load("x: &h {test: [CMD, true], interval: 5s}\na: {healthcheck: *h}\nb: {healthcheck: *h}\n")
    assert errors == []
    assert doc.data["a"] == doc.data["b"] == {"healthcheck": {"test": ["CMD", True], "interval": "5s"}}


def test_doc_without_lines_reports_line_one():
    assert Doc(F, {}).line(("a", "b")) == 1
