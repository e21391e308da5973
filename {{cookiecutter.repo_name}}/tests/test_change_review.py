"""python -m repo_tools diff: a git history made from this repo, one change per commit, reviewed as a pull request
would be: the resources that change per environment, field by field, and the contract rows whose verdict changes."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from e2e.harness.gitops import snapshot
from repo_tools import REPO_ROOT, VERSIONS, charts, contract, install, kustomize, layout, review
from repo_tools.resources import describe

pytestmark = pytest.mark.answer_independent


@pytest.fixture
def history(tmp_path: Path) -> Path:
    return snapshot(REPO_ROOT, tmp_path / "repo", {}, "main")


def commit(root: Path, message: str) -> None:
    git = ["git", "-C", str(root), "-c", "user.name=review", "-c", "user.email=review@localhost"]
    subprocess.run([*git, "commit", "-q", "-am", message], check=True)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def reviewed(root: Path, only: tuple[str, ...] = ()) -> tuple[list[review.EnvironmentReview], str, str]:
    reviews, notes = review.review("HEAD~1", root, only)
    return reviews, review.text(reviews, notes, "HEAD~1"), review.markdown(reviews, notes, "HEAD~1")


def backend_container(root: Path) -> dict:
    stable, _canary = yaml.safe_load_all((root / "apps" / "base" / "backend" / "deployment.yaml").read_text())
    return stable["spec"]["template"]["spec"]["containers"][0]


def move_the_backend_port(root: Path) -> tuple[str, int]:
    """Give the backend's container port the next number; returns its YAML path and the old number."""
    container = backend_container(root)
    port = container["ports"][0]
    deployment = root / "apps" / "base" / "backend" / "deployment.yaml"
    edit(deployment, f"containerPort: {port['containerPort']}", f"containerPort: {port['containerPort'] + 1}")
    path = f"spec.template.spec.containers[name={container['name']}].ports[name={port['name']}].containerPort"
    return path, port["containerPort"]


def test_a_changed_port_shows_as_one_field_in_every_environment(history):
    field, port = move_the_backend_port(history)
    commit(history, "backend listens elsewhere")
    reviews, text, markdown = reviewed(history)
    assert [env.name for env in reviews if env.changed] == sorted(layout.overlays())
    name = backend_container(history)["name"]
    deployment = next(
        doc
        for doc in kustomize.build(REPO_ROOT / "apps" / "base")
        if doc["kind"] == "Deployment" and doc["spec"]["template"]["spec"]["containers"][0]["name"] == name
    )
    for env in reviews:
        assert [(c.resource, [f.path for f in c.fields]) for c in env.resources["apps"]] == [
            (describe(deployment), [field])
        ]
    assert f"        {field}: {port} -> {port + 1}" in text
    assert f"  - `{field}`: `{port}` → `{port + 1}`" in markdown
    assert review.exit_status(reviews) == 1
    assert "every contract row that held still holds" in text


def test_the_frontend_route_given_a_timeout_changes_the_route_and_no_row_breaks(history):
    if layout.ingress_gateway().gateway_api:
        routes, field, timeout = history / "apps" / "base" / "gateway" / "httproute.yaml", "rules", "timeouts"
        route, value = yaml.safe_load(routes.read_text())["spec"]["rules"][-1], '{"request": "10s"}'
        edit(
            routes,
            f"    - name: {route['name']}\n",
            f"    - name: {route['name']}\n      timeouts:\n        request: 10s\n",
        )
    else:
        routes, field, timeout = history / "apps" / "base" / "gateway" / "virtualservice.yaml", "http", "timeout"
        value = "10s"
        route = yaml.safe_load(routes.read_text())["spec"]["http"][-1]
        edit(routes, f"    - name: {route['name']}\n", f"    - name: {route['name']}\n      timeout: 10s\n")
    commit(history, "a timeout for the API")
    reviews, text, markdown = reviewed(history, only=("dev",))
    assert f"        spec.{field}[name={route['name']}].{timeout}: (absent) -> {value}" in text
    assert f"`spec.{field}[name={route['name']}].{timeout}`: `(absent)` → `{value}`" in markdown
    # The home page's row states a circuit breaker, so its verdict carries the route's policy: it changes, and holds.
    changed = [row for env in reviews for row in env.rows]
    assert changed and all(not row.broke and row.after.holds for row in changed)
    assert review.exit_status(reviews) == 1


