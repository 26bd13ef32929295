"""The layers keep to their rooms, read from the imports of every module (AST, nothing is imported): the Telegram
layer talks to services only, the services know nothing of Telegram, and lm is a library that knows nothing of
the bot. Also every module's size: bot/ 500 lines at most, lm/ 600."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package (a folder of the repository) -> the top-level modules or packages it must not import
FORBIDDEN = {
    "bot/telegram": ("torch", "lm", "bot.db"),
    "lm": ("bot", "telegram", "sqlalchemy"),
    "bot/services": ("telegram",),
    "bot/text": ("torch", "telegram", "sqlalchemy", "bot.db", "bot.services", "bot.telegram", "lm.engine", "lm.serve",
                 "lm.spans", "lm.model"),  # text algorithms: no model, no SQL, no use case
}
MAX_LINES = {"bot": 500, "lm": 600}
# the lm modules that generate, and the one module of bot/services that may import them (and re-exports them)
GENERATION = ("lm.engine", "lm.serve", "lm.spans")
GATEWAY = "bot/services/lm_gateway.py"


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (also inside functions), as a dotted name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # from bot import db
    return found


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_it_must_not(package):
    assert (ROOT / package).is_dir()
    assert violations(package, FORBIDDEN[package]) == []


def test_only_the_gateway_imports_lms_generation():
    bad = [v for v in violations("bot/services", GENERATION) if not v.startswith(GATEWAY + " ")]
    assert bad == []


def test_what_the_gateway_reexports_is_there_in_lm():
    """Each name the gateway hands out lazily is defined (or imported) at the top of the lm module it names: a
    rename in lm fails here, not at the first reply."""
    from bot.services.lm_gateway import GENERATION_NAMES

    assert {"Queued", "Started", "ContextOverflow", "GenerationConfig"} <= set(GENERATION_NAMES)
    for name, module in GENERATION_NAMES.items():
        assert module in GENERATION
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
        defined |= {(a.asname or a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        assert name in defined, f"{module} has no {name}"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "handler.py"
    module.write_text("def f():\n    from lm.engine import GenerationConfig\n    import torch\n")
    assert {"lm.engine", "torch"} <= imported_modules(module)
    module.write_text("from bot import db\n")
    assert "bot.db" in imported_modules(module)


@pytest.mark.parametrize("package", sorted(MAX_LINES))
def test_no_module_is_too_long(package):
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted((ROOT / package).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES[package]]
    assert long == []


@pytest.mark.parametrize("package", ["bot", "lm"])
def test_no_two_modules_share_a_file_name(package):
    """A module's file name says what it is without its folder: no `as chats_db` aliases to tell two apart."""
    seen: dict[str, list[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
