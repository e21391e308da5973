"""Render everything, answers included, in Jinja's sandbox.

cookiecutter renders each answer as a Jinja template before any hook runs, so an answer such as
"{{ cycler.__init__.__globals__.os.system('...') }}" would run code. In the sandbox it raises
jinja2.exceptions.SecurityError instead, before anything is written. The template itself needs
nothing the sandbox forbids.
"""

from jinja2 import Environment
from jinja2.ext import Extension
from jinja2.sandbox import SandboxedEnvironment, safe_range


class SandboxExtension(Extension):
    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        unsandboxed = type(environment)
        environment.__class__ = type(f"Sandboxed{unsandboxed.__name__}", (SandboxedEnvironment, unsandboxed), {})
        environment.binop_table = dict(SandboxedEnvironment.default_binop_table)
        environment.unop_table = dict(SandboxedEnvironment.default_unop_table)
        environment.globals["range"] = safe_range
