"""The documentation stands on its own: no reference outside the repository, links that lead somewhere."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.stack import ROOT

#: Built in two pieces so that this file does not match itself.
OUTSIDE = "../" + "shared/"
_SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                 ".hypothesis", "build", "dist"}


def tracked_files() -> list[Path]:
    """The files git tracks (or, outside a git checkout, every file but caches and installed packages)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob("*") if p.is_file() and not _SKIPPED_DIRS & set(p.relative_to(ROOT).parts)]
    return [ROOT / name for name in listed.decode().split("\0") if name]


def markdown_files() -> list[Path]:
    """README.md and docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of a Markdown file."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_no_tracked_file_points_outside_the_repository() -> None:
    offenders = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # images, or a file deleted but not yet committed
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], "a clone has no " + OUTSIDE + "; point to docs/protocol.md:\n" + "\n".join(offenders)


def test_the_readme_links_the_protocol() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "](docs/protocol.md)" in readme


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
