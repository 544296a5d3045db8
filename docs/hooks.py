"""
MkDocs hook: show the docstrings' Sphinx roles as plain code in the API reference.

The docstrings use Sphinx's ``:class:`~pkg.Name``` form, which mkdocstrings renders as the text
``:class:`` followed by the code ``~pkg.Name``. This keeps the code and drops the role, shows
``~pkg.mod.Name`` as ``Name``, as Sphinx would, and drops reST's ``::`` literal-block marker (the
block itself already renders as code).
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|mod|func|meth|attr|data|exc|obj|const|py:\w+):(?=<code>)")
_TILDE = re.compile(r"<code>~(?:[\w]+\.)*(\w+)</code>")
_LITERAL_MARKER = re.compile(r"(?:<p>::</p>|(?<=\S):(?=:</p>))")


def on_page_content(html: str, **_: Any) -> str:
    """Drop Sphinx role prefixes and ``::`` markers, and shorten ``~dotted.Name`` to ``Name``."""
    return _LITERAL_MARKER.sub("", _TILDE.sub(r"<code>\1</code>", _ROLE.sub("", html)))
