"""The repo's own tooling: build its kustomizations, validate what they render, check its promises.

Imported by the offline tests (tests/), the command line (python -m repo_tools) and the e2e harness.
"""

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
# Results that depend only on their inputs (schema verdicts, renders of recorded charts, kustomize builds) are kept
# here; $REPO_TOOLS_CACHE_DIR lets several checkouts share them.
CACHE_DIR = Path(os.environ.get("REPO_TOOLS_CACHE_DIR") or REPO_ROOT / ".cache" / "repo_tools")
# What no run has read for this long is removed from the cache: every edit of the repo leaves results behind.
CACHE_UNUSED_SECONDS = 24 * 3600
# libyaml's loader when PyYAML was built with it: the install layer's CRDs are megabytes of YAML, and the pure-Python
# loader would take most of a validation run reading the repo's own files.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """One YAML document, as yaml.safe_load reads it (with libyaml where there is one)."""
    return yaml.load(text, Loader=SAFE_LOADER)


def write_atomically(path: Path, text: str) -> None:
    """Write a file so that a concurrent reader sees the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(text)
    partial.replace(path)


def remove_unused(kept: Iterable[Path]) -> None:
    """Remove the kept results no run has read for CACHE_UNUSED_SECONDS."""
    unused_since = time.time() - CACHE_UNUSED_SECONDS
    for path in kept:
        with contextlib.suppress(OSError):  # another run may remove it first
            if path.stat().st_mtime < unused_since:
                path.unlink()


def repo_files(root: Path) -> list[str]:
    """The repo's files, as git sees them (tracked, or new and not ignored); outside git, every file outside hidden
    folders and caches (also where git is not installed). What Renovate reads, and what the e2e run commits."""
    if shutil.which("git"):
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            text=True,
            check=False,
        )
        if listed.returncode == 0:
            return sorted({name for name in listed.stdout.splitlines() if (root / name).is_file()})  # not deleted ones
    found = []
    for folder, directories, files in os.walk(root):
        directories[:] = [name for name in directories if not name.startswith(".") and name != "__pycache__"]
        found += [str((Path(folder) / name).relative_to(root)) for name in files]
    return sorted(found)


class RepoFileError(ValueError):
    """A file of the repo is missing, unreadable or not what its readers expect; the message names it."""


def named(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def read_repo_file(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise RepoFileError(f"{named(path)} is missing: restore it (git checkout -- {named(path)})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RepoFileError(f"{named(path)} cannot be read: {error}") from None


def read_yaml_documents(path: Path) -> list[Any]:
    """Every document of a YAML file of the repo; a file that is missing or not YAML is a RepoFileError."""
    return parse_yaml_documents(read_repo_file(path), path)


def parse_yaml_documents(text: str, path: Path) -> list[Any]:
    """Every document of `text`, the content of the repo's file `path`; not YAML is a RepoFileError naming it."""
    try:
        return list(yaml.load_all(text, Loader=SAFE_LOADER))
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(error, "problem", None) or str(error)
        raise RepoFileError(f"{named(path)} is not valid YAML{line}: {problem}") from None


def read_yaml_file(path: Path) -> dict:
    """A one-document YAML file of the repo that holds a mapping; {} when it is empty."""
    documents = [doc for doc in read_yaml_documents(path) if doc is not None]
    if len(documents) > 1 or (documents and not isinstance(documents[0], dict)):
        raise RepoFileError(f"{named(path)} should hold one YAML mapping")
    return documents[0] if documents else {}


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as kustomize's configMapGenerator `envs` reads them; '#' starts a comment line."""
    lines = [line for line in read_repo_file(path).splitlines() if line.strip() and not line.startswith("#")]
    malformed = [line for line in lines if "=" not in line]
    if malformed:
        raise RepoFileError(f"{named(path)}: {malformed[0]!r} is not a KEY=value line")
    pairs = (line.split("=", 1) for line in lines)
    return {key.strip(): value.strip() for key, value in pairs}


def pinned_versions() -> dict[str, str]:
    """versions.env; a repo without it, or without the versions everything reads, stops here with one sentence."""
    try:
        versions = read_env_file(REPO_ROOT / "versions.env")
    except RepoFileError as error:
        raise SystemExit(f"ERROR: {error}") from None
    missing = [key for key in ("KUBERNETES_VERSION", "ISTIO_VERSION") if not versions.get(key)]
    if missing:
        raise SystemExit(f"ERROR: versions.env sets no {' and no '.join(missing)}")
    return versions


VERSIONS = pinned_versions()
KUBERNETES_VERSION = VERSIONS["KUBERNETES_VERSION"]
ISTIO_VERSION = VERSIONS["ISTIO_VERSION"]
