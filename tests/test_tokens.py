"""API tokens: made, listed and revoked by `sensorhub token`, accepted as `Authorization: Bearer` by the web server
without cookie nor CSRF token; read-only tokens read only; and docs/api.md's curl examples, run as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, text

from sensorhub import accounts, tokens
from sensorhub.config import Settings
from sensorhub.web import create_app
from tests.factories import add_device
from tests.stack import ROOT, web_server
from tests.support import both_databases

PASSWORD = "correct horse battery"


def cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "sensorhub", *args], env={**os.environ, **settings.environ()},
                            capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@both_databases
def test_token_commands_print_a_token_once_keep_only_its_digest_and_revoke_it(settings: Settings,
                                                                               engine: Engine) -> None:
    made = cli(settings, "token", "add", "grafana", "--read-only")
    secret = made.stdout.strip()
    assert re.fullmatch(r"shk_[A-Za-z0-9_-]{43}", secret) and "shown this once" in made.stderr
    listed = cli(settings, "token", "list").stdout
    assert "grafana" in listed and "read-only" in listed and secret not in listed and secret[:8] in listed
    with engine.connect() as conn:
        stored = " ".join(str(value) for row in conn.execute(text("SELECT * FROM api_token")) for value in row)
    assert secret not in stored and tokens.digest(secret) in stored
    again = cli(settings, "token", "add", "grafana", check=False)
    assert again.returncode == 2 and "already called 'grafana'" in again.stderr
    bad = cli(settings, "token", "add", "two words", check=False)
    assert bad.returncode == 2 and "token name" in bad.stderr
    assert "token grafana revoked" in cli(settings, "token", "revoke", "grafana").stdout
    missing = cli(settings, "token", "revoke", "grafana", check=False)
    assert missing.returncode == 2 and "no token is called 'grafana'" in missing.stderr


def test_a_token_reads_private_fields_and_commands_without_cookie_nor_csrf(client: FlaskClient, engine: Engine,
                                                                          settings: Settings) -> None:
    accounts.add(engine, "alice", PASSWORD)
    device = add_device(engine)
    secret = tokens.add(engine, "script")
    anonymous = client.get("/api/devices").get_json()
    assert "mac" not in anonymous[0]
    seen = client.get("/api/devices", headers=bearer(secret)).get_json()
    assert seen[0]["mac"] == "02:00:00:00:00:01"
    # No cookie, no CSRF token: the command goes through (503: no ingest client reads the pipe in this test).
    fresh = create_app(settings).test_client(use_cookies=False)
    answer = fresh.post(f"/api/devices/{device}/led", json={"on": True}, headers=bearer(secret))
    assert answer.status_code not in (400, 401, 403), answer.get_json()
    assert fresh.post(f"/api/devices/{device}/led", json={"on": True}).status_code == 400  # CSRF, as before


def test_a_read_only_token_reads_but_cannot_command(client: FlaskClient, engine: Engine) -> None:
    accounts.add(engine, "alice", PASSWORD)
    device = add_device(engine)
    secret = tokens.add(engine, "grafana", read_only=True)
    assert client.get(f"/api/devices/{device}", headers=bearer(secret)).status_code == 200
    refused = client.post(f"/api/devices/{device}/led", json={"on": True}, headers=bearer(secret))
    assert refused.status_code == 403 and "lecture seule" in refused.get_json()["error"]
    renamed = client.post(f"/api/devices/{device}/name", json={"name": "salle B"}, headers=bearer(secret))
    assert renamed.status_code == 403


def test_an_unknown_or_revoked_token_is_refused_not_taken_for_a_visitor(client: FlaskClient, engine: Engine) -> None:
    secret = tokens.add(engine, "old")
    tokens.revoke(engine, "old")
    for token in (secret, "shk_" + "x" * 43, "not-a-token"):
        answer = client.get("/api/devices", headers=bearer(token))
        assert answer.status_code == 401 and "inconnu ou révoqué" in answer.get_json()["error"]
        assert "invalid_token" in answer.headers["WWW-Authenticate"]


def test_a_token_opens_a_private_site(settings: Settings, engine: Engine) -> None:
    accounts.add(engine, "alice", PASSWORD)
    secret = tokens.add(engine, "script", read_only=True)
    private = create_app(settings.replace(web_private=True)).test_client()
    assert private.get("/api/devices").status_code == 401
    assert private.get("/api/devices", headers=bearer(secret)).status_code == 200


def _doc_examples() -> str:
    """docs/api.md's shell block of token examples (between its `# tokens:` markers)."""
    doc = (ROOT / "docs" / "api.md").read_text()
    found = re.search(r"```sh\n(# tokens: .*?)```", doc, re.S)
    assert found, "docs/api.md has no ```sh block starting with '# tokens:'"
    return found.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_curl_examples_of_docs_api_md_work_as_written(settings: Settings, engine: Engine) -> None:
    accounts.add(engine, "alice", PASSWORD)
    device = add_device(engine)
    assert device == 1  # the examples name device 1
    secret = tokens.add(engine, "script")
    script = _doc_examples()
    with web_server(settings, workers=1):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                                timeout=60, check=False,
                                env={**os.environ, "BASE": f"http://127.0.0.1:{settings.web_port}",
                                     "TOKEN": secret})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any('"mac":"02:00:00:00:00:01"' in line for line in lines), result.stdout  # the token sees MACs
    assert any(line.strip() in ("202", "503") for line in lines), result.stdout  # the LED command got past auth
    assert any(line.strip() == "401" for line in lines), result.stdout  # the wrong token
