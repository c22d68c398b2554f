"""Griffe extension for the API pages: read dropkit's reST-flavoured Google docstrings as Markdown.

dropkit's docstrings follow STYLE.md: Google sections, with Sphinx roles for maths and cross-references
(``:math:`p```, ``.. math::`` blocks, ``:func:`dropout```) and ``#:`` comments documenting constants and
dataclass fields. mkdocstrings renders Markdown, so this extension rewrites, on the loaded package only (the
source files are untouched):

- ``:math:`x``` → ``$x$`` and ``.. math::`` blocks → ``$$ ... $$`` (MathJax through ``pymdownx.arithmatex``);
- ``:func:`x```, ``:class:`x```, ``:mod:`x```, ``:meth:`x```, ``:data:`x```, ``:attr:`x``` → ``x`` as code;
- an ``Example:`` section heading → ``Examples:``, the section griffe renders doctests of as code;
- reST simple tables (``====  ====``) of two columns → a list; wider ones → a code block;
- dunder attributes that runtime inspection lists on classes (``__doc__``, ...) are dropped;
- a constant or field with no docstring gets the text of its ``#:`` comment (same line or the line above).
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_DUNDER = re.compile(r"^__\w+__$")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_TABLE_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")


def _math_blocks(text: str) -> str:
    """Turn ``.. math::`` directives (content on the same line and/or indented below) into ``$$`` blocks."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if not stripped.startswith(".. math::"):
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(stripped)
        body = [stripped[len(".. math::") :].strip()]
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i].strip())
            i += 1
        formula = "\n".join(b for b in body if b)
        pad = " " * indent
        out += [pad + "$$", *(pad + row for row in formula.splitlines()), pad + "$$", ""]
    return "\n".join(out)


def _tables(text: str) -> str:
    """Fence reST simple tables (a ``=== ===`` rule, rows, a closing rule) so they render aligned."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if _TABLE_RULE.match(lines[i]):
            end = next((j for j in range(i + 1, len(lines)) if _TABLE_RULE.match(lines[j])), None)
            if end is not None:
                out += _table_rows(lines[i : end + 1])
                i = end + 1
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def _table_rows(lines: list[str]) -> list[str]:
    """A two-column simple table as a Markdown list (``- first: second``); wider tables as a code block."""
    rule = lines[0]
    indent = " " * (len(rule) - len(rule.lstrip()))
    columns = [m.start() for m in re.finditer(r"=+", rule)]
    if len(columns) != 2:
        block = textwrap.dedent("\n".join(lines))
        return [indent + "```text", *(indent + row for row in block.splitlines()), indent + "```"]
    items: list[list[str]] = []
    for line in lines[1:-1]:
        first, second = line[: columns[1]].strip(), line[columns[1] :].strip()
        if first:
            items.append([first, second])
        elif items and second:
            items[-1][1] += " " + second
    return ["", *(f"{indent}- {first}: {second}" for first, second in items), ""]


def to_markdown(text: str) -> str:
    """Rewrite one docstring's reST roles, math directives and simple tables as Markdown."""
    text = _EXAMPLE.sub(r"\1Examples:", text)  # griffe's Examples section renders doctests as code
    text = _tables(text)
    text = _math_blocks(text)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(lambda m: f"`{m.group(1)}`", text)


def _comment_docs(source: str) -> dict[str, str]:
    """``{name: text}`` of ``#:`` comments on an assignment's line or on the line just above it."""
    lines = source.splitlines()
    docs: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for target in targets:
            if not isinstance(target, ast.Name):
                continue
            line = lines[node.lineno - 1]
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if "#:" in line:
                docs.setdefault(target.id, line.split("#:", 1)[1].strip())
            elif above.startswith("#:"):
                docs.setdefault(target.id, above[2:].strip())
    return docs


class RstToMarkdown(griffe.Extension):
    """Rewrite the docstrings of the loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # noqa: D102
        self._walk(pkg, set())

    def _walk(self, obj: Any, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.is_alias:
            return
        if obj.is_class:  # runtime inspection lists __doc__, __annotations__, ...: not API
            for name in [n for n, m in obj.members.items() if _DUNDER.match(n) and m.is_attribute]:
                del obj.members[name]
        if obj.is_module or obj.is_class:
            self._fill_comments(obj)
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
        for member in list(obj.members.values()):
            if not member.is_alias:
                self._walk(member, seen)

    @staticmethod
    def _fill_comments(obj: Any) -> None:
        try:
            runtime = griffe.dynamic_import(obj.path)
            source = inspect.getsource(runtime)
        except Exception:  # noqa: BLE001 - builtins, C extensions: nothing to read
            return
        if obj.is_class:
            source = textwrap.dedent(source)
        docs = _comment_docs(source)
        for name, member in obj.members.items():
            if member.is_alias or not member.is_attribute:
                continue
            value = getattr(runtime, name, None)
            inherited = inspect.cleandoc(type(value).__doc__ or "")
            if member.docstring is not None and inspect.cleandoc(member.docstring.value) == inherited:
                member.docstring = None  # inspection hands a constant its type's docstring (int's, tuple's)
            if name in docs and (member.docstring is None or not member.docstring.value.strip()):
                member.docstring = griffe.Docstring(docs[name], parent=member)
