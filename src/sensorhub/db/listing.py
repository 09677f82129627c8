"""Device lists at any size: filtered, sorted and cut into pages in the database, with an opaque keyset cursor.

A page is `limit` devices after a cursor, in one of SORTS; the cursor holds the last device's sort key and id, so
the next page starts right after it through an index (ix_device_last_seen, the unique name, the primary key),
never an OFFSET: the cost stays that of a page however deep. In `id` order a walk through every page returns every
device that existed when it started exactly once, however many join or report meanwhile (new devices come last);
in `recent` order a device that reports while one walks moves to the front (docs/api.md, "Pages"). A search (a
name or MAC substring) finds its devices through a trigram index on either database (PostgreSQL's pg_trgm,
SQLite's FTS5 table of db/sqlite.py) when the text has 3 characters or more.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    String,
    and_,
    column,
    false,
    func,
    literal_column,
    or_,
    select,
    table,
    tuple_,
    type_coerce,
)

from sensorhub.db import sqlite
from sensorhub.db.models import Alert, Device

#: The orders a list can take: each a list of (column, descending); the last column is unique.
SORTS: Final[dict[str, tuple[tuple[Any, bool], ...]]] = {
    "recent": ((Device.last_seen, True), (Device.id, True)),  # most recently seen first
    "seen": ((Device.last_seen, False), (Device.id, False)),  # the longest silent first
    "name": ((Device.name, False),),  # names are unique
    "id": ((Device.id, False),),  # oldest device first; new devices come last
}
_MAC_PART: Final = re.compile(r"[0-9A-Fa-f:]+")
#: State filters of /capteurs (a device's latest values, kept in its row; its last message).
STATES: Final = ("led-on", "led-off", "pressed", "recent", "silent", "alerts")
RECENT_SECONDS: Final = 10
SILENT_SECONDS: Final = 60


def contains(column: Any, query: str, dialect: str) -> ColumnElement[bool]:
    """`column` contains `query`, ignoring case: SQLite's LIKE ignores the case of ASCII (names and MACs are ASCII)
    and costs half of `lower(x) LIKE`; PostgreSQL's `lower(x) LIKE` is what its trigram indexes serve."""
    pattern = "%" + query.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
    found: ColumnElement[bool] = (func.lower(column).like(pattern.lower(), escape="/") if dialect == "postgresql"
                                  else column.like(pattern, escape="/"))
    return found


@dataclass(frozen=True, slots=True)
class Filter:
    """Which devices a list holds: presence (None: all), a name (or, with `by_mac`, MAC) substring, a state."""

    online: bool | None = None
    query: str = ""
    by_mac: bool = True
    state: str = ""

    def matches(self, dialect: str, few: bool) -> ColumnElement[bool]:
        """Devices whose name (or MAC) contains the query, ignoring case. With `few` (the matches are rare), as
        ids found by scanning the narrow unique indexes of name and MAC (a substring can use no B-tree, but a scan
        of one is a tenth of the table's): the page then reads only the matching rows (20 ms rather than 760 ms
        for one name among 100,000 on SQLite; PostgreSQL answers from its trigram indexes, migration 0009; where
        SQLite has its own, `indexed` finds them instead). With many matches the order's own index is walked,
        testing each row, and a page is found in its first rows."""
        if "\x00" in self.query:
            # No name nor MAC holds a NUL; SQLite's LIKE would read the pattern only up to it (and match everything),
            # PostgreSQL refuses it.
            return false()
        by_name = contains(Device.name, self.query, dialect)
        by_mac = contains(Device.mac, self.query, dialect)
        if not few:
            return or_(by_name, by_mac) if self._macs else by_name
        ids = select(Device.id).where(by_name)
        if self._macs:
            ids = ids.union(select(Device.id).where(by_mac))  # type: ignore[assignment]
        return Device.id.in_(ids)

    @property
    def _macs(self) -> bool:
        """Whether MACs are searched: text that no MAC contains (anything but hex digits and colons) spares them."""
        return self.by_mac and _MAC_PART.fullmatch(self.query) is not None

    def indexed(self, now: datetime) -> Select[Any] | None:
        """The ids of the devices this filter holds, found through SQLite's trigram index (db/sqlite.py) as they
        come, each tested as `matches` tests it (the same rule whatever the index holds); None for a query the
        index cannot serve (fewer than 3 characters, a NUL). Read as a join, the index yields its rows one by one:
        the first FEW_MATCHES + 1 of 100,000 in 2 ms, where `id IN (…)` reads them all first (44 ms)."""
        if len(self.query) < sqlite.MIN_QUERY or "\x00" in self.query:
            return None
        search = table(sqlite.SEARCH_TABLE, column("rowid"))
        searched = "{name mac}" if self._macs else "name"
        found = literal_column(sqlite.SEARCH_TABLE).op("MATCH")(f"{searched} : {sqlite.phrase(self.query)}")
        return (select(Device.id).select_from(search.join(Device, Device.id == search.c.rowid))
                .where(found, *self.where(now, "sqlite")))

    def where(self, now: datetime, dialect: str = "sqlite", few: bool = False) -> list[ColumnElement[bool]]:
        """The WHERE clauses (`few`: see `matches`)."""
        clauses: list[ColumnElement[bool]] = []
        if self.online is not None:
            clauses.append(Device.online == self.online)
        if self.query:
            clauses.append(self.matches(dialect, few))
        if self.state == "led-on":
            clauses.append(Device.last_led == 1)
        elif self.state == "led-off":
            clauses.append(or_(Device.last_led == 0, Device.last_led.is_(None)))
        elif self.state == "pressed":
            clauses.append(Device.last_button == 1)
        elif self.state == "recent":
            clauses.append(Device.last_seen >= now - timedelta(seconds=RECENT_SECONDS))
        elif self.state == "silent":
            clauses.append(Device.last_seen < now - timedelta(seconds=SILENT_SECONDS))
        elif self.state == "alerts":
            alarming = select(Alert.device_id).where(Alert.state.in_(("firing", "clearing")))
            clauses.append(Device.id.in_(alarming))
        return clauses