def test_a_policy_that_drops_a_caller_names_the_contract_row_it_breaks(history):
    rows = contract.load(history / "contract.yaml")
    frontend = next(row for row in rows if not isinstance(row.caller, str) and row.expected.startswith("reaches "))
    principal = frontend.caller.principal
    edit(history / "apps" / "base" / "zero-trust" / "backend.yaml", f"- {principal}\n", f"- {principal}-retired\n")
    commit(history, "the backend no longer admits the frontend")
    reviews, text, markdown = reviewed(history, only=("dev", "prod"))
    assert review.exit_status(reviews) == 2
    for env in reviews:
        assert [row.row for row in env.rows if row.broke] == [frontend.name]
    assert f"breaks {frontend.name!r}: before, holds, {frontend.expected}" in text
    assert f"now, FAILS, denied where the row expects {frontend.expected}" in text
    assert "  dev: 1 object changed in apps; rows: 1 break; a contract row breaks\n" in text
    assert f"| {frontend.name} | {frontend.expected} | 403, no ALLOW rule admits it (the row expects " in markdown
    assert "| **breaks** |" in markdown
    # A review too long for a comment keeps its summary, everything before the first environment's details.
    summary = markdown.split("\n#### ")[0].splitlines()
    assert summary[0] == review.MARKER
    assert any(line.startswith("**contract broken: 2 row(s) that held now fail") for line in summary)  # dev, prod
    assert "- **dev**: 1 object changed in apps; rows: 1 break; a contract row breaks" in summary


@pytest.mark.skipif(bool(charts.unavailable_reason()), reason=charts.unavailable_reason() or "charts at hand")
def test_a_chart_version_bump_renders_the_install_layer_and_summarizes_crds(history):
    edit(history / "versions.env", f"ISTIO_VERSION={VERSIONS['ISTIO_VERSION']}", "ISTIO_VERSION=1.31.4")
    assert install.pin_versions(history)  # every copy of the version follows versions.env
    commit(history, "Istio 1.31.4")
    reviews, text, markdown = reviewed(history, only=("prod",))  # every environment renders the same way
    assert "infrastructure/ is unchanged" not in text
    assert [env.name for env in reviews] == ["prod"]
    prod = reviews[0]
    changed = {change.resource: change for change in prod.resources["infrastructure"]}
    istiod = changed["Deployment istio-system/istiod"]
    assert any(f.path.endswith(".image") and "1.31" in str(f.after) for f in istiod.fields)
    crds = [change for change in changed.values() if change.resource.startswith("CustomResourceDefinition ")]
    assert crds and all(change.summarized for change in crds)
    assert f"~ {crds[0].resource} ({len(crds[0].fields)} fields changed, not shown)" in text
    assert review.exit_status(reviews) == 1


def test_an_entry_point_change_shows_in_its_environment_only(history):
    tool = install.gitops_tool()
    if tool == "argocd":
        path, old, new, field = "applications/apps.yaml", "limit: 10", "limit: 3", "spec.syncPolicy.retry.limit"
    else:
        path, old, new, field = "apps.yaml", "retryInterval: 1m", "retryInterval: 5m", "spec.retryInterval"
    edit(history / "clusters" / tool / "prod" / path, old, new)
    commit(history, "prod retries differently")
    reviews, text, _ = reviewed(history)
    assert [env.name for env in reviews if env.changed] == ["prod"]
    prod = next(env for env in reviews if env.name == "prod")
    assert [[f.path for f in change.fields] for change in prod.resources["clusters"]] == [[field]]
    assert "  clusters: 0 added, 0 removed, 1 changed" in text


