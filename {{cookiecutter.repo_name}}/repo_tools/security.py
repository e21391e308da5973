"""Scan every rendered apps overlay with checkov, offline; fail on any finding not waived with a reason.

    python -m repo_tools.security        (run by `nox -s security`, in checkov's own environment)

checkov has no checks for Istio's kinds; those are covered by repo_tools.invariants.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from repo_tools import REPO_ROOT, kustomize, layout

WAIVERS = REPO_ROOT / "security" / "checkov-waivers.yaml"


@dataclass(frozen=True)
class Finding:
    overlay: str
    check_id: str
    check_name: str
    resource: str


def load_waivers(path: Path = WAIVERS) -> dict[str, str]:
    """check id -> reason; a waiver without a reason is an error."""
    waivers = {}
    for entry in yaml.safe_load(path.read_text()) or []:
        if not str(entry.get("reason", "")).strip():
            raise ValueError(f"{path.name}: waiver {entry.get('id')} has no reason")
        waivers[entry["id"]] = entry["reason"]
    return waivers


def findings_from_report(report: dict | list) -> list[Finding]:
    """Failed checks from checkov's JSON report (one object, or a list with one per framework), each of the
    kustomization its file was rendered from (<name>.yaml)."""
    reports = report if isinstance(report, list) else [report]
    return [
        Finding(
            Path(check["file_path"]).stem, check["check_id"], check.get("check_name", ""), check.get("resource", "")
        )
        for single in reports
        for check in single.get("results", {}).get("failed_checks", [])
    ]


def unwaived(findings: list[Finding], waivers: dict[str, str]) -> list[Finding]:
    return [finding for finding in findings if finding.check_id not in waivers]


def unused_waivers(findings: list[Finding], waivers: dict[str, str]) -> list[str]:
    return sorted(set(waivers) - {finding.check_id for finding in findings})


def scan(rendered: list[Path]) -> dict | list:
    """One checkov run over every rendered file: most of a run is checkov starting up."""
    result = subprocess.run(
        ["checkov", "--file", *map(str, rendered), "--framework", "kubernetes", "--output", "json", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},  # no calls home: stays offline
    )
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise RuntimeError(f"checkov failed on {', '.join(path.name for path in rendered)}:\n{result.stderr.strip()}")
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    description = __doc__.split("\n\n")[0]
    argparse.ArgumentParser(prog="python -m repo_tools.security", description=description).parse_args(argv)
    if shutil.which("checkov") is None:
        print(
            "checkov is not on PATH: run `nox -s security`, or `pip install checkov` in a virtualenv of its own "
            "(it pins its dependencies) and run this from there.",
            file=sys.stderr,
        )
        return 1
    waivers = load_waivers()
    findings: list[Finding] = []
    with tempfile.TemporaryDirectory() as workdir:
        rendered = []
        for name, directory in layout.app_kustomizations().items():
            rendered.append(Path(workdir) / f"{name}.yaml")
            rendered[-1].write_text(kustomize.render(directory))
        findings += findings_from_report(scan(rendered))
    findings.sort(key=lambda finding: finding.overlay)
    for finding in findings:
        verdict = "waived" if finding.check_id in waivers else "FAILED"
        print(f"{verdict:<7} {finding.overlay:<8} {finding.check_id} {finding.check_name} ({finding.resource})")
    problems = [f"{f.overlay}: {f.check_id} {f.check_name} on {f.resource}" for f in unwaived(findings, waivers)]
    problems += [
        f"waiver {check_id} matches no finding any more: remove it" for check_id in unused_waivers(findings, waivers)
    ]
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    print(
        f"{len(findings)} findings, {len(findings) - len(unwaived(findings, waivers))} waived, {len(problems)} problems"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
