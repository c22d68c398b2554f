"""The documentation site: every public name is on an API page and documented; the guide's snippets run.

`mkdocs build --strict` (in `.ci/run`) checks links and renders the pages; these tests check what the build
cannot: that no public name is left off (mkdocstrings renders what it is given, silently) and that the
code the guide teaches still runs against the current API.
"""

import ast
import importlib
import inspect
import pathlib
import re
import types

import pytest
import torch

import dropkit

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS = (ROOT / "mkdocs.yml").read_text()

# Public modules: the submodules dropkit exports, plus dropkit.tune (not imported by `import dropkit`: it needs
# the optional optuna).
PUBLIC_MODULES = sorted(
    {f"dropkit.{name}" for name in dropkit.__all__ if isinstance(getattr(dropkit, name), types.ModuleType)}
    | {"dropkit.tune"}
)
DIRECTIVE = re.compile(r"^:::\s*(\S+)\s*$", re.MULTILINE)


def _api_pages() -> dict[str, tuple[pathlib.Path, str]]:
    """``{module: (page, text after its directive)}`` for every ``::: module`` directive under docs/api."""
    found = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        text = page.read_text()
        for match in DIRECTIVE.finditer(text):
            found[match.group(1)] = (page, text[match.end() :])
        # a directive's own options block, if any, is the indented text right after it
    return found


def _directive_members(after: str) -> list[str] | None:
    """The ``members:`` list of a directive's options, or ``None`` when it renders the whole module."""
    block = []
    for line in after.splitlines()[1:]:
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    text = "\n".join(block)
    if "members:" not in text:
        return None
    after_members = text.split("members:", 1)[1]
    inline = re.match(r"\s*\[([^\]]*)\]", after_members)
    if inline:
        return [m.strip().strip("'\"") for m in inline.group(1).split(",") if m.strip()]
    return re.findall(r"^\s*-\s*(\w+)", after_members, re.MULTILINE)


def _comment_documented(module: types.ModuleType) -> set[str]:
    """Names assigned in ``module``'s source with a ``#:`` comment on the line or the line above."""
    source = inspect.getsource(module)
    lines = source.splitlines()
    names = set()
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            if isinstance(target, ast.Name) and isinstance(node, (ast.Assign, ast.AnnAssign)):
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                if "#:" in lines[node.lineno - 1] or above.startswith("#:"):
                    names.add(target.id)
    return names


def test_mkdocs_renders_every_public_name():
    # The API pages use module-level directives; these options make them render exactly __all__, with or
    # without a docstring, so "on the page" below means "rendered".
    assert re.search(r"^\s*filters:\s*public\s*$", MKDOCS, re.MULTILINE)
    assert re.search(r"^\s*show_if_no_docstring:\s*true", MKDOCS, re.MULTILINE)
    assert "strict: true" in MKDOCS


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_module_has_an_api_page_in_the_nav(name):
    pages = _api_pages()
    assert name in pages, f"no '::: {name}' directive in docs/api/*.md"
    page = pages[name][0].relative_to(DOCS).as_posix()
    assert re.search(rf":\s*{re.escape(page)}\s*$", MKDOCS, re.MULTILINE), f"{page} is not in mkdocs.yml's nav"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_name_in_all_is_on_the_page_and_documented(name):
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
    page, after = _api_pages()[name]
    members = _directive_members(after)
    commented = _comment_documented(module)
    page_text = page.read_text()
    undocumented = []
    for public in module.__all__:
        assert hasattr(module, public), f"{name}.__all__ lists {public!r}, which does not exist"
        if members is not None:
            assert public in members, f"{name}.{public} is not in the members of '::: {name}' in {page.name}"
        obj = getattr(module, public)
        if inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, types.ModuleType):
            doc = obj.__doc__  # a class's own docstring: __doc__ is not inherited
            if not (doc or "").strip():
                undocumented.append(public)
        elif public not in commented and f"`{public}`" not in page_text:
            undocumented.append(public)  # a constant: a `#:` comment, or described in the page's prose
    assert not undocumented, f"{name}: no docstring for {undocumented}"


def test_the_directive_parser_reads_members_lists():
    assert _directive_members("\n    options:\n      members: [a, b]\n") == ["a", "b"]
    assert _directive_members("\n    options:\n      members:\n        - a\n        - b\nnext") == ["a", "b"]
    assert _directive_members("\n\nprose") is None


# --- the guide's snippets ------------------------------------------------------------------------------------
# Every ```python block of a guide page runs, in order, in one namespace per page. Blocks of code for other
# libraries (Keras, baal, ...) are fenced as ```py and only read.

SNIPPET_PAGES = sorted([*(DOCS / "guide").glob("*.md"), DOCS / "migration.md", DOCS / "index.md"])
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_guide_has_runnable_snippets():
    counts = {page.name: len(FENCE.findall(page.read_text())) for page in SNIPPET_PAGES}
    assert all(n > 0 for name, n in counts.items() if name != "index.md"), counts


@pytest.mark.parametrize("page", SNIPPET_PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_guide_snippets_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(FENCE.findall(page.read_text())):
        code = compile(block, f"{page.name}[block {i}]", "exec")
        exec(code, namespace)  # noqa: S102 - the docs' own snippets


def test_every_figure_a_page_shows_is_drawn_by_the_build():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_figures", DOCS / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)  # registers the figures; drawing them is the docs build's job
    shown = {m for page in DOCS.rglob("*.md") for m in re.findall(r"figures/([\w-]+\.png)", page.read_text())}
    assert shown and shown <= set(figures.FIGURES), shown - set(figures.FIGURES)
    assert "docs/hooks.py" in MKDOCS


# --- docstring examples run as doctests ------------------------------------------------------------------------
# `pytest` (the CI command) collects src/dropkit with --doctest-modules, so every `>>>` example in a docstring is
# a test. The names below have no example, each for a stated reason; any other public function or class needs one.

NO_EXAMPLE = {
    "dropkit.mc.MCResult": "a result container; mc.predict's example shows its fields",
    "dropkit.mc.stochastic_modules": "mc.py is owned by the MC-dropout work (issue 6)",
    "dropkit.mc.gaussian_log_likelihood": "mc.py is owned by the MC-dropout work (issue 6); the guide runs it",
    "dropkit.metrics.Reliability": "a dataclass returned by ece, whose example reads it",
    "dropkit.surgery.DropoutSite": "a dataclass returned by find_dropout, whose example reads it",
    "dropkit.rng.Shard": "a dataclass; current_shards' example shows one",
    "dropkit.tune.tune": "runs an Optuna study; the choosing-p guide runs a smoke-sized one",
}


def test_doctests_are_collected_by_the_ci_command():
    config = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^addopts = ".*--doctest-modules', config, re.MULTILINE)
    assert re.search(r'^testpaths = \[.*"src/dropkit"', config, re.MULTILINE)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_function_and_class_has_a_docstring_example(name):
    module = importlib.import_module(name)
    missing = []
    for public in module.__all__:
        obj = getattr(module, public)
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and ">>>" not in (obj.__doc__ or ""):
            if f"{name}.{public}" not in NO_EXAMPLE:
                missing.append(public)
    assert not missing, f"{name}: no '>>>' example in the docstring of {missing}"


def test_the_no_example_list_names_only_public_names_without_examples():
    for dotted in NO_EXAMPLE:
        module_name, _, public = dotted.rpartition(".")
        module = importlib.import_module(module_name)
        assert public in module.__all__ and ">>>" not in (getattr(module, public).__doc__ or ""), dotted
