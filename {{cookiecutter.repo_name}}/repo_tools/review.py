"""python -m repo_tools diff [BASE] [--markdown]: what a change does to each environment, before it is merged.

Renders every environment at BASE (default: the merge base with the default branch) and in the working tree: the
apps overlay, its GitOps entry point (clusters/), and the install overlay where its charts are at hand and
infrastructure/ changed. Prints, per environment, the resources added, removed and changed, field by field (CRDs
and webhook configurations only counted), and the traffic contract's rows whose verdict changed. Exit status: 0 nothing changed; 1 something
changed and no row broke; 2 a contract row that held (or a new row) fails in the working tree; 3 BASE unusable.
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from repo_tools import REPO_ROOT, RepoFileError, charts, contract, gitops, kustomize, layout
from repo_tools.resources import describe

LAYERS = ("apps", "clusters", "flux install", "infrastructure")
# Large generated bodies: a changed field count says enough, the values would drown the review.
SUMMARIZED_KINDS = {"CustomResourceDefinition", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
LONGEST_VALUE = 60
MARKER = "<!-- repo-tools-diff -->"  # finds the pull-request comment to update
ABSENT = object()


@dataclass(frozen=True)
class FieldChange:
    path: str
    before: Any
    after: Any


@dataclass(frozen=True)
class ResourceChange:
    resource: str
    status: str  # "added", "removed", "changed"
    fields: list[FieldChange] = field(default_factory=list)
    summarized: bool = False


STATUS_OF_OUTCOME = {
    "unauthenticated": "401",
    "rate-limited": "429",
    "too-large": "413",
    "headers-too-large": "431",
    "redirect https": "301 to https",
    "no-route": "404",
    "no-answer": "no answer",
    "tls-failure": "TLS refused",
}
DENIED_BY = re.compile(r"denied by (?:AuthorizationPolicy )?(\S+ rule \d+)")


def in_brief(outcome: contract.Outcome | None) -> str:
    """A row's outcome in a few words: `backend 90%, backend-canary 10%`, `403 by shop/backend rule 1`, `401`."""
    if outcome is None:
        return "no such row"
    verdict = outcome.verdict
    if verdict.outcome.startswith("reaches "):
        every = verdict.traffic.shares if verdict.traffic else ()
        shares = [share for share in every if share.weight]
        total = sum(share.weight for share in shares)
        brief = (  # a split, even one that gives everything to one side, in percent
            ", ".join(f"{share.workload} {round(100 * share.weight / total)}%" for share in shares)
            if len(every) > 1
            else verdict.outcome
        )
    elif verdict.outcome == "denied":
        rule = DENIED_BY.search(verdict.because)
        brief = f"403 by {rule.group(1)}" if rule else "403, no ALLOW rule admits it"
    else:
        brief = STATUS_OF_OUTCOME.get(verdict.outcome, verdict.outcome)
    return brief if outcome.holds else f"{brief} (the row expects {outcome.row.expected})"


@dataclass(frozen=True)
class RowChange:
    row: str
    before: contract.Outcome | None
    after: contract.Outcome | None

    @property
    def kind(self) -> str:
        """breaks (held before, or is new, and fails now), fixed (failed before, holds now), changes how it holds
        (holds both times, by another route, split, policy or timeout), still fails, added, removed."""
        if self.after is None:
            return "removed"
        if not self.after.holds:
            return "still fails" if self.before is not None and not self.before.holds else "breaks"
        if self.before is None:
            return "added"
        return "changes how it holds" if self.before.holds else "fixed"

    @property
    def broke(self) -> bool:
        return self.kind == "breaks"

    def briefs(self) -> tuple[str, str]:
        """Before and after in a few words; where those read alike, the policy or the rule that changed."""
        before, after = in_brief(self.before), in_brief(self.after)
        if before == after and self.before is not None and self.after is not None:
            before, after = self.before.verdict.because, self.after.verdict.because
            traffic = (self.before.verdict.traffic, self.after.verdict.traffic)
            if all(t is not None and t.policy is not None for t in traffic):
                before, after = traffic[0].policy.describe(), traffic[1].policy.describe()  # type: ignore[union-attr]
        return before, after

    def sentence(self) -> str:
        def state(outcome: contract.Outcome | None) -> str:
            if outcome is None:
                return "no such row"
            if outcome.holds:
                return f"holds, {outcome.verdict.outcome} ({outcome.verdict.because})"
            return f"FAILS, {outcome.verdict.outcome} where the row expects {outcome.row.expected} ({outcome.verdict.because})"

        return f"{self.kind} {self.row!r}: before, {state(self.before)}; now, {state(self.after)}"


