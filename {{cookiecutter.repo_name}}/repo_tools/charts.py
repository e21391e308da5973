"""Render the install layer (infrastructure/overlays/<env>) with its Helm charts, for real or from recorded renders.

kustomize renders `helmCharts` by calling a `helm` executable (`--helm-command`): `version`, `pull`, then
`template RELEASE CHART_DIR --namespace NS -f VALUES [--include-crds]`. Two executables answer those calls:

- real Helm, which downloads the charts (a laptop, the GitHub workflow);
- the recorder's stand-in below, which answers `template` with the chart's real output recorded by Helm for this
  repo's releases, namespaces and values, from a folder named by $RECORDED_FIXTURES (`charts/rendered/...`,
  `charts/chart-values/...`, `crds/...`). It refuses a chart, version, release or namespace it has no recording of,
  so a build never silently renders something other than what the repo asks for.

    python -m repo_tools.charts template RELEASE CHART_DIR --namespace NS -f VALUES [--include-crds]
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from repo_tools import CACHE_DIR, REPO_ROOT, kustomize, load_yaml, write_atomically

RECORDED_FIXTURES = "RECORDED_FIXTURES"
# The Gateway API's release file of CRDs, as infrastructure/gateway-api lists it.
GATEWAY_API_RELEASE_URL = (
    "https://github.com/kubernetes-sigs/gateway-api/releases/download/{version}/standard-install.yaml"
)
GATEWAY_API_RELEASE = re.compile(
    re.escape(GATEWAY_API_RELEASE_URL).replace(re.escape("{version}"), r"(?P<version>v[^/\s]+)")
)
# Istio's sample add-ons at a release tag, as components/observability-addons lists them.
ISTIO_ADDON_URL = "https://raw.githubusercontent.com/istio/istio/{version}/samples/addons/{addon}.yaml"
ISTIO_ADDON = re.compile(
    re.escape(ISTIO_ADDON_URL)
    .replace(re.escape("{version}"), r"(?P<version>[^/\s]+)")
    .replace(re.escape("{addon}"), r"(?P<addon>[a-z-]+)")
)
ISTIO_CHART_REPOSITORY = "https://istio-release.storage.googleapis.com/charts"
ISTIO_CHARTS = {"base": "istio-base", "istiod": "istiod", "gateway": "istio-gateway", "cni": "istio-cni"}
# (release, namespace) each recording was made with: see the fixtures' README.
RECORDED_RELEASES = {
    "base": ("istio-base", "istio-system"),
    "istiod": ("istiod", "istio-system"),
    "cni": ("istio-cni", "istio-system"),
    "gateway": ("istio-ingressgateway", "istio-system"),
    "cert-manager": ("cert-manager", "cert-manager"),
}


class ChartsUnavailable(RuntimeError):
    """Neither recorded renders nor a working Helm with network access: the install layer cannot be rendered."""


@dataclass(frozen=True)
class Recordings:
    """The folder of recorded upstream output ($RECORDED_FIXTURES)."""

    root: Path

    def render(self, chart: str, version: str) -> Path:
        if chart in ISTIO_CHARTS:
            minor = ".".join(version.split(".")[:2])
            return self.root / "charts" / "rendered" / f"istio-{minor}" / f"{ISTIO_CHARTS[chart]}.yaml"
        return self.root / "charts" / "rendered" / f"{chart}-{version}.yaml"

    def default_values(self, chart: str, version: str) -> Path:
        if chart in ISTIO_CHARTS:
            minor = ".".join(version.split(".")[:2])
            return self.root / "charts" / "chart-values" / f"istio-{minor}" / f"{ISTIO_CHARTS[chart]}.values.yaml"
        return self.root / "charts" / "chart-values" / f"{chart}-{version}.values.yaml"

    def values_schema(self, chart: str, version: str) -> Path:
        return self.default_values(chart, version).with_suffix("").with_suffix(".schema.json")

    def chart_source(self, chart: str, version: str) -> Path:
        """The chart's own source, for a real `helm template` with this repo's values."""
        if chart in ISTIO_CHARTS:
            minor = ".".join(version.split(".")[:2])
            return self.root / "charts" / "src" / f"istio-{minor}" / chart
        return self.root / "charts" / "src" / f"{chart}-{version}"

    def gateway_api_crds(self, version: str) -> Path:
        return self.root / "crds" / f"gateway-api-{version}-standard.yaml"

    def crds(self) -> list[Path]:
        return sorted((self.root / "crds").glob("*.yaml"))


def recordings() -> Recordings | None:
    """The recorded renders named by $RECORDED_FIXTURES, or None when the variable is unset."""
    folder = os.environ.get(RECORDED_FIXTURES)
    if not folder:
        return None
    root = Path(folder).resolve()
    if not (root / "charts" / "rendered").is_dir():
        raise ChartsUnavailable(f"{RECORDED_FIXTURES}={folder} has no charts/rendered/ folder of recorded renders")
    return Recordings(root)


def unavailable_reason() -> str:
    """Why the install layer cannot be rendered here, or "" when it can."""
    try:
        if recordings() is not None:
            return ""
    except ChartsUnavailable as error:
        return str(error)
    if real_helm() is None or not chart_repositories_reachable():
        return (
            f"the install layer needs its Helm charts: set {RECORDED_FIXTURES} to a folder of recorded renders "
            "(charts/rendered/...) or put helm on PATH with network access to the chart repositories"
        )
    return ""


@cache
def chart_repositories_reachable() -> bool:
    """Can Helm pull the charts? Asked once, of Istio's chart repository's index."""
    try:
        with urllib.request.urlopen(f"{ISTIO_CHART_REPOSITORY}/index.yaml", timeout=10):
            return True
    except OSError:
        return False


def _template(arguments: list[str], recorded: Recordings) -> str:
    release, chart_dir = arguments[0], Path(arguments[1])
    namespace = arguments[arguments.index("--namespace") + 1] if "--namespace" in arguments else "default"
    chart = chart_dir.name
    version = chart_dir.parent.name.removeprefix(f"{chart}-")
    source = recorded.render(chart, version)
    if not source.is_file():
        raise ChartsUnavailable(f"no recorded render of chart {chart} {version} (looked for {source})")
    if RECORDED_RELEASES.get(chart) != (release, namespace):
        raise ChartsUnavailable(
            f"chart {chart} is recorded as release {RECORDED_RELEASES.get(chart)}, "
            f"not ({release!r}, {namespace!r}): record it again for the new release name or namespace"
        )
    text = source.read_text()
    if "--include-crds" in arguments or "\nkind: CustomResourceDefinition" not in text:
        return text
    loaded = yaml.load_all(text, Loader=kustomize.SAFE_LOADER)
    documents = [doc for doc in loaded if doc and doc.get("kind") != "CustomResourceDefinition"]
    return yaml.dump_all(documents, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def recorded_helm(arguments: list[str], recorded: Recordings) -> str:
    """What the stand-in prints for one helm call."""
    command, rest = arguments[0], arguments[1:]
    if command == "version":
        return "v3.17.0+recorded\n"
    if command == "pull":
        untar_dir = Path(rest[rest.index("--untardir") + 1])
        (untar_dir / rest[rest.index("--repo") + 2]).mkdir(parents=True, exist_ok=True)
        return ""
    if command == "template":
        return _template(rest, recorded)
    raise ChartsUnavailable(f"the recorded-render stand-in for helm does not answer `helm {command}`")


def real_helm() -> str | None:
    """Helm itself: $HELM, else helm on PATH."""
    return os.environ.get("HELM") or shutil.which("helm")


def renders_with_real_helm() -> bool:
    """Real Helm renders the charts wherever it can: from their recorded sources, or (without recordings) from the
    chart repositories. Only a machine with recordings and no Helm answers from the recorded renders."""
    return real_helm() is not None


@contextmanager
def helm_command() -> Iterator[str]:
    """An executable kustomize can call as helm: real Helm where there is one, else the recorded-render stand-in."""
    reason = unavailable_reason()
    if reason:
        raise ChartsUnavailable(reason)
    recorded = recordings()
    if recorded is None or renders_with_real_helm():
        yield str(real_helm())
        return
    with tempfile.TemporaryDirectory(prefix="recorded-helm-") as folder:
        script = Path(folder) / "helm"
        script.write_text(
            f'#!/bin/sh\nexport PYTHONPATH="{REPO_ROOT}" {RECORDED_FIXTURES}="{recorded.root}"\n'
            f'exec "{sys.executable}" -m repo_tools.charts "$@"\n'
        )
        script.chmod(0o755)
        yield str(script)


@contextmanager
def infrastructure_copy(root: Path = REPO_ROOT, helm_free: bool = False) -> Iterator[Path]:
    """A scratch copy of infrastructure/ to build: kustomize pulls charts beside each kustomization, and each
    remote release file a kustomization lists is answered from a local copy (gateway_api_crds). A `helm_free` build
    (Flux's view: its HelmReleases, not what they render) gets no chart sources, and a release file that can be had
    nowhere is left out, not fetched: those checks read no CRD."""
    with tempfile.TemporaryDirectory(prefix="infrastructure-") as scratch:
        copy = Path(scratch) / "infrastructure"
        shutil.copytree(root / "infrastructure", copy, ignore=shutil.ignore_patterns("charts"))
        for kustomization in copy.rglob("kustomization.yaml"):
            _answer_remote_resources(kustomization, helm_free)
            if not helm_free:
                _place_recorded_chart_sources(kustomization)
        yield copy


def _place_recorded_chart_sources(kustomization: Path) -> None:
    """Where recordings hold a chart's source, put it where kustomize looks before it pulls
    (charts/<name>-<version>/<name>), so that real Helm renders it offline with the repo's values."""
    recorded = recordings()
    if recorded is None or not renders_with_real_helm():
        return
    for chart in (load_yaml(kustomization.read_text()) or {}).get("helmCharts") or []:
        source = recorded.chart_source(chart["name"], str(chart["version"]))
        if not (source / "Chart.yaml").is_file():
            raise ChartsUnavailable(
                f"no recorded source of chart {chart['name']} {chart['version']} (looked for {source})"
            )
        target = kustomization.parent / "charts" / f"{chart['name']}-{chart['version']}" / chart["name"]
        shutil.copytree(source, target)


def _answer_remote_resources(kustomization: Path, without_unreachable: bool) -> None:
    text = kustomization.read_text()
    for match in GATEWAY_API_RELEASE.finditer(text):
        source = gateway_api_crds(match["version"])
        if source is not None:
            shutil.copyfile(source, kustomization.parent / source.name)
            text = text.replace(match[0], source.name)
        elif without_unreachable:
            left_out = kustomization.parent / "left-out.yaml"
            left_out.write_text(f"# {match[0]} can be had nowhere here: left out of this offline build\n")
            text = text.replace(match[0], left_out.name)
    kustomization.write_text(text)


def gateway_api_crds(version: str) -> Path | None:
    """The Gateway API release's CRDs: the recorded copy when recordings are given (refusing a version they lack),
    else the release file downloaded once into the cache; None where it cannot be fetched (kustomize then tries
    the URL itself and says why it failed)."""
    recorded = recordings()
    if recorded is not None:
        source = recorded.gateway_api_crds(version)
        if not source.is_file():
            raise ChartsUnavailable(f"no recording of the Gateway API {version} CRDs (looked for {source})")
        return source
    cached = CACHE_DIR / f"gateway-api-{version}-standard.yaml"
    if not cached.is_file():
        try:
            with urllib.request.urlopen(GATEWAY_API_RELEASE_URL.format(version=version), timeout=30) as response:
                write_atomically(cached, response.read().decode())
        except OSError:
            return None
    return cached


def render(overlay: Path, root: Path = REPO_ROOT) -> list[dict]:
    """The documents of one infrastructure overlay (of this repo, or a checkout of it at `root`), charts rendered.

    It renders a copy of infrastructure/ (infrastructure_copy), so the repo stays clean.
    """
    relative = overlay.resolve().relative_to(root.resolve())
    recorded = recordings()
    # Kept parsed, as JSON: reading megabytes of CRDs back as YAML would cost more than the rest of the checks.
    key = render_key(relative, root, recorded) if recorded else None
    cached = CACHE_DIR / "renders" / f"{key}.json" if key else None
    if cached is None:
        return render_now(relative, root)
    if cached.is_file():
        return json.loads(cached.read_text())
    # Runs sharing the cache (checkouts, parallel tests) render one overlay once: the others wait for the first.
    cached.parent.mkdir(parents=True, exist_ok=True)
    with cached.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.is_file():
            return json.loads(cached.read_text())
        docs = render_now(relative, root)
        write_atomically(cached, json.dumps(docs))
    return docs


def render_now(relative: Path, root: Path) -> list[dict]:
    with helm_command() as helm, infrastructure_copy(root) as copy:
        return kustomize.build(copy.parent / relative, "--enable-helm", f"--helm-command={helm}")


def render_key(relative: Path, root: Path, recorded: Recordings) -> str | None:
    """What a render from recordings depends on: what kustomize reads of the install layer for this overlay (so
    environments whose installs read the same share one render), the recordings (renders or chart sources), the
    Helm that renders them, this module. None where kustomize cannot say (it then fails and says why)."""
    inputs = kustomize.inputs_digest(root / relative, addresses_pinned=True)
    if inputs is None:
        return None
    helm = real_helm() if renders_with_real_helm() else "recorded renders"
    digest = hashlib.sha256(f"{inputs}\0{recorded.root}\0{helm}\0".encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def main(arguments: list[str]) -> int:
    recorded = recordings()
    if recorded is None:
        print(f"set {RECORDED_FIXTURES} to the folder of recorded renders", file=sys.stderr)
        return 1
    try:
        sys.stdout.write(recorded_helm(arguments, recorded))
    except ChartsUnavailable as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
