"""The change review a pull request shows, held to its exact text for three typical changes of a default bake: one
canary step in prod, a policy change that breaks a row, and an Istio release (the install layer only). Each reads,
first, one line per environment with what changed and what that does to the contract; then, per environment, the
rows that moved in a few words; the explanations and object diffs fold away."""

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, bake, fixtures_environment

GIT = ["git", "-c", "user.name=review", "-c", "user.email=review@localhost"]


@pytest.fixture
def repo(cookies: Any) -> Path:
    result = bake(cookies)
    assert result.exit_code == 0, result.exception
    root = result.project_path
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "as baked"], cwd=root, check=True)
    return root


def change(root: Path, path: str, old: str, new: str) -> None:
    text = (root / path).read_text()
    assert old in text, f"{old!r} not in {path}"
    (root / path).write_text(text.replace(old, new, 1))


def review(root: Path) -> str:
    subprocess.run([*GIT, "commit", "-q", "-am", "the change"], cwd=root, check=True)
    command = [sys.executable, "-m", "repo_tools", "diff", "HEAD~1", "--markdown"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, env=fixtures_environment()).stdout


SPLIT = "backend 90%, backend-canary 10%"
CANARY_STEP = f"""<!-- repo-tools-diff -->
### What this change does, per environment (from `HEAD~1`)

- **dev**: no change
- **e2e**: no change
- **prod**: 1 object changed in apps; rows: 7 change how they hold; every promise still holds
- **staging**: no change

**changed: prod; every contract row that held still holds**

> infrastructure/ is unchanged: the install layer is not rendered

#### prod

| row | before | after | |
|---|---|---|---|
| /api reaches the backend | backend 100% | {SPLIT} | changes how it holds |
| /api/orders reaches the backend | backend 100% | {SPLIT} | changes how it holds |
| /api/orders is shared between the stable and canary backend by the environment's weights | backend 100% | {SPLIT} | changes how it holds |
| a request without the header never reaches the canary by it | backend 100% | {SPLIT} | changes how it holds |
| a GET to /api/orders waits 15s in all and is retried by Istio's default only when it never reached the backend | backend 100% | {SPLIT} | changes how it holds |
| a POST to /api/orders is retried only when it never reached the backend | backend 100% | {SPLIT} | changes how it holds |
| dot segments are resolved before routing: /api/./orders reaches the backend | backend 100% | {SPLIT} | changes how it holds |

<details><summary>why, row by row</summary>
"""
CANARY_STEP_OBJECTS = """<details><summary>apps: 0 added, 0 removed, 1 changed</summary>

- changed `HTTPRoute shop/public-routes`
  - `spec.rules[name=backend-api].backendRefs[name=backend].weight`: `100` → `90`
  - `spec.rules[name=backend-api].backendRefs[name=backend-canary].weight`: `0` → `10`

</details>
"""


def test_one_canary_step_in_prod_reads_as_the_apis_split_moving_and_every_promise_holding(repo):
    change(repo, "apps/overlays/prod/kustomization.yaml", "weights=100/0", "weights=90/10")
    markdown = review(repo)
    assert markdown.startswith(CANARY_STEP), markdown
    assert markdown.endswith(CANARY_STEP_OBJECTS), markdown
    assert markdown.count("<details>") == 2 and markdown.count("- changes how it holds ") == 7


BROKEN = """<!-- repo-tools-diff -->
### What this change does, per environment (from `HEAD~1`)

- **dev**: 1 object changed in apps; rows: 1 break; a contract row breaks
- **e2e**: 1 object changed in apps; rows: 1 break; a contract row breaks
- **prod**: 1 object changed in apps; rows: 1 break; a contract row breaks
- **staging**: 1 object changed in apps; rows: 1 break; a contract row breaks

**contract broken: 4 row(s) that held now fail; changed: dev, e2e, prod, staging**

> infrastructure/ is unchanged: the install layer is not rendered

#### dev

| row | before | after | |
|---|---|---|---|
| the frontend may call the backend, whose stable version answers behind a circuit breaker | reaches backend | 403, no ALLOW rule admits it (the row expects reaches backend) | **breaks** |
"""


def test_a_policy_that_drops_the_frontend_reads_as_the_row_it_breaks_in_every_environment(repo):
    change(repo, "apps/base/zero-trust/backend.yaml", "/sa/frontend\n", "/sa/frontend-retired\n")
    markdown = review(repo)
    assert markdown.startswith(BROKEN), markdown
    assert markdown.count("| **breaks** |") == 4 and markdown.count("<details>") == 8


ISTIO_RELEASE = """<!-- repo-tools-diff -->
### What this change does, per environment (from `HEAD~1`)

- **dev**: 41 objects changed in infrastructure; no row moves; every promise still holds
- **e2e**: 41 objects changed in infrastructure; no row moves; every promise still holds
- **prod**: 41 objects changed in infrastructure; no row moves; every promise still holds
- **staging**: 41 objects changed in infrastructure; no row moves; every promise still holds

**changed: dev, e2e, prod, staging; every contract row that held still holds**

> the install layer is rendered by helm from the charts' recorded sources, matched by chart and minor version: a patch release shows as the recorded source of its minor

#### dev

<details><summary>infrastructure: 0 added, 0 removed, 41 changed</summary>
"""


def test_an_istio_release_reads_as_the_install_layer_alone_changing(repo):
    if not (FIXTURES / "charts" / "src").is_dir() or shutil.which("helm") is None:
        pytest.skip(f"the install layer is rendered by helm from the charts' sources in {FIXTURES}")
    change(repo, "versions.env", "ISTIO_VERSION=1.30.8", "ISTIO_VERSION=1.31.4")
    subprocess.run([sys.executable, "-m", "repo_tools.install"], cwd=repo, check=True, capture_output=True)
    markdown = review(repo)
    assert markdown.startswith(ISTIO_RELEASE), markdown[:3000]
    assert "| row |" not in markdown and markdown.count("<details>") == 4
