"""The rules of the protocol's text fields, names and session ids, as data: one home for each.

Their checks on the hot path, the database's CHECK constraints (db/models.py), the web API's French messages
and the browser's checks (rendered into each page by protocol.browser_data) all come from here. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

#: Separates the fields of every payload; never part of a name or a session id.
SEPARATOR: Final = ";"
# Sizes from the specification: a MAC address is exactly 17 characters, a name at most 29 (30 with the
# ESP32's trailing zero), a session id at most 17 (18); a reading's value at most 3 ("100").
MAC_LENGTH: Final = 17
MAX_NAME: Final = 29
MAX_SESSION: Final = 17
MAX_VALUE: Final = 3


@dataclass(frozen=True, slots=True)
class Message:
    """One message in the two languages sensorhub speaks: English (logs, protocol) and French (web UI)."""

    en: str
    fr: str


@dataclass(frozen=True, slots=True)
class TextRule:
    """How a text field of the protocol is written: 1 to `max_length` printable ASCII characters, never the
    separator; with `spaces`, inner spaces are allowed (not at either end), otherwise none at all."""

    label: str
    max_length: int
    spaces: bool
    messages: Mapping[str, Message]
    #: Whether `text` follows the rule: `problem(text) is None` as one expression, for the hot path.
    accepts: Callable[[str], bool] = field(init=False, repr=False, compare=False)
    _compiled: tuple[tuple[str, re.Pattern[str]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        longest = self.max_length
        if self.spaces:
            def accepts(text: str) -> bool:
                return (0 < len(text) <= longest and text.isascii() and text.isprintable() and SEPARATOR not in text
                        and text[0] != " " and text[-1] != " ")
        else:
            def accepts(text: str) -> bool:
                return (0 < len(text) <= longest and text.isascii() and text.isprintable() and " " not in text
                        and SEPARATOR not in text)
        object.__setattr__(self, "accepts", accepts)
        object.__setattr__(self, "_compiled", tuple((code, re.compile(pattern)) for code, pattern in self.checks))

    @property
    def checks(self) -> tuple[tuple[str, str], ...]:
        r"""The rule's parts in the order they are checked: (code, pattern that finds text breaking it).

        The patterns mean the same to Python's `re` and to JavaScript's `RegExp` with flag `u` (a character is
        a code point in both): no `$`, which Python also matches before a final newline, but `(?![\s\S])`.
        `problem` runs them here, the pages' scripts in the browser (browser_data): one rule, one order.
        """
        found = [("empty", r"^(?![\s\S])"), ("too-long", rf"^[\s\S]{{{self.max_length + 1}}}"),
                 ("characters", f"[^{self.characters}]"), ("separator", f"[{SEPARATOR}]")]
        if self.spaces:
            found.append(("edge-spaces", r"^ | (?![\s\S])"))
        return tuple(found)

    def problem(self, text: str) -> str | None:
        """The code of the first part of the rule `text` breaks (a key of `messages`), or None."""
        for code, pattern in self._compiled:
            if pattern.search(text):
                return code
        return None

    @property
    def characters(self) -> str:
        """The allowed characters as a range, the same in a SQLite GLOB and a JavaScript class: ` -~`."""
        return " -~" if self.spaces else "!-~"

    def sql_check(self, column: str) -> str:
        """The rule as a SQLite boolean expression on `column` (for a CHECK constraint)."""
        sql = (f"length({column}) BETWEEN 1 AND {self.max_length} AND instr({column}, '{SEPARATOR}') = 0 "
               f"AND {column} NOT GLOB '*[^{self.characters}]*'")
        if self.spaces:
            sql += f" AND {column} = trim({column})"
        return sql

    def browser_data(self) -> dict[str, object]:
        """The rule for the web pages' scripts, with the French messages they show."""
        return {"maxLength": self.max_length, "checks": [list(check) for check in self.checks],
                "messages": {code: message.fr for code, message in self.messages.items()}}


NAME_RULE: Final = TextRule("name", MAX_NAME, spaces=True, messages={
    "empty": Message("a name cannot be empty", "le nom ne peut pas être vide"),
    "too-long": Message(f"a name has at most {MAX_NAME} characters", f"le nom a au plus {MAX_NAME} caractères"),
    "characters": Message("a name is made of printable ASCII characters",
                          "le nom ne peut contenir que des caractères ASCII imprimables (sans accents)"),
    "separator": Message(f"a name cannot contain '{SEPARATOR}'", f"le nom ne peut pas contenir de « {SEPARATOR} »"),
    "edge-spaces": Message("a name cannot start or end with a space",
                           "le nom ne peut ni commencer ni finir par une espace"),
})
_SESSION_MESSAGE: Final = Message(
    f"a session id has 1 to {MAX_SESSION} characters, no space or '{SEPARATOR}'",
    f"un identifiant de session a de 1 à {MAX_SESSION} caractères, sans espace ni « {SEPARATOR} »",
)
SESSION_RULE: Final = TextRule("session id", MAX_SESSION, spaces=False, messages=dict.fromkeys(
    ("empty", "too-long", "characters", "separator"), _SESSION_MESSAGE))


def name_taken(name: str, device_id: int | None, holders: Iterable[tuple[int, str, str] | None]) -> bool:
    """Whether a device other than `device_id` holds `name`, among `holders` given as (id, name, session name).

    Payloads name a device by the name of its session, people by its current name: a name belongs to one
    device in both roles, so a rename never makes a payload ambiguous. The database's UNIQUE constraints
    and triggers (db/engine.py) refuse what this would refuse; callers check first to say why.
    """
    return any(holder is not None and holder[0] != device_id and name in (holder[1], holder[2])
               for holder in holders)
