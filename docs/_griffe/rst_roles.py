"""Griffe extension used by the docs build only (not part of the library).

The library's docstrings are Google style with a few reStructuredText habits that
Markdown renders badly. This rewrites them at load time, leaving the source alone:

* ``Example:`` headers become ``Examples:`` so griffe parses ``>>>`` lines as code
  (a lone ``Example:`` is an admonition whose doctests Markdown would mangle);
* Sphinx roles (``:class:`~pyro_vae.models.vae.VAE```) become code spans, and links to the
  API reference when the target is fully qualified inside ``pyro_vae`` (a renamed
  target then fails the ``--strict`` build instead of rotting silently);
* a paragraph ending in ``::`` (reST literal block marker) ends in ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?P<role>class|func|meth|data|attr|mod|obj|exc):`(?P<tilde>~?)(?P<target>[\w.]+)`")
_LINKABLE = {"class", "func", "meth", "mod", "exc"}


def _role(match: re.Match) -> str:
    target = match["target"]
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if match["role"] in _LINKABLE and target.startswith("pyro_vae."):
        return f"[`{shown}`][{target}]"
    return f"`{shown}`"


def rewrite(text: str) -> str:
    text = re.sub(r"^(\s*)Example:\s*$", r"\1Examples:", text, flags=re.MULTILINE)
    text = _ROLE.sub(_role, text)
    return re.sub(r"(\S)::$", r"\1:", text, flags=re.MULTILINE)


class RstRoles(griffe.Extension):
    """Rewrite every docstring of the loaded package once it is fully loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()

        def visit(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)
