"""Every pinned version in this repo is one that Renovate (renovate.json) can propose updates for.

The pins: versions.env (all but KUBERNETES_VERSION, a choice rather than a pin), every chart version (helmCharts
and Flux HelmReleases), every container image the apps layer or the e2e harness runs, and every Wasm module a
WasmPlugin pulls. Renovate's managers
are applied as Renovate applies them: the regex managers' patterns (JavaScript syntax, translated), and the
built-in kustomize, flux and kubernetes managers over the files their `managerFilePatterns` select.
"""

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from repo_tools import REPO_ROOT, read_env_file, read_yaml_documents, repo_files

CONFIG = REPO_ROOT / "renovate.json"
NOT_PINS = {"KUBERNETES_VERSION"}
IMAGE_CONSTANT = re.compile(r'^[A-Z_]+_IMAGE = "([^"]+)"$', re.MULTILINE)
PATCHED_IMAGE = re.compile(r"path: \S+/image\n\s*value: (\S+)\n")
# A step's action, pinned as supply-chain guidance asks (OpenSSF Scorecard, Pinned-Dependencies): by the commit of
# its release tag, the tag in a comment. Renovate's github-actions manager reads both and updates both.
ACTION = re.compile(
    r"^\s*(?:-\s+)?uses:\s+(?P<name>[\w.-]+/[\w./-]+)@(?P<ref>\S+)(?:\s+#\s+(?P<tag>\S+))?\s*$", re.MULTILINE
)
COMMIT = re.compile(r"^[0-9a-f]{40}$")
WORKFLOWS = ".github/workflows"
DIGEST_PRESETS = {"helpers:pinGitHubActionDigests", "helpers:pinGitHubActionDigestsToSemver"}


@dataclass(frozen=True)
class Pin:
    where: str
    name: str
    version: str


def split_image(image: str) -> tuple[str, str]:
    """registry[:port]/repository[:tag][@digest] -> (name, tag, or the digest where there is no tag)."""
    name, _, digest = image.partition("@")
    repository, _, tag = name.rpartition(":")
    if not repository or "/" in tag:
        repository, tag = name, ""
    return repository, tag or digest