@dataclass
class EnvironmentReview:
    name: str
    resources: dict[str, list[ResourceChange]] = field(default_factory=dict)  # layer -> changes
    rows: list[RowChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unbuildable: list[str] = field(default_factory=list)  # what no longer builds in the working tree

    @property
    def changed(self) -> bool:
        return any(self.resources.values()) or bool(self.rows) or bool(self.unbuildable)

    @property
    def broke(self) -> bool:
        return bool(self.unbuildable) or any(row.broke for row in self.rows)


def git(*args: str, root: Path = REPO_ROOT) -> str:
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def default_base(root: Path = REPO_ROOT) -> str:
    """The merge base of HEAD with the default branch: origin's HEAD, else origin/main, main or master."""
    candidates = ["origin/main", "origin/master", "main", "master"]
    with contextlib.suppress(RuntimeError):
        candidates.insert(0, git("symbolic-ref", "--short", "refs/remotes/origin/HEAD", root=root))
    for candidate in candidates:
        try:
            return git("merge-base", "HEAD", candidate, root=root)
        except RuntimeError:
            continue
    raise RuntimeError("no default branch to compare with: name BASE (a commit, branch or tag)")


def checkout(ref: str, destination: Path, root: Path = REPO_ROOT) -> Path:
    """The tree of `ref`, written to `destination` (git archive: no worktree, nothing left in the repo)."""
    archive = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", ref], capture_output=True, check=False)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {ref} failed: {archive.stderr.decode().strip()}")
    destination.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)
    return destination


def install_layer_changed(ref: str, root: Path = REPO_ROOT) -> bool:
    tracked = subprocess.run(["git", "-C", str(root), "diff", "--quiet", ref, "--", "infrastructure"], check=False)
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "infrastructure", root=root)
    return tracked.returncode != 0 or bool(untracked)


def shown(value: Any, start: int = 0) -> str:
    """A value on one line, at most LONGEST_VALUE characters of it from `start` (where it differs from the other)."""
    if value is ABSENT:
        return "(absent)"
    text = (value if isinstance(value, str) else json.dumps(value)).replace("\n", "\\n")
    if len(text) <= LONGEST_VALUE:
        return text
    start = max(0, min(start, len(text) - LONGEST_VALUE))
    excerpt = ("..." if start else "") + text[start : start + LONGEST_VALUE] + "..."
    return f"{excerpt} ({len(text)} characters)"


def difference(change: "FieldChange") -> tuple[str, str]:
    """Both values as shown, each from a little before the first character where they differ."""
    if not (isinstance(change.before, str) and isinstance(change.after, str)):
        return shown(change.before), shown(change.after)
    before, after = (value.replace("\n", "\\n") for value in (change.before, change.after))
    common = next(
        (i for i, (b, a) in enumerate(zip(before, after, strict=False)) if b != a), min(len(before), len(after))
    )
    start = max(0, common - 10)
    return shown(change.before, start), shown(change.after, start)


