"""The command line in French and English: the language chosen, the messages, click's own, and the catalogs."""

from __future__ import annotations

import re
import signal
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po

from sensorhub import i18n
from sensorhub.config import Settings
from sensorhub.db import schema
from sensorhub.errors import ConfigError, DatabaseError
from sensorhub.process import Child, ComponentError
from sensorhub.supervisor import tls_ports
from tests.stack import sensorhub
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
CATALOGS = ROOT / "src" / "sensorhub" / "translations"


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """A project home with an empty sensorhub database."""
    made = _cli(tmp_path, "db", "init")
    assert made.returncode == 0, made.stderr
    return tmp_path


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`sensorhub ARGS` in a process of its own, with only these variables (no inherited locale nor language)."""
    return subprocess.run([sys.executable, "-m", "sensorhub", *args], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "SENSORHUB_HOME": str(home),
                               "SENSORHUB_LOG_LEVEL": "WARNING", **env})


@pytest.fixture()
def french() -> Iterator[None]:
    """sensorhub.i18n speaking French in this process, English again afterwards."""
    i18n.use("fr")
    try:
        yield
    finally:
        i18n.use("en")


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "en"),
    ({"LANG": "C"}, "en"),
    ({"LANG": "POSIX"}, "en"),
    ({"LANG": "C.UTF-8"}, "en"),
    ({"LANG": "fr_FR.UTF-8"}, "fr"),
    ({"LANG": "fr_CA"}, "fr"),
    ({"LANG": "fr"}, "fr"),
    ({"LANG": "en_US.UTF-8"}, "en"),
    ({"LANG": "de_DE.UTF-8"}, "en"),
    ({"LC_MESSAGES": "fr_BE.UTF-8", "LANG": "en_GB"}, "fr"),
    ({"LC_ALL": "C", "LANG": "fr_FR.UTF-8"}, "en"),
    ({"LC_ALL": "fr_FR@euro", "LANG": "C"}, "fr"),
    ({"LANGUAGE": "de:fr", "LANG": "en_US"}, "fr"),
    ({"LANGUAGE": "", "LANG": "fr_FR"}, "fr"),
])
def test_the_locale_chooses_as_gettext_reads_it(environ: dict[str, str], expected: str) -> None:
    assert i18n.locale_language(environ) == expected


def test_the_setting_wins_over_the_locale() -> None:
    assert i18n.choose("en", {"LANG": "fr_FR.UTF-8"}) == "en"
    assert i18n.choose("fr", {"LANG": "C"}) == "fr"
    assert i18n.choose("auto", {"LANG": "fr_FR.UTF-8"}) == "fr"
    assert Settings.load(environ={"SENSORHUB_CLI_LANGUAGE": " FR "}).cli_language == "fr"
    with pytest.raises(ConfigError, match="SENSORHUB_CLI_LANGUAGE='de' is invalid"):
        Settings.load(environ={"SENSORHUB_CLI_LANGUAGE": "de"})


def test_the_same_commands_in_french_and_english(home: Path) -> None:
    expected = {
        ("user", "list"): ("no account: the LED and rename controls are open to everyone (`sensorhub user add NAME`)",
                           "aucun compte : les commandes de LED et de renommage sont ouvertes à tous "
                           "(`sensorhub user add NOM`)"),
        ("token", "list"): ("no token (`sensorhub token add NAME`)", "aucun jeton (`sensorhub token add NOM`)"),
        ("alert", "active"): ("no active alert", "aucune alerte active"),
        ("db", "upgrade"): (f"database at schema {schema.head()}", f"base de données au schéma {schema.head()}"),
    }
    for args, (english, french) in expected.items():
        for env, text in (({"LANG": "C"}, english), ({"LANG": "en_US.UTF-8"}, english), ({}, english),
                          ({"LANG": "fr_FR.UTF-8"}, french)):
            done = _cli(home, *args, **env)
            assert (done.returncode, done.stdout.strip()) == (0, text), (args, env, done.stderr)
    # A message with values in it, and one of a line per row.
    for env, added, listed in (({"LANG": "C"}, "account ada added: the LED", "\tcreated "),
                               ({"LANG": "fr_FR.UTF-8"}, "compte ada ajouté : les commandes", "\tcréé le ")):
        _cli(home, "user", "remove", "ada")
        made = subprocess.run([sys.executable, "-m", "sensorhub", "user", "add", "ada", "--password-stdin"],
                              input="correct horse battery\n", capture_output=True, text=True, check=False,
                              env={"PATH": "/usr/bin:/bin", "SENSORHUB_HOME": str(home), **env})
        assert made.returncode == 0 and made.stdout.startswith(added), made.stderr
        assert listed in _cli(home, "user", "list", **env).stdout


def test_service_install_in_both_languages(tmp_path: Path) -> None:
    english = _cli(tmp_path, "service", "install", "--root", str(tmp_path / "en"), LANG="C").stdout.splitlines()
    french = _cli(tmp_path, "service", "install", "--root", str(tmp_path / "fr"), LANG="fr_FR.UTF-8").stdout
    assert f"wrote {tmp_path}/en/etc/sensorhub/sensorhub.env" in english
    assert f"{tmp_path}/fr/etc/sensorhub/sensorhub.env écrit" in french.splitlines()
    assert english[-1].startswith("start them with: sudo systemctl enable --now sensorhub-broker.service")
    assert french.splitlines()[-1].startswith("démarrez-les avec : sudo systemctl enable --now sensorhub-broker")


def test_status_in_both_languages(home: Path) -> None:
    port = str(free_port())  # nothing listens there: the broker's check fails
    english = _cli(home, "status", LANG="C", SENSORHUB_MQTT_PORT=port).stdout.splitlines()
    french = _cli(home, "status", LANG="fr_FR.UTF-8", SENSORHUB_MQTT_PORT=port).stdout.splitlines()
    assert english[:2] == ["database  ok      answers",
                           "client    FAILED  no heartbeat: the ingest client is not running"]
    assert french[:2] == ["database  ok      répond",
                          "client    ÉCHEC   pas de battement de cœur : le client d'ingestion ne tourne pas"]
    assert english[-1].startswith("unhealthy: client: no heartbeat") and f"127.0.0.1:{port}" in english[-1]
    assert french[-1].startswith("en mauvaise santé : client: pas de battement de cœur")
    assert f"impossible de l'atteindre à 127.0.0.1:{port} : " in french[2]
    # /healthz's words (the JSON) stay English.
    assert '"client: no heartbeat: the ingest client is not running"' in _cli(
        home, "status", "--json", LANG="fr_FR.UTF-8", SENSORHUB_MQTT_PORT=port).stdout


def test_an_error_in_both_languages(home: Path) -> None:
    english = _cli(home, "user", "passwd", "nobody", "--password-stdin", LANG="C")
    french = _cli(home, "user", "passwd", "nobody", "--password-stdin", LANG="fr_FR.UTF-8")
    assert (english.returncode, english.stderr.strip()) == (
        2, "sensorhub: error: no account is called 'nobody' (`sensorhub user list`)")
    assert (french.returncode, french.stderr.strip()) == (
        2, "sensorhub : erreur : aucun compte ne s’appelle 'nobody' (`sensorhub user list`)")
    # An error raised outside the command line (the schema's check), and a setting's.
    missing = _cli(home / "elsewhere", "token", "list", LANG="fr_FR.UTF-8")
    assert missing.returncode == 2 and missing.stderr.startswith("sensorhub : erreur : pas de base de données à ")
    nowhere = {"SENSORHUB_DATABASE_URL": "sqlite:////etc/passwd/x/db.sqlite3"}  # under a file: no directory there
    assert _cli(home, "db", "init", LANG="C", **nowhere).stderr.startswith(
        "sensorhub: error: cannot create the database directory /etc/passwd/x: ")
    assert _cli(home, "db", "init", LANG="fr_FR.UTF-8", **nowhere).stderr.startswith(
        "sensorhub : erreur : impossible de créer le répertoire de la base de données /etc/passwd/x : ")
    invalid = _cli(home, "db", "init", LANG="fr_FR.UTF-8", SENSORHUB_MQTT_PORT="nope")
    assert invalid.stderr.strip() == ("sensorhub : erreur : SENSORHUB_MQTT_PORT='nope' est invalide : ce n'est pas un "
                                      "nombre entier")


def test_the_setting_wins_over_lang(home: Path) -> None:
    english = _cli(home, "alert", "active", LANG="fr_FR.UTF-8", SENSORHUB_CLI_LANGUAGE="en")
    french = _cli(home, "alert", "active", LANG="C", SENSORHUB_CLI_LANGUAGE="fr")
    flag = _cli(home, "--cli-language", "fr", "alert", "active", LANG="en_US.UTF-8")
    assert (english.stdout.strip(), french.stdout.strip(), flag.stdout.strip()) == (
        "no active alert", "aucune alerte active", "aucune alerte active")
    # The flag also overrides the variable.
    assert _cli(home, "--cli-language", "en", "alert", "active", SENSORHUB_CLI_LANGUAGE="fr").stdout.strip() == (
        "no active alert")


def test_clicks_messages_and_the_help_follow(home: Path) -> None:
    wrong = _cli(home, "--bogus", LANG="fr_FR.UTF-8")
    assert wrong.returncode == 2
    assert wrong.stderr.splitlines() == ["Utilisation : sensorhub [OPTIONS] COMMAND [ARGS]...",
                                         "Essayez 'sensorhub --help' pour l'aide.", "",
                                         "Erreur : L'option '--bogus' n'existe pas."]
    assert "Error: No such option '--bogus'." in _cli(home, "--bogus", LANG="C").stderr
    help_fr = _cli(home, "token", "add", "--help", LANG="fr_FR.UTF-8").stdout
    assert "Fabrique le jeton NAME et l'affiche" in help_fr and "Lecture seule : ni LED" in help_fr
    assert "Affiche ce message et quitte." in help_fr
    help_en = _cli(home, "token", "add", "--help", LANG="C").stdout
    assert "Make the token NAME and print it" in help_en and "Show this message and exit." in help_en
    extra = {lang: _cli(home, "token", "list", "a", "b", LANG=lang).stderr for lang in ("C", "fr_FR.UTF-8")}
    assert "Error: Got unexpected extra arguments (a b)" in extra["C"]  # plurals, in both
    assert "Erreur : Arguments supplémentaires inattendus (a b)" in extra["fr_FR.UTF-8"]
    settings_fr = " ".join(_cli(home, "--help", LANG="fr_FR.UTF-8").stdout.split())
    assert ("Niveau des journaux : DEBUG, INFO, WARNING, ERROR ou CRITICAL. [variable SENSORHUB_LOG_LEVEL ; par "
            "défaut INFO]") in settings_fr
    assert "--secret-key VALUE Clé qui signe les sessions web" in settings_fr and "par défaut (vide)]" in settings_fr
    missing = _cli(home, "alert", "snooze", "3", LANG="fr_FR.UTF-8")
    assert "Erreur : Option manquante '--minutes'." in missing.stderr


def test_errors_carry_their_template_and_translate_when_shown(french: None) -> None:
    err = DatabaseError(i18n.N_("no database at {where}: create it with `make db` (sensorhub db init)"),
                        where="/tmp/x")
    assert str(err) == "no database at /tmp/x: create it with `make db` (sensorhub db init)"
    assert err.translated() == "pas de base de données à /tmp/x : créez-la avec `make db` (sensorhub db init)"
    assert DatabaseError("not {a} template").translated() == "not {a} template"  # no values: not formatted
    assert DatabaseError().translated() == ""
    rewritten = DatabaseError(i18n.N_("stopped"))
    rewritten.args = ("something else",)
    assert rewritten.translated() == "something else"


def test_the_start_up_lines_of_run(french: None) -> None:
    settings = Settings().replace(tls_cert="/c.pem", tls_key="/k.pem", mqtt_tls_port=8883, mqtt_wss_port=9443)
    assert tls_ports(settings) == (", ou en TLS au port 8883 (mises à jour en direct des navigateurs : WebSockets "
                                   "sécurisés sur le port 9443)")
    assert i18n.tr("starting {name}", name="broker") == "démarrage de broker"


@pytest.mark.integration
def test_make_runs_lines_in_french(settings: Settings, tmp_path: Path) -> None:
    """`sensorhub run` with SENSORHUB_CLI_LANGUAGE=fr: its own lines in French, the programs' log lines as they are."""
    child = sensorhub("run", ["run"], settings.replace(cli_language="fr"))
    child.cwd = tmp_path
    child.start()
    try:
        child.wait_ready(90)
        wait_for(lambda: "tout est en marche : ouvrez" in child.output(), 10, what="the start-up line")
        assert "    run | démarrage de broker" in child.output()
        client = next(c for c in psutil.Process(child.pid).children() if " client" in " ".join(c.cmdline()))
        client.send_signal(signal.SIGKILL)
        wait_for(lambda: "client a été tué par SIGKILL ; redémarrage" in child.output(), 15, what="the restart")
    finally:
        child.stop(60)
    assert child.output().splitlines()[-1] == "    run | arrêté", child.output()[-2000:]


