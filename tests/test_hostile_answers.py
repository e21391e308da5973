"""Property: any answer either bakes a repo whose every overlay builds and validates, or is refused before
anything is written, with a sentence naming the answer, and without running code it carries. Answers include
every scalar YAML 1.1 or 1.2 reads as something other than a string."""

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ANSWER_NAMES, HOSTILE_OUTCOMES, TEMPLATE, fixtures_environment
from cookiecutter.generate import generate_context
from cookiecutter.main import cookiecutter
from cookiecutter.prompt import prompt_for_config
from hypothesis import given, settings
from hypothesis import strategies as st

from local_extensions import answers

# One worker runs the tests that look for the marker: the witness test below creates the marker the others must
# never see.
ONE_WORKER = pytest.mark.xdist_group("hostile-answers")
# Every answer typed as text (the choices are lists), as cookiecutter.json lists them.
FREE_TEXT_ANSWERS = [
    name
    for name, default in json.loads((TEMPLATE / "cookiecutter.json").read_text()).items()
    if not name.startswith("_") and isinstance(default, str)
]
# Outside every directory a bake creates: a refused bake deletes its output, and would take a marker with it.
# The same name in every xdist worker (they must collect the same test ids), unique to the run.
RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
MARKER = str(Path(tempfile.gettempdir()) / f"cookiecutter-injection-witness-{RUN}")
PAYLOADS = [
    f"\"\"\"); __import__('pathlib').Path('{MARKER}').touch() #",
    f"'); __import__('pathlib').Path('{MARKER}').touch() #",
    f"$(touch {MARKER})",
    f"`touch {MARKER}`",
    f"{{{{ cycler.__init__.__globals__.os.system('touch {MARKER}') }}}}",
    "{{ cookiecutter.namespace }}",
    "{% raw %}",
    "{{",
    "{% if %}",
    "x\ny: 1",
    "a: b # c",
    "\u202eevil",
    "../../etc",
    "é" * 70,
    "a" * 300,
    "",
    " ",
]
# Numbers in every notation YAML 1.1 and 1.2 know, booleans, nulls and timestamps, as bare answers.
YAML_SPECIAL_SCALARS = [
    "2024", "0", "-1", "+7", "017", "0o17", "0x1F", "0b101", "1_000", "190:20:30", "1e3", "1.5", "6.8523015e+5",
    ".inf", "-.Inf", ".nan", "true", "False", "TRUE", "yes", "No", "on", "OFF", "y", "N", "null", "Null", "~",
    "2024-01-01", "2001-12-14t21:59:43.10-05:00", "2002-12-14",
]  # fmt: skip
ODD_CHARACTERS = list("aZ09-._/:@ \t\n'\"\\`$(){}%#;|&<>*?!~^[]=,+") + ["é", "中", "🙂", "\u00a0"]
PLAUSIBLE = st.from_regex(r"[a-z][a-z0-9-]{0,12}[a-z0-9]", fullmatch=True)
ANSWERS = st.one_of(
    st.text(alphabet=st.sampled_from(ODD_CHARACTERS), max_size=40),
    st.sampled_from(PAYLOADS),
    st.sampled_from(YAML_SPECIAL_SCALARS),
    st.tuples(st.sampled_from(YAML_SPECIAL_SCALARS), st.sampled_from(["", ".com", ".example.com"])).map("".join),
    st.tuples(PLAUSIBLE, st.sampled_from(PAYLOADS)).map("".join),
    PLAUSIBLE.map(lambda value: value + "\n"),
    PLAUSIBLE,
)


def files_under(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file()]