def images(value: object) -> Iterator[str]:
    """Every `image:` string in a manifest."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "image" and isinstance(item, str):
                yield item
            else:
                yield from images(item)
    elif isinstance(value, list):
        for item in value:
            yield from images(item)


def yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in read_yaml_documents(path) if isinstance(doc, dict)]


def pins(root: Path = REPO_ROOT) -> list[Pin]:
    found = []
    environment = read_env_file(root / "versions.env")
    for key, value in environment.items():
        if key not in NOT_PINS:
            found.append(Pin("versions.env", key, split_image(value)[1] or value))
    for path in sorted((root / "infrastructure").rglob("*.yaml")):
        for doc in yaml_documents(path):
            where = str(path.relative_to(root))
            found += [Pin(where, chart["name"], str(chart["version"])) for chart in doc.get("helmCharts") or []]
            if doc.get("kind") == "HelmRelease":
                chart = doc["spec"]["chart"]["spec"]
                found.append(Pin(where, chart["chart"], str(chart["version"])))
    for path in sorted((root / "apps").rglob("*.yaml")):
        patched = PATCHED_IMAGE.findall(path.read_text())  # JSON patches that set an image, in a kustomization
        docs = yaml_documents(path)
        in_manifests = [image for doc in docs for image in images(doc)]
        wasm_modules = [
            doc["spec"]["url"].removeprefix("oci://")
            for doc in docs
            if doc.get("kind") == "WasmPlugin" and str(doc["spec"].get("url", "")).startswith("oci://")
        ]
        found += [
            Pin(str(path.relative_to(root)), *split_image(image)) for image in patched + in_manifests + wasm_modules
        ]
    for path in workflows(root):
        found += [
            Pin(str(path.relative_to(root)), match["name"], match["tag"] or match["ref"])
            for match in ACTION.finditer(path.read_text())
        ]
    for path in sorted((root / "e2e" / "harness").glob("*.py")):
        found += [
            Pin(str(path.relative_to(root)), *split_image(image)) for image in IMAGE_CONSTANT.findall(path.read_text())
        ]
    return found


def workflows(root: Path) -> list[Path]:
    return sorted([*(root / WORKFLOWS).glob("*.yml"), *(root / WORKFLOWS).glob("*.yaml")])


def actions_pinned_by_commit(root: Path = REPO_ROOT) -> list[str]:
    """Every action a workflow uses names the commit of a release tag, and the tag beside it."""
    return [
        f"{path.relative_to(root)}: {match['name']}@{match['ref']} is not pinned to a commit with its tag in a "
        "comment (uses: owner/action@<40-hex commit> # vX.Y.Z)"
        for path in workflows(root)
        for match in ACTION.finditer(path.read_text())
        if not COMMIT.match(match["ref"]) or not match["tag"]
    ]


def file_pattern(pattern: str) -> re.Pattern[str]:
    """A managerFilePatterns entry: /regex/ as in JavaScript, else a glob."""
    if pattern.startswith("/") and pattern.endswith("/"):
        return re.compile(pattern[1:-1])
    return re.compile(re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*") + "$")


def selected(config: dict, root: Path, files: list[str]) -> list[Path]:
    patterns = [file_pattern(pattern) for pattern in config.get("managerFilePatterns", [])]
    return [root / name for name in files if any(pattern.search(name) for pattern in patterns)]


def regex_matches(manager: dict, root: Path, files: list[str]) -> set[tuple[str, str, str]]:
    found = set()
    for path in selected(manager, root, files):
        text = path.read_text()
        for expression in manager.get("matchStrings", []):
            for match in re.finditer(expression.replace("(?<", "(?P<"), text):
                # In an env file the pin is known by its key, which the match spans.
                key = re.search(r"^([A-Z_]+)=", match.group(0), re.MULTILINE)
                name = key.group(1) if path.suffix == ".env" and key else match["depName"]
                found.add((str(path.relative_to(root)), name, match["currentValue"]))
    return found


def builtin_matches(config: dict, root: Path, files: list[str]) -> set[tuple[str, str, str]]:
    """What the kustomize (helmCharts), flux (HelmRelease) and kubernetes (image:) managers extract."""
    found = set()
    kustomize = config.get("kustomize", {"managerFilePatterns": ["/(^|/)kustomization\\.ya?ml$/"]})
    for path in selected(kustomize, root, files):
        for doc in yaml_documents(path):
            found |= {(str(path.relative_to(root)), c["name"], str(c["version"])) for c in doc.get("helmCharts") or []}
    for path in selected(config.get("flux", {}), root, files):
        for doc in yaml_documents(path):
            if doc.get("kind") == "HelmRelease":
                chart = doc["spec"]["chart"]["spec"]
                found.add((str(path.relative_to(root)), chart["chart"], str(chart["version"])))
    for path in selected(config.get("kubernetes", {}), root, files):
        for image in (image for doc in yaml_documents(path) for image in images(doc)):
            found.add((str(path.relative_to(root)), *split_image(image)))
    # github-actions reads every workflow; it keeps a commit pin current only with a digest-pinning preset.
    if (config.get("github-actions") or {}).get("enabled", True) and DIGEST_PRESETS & set(config.get("extends", [])):
        for path in workflows(root):
            found |= {
                (str(path.relative_to(root)), match["name"], match["tag"] or match["ref"])
                for match in ACTION.finditer(path.read_text())
            }
    return found


def config_errors(config_file: Path = CONFIG) -> list[str]:
    """renovate.json against Renovate's published schema, as check-jsonschema vendors it (offline)."""
    package = importlib.util.find_spec("check_jsonschema")  # its location only: importing it loads its CLI
    assert package is not None and package.submodule_search_locations, "check-jsonschema is not installed"
    vendored = Path(package.submodule_search_locations[0]) / "builtin_schemas" / "vendor" / "renovate.json"
    schema = json.loads(vendored.read_text())
    config = json.loads(config_file.read_text())
    return [
        f"renovate.json: {'.'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(config)
    ]


def unmatched_pins(root: Path = REPO_ROOT) -> list[str]:
    config = json.loads((root / "renovate.json").read_text())
    files = repo_files(root)
    matched = builtin_matches(config, root, files)
    for manager in config.get("customManagers", []):
        matched |= regex_matches(manager, root, files)
    return [
        f"{pin.where}: {pin.name} {pin.version} is matched by no manager in renovate.json"
        for pin in pins(root)
        if (pin.where, pin.name, pin.version) not in matched
    ]
