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


# What a row may expect: each is an outcome the offline verifier reports and the e2e run can observe.
OUTCOMES = ("reaches <workload>", "redirect https", "denied", "no-answer")
ROW_KEYS = {"name", "from", "request", "expect"}
POD_KEYS = {"namespace", "serviceAccount", "sidecar"}
INTERNET_REQUEST_KEYS = {"scheme", "path", "method"}
POD_REQUEST_KEYS = {"to", "path", "port"}
NEWCOMER_KEYS = {"namespace", "labels"}


class ContractError(ValueError):
    """contract.yaml says something no check can mean; the message names each row and key."""


@dataclass(frozen=True)
class Newcomer:
    """A pod the repo does not define, to show what default-deny does to it."""

    namespace: str
    labels: dict[str, str]


@dataclass(frozen=True)
class Request:
    scheme: str = "https"
    path: str = "/"
    method: str = "GET"
    to: str | Newcomer | None = None
    port: int | None = None


@dataclass(frozen=True)
class Row:
    name: str
    caller: str | Caller  # "internet", "ingress-gateway", or a pod identity
    request: Request
    expected: str  # one of OUTCOMES, "reaches <workload>" filled in


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


def unknown_keys(where: str, given: dict, allowed: set[str]) -> list[str]:
    return [
        f"{where}: unknown key {key!r} (known: {', '.join(sorted(allowed))})" for key in given if key not in allowed
    ]


def parse_caller(where: str, caller: object) -> tuple[str | Caller, list[str]]:
    if caller in ("internet", "ingress-gateway"):
        return str(caller), []
    if not isinstance(caller, dict):
        return "", [f"{where}: from must be internet, ingress-gateway or {{namespace, serviceAccount, sidecar}}"]
    problems = unknown_keys(f"{where} from", caller, POD_KEYS)
    problems += [f"{where} from: {key} is required" for key in ("namespace", "serviceAccount") if key not in caller]
    if not isinstance(caller.get("sidecar", True), bool):
        problems.append(f"{where} from: sidecar must be true or false")
    identity = Caller(str(caller.get("namespace")), str(caller.get("serviceAccount")), caller.get("sidecar", True))
    return identity, problems


def parse_request(where: str, request: object, from_internet: bool) -> tuple[Request, list[str]]:
    if not isinstance(request, dict):
        return Request(), [f"{where}: request must be a mapping"]
    problems = unknown_keys(f"{where} request", request, INTERNET_REQUEST_KEYS if from_internet else POD_REQUEST_KEYS)
    if from_internet and request.get("scheme", "https") not in ("http", "https"):
        problems.append(f"{where} request: scheme must be http or https, not {request['scheme']!r}")
    if not str(request.get("path", "/")).startswith("/"):
        problems.append(f"{where} request: path must start with '/'")
    to = request.get("to")
    if not from_internet and not isinstance(to, (str, dict)):
        problems.append(f"{where} request: to is required: service.namespace, or {{namespace, labels}} of a new pod")
    if isinstance(to, dict):
        problems += unknown_keys(f"{where} request to", to, NEWCOMER_KEYS)
        problems += [f"{where} request to: {key} is required" for key in sorted(NEWCOMER_KEYS - set(to))]
        to = Newcomer(str(to.get("namespace", "")), {str(k): str(v) for k, v in (to.get("labels") or {}).items()})
    port = request.get("port")
    if port is not None and not isinstance(port, int):
        problems.append(f"{where} request: port must be a number")
    parsed = Request(
        str(request.get("scheme", "https")), str(request.get("path", "/")), str(request.get("method", "GET")), to, port
    )
    return parsed, problems


def parse_expected(where: str, expect: object) -> tuple[str, list[str]]:
    if expect in ("denied", "no-answer"):
        return str(expect), []
    if isinstance(expect, dict) and len(expect) == 1:
        ((key, value),) = expect.items()
        if key == "reaches" and isinstance(value, str) and value:
            return f"reaches {value}", []
        if key == "redirect" and value == "https":
            return "redirect https", []
    return "", [f"{where}: expect must be one of {', '.join(OUTCOMES)}, not {expect!r}"]


def parse(document: object) -> list[Row]:
    """The rows of a contract document, or ContractError naming every row and key that cannot be meant."""
    rows = document.get("rows") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        raise ContractError("contract.yaml: a top-level 'rows' list is required")
    parsed, problems = [], []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            problems.append(f"row {number}: must be a mapping")
            continue
        where = f"row {number} ({row.get('name', 'unnamed')!r})"
        problems += unknown_keys(where, row, ROW_KEYS)
        problems += [f"{where}: {key} is required" for key in sorted(ROW_KEYS - {"request"}) if key not in row]
        caller, found = parse_caller(where, row.get("from"))
        request, found_in_request = parse_request(where, row.get("request", {}), caller == "internet")
        expected, found_in_expect = parse_expected(where, row.get("expect"))
        problems += found + found_in_request + found_in_expect
        parsed.append(Row(str(row.get("name")), caller, request, expected))
    if problems:
        raise ContractError("\n".join(problems))
    return parsed


def load(path: Path = CONTRACT) -> list[Row]:
    return parse(yaml.safe_load(path.read_text()))


def caller_of(row: Row, gateway: layout.IngressGateway) -> Caller:
    if row.caller == "ingress-gateway":
        return Caller(gateway.namespace, gateway.service_account)
    assert isinstance(row.caller, Caller), row.caller
    return row.caller


def evaluate(row: Row, mesh: Mesh, host: str) -> Verdict:
    request = row.request
    try:
        if row.caller == "internet":
            return mesh.from_internet(request.scheme, host, request.path, request.method)
        to = request.to
        target = {"namespace": to.namespace, "labels": to.labels} if isinstance(to, Newcomer) else str(to)
        return mesh.from_pod(caller_of(row, mesh.gateway), target, request.path, request.port)
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
