"""`sensorhub alert ...`: alert rules, active alerts, acknowledging and snoozing (docs/alerts.md).

Written straight to the database through `sensorhub.db.alerts` (what people decide); the ingest workers pick a
rule's change up within about half a second, without a restart.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from typing import Any

import click

from sensorhub.cli.base import cli, pass_settings
from sensorhub.config import Settings
from sensorhub.errors import AlertError
from sensorhub.i18n import N_, tr

#: The rule options of `add` and `edit`: (option, field of alertedit, type, help).
_RULE_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--metric", "metric", click.Choice(["light", "led", "button", "presence", "silence"]), "what the rule watches"),
    ("--op", "operator", click.Choice([">", ">=", "<", "<=", "==", "!="]), "how the value compares with the trigger"),
    ("--trigger", "trigger", float, "the value that fires (silence: seconds without a reading)"),
    ("--clear", "clear", float, "the value that clears (hysteresis; default: the trigger)"),
    ("--for", "for", float, "seconds the condition must hold before it fires (default 0)"),
    ("--clear-for", "clear_for", float, "seconds the clear condition must hold before it resolves (default 0)"),
    ("--severity", "severity", click.Choice(["info", "warning", "critical"]), "default warning"),
    ("--repeat", "repeat", float, "seconds between reminders while firing (0: none, the default)"),
)


def _now_us() -> int:
    return time.time_ns() // 1000


def _engine(settings: Settings) -> Any:
    from sensorhub.db.engine import make_engine
    from sensorhub.db.schema import check_schema

    check_schema(settings.database_url)
    return make_engine(settings.database_url)


def _rule_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by `alert add` and `alert edit`."""
    for flag, _field, kind, text in reversed(_RULE_OPTIONS):
        command = click.option(flag, _field, type=kind, default=None, help=text)(command)
    command = click.option("--disabled/--enabled", "disabled", default=None,
                           help="whether the rule is evaluated (default enabled)")(command)
    command = click.option("--all-devices", is_flag=True, help="every device (the default of a new rule)")(command)
    command = click.option("--device-ids", metavar="1,2", default=None, help="only these device ids")(command)
    return click.option("--devices", metavar="PATTERN", default=None,
                        help="only devices whose name matches this pattern (`salle*`, case-insensitive)")(command)


def _changes(options: dict[str, Any]) -> dict[str, Any]:
    """The fields of alertedit that the options given change."""
    changes = {field: options[field] for _flag, field, _kind, _text in _RULE_OPTIONS if options[field] is not None}
    if changes.get("repeat") == 0:
        changes["repeat"] = None
    chosen = [name for name in ("devices", "device_ids", "all_devices") if options[name]]
    if len(chosen) > 1:
        raise AlertError(N_("choose one of --devices, --device-ids and --all-devices"))
    if options["devices"] is not None:
        changes.update(selector="pattern", devices=options["devices"])
    elif options["device_ids"] is not None:
        changes.update(selector="list", devices=options["device_ids"])
    elif options["all_devices"]:
        changes.update(selector="all", devices="")
    if options["disabled"] is not None:
        changes["enabled"] = not options["disabled"]
    return changes


def _edited(base: Any, changes: dict[str, Any]) -> Any:
    from sensorhub.alertedit import edited
    from sensorhub.alerting import RuleError

    try:
        return edited(base, changes)
    except RuleError as err:
        raise AlertError(N_("rule refused: {reason}"), reason=str(err).replace("operator:", "--op:")) from err


def _find(conn: Any, key: str) -> Any:
    from sensorhub.db.alerts import find_rule

    rule = find_rule(conn, key)
    if rule is None:
        raise AlertError(N_("no alert rule has the id or name {key!r} (`sensorhub alert list`)"), key=key)
    return rule


def _store_error(err: Exception, name: str) -> AlertError:
    if "unique" in str(getattr(err, "orig", err)).lower():
        return AlertError(N_("an alert rule is already called {name!r}"), name=name)
    return AlertError(N_("cannot store the rule: {reason}"), reason=str(err).splitlines()[0])


