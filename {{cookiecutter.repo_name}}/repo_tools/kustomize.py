"""Run kustomize as a subprocess and return the documents it renders."""

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path

import yaml

from repo_tools import CACHE_DIR, SAFE_LOADER, load_yaml, remove_unused, write_atomically

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# The fields whose entries may name another kustomization, anywhere; every other file must lie within the folder.
REFERENCES = ("resources", "components", "bases", "generators", "transformers", "validators")


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


# Builds started ahead (start), by directory, with the digest of their inputs then; each is taken by the next render
# of its directory, once, if its inputs are still the same.
_started: dict[Path, tuple[str | None, Future[str]]] = {}


def start(directories: Iterable[Path]) -> None:
    """Start building these kustomizations in the background: most of a small build is kustomize starting up, so
    a run that needs many builds overlaps them, and the next render of each directory takes its result."""
    pool = ThreadPoolExecutor(max_workers=(os.cpu_count() or 1) + 1)
    for directory in directories:
        try:
            digest = inputs_digest(directory)
        except KustomizeError:  # no kustomize: the build says so, in its turn
            digest = None
        if directory not in _started and not (digest and kept_build(digest).is_file()):
            _started[directory] = (digest, pool.submit(_run, directory))
    pool.shutdown(wait=False)


def render(directory: Path, *options: str) -> str:
    """The YAML stream kustomize renders for one kustomization directory. A build without options is kept in the
    cache by everything it reads, and read back while none of that changes."""
    if options:
        return _run(directory, *options)
    return _kept_render(directory, inputs_digest(directory))


def _kept_render(directory: Path, digest: str | None) -> str:
    kept = kept_build(digest) if digest else None
    if kept is not None and kept.is_file():
        os.utime(kept)  # in use: not removed as unused
        return kept.read_text()
    started_with, started = _started.pop(directory, (None, None))
    stream = started.result() if started is not None and started_with == digest else _run(directory)
    if kept is not None and inputs_digest(directory) == digest:  # nothing changed while kustomize read it
        write_atomically(kept, stream)
        remove_unused(kept.parent.glob("*.*"))
    return stream


def kept_build(digest: str) -> Path:
    return CACHE_DIR / "builds" / f"{digest}.yaml"


@cache
def kustomize_identity() -> str:
    """The command and the version it reports: a version manager's shim or kubectl's dispatcher may run another
    kustomize under the same path."""
    command = kustomize_command()
    asked = [command[0], "version", "--client"] if command[1] == "kustomize" else [command[0], "version"]
    version = subprocess.run(asked, capture_output=True, text=True, check=False).stdout
    return f"{command}\0{version}\0{os.environ.get('KUSTOMIZE_ENABLE_MANAGEDBY_LABEL', '')}"


