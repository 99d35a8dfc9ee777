"""The application layer: the daemon as composition root, its config, HTTP API, metrics and logs.

`daemon.Daemon` wires ingest -> audio -> inference -> transcript -> sinks for live calls,
`offline` does the same for files; nothing below this layer knows about the others' wiring.
"""
