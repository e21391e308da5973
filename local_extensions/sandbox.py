"""Render everything, answers included, in Jinja's sandbox, and report a bad answer instead of crashing.

cookiecutter renders each answer as a Jinja template before any hook runs, so an answer such as
"{{ cycler.__init__.__globals__.os.system('...') }}" would run code. In the sandbox it is refused.
Refusals and template syntax errors in an answer surface as jinja2's UndefinedError, which
cookiecutter reports as "Unable to render variable '<answer>'" and exits 1, without a traceback,
before anything is written. The template itself needs nothing the sandbox forbids.
"""

from typing import Any

from jinja2 import Environment, TemplateSyntaxError, UndefinedError
from jinja2.ext import Extension
from jinja2.sandbox import SandboxedEnvironment, safe_range


class _ReportingSandbox(SandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        return self.undefined(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed in an answer",
            name=attribute,
            obj=obj,
            exc=UndefinedError,
        )


class SandboxExtension(Extension):
    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        unsandboxed = type(environment)
        environment.__class__ = type(f"Sandboxed{unsandboxed.__name__}", (_ReportingSandbox, unsandboxed), {})
        environment.binop_table = dict(SandboxedEnvironment.default_binop_table)
        environment.unop_table = dict(SandboxedEnvironment.default_unop_table)
        environment.globals["range"] = safe_range
        self._checking = False

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        if name is not None or self._checking:
            return source  # a file of the template: cookiecutter reports its errors with the file name
        self._checking = True
        try:
            self.environment.parse(source)
        except TemplateSyntaxError as error:
            raise UndefinedError(f"{error.message} (Jinja syntax in an answer: {source!r})") from None
        finally:
            self._checking = False
        return source
