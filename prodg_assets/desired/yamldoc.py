"""The one YAML loader: plain Python values plus the line of every key and item, for located errors.

Bounded against hostile input: file size, nesting depth and alias expansion are capped, duplicate keys are errors,
and bytes that are not UTF-8 are reported at their line instead of raising.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from .errors import SpecError

MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64

Path = tuple[Union[str, int], ...]


def field_name(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


@dataclass
class Doc:
    """A parsed YAML file: `data` holds the values, `lines` the 1-based line of each path."""

    file: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line(self, path: Path) -> int:
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def error(self, path: Path, message: str) -> SpecError:
        return SpecError(self.file, self.line(path), field_name(tuple(path)), message)


class _TooBig(Exception):
    def __init__(self, line: int, message: str):
        self.line, self.message = line, message


def line_of(text: str, mark: yaml.Mark) -> int:
    """The line of `mark` as an editor numbers it: counting "\n" only. (YAML also breaks lines at a lone "\r" and
    at NEL, LS and PS, so its own `mark.line` can point past the end of the file an operator opens.)"""
    return text.count("\n", 0, mark.index) + 1


class _Builder:
    def __init__(self, doc: Doc, errors: list[SpecError], text: str):
        self.doc, self.errors, self.nodes, self.text = doc, errors, 0, text
        self.constructor = yaml.constructor.SafeConstructor()
        # where each "\n" is, found once: counting them from the start for every node (line_of) was quadratic in
        # the file's size (a 150-service Compose file: most of validation's time)
        self.newlines = [i for i, c in enumerate(text) if c == "\n"]

    def _line(self, node: yaml.Node) -> int:
        """line_of(self.text, node.start_mark), by bisection over the newlines' offsets."""
        return bisect.bisect_left(self.newlines, node.start_mark.index) + 1

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.nodes += 1
        line = self._line(node)
        if self.nodes > MAX_NODES:
            raise _TooBig(line, f"more than {MAX_NODES} values after expanding aliases (a YAML bomb?)")
        if depth > MAX_DEPTH:
            raise _TooBig(line, f"nested deeper than {MAX_DEPTH} levels")
        self.doc.lines.setdefault(path, line)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.errors.append(SpecError(self.doc.file, line, field_name(path), f"bad value: {_one_line(exc)}"))
            return None
        except yaml.YAMLError as exc:
            self.errors.append(SpecError(self.doc.file, line, field_name(path), f"bad value: {_first_line(exc)}"))
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict:
        out: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged.update(self._merge(value_node, path, depth))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.errors.append(SpecError(self.doc.file, self._line(key_node), field_name(path),
                                             "mapping keys must be plain strings"))
                continue
            key = str(key_node.value)
            if key in out:
                self.errors.append(SpecError(self.doc.file, self._line(key_node), field_name(path + (key,)),
                                             "duplicate key"))
                continue
            self.doc.lines[path + (key,)] = self._line(key_node)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        return {**merged, **out}

    def _merge(self, node: yaml.Node, path: Path, depth: int) -> dict:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in sources:
            value = self.build(source, path, depth + 1)
            if not isinstance(value, dict):
                self.errors.append(SpecError(self.doc.file, self._line(source), field_name(path),
                                             "'<<' merges mappings only"))
                continue
            merged = {**value, **merged}
        return merged


def _one_line(exc: yaml.MarkedYAMLError) -> str:
    return " ".join(str(exc.problem or exc.context or "unreadable").split())


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or ["unreadable"])[0]


def load_yaml(file: str, raw: bytes) -> tuple[Doc | None, list[SpecError]]:
    """Parse one YAML document; returns (doc, errors). doc is None when nothing usable could be read."""
    errors: list[SpecError] = []
    if len(raw) > MAX_BYTES:
        return None, [SpecError(file, 1, "(document)", f"file is {len(raw)} bytes, larger than {MAX_BYTES}")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, [SpecError(file, line, "(document)", f"not UTF-8 text (byte 0x{raw[exc.start]:02x})")]
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = line_of(text, mark) if mark else 1
        return None, [SpecError(file, line, "(document)", f"invalid YAML: {_one_line(exc)}")]
    except yaml.reader.ReaderError as exc:
        line = text[: max(exc.position, 0)].count("\n") + 1
        return None, [SpecError(file, line, "(document)", f"invalid YAML: character #x{exc.character:04x} is not "
                                                          f"allowed")]
    except yaml.YAMLError as exc:
        return None, [SpecError(file, 1, "(document)", f"invalid YAML: {_first_line(exc)}")]
    except RecursionError:
        return None, [SpecError(file, 1, "(document)", f"nested deeper than {MAX_DEPTH} levels")]
    doc = Doc(file, None)
    if node is None:
        doc.data = {}
        return doc, errors
    try:
        doc.data = _Builder(doc, errors, text).build(node, (), 0)
    except _TooBig as exc:
        return None, [SpecError(file, exc.line, "(document)", exc.message)]
    except RecursionError:
        return None, [SpecError(file, 1, "(document)", f"nested deeper than {MAX_DEPTH} levels")]
    return doc, errors