def field_changes(before: Any, after: Any, path: str = "") -> list[FieldChange]:
    """Field-level differences as YAML paths; list items with a name are matched by name, others by position."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            change
            for key in sorted(set(before) | set(after), key=str)
            for change in field_changes(
                before.get(key, ABSENT), after.get(key, ABSENT), f"{path}.{key}" if path else str(key)
            )
        ]
    if isinstance(before, list) and isinstance(after, list):
        if all(isinstance(item, dict) and "name" in item for item in before + after):
            old = {item["name"]: item for item in before}
            new = {item["name"]: item for item in after}
            names = list(old) + [name for name in new if name not in old]
            return [
                change
                for name in names
                for change in field_changes(old.get(name, ABSENT), new.get(name, ABSENT), f"{path}[name={name}]")
            ]
        length = max(len(before), len(after))
        padded = [(before + [ABSENT] * length)[:length], (after + [ABSENT] * length)[:length]]
        return [
            change
            for i, (b, a) in enumerate(zip(*padded, strict=True))
            for change in field_changes(b, a, f"{path}[{i}]")
        ]
    return [] if before == after else [FieldChange(path, before, after)]


def resource_changes(before: list[dict], after: list[dict]) -> list[ResourceChange]:
    old = {describe(doc): doc for doc in before}
    new = {describe(doc): doc for doc in after}
    changes = [ResourceChange(key, "added") for key in new if key not in old]
    changes += [ResourceChange(key, "removed") for key in old if key not in new]
    for key in (key for key in new if key in old):
        fields = field_changes(old[key], new[key])
        if fields:
            changes.append(ResourceChange(key, "changed", fields, summarized=new[key]["kind"] in SUMMARIZED_KINDS))
    return sorted(changes, key=lambda change: (change.status, change.resource))


@dataclass(frozen=True)
class Tree:
    """One side of the comparison: a checkout of the repo, its rendered environments and its contract."""

    root: Path
    layers: dict[str, dict[str, list[dict] | str]]  # layer -> environment -> documents, or why they do not build
    rows: list[contract.Row] | str

    @property
    def apps(self) -> dict[str, list[dict] | str]:
        return self.layers["apps"]


def build(render: Callable[[], list[dict]]) -> list[dict] | str:
    try:
        return render()
    except (kustomize.KustomizeError, charts.ChartsUnavailable, yaml.YAMLError, OSError) as error:
        return str(error).strip().splitlines()[-1]


def flux_install(entry_point: Path, root: Path) -> list[dict]:
    """What Flux installs for an environment: infrastructure/ with the components its entry point lists."""
    listed = gitops.flux_listed_components(gitops.entry_point_documents(entry_point))
    return gitops.flux_install(listed, root / "infrastructure")


def read_tree(root: Path, with_install_layer: bool, only: Collection[str] = ()) -> Tree:
    environments = sorted(
        path.parent.name
        for path in (root / "apps" / "overlays").glob("*/kustomization.yaml")
        if not only or path.parent.name in only
    )
    renders: dict[tuple[str, str], Callable[[], list[dict]]] = {}
    for name in environments:
        renders["apps", name] = partial(kustomize.build, root / "apps" / "overlays" / name)
        for entry_point in (root / "clusters").glob(f"*/{name}"):
            renders["clusters", name] = partial(gitops.entry_point_documents, entry_point)
            if entry_point.parent.name == "flux":  # Flux installs HelmReleases, not the overlay below
                renders["flux install", name] = partial(flux_install, entry_point, root)
        overlay = root / "infrastructure" / "overlays" / name
        if with_install_layer and (overlay / "kustomization.yaml").is_file():
            renders["infrastructure", name] = partial(charts.render, overlay, root)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        built = dict(zip(renders, pool.map(build, renders.values()), strict=True))
    layers: dict[str, dict[str, list[dict] | str]] = {layer: {} for layer in LAYERS}
    for (layer, name), docs in built.items():
        layers[layer][name] = docs
    try:
        rows: list[contract.Row] | str = contract.load(root / "contract.yaml")
    except (RepoFileError, contract.ContractError) as error:
        missing = not (root / "contract.yaml").is_file()
        rows = "there is no contract.yaml" if missing else f"contract.yaml does not load: {str(error).splitlines()[0]}"
    return Tree(root, layers, rows)


def outcomes(tree: Tree, environment: str) -> dict[str, contract.Outcome]:
    docs = tree.apps.get(environment)
    if not isinstance(docs, list) or isinstance(tree.rows, str):
        return {}
    base = tree.root / "apps" / "base"
    gateway = layout.ingress_gateway(base / "ingress-gateway.env")
    overlay = tree.root / "apps" / "overlays" / environment
    try:
        tokens: layout.ApiTokens | None = layout.api_tokens(overlay, base)
    except LookupError:  # a tree from before the API required tokens
        tokens = None
    host = layout.public_host(overlay, base)
    return {
        outcome.row.name: outcome for outcome in contract.check(environment, docs, tree.rows, gateway, host, tokens)
    }


def review_environment(name: str, before: Tree, after: Tree) -> EnvironmentReview:
    review = EnvironmentReview(name)
    for layer in LAYERS:
        old, new = before.layers[layer].get(name, []), after.layers[layer].get(name, [])
        if isinstance(old, str):
            review.notes.append(f"{layer} of {name} does not build at BASE: {old}")
        if isinstance(new, str):
            review.unbuildable.append(f"{layer} of {name} does not build in the working tree: {new}")
        if isinstance(old, list) and isinstance(new, list):
            review.resources[layer] = resource_changes(old, new)
    if name not in before.apps:
        review.notes.append("new environment: everything in it is added")
    if name not in after.apps:
        review.notes.append(f"environment removed: apps/overlays/{name} is gone")
        return review
    if isinstance(after.rows, str):
        review.unbuildable.append(f"in the working tree, {after.rows}")
    if review.unbuildable:
        return review  # no verdicts to compare: the working tree's side is missing
    old_outcomes, new_outcomes = outcomes(before, name), outcomes(after, name)
    for row in list(old_outcomes) + [row for row in new_outcomes if row not in old_outcomes]:
        change = RowChange(row, old_outcomes.get(row), new_outcomes.get(row))
        if name not in before.apps and not change.broke:
            continue  # a new environment: only the rows it fails are news
        if change.before is None or change.after is None or change.before.verdict != change.after.verdict:
            review.rows.append(change)
    return review


def review(base: str, root: Path = REPO_ROOT, only: Collection[str] = ()) -> tuple[list[EnvironmentReview], list[str]]:
    """Each environment's review (every one, or those named in `only`), and notes that apply to all of them."""
    notes = []
    with_install_layer = install_layer_changed(base, root)
    if with_install_layer and charts.unavailable_reason():
        notes.append(f"infrastructure/ changed but is not rendered: {charts.unavailable_reason()}")
        with_install_layer = False
    elif not with_install_layer:
        notes.append("infrastructure/ is unchanged: the install layer is not rendered")
    elif charts.recordings() is not None and charts.renders_with_real_helm():
        notes.append(
            "the install layer is rendered by helm from the charts' recorded sources, matched by chart and minor "
            "version: a patch release shows as the recorded source of its minor"
        )
    elif charts.recordings() is not None:
        notes.append(
            "the install layer is rendered from recorded renders, matched by chart and minor version: values files "
            "and patch releases show as recorded"
        )
    with tempfile.TemporaryDirectory(prefix="repo-tools-diff-") as scratch:
        before = read_tree(checkout(base, Path(scratch) / "base", root), with_install_layer, only)
        after = read_tree(root, with_install_layer, only)
        if isinstance(before.rows, str):
            notes.append(f"at BASE, {before.rows}")
        environments = sorted(set(before.apps) | set(after.apps))
        return [review_environment(name, before, after) for name in environments], notes