def test_a_components_death_in_both_languages(french: None) -> None:
    child = Child("client", [sys.executable, "-c", "pass"], on_line=lambda line: None)
    child.start()
    child.process.wait(10)  # type: ignore[union-attr]
    template, params = child.death_template(i18n.Msg(i18n.N_(" before it was ready")))
    assert i18n.tr(template, **params) == "client a terminé avec le code 0 avant d’être prêt (aucune sortie)"
    assert ComponentError(template, [], **params).translated() == i18n.tr(template, **params)
    assert child.death("before it was ready") == "client exited with status 0 before it was ready (no output)"
    assert str(ComponentError(template, [], **params)) == child.death("before it was ready")
    child.stop(1)


# -- the catalogs ------------------------------------------------------------------------------------------------

_PRINTF = re.compile(r"%\((\w+)\)[sdrf]")


def _placeholders(text: str) -> list[str]:
    """The str.format fields (with their conversion and format spec) and %-style names of `text`, sorted."""
    fields = [f"{{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}"
              for _literal, name, spec, conv in string.Formatter().parse(text) if name is not None]
    return sorted(fields + _PRINTF.findall(text))


def _catalog(language: str) -> Catalog:
    with (CATALOGS / language / "LC_MESSAGES" / "cli.po").open("rb") as source:
        return read_po(source)


