"""Where configuration files come from: a plain directory, or a git repository where a *label* picks a version.

Plain Python (no web framework) so it can be read and tested on its own. Git is driven through its CLI because
that is what a reader already knows (`git rev-parse`, `git show`), not through a library.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

__all__ = [
    "RawFile",
    "Checkout",
    "Repository",
    "FileRepository",
    "GitRepository",
    "RepositoryError",
    "NoSuchLabelError",
    "open_repository",
]


class RepositoryError(Exception):
    """The repository could not be read (not the client's fault)."""


class NoSuchLabelError(RepositoryError):
    """The requested label is not a branch, tag or commit (Spring answers 404)."""

    def __init__(self, label: str) -> None:
        super().__init__(f"no such label: {label!r} is not a branch, tag or commit of the config repository")
        self.label = label


@dataclass(frozen=True)
class RawFile:
    filename: str  # e.g. "catalog-local.yml", relative to the repository root
    origin: str  # the property source name shown to clients
    content: bytes


@dataclass(frozen=True)
class Checkout:
    """The files found for one request, and the version they were read at."""

    version: str | None
    files: dict[str, RawFile]


class Repository(Protocol):
    is_git: bool

    def read(self, filenames: Sequence[str], label: str | None) -> Checkout:
        """Read those of ``filenames`` that exist (at ``label`` when the backend has versions)."""
        ...


def _read_dir(root: Path, filenames: Sequence[str], origin_prefix: str) -> dict[str, RawFile]:
    found: dict[str, RawFile] = {}
    for name in filenames:
        path = root / name
        if path.is_file():
            found[name] = RawFile(name, f"{origin_prefix}{name}", path.read_bytes())
    return found


class FileRepository:
    """Spring's *native* backend: a directory. Labels mean nothing here and are ignored, like Spring's."""

    is_git = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        # Spring names native sources "file:<search-location>/<file>"; keep the path as the operator wrote it.
        self._origin = f"file:{os.path.normpath(str(root))}/"

    def read(self, filenames: Sequence[str], label: str | None) -> Checkout:
        files = _read_dir(self.root, filenames, self._origin)
        # No commit id to offer, so the version is a digest of exactly what was served: it changes iff the
        # content does, which is what a client comparing versions needs.
        return Checkout(version=_digest(files), files=files)


def _digest(files: dict[str, RawFile]) -> str:
    digest = hashlib.sha256()
    for f in files.values():
        digest.update(f.filename.encode() + b"\0" + f.content + b"\0")
    return digest.hexdigest()[:12]


def _git_env() -> dict[str, str]:
    # An inherited GIT_DIR/GIT_WORK_TREE (e.g. when run from a git hook) would point git at another repository.
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


class GitRepository:
    """Spring's *git* backend, minus the clone: the repository is read in place.

    No label → the working tree as it is on disk (so an edit shows up without a commit), versioned as HEAD, or
    as `<HEAD>+dirty.<digest>` while the files served differ from HEAD's (so an edit changes the version too).
    A label → the files as committed at that branch, tag or commit, read with ``git cat-file``.
    """

    is_git = True

    def __init__(self, root: str | os.PathLike[str], toplevel: str, prefix: str) -> None:
        self.root = Path(root)
        self.toplevel = toplevel
        self.prefix = prefix  # the config directory's path inside the git repository ("" or "config-repo/")
        self._origin = f"file://{self.root.resolve().as_posix()}/"

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(
                ["git", "-C", self.toplevel, *args], capture_output=True, env=_git_env(), timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RepositoryError(f"git {args[0]} failed: {exc}") from exc
        if check and result.returncode != 0:
            raise RepositoryError(f"git {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
        return result

    def resolve(self, label: str) -> str:
        """Label → commit id. A leading '-' would be read by git as an option, so it can never be a label."""
        if not label or label.startswith("-"):
            raise NoSuchLabelError(label)
        result = self._git("rev-parse", "--verify", "--quiet", f"{label}^{{commit}}", check=False)
        if result.returncode != 0:
            raise NoSuchLabelError(label)
        return result.stdout.decode().strip()

    def head(self) -> str | None:
        result = self._git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
        return result.stdout.decode().strip() if result.returncode == 0 else None  # None: no commit yet

    def read(self, filenames: Sequence[str], label: str | None) -> Checkout:
        if label is None:
            files = _read_dir(self.root, filenames, self._origin)
            head = self.head()
            changed = self._git("status", "--porcelain", "--", *(f"{self.prefix}{n}" for n in filenames),
                                check=False).stdout.strip()
            return Checkout(version=f"{head}+dirty.{_digest(files)}" if changed or head is None else head, files=files)
        commit = self.resolve(label)
        listing = self._git("ls-tree", "--name-only", "-z", f"{commit}:{self.prefix}", check=False)
        present = set(listing.stdout.decode().split("\0")) if listing.returncode == 0 else set()
        files: dict[str, RawFile] = {}
        for name in filenames:
            if name in present:
                blob = self._git("cat-file", "blob", f"{commit}:{self.prefix}{name}")
                files[name] = RawFile(name, f"{self._origin}{name}", blob.stdout)
        return Checkout(version=commit, files=files)


def open_repository(path: str | os.PathLike[str]) -> Repository:
    """A git repository when ``path`` is one or lies inside one (and git is installed), else a plain directory."""
    try:
        result = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--show-toplevel", "--show-prefix"],
            capture_output=True,
            env=_git_env(),
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return FileRepository(path)
    if result.returncode != 0:
        return FileRepository(path)
    lines = result.stdout.decode().splitlines()
    toplevel, prefix = lines[0], (lines[1] if len(lines) > 1 else "")
    return GitRepository(path, toplevel, prefix)
