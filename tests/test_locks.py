"""The hashed dependency locks agree with pyproject.toml and with each other (docs/development.md)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")


def canonical(name: str) -> str:
    """A package name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: str) -> dict[str, str]:
    """Package -> version of a lock, checking that each has at least one hash."""
    text = (ROOT / lock).read_text()
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = PIN.match(block)
        if match is None:
            continue
        name = canonical(match[1])
        assert "--hash=sha256:" in block, f"{lock}: {name} has no hash"
        found[name] = match[2]
    assert found, f"{lock} pins nothing"
    return found


def declared(group: list[str]) -> dict[str, str]:
    """Package -> version of pyproject.toml's `name==version` requirements."""
    out = {}
    for requirement in group:
        name, _, version = requirement.partition("==")
        assert version, f"pyproject.toml: {requirement} is not pinned"
        out[canonical(re.sub(r"\[.*\]", "", name))] = version
    return out


def test_the_locks_pin_pyproject_s_versions_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = declared(project["dependencies"]), declared(project["optional-dependencies"]["dev"])
    runtime_lock, dev_lock = pins("requirements.lock"), pins("requirements-dev.lock")
    for name, version in runtime.items():
        assert runtime_lock.get(name) == version, f"requirements.lock: {name} is not {version}"
    for name, version in {**runtime, **dev}.items():
        assert dev_lock.get(name) == version, f"requirements-dev.lock: {name} is not {version}"
    # The runtime lock is a subset of the development one, at the same versions, without the tools.
    assert {name: dev_lock.get(name) for name in runtime_lock} == runtime_lock
    assert not set(dev) & set(runtime_lock), "a test or lint tool is in the runtime lock"