def validate(project: Path) -> subprocess.CompletedProcess[str]:
    """The baked repo's own checks, with the recorded upstream output when it is beside the template."""
    return subprocess.run(
        [sys.executable, "-m", "repo_tools"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        env=fixtures_environment(),
    )


@ONE_WORKER
def test_any_answer_bakes_a_valid_repo_or_is_refused_cleanly(tmp_path_factory, capfd, record_property):
    outcomes = {"baked and validated": 0, "refused": 0}

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(field=st.sampled_from(FREE_TEXT_ANSWERS), value=ANSWERS)
    def bakes_or_is_refused(field: str, value: str) -> None:
        output = tmp_path_factory.mktemp("bake")
        capfd.readouterr()
        try:
            context = {field: value} | with_its_database(field)
            project = Path(cookiecutter(str(TEMPLATE), no_input=True, extra_context=context, output_dir=str(output)))
        except SystemExit as refused:
            assert refused.code == 1
            errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR: ")]
            assert errors, f"{field}={value!r} was refused without a sentence"
            assert all(line.split(":")[1].strip() in ANSWER_NAMES for line in errors), errors
            assert list(output.iterdir()) == [], f"{field}={value!r} was refused but left {list(output.iterdir())}"
            outcomes["refused"] += 1
        else:
            validation = validate(project)
            assert validation.returncode == 0, f"{field}={value!r}:\n{validation.stdout}{validation.stderr}"
            outcomes["baked and validated"] += 1
        assert not Path(MARKER).exists(), f"{field}={value!r} ran code"

    bakes_or_is_refused()
    record_property(HOSTILE_OUTCOMES, outcomes)  # the terminal summary prints these
    assert outcomes["baked and validated"] >= 3 and outcomes["refused"] >= 10, outcomes


@ONE_WORKER
@pytest.mark.parametrize("payload", [p for p in PAYLOADS if MARKER in p or "{" in p])
@pytest.mark.parametrize("field", ["project_name", "namespace", "api_prefix", "git_repo_url"])
def test_an_answer_cannot_run_code(field, payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with contextlib.suppress(SystemExit):
        cookiecutter(str(TEMPLATE), no_input=True, extra_context={field: payload}, output_dir=str(tmp_path / "out"))
    assert not Path(MARKER).exists()


@ONE_WORKER
@pytest.mark.parametrize("payload", [p for p in PAYLOADS if p.startswith(("$(", "`"))])
def test_the_injection_witness_sees_a_payload_that_runs(payload):
    subprocess.run(["sh", "-c", f"echo {payload}"], check=True, capture_output=True)
    assert Path(MARKER).exists()
    Path(MARKER).unlink()


@pytest.mark.parametrize(
    "payload", ["{{ 7*7 }}", "{{", "{% if %}", PAYLOADS[4]], ids=["arithmetic", "unclosed", "bad-if", "injection"]
)
def test_template_syntax_in_an_answer_is_data_and_refused_by_name(payload, tmp_path, capfd):
    with pytest.raises(SystemExit):
        cookiecutter(str(TEMPLATE), no_input=True, extra_context={"project_name": payload}, output_dir=str(tmp_path))
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR: ")]
    assert errors[0] == f"ERROR: project_name: {payload!r} contains template syntax; answers are data, so write it " + (
        "without '{{', '}}', '{%', '%}', '{#' and '#}'."
    )
    assert files_under(tmp_path) == []


@functools.cache
def default_answers() -> dict:
    """The defaults as cookiecutter itself renders them, derived answers included."""
    context = generate_context(context_file=str(TEMPLATE / "cookiecutter.json"))
    return prompt_for_config(context, no_input=True)


def with_its_database(field: str) -> dict:
    """The database's answers are used, and checked, only with a database."""
    return {"include_database": True} if field.startswith("database_") else {}


def accepting_fields(value: str) -> list[str]:
    """The free-text answers the rules accept `value` for, each tried alone over the defaults."""
    return [
        field
        for field in FREE_TEXT_ANSWERS
        if not [
            problem
            for problem in answers.problems_with(default_answers() | {field: value} | with_its_database(field))
            if problem.startswith(f"{field}:")
        ]
    ]


# One of each kind YAML reads as a non-string; the property above draws from all of YAML_SPECIAL_SCALARS.
ONE_OF_EACH_KIND = ["2024", "017", "0x1F", "1e3", "1.5", "true", "on", "y", "null", "2002-12-14"]


@pytest.mark.parametrize("value", ONE_OF_EACH_KIND)
def test_a_yaml_special_scalar_stays_a_string_wherever_it_is_accepted(value, tmp_path):
    fields = [field for field in accepting_fields(value) if field != "repo_name"]
    # Each workload needs a name of its own: the value names the first that accepts it.
    fields = [field for field in fields if field not in [name for name in fields if name in answers.WORKLOAD_NAMES][1:]]
    assert fields, f"{value!r} is refused for every free-text answer"
    extra = {"namespace": "shop", "domain": "shop.example.com", "acme_email": "platform@example.com"}
    context = extra | dict.fromkeys(fields, value)
    for field in fields:
        context |= with_its_database(field)
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, extra_context=context, output_dir=str(tmp_path)))
    validation = validate(project)
    assert validation.returncode == 0, f"{fields} = {value!r}:\n{validation.stdout}{validation.stderr}"


def test_file_and_directory_names_in_the_template_render_though_answers_do_not(tmp_path):
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE, template, ignore=shutil.ignore_patterns(".git", ".venv", ".nox", "__pycache__"))
    extra = template / "{{cookiecutter.repo_name}}" / "{{cookiecutter.namespace}}-notes"
    extra.mkdir()
    (extra / "{{cookiecutter.frontend_name}}.txt").write_text("{{ cookiecutter.backend_name }}\n")
    project = Path(cookiecutter(str(template), no_input=True, output_dir=str(tmp_path / "out")))
    assert (project / "shop-notes" / "frontend.txt").read_text() == "backend\n"
