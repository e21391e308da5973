import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from repo_tools import CACHE_DIR, contract, kustomize, layout, schemas

KUSTOMIZATIONS = layout.app_kustomizations()
# Built while the tests are collected: most test modules read them.
kustomize.start(KUSTOMIZATIONS.values())
ROWS = contract.load()
GATEWAY_API = layout.ingress_gateway().gateway_api
# Mistakes only one ingress API can make: each test runs in the repos baked with that API.
istio_api_only = pytest.mark.skipif(GATEWAY_API, reason="about Istio's own ingress API; this repo uses the Gateway API")
gateway_api_only = pytest.mark.skipif(not GATEWAY_API, reason="about the Gateway API; this repo uses Istio's own API")
# Without recordings or network the Gateway API's CRDs cannot be had: its kinds' schema checks skip, saying so.
SCHEMAS_UNAVAILABLE = schemas.unavailable_reason()
# What a scratch copy of this repo leaves out: history, caches and environments, which no check reads.
NOT_COPIED = (
    ".cache",
    ".git",
    ".nox",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".ruff_cache",
    ".mypy_cache",
)
needs_every_schema = pytest.mark.skipif(
    bool(SCHEMAS_UNAVAILABLE) and not os.environ.get(schemas.REQUIRE_RECORDED_FIXTURES),
    reason=SCHEMAS_UNAVAILABLE or "every schema at hand",
)
_made: dict[str, tuple[Any, bytes]] = {}
# Megabytes of a render, which no test changes: handed out shared, not copied.
SHARED_KIND = "CustomResourceDefinition"


def made_once(key: str, make: Callable[[], Any]) -> Any:
    """What make() returns, made once per run (a build, a render) and handed out as a fresh copy to mutate: unpickling
    is many times faster than deep-copying, let alone running kustomize again. In a list of documents, those of
    SHARED_KIND are the same objects in every copy."""
    if key not in _made:
        made = make()
        if isinstance(made, list):
            shared = [doc if isinstance(doc, dict) and doc.get("kind") == SHARED_KIND else None for doc in made]
            _made[key] = (shared, pickle.dumps([doc for doc, kept in zip(made, shared, strict=True) if kept is None]))
        else:
            _made[key] = (None, pickle.dumps(made))
    shared, copied = _made[key]
    if shared is None:
        return pickle.loads(copied)
    fresh = iter(pickle.loads(copied))
    return [doc if doc is not None else next(fresh) for doc in shared]


def built(name: str) -> list[dict]:
    """The documents of the apps layer's kustomization `name` ("base", "dev", ...), a fresh copy to mutate."""
    return made_once(f"build {name}", lambda: kustomize.build(KUSTOMIZATIONS[name]))


@pytest.fixture(params=sorted(KUSTOMIZATIONS), scope="session")
def kustomization(request: pytest.FixtureRequest) -> str:
    """Each kustomization of the apps layer by name: base, then every overlay."""
    return request.param


@pytest.fixture(scope="session")
def gateway() -> layout.IngressGateway:
    return layout.ingress_gateway()


@pytest.fixture
def rendered() -> Callable[[str], list[dict]]:
    """The documents a kustomization renders; each call returns a fresh copy to mutate."""
    return built


def find(docs: list[dict], kind: str, name: str) -> dict:
    return next(doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name)


def app_namespace(docs: list[dict]) -> str:
    return next(doc["metadata"]["name"] for doc in docs if doc["kind"] == "Namespace")


def backend_policy(docs: list[dict]) -> dict:
    """The policy that admits the ingress gateway on the API paths only (its first rule has a `to`)."""
    return next(
        doc
        for doc in docs
        if doc["kind"] == "AuthorizationPolicy"
        and doc["metadata"].get("annotations", {}).get("admits") == "ingress-gateway"
        and doc["spec"]["rules"][0].get("to")
    )


def app_route(docs: list[dict]) -> dict:
    """The app's routes on the public host: the VirtualService, or the HTTPRoute on the HTTPS listener."""
    return find(docs, "HTTPRoute" if GATEWAY_API else "VirtualService", "public-routes")


def the_gateway(docs: list[dict]) -> dict:
    return find(docs, "Gateway", layout.ingress_gateway().gateway_name or "public-gateway")


def contract_outcomes(docs: list[dict], overlay: str) -> dict[str, contract.Outcome]:
    """Every row of contract.yaml against `docs` as the build of `overlay`, by row name."""
    path = layout.overlays()[overlay]
    outcomes = contract.check(
        overlay, docs, ROWS, layout.ingress_gateway(), layout.public_host(path), layout.api_tokens(path)
    )
    return {outcome.row.name: outcome for outcome in outcomes}


def broken_rows(docs: list[dict], overlay: str) -> dict[str, contract.Outcome]:
    return {name: outcome for name, outcome in contract_outcomes(docs, overlay).items() if not outcome.holds}


def row_named(fragment: str) -> str:
    return next(row.name for row in ROWS if fragment in row.name)


@pytest.fixture(scope="session", autouse=True)
def kept_schema_verdicts() -> Iterator[None]:
    """The tests read and keep each document's schema verdict as `python -m repo_tools` does: by its content and
    the fingerprint of everything else that decides it, so a document validated once is not validated again."""
    schemas.use_disk_cache()
    yield
    schemas.save_disk_cache()


def schema_problems(docs: list[dict]) -> list[str]:
    """Every schema error of the documents; skips the test, naming what is missing, when the only problem is a
    schema this machine cannot have."""
    errors, unchecked = schemas.without_unavailable_schemas([e for doc in docs for e in schemas.schema_errors(doc)])
    if unchecked and not errors:
        pytest.skip(f"{len(unchecked)} documents unchecked: {SCHEMAS_UNAVAILABLE}")
    return errors


def run_checks(repo: Path) -> subprocess.CompletedProcess[str]:
    """`python -m repo_tools` in a scratch copy of this repo; what the copy shares with it comes from its cache."""
    return subprocess.run(
        [sys.executable, "-m", "repo_tools"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "REPO_TOOLS_CACHE_DIR": str(CACHE_DIR)},
        timeout=300,
        check=False,
    )
