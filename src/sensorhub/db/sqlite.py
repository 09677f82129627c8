"""What SQLite needs that PostgreSQL does not: the device search's trigram index (an FTS5 table kept by triggers).

`device_search` is an FTS5 table over each device's name and MAC with the `trigram` tokenizer (SQLite 3.34 and
later): a phrase query of three characters or more finds the rows whose text contains it, ignoring case, from the
index (one name among 100,000 devices in well under a millisecond, where scanning the unique indexes of name and
MAC took 15–25 ms of CPU). It is an external-content table (`content='device'`): it stores the index only, and
three triggers on `device` keep it in step in the transaction that changes a device (a join inserts, a rename
updates, retention deletes stray devices). PostgreSQL has its pg_trgm indexes instead (db/postgres.py).

A migration that rebuilds the `device` table (Alembic's batch mode copies it, and dropping a table drops its
triggers) must create TRIGGERS again and rebuild the index (REBUILD), as it must the table's other triggers;
`ensure_search`, run by every `sensorhub db upgrade`, puts back what is missing (and creates it all on a database
upgraded while SQLite had no trigram tokenizer, once it has).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from typing import Final

from sqlalchemy import Connection

logger = logging.getLogger(__name__)

#: The FTS5 table and the tables SQLite keeps for it (not in the models: they are SQLite's, like its indexes).
SEARCH_TABLE: Final = "device_search"
SEARCH_TABLES: Final = frozenset({SEARCH_TABLE, *(f"{SEARCH_TABLE}_{part}" for part in
                                                  ("data", "idx", "docsize", "config", "content"))})
#: The shortest text a trigram index can look up: shorter ones are searched the old way (db/listing.py).
MIN_QUERY: Final = 3

CREATE: Final = (f"CREATE VIRTUAL TABLE {SEARCH_TABLE} USING fts5(name, mac, content='device', content_rowid='id', "
                 "tokenize='trigram')")
#: Each change of a device's name or MAC reaches the index in the same transaction ('delete' takes the old values:
#: an external-content table cannot read them once the row changed).
TRIGGERS: Final = (
    f"""CREATE TRIGGER device_search_insert AFTER INSERT ON device BEGIN
        INSERT INTO {SEARCH_TABLE} (rowid, name, mac) VALUES (NEW.id, NEW.name, NEW.mac);
    END""",
    f"""CREATE TRIGGER device_search_delete AFTER DELETE ON device BEGIN
        INSERT INTO {SEARCH_TABLE} ({SEARCH_TABLE}, rowid, name, mac) VALUES ('delete', OLD.id, OLD.name, OLD.mac);
    END""",
    f"""CREATE TRIGGER device_search_update AFTER UPDATE OF id, name, mac ON device
    WHEN NEW.id IS NOT OLD.id OR NEW.name IS NOT OLD.name OR NEW.mac IS NOT OLD.mac BEGIN
        INSERT INTO {SEARCH_TABLE} ({SEARCH_TABLE}, rowid, name, mac) VALUES ('delete', OLD.id, OLD.name, OLD.mac);
        INSERT INTO {SEARCH_TABLE} (rowid, name, mac) VALUES (NEW.id, NEW.name, NEW.mac);
    END""",
)
TRIGGER_NAMES: Final = ("device_search_insert", "device_search_delete", "device_search_update")
#: Index every device the table holds (after CREATE, or to repair the index).
REBUILD: Final = f"INSERT INTO {SEARCH_TABLE} ({SEARCH_TABLE}) VALUES ('rebuild')"
DROP: Final = (*(f"DROP TRIGGER IF EXISTS {name}" for name in TRIGGER_NAMES), f"DROP TABLE IF EXISTS {SEARCH_TABLE}")

_warned: set[str] = set()
_ALL: Final = (SEARCH_TABLE, *TRIGGER_NAMES)


@functools.cache
def trigram_available() -> bool:
    """Whether this process's SQLite has FTS5 and its trigram tokenizer (3.34 or later, built with FTS5)."""
    try:
        with sqlite3.connect(":memory:") as probe:
            probe.execute("CREATE VIRTUAL TABLE probe USING fts5(x, tokenize='trigram')")
    except sqlite3.Error:
        return False
    return True


def ensure_search(conn: Connection) -> bool:
    """Create what the database lacks of `device_search` (the table, a trigger) and index every device again, if
    this SQLite has FTS5's trigram tokenizer; whether anything was missing (not committed)."""
    if conn.dialect.name != "sqlite" or not trigram_available():
        return False
    found = {row[0] for row in conn.exec_driver_sql(
        f"SELECT name FROM sqlite_master WHERE name IN ({', '.join('?' * len(_ALL))})", _ALL)}
    if found >= set(_ALL):
        return False
    if SEARCH_TABLE not in found:
        conn.exec_driver_sql(CREATE)
    for name, statement in zip(TRIGGER_NAMES, TRIGGERS, strict=True):
        if name not in found:
            conn.exec_driver_sql(statement)
    conn.exec_driver_sql(REBUILD)  # what changed while a trigger was missing
    logger.info("every device's name and MAC indexed for the search (created: %s)",
                ", ".join(sorted(set(_ALL) - found)))
    return True


def searchable(conn: Connection) -> bool:
    """Whether `conn` can search names and MACs through `device_search`: SQLite with FTS5's trigram tokenizer and a
    database that has the table (migration 0010). Otherwise one warning per database says the search scans."""
    if conn.dialect.name != "sqlite":
        return False
    known = conn.info.get(SEARCH_TABLE)  # kept with the pooled DB-API connection once the table exists
    if known is None:
        exists = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SEARCH_TABLE,)).first() is not None
        known = trigram_available() if exists else False
        if exists:
            conn.info[SEARCH_TABLE] = known
        where = str(conn.engine.url)
        if not known and where not in _warned:
            _warned.add(where)
            logger.warning("searching names and MACs of %s without their index (slower with many devices): %s", where,
                           f"SQLite {sqlite3.sqlite_version} lacks FTS5's trigram tokenizer (3.34 or later)"
                           if exists else f"the database has no {SEARCH_TABLE} table (`sensorhub db upgrade` adds it "
                           "where SQLite has FTS5's trigram tokenizer)")
    return bool(known)


def phrase(text: str) -> str:
    """`text` as one FTS5 phrase: every character taken literally (`%`, `_`, `*`, `:`…), double quotes doubled."""
    return '"' + text.replace('"', '""') + '"'