def exit_status(reviews: list[EnvironmentReview]) -> int:
    if any(env.broke for env in reviews):
        return 2
    return 1 if any(env.changed for env in reviews) else 0


def counts(changes: list[ResourceChange]) -> str:
    return ", ".join(f"{sum(c.status == s for c in changes)} {s}" for s in ("added", "removed", "changed"))


ROW_KINDS = ("breaks", "fixed", "changes how it holds", "still fails", "added", "removed")
ROWS_THAT = dict(
    zip(ROW_KINDS, ("break", "fixed", "change how they hold", "still fail", "added", "removed"), strict=True)
)


def summary(env: EnvironmentReview) -> str:
    """One line: what changed in the environment, and what that does to the contract's rows."""
    if not env.changed and not env.notes:
        return "no change"
    if env.unbuildable:
        return "does not build or load in the working tree"
    objects = sum(len(changes) for changes in env.resources.values())
    layers = ", ".join(layer for layer, changes in env.resources.items() if changes)
    changed = f"{objects} object{'s' * (objects != 1)} changed in {layers}" if objects else "no object changed"
    kinds = [row.kind for row in env.rows]
    moved = ", ".join(f"{kinds.count(kind)} {ROWS_THAT[kind]}" for kind in ROW_KINDS if kind in kinds)
    promises = "a contract row breaks" if "breaks" in kinds else "every promise still holds"
    return f"{changed}; {f'rows: {moved}' if moved else 'no row moves'}; {promises}"


def moved_rows(env: EnvironmentReview) -> list[tuple[str, str, str, str]]:
    """(row, before, after, kind) for each row that moved, the ones that break first."""
    ordered = sorted(env.rows, key=lambda row: ROW_KINDS.index(row.kind))
    return [(row.row, *row.briefs(), row.kind) for row in ordered]


