"""The traffic contract (contract.yaml), checked offline against rendered overlays.

    python -m repo_tools.contract [OVERLAY ...]

prints every row's outcome per overlay and the rule that decided it, and exits 1 on any mismatch.
"""

import argparse
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from repo_tools import REPO_ROOT, kustomize, layout, parse_yaml_documents, read_repo_file, resilience
from repo_tools.mesh import Caller, Mesh, Token, Unmodelled, Verdict

CONTRACT = REPO_ROOT / "contract.yaml"


# What a row may expect: each is an outcome the offline verifier reports and the e2e run can observe.
REFUSALS = ("denied", "unauthenticated", "rate-limited", "too-large", "headers-too-large", "no-answer")
OUTCOMES = ("reaches <app>", "redirect https", *REFUSALS)
# A limit of the gateway an internet row's request goes past (edge.py): its route's rate limit (one request more
# than the bucket holds), the largest body, the largest headers.
LIMITS = ("rate-limit", "body-limit", "header-limit")
# The JWT an internet row sends: none, one the overlay's issuer signed, or one the gateway must refuse.
NO_TOKEN = "none"
TOKENS = (NO_TOKEN, "valid", "expired", "forged", "other-issuer")
OTHER_ISSUER = "https://elsewhere.e2e.test"  # signed with the issuer's real key, but not an issuer the gateway trusts
FORGING_KEY = "a key no JWKS holds"
TOKEN_SUBJECT = "e2e-client"
# What a row may add to "reaches": where the traffic goes and under which route policy.
TRAFFIC_KEYS = {"version", "split", "timeout", "retries", "circuitBreaking"}
RETRIES_KEYS = {"attempts", "perTryTimeout", "retryOn"}
ROW_KEYS = {"name", "from", "request", "expect"}
POD_KEYS = {"namespace", "serviceAccount", "sidecar"}
INTERNET_REQUEST_KEYS = {"scheme", "path", "method", "headers", "token", "exceeds"}
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
    headers: tuple[tuple[str, str], ...] = ()
    token: str = NO_TOKEN  # one of TOKENS
    exceeds: str = ""  # one of LIMITS


@dataclass(frozen=True)
class ExpectedTraffic:
    """What a "reaches" row expects beyond the app: the version every request reaches, the versions a split
    shares the requests among (by the overlay's weights, adding up to 100), the route's timeout and retries, and
    a circuit breaker in front of every destination."""

    version: str | None = None
    split: tuple[str, ...] | None = None
    timeout: str | None = None
    retries: resilience.Retries | None = None
    circuit_breaking: bool | None = None

    def problems(self, found: resilience.Traffic | None) -> list[str]:
        if found is None:
            return ["no route or call this model follows"]
        taken = [share for share in found.shares if share.weight > 0]
        problems = []
        if self.version is not None and {share.version for share in taken} != {self.version}:
            problems.append(f"version {self.version} expected, reached {versions(taken)}")
        if self.split is not None:
            weights = sum(share.weight for share in found.shares)
            if sorted({share.version for share in found.shares}) != sorted(self.split) or weights != 100:
                problems.append(
                    f"a split over {', '.join(self.split)} adding up to 100 expected, got {versions(found.shares)}"
                )
        if self.circuit_breaking is not None and any(
            share.circuit_breaking != self.circuit_breaking for share in taken
        ):
            problems.append(
                f"circuit breaking {'expected' if self.circuit_breaking else 'unexpected'} towards {versions(taken)}"
            )
        policy = found.policy
        if (self.timeout, self.retries) != (None, None) and policy is None:
            return problems + ["no route applies, so no timeout or retry policy"]
        if (
            policy
            and self.timeout is not None
            and resilience.gives_up_after(policy) != resilience.seconds(self.timeout)
        ):
            problems.append(
                f"timeout {self.timeout} expected, {policy.where} gives up after {resilience.gives_up_after(policy):g}s"
            )
        if policy and self.retries is not None and not same_retries(policy.retries, self.retries):
            problems.append(f"{self.retries.describe()} expected, {policy.where} has {policy.retries.describe()}")
        return problems


def versions(shares: list[resilience.Share] | tuple[resilience.Share, ...]) -> str:
    return (
        ", ".join(f"{share.workload} ({share.version or 'no version'}) {share.weight}%" for share in shares)
        or "nothing"
    )


def same_duration(found: str | None, expected: str) -> bool:
    return found is not None and resilience.seconds(found) == resilience.seconds(expected)