class BadCursor(ValueError):
    """A cursor that this server did not give, or for another order (`given_for`: that order, else None)."""

    def __init__(self, message: str, given_for: str | None = None) -> None:
        super().__init__(message)
        self.given_for = given_for


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a page ends: its order and the last device's sort key (stored text, number) and id."""

    sort: str
    key: str | int
    id: int

    def encode(self) -> str:
        """Opaque URL-safe text."""
        raw = json.dumps([self.sort, self.key, self.id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, sort: str) -> PageCursor:
        """The cursor `encode` gave for `sort`; BadCursor otherwise."""
        if not text or len(text) > 200:
            raise BadCursor("curseur de page invalide")
        try:
            found = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError) as err:
            raise BadCursor("curseur de page invalide") from err
        if (not isinstance(found, list) or len(found) != 3 or found[0] not in SORTS
                or not isinstance(found[1], str | int) or isinstance(found[1], bool)
                or not isinstance(found[2], int) or isinstance(found[2], bool) or not 0 <= found[2] < 2**63):
            raise BadCursor("curseur de page invalide")
        if found[0] != sort:
            raise BadCursor(f"ce curseur est celui du tri « {found[0]} », pas « {sort} »", given_for=found[0])
        return cls(found[0], found[1], found[2])


@dataclass(frozen=True, slots=True)
class Listed:
    """One page: its rows (the columns asked for), the cursor of the next page (None on the last) and how many
    devices the filter holds in all (None when not counted)."""

    rows: Sequence[Row[Any]]
    next: PageCursor | None
    total: int | None


def _stored(column: Any) -> Any:
    """A column as its stored value (time columns as their UTC text: that is what the cursor keeps)."""
    return type_coerce(column, String()) if column is Device.last_seen else column


def _after(sort: str, cursor: PageCursor) -> ColumnElement[bool]:
    """The rows after `cursor` in `sort` (row values: SQLite and PostgreSQL compare them through the index)."""
    columns = SORTS[sort]
    keys = [cursor.key, cursor.id] if len(columns) > 1 else [cursor.key]
    # Times compared as their stored text, bound as text (never a timestamp, which PostgreSQL would refuse).
    left = tuple_(*(_stored(column) for column, _ in columns))
    right = tuple_(*keys)
    return left < right if columns[0][1] else left > right


#: Up to this many matches of a search, its page reads the matching rows by id and sorts them; beyond, it walks the
#: order's index (a match every 50 rows or closer: a page in its first few thousand rows).
FEW_MATCHES: Final = 2_000


def page(conn: Connection, columns: Sequence[Any], *, sort: str = "recent", where: Filter = Filter(),
         cursor: PageCursor | None = None, limit: int = 100, count: bool = True,
         now: datetime | None = None) -> Listed:
    """`limit` devices (`columns` of them, `id` among them) after `cursor` in `sort` order, among those `where`
    holds; with `count` (or a search), how many it holds in all."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort: {sort!r}")
    now = now or datetime.now(UTC)
    total = None
    dialect = conn.dialect.name
    clauses = where.where(now, dialect)
    if where.query:
        # The matching ids, up to FEW_MATCHES + 1 (they are all there is to read when rarer than that).
        indexed = where.indexed(now) if sqlite.searchable(conn) else None
        found = indexed if indexed is not None else select(Device.id).where(*where.where(now, dialect, few=True))
        ids = list(conn.execute(found.limit(FEW_MATCHES + 1)).scalars())
        if len(ids) <= FEW_MATCHES:
            total = len(ids)
            clauses = [Device.id.in_(ids)]
        else:
            clauses = where.where(now, dialect, few=False)
            if count:  # counted through the narrow indexes (SQLite's trigram index takes twice as long for many)
                counted = select(func.count()).select_from(Device).where(*where.where(now, dialect, few=True))
                total = int(conn.execute(counted).scalar_one())
    if count and total is None:
        counted = select(func.count()).select_from(Device)
        if clauses:
            counted = counted.where(and_(*clauses))
        total = int(conn.execute(counted).scalar_one())
    order = [column.desc() if descending else column.asc() for column, descending in SORTS[sort]]
    key_columns = [_stored(column).label(f"_key{i}") for i, (column, _) in enumerate(SORTS[sort])]
    stmt = select(*columns, *key_columns).order_by(*order).limit(limit + 1)
    if clauses:
        stmt = stmt.where(and_(*clauses))
    if cursor is not None:
        stmt = stmt.where(_after(sort, cursor))
    rows = conn.execute(stmt).all()
    following = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        following = PageCursor(sort, last._mapping["_key0"], int(last._mapping["id"]))
    return Listed(rows, following, total if count else None)