@cli.group()
def alert() -> None:
    """Alert rules and alerts: add, edit, list; acknowledge and snooze what fires."""


@alert.command("list")
@pass_settings
def alert_list(settings: Settings) -> None:
    """List the rules, one a line: id, name, enabled, severity, devices, condition."""
    from sensorhub.db.alerts import load_rules

    with _engine(settings).connect() as conn:
        rules = load_rules(conn)
    if not rules:
        click.echo(tr("no alert rule (`sensorhub alert add NAME --metric light --op '<' --trigger 10`)"))
    for rule in rules:
        scope = {"all": tr("all devices"), "list": tr("devices {devices}", devices=rule.devices),
                 "pattern": tr("devices {devices!r}", devices=rule.devices)}
        repeat = tr(", remind every {seconds:g} s", seconds=rule.repeat_seconds) if rule.repeat_seconds else ""
        state = tr("enabled") if rule.enabled else tr("disabled")
        click.echo(f"{rule.id}\t{rule.name}\t{state}\t{rule.severity.value}\t{scope[rule.selector]}\t"
                   f"{rule.describe()}{repeat}")


@alert.command("add")
@click.argument("name")
@_rule_options
@pass_settings
def alert_add(settings: Settings, /, name: str, **options: Any) -> None:
    """Add the rule NAME (--metric, --op and --trigger are required)."""
    from sqlalchemy.exc import IntegrityError

    from sensorhub.db.alerts import add_rule

    rule = _edited(None, {"name": name, **_changes(options)})
    try:
        with _engine(settings).begin() as conn:
            rule_id = add_rule(conn, rule, _now_us())
    except IntegrityError as err:
        raise _store_error(err, name) from err
    if rule.enabled:
        click.echo(tr("alert rule {id} {name} added: {rule}", id=rule_id, name=name, rule=rule.describe()))
    else:
        click.echo(tr("alert rule {id} {name} added: {rule} (disabled)", id=rule_id, name=name, rule=rule.describe()))


@alert.command("edit")
@click.argument("rule")
@click.option("--name", "new_name", default=None, help="rename the rule")
@_rule_options
@pass_settings
def alert_edit(settings: Settings, /, rule: str, new_name: str | None, **options: Any) -> None:
    """Change the rule RULE (its id or name): only the options given."""
    from dataclasses import replace

    from sqlalchemy.exc import IntegrityError

    from sensorhub.db.alerts import update_rule

    changes = _changes(options)
    if new_name is not None:
        changes["name"] = new_name
    if not changes:
        raise AlertError(N_("nothing to change: give at least one option (`sensorhub alert edit --help`)"))
    try:
        with _engine(settings).begin() as conn:
            current = _find(conn, rule)
            changed = replace(_edited(current, changes), id=current.id)
            update_rule(conn, changed, _now_us())
    except IntegrityError as err:
        raise _store_error(err, changes.get("name", rule)) from err
    if changed.enabled:
        click.echo(tr("alert rule {id} {name} changed: {rule}", id=changed.id, name=changed.name,
                      rule=changed.describe()))
    else:
        click.echo(tr("alert rule {id} {name} changed: {rule} (disabled)", id=changed.id, name=changed.name,
                      rule=changed.describe()))


def _set_enabled(settings: Settings, key: str, enabled: bool) -> None:
    from dataclasses import replace

    from sensorhub.db.alerts import update_rule

    with _engine(settings).begin() as conn:
        current = _find(conn, key)
        update_rule(conn, replace(current, enabled=enabled), _now_us())
    if enabled:
        click.echo(tr("alert rule {id} {name} enabled", id=current.id, name=current.name))
    else:
        click.echo(tr("alert rule {id} {name} disabled", id=current.id, name=current.name))


@alert.command("enable")
@click.argument("rule")
@pass_settings
def alert_enable(settings: Settings, rule: str) -> None:
    """Evaluate the rule RULE (its id or name) again."""
    _set_enabled(settings, rule, True)