def inputs_digest(directory: Path, addresses_pinned: bool = False) -> str | None:
    """A digest of what kustomize reads to build `directory`: every file of it and of each kustomization it refers
    to (any other file a kustomization names must lie within it), where each lies, and which kustomize. Each
    kustomization counts by its file's name and what it says, not by its comments or layout, so that environments
    whose builds read the same things share one digest. None, so that the build runs and is not kept, where an entry
    is remote or a git repository (its content may change), a chart home is set (kustomize reads it wherever it
    lies), a field is spelt in another case (kustomize reads field names in any case), or a kustomization is missing
    or unreadable (kustomize says why).

    With `addresses_pinned` (renders of the install layer, whose remote resources are releases answered from the
    recordings or pinned by their address) a remote resource counts by its address, and the charts kustomize pulls
    beside a kustomization are left out (a render reads the recorded sources the address names)."""
    start_at, cache = directory.resolve(), CACHE_DIR.resolve()
    pending, kustomizations = [start_at], {}
    while pending:
        current = pending.pop()
        if current in kustomizations:
            continue
        found = [current / name for name in KUSTOMIZATION_FILES if (current / name).is_file()]
        try:
            spec = load_yaml(found[0].read_text()) if found else None
        except (OSError, yaml.YAMLError):
            return None
        if not isinstance(spec, dict) or not _kept_apart(spec):
            return None
        kustomizations[current] = (found[0], spec)
        for key in REFERENCES:
            for entry in spec.get(key) or []:
                if not isinstance(entry, str) or "\n" in entry:
                    continue  # inline, in the kustomization file itself
                target = Path(os.path.normpath(current / entry))  # as kustomize joins it: before any symlink
                try:
                    if target.is_dir():
                        pending.append(target.resolve())
                    elif not target.is_file() and not (addresses_pinned and "://" in entry):
                        return None  # a git repository or an address: kustomize fetches it, or fails
                except OSError:
                    return None
    digest = hashlib.sha256(kustomize_identity().encode())
    for folder, (file, spec) in sorted(kustomizations.items()):
        try:
            says = json.dumps(spec, sort_keys=True)
        except (TypeError, ValueError):  # a date, say, which YAML and kustomize read differently: the file itself
            says = file.read_text()
        digest.update(f"{os.path.relpath(folder, start_at)}\0{file.name}\0{says}\0".encode())
    kustomization_files = {file for file, _ in kustomizations.values()}
    # Each file once: a folder within another read folder is hashed with it.
    within = [f"{folder}{os.sep}" for folder in kustomizations]
    outermost = [folder for folder in kustomizations if not any(str(folder).startswith(other) for other in within)]
    for folder in sorted(outermost):
        holds_cache = cache.is_relative_to(folder)  # rglob follows no symlinked folder: only then, or a link
        for path in sorted(folder.rglob("*")):
            parts = path.relative_to(folder).parts
            if ".git" in parts or path in kustomization_files or (addresses_pinned and "charts" in parts):
                continue
            if (holds_cache or path.is_symlink()) and path.resolve().is_relative_to(cache):
                continue
            where = os.path.relpath(path, start_at)
            if path.is_symlink():
                digest.update(f"{where}\0-> {os.readlink(path)}\0".encode())
            if path.is_file():
                digest.update(where.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def file_entries(spec: dict) -> list[str]:
    """The files a kustomization names outside REFERENCES (patches, generators' sources, CRDs, configurations,
    OpenAPI): kustomize fetches any of them given as an http(s) address."""
    entries = [*(spec.get("patchesStrategicMerge") or []), *(spec.get("crds") or [])]
    entries += spec.get("configurations") or []
    for key in ("patches", "patchesJson6902", "replacements"):
        entries += [item.get("path", "") for item in spec.get(key) or [] if isinstance(item, dict)]
    if isinstance(spec.get("openapi"), dict):
        entries.append(spec["openapi"].get("path", ""))
    for key in ("configMapGenerator", "secretGenerator"):
        for generator in spec.get(key) or []:
            if isinstance(generator, dict):
                entries += [*(generator.get("files") or []), *(generator.get("envs") or []), generator.get("env", "")]
    for chart in spec.get("helmCharts") or []:
        if isinstance(chart, dict):
            entries += [chart.get("valuesFile", ""), *(chart.get("additionalValuesFiles") or [])]
    return [entry for entry in entries if isinstance(entry, str)]


# The fields that name what a kustomization reads: kustomize matches field names in any case.
READING_FIELDS = {
    name.lower(): name
    for name in (*REFERENCES, "patchesStrategicMerge", "crds", "configurations", "patches", "patchesJson6902")
    + ("replacements", "openapi", "configMapGenerator", "secretGenerator", "helmCharts", "helmGlobals")
}


def _kept_apart(spec: dict) -> bool:
    """Whether a build reading this kustomization can be kept: it reads no remote file, sets no chart home, and
    spells each field that names what it reads as the digest reads it."""
    if any(READING_FIELDS.get(str(key).lower(), key) != key for key in spec):
        return False
    if isinstance(spec.get("helmGlobals"), dict) and spec["helmGlobals"].get("chartHome"):
        return False
    return not any("://" in entry for entry in file_entries(spec))


def _run(directory: Path, *options: str) -> str:
    command = [*kustomize_command(), *options, str(directory)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KustomizeError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
    return result.stdout


class OutputLoader(SAFE_LOADER):  # type: ignore[misc,valid-type]
    """kustomize's output read as the API server reads it. kustomize quotes text that Go's YAML would read as
    another type, but leaves unquoted some that YAML 1.1 reads as a date or a `=` value (`2024-01-01 10:00:00 +00:00`,
    a lone `=`): here those stay text, as they are."""


OutputLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag.rsplit(":", 1)[-1] not in ("timestamp", "value")]
    for first, resolvers in SAFE_LOADER.yaml_implicit_resolvers.items()
}


def parse(stream: str) -> list[dict]:
    """The non-empty documents of kustomize's output."""
    return [doc for doc in yaml.load_all(stream, Loader=OutputLoader) if doc]


def build(directory: Path, *options: str) -> list[dict]:
    """The documents of one kustomization, parsed; empty documents are dropped. A build without options is kept
    parsed too, as JSON, which reads back several times faster than YAML."""
    if options:
        return parse(_run(directory, *options))
    digest = inputs_digest(directory)
    if digest is None:
        return parse(_kept_render(directory, digest))
    kept = kept_build(digest).with_suffix(".json")
    if kept.is_file():
        os.utime(kept)
        return json.loads(kept.read_text())
    docs = parse(_kept_render(directory, digest))
    if kept_build(digest).is_file():  # the stream was kept: nothing changed meanwhile
        write_atomically(kept, json.dumps(docs))  # kustomize writes what JSON holds: it converts through JSON
    return docs