def same_retries(found: resilience.Retries, expected: resilience.Retries) -> bool:
    per_try = (found.per_try_timeout is None) == (expected.per_try_timeout is None) and (
        found.per_try_timeout is None or same_duration(found.per_try_timeout, str(expected.per_try_timeout))
    )
    return found.attempts == expected.attempts and found.on == expected.on and per_try


@dataclass(frozen=True)
class Row:
    name: str
    caller: str | Caller  # "internet", "ingress-gateway", or a pod identity
    request: Request
    expected: str  # one of OUTCOMES, "reaches <app>" filled in
    traffic: ExpectedTraffic | None = None


@dataclass(frozen=True)
class Outcome:
    overlay: str
    row: Row
    verdict: Verdict

    @property
    def problems(self) -> list[str]:
        if self.verdict.outcome != self.row.expected:
            return [f"expected {self.row.expected}, got {self.verdict.outcome}"]
        return self.row.traffic.problems(self.verdict.traffic) if self.row.traffic else []

    @property
    def holds(self) -> bool:
        return not self.problems

    def line(self) -> str:
        traffic = self.verdict.traffic.describe() if self.row.traffic and self.verdict.traffic else ""
        seen = f"{self.verdict.outcome}, {traffic}" if traffic else self.verdict.outcome
        if self.holds:
            return f"HOLDS  {self.overlay:<8} {self.row.name}: {seen} ({self.verdict.because})"
        return f"FAILS  {self.overlay:<8} {self.row.name}: {'; '.join(self.problems)} ({self.verdict.because})"


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
    token = request.get("token", NO_TOKEN)
    if token not in TOKENS:
        problems.append(f"{where} request: token must be one of {', '.join(TOKENS)}, not {token!r}")
    exceeds = request.get("exceeds", "")
    if exceeds and exceeds not in LIMITS:
        problems.append(f"{where} request: exceeds must be one of {', '.join(LIMITS)}, not {exceeds!r}")
    headers = request.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        problems.append(f"{where} request: headers must map header names to strings")
        headers = {}
    parsed = Request(
        str(request.get("scheme", "https")),
        str(request.get("path", "/")),
        str(request.get("method", "GET")),
        to,
        port,
        tuple((str(name).lower(), value) for name, value in headers.items()),
        str(token),
        str(exceeds),
    )
    return parsed, problems


def parse_expected(where: str, expect: object) -> tuple[str, ExpectedTraffic | None, list[str]]:
    if expect in REFUSALS:
        return str(expect), None, []
    if expect == {"redirect": "https"}:
        return "redirect https", None, []
    if isinstance(expect, dict) and isinstance(expect.get("reaches"), str) and expect["reaches"]:
        traffic, problems = parse_traffic(f"{where} expect", {k: v for k, v in expect.items() if k != "reaches"})
        return f"reaches {expect['reaches']}", traffic, problems
    return "", None, [f"{where}: expect must be one of {', '.join(OUTCOMES)}, not {expect!r}"]


def parse_traffic(where: str, given: dict) -> tuple[ExpectedTraffic | None, list[str]]:
    if not given:
        return None, []
    problems = unknown_keys(where, given, TRAFFIC_KEYS)
    split = given.get("split")
    if split is not None and not (
        isinstance(split, list) and len(split) > 1 and all(isinstance(v, str) for v in split)
    ):
        problems.append(f"{where}: split must list two or more versions")
    timeout = given.get("timeout")
    if timeout is not None and not (isinstance(timeout, str) and resilience.DURATION.fullmatch(timeout)):
        problems.append(f"{where}: timeout must be a duration like 15s or 500ms")
    retries, found = parse_retries(where, given.get("retries"))
    problems += found
    if not isinstance(given.get("circuitBreaking", True), bool):
        problems.append(f"{where}: circuitBreaking must be true or false")
    traffic = ExpectedTraffic(
        str(given["version"]) if "version" in given else None,
        tuple(split) if isinstance(split, list) else None,
        timeout,
        retries,
        given.get("circuitBreaking"),
    )
    return traffic, problems


