"""What PostgreSQL needs that SQLite does not: CHECKs without GLOB, PL/pgSQL triggers, the device id sequence.

The migrations state each rule once, in SQLite's words; on PostgreSQL they pass it through `check` and create
the triggers below. A trigger refuses with SQLSTATE 23514 (check_violation), so both databases raise an
IntegrityError for a row that breaks a rule, whether a CHECK or a trigger caught it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

logger = logging.getLogger(__name__)

_GLOB = re.compile(r"(\w+) (NOT )?GLOB '([^']*)'")
_SPECIAL = set(".^$*+?()[]{}|\\")
#: The stored time stamp form, compared as text (fixed width: text order is time order).
_NOW_PLUS_1S = "to_char(clock_timestamp() AT TIME ZONE 'UTC' + interval '1 second', 'YYYY-MM-DD HH24:MI:SS.US')"
#: The next device id is one past the last one ever handed out, as SQLite's AUTOINCREMENT keeps it.
#: Trigram indexes for searching a name or MAC (`lower(x) LIKE '%…%'`, db/listing.py), PostgreSQL only (migration
#: 0009): by name, their CREATE statement. Not in the models: SQLite has no such index (nor can it reflect one).
SEARCH_INDEXES = {
    "ix_device_name_trgm": "CREATE INDEX ix_device_name_trgm ON device USING gin (lower(name) gin_trgm_ops)",
    "ix_device_mac_trgm": "CREATE INDEX ix_device_mac_trgm ON device USING gin (lower(mac) gin_trgm_ops)",
}
LAST_DEVICE_ID = "SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('device', 'id')::regclass), 0)"


def glob_to_regex(pattern: str) -> str:
    """The anchored POSIX regular expression matching what a SQLite GLOB pattern matches."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "[":
            end = pattern.index("]", i + 2 if pattern[i + 1:i + 2] in ("^", "]") else i + 1)
            out.append(pattern[i:end + 1])
            i = end
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append("\\" + char if char in _SPECIAL else char)
        i += 1
    return "".join(out) + "$"


def check(expression: str, dialect: str) -> str:
    """A CHECK expression written for SQLite, in the words of `dialect` (unchanged for SQLite)."""
    if dialect != "postgresql":
        return expression
    expression = _GLOB.sub(
        lambda m: f"{m[1]} {'!~' if m[2] else '~'} '{glob_to_regex(m[3])}'", expression)
    # The column is an INTEGER: PostgreSQL refuses any other type before the CHECK runs.
    expression = expression.replace("typeof(value) = 'integer' AND ", "")
    expression = expression.replace("online IN (0, 1)", "online IN (FALSE, TRUE)")
    return expression.replace("instr(", "strpos(")


def trigger(name: str, table: str, event: str, checks: Sequence[tuple[str, str]], when: str = "",
            then: str = "") -> list[str]:
    """A BEFORE … FOR EACH ROW trigger refusing the row, with `message`, when any `condition` holds."""
    body = " ".join(f"IF {condition} THEN RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation'; END IF;"
                    for condition, message in checks) + then
    return [
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} RETURN NEW; END $$",
        f"DROP TRIGGER IF EXISTS {name} ON {table}",
        f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW {f'WHEN ({when}) ' if when else ''}"
        f"EXECUTE FUNCTION {name}()",
    ]


