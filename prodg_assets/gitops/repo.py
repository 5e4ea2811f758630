"""The config repo: the real `git` binary, reading config trees at commits (GitTree), streaming them (`git archive`,
the one archive the deployed tree and the config backup share) and laying the deployed one on disk."""

from __future__ import annotations

import fcntl
import io
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from typing import Iterator, Mapping

import dagster as dg

from ..desired import DesiredState, DirTree, ServiceSpec, content_tree, load_desired_state
from ..secret_source import redact
from ..streams import ProducerFailed, TailBuffer

MIB = 1024 * 1024


class GitError(Exception):
    pass


COMMIT_ID = re.compile(r"[0-9a-f]{40}")  # what a run tag, a label or recorded metadata may name: a full commit id


def commit_id(value: str, where: str = "commit") -> str:
    """`value` if it is a full commit id (40 lowercase hex digits), else GitError naming `where`. Every commit that
    reaches git's arguments from outside git itself (a run tag, a container label, recorded metadata) passes here
    first: git reads `--output=FILE` as an option, and `git archive --output` empties FILE before it fails."""
    if isinstance(value, str) and COMMIT_ID.fullmatch(value):
        return value
    shown = repr(value[:48] + ("…" if len(value) > 48 else "")) if isinstance(value, str) else type(value).__name__
    raise GitError(f"{where} is not a commit id (40 lowercase hex digits): {shown}")


def git(repo: str, *args: str, input: bytes | None = None, timeout: float = 60) -> bytes:
    try:
        proc = subprocess.run(["git", "-C", repo, *args], input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} in {repo} timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))] or lines[-1:]
        msg = " ".join(fatal) or f"exit {proc.returncode}"
        raise GitError(redact(f"git {args[0]} in {repo}: {msg}", {}))
    return proc.stdout


def no_filters(repo_path: str) -> list[str]:
    """`-c` options that switch off every content filter the repo's config defines (`filter.<name>.smudge` or
    `.process`): `git archive` would run them — as root, beside the Docker socket — for any path a `.gitattributes`
    names. The archive is then the blobs as committed, as GitTree reads them."""
    try:
        listing = git(repo_path, "config", "--null", "--name-only", "--get-regexp", r"^filter\..*\.(smudge|process)$")
    except GitError:  # none defined (git config exits 1 when nothing matches)
        return []
    names = {key.rsplit(".", 1)[0] for key in listing.decode("utf-8", "replace").split("\0") if key}
    return [opt for name in sorted(names) for opt in ("-c", f"{name}.smudge=", "-c", f"{name}.process=",
                                                      "-c", f"{name}.required=false")]


