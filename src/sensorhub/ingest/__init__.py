"""The ingest client: MQTT in, database and LED commands out."""
