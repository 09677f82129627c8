"""The payload parser: the specification's examples, exhaustive rejections, and properties (hypothesis)."""

from __future__ import annotations

import itertools
import sqlite3
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sensorhub import protocol
from sensorhub.errors import PayloadError
from sensorhub.protocol import (
    BROWSER_SUBSCRIPTIONS,
    LIVE_CODES,
    LIVE_PAYLOAD_MAX,
    LIVE_TOPIC,
    MAC_LENGTH,
    MAX_NAME,
    MAX_PACKET,
    MAX_PAYLOAD,
    MAX_SESSION,
    MAX_SIZES,
    NAME_RULE,
    QOS,
    SERVER_SUBSCRIPTIONS,
    SESSION_RULE,
    Kind,
    Leave,
    MacJoin,
    NameAssign,
    Reading,
    SessionRef,
    Topic,
    format_led_command,
    format_live,
    format_name_assign,
    format_reading,
    format_session_ref,
    name_problem,
    new_session_id,
    parse_join,
    parse_leave,
    parse_led_command,
    parse_name_assign,
    parse_reading,
    parse_server_message,
    parse_session_ref,
)
from sensorhub.rules import TextRule, name_taken

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
names = st.text(PRINTABLE, min_size=1, max_size=MAX_NAME).filter(lambda n: name_problem(n) is None)
sessions = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=";"),
                   min_size=1, max_size=MAX_SESSION)
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(lambda o: ":".join(f"{x:02X}" for x in o))
topics = st.sampled_from([str(t) for t in Topic] + ["other/topic", ""])


def test_specification_examples() -> None:
    assert parse_join(b"61:EC:ED:3B:25:B1") == MacJoin("61:EC:ED:3B:25:B1")
    assert parse_join(b"capteur02;1743946777.603371") == SessionRef("capteur02", "1743946777.603371")
    assert parse_session_ref(b"capteur01;1743946777.603371") == SessionRef("capteur01", "1743946777.603371")
    assert parse_leave(b"capteur01;1743946777.603371") == Leave("capteur01", "1743946777.603371")
    assert parse_reading(Kind.LED, b"capteur02;1743946777.603371;0") == Reading(
        Kind.LED, "capteur02", "1743946777.603371", 0)
    assert parse_reading(Kind.BUTTON, b"optimus;1743946777.603371;1").value == 1
    assert parse_reading(Kind.LIGHT, b"capteur01;1743946777.603371;58").value == 58
    assert parse_led_command(b"capteur01;1743946777.603371;1").on is True
    assert parse_name_assign(b"61:EC:ED:3B:25:B1;capteur01;1743946777.603371").name == "capteur01"
    assert format_name_assign("61:EC:ED:3B:25:B1", "capteur01", "1743946777.603371") == (
        b"61:EC:ED:3B:25:B1;capteur01;1743946777.603371")
    assert format_led_command("capteur01", "1743946777.603371", True) == b"capteur01;1743946777.603371;1"


def test_qos_table_and_subscriptions_never_downgrade() -> None:
    assert QOS[Topic.LED_COMMAND] == 1 and QOS[Topic.LED_STATUS] == 1
    assert QOS[Topic.BUTTON_STATUS] == 0 and QOS[Topic.PHOTORESISTOR_STATUS] == 0
    assert QOS[Topic.JOIN] == QOS[Topic.LEAVE] == QOS[Topic.NAME_ASSIGN] == 2
    subscribed = dict(SERVER_SUBSCRIPTIONS)
    assert set(subscribed) == {"state/join", "state/leave", "led/status", "button/status", "photoresistor/status"}
    assert all(subscribed[topic] >= QOS[Topic(topic)] for topic in subscribed)
    # The page: presence from the devices, readings from the live feed (not every device's own message).
    assert dict(BROWSER_SUBSCRIPTIONS) == {"state/join": 2, "state/leave": 2, LIVE_TOPIC: 0}


def test_the_live_feed_packs_readings_in_order_within_the_packet_limit() -> None:
    readings = [(n % 2_000 + 1, kind, n % 101 if kind is Kind.LIGHT else n % 2)
                for n in range(1_000) for kind in (Kind.LIGHT, Kind.LED, Kind.BUTTON) if n % 3 or kind is Kind.LIGHT]
    payloads = format_live(readings)
    assert all(len(payload) <= LIVE_PAYLOAD_MAX for payload in payloads)
    lines = [line.split(";") for payload in payloads for line in payload.decode().split("\n")]
    codes = {code: kind for kind, code in LIVE_CODES.items()}
    assert [(int(device), codes[code], int(value)) for device, code, value in lines] == readings
    # Full messages: each but the last would not have held the next line.
    for payload, following in itertools.pairwise(payloads):
        assert len(payload) + 1 + len(following.split(b"\n")[0]) > LIVE_PAYLOAD_MAX
    assert len(payloads) < len(readings) / 15
    assert format_live([]) == []
    assert format_live([(7, Kind.LED, 1)]) == [b"7;l;1"]
    assert LIVE_PAYLOAD_MAX + 20 == MAX_PACKET  # header: type, remaining length, topic, properties