@alert.command("disable")
@click.argument("rule")
@pass_settings
def alert_disable(settings: Settings, rule: str) -> None:
    """Stop evaluating the rule RULE (its id or name); its alerts stay until they clear."""
    _set_enabled(settings, rule, False)


@alert.command("rm")
@click.argument("rule")
@pass_settings
def alert_rm(settings: Settings, rule: str) -> None:
    """Delete the rule RULE (its id or name) and its alerts."""
    from sensorhub.db.alerts import delete_rule

    with _engine(settings).begin() as conn:
        current = _find(conn, rule)
        delete_rule(conn, current.id)
    click.echo(tr("alert rule {id} {name} deleted, with its alerts", id=current.id, name=current.name))


@alert.command("active")
@pass_settings
def alert_active(settings: Settings) -> None:
    """List the active alerts, one a line: id, state, severity, rule, device, since (UTC), value, ack, snooze."""
    from sensorhub.db import alertviews

    with _engine(settings).connect() as conn:
        found = alertviews.active(conn)
    if not found:
        click.echo(tr("no active alert"))
    now = _stamp(_now_us())
    for row in found:
        value = "" if row.last_value is None or row.metric == "silence" else f"\t{row.metric} {row.last_value:g}"
        acked = "\t" + tr("acknowledged by {who}", who=row.acked_by) if row.acked_at else ""
        snoozed = "\t" + tr("snoozed until {until} UTC", until=(row.snoozed_until or "")[:19]) if row.snoozed(now) \
            else ""
        click.echo(tr("{id}\t{state}\t{severity}\t{rule}\t{device} (device {device_id})\tsince {since} UTC",
                      id=row.id, state=row.state, severity=row.severity, rule=row.rule_name, device=row.device_name,
                      device_id=row.device_id, since=(row.fired_at or row.since)[:19]) + f"{value}{acked}{snoozed}")


def _stamp(micros: int) -> str:
    from sensorhub.timestamps import format_micros

    return format_micros(micros)


def _active_alert(conn: Any, alert_id: int) -> Any:
    from sensorhub.db import alertviews

    found = alertviews.get_alert(conn, alert_id)
    if found is None:
        raise AlertError(N_("no alert has the id {id} (`sensorhub alert active`)"), id=alert_id)
    if found.state == "resolved":
        raise AlertError(N_("alert {id} is already resolved"), id=alert_id)
    return found


@alert.command("ack")
@click.argument("alert_id", type=click.IntRange(min=1))
@click.option("--by", "who", default=None, help="who acknowledges (default: the system user name)")
@pass_settings
def alert_ack(settings: Settings, alert_id: int, who: str | None) -> None:
    """Acknowledge the active alert ALERT_ID: no more reminders."""
    from sensorhub.db.alerts import acknowledge

    who = (who or getpass.getuser()).strip()
    if not who:
        raise AlertError(N_("--by: a name"))
    with _engine(settings).begin() as conn:
        found = _active_alert(conn, alert_id)
        acknowledge(conn, alert_id, who, _now_us())
    click.echo(tr("alert {id} ({rule} on {device}) acknowledged by {who}", id=alert_id, rule=found.rule_name,
                  device=found.device_name, who=who[:64]))


@alert.command("snooze")
@click.argument("alert_id", type=click.IntRange(min=1))
@click.option("--minutes", type=click.FloatRange(min=1, max=30 * 24 * 60), required=True,
              help="how long reminders wait (30 days at most)")
@pass_settings
def alert_snooze(settings: Settings, alert_id: int, minutes: float) -> None:
    """Snooze the reminders of the active alert ALERT_ID for some minutes."""
    from sensorhub.db.alerts import snooze

    until = _now_us() + round(minutes * 60_000_000)
    with _engine(settings).begin() as conn:
        found = _active_alert(conn, alert_id)
        snooze(conn, alert_id, until)
    click.echo(tr("alert {id} ({rule} on {device}) snoozed until {until} UTC", id=alert_id, rule=found.rule_name,
                  device=found.device_name, until=_stamp(until)[:19]))