def git_archive_chunks(repo_path: str, commit: str, subdir: str, chunk_size: int = MIB,
                       timeout_s: float = 600) -> Iterator[bytes]:
    """`git archive --format=tar <commit> <subdir>`, streamed; `commit` must be a commit id (`commit_id`)."""
    commit = commit_id(commit)
    proc = subprocess.Popen(["git", "-C", repo_path, *no_filters(repo_path), "archive", "--format=tar",
                             "--end-of-options", commit, subdir],  # no `--`: after --end-of-options it is a path
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = TailBuffer(16 * 1024)
    drain = threading.Thread(target=lambda: [stderr.write(b) for b in iter(lambda: proc.stderr.read(4096), b"")],
                             daemon=True)
    drain.start()
    try:
        while True:
            chunk = proc.stdout.read1(chunk_size)
            if not chunk:
                break
            yield chunk
        code = proc.wait(timeout=timeout_s)
        drain.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        raise ProducerFailed(f"git archive of {subdir} at {commit[:12]} exited with status {code}: {stderr.text()}")


class GitTree:
    """The config tree at one commit, read straight from git objects (no checkout)."""

    def __init__(self, repo: str, commit: str, subdir: str = "config"):
        self.repo, self.commit, self.subdir = repo, commit_id(commit), subdir.strip("/")
        self.label = f"{self.subdir}@{commit[:12]}"
        # `-l`: each blob's size from the tree, so a file's size is known before (or without) reading it
        listing = git(repo, "ls-tree", "-r", "-z", "-l", "--end-of-options", commit, "--", self.subdir + "/")
        prefix = self.subdir + "/"
        self._sizes: dict[str, int] = {}
        for entry in listing.decode().split("\0"):
            meta, _, path = entry.partition("\t")
            if path.startswith(prefix):
                size = meta.split()[-1] if meta else "-"
                self._sizes[path[len(prefix):]] = int(size) if size.isdigit() else 0
        self._files = sorted(self._sizes)
        self._cache: dict[str, bytes] = {}

    def read(self, rel: str) -> bytes | None:
        rel = os.path.normpath(rel)
        if rel not in self._files:
            return None
        if rel not in self._cache:
            self._cache[rel] = git(self.repo, "cat-file", "blob", f"{self.commit}:{self.subdir}/{rel}")
        return self._cache[rel]

    def size(self, rel: str) -> int:
        return self._sizes.get(os.path.normpath(rel), 0)

    def files_under(self, rel: str) -> Iterator[str]:
        rel = os.path.normpath(rel)
        if rel == ".":
            yield from self._files
            return
        yield from (f for f in self._files if f == rel or f.startswith(rel.rstrip("/") + "/"))


TREE_NAME = re.compile(r"[0-9a-f]{16}")  # a content tree's folder (desired.model.content_tree)
TREE_ASIDE = ".aside-"  # a content tree being written
UNUSED_TREE_GRACE_S = 3600.0


class ConfigRepo(dg.ConfigurableResource):
    """The git repo holding the mainframe's desired state (`config_subdir` inside it). Deploys read the config at
    a commit and lay it out under `deploy_root`, the folder the containers' config bind mounts point at."""

    repo_path: str = "."
    config_subdir: str = "config"
    branch: str = "main"
    deploy_root: str = ""
    remote_url: str = ""  # when set, repo_path is a local mirror of it, fetched by `fetch()`

    @property
    def path(self) -> str:
        return os.path.abspath(self.repo_path)

    @property
    def deployed_dir(self) -> str:
        return os.path.abspath(self.deploy_root or os.path.join(self.path, ".prodg", "deployed"))

    def fetch(self) -> None:
        """Bring the local mirror up to date with `remote_url` (cloning it the first time). Branch refs are forced:
        a force-push on the remote rewrites them here too. One fetch at a time per mirror (the sensor's tick, a push
        notification's evaluation and a CLI command may fetch at once; git would refuse the second's ref locks)."""
        if not self.remote_url:
            return
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, "prodg-fetch.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.isdir(os.path.join(self.path, "objects")) and \
                    not os.path.isdir(os.path.join(self.path, ".git")):
                git(self.path, "init", "-q", "--bare")
            try:
                git(self.path, "fetch", "-q", "--prune", self.remote_url, "+refs/heads/*:refs/heads/*", timeout=120)
            except GitError as exc:
                raise GitError(f"fetching {redact(self.remote_url, {})}: {exc}") from None

    def is_ancestor(self, older: str, newer: str) -> bool:
        try:
            git(self.path, "merge-base", "--is-ancestor", "--end-of-options", commit_id(older), commit_id(newer))
            return True
        except GitError:
            return False

    def commits_between(self, older: str, newer: str, limit: int = 200) -> list[str]:
        """Commits in older..newer, newest first (at most `limit`)."""
        older, newer = commit_id(older), commit_id(newer)
        listing = git(self.path, "rev-list", f"--max-count={limit}", "--end-of-options", f"{older}..{newer}")
        return listing.decode().split()

    def has_commit(self, sha: str) -> bool:
        if not COMMIT_ID.fullmatch(sha or ""):
            return False
        try:
            git(self.path, "cat-file", "-e", f"{sha}^{{commit}}")
            return True
        except GitError:
            return False

    def config_root(self, commit: str) -> str:
        """Where the config tree of `commit` lies on disk for bind mounts: the deploy root, under which each config
        path a container mounts has a content tree of its own (`lay_out`); the working folder when not in git."""
        return self.deployed_dir if commit else os.path.join(self.path, self.config_subdir)

    def build_root(self, spec: ServiceSpec, commit: str) -> str:
        """The folder under which `spec`'s build context (its config-relative path) lies on disk."""
        if commit and spec.build:
            return content_tree(self.deployed_dir, spec.build.digest)
        return os.path.join(self.path, self.config_subdir)

    def is_git(self) -> bool:
        try:
            git(self.path, "rev-parse", "--git-dir")
            return True
        except GitError:
            return False

    def head(self) -> str:
        ref = self.branch if self._has_ref(self.branch) else "HEAD"
        return git(self.path, "rev-parse", f"{ref}^{{commit}}").decode().strip()

    def _has_ref(self, ref: str) -> bool:
        try:
            git(self.path, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
            return True
        except GitError:
            return False

    def tree(self, commit: str) -> GitTree:
        return GitTree(self.path, commit, self.config_subdir)

    def desired_state(self, commit: str, materialise: bool = False,
                      environ: Mapping[str, str] | None = None) -> DesiredState:
        """The desired state at `commit` (raises ConfigInvalid), its variables from `environ` (default: the process
        environment). With `materialise`, the content trees its containers mount (and its build contexts) are laid
        out under the deploy root first (`lay_out`)."""
        environ = os.environ if environ is None else environ
        if not commit:  # not a git repo: the working folder is the desired state
            return load_desired_state(DirTree(os.path.join(self.path, self.config_subdir)), environ)
        state = load_desired_state(self.tree(commit), environ, trees_root=self.deployed_dir)
        if materialise:
            self.lay_out(commit, state)
        return state

    def lay_out(self, commit: str, state: DesiredState) -> list[str]:
        """Each config path a container of `state` mounts, and each build context, written once into a folder of
        the deploy root named by its content digest (desired.model.content_tree), read-only; returns the folders
        written now. A folder is complete before it appears (written aside, then renamed) and never rewritten: a
        run of an older or superseded commit cannot change a file a live container mounts, and a commit that leaves
        a file alone leaves its mount — and its container — alone."""
        os.makedirs(self.deployed_dir, exist_ok=True)
        written = []
        for digest, rel in sorted(content_paths(state).items()):
            dest = content_tree(self.deployed_dir, digest)
            if os.path.isdir(dest):
                os.utime(dest)  # wanted again: not collected as unused (remove_unused_trees)
                continue
            aside = tempfile.mkdtemp(prefix=f"{TREE_ASIDE}{digest[:16]}-", dir=self.deployed_dir)
            try:
                self._extract(commit, rel, aside)
                os.chmod(aside, 0o755)
                try:
                    os.rename(aside, dest)
                    written.append(dest)
                except OSError:
                    if not os.path.isdir(dest):  # not another run that laid out the same content first
                        raise
            finally:
                if os.path.isdir(aside):
                    shutil.rmtree(aside)
        return written

    def _extract(self, commit: str, rel: str, into: str) -> None:
        """The files under the config-relative path `rel` at `commit`, at their config-relative paths in `into`."""
        subdir = posixpath.join(self.config_subdir, rel) if rel not in ("", ".") else self.config_subdir
        data = b"".join(git_archive_chunks(self.path, commit, subdir))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                name = posixpath.relpath(member.name, self.config_subdir)
                if not member.isfile() or name.startswith(".."):
                    continue
                dest = os.path.join(into, name)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as fh:
                    fh.write(tar.extractfile(member).read())
                os.chmod(dest, member.mode & 0o555 | 0o444)

    def remove_unused_trees(self, in_use: set[str], grace_s: float = UNUSED_TREE_GRACE_S) -> list[str]:
        """Content trees (and folders left aside by an interrupted lay-out) that no container mounts — `in_use`:
        every bind source on the Engine — and that no run has wanted for `grace_s` (a run that laid one out a
        moment ago may not have created its container yet), removed; returns their paths."""
        removed = []
        try:
            names = os.listdir(self.deployed_dir)
        except FileNotFoundError:
            return removed
        now = time.time()
        for name in sorted(names):
            path = os.path.join(self.deployed_dir, name)
            if not (TREE_NAME.fullmatch(name) or name.startswith(TREE_ASIDE)) or not os.path.isdir(path):
                continue
            if any(src == path or src.startswith(path + "/") for src in in_use):
                continue
            if now - os.stat(path).st_mtime < grace_s:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed


def content_paths(state: DesiredState) -> dict[str, str]:
    """{content digest: config-relative path} of every config path `state`'s containers mount, and of every build
    context."""
    out = {}
    for spec in state.services.values():
        for mount in spec.volumes:
            if mount.config_path:
                rel, _, digest = mount.config_path.partition("#")
                out[digest] = rel
        if spec.build:
            out[spec.build.digest[:16]] = spec.build.context
    return out