def test_every_message_is_translated_into_french(tmp_path: Path) -> None:
    """Extract the template as a developer does; every msgid of it needs a non-fuzzy French translation with the
    same placeholders (docs/development.md: a new message fails here until it is translated)."""
    template = tmp_path / "cli.pot"
    done = subprocess.run([sys.executable, "-m", "sensorhub.cli.catalog", str(template)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    with template.open("rb") as source:
        wanted = read_po(source)
    assert len(wanted) > 200  # ours and click's
    french = _catalog("fr")
    english = _catalog("en")
    problems = []
    for message in wanted:
        if not message.id:
            continue
        found = french.get(message.id)
        if found is None or english.get(message.id) is None:
            problems.append(f"not in fr or en/cli.po (run pybabel update): {message.id!r}")
            continue
        strings = found.string if isinstance(found.string, tuple) else (found.string,)
        if found.fuzzy or not all(strings):
            problems.append(f"untranslated or fuzzy in fr/cli.po: {message.id!r}")
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        for text in strings:
            # French plurals may drop the singular's count ("1 a été donnée"): compare with the plural's.
            if _placeholders(text) != _placeholders(ids[-1]) and _placeholders(text) != _placeholders(ids[0]):
                problems.append(f"placeholders differ: {ids[-1]!r} -> {text!r}")
    assert not problems, "\n".join(problems)


def test_the_placeholder_check_can_fail() -> None:
    assert _placeholders("port {port} ({what!r}) {n:,} %(prog)s") == ["%(prog)s"[2:6], "{n:,}", "{port}",
                                                                       "{what!r}"]
    assert _placeholders("le port {port}") != _placeholders("port {port} ({what})")


def test_the_compiled_catalogs_are_up_to_date() -> None:
    """`make install` compiles the .po files: a .mo older than its .po would speak yesterday's French."""
    for language in i18n.LANGUAGES:
        po = CATALOGS / language / "LC_MESSAGES" / "cli.po"
        mo = po.with_suffix(".mo")
        assert mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime, f"{mo}: run make install"
