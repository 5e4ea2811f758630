"""A backup tar laid out on the filesystem by prodg itself, member by member, the same on every interpreter: no
`extractall`, no tarfile extraction filter (Debian 12's python3.11, the production images', has none, and the newer
ones' have had bypasses). This module decides what a member may be and writes it:

- regular files, directories, and symlinks whose target, followed through the restored tree, stays inside it;
  a hard link only to a regular file this same tar wrote before it (the Engine's archive API writes one for each
  further name of a multiply-linked file);
- refused, naming the member and why: absolute paths, `..` components, device and FIFO members, a path through a
  symlink or a file the tar wrote before it, a name repeated as another kind (a directory or symlink is never
  replaced), a setuid or setgid file;
- owners as captured (numeric uid/gid: a service running as 472 must write its restored folder); modes without
  group/other write, setuid, setgid or sticky bits.

Everything is written under one open directory (`root_fd`, an empty folder only this process can enter), through
directory fds opened with O_NOFOLLOW and files created with O_EXCL|O_NOFOLLOW: nothing is ever written through a
link. The caller (restore_files) lays the folder out in a scratch sibling and renames it into place, so a refused or
failed tar leaves nothing half-written."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..store.download import RestoreFailed
from ..store.stream import ChunkReader

KEPT_MODE_BITS = 0o755  # owner's bits, group/other read and execute: no group/other write, no setuid/setgid/sticky
MAX_LINK_HOPS = 40  # the kernel's own limit on symlinks followed in one lookup (ELOOP)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RefusedMember(RestoreFailed):
    """A member of a backup tar that prodg does not lay out; the message names it and says why."""


@dataclass
class Extracted:
    files: dict[str, str] = field(default_factory=dict)  # path relative to the folder → sha256 of the file written
    sizes: dict[str, int] = field(default_factory=dict)  # the same paths → bytes
    root_listed: bool = False  # whether the tar lists the folder itself (its owner and mode as captured)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


@dataclass
class _Node:
    kind: str  # "directory", "file" or "symlink"
    member: tarfile.TarInfo | None = None  # None: a parent directory the tar did not list
    target: str = ""  # a symlink's


def member_path(name: str) -> list[str]:
    """A member's name as path components under the folder ([] is the folder itself); raises ValueError with why it
    is refused."""
    if name.startswith("/"):
        raise ValueError("an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("a '..' component")
    return parts


def extract_tar(chunks: Iterator[bytes], root_fd: int, what: str) -> Extracted:
    """Lay out the tar read from `chunks` under the open, empty directory `root_fd`; `what` (the object key) names
    the tar in errors. Raises RefusedMember on the first member refused (what was written stays for the caller to
    remove), RestoreFailed when the tar does not read or a write fails."""
    tree: dict[str, _Node] = {}
    done = Extracted()
    root_member: tarfile.TarInfo | None = None
    try:
        with tarfile.open(fileobj=ChunkReader(chunks), mode="r|") as tar:
            for member in tar:
                try:
                    parts = member_path(member.name)
                    if not parts:
                        if not member.isdir():
                            raise ValueError("the folder itself as something other than a directory")
                        root_member = member
                        continue
                    _lay_out(tar, member, parts, root_fd, tree, done)
                except ValueError as why:
                    raise RefusedMember(f"{what}: member {member.name!r} refused: {why}; nothing was restored") \
                        from None
                except OSError as exc:
                    raise RestoreFailed(f"{what}: member {member.name!r}: {exc.strerror or exc}") from None
    except tarfile.TarError as exc:
        raise RestoreFailed(f"{what}: the tar does not read: {exc}") from None
    for rel, node in tree.items():
        if node.kind == "symlink" and not _stays_inside(tree, rel, node.target):
            raise RefusedMember(f"{what}: member {node.member.name!r} refused: a symlink to {node.target!r}, which "
                                f"leads outside the folder; nothing was restored")
    _set_directories(root_fd, tree, root_member)
    done.root_listed = root_member is not None
    return done


def _lay_out(tar: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str], root_fd: int,
             tree: dict[str, _Node], done: Extracted) -> None:
    rel = "/".join(parts)
    for depth in range(1, len(parts)):
        above = tree.get("/".join(parts[:depth]))
        if above is not None and above.kind != "directory":
            raise ValueError(f"its path passes through the {above.kind} {'/'.join(parts[:depth])!r} restored "
                             f"before it")
    kind = _kind(member)
    before = tree.get(rel)
    if before is not None and not (before.kind == kind and kind in ("directory", "file") and not member.islnk()):
        raise ValueError(f"it would replace the {before.kind} {rel!r} restored before it")
    if kind == "file" and member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise ValueError(f"a setuid or setgid file (mode {member.mode:o})")
    if kind == "symlink" and member.linkname.startswith("/"):
        raise ValueError(f"a symlink to an absolute path ({member.linkname!r})")
    source = _hard_link_source(member, tree) if member.islnk() else ""
    parent = _open_parents(root_fd, parts[:-1], tree)
    name = parts[-1]
    try:
        if kind == "directory":
            if before is None:
                os.mkdir(name, 0o700, dir_fd=parent)
            tree[rel] = _Node("directory", member)
        elif source:
            source_parent = _open_parents(root_fd, source.split("/")[:-1], tree)
            try:
                os.link(source.split("/")[-1], name, src_dir_fd=source_parent, dst_dir_fd=parent,
                        follow_symlinks=False)
            finally:
                os.close(source_parent)
            tree[rel] = _Node("file", member)
            done.files[rel], done.sizes[rel] = done.files[source], done.sizes[source]
        elif kind == "file":
            if before is not None:  # a later copy of the same file wins, written afresh (never through a link)
                os.unlink(name, dir_fd=parent)
            tree[rel] = _Node("file", member)
            done.files[rel], done.sizes[rel] = _write_file(tar, member, name, parent)
        else:
            os.symlink(member.linkname, name, dir_fd=parent)
            tree[rel] = _Node("symlink", member, member.linkname)
            if os.geteuid() == 0:
                os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(name, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)


def _kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "directory"
    if member.isreg() or member.islnk():
        return "file"
    if member.issym():
        return "symlink"
    if member.ischr() or member.isblk():
        raise ValueError("a device file")
    if member.isfifo():
        raise ValueError("a FIFO")
    raise ValueError(f"an unsupported member type {member.type!r}")


def _hard_link_source(member: tarfile.TarInfo, tree: dict[str, _Node]) -> str:
    """The regular file, written by this tar before `member`, that the hard link `member` names."""
    try:
        source = "/".join(member_path(member.linkname))
    except ValueError as why:
        raise ValueError(f"a hard link to {member.linkname!r}: {why}") from None
    node = tree.get(source)
    if node is None or node.kind != "file":
        raise ValueError(f"a hard link to {member.linkname!r}, which is not a regular file restored before it")
    return source


class SymlinkOnPath(OSError):
    """A component of a path to be written into is a symlink (`path`: up to and including it)."""

    def __init__(self, path: str):
        super().__init__(f"{path} is a symbolic link")
        self.path = path


def open_directory(start_fd: int, parts: Sequence[str], create_mode: int, shown: str = "") -> int:
    """An fd of the directory `parts` under `start_fd`, each level checked with lstat and opened with O_NOFOLLOW (a
    symlink on the way raises SymlinkOnPath, naming `shown` joined with the parts up to it), created with
    `create_mode` where missing; the caller closes it."""
    fd = os.dup(start_fd)
    for depth, part in enumerate(parts, 1):
        try:
            try:
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise SymlinkOnPath(os.path.join(shown, *parts[:depth]))
            except FileNotFoundError:
                os.mkdir(part, create_mode, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:  # swapped for a link since the lstat: O_NOFOLLOW refuses it
                if exc.errno == errno.ELOOP:
                    raise SymlinkOnPath(os.path.join(shown, *parts[:depth])) from None
                raise
        finally:
            os.close(fd)
        fd = child
    return fd


def _open_parents(root_fd: int, parts: list[str], tree: dict[str, _Node]) -> int:
    """An fd of the directory `parts` under the folder, parents the tar did not list created (0700 until the end)."""
    for depth in range(1, len(parts) + 1):
        tree.setdefault("/".join(parts[:depth]), _Node("directory"))
    return open_directory(root_fd, parts, 0o700)


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, parent: int) -> tuple[str, int]:
    """Write a regular member's content to a new file (O_EXCL: never an existing file, never through a link), its
    owner, mode and mtime as captured; (sha256, size)."""
    digest, size = hashlib.sha256(), 0
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
    try:
        reader = tar.extractfile(member)
        for block in iter(lambda: reader.read(1 << 20), b""):
            _write_all(fd, block)
            digest.update(block)
            size += len(block)
        _set_owner_mode_time(fd, member)
    finally:
        os.close(fd)
    return digest.hexdigest(), size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _set_owner_mode_time(fd: int, member: tarfile.TarInfo) -> None:
    if os.geteuid() == 0:  # owners as captured; an unprivileged restore keeps its own
        os.fchown(fd, member.uid, member.gid)
    os.fchmod(fd, member.mode & KEPT_MODE_BITS)
    os.utime(fd, (member.mtime, member.mtime))


def _set_directories(root_fd: int, tree: dict[str, _Node], root_member: tarfile.TarInfo | None) -> None:
    """Directories' owners, modes and mtimes, deepest first (a read-only directory is filled before it is made so):
    as captured where the tar lists them, root's 755 for parents it did not list. The folder itself last."""
    for rel in sorted((r for r, n in tree.items() if n.kind == "directory"), key=lambda r: r.count("/"),
                      reverse=True):
        fd = _open_parents(root_fd, rel.split("/"), tree)
        try:
            _set_directory(fd, tree[rel].member)
        finally:
            os.close(fd)
    _set_directory(root_fd, root_member)


def _set_directory(fd: int, member: tarfile.TarInfo | None) -> None:
    if member is None:
        os.fchmod(fd, 0o755)
        return
    _set_owner_mode_time(fd, member)


def _stays_inside(tree: dict[str, _Node], link: str, target: str) -> bool:
    """Whether the symlink at `link` with `target`, followed as the kernel would through the restored tree (each
    symlink met on the way expanded in turn), stays inside the folder."""
    at = link.split("/")[:-1]
    pending = deque(target.split("/"))
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not at:
                return False
            at.pop()
            continue
        at.append(part)
        node = tree.get("/".join(at))
        if node is not None and node.kind == "symlink":
            hops += 1
            if hops > MAX_LINK_HOPS or node.target.startswith("/"):
                return False
            at.pop()
            pending.extendleft(reversed(node.target.split("/")))
    return True