def parse_retries(where: str, retries: object) -> tuple[resilience.Retries | None, list[str]]:
    if retries is None:
        return None, []
    if retries == "none":
        return resilience.Retries(0, None, frozenset()), []
    if not isinstance(retries, dict):
        return None, [f"{where}: retries must be none or {{attempts, perTryTimeout, retryOn}}"]
    problems = unknown_keys(f"{where} retries", retries, RETRIES_KEYS)
    attempts, per_try, on = retries.get("attempts"), retries.get("perTryTimeout"), retries.get("retryOn")
    if not isinstance(attempts, int) or attempts < 1:
        problems.append(f"{where} retries: attempts must be a number above 0 (write retries: none for no retries)")
    if per_try is not None and not (isinstance(per_try, str) and resilience.DURATION.fullmatch(per_try)):
        problems.append(f"{where} retries: perTryTimeout must be a duration like 5s")
    if not isinstance(on, list) or not on:
        problems.append(f"{where} retries: retryOn must list the retry conditions (connect-failure, 503, ...)")
        on = []
    conditions = resilience.parse_retry_on(",".join(str(condition) for condition in on))
    return resilience.Retries(attempts if isinstance(attempts, int) else 0, per_try, conditions), problems


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
        expected, traffic, found_in_expect = parse_expected(where, row.get("expect"))
        problems += found + found_in_request + found_in_expect
        if request.headers and caller != "internet":
            problems.append(f"{where} request: headers are sent only by internet rows")
        parsed.append(Row(str(row.get("name")), caller, request, expected, traffic))
    if problems:
        raise ContractError("\n".join(problems))
    return parsed


def load(path: Path = CONTRACT) -> list[Row]:
    return list(_rows(read_repo_file(path), path))


@cache
def _rows(text: str, path: Path) -> tuple[Row, ...]:
    """The rows of one content of the contract: the checks and tests read it hundreds of times, and parse it once."""
    documents = parse_yaml_documents(text, path)
    return tuple(parse(documents[0] if documents else None))


def caller_of(row: Row, gateway: layout.IngressGateway) -> Caller:
    if row.caller == "ingress-gateway":
        return Caller(gateway.namespace, gateway.service_account)
    assert isinstance(row.caller, Caller), row.caller
    return row.caller


def token_for(kind: str, tokens: layout.ApiTokens | None) -> Token | None:
    if kind == NO_TOKEN:
        return None
    if tokens is None:
        raise Unmodelled("a token row, but no api-tokens settings to say which tokens are valid")
    return {
        "valid": Token(tokens.issuer, tokens.jwks_uri, TOKEN_SUBJECT),
        "expired": Token(tokens.issuer, tokens.jwks_uri, TOKEN_SUBJECT, expired=True),
        "forged": Token(tokens.issuer, FORGING_KEY, TOKEN_SUBJECT),
        "other-issuer": Token(OTHER_ISSUER, tokens.jwks_uri, TOKEN_SUBJECT),
    }[kind]


def evaluate(row: Row, mesh: Mesh, host: str, tokens: layout.ApiTokens | None = None) -> Verdict:
    request = row.request
    try:
        if row.caller == "internet":
            token = token_for(request.token, tokens)
            return mesh.from_internet(
                request.scheme, host, request.path, request.method, dict(request.headers), token, request.exceeds
            )
        to = request.to
        target = {"namespace": to.namespace, "labels": to.labels} if isinstance(to, Newcomer) else str(to)
        return mesh.from_pod(caller_of(row, mesh.gateway), target, request.path, request.port)
    except Unmodelled as construct:
        return Verdict("unknown", f"not modelled, so not guessed: {construct}")


def check(
    overlay: str,
    docs: list[dict],
    rows: list[Row],
    gateway: layout.IngressGateway,
    host: str,
    tokens: layout.ApiTokens | None = None,
) -> list[Outcome]:
    mesh = Mesh(docs, gateway)
    return [Outcome(overlay, row, evaluate(row, mesh, host, tokens)) for row in rows]


def main(argv: list[str], contract_file: Path = CONTRACT) -> int:
    overlays = layout.overlays()
    parser = argparse.ArgumentParser(
        prog="python -m repo_tools.contract",
        description="Print every row of contract.yaml per overlay with the rule that decides it; exit 1 when a row "
        "does not hold.",
    )
    parser.add_argument("overlay", nargs="*", help=f"overlays to check (default: all of {', '.join(overlays)})")
    chosen = parser.parse_args(argv).overlay or sorted(overlays)
    unknown = sorted(set(chosen) - set(overlays))
    if unknown:
        parser.error(f"no such overlay: {', '.join(unknown)} (have {', '.join(sorted(overlays))})")
    rows, gateway = load(contract_file), layout.ingress_gateway()
    outcomes = [
        outcome
        for name in chosen
        for outcome in check(
            name,
            kustomize.build(overlays[name]),
            rows,
            gateway,
            layout.public_host(overlays[name]),
            layout.api_tokens(overlays[name]),
        )
    ]
    for outcome in outcomes:
        print(outcome.line())
    failed = [outcome for outcome in outcomes if not outcome.holds]
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} rows hold across {', '.join(chosen)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
