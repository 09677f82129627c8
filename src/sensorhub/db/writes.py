"""The ingest writer's SQL: the statements each batch's transaction runs (`?` placeholders: db/dialect.py)."""

from __future__ import annotations

INSERT_DEVICE = (
    "INSERT INTO device (id, name, session_name, mac, online, session_id, joined_at, last_seen, presence_at) "
    "VALUES (?, ?, ?, ?, FALSE, ?, ?, ?, ?)"
)
NEW_SESSION = (
    "UPDATE device SET session_id = ?, session_name = ?, online = FALSE, lost = FALSE, presence_at = ? WHERE id = ?"
)
#: Never backwards: another worker may have stored a later message of the same device first. The same UPDATE
#: keeps each kind's latest value (db/latest.py): replaced only by a value at least as recent (a NULL time, no
#: reading of that kind in the batch, compares as unknown and keeps what is stored).
SET_LAST_SEEN = (
    "UPDATE device SET last_seen = CASE WHEN last_seen < ? THEN ? ELSE last_seen END"
    + "".join(f", last_{k} = CASE WHEN coalesce(last_{k}_at, '') <= ? THEN ? ELSE last_{k} END"
              f", last_{k}_at = CASE WHEN coalesce(last_{k}_at, '') <= ? THEN ? ELSE last_{k}_at END"
              for k in ("led", "button", "light"))
    + " WHERE id = ?"
)
NO_READING = (None, None)
RENAME = "UPDATE device SET name = ? WHERE id = ?"
QUARANTINE = "INSERT INTO quarantine (received_at, topic, payload, reason) VALUES (?, ?, ?, ?)"
#: A device row as the writer reads it (ingest/refresh.py turns it into the session engine's Device).
DEVICE_ROWS = (
    "SELECT id, name, session_name, mac, session_id, online, joined_at, last_seen, lost, presence_at FROM device"
)