def test_an_environment_new_since_base_is_listed_as_added(history):
    new = history / "apps" / "overlays" / "qa"
    new.mkdir()
    (new / "kustomization.yaml").write_text((history / "apps" / "overlays" / "dev" / "kustomization.yaml").read_text())
    subprocess.run(["git", "-C", str(history), "add", "-A"], check=True)
    commit(history, "a qa environment")
    reviews, text, _ = reviewed(history, only=("dev", "qa"))
    qa = next(env for env in reviews if env.name == "qa")
    assert "new environment: everything in it is added" in qa.notes
    assert qa.resources["apps"] and all(change.status == "added" for change in qa.resources["apps"])
    assert qa.rows == []  # its rows hold, so only the resources are news
    assert [env.name for env in reviews if env.changed] == ["qa"]


def test_the_command_says_no_change_and_exits_0_then_1_once_something_changes(history):
    command = [sys.executable, "-m", "repo_tools", "diff", "--environment", "dev", "HEAD"]
    unchanged = subprocess.run(command, cwd=history, capture_output=True, text=True, check=False)
    assert unchanged.returncode == 0 and "\n  dev: no change\nno change\n" in unchanged.stdout
    move_the_backend_port(history)
    changed = subprocess.run([*command, "--markdown"], cwd=history, capture_output=True, text=True, check=False)
    assert changed.returncode == 1 and changed.stdout.startswith(review.MARKER)
    missing = subprocess.run([*command[:-1], "no-such-ref"], cwd=history, capture_output=True, text=True, check=False)
    assert missing.returncode == 3 and "no-such-ref" in missing.stderr


@pytest.mark.skipif(install.gitops_tool() != "flux", reason="this repo syncs with Argo CD: no HelmReleases")
def test_a_helm_release_change_shows_in_what_flux_installs(history):
    edit(history / "infrastructure" / "flux" / "releases.yaml", "retries: 3", "retries: 5")
    commit(history, "more install retries")
    reviews, text, _ = reviewed(history, only=("dev",))
    changes = reviews[0].resources["flux install"]
    assert [change.resource for change in changes] == ["HelmRelease istio-system/istio-base"]
    assert "spec.install.remediation.retries: 3 -> 5" in text


def test_a_working_tree_that_no_longer_builds_or_loads_is_a_broken_change(history):
    (history / "apps" / "overlays" / "dev" / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    reviews, text, _ = reviewed_against_head(history, only=("dev",))
    dev = next(env for env in reviews if env.name == "dev")
    assert dev.unbuildable and dev.unbuildable[0].startswith("apps of dev does not build in the working tree")
    assert review.exit_status(reviews) == 2 and "the working tree does not build or load for: dev" in text
    subprocess.run(["git", "-C", str(history), "checkout", "-q", "."], check=True)
    (history / "contract.yaml").write_text("rows: [ : broken\n")
    reviews, text, _ = reviewed_against_head(history, only=("dev",))
    assert review.exit_status(reviews) == 2
    assert "BROKEN: in the working tree, contract.yaml does not load" in text


def test_a_removed_environment_is_said_so_and_a_long_value_shows_where_it_differs(history):
    shutil.rmtree(history / "apps" / "overlays" / "staging")
    reviews, _, _ = reviewed_against_head(history, only=("staging",))
    staging = next(env for env in reviews if env.name == "staging")
    assert "environment removed: apps/overlays/staging is gone" in staging.notes and staging.rows == []
    before = "x" * 100 + "timeout = 10" + "y" * 100
    shown_before, shown_after = review.difference(review.FieldChange("data.script", before, before.replace("10", "30")))
    assert "timeout = 10" in shown_before and "timeout = 30" in shown_after


def reviewed_against_head(root: Path, only: tuple[str, ...]) -> tuple[list[review.EnvironmentReview], str, str]:
    reviews, notes = review.review("HEAD", root, only)
    return reviews, review.text(reviews, notes, "HEAD"), review.markdown(reviews, notes, "HEAD")
