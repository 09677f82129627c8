"""The `cli` domain's template: every message of the command line, for `pybabel update` (docs/development.md).

`python -m sensorhub.cli.catalog FILE.pot` writes it, from three sources:
- sensorhub's code: the calls `tr(...)`, `trn(singular, plural, ...)` and `N_(...)` (sensorhub.i18n) anywhere in
  the package (error templates are raised far from the command line) but the web server (`web/`: its strings are
  the `messages` domain's, extracted by `make translations`);
- the commands' help: docstrings of the functions made commands, and the `help=` texts of their options
  (sensorhub.cli.lang translates them by their cleaned text), and the settings table's help texts (config.py's
  `setting(default, help, parse)`: the help of the settings' flags);
- click's own messages (`_`, `ngettext` in its source), which sensorhub.cli.lang routes to our catalog.
Not run by the command line itself: a developer's tool, and the catalog completeness test's.
"""

from __future__ import annotations

import ast
import inspect
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from babel.messages.catalog import Catalog
from babel.messages.extract import extract
from babel.messages.pofile import write_po

logger = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]
WEB = PACKAGE / "web"
#: Our translation functions and their arguments that are msgids (Babel's keyword specs).
KEYWORDS: dict[str, Any] = {"tr": None, "trn": (1, 2), "N_": None}
#: The settings table's help texts (config.py's `setting(default, help, parse)`): the help of their flags.
SETTING_KEYWORDS: dict[str, Any] = {"setting": (2,)}
CLICK_KEYWORDS: dict[str, Any] = {"_": None, "ngettext": (1, 2)}
#: The click decorators whose `help=` is a help text, and those that make a command of a function.
_HELP_CALLS = {"option", "argument", "command", "group", "version_option", "password_option", "confirmation_option"}
_COMMAND_CALLS = {"command", "group"}

Message = tuple[int, str | tuple[str, ...]]


def _python_messages(path: Path, keywords: dict[str, Any]) -> Iterator[Message]:
    with path.open("rb") as source:
        for lineno, message, _comments, _context in extract("python", source, keywords=keywords):
            yield lineno, message


def _call_name(node: ast.expr) -> str:
    func = node.func if isinstance(node, ast.Call) else node
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _help_texts(path: Path) -> Iterator[Message]:
    """The commands' docstrings and the `help=` strings of click's decorators (and of tuples of option specs
    whose last item is the help, as `cli/alerts.py`'s `_RULE_OPTIONS`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(deco, ast.Call) and _call_name(deco) in _COMMAND_CALLS for deco in node.decorator_list
        ):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield node.lineno, doc
        elif isinstance(node, ast.Call) and _call_name(node) in _HELP_CALLS:
            for keyword in node.keywords:
                if keyword.arg == "help" and isinstance(keyword.value, ast.Constant) and isinstance(
                        keyword.value.value, str):
                    yield keyword.value.lineno, inspect.cleandoc(keyword.value.value)
        elif isinstance(node, ast.Tuple) and len(node.elts) == 4 and isinstance(node.elts[0], ast.Constant) \
                and str(node.elts[0].value).startswith("--") and isinstance(node.elts[3], ast.Constant):
            yield node.lineno, str(node.elts[3].value)


def build() -> Catalog:
    """The template of the `cli` domain, every msgid with where it comes from."""
    catalog = Catalog(project="sensorhub", domain="cli", charset="utf-8", fuzzy=False)
    for path in sorted(PACKAGE.rglob("*.py")):
        if WEB in path.parents:
            continue  # the web server's strings: the `messages` domain's (web/i18n.py, its own N_)
        where = path.relative_to(PACKAGE.parent).as_posix()
        found = list(_python_messages(path, KEYWORDS))
        if path.name == "config.py" and path.parent == PACKAGE:
            found += list(_python_messages(path, SETTING_KEYWORDS))
        if path.parent.name == "cli":
            found += list(_help_texts(path))
        for lineno, message in found:
            catalog.add(message, None, [(where, lineno)])
    click_dir = Path(click.__file__).resolve().parent
    for path in sorted(click_dir.glob("*.py")):
        if path.name in ("_winconsole.py", "testing.py"):
            continue
        for lineno, message in _python_messages(path, CLICK_KEYWORDS):
            catalog.add(message, None, [(f"click/{path.name}", lineno)])
    return catalog


def write(catalog: Catalog, target: io.BufferedWriter | io.BytesIO) -> None:
    """Write `catalog` as a .pot file."""
    write_po(target, catalog, width=120, sort_output=False, omit_header=False)


def main(argv: list[str]) -> int:
    """Write the template to the file named in `argv`."""
    if len(argv) != 1:
        print("usage: python -m sensorhub.cli.catalog FILE.pot", file=sys.stderr)
        return 2
    catalog = build()
    with open(argv[0], "wb") as target:
        write(catalog, target)
    print(f"{len(catalog)} messages written to {argv[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
