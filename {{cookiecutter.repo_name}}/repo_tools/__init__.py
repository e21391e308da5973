"""The repo's own tooling: build its kustomizations, validate what they render, check its promises.

Imported by the offline tests (tests/), the command line (python -m repo_tools) and the e2e harness.
"""

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Results that depend only on their inputs (schema verdicts, renders of recorded charts) are kept here;
# $REPO_TOOLS_CACHE_DIR lets several checkouts share them.
CACHE_DIR = Path(os.environ.get("REPO_TOOLS_CACHE_DIR") or REPO_ROOT / ".cache" / "repo_tools")


def write_atomically(path: Path, text: str) -> None:
    """Write a file so that a concurrent reader sees the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(text)
    partial.replace(path)


def repo_files(root: Path) -> list[str]:
    """The repo's files, as git sees them (tracked, or new and not ignored); outside git, every file outside hidden
    folders and caches. What Renovate reads, and what the e2e run commits."""
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


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as kustomize's configMapGenerator `envs` reads them; '#' starts a comment line."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


VERSIONS = read_env_file(REPO_ROOT / "versions.env")
KUBERNETES_VERSION = VERSIONS["KUBERNETES_VERSION"]
ISTIO_VERSION = VERSIONS["ISTIO_VERSION"]
