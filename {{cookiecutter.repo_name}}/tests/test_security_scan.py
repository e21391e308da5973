"""The checkov wrapper: waivers need reasons, unwaived findings fail, and stale waivers are named."""

from pathlib import Path

import pytest

from repo_tools import security

pytestmark = pytest.mark.answer_independent


def report(*check_ids: str, file: str = "/dev.yaml") -> dict:
    """The part of checkov's JSON report the wrapper reads."""
    failed = [
        {
            "check_id": check_id,
            "check_name": f"name of {check_id}",
            "resource": "Deployment.shop.web",
            "file_path": file,
        }
        for check_id in check_ids
    ]
    return {"check_type": "kubernetes", "results": {"failed_checks": failed, "passed_checks": []}}


def test_every_waiver_in_the_repo_has_a_reason():
    waivers = security.load_waivers()
    assert waivers and all(reason.strip() for reason in waivers.values())


def test_a_waiver_without_a_reason_is_refused(tmp_path: Path):
    waivers = tmp_path / "waivers.yaml"
    waivers.write_text("- id: CKV_K8S_43\n  reason: ''\n")
    with pytest.raises(ValueError, match="waiver CKV_K8S_43 has no reason"):
        security.load_waivers(waivers)


def test_findings_come_from_single_and_multi_framework_reports():
    assert [f.check_id for f in security.findings_from_report(report("CKV_1", "CKV_2"))] == ["CKV_1", "CKV_2"]
    assert [f.check_id for f in security.findings_from_report([report("CKV_1"), report("CKV_3")])] == [
        "CKV_1",
        "CKV_3",
    ]


def test_each_finding_is_of_the_kustomization_its_file_was_rendered_from():
    findings = security.findings_from_report([report("CKV_1", file="/base.yaml"), report("CKV_2", file="/prod.yaml")])
    assert [(f.overlay, f.check_id) for f in findings] == [("base", "CKV_1"), ("prod", "CKV_2")]


def test_only_unwaived_findings_fail_and_stale_waivers_are_named():
    findings = security.findings_from_report(report("CKV_K8S_43", "CKV_K8S_15", file="/prod.yaml"))
    waivers = {"CKV_K8S_43": "tags", "CKV_K8S_99": "gone"}
    assert [f.check_id for f in security.unwaived(findings, waivers)] == ["CKV_K8S_15"]
    assert security.unused_waivers(findings, waivers) == ["CKV_K8S_99"]
