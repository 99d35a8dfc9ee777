"""JSON-lines logging and secret redaction, through the real logging machinery."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from asr_stream.app.logs import REDACTED, configure_logging, redact_text

KAFKA_PASSWORD = "kafka-pw-7f3a"
HTTP_TOKEN = "feed-token-91c2"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Root logging into a buffer via configure_logging; the previous handlers come back afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("DEBUG", known_secrets=[HTTP_TOKEN, ""], stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


def entries(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_call_id_from_extra(log_lines: io.StringIO) -> None:
    log = logging.getLogger("asr_stream.app.daemon")
    log.info("call %s answered: %d channels", "abc@pbx", 2, extra={"call_id": "abc@pbx"})
    log.warning("no call here")
    first, second = entries(log_lines)
    assert first["message"] == "call abc@pbx answered: 2 channels"
    assert (first["level"], first["logger"], first["call_id"]) == ("INFO", "asr_stream.app.daemon", "abc@pbx")
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert "call_id" not in second


def test_secrets_are_redacted_in_messages_arguments_extras_and_tracebacks(log_lines: io.StringIO) -> None:
    log = logging.getLogger("asr_stream.sinks.kafka")
    log.info("security settings: %s", {"security_protocol": "SASL_SSL", "sasl_plain_password": KAFKA_PASSWORD})
    log.info("GET /v1/transcripts?token=%s from 10.0.0.7", HTTP_TOKEN)
    log.info("upstream said: Authorization: Bearer abc.def-ghi")
    log.info("connect", extra={"password": KAFKA_PASSWORD, "call_id": "c1"})
    try:
        raise ConnectionError(f"auth failed with password={KAFKA_PASSWORD}")
    except ConnectionError:
        log.exception("broker refused us")
    log.info("the configured token %s appears without a key name", HTTP_TOKEN)
    text = log_lines.getvalue()
    assert KAFKA_PASSWORD not in text and HTTP_TOKEN not in text and "abc.def-ghi" not in text
    lines = entries(log_lines)
    assert lines[0]["message"] == "security settings: {'security_protocol': 'SASL_SSL', 'sasl_plain_password': '[redacted]'}"
    assert lines[1]["message"] == f"GET /v1/transcripts?token={REDACTED} from 10.0.0.7"
    assert lines[2]["message"] == f"upstream said: Authorization: Bearer {REDACTED}"
    assert (lines[3]["password"], lines[3]["call_id"]) == (REDACTED, "c1")
    assert "ConnectionError: auth failed with password=[redacted]" in lines[4]["exception"]
    assert lines[5]["message"] == f"the configured token {REDACTED} appears without a key name"


def test_ordinary_text_is_left_alone() -> None:
    text = "token bucket refilled; 3 passwords rotated; tokenizer loaded from tokenizer.json"
    assert redact_text(text) == text
    assert redact_text('{"auth_token": "abc", "listen": "0.0.0.0:8080"}') == '{"auth_token": "[redacted]", "listen": "0.0.0.0:8080"}'


def test_plain_text_format_for_terminals_is_redacted_too() -> None:
    root = logging.getLogger()
    saved = list(root.handlers)
    stream = io.StringIO()
    handler = configure_logging("INFO", json_lines=False, stream=stream)
    try:
        logging.getLogger("asr_stream.cli").info("ssl_password=%s", "hunter2")
    finally:
        root.removeHandler(handler)
        for old in saved:
            root.addHandler(old)
    assert stream.getvalue().rstrip().endswith(f"INFO asr_stream.cli: ssl_password={REDACTED}")


def test_a_named_process_says_so_in_every_line_in_both_formats() -> None:
    """With workers: N every process logs the same format, with its name in a `process` field."""
    root = logging.getLogger()
    saved = list(root.handlers)
    json_stream, text_stream = io.StringIO(), io.StringIO()
    try:
        for stream, json_lines in ((json_stream, True), (text_stream, False)):
            handler = configure_logging("INFO", json_lines=json_lines, stream=stream, process="worker-3")
            logging.getLogger("asr_stream.app.workers.ingest").info("call %s opened", "c1", extra={"call_id": "c1"})
            root.removeHandler(handler)
    finally:
        for old in saved:
            root.addHandler(old)
    [entry] = entries(json_stream)
    assert (entry["process"], entry["message"], entry["call_id"]) == ("worker-3", "call c1 opened", "c1")
    assert list(entry)[:5] == ["time", "level", "logger", "process", "message"]
    assert " INFO [worker-3] asr_stream.app.workers.ingest: call c1 opened" in text_stream.getvalue()
