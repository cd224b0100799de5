"""The ingest path: MQTT listener, inbox, router, handlers and the single writer thread."""
