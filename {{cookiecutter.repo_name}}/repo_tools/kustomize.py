"""Run kustomize as a subprocess and return the documents it renders."""

import os
import shutil
import subprocess
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import yaml

from repo_tools import SAFE_LOADER


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
        if directory not in _started:
            _started[directory] = pool.submit(_run, directory)
    pool.shutdown(wait=False)


def render(directory: Path, *options: str) -> str:
    """The YAML stream kustomize renders for one kustomization directory."""
    started = None if options else _started.pop(directory, None)
    return started.result() if started is not None else _run(directory, *options)


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
