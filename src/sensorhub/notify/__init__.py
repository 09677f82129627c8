"""Alert notifications: the outbox's rows delivered through their channels (webhook, e-mail, MQTT), retried until
they are taken. The ingest client runs the dispatcher; the rows are written by sensorhub.db.alerts.enqueue in the
transaction that changed the alert. docs/alerts.md, "Channels"."""
