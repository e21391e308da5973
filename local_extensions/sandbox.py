"""Answers are data: cookiecutter never renders an answer as a template, and everything renders in Jinja's sandbox.

cookiecutter renders every answer given on the command line or in a config file as a Jinja template, so
"{{ 7*7 }}" would become 49 and "{{ cycler.__init__.__globals__.os.system('...') }}" would run code. Here a
string cookiecutter renders while it collects answers renders as a template only if the template itself wrote it
(a default or prompt of cookiecutter.json); anything else (an answer) renders as itself, unchanged, and the answer
rules (local_extensions/answers.py) refuse template syntax by name. Once cookiecutter generates (it renders the
repo's directory name or a hook), file and directory names render as the templates they are.
"""

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment
from jinja2.ext import Extension
from jinja2.sandbox import SandboxedEnvironment, safe_range

from local_extensions.answers import refuse_bad_answers, yaml_str

TEMPLATE_ROOT = Path(__file__).resolve().parent.parent


def template_strings(value: Any) -> set[str]:
    """Every string of cookiecutter.json, keys of prompt tables included."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return {text for key, item in value.items() for text in template_strings(key) | template_strings(item)}
    if isinstance(value, list):
        return {text for item in value for text in template_strings(item)}
    return set()


class SandboxExtension(Extension):
    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        unsandboxed = type(environment)
        environment.__class__ = type(f"Sandboxed{unsandboxed.__name__}", (SandboxedEnvironment, unsandboxed), {})
        environment.binop_table = dict(SandboxedEnvironment.default_binop_table)
        environment.unop_table = dict(SandboxedEnvironment.default_unop_table)
        environment.globals["range"] = safe_range
        self._defaults = template_strings(json.loads((TEMPLATE_ROOT / "cookiecutter.json").read_text()))
        # What cookiecutter renders once the answers are in: the repo's directory name and the hooks. The first of
        # these an environment renders means it is generating, so file and directory names render as templates.
        self._generation = {path.name for path in TEMPLATE_ROOT.iterdir() if "{{" in path.name}
        self._generation |= {path.read_text(encoding="utf-8") for path in (TEMPLATE_ROOT / "hooks").glob("*.py")}
        self._generating = False
        self._answers: list[str] = []
        environment.globals["answer_as_given"] = self._answers.__getitem__
        environment.globals["refuse_bad_answers"] = refuse_bad_answers
        environment.filters["yaml_str"] = yaml_str

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        self._generating = self._generating or source in self._generation
        if name is not None or self._generating or source in self._defaults:
            return source
        self._answers.append(source)
        return f"{{{{ answer_as_given({len(self._answers) - 1}) }}}}"
