"""Break the repo on purpose, one rule at a time, and show that the local run over real Envoy fails at the row the
rule guards, while a row it does not guard still holds in the same run.

    python -m e2e.controlplane.mutations [NAME ...]    # all of them by default; each in a copy of this repo

Each mutation edits a copy of the repo (never this working tree); the run applies that copy's e2e
overlay (`pytest --local-control-plane --deploy-from COPY`) and checks the broken row and a control row against
this repo's contract; the outcome is read from pytest's JUnit XML.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import yaml

from repo_tools import REPO_ROOT, contract, read_yaml_documents
from repo_tools.contract import Caller, Row

CONTRACT_TEST = "e2e/test_contract.py::test_row"
BURST_TEST = (
    "e2e/test_edge_limits.py::test_a_burst_past_the_rate_limit_meets_429_and_is_admitted_again_as_the_bucket_refills"
)
Doc = dict
Edit = Callable[[Doc], Doc | None]  # the changed document, or None to drop it


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    change: Callable[[Path], int]  # edits the copy of the repo; returns how many documents it changed
    breaks: Callable[[Row], bool]  # the rows it must break
    test: str = CONTRACT_TEST


def manifests(repo: Path) -> list[Path]:
    return [path for path in sorted((repo / "apps").rglob("*.yaml")) if path.name != "kustomization.yaml"]


def edit(repo: Path, edit_doc: Edit) -> int:
    """Apply edit_doc to every manifest under apps/; a file left without documents leaves its kustomization.
    Returns how many documents changed, so that a mutation that finds nothing to break says so."""
    changed = 0
    for path in manifests(repo):
        docs = [doc for doc in read_yaml_documents(path) if doc]
        edited = [edit_doc(deepcopy(doc)) for doc in docs]
        if edited == docs:
            continue
        changed += sum(1 for before, after in zip(docs, edited, strict=True) if before != after)
        kept = [doc for doc in edited if doc is not None]
        if kept:
            path.write_text(yaml.safe_dump_all(kept, sort_keys=False))
            continue
        kustomization = path.parent / "kustomization.yaml"
        spec = yaml.safe_load(kustomization.read_text())
        spec["resources"] = [entry for entry in spec.get("resources", []) if entry != path.name]
        kustomization.write_text(yaml.safe_dump(spec, sort_keys=False))
        path.unlink()
    return changed


def is_kind(doc: Doc, kind: str) -> bool:
    return doc.get("kind") == kind


def apps(rows: list[Row]) -> tuple[str, str]:
    """(frontend, backend) as the contract names them: what the home page reaches, and the other app the internet
    reaches."""
    reached = [row for row in rows if row.caller == "internet" and row.expected.startswith("reaches ")]
    frontend = next(row.expected.removeprefix("reaches ") for row in reached if row.request.path == "/")
    backend = next(row.expected.removeprefix("reaches ") for row in reached if row.expected != f"reaches {frontend}")
    return frontend, backend


def is_app(name: str, app: str) -> bool:
    """The app's own Service or one of its versions' (backend-canary)."""
    return name == app or name.startswith(f"{app}-")


def api_to_the_frontend(repo: Path) -> int:
    frontend, backend = apps(contract.load())
    services = [doc for path in manifests(repo) for doc in read_yaml_documents(path) if doc]
    port = next(doc for doc in services if is_kind(doc, "Service") and doc["metadata"]["name"] == frontend)["spec"][
        "ports"
    ][0]["port"]

    def to_frontend(doc: Doc) -> Doc:
        if is_kind(doc, "HTTPRoute"):
            for rule in doc["spec"].get("rules", []):
                for ref in rule.get("backendRefs", []):
                    if is_app(ref["name"], backend):
                        ref.update(name=frontend, port=port)
        if is_kind(doc, "VirtualService"):
            for route in doc["spec"].get("http", []):
                for destination in route.get("route", []):
                    if is_app(destination["destination"]["host"].split(".")[0], backend):
                        destination["destination"].update(host=frontend, port={"number": port})
        return doc

    return edit(repo, to_frontend)


def permissive(repo: Path) -> int:
    def loosened(doc: Doc) -> Doc:
        if is_kind(doc, "PeerAuthentication"):
            doc["spec"]["mtls"] = {"mode": "PERMISSIVE"}
        return doc

    return edit(repo, loosened)


def intruder(row: Row) -> bool:
    """The row of a mesh pod of the backend's namespace, with a service account no app has, calling the backend."""
    frontend, backend = apps(contract.load())
    target = str(row.request.to)
    return (
        isinstance(row.caller, Caller)
        and row.caller.sidecar
        and row.caller.service_account not in ("default", frontend, backend)
        and row.expected == "denied"
        and target.split(".")[0] == backend
        and row.caller.namespace == target.split(".", 1)[1]
    )


def is_backend_policy(doc: Doc) -> bool:
    """The policy that admits the ingress gateway on the API paths (its first rule has a `to`) and the frontend."""
    rules = doc.get("spec", {}).get("rules") or [{}]
    admits = (doc.get("metadata", {}).get("annotations") or {}).get("admits")
    return is_kind(doc, "AuthorizationPolicy") and admits == "ingress-gateway" and bool(rules[0].get("to"))


