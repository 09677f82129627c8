"""The documentation stands on its own: no reference outside the repository, links that lead somewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sensorhub.config import Settings
from sensorhub.web import create_app
from sensorhub.web.api import routes
from tests.factories import add_device
from tests.stack import ROOT, web_server, web_url
from tests.support import tracked_files

#: Built in two pieces so that this file does not match itself.
OUTSIDE = "../" + "shared/"
def markdown_files() -> list[Path]:
    """README.md and docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[`*]|(?<!\w)_|_(?!\w)", "", heading.strip().lower())  # SENSORHUB_X keeps its underscore
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of a Markdown file."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_no_tracked_file_points_outside_the_repository() -> None:
    offenders = []
    for path in tracked_files(ROOT):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # images, or a file deleted but not yet committed
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], "a clone has no " + OUTSIDE + "; point to docs/protocol.md:\n" + "\n".join(offenders)


#: Most lines of the README: one screen, the details being in docs/.
README_LINES = 80


def test_the_readme_is_a_one_screen_quick_start() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_LINES, "move the details to a page of docs/ (docs/README.md lists them)"
    # The two commands; CI (.ci/run) runs the README's test command, which is `make test`.
    assert re.search(r"^```sh\nmake run +#.*\nmake test +#.*\n```$", readme, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    for page in ("/accueil", "/capteurs", "/historique", "/appareil/", "/alertes"):
        assert f"`{page}" in readme, page
    picture = re.search(r"!\[[^\]]+\]\((docs/screenshots/[\w-]+\.png)\)", readme)
    assert picture and (ROOT / picture[1]).is_file()


def docs_pages() -> list[str]:
    """The pages of docs/ that a table of contents lists (all but docs/README.md, the table itself)."""
    return sorted(path.name for path in (ROOT / "docs").glob("*.md") if path.name != "README.md")


@pytest.mark.parametrize(("toc", "prefix"), [("docs/README.md", ""), ("README.md", "docs/")])
def test_every_docs_page_is_in_the_tables_of_contents(toc: str, prefix: str) -> None:
    """docs/README.md and the README's "Where to go next" list every page, one line each, and nothing else."""
    rows = re.findall(rf"^\| \[{re.escape(prefix)}([\w-]+\.md)\]\({re.escape(prefix)}\1\) \| .+ \|$",
                      (ROOT / toc).read_text(), flags=re.M)
    assert sorted(rows) == docs_pages(), f"{toc}: list each page of docs/ once"
    assert len(rows) == len(set(rows))


def test_the_readme_links_the_protocol_and_the_api() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "](docs/protocol.md)" in readme
    assert "](docs/api.md)" in readme


def test_the_protocol_document_covers_the_protocol() -> None:
    from sensorhub.protocol import MAX_NAME, MAX_SESSION, QOS

    text = (ROOT / "docs" / "protocol.md").read_text()
    for topic, qos in QOS.items():
        assert re.search(rf"^\| `{re.escape(str(topic))}` \| {qos} \|", text, flags=re.M), topic
    assert f"1 to {MAX_NAME} printable ASCII characters" in text
    assert f"1 to {MAX_SESSION} characters" in text
    assert "```mermaid\nsequenceDiagram" in text
    for words in ("Last Will", "Out-of-band rule", "Reconnection rule", "Keepalive", "named pipe",
                  "MQTT 3.1.1", "max_queued_messages", "set_tcp_nodelay", "Renames", "POST"):
        assert words in text, words


def test_relative_links_in_the_documentation_lead_somewhere() -> None:
    broken = []
    for path in markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # an external address
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


_DOCUMENTED_ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`")


def test_every_route_is_documented_in_docs_api_md(settings: Settings) -> None:
    """Pages and fragments too; `<int:device_id>` is written `<device_id>`."""
    text = (ROOT / "docs" / "api.md").read_text()
    served = {(route["method"], route["path"]) for route in routes(create_app(settings))}
    assert ("GET", "/api/devices/<device_id>") in served  # the convention the document follows
    missing = sorted(f"{method} {path}" for method, path in served if f"`{method} {path}`" not in text)
    assert missing == [], f"add these routes to docs/api.md: {missing}"
    documented = set(_DOCUMENTED_ROUTE.findall(text))
    stale = sorted(f"{method} {path}" for method, path in documented - served)
    assert stale == [], f"docs/api.md documents routes that do not exist: {stale}"


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file."""
    return re.findall(rf"^```{language}\n(.*?)^```$", path.read_text(), flags=re.M | re.S)


@pytest.mark.integration
def test_the_documented_csrf_recipes_work(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    """The curl and Python examples of "Scripts and CSRF", run as written against a real web server."""
    add_device(engine, "capteur01")
    api_md = ROOT / "docs" / "api.md"
    shell = next(block for block in code_blocks(api_md, "sh") if "X-CSRFToken" in block and "TOKEN=" in block)
    python = next(block for block in code_blocks(api_md, "python") if "X-CSRFToken" in block)
    base = web_url(settings, "")
    # Without an ingest client, the web server answers 503 only once the token was accepted (400 otherwise).
    accepted = "le client d'ingestion ne tourne pas"
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the cookie jar of `mktemp`
    with web_server(settings, workers=1):
        if shutil.which("curl") is None:
            pytest.fail("curl is missing: sudo apt-get install curl")
        ran = subprocess.run(["bash", "-euc", shell.replace("http://localhost:8000", base)], capture_output=True,
                             text=True, timeout=30, env=env)
        assert accepted in ran.stdout, ran.stdout + ran.stderr
        ran = subprocess.run([sys.executable, "-c", python.replace("http://localhost:8000", base)],
                             capture_output=True, text=True, timeout=30, env=env)
        assert ran.stdout.startswith("(503, ") and accepted in ran.stdout, ran.stdout + ran.stderr


#: A path of the repository named in a comment, a docstring or a page (`db/presence.py` is relative to
#: src/sensorhub, `mqtt/dist/…` to node_modules), optionally `::test_name`.
REFERENCE = re.compile(
    r"(?<![\w/.-])((?:src/sensorhub|tests|docs|bench|mqtt|deploy|db|ingest|web|simulator|static|templates)/"
    r"[\w./-]*\w\.(?:py|md|js|conf|c|html|css|toml|json|service))(?![\w.])(?:::(\w+))?")
REFERENCE_BASES = ("", "src/sensorhub/", "src/sensorhub/web/", "node_modules/")


def test_every_file_named_in_comments_and_docs_exists() -> None:
    wrong = []
    for path in tracked_files(ROOT):
        name = path.relative_to(ROOT)
        if (path.suffix not in {".py", ".md", ".js", ".conf", ".c", ".html", ".toml"} or "vendor" in path.parts
                or not path.is_file()):  # deleted, not yet committed
            continue
        for match in REFERENCE.finditer(path.read_text(errors="replace")):
            found = next((ROOT / base / match[1] for base in REFERENCE_BASES if (ROOT / base / match[1]).is_file()),
                         None)
            if found is None:
                wrong.append(f"{name}: {match[1]}")
            elif match[2] and not re.search(rf"def {match[2]}\b", found.read_text()):
                wrong.append(f"{name}: {match[1]}::{match[2]}")
    assert wrong == [], f"these files or tests do not exist: {wrong}"
