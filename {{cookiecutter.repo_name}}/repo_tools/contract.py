"""The traffic contract (contract.yaml), checked offline against rendered overlays.

    python -m repo_tools.contract [OVERLAY ...]

prints every row's outcome per overlay and the rule that decided it, and exits 1 on any mismatch.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from repo_tools import REPO_ROOT, kustomize, layout
from repo_tools.mesh import Caller, Mesh, Unmodelled, Verdict

CONTRACT = REPO_ROOT / "contract.yaml"


@dataclass(frozen=True)
class Row:
    name: str
    caller: str | dict
    request: dict
    expected: str


@dataclass(frozen=True)
class Outcome:
    overlay: str
    row: Row
    verdict: Verdict

    @property
    def holds(self) -> bool:
        return self.verdict.outcome == self.row.expected

    def line(self) -> str:
        if self.holds:
            return f"HOLDS  {self.overlay:<8} {self.row.name}: {self.verdict.outcome} ({self.verdict.because})"
        return (
            f"FAILS  {self.overlay:<8} {self.row.name}: expected {self.row.expected}, got {self.verdict.outcome} "
            f"({self.verdict.because})"
        )


def expected_outcome(expect: str | dict) -> str:
    if isinstance(expect, str):
        return expect
    (key, value), *_ = expect.items()
    return f"{key} {value}"


def load(path: Path = CONTRACT) -> list[Row]:
    rows = yaml.safe_load(path.read_text())["rows"]
    return [Row(row["name"], row["from"], row.get("request", {}), expected_outcome(row["expect"])) for row in rows]


def caller_of(row: Row, gateway: layout.IngressGateway) -> Caller:
    if row.caller == "ingress-gateway":
        return Caller(gateway.namespace, gateway.service_account)
    if not isinstance(row.caller, dict):
        raise ValueError(f"row {row.name!r}: from must be internet, ingress-gateway or a pod identity")
    return Caller(row.caller["namespace"], row.caller["serviceAccount"], row.caller.get("sidecar", True))


def evaluate(row: Row, mesh: Mesh, host: str) -> Verdict:
    request = row.request
    try:
        if row.caller == "internet":
            return mesh.from_internet(
                request.get("scheme", "https"), host, request.get("path", "/"), request.get("method", "GET")
            )
        return mesh.from_pod(caller_of(row, mesh.gateway), request["to"], request.get("path", "/"), request.get("port"))
    except Unmodelled as construct:
        return Verdict("unknown", f"not modelled, so not guessed: {construct}")


def check(overlay: str, docs: list[dict], rows: list[Row], gateway: layout.IngressGateway, host: str) -> list[Outcome]:
    mesh = Mesh(docs, gateway)
    return [Outcome(overlay, row, evaluate(row, mesh, host)) for row in rows]


def main(argv: list[str], contract_file: Path = CONTRACT) -> int:
    overlays = layout.overlays()
    chosen = argv or sorted(overlays)
    unknown = sorted(set(chosen) - set(overlays))
    if unknown:
        print(f"no such overlay: {', '.join(unknown)} (have {', '.join(sorted(overlays))})", file=sys.stderr)
        return 2
    rows, gateway = load(contract_file), layout.ingress_gateway()
    outcomes = [
        outcome
        for name in chosen
        for outcome in check(name, kustomize.build(overlays[name]), rows, gateway, layout.public_host(overlays[name]))
    ]
    for outcome in outcomes:
        print(outcome.line())
    failed = [outcome for outcome in outcomes if not outcome.holds]
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} rows hold across {', '.join(chosen)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
