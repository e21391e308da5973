"""Time the default bake's full offline validation against bare kustomize builds, and the contract verifier.

Prints figures; asserts nothing. Run with `nox -s benchmark` (or directly, with the test requirements installed).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent
FIXTURES = TEMPLATE.parent / "shared" / "fixtures"
ROUNDS = 5
# A cold run renders the charts and reads every schema (several seconds), the suite takes a minute: fewer rounds.
COLD_ROUNDS = 3


def seconds(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def median_of(rounds: int, run) -> float:
    return statistics.median(run() for _ in range(rounds))


def main() -> int:
    if "RECORDED_FIXTURES" not in os.environ and (FIXTURES / "charts" / "rendered").is_dir():
        # As the tests run a bake: the Gateway API's CRDs and the charts from the recordings, not the network.
        os.environ["RECORDED_FIXTURES"] = str(FIXTURES)
    os.environ.pop("REPO_TOOLS_CACHE_DIR", None)  # the bake's own cache, which the cold runs delete
    with tempfile.TemporaryDirectory() as output_dir:
        repo = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=output_dir))
        # The generated repo's own code says how it runs kustomize and which directories it builds.
        ask_repo = (
            "import json; from repo_tools import kustomize, layout; print(json.dumps("
            "[kustomize.kustomize_command(), [str(path) for path in layout.app_kustomizations().values()]]))"
        )
        answer = subprocess.run([sys.executable, "-c", ask_repo], cwd=repo, check=True, capture_output=True, text=True)
        command, directories = json.loads(answer.stdout)
        validate = [sys.executable, "-m", "repo_tools"]

        bare = median_of(ROUNDS, lambda: sum(seconds([*command, directory], repo) for directory in directories))
        cache = repo / ".cache"
        cold = median_of(COLD_ROUNDS, lambda: shutil.rmtree(cache, ignore_errors=True) or seconds(validate, repo))
        full = median_of(ROUNDS, lambda: seconds(validate, repo))  # the cache the last cold run left: unchanged repo
        phases = subprocess.run(validate, cwd=repo, capture_output=True, text=True).stdout.splitlines()
        suite = seconds([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], repo)
        time_contract = (
            "import json, statistics, time; from repo_tools import contract, kustomize, layout\n"
            "rows, gateway = contract.load(), layout.ingress_gateway()\n"
            "built = {name: (kustomize.build(path), layout.public_host(path))"
            " for name, path in layout.overlays().items()}\n"
            "def once():\n"
            "    started = time.perf_counter()\n"
            "    for name, (docs, host) in built.items(): contract.check(name, docs, rows, gateway, host)\n"
            "    return time.perf_counter() - started\n"
            f"print(json.dumps([statistics.median(once() for _ in range({ROUNDS})), len(rows), len(built)]))"
        )
        answer = subprocess.run(
            [sys.executable, "-c", time_contract], cwd=repo, check=True, capture_output=True, text=True
        )
        verifier, rows, overlays = json.loads(answer.stdout)

    print(f"recorded upstream output:              {os.environ.get('RECORDED_FIXTURES', 'none: charts not rendered')}")
    print(f"helm rendering the install layer:      {shutil.which('helm') or 'none: recorded renders'}")
    print(f"kustomizations validated:              {len(directories)} ({', '.join(Path(d).name for d in directories)})")
    print(f"bare kustomize builds (median of {ROUNDS}):   {bare:6.2f} s")
    print(
        f"full validation, python -m repo_tools:  {full:6.2f} s   ({full / bare:.1f}x the bare builds; goal: <= 1.5 s, <= 3x)"
    )
    print(
        f"  the same with no cache (median of {COLD_ROUNDS}): {cold:6.2f} s   ({cold / bare:.1f}x; with recordings, renders the install layer too)"
    )
    print("  its phases, warm:")
    for line in phases:
        print(f"    {line}")
    print(f"generated repo's offline test suite:    {suite:6.2f} s   (one run, every test)")
    print(
        f"contract verifier, {rows} rows x {overlays} overlays: {verifier * 1000:6.1f} ms (builds excluded; goal: < 1 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