def reading_insert_check(table: str, *, wall_clock: bool) -> list[str]:
    """A reading names a known device and comes after its join (first release: and not in the future).

    Since 0003 the check runs once per statement on all its rows (a transition table): the writer inserts a
    batch with one COPY, and a row trigger's two look-ups per reading doubled the COPY's time. The foreign
    key refuses an unknown device before this trigger runs.
    """
    if not wall_clock:
        name = f"{table}_insert_check"
        condition = ("EXISTS (SELECT 1 FROM new_rows n JOIN device d ON d.id = n.device_id "
                     "WHERE n.at <= d.joined_at)")
        body = (f"IF {condition} THEN RAISE EXCEPTION '{table}: a reading must be after the device joined' "
                "USING ERRCODE = 'check_violation'; END IF;")
        return [
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} "
            "RETURN NULL; END $$",
            f"DROP TRIGGER IF EXISTS {name} ON {table}",
            f"CREATE TRIGGER {name} AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()",
        ]
    checks = [
        ("NOT EXISTS (SELECT 1 FROM device WHERE id = NEW.device_id)", f"{table}: unknown device"),
        ("NEW.at <= (SELECT joined_at FROM device WHERE id = NEW.device_id)",
         f"{table}: a reading must be after the device joined"),
        (f"NEW.at > {_NOW_PLUS_1S}", f"{table}: a reading cannot be in the future"),
    ]
    return trigger(f"{table}_insert_check", table, "INSERT", checks)


def reading_triggers(table: str) -> list[str]:
    """The first release's triggers of a reading table."""
    return [
        *reading_insert_check(table, wall_clock=True),
        *trigger(f"{table}_at_immutable", table, "UPDATE OF at", [
            ("TRUE", f"{table}: a reading''s timestamp cannot change")], when="NEW.at IS DISTINCT FROM OLD.at"),
        *trigger(f"{table}_device_immutable", table, "UPDATE OF device_id", [
            ("TRUE", f"{table}: a reading cannot move to another device")],
            when="NEW.device_id IS DISTINCT FROM OLD.device_id"),
    ]


def device_insert_check(*, wall_clock: bool) -> list[str]:
    """A new device uses its name in its session, a name no other session uses; its id is never handed out again."""
    checks = [(f"NEW.joined_at > {_NOW_PLUS_1S}", "device: joined_at cannot be in the future")] if wall_clock else []
    checks += [
        ("NEW.session_name IS DISTINCT FROM NEW.name", "device: a new device uses its name in its session"),
        ("EXISTS (SELECT 1 FROM device WHERE session_name = NEW.name)",
         "device: name already used by another device''s session"),
    ]
    # The writer hands out ids itself: move the sequence past them, as AUTOINCREMENT's sqlite_sequence does.
    advance = f" PERFORM setval(pg_get_serial_sequence('device', 'id'), greatest(NEW.id, ({LAST_DEVICE_ID})));"
    return trigger("device_insert_check", "device", "INSERT", checks, then=advance)


def device_last_seen_check(*, wall_clock: bool) -> list[str]:
    """First release: `last_seen` is not in the future; since 0003: it never goes back."""
    if wall_clock:
        return trigger("device_last_seen_check", "device", "UPDATE OF last_seen", [
            ("TRUE", "device: last_seen cannot be in the future")], when=f"NEW.last_seen > {_NOW_PLUS_1S}")
    return trigger("device_last_seen_check", "device", "UPDATE OF last_seen", [
        ("TRUE", "device: last_seen cannot go back")], when="NEW.last_seen < OLD.last_seen")


def device_triggers() -> list[str]:
    """The first release's triggers of the device table."""
    return [
        *device_insert_check(wall_clock=True),
        *trigger("device_joined_at_immutable", "device", "UPDATE OF joined_at", [
            ("TRUE", "device: joined_at cannot change")], when="NEW.joined_at IS DISTINCT FROM OLD.joined_at"),
        *device_last_seen_check(wall_clock=True),
        *trigger("device_name_check", "device", "UPDATE OF name", [
            ("EXISTS (SELECT 1 FROM device WHERE session_name = NEW.name AND id != NEW.id)",
             "device: name already used by another device''s session")], when="NEW.name IS DISTINCT FROM OLD.name"),
        *trigger("device_session_name_check", "device", "UPDATE OF session_name", [
            ("NEW.session_name IS DISTINCT FROM NEW.name",
             "device: a session can only take the device''s current name")],
            when="NEW.session_name IS DISTINCT FROM OLD.session_name"),
    ]
