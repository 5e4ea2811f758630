"""Where a config tree is read from: a folder on disk, or (see gitops) a commit of a git repo."""

from __future__ import annotations

import os
from typing import Iterator, Protocol


class ConfigTree(Protocol):
    label: str  # how errors name the tree's files: "config" or "config@<sha>"

    def read(self, rel: str) -> bytes | None:
        """Bytes of the file at `rel` (relative to the config root), or None when there is none."""

    def files_under(self, rel: str) -> Iterator[str]:
        """Every file at or below `rel`, as paths relative to the config root, sorted."""

    def size(self, rel: str) -> int:
        """The size in bytes of the file at `rel`, known without reading it (0 when there is none)."""


class DirTree:
    """A config tree in a folder on disk."""

    def __init__(self, root: str | os.PathLike, label: str | None = None):
        self.root = os.path.abspath(root)
        rel = os.path.relpath(self.root)
        self.label = label or (self.root if rel.startswith("..") else rel)

    def _inside(self, path: str) -> bool:
        """True when `path`, with every symlink resolved, is still inside the tree (a link out of it is ignored)."""
        real = os.path.realpath(path)
        return real == os.path.realpath(self.root) or real.startswith(os.path.realpath(self.root) + os.sep)

    def read(self, rel: str) -> bytes | None:
        path = os.path.join(self.root, rel)
        if not os.path.isfile(path) or not self._inside(path):
            return None
        with open(path, "rb") as fh:
            return fh.read()

    def size(self, rel: str) -> int:
        path = os.path.join(self.root, rel)
        if not os.path.isfile(path) or not self._inside(path):
            return 0
        return os.stat(path).st_size

    def files_under(self, rel: str) -> Iterator[str]:
        path = os.path.join(self.root, rel)
        if not self._inside(path):
            return
        if os.path.isfile(path):
            yield rel
            return
        found = []
        for dirpath, _, files in os.walk(path):
            for name in files:
                full = os.path.join(dirpath, name)
                if self._inside(full):
                    found.append(os.path.relpath(full, self.root))
        yield from sorted(found)