def text(reviews: list[EnvironmentReview], notes: list[str], base: str) -> str:
    lines = [f"Changes from {base} to the working tree"]
    lines += [f"  {env.name}: {summary(env)}" for env in reviews]
    lines += [verdict_line(reviews)] + [f"note: {note}" for note in notes]
    for env in reviews:
        if not env.changed and not env.notes:
            continue
        lines.append(f"\n== {env.name} ==")
        lines += [f"  BROKEN: {problem}" for problem in env.unbuildable]
        lines += [f"  note: {note}" for note in env.notes]
        for row, before, after, kind in moved_rows(env):
            lines.append(f"  {kind}: {row}: {before} -> {after}")
        for layer, changes in env.resources.items():
            if not changes:
                continue
            lines.append(f"  {layer}: {counts(changes)}")
            for change in changes:
                sign = {"added": "+", "removed": "-", "changed": "~"}[change.status]
                if change.summarized:
                    lines.append(f"    {sign} {change.resource} ({len(change.fields)} fields changed, not shown)")
                    continue
                lines.append(f"    {sign} {change.resource}")
                lines += [f"        {f.path}: {' -> '.join(difference(f))}" for f in change.fields]
        if env.rows:
            lines.append("  why, row by row:")
            lines += [f"    {row.sentence()}" for row in env.rows]
    return "\n".join(lines) + "\n"


def verdict_line(reviews: list[EnvironmentReview]) -> str:
    broke = sum(row.broke for env in reviews for row in env.rows)
    changed = [env.name for env in reviews if env.changed]
    unbuildable = [env.name for env in reviews if env.unbuildable]
    if unbuildable:
        return f"the working tree does not build or load for: {', '.join(unbuildable)}"
    if broke:
        return f"contract broken: {broke} row(s) that held now fail; changed: {', '.join(changed)}"
    return f"changed: {', '.join(changed)}; every contract row that held still holds" if changed else "no change"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(reviews: list[EnvironmentReview], notes: list[str], base: str) -> str:
    lines = [MARKER, f"### What this change does, per environment (from `{base[:12]}`)", ""]
    lines += [f"- **{env.name}**: {summary(env)}" for env in reviews]
    lines += ["", f"**{verdict_line(reviews)}**", ""]
    lines += [f"> {note}" for note in notes]
    for env in reviews:
        if not env.changed and not env.notes:
            continue
        lines += ["", f"#### {env.name}", ""]
        lines += [f"- **does not build**: {problem}" for problem in env.unbuildable]
        lines += [f"> {note}" for note in env.notes]
        moved = moved_rows(env)
        if moved:
            lines += ["| row | before | after | |", "|---|---|---|---|"]
            lines += [
                f"| {cell(row)} | {cell(before)} | {cell(after)} | {'**breaks**' if kind == 'breaks' else kind} |"
                for row, before, after, kind in moved
            ]
            lines += ["", "<details><summary>why, row by row</summary>", ""]
            lines += [f"- {row.sentence()}" for row in env.rows]
            lines += ["", "</details>"]
        for layer, changes in env.resources.items():
            if not changes:
                continue
            lines += [""] * (lines[-1] != "") + [f"<details><summary>{layer}: {counts(changes)}</summary>", ""]
            for change in changes:
                detail = f" ({len(change.fields)} fields changed, not shown)" if change.summarized else ""
                lines.append(f"- {change.status} `{change.resource}`{detail}")
                if not change.summarized:
                    lines += [f"  - `{f.path}`: `{difference(f)[0]}` → `{difference(f)[1]}`" for f in change.fields]
            lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def main(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m repo_tools diff", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "base", nargs="?", help="commit, branch or tag (default: the merge base with the default branch)"
    )
    parser.add_argument("--markdown", action="store_true", help="Markdown for a pull request, instead of text")
    parser.add_argument("--environment", action="append", default=[], help="review only this one (repeatable)")
    options = parser.parse_args(arguments)
    try:
        base = options.base or default_base()
        git("rev-parse", "--verify", f"{base}^{{commit}}")
        reviews, notes = review(base, only=options.environment)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
        print(f"diff: {error}", file=sys.stderr)
        return 3
    sys.stdout.write(markdown(reviews, notes, base) if options.markdown else text(reviews, notes, base))
    return exit_status(reviews)