LONGEST_NAME, LONGEST_SESSION, MAC = "n" * MAX_NAME, "1" * MAX_SESSION, "61:EC:ED:3B:25:B1"


def test_the_longest_name_assignment_is_65_bytes_and_parses() -> None:
    """A 29-character name once made a 65-byte state/nameAssign that the device side refused (limit was 64)."""
    payload = format_name_assign(MAC, LONGEST_NAME, LONGEST_SESSION)
    assert len(payload) == 65 == MAX_SIZES[Topic.NAME_ASSIGN] == MAX_PAYLOAD
    assert parse_name_assign(payload) == NameAssign(MAC, LONGEST_NAME, LONGEST_SESSION)
    with pytest.raises(PayloadError) as caught:
        parse_name_assign(payload + b"1")
    assert caught.value.reason == "oversize"


def test_each_channels_size_is_its_longest_valid_payload() -> None:
    longest = {
        Topic.JOIN: format_session_ref(LONGEST_NAME, LONGEST_SESSION),
        Topic.LEAVE: format_session_ref(LONGEST_NAME, LONGEST_SESSION),
        Topic.NAME_ASSIGN: format_name_assign(MAC, LONGEST_NAME, LONGEST_SESSION),
        Topic.LED_COMMAND: format_led_command(LONGEST_NAME, LONGEST_SESSION, True),
        Topic.LED_STATUS: format_reading(LONGEST_NAME, LONGEST_SESSION, 1),
        Topic.BUTTON_STATUS: format_reading(LONGEST_NAME, LONGEST_SESSION, 1),
        Topic.PHOTORESISTOR_STATUS: format_reading(LONGEST_NAME, LONGEST_SESSION, 100),
    }
    assert set(longest) == set(Topic) == set(MAX_SIZES)
    assert len(MAC) == MAC_LENGTH < MAX_SIZES[Topic.JOIN]
    parsers = {Topic.NAME_ASSIGN: parse_name_assign, Topic.LED_COMMAND: parse_led_command}
    for topic, payload in longest.items():
        assert len(payload) == MAX_SIZES[topic], topic
        parse = parsers.get(topic, lambda p, t=topic: parse_server_message(t, p))
        parse(payload)  # the longest valid payload is accepted...
        with pytest.raises(PayloadError) as caught:
            parse(payload + b"0")  # ...and one byte more is not
        assert caught.value.reason == "oversize", topic


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("photoresistor/status", b"capteur01;1.5;58" + b"\xff", "not-ascii"),
        ("photoresistor/status", "caf\u00e9;1.5;58".encode(), "not-ascii"),
        ("photoresistor/status", b"capteur01;1.5;5\n", "not-ascii"),
        ("photoresistor/status", b"capteur01;1.5", "field-count"),
        ("photoresistor/status", b"capteur01;1.5;5;6", "field-count"),
        ("photoresistor/status", b"capteur01;;58", "empty-field"),
        ("photoresistor/status", b";1.5;58", "empty-field"),
        ("photoresistor/status", b"capteur01;1.5;101", "bad-value"),
        ("photoresistor/status", b"capteur01;1.5;-1", "bad-value"),
        ("photoresistor/status", b"capteur01;1.5;5.5", "bad-value"),
        ("photoresistor/status", b"capteur01;1.5;1000", "bad-value"),
        ("led/status", b"capteur01;1.5;2", "bad-value"),
        ("button/status", b"capteur01;1.5;on", "bad-value"),
        ("button/status", b"x" * 30 + b";1.5;1", "bad-name"),
        ("button/status", b" padded;1.5;1", "bad-name"),
        ("button/status", b"capteur01;123456789012345678;1", "bad-session"),
        ("button/status", b"capteur01;1 5;1", "bad-session"),
        ("state/join", b"61:EC:ED:3B:25", "bad-mac"),
        ("state/join", b"zz:EC:ED:3B:25:B1", "bad-mac"),
        ("state/join", b"", "bad-mac"),
        ("state/join", b"capteur01;1.5;extra", "field-count"),
        ("state/leave", b"61:EC:ED:3B:25:B1", "field-count"),
        ("state/leave", b"a" * 65, "oversize"),
        ("state/nameAssign", b"61:EC:ED:3B:25:B1;a;1", "topic"),
    ],
)
def test_rejections_say_why(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_server_message(topic, payload)
    assert caught.value.reason == reason
    assert str(caught.value)


def test_mac_is_case_insensitive() -> None:
    assert parse_join(b"61:ec:ed:3b:25:b1") == MacJoin("61:EC:ED:3B:25:B1")


@given(names, sessions, st.integers(0, 100))
def test_readings_round_trip(name: str, session: str, value: int) -> None:
    payload = format_reading(name, session, value)
    assert parse_server_message("photoresistor/status", payload) == Reading(Kind.LIGHT, name, session, value)
    binary = value % 2
    assert parse_server_message("led/status", format_reading(name, session, binary)).value == binary


@given(names, sessions)
def test_session_refs_round_trip(name: str, session: str) -> None:
    payload = format_session_ref(name, session)
    assert parse_server_message("state/join", payload) == SessionRef(name, session)
    assert parse_server_message("state/leave", payload) == Leave(name, session)


@given(macs, names, sessions)
def test_name_assign_round_trip(mac: str, name: str, session: str) -> None:
    assert len(format_name_assign(mac, name, session)) <= 200  # fits the broker's max_packet_size
    assign = parse_name_assign(format_name_assign(mac, name, session))
    assert (assign.mac, assign.name, assign.session) == (mac, name, session)


@given(topics, st.binary(max_size=120))
def test_any_bytes_parse_or_raise_payload_error(topic: str, payload: bytes) -> None:
    try:
        parsed = parse_server_message(topic, payload)
    except PayloadError as err:
        assert err.reason
        return
    # whatever is accepted is well-formed
    if isinstance(parsed, Reading):
        assert name_problem(parsed.name) is None and ";" not in parsed.session
        assert 0 <= parsed.value <= (100 if parsed.kind is Kind.LIGHT else 1)
    elif isinstance(parsed, SessionRef | Leave):
        assert name_problem(parsed.name) is None and 0 < len(parsed.session) <= MAX_SESSION
    else:
        assert len(parsed.mac) == 17 and parsed.mac == parsed.mac.upper()


REASONS = {"oversize", "not-ascii", "field-count", "empty-field", "bad-value", "bad-name", "bad-session", "bad-mac",
           "topic"}


def reformat(parsed: object) -> bytes:
    """The payload a parsed message is written as."""
    match parsed:
        case Reading(_, name, session, value):
            return format_reading(name, session, value)
        case SessionRef(name, session) | Leave(name, session):
            return format_session_ref(name, session)
        case MacJoin(mac):
            return mac.encode()
    raise AssertionError(f"unexpected {parsed!r}")


# Any text, and text shaped like each payload (valid or nearly so), in every topic.
payload_texts = st.one_of(
    st.text(max_size=80), macs, macs.map(str.lower), st.builds("{};{}".format, names, sessions),
    st.builds("{};{};{}".format, names, sessions, st.integers(-1, 101)),
)


@given(topics, payload_texts)
def test_any_text_is_parsed_exactly_or_refused_with_a_known_reason(topic: str, text: str) -> None:
    payload = text.encode("utf-8", "surrogatepass")
    try:
        parsed = parse_server_message(topic, payload)
    except PayloadError as err:
        assert err.reason in REASONS, err.reason
        return
    # Accepted means nothing was lost or invented: written back, it is the payload (a MAC in upper case).
    assert reformat(parsed) == (payload.upper() if isinstance(parsed, MacJoin) else payload)
    assert topic in {str(t) for t in Topic}


@given(st.text(max_size=40))
def test_name_problem_matches_the_rule(name: str) -> None:
    ok = (1 <= len(name) <= MAX_NAME and all(0x20 <= ord(c) <= 0x7E for c in name) and ";" not in name
          and name == name.strip())
    assert (name_problem(name) is None) == ok


@given(st.text(max_size=24))
def test_session_rule_matches_the_specification(session: str) -> None:
    ok = 1 <= len(session) <= MAX_SESSION and all(0x21 <= ord(c) <= 0x7E for c in session) and ";" not in session
    assert (SESSION_RULE.problem(session) is None) == ok


_sqlite = sqlite3.connect(":memory:")
# Strings the CHECK constraints and the Python rule could disagree on: edges, spaces, the separator, non-ASCII.
tricky = st.text(st.sampled_from([" ", ";", "a", "~", "!", "\x7f", "\t", "é", "\u2028", "Z"]), max_size=32)


@pytest.mark.parametrize("rule", [NAME_RULE, SESSION_RULE], ids=lambda r: r.label)
@given(text=st.one_of(tricky, st.text(max_size=32)))
def test_the_databases_check_is_the_same_rule(rule: TextRule, text: str) -> None:
    # SQLite's text functions stop at a NUL character, so a CHECK cannot see one (nor what follows); the
    # parsers refuse it before anything is written. A stricter CHECK would be a schema change (a migration).
    assume("\x00" not in text)
    accepted = _sqlite.execute(f"SELECT {rule.sql_check(':v')}", {"v": text}).fetchone()[0]
    assert bool(accepted) == (rule.problem(text) is None), (text, rule.problem(text))


def first_problem(rule: TextRule, text: str) -> str | None:
    """The rule's parts in the order its messages promise, written out (what `problem` did before its patterns)."""
    if not text:
        return "empty"
    if len(text) > rule.max_length:
        return "too-long"
    if not text.isascii() or not text.isprintable() or (not rule.spaces and " " in text):
        return "characters"
    if ";" in text:
        return "separator"
    if rule.spaces and (text[0] == " " or text[-1] == " "):
        return "edge-spaces"
    return None


@pytest.mark.parametrize("rule", [NAME_RULE, SESSION_RULE], ids=lambda r: r.label)
@given(text=st.one_of(tricky, st.text(max_size=32), st.sampled_from(["a\n", " \n", "a \n", "\n"])))
def test_the_rules_patterns_find_the_first_problem(rule: TextRule, text: str) -> None:
    # The patterns are what the browser runs too (browser_data): the same code, in the same order.
    assert rule.problem(text) == first_problem(rule, text), text


@pytest.mark.parametrize("rule", [NAME_RULE, SESSION_RULE], ids=lambda r: r.label)
@given(text=st.one_of(tricky, st.text(max_size=32)))
def test_the_hot_paths_check_is_the_same_rule(rule: TextRule, text: str) -> None:
    assert rule.accepts(text) == (rule.problem(text) is None)


def test_every_problem_has_an_english_and_a_french_message() -> None:
    for rule in (NAME_RULE, SESSION_RULE):
        assert set(rule.messages) >= {"empty", "too-long", "characters", "separator"}
        for message in rule.messages.values():
            assert message.en and message.fr and message.en != message.fr
    assert NAME_RULE.problem(" salle") == NAME_RULE.problem("salle ") == "edge-spaces"
    assert NAME_RULE.messages["too-long"].fr == f"le nom a au plus {MAX_NAME} caractères"


def test_a_name_is_taken_as_a_name_or_as_a_session_name_of_another_device() -> None:
    renamed = (1, "salle B", "capteur01")  # renamed, its session still uses its old name
    assert name_taken("salle B", 2, [renamed]) and name_taken("capteur01", 2, [renamed])
    assert not name_taken("salle B", 1, [renamed]) and not name_taken("capteur01", 1, [renamed])
    assert not name_taken("capteur02", 2, [renamed, None])


def test_a_session_id_is_17_random_letters_and_digits_valid_for_the_protocol() -> None:
    """Not the time it was handed out (the specification's example `1743946777.603371` is one, and a visitor saw
    that time on /appareil/<id>: issue 23): 17 characters from `secrets`, accepted by SESSION_RULE and the parser."""
    before = time.time()
    ids = [new_session_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    database = sqlite3.connect(":memory:")  # the CHECK constraint of device.session_id
    check = f"SELECT {SESSION_RULE.sql_check('s')} FROM (SELECT ? AS s)"
    assert all(database.execute(check, (session,)).fetchone() == (1,) for session in ids)
    for session in ids:
        assert len(session) == MAX_SESSION and SESSION_RULE.problem(session) is None and session.isalnum()
        assert parse_session_ref(format_session_ref("capteur01", session)) == SessionRef("capteur01", session)
        try:
            when = float(session)
        except ValueError:
            continue
        assert abs(when - before) > 60, f"{session} reads as the time it was made"


@given(st.one_of(st.none(), sessions, st.text(max_size=20)))
def test_a_session_id_is_never_the_previous_one(previous: str | None) -> None:
    session = new_session_id(previous)
    assert session != previous and len(session) <= MAX_SESSION and SESSION_RULE.problem(session) is None


def test_a_session_id_differs_from_the_previous_one_even_if_chance_repeats_it(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter("A" * MAX_SESSION + "A" * MAX_SESSION + "B" * MAX_SESSION)
    monkeypatch.setattr(protocol.secrets, "choice", lambda _alphabet: next(draws))
    assert new_session_id("A" * MAX_SESSION) == "B" * MAX_SESSION
