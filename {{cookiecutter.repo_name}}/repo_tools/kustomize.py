"""Run kustomize as a subprocess and return the documents it renders."""

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import yaml

from repo_tools import CACHE_DIR, SAFE_LOADER, load_yaml, write_atomically

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# The fields whose entries may name another kustomization, anywhere; every other file must lie within the folder.
REFERENCES = ("resources", "components", "bases", "generators", "transformers", "validators")
# A kept build nobody has read for this long is removed: every edit of the repo leaves one behind.
UNUSED_BUILD_SECONDS = 24 * 3600


class KustomizeError(RuntimeError):
    """kustomize is missing or refused to build; the message carries kustomize's own words."""


def kustomize_command() -> list[str]:
    """The command that builds a kustomization: $KUSTOMIZE, else kustomize, else kubectl kustomize."""
    configured = os.environ.get("KUSTOMIZE")
    if configured:
        if not shutil.which(configured):
            raise KustomizeError(f"KUSTOMIZE={configured} is not an executable file.")
        subcommand = "kustomize" if Path(configured).name.startswith("kubectl") else "build"
        return [configured, subcommand]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    raise KustomizeError(
        "Neither kustomize nor kubectl is on PATH: install kustomize v5 (or kubectl 1.27+), "
        "or set KUSTOMIZE to the path of either."
    )


# Builds started ahead (start), by directory; each is taken by the next render of its directory, once.
_started: dict[Path, Future[str]] = {}


def start(directories: Iterable[Path]) -> None:
    """Start building these kustomizations in the background: most of a small build is kustomize starting up, so
    a run that needs many builds overlaps them, and the next render of each directory takes its result."""
    pool = ThreadPoolExecutor(max_workers=(os.cpu_count() or 1) + 1)
    for directory in directories:
        kept = kept_build(directory)
        if directory not in _started and not (kept and kept.is_file()):
            _started[directory] = pool.submit(_run, directory)
    pool.shutdown(wait=False)


def render(directory: Path, *options: str) -> str:
    """The YAML stream kustomize renders for one kustomization directory. A build without options is kept in the
    cache by everything it reads, and read back while none of that changes."""
    if options:
        return _run(directory, *options)
    kept = kept_build(directory)
    if kept is not None and kept.is_file():
        os.utime(kept)  # in use: not removed as unused
        return kept.read_text()
    started = _started.pop(directory, None)
    stream = started.result() if started is not None else _run(directory)
    if kept is not None:
        write_atomically(kept, stream)
        remove_unused_builds(kept.parent)
    return stream


def kept_build(directory: Path) -> Path | None:
    digest = inputs_digest(directory)
    return CACHE_DIR / "builds" / f"{digest}.yaml" if digest else None


def inputs_digest(directory: Path) -> str | None:
    """A digest of what kustomize reads to build `directory`: every file of it and of each kustomization it refers
    to (files a kustomization names must lie within it), where each lies, and which kustomize. None, so that the
    build runs and is not kept, where a reference is remote (its content may change) or a kustomization unreadable
    (kustomize says why)."""
    command = kustomize_command()
    binary = os.stat(shutil.which(command[0]) or command[0])
    digest = hashlib.sha256(f"{command}\0{binary.st_size}\0{binary.st_mtime_ns}".encode())
    start_at = directory.resolve()
    pending, seen = [start_at], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        found = [current / name for name in KUSTOMIZATION_FILES if (current / name).is_file()]
        try:
            spec = load_yaml(found[0].read_text()) if found else None
        except (OSError, yaml.YAMLError):
            return None
        if not isinstance(spec, dict):
            return None
        for key in REFERENCES:
            for entry in spec.get(key) or []:
                if not isinstance(entry, str):
                    continue  # inline, in the kustomization file itself
                if "://" in entry or entry.startswith("git@"):
                    return None
                if (current / entry).is_dir():
                    pending.append((current / entry).resolve())
        digest.update(os.path.relpath(current, start_at).encode() + b"\0")
        for path in sorted(current.rglob("*")):
            relative = path.relative_to(current)
            if path.is_file() and not any(part.startswith(".") for part in relative.parts[:-1]):  # caches, .git
                digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def remove_unused_builds(folder: Path) -> None:
    unused_since = time.time() - UNUSED_BUILD_SECONDS
    for kept in folder.glob("*.yaml"):
        try:
            if kept.stat().st_mtime < unused_since:
                kept.unlink()
        except OSError:  # another run removed it first
            pass


def _run(directory: Path, *options: str) -> str:
    command = [*kustomize_command(), *options, str(directory)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KustomizeError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
    return result.stdout


def parse(stream: str) -> list[dict]:
    """The non-empty documents of a YAML stream."""
    return [doc for doc in yaml.load_all(stream, Loader=SAFE_LOADER) if doc]


def build(directory: Path, *options: str) -> list[dict]:
    """The documents of one kustomization, parsed; empty documents are dropped."""
    return parse(render(directory, *options))
