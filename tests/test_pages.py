"""Lists of devices at any size (issue 28): /api/devices and /historique a page at a time (limit, opaque cursor,
the total), searching a name or MAC, /capteurs paged in the database above PAGED_FLEET online devices; on SQLite
and PostgreSQL."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, delete, select, update

from sensorhub.db import listing, sqlite
from sensorhub.db.engine import make_engine
from sensorhub.db.models import Device
from sensorhub.db.schema import upgrade
from sensorhub.web import api, pages
from tests.factories import device_row, insert_devices, mac_of
from tests.support import both_databases

NOW_US = time.time_ns() // 1000


def seed(engine: Engine, count: int, first: int = 1, *, online: bool = True, now: bool = False) -> None:
    """`count` devices from number `first` on, last seen a millisecond apart (the newest the highest number), or
    with `now`, just now."""
    latest = time.time_ns() // 1000
    with engine.begin() as conn:
        insert_devices(conn, [device_row(i, joined_us=NOW_US - 10**10, online=online,
                                         last_seen_us=latest if now else NOW_US - (10**6 - i) * 1000)
                              for i in range(first, first + count)])


def walk(client: FlaskClient, path: str, between: Any = None) -> tuple[list[int], list[int]]:
    """Follow /api/devices's `Link: rel="next"` from `path` to the last page; the ids seen and each page's total."""
    seen: list[int] = []
    totals: list[int] = []
    pages_read = 0
    while path:
        answer = client.get(path)
        assert answer.status_code == 200, answer.get_json()
        seen += [device["id"] for device in answer.get_json()]
        totals.append(int(answer.headers["X-Total-Count"]))
        link = answer.headers.get("Link")
        path = link[1:link.index(">")] if link else ""
        if link:
            assert link.endswith('>; rel="next"')
            assert parse_qs(urlsplit(path).query)["cursor"] == [answer.headers["X-Next-Cursor"]]
        pages_read += 1
        if between is not None:
            between(pages_read)
    return seen, totals


@both_databases
def test_cursor_pages_return_every_device_once_in_each_order(client: FlaskClient, engine: Engine) -> None:
    seed(engine, 250)
    for sort in ("recent", "id", "name", "seen"):
        seen, totals = walk(client, f"/api/devices?limit=40&sort={sort}")
        assert sorted(seen) == list(range(1, 251)), sort  # every device, exactly once
        assert totals == [250] * 7
    recent, _ = walk(client, "/api/devices?limit=40")
    assert recent == list(range(250, 0, -1))  # the default order: most recently seen first, as before


@both_databases
def test_devices_added_between_pages_leave_the_walk_exact(client: FlaskClient, engine: Engine) -> None:
    seed(engine, 100)

    joined = [1000]

    def join(_pages_read: int) -> None:  # 10 new devices after each page, seen after all the others
        seed(engine, 10, joined[0], now=True)
        joined[0] += 10

    seen, _ = walk(client, "/api/devices?limit=30&sort=id", join)
    assert seen[:100] == list(range(1, 101)) and len(seen) == len(set(seen))  # every first device once, in order
    assert all(number >= 1000 for number in seen[100:])  # the newcomers came last
    seen, _ = walk(client, "/api/devices?limit=30", join)  # newest first: the newcomers are before the cursor
    assert sorted(number for number in seen if number < 1000) == list(range(1, 101))
    assert len(seen) == len(set(seen))


@both_databases
def test_a_client_that_asks_nothing_gets_the_first_page_and_the_total(client: FlaskClient, engine: Engine) -> None:
    seed(engine, api.DEFAULT_LIMIT + 5)
    answer = client.get("/api/devices")
    assert answer.status_code == 200
    assert len(answer.get_json()) == api.DEFAULT_LIMIT
    assert answer.headers["X-Total-Count"] == str(api.DEFAULT_LIMIT + 5)
    rest = client.get(answer.headers["Link"][1:answer.headers["Link"].index(">")])
    assert len(rest.get_json()) == 5 and "Link" not in rest.headers
    online = client.get("/api/devices?online=0")
    assert online.get_json() == [] and online.headers["X-Total-Count"] == "0" and "Link" not in online.headers


@pytest.mark.parametrize(("query", "problem"), [
    ("limit=0", "limit"), ("limit=5001", "limit"), ("limit=abc", "limit"), ("limit=-1", "limit"),
    ("cursor=nonsense", "cursor"), ("cursor=", "cursor"), ("sort=colour", "sort"),
    ("cursor=WyJpZCIsMiwyXQ", "cursor"),  # a cursor of the `id` order given to the default one
    ("cursor=WyJyZWNlbnQiLHRydWUsMl0", "cursor"),  # well-formed JSON, not a cursor
])
def test_bad_limits_and_cursors_are_refused_with_a_clear_message(client: FlaskClient, engine: Engine, query: str,
                                                               problem: str) -> None:
    seed(engine, 3)
    answer = client.get(f"/api/devices?{query}")
    assert answer.status_code == 400
    assert answer.get_json()["parameter"] == problem
    assert problem in answer.get_json()["error"]


def test_a_cursor_is_opaque_and_checked() -> None:
    cursor = listing.PageCursor("recent", "2026-12-04 18:00:00.000000", 42)
    assert listing.PageCursor.decode(cursor.encode(), "recent") == cursor
    assert "2026" not in cursor.encode() and "=" not in cursor.encode()
    with pytest.raises(listing.BadCursor, match="id"):
        listing.PageCursor.decode(listing.PageCursor("id", 3, 3).encode(), "recent")
    for bad in ("", "x" * 300, "!!!", "WyJyZWNlbnQiXQ"):
        with pytest.raises(listing.BadCursor):
            listing.PageCursor.decode(bad, "recent")


@both_databases
def test_search_finds_a_name_or_a_mac_among_many_and_counts_them(client: FlaskClient, engine: Engine) -> None:
    seed(engine, listing.FEW_MATCHES + 300)  # more matches of "capteur" than a search reads by id
    one = client.get("/api/devices?q=CAPTEUR0123")
    assert [d["id"] for d in one.get_json()] == [123] and one.headers["X-Total-Count"] == "1"
    by_mac = client.get(f"/api/devices?q={mac_of(77)[-8:].lower()}")
    assert [d["id"] for d in by_mac.get_json()] == [77]
    many = client.get("/api/devices?q=capteur&limit=10&sort=id")
    assert [d["id"] for d in many.get_json()] == list(range(1, 11))
    assert many.headers["X-Total-Count"] == str(listing.FEW_MATCHES + 300)
    few = client.get("/api/devices?q=capteur01&limit=10&sort=id")  # capteur0100 to 0199 and capteur01xx...
    assert few.headers["X-Total-Count"] == "100"
    seen, _ = walk(client, "/api/devices?q=capteur01&limit=30&sort=name")
    assert sorted(seen) == list(range(100, 200))
    assert client.get("/api/devices?q=%25").get_json() == []  # LIKE's wildcards are plain characters


#: Names a substring search must take literally: LIKE's wildcards and escape, FTS5's syntax, quotes, spaces.
ODD_NAMES = ("salle_%42", "salle 42", "salleX42", 'dit "ok"', "a/b*c", "NEAR(x y)", "col:name", "x^y-z", "l'ete")
QUERIES = ("c", "C", "ca", "02", "2:", ":", "%", "_", "/", '"', "'", "*", "00:0", "0:00:", "capteur", "CAPTEUR0012",
           "apteur001", "salle_%", "salle_", "LE_%4", "lle 4", "e%4", 'dit "OK', 'T "', "a/b", "/b*", "NEAR(",
           "col:", "L:N", "x^y", "ZZZ", "ét", "été", "\\", "%%%", "___", "\x00ab")


def _searched(conn: Any, query: str, by_mac: bool, online: bool | None = None) -> tuple[list[int], int | None]:
    found = listing.page(conn, [Device.id], sort="id", where=listing.Filter(online=online, query=query,
                                                                           by_mac=by_mac), limit=500)
    return [row.id for row in found.rows], found.total


@both_databases
def test_search_is_a_substring_of_the_name_or_mac_ignoring_ascii_case_whatever_the_query(engine: Engine) -> None:
    seed(engine, 30)
    seed(engine, 6, 31, online=False)
    with engine.begin() as conn:
        for number, name in enumerate(ODD_NAMES, 40):
            insert_devices(conn, [device_row(number, joined_us=NOW_US - 10**10, name=name)])
        devices = conn.execute(select(Device.id, Device.name, Device.mac, Device.online)).all()
    macs = [mac_of(12)[-8:].lower(), mac_of(12)[3:11], mac_of(40)[-5:]]
    for query in (*QUERIES, *macs):
        for by_mac in (True, False):
            expected = sorted(d.id for d in devices if query.lower() in d.name.lower()
                              or (by_mac and query.lower() in d.mac.lower()))
            with engine.connect() as conn:
                assert _searched(conn, query, by_mac) == (expected, len(expected)), (query, by_mac)
                online = [i for i in expected if next(d for d in devices if d.id == i).online]
                assert _searched(conn, query, by_mac, online=True) == (online, len(online)), (query, by_mac)


def _search_index_sound(conn: Any, absent: tuple[str, ...] = ()) -> None:
    """SQLite's FTS5 `integrity-check` passes, and the index itself finds none of `absent` (a search would still
    be right, each match being tested again, but an index that kept old names would only grow)."""
    conn.exec_driver_sql(f"INSERT INTO {sqlite.SEARCH_TABLE} ({sqlite.SEARCH_TABLE}) VALUES ('integrity-check')")
    for text in absent:
        assert conn.exec_driver_sql(f"SELECT rowid FROM {sqlite.SEARCH_TABLE} WHERE {sqlite.SEARCH_TABLE} MATCH ?",
                                    (sqlite.phrase(text),)).all() == [], text


@both_databases
def test_the_search_index_follows_joins_renames_and_deletes(engine: Engine) -> None:
    seed(engine, 50)
    with engine.connect() as conn:
        assert sqlite.searchable(conn) is (engine.dialect.name == "sqlite")
        if engine.dialect.name == "sqlite":  # the search reads the trigram index, not a scan
            ids = listing.Filter(query="capteur0012").indexed(datetime.now(UTC))
            assert ids is not None
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + str(ids.compile(conn, compile_kwargs={"literal_binds": True}))))
            assert "VIRTUAL TABLE INDEX" in plan and sqlite.SEARCH_TABLE in plan, plan
    with engine.begin() as conn:
        insert_devices(conn, [device_row(60, joined_us=NOW_US - 10**10, name="serre-nord")])  # a join
        conn.execute(update(Device).where(Device.id == 5).values(name="atelier-sud"))  # a rename
        conn.execute(update(Device).where(Device.id == 6).values(mac="0A:0B:0C:0D:0E:0F"))
        conn.execute(delete(Device).where(Device.id == 7))
    with engine.connect() as conn:
        assert _searched(conn, "SERRE-N", True) == ([60], 1)
        assert _searched(conn, "lier-s", True) == ([5], 1)
        assert _searched(conn, "capteur0005", True) == ([], 0)
        assert _searched(conn, "0c:0d", True) == ([6], 1)
        assert _searched(conn, mac_of(6)[-8:], True) == ([], 0)
        assert _searched(conn, "capteur0007", True) == ([], 0)
        assert _searched(conn, "capteur000", True) == ([1, 2, 3, 4, 6, 8, 9], 7)
        if engine.dialect.name == "sqlite":
            _search_index_sound(conn, absent=("capteur0005", "capteur0007", mac_of(6), mac_of(7)))
    with engine.begin() as conn:  # renamed back, and the device that left joins again under its old name
        conn.execute(update(Device).where(Device.id == 5).values(name="capteur0005"))
        insert_devices(conn, [device_row(61, joined_us=NOW_US - 10**10, name="capteur0007")])
    with engine.connect() as conn:
        assert _searched(conn, "capteur000", True) == ([1, 2, 3, 4, 5, 6, 8, 9, 61], 9)
        assert _searched(conn, "atelier", True) == ([], 0)
        if engine.dialect.name == "sqlite":
            _search_index_sound(conn, absent=("atelier-sud",))


def test_without_the_search_index_sqlite_searches_as_before_and_says_so(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    seed(engine, 30)
    with engine.begin() as conn:
        for statement in sqlite.DROP:
            conn.exec_driver_sql(statement)
    fresh = make_engine(engine.url.render_as_string(hide_password=False))  # no connection that saw the table
    try:
        with caplog.at_level(logging.WARNING, logger="sensorhub.db.sqlite"), fresh.connect() as conn:
            assert _searched(conn, "capteur0012", True) == ([12], 1)
            assert _searched(conn, mac_of(13)[-8:], True) == ([13], 1)
    finally:
        fresh.dispose()
    warned = [r.getMessage() for r in caplog.records if r.name == "sensorhub.db.sqlite"]
    assert len(warned) == 1 and "without their index" in warned[0] and "db upgrade" in warned[0]
    with engine.begin() as conn:  # a device renamed meanwhile
        conn.execute(update(Device).where(Device.id == 14).values(name="renomme"))
    upgrade(engine.url.render_as_string(hide_password=False))  # `sensorhub db upgrade` makes the index again
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER device_search_update")  # as a migration copying `device` would
        conn.execute(update(Device).where(Device.id == 15).values(name="renomme-aussi"))
    upgrade(engine.url.render_as_string(hide_password=False))  # and puts the trigger back, indexing again
    with engine.connect() as conn:
        assert sqlite.searchable(conn)
        assert _searched(conn, "RENOMME", True) == ([14, 15], 2)
        _search_index_sound(conn, absent=("capteur0014", "capteur0015"))


@both_databases
def test_historique_pages_with_limit_and_cursor(client: FlaskClient, engine: Engine) -> None:
    seed(engine, 25)
    shown: list[str] = []
    path = "/historique?limit=10"
    while path:
        html = client.get(path).get_data(as_text=True)
        shown += [f"capteur{i:04d}" for i in range(1, 26) if f">capteur{i:04d}<" in html]
        marker = html.find('rel="next"')
        if marker < 0:
            break
        start = html.rindex('href="', 0, marker) + len('href="')
        path = html[start:html.index('"', start)].replace("&amp;", "&")
        assert "limit=10" in path and "cursor=" in path
    assert sorted(shown) == [f"capteur{i:04d}" for i in range(1, 26)] and len(shown) == 25
    assert ": 10 appareils." in client.get("/historique?q=capteur001").get_data(as_text=True)
    for bad in ("limit=0", "limit=201", "cursor=nonsense", "cursor=WyJpZCIsMiwyXQ"):
        answer = client.get(f"/historique?{bad}")
        assert answer.status_code == 400, bad
        assert "limit" in answer.get_data(as_text=True) or "page" in answer.get_data(as_text=True)


def test_historique_still_follows_an_old_next_link(client: FlaskClient, engine: Engine) -> None:
    seed(engine, 60)
    moment = datetime.fromtimestamp((NOW_US - (10**6 - 11) * 1000) / 1e6, UTC)
    old = f"{moment.strftime('%Y-%m-%dT%H:%M:%S.%f')}Z~11"  # the `?avant=` of the release before
    html = client.get(f"/historique?avant={old}").get_data(as_text=True)
    assert ">capteur0010<" in html and ">capteur0011<" not in html and ">capteur0012<" not in html


@both_databases
def test_capteurs_is_paged_in_the_database_above_a_large_fleet(client: FlaskClient, engine: Engine) -> None:
    seed(engine, pages.PAGED_FLEET + 100)
    seed(engine, 5, 9000, online=False)
    with engine.begin() as conn:
        conn.execute(update(Device).where(Device.id.in_([7, 8])).values(last_led=1))
    html = client.get("/capteurs").get_data(as_text=True)
    assert html.count("data-card ") == pages.CARDS_PAGE  # a page, not every card
    assert "data-paged" in html and 'rel="next"' in html
    assert ">capteur0001<" in html and f">capteur{pages.CARDS_PAGE + 1:04d}<" not in html  # by name
    assert f"{pages.PAGED_FLEET + 100} appareils correspondent" in html
    html = client.get("/capteurs?q=capteur0123").get_data(as_text=True)
    assert html.count("data-card ") == 1 and ">capteur0123<" in html
    html = client.get("/capteurs?etat=led-on").get_data(as_text=True)
    assert html.count("data-card ") == 2 and ">capteur0007<" in html
    html = client.get("/capteurs?presence=hors-ligne").get_data(as_text=True)
    assert html.count("data-card ") == 5 and ">capteur9000<" in html
    fragment = client.get("/sensor/page?presence=hors-ligne").get_data(as_text=True)
    assert fragment.count("data-card ") == 5
    assert client.get("/capteurs?tri=colour").status_code == 400
    assert client.get("/capteurs?cursor=nonsense").status_code == 400


def test_capteurs_shows_every_card_of_a_small_fleet(client: FlaskClient, engine: Engine) -> None:
    seed(engine, 30)
    html = client.get("/capteurs").get_data(as_text=True)
    assert html.count("data-card ") == 30 and "data-paged" not in html