def intruder_admitted(repo: Path) -> int:
    caller = next(row.caller for row in contract.load() if intruder(row))
    assert isinstance(caller, Caller)

    def admitting(doc: Doc) -> Doc:
        if is_backend_policy(doc):
            # The trust domain as the policy's own principals write it: <trust domain>/ns/<namespace>/sa/<account>.
            named = doc["spec"]["rules"][0]["from"][0]["source"]["principals"][0]
            trust_domain = named.split("/ns/", 1)[0]
            principal = f"{trust_domain}/ns/{caller.namespace}/sa/{caller.service_account}"
            doc["spec"]["rules"].append({"from": [{"source": {"principals": [principal]}}]})
        return doc

    return edit(repo, admitting)


def token_deny_dropped(repo: Path) -> int:
    def without(doc: Doc) -> Doc | None:
        rules = doc.get("spec", {}).get("rules", [])
        requires_token = any("notRequestPrincipals" in str(rule) for rule in rules)
        return (
            None
            if is_kind(doc, "AuthorizationPolicy") and doc["spec"].get("action") == "DENY" and requires_token
            else doc
        )

    return edit(repo, without)


def rate_limit_removed(repo: Path) -> int:
    def without(doc: Doc) -> Doc | None:
        return None if is_kind(doc, "EnvoyFilter") and "local_ratelimit" in str(doc) else doc

    return edit(repo, without)


MUTATIONS = [
    Mutation(
        "api-to-frontend",
        "the HTTPRoute or VirtualService sends /api to the frontend",
        api_to_the_frontend,
        lambda row: (
            row.caller == "internet"
            and row.expected == f"reaches {apps(contract.load())[1]}"
            and not row.request.exceeds
        ),
    ),
    Mutation(
        "permissive",
        "PeerAuthentication PERMISSIVE: a client without a sidecar gets an answer",
        permissive,
        lambda row: row.expected == "no-answer",
    ),
    Mutation(
        "intruder-admitted",
        "the backend's AuthorizationPolicy admits the intruder",
        intruder_admitted,
        intruder,
    ),
    Mutation(
        "token-deny-dropped",
        "the JWT DENY policy dropped: a request without a token reaches the API",
        token_deny_dropped,
        lambda row: row.caller == "internet" and row.request.token == "none" and row.expected == "denied",
    ),
    Mutation(
        "rate-limit-removed",
        "the rate limit removed: a burst never meets 429",
        rate_limit_removed,
        lambda row: row.expected == "rate-limited",
        BURST_TEST,
    ),
]


def control_row(rows: list[Row]) -> Row:
    """A row no mutation here breaks: the home page from the internet."""
    return next(row for row in rows if row.caller == "internet" and row.expected == f"reaches {apps(rows)[0]}")


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    broken: list[str]  # the row it must break
    failed: list[str]
    passed: list[str]
    seconds: float

    @property
    def shown(self) -> bool:
        control = control_row(contract.load()).name
        return bool(self.broken) and set(self.broken) <= set(self.failed) and control in self.passed


def outcomes_of(junit: Path) -> tuple[list[str], list[str]]:
    """(failed, passed) row names from pytest's JUnit XML."""
    failed, passed = [], []
    for case in ElementTree.parse(junit).iter("testcase"):
        name = case.get("name", "")
        row = name[name.find("[") + 1 : -1] if "[" in name else name
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(row)
        elif case.find("skipped") is None:
            passed.append(row)
    return failed, passed


def run(mutation: Mutation) -> Outcome:
    rows = contract.load()
    broken = [row.name for row in rows if mutation.breaks(row)][:1]  # one shows it; each more adds a row deadline
    control = control_row(rows).name
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as scratch:
        copy = Path(scratch) / "repo"
        shutil.copytree(REPO_ROOT, copy, ignore=shutil.ignore_patterns(".git", ".nox", ".venv", "__pycache__"))
        if mutation.change(copy) == 0:
            raise SystemExit(f"{mutation.name}: nothing in apps/ to change ({mutation.what}); is the rule still there?")
        junit = Path(scratch) / "junit.xml"
        node_ids = [f"{mutation.test}[{name}]" for name in broken] + [f"{CONTRACT_TEST}[{control}]"]
        # The cluster runs the broken copy; the tests read their expectations (the contract, the models) from this
        # repo, as a cluster drifted from its repo would be checked.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--local-control-plane",
                f"--deploy-from={copy}",
                f"--diagnostics-dir={scratch}/diagnostics",  # a failure is what a mutation expects: kept nowhere
                f"--junitxml={junit}",
                *node_ids,
            ],
            cwd=REPO_ROOT,
            check=False,
        )
        failed, passed = outcomes_of(junit) if junit.exists() else ([], [])
    return Outcome(mutation, broken, failed, passed, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.controlplane.mutations", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(m.name for m in MUTATIONS))
    arguments = parser.parse_args(argv)
    unknown = set(arguments.names) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"no mutation {', '.join(sorted(unknown))}; there are: {', '.join(m.name for m in MUTATIONS)}")
    chosen = [m for m in MUTATIONS if not arguments.names or m.name in arguments.names]
    outcomes = [run(mutation) for mutation in chosen]
    print("\nmutations of the repo, each run over real Envoy proxies:")
    for outcome in outcomes:
        verdict = "failed at its row, as it must" if outcome.shown else "NOT SHOWN"
        print(f"  {outcome.mutation.name:20} {verdict} ({outcome.seconds:.0f}s): {outcome.mutation.what}")
        print(f"  {'':20} rows it must break: {outcome.broken or 'none in contract.yaml'}; failed: {outcome.failed}")
    return 0 if all(outcome.shown for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
