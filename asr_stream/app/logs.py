"""Structured logs: one JSON object per line, with secrets redacted before anything is written.

JSON lines because the daemon runs under journald, Docker or Kubernetes, whose log shippers
(Loki, Fluent Bit, Elastic) index fields without fragile regexes; `call_id` is a field of its own
so an operator can pull every line of one citizen's call (`logger.info(..., extra={"call_id": id})`).

A daemon with several processes (`workers: N`) logs the same format from each, with a
`process` field ("main", "inference", "worker-0", ...): each child configures its own handler
from the main process's `LogSettings` and writes to the stderr it inherited, one line per record.

Redaction is a handler filter, not a convention: a Kafka SASL password in a config dump, a
bearer token in an exception message, or `?token=` in a URL must not reach disk whichever logger
(ours, aiohttp's, kafka-python's) produced the line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

REDACTED = "[redacted]"

# Key names whose values are secrets wherever they appear: as `extra` fields, as mapping keys in
# log arguments, or as `key=value` / `"key": "value"` text inside a message.
SECRET_KEYS = frozenset(
    {
        "token",
        "auth_token",
        "access_token",
        "password",
        "passwd",
        "secret",
        "api_key",
        "authorization",
        "sasl_plain_password",
        "sasl_oauth_token",
        "ssl_password",
    }
)

_KEY_VALUE = re.compile(
    # The value may not start with "[" (already redacted) or be an auth scheme (_BEARER's job).
    r"""(?P<key>\b(?:{}))(?P<sep>["']?\s*[:=]\s*["']?)(?!Bearer\b|Basic\b)(?P<value>[^\s"',;&}}\]\[]+)""".format(
        "|".join(sorted(SECRET_KEYS, key=len, reverse=True))
    ),
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def redact_text(text: str, known_secrets: Iterable[str] = ()) -> str:
    """`text` with secret-looking values and every known secret value replaced by REDACTED."""
    for secret in known_secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _BEARER.sub(lambda match: f"{match.group(1)} {REDACTED}", text)
    return _KEY_VALUE.sub(lambda match: f"{match.group('key')}{match.group('sep')}{REDACTED}", text)


class RedactSecrets(logging.Filter):
    """Rewrites each record in place: message (arguments merged in), exception text, extras.

    `known_secrets` are the configured secret values themselves (HTTP token, Kafka password):
    replacing them verbatim catches a secret even where no key name gives it away.
    """

    def __init__(self, known_secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.known_secrets = tuple(secret for secret in known_secrets if secret)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage(), self.known_secrets)
        record.args = None
        if record.exc_info:
            # Format once here so the traceback text is redacted too; formatters reuse exc_text.
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info), self.known_secrets)
            record.exc_info = None
        for name, value in list(vars(record).items()):
            if name in _STANDARD_ATTRIBUTES:
                continue
            if name.lower() in SECRET_KEYS:
                setattr(record, name, REDACTED)
            elif isinstance(value, str):
                setattr(record, name, redact_text(value, self.known_secrets))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, [process,] message, then call_id and other extras."""

    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        if self.process is not None:
            entry["process"] = self.process
        entry["message"] = record.getMessage()
        entry.update((name, value) for name, value in vars(record).items() if name not in _STANDARD_ATTRIBUTES)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


# Libraries whose INFO lines are per-connection chatter (kafka-python logs every metadata refresh
# and reconnect): at the daemon's INFO they would bury its own lines, so they log warnings only.
CHATTY_LIBRARIES = ("kafka", "aioice", "aiortc")


def configure_logging(
    level: str | int = "INFO",
    *,
    json_lines: bool = True,
    known_secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    process: str | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one redacting handler on `stream` (stderr).

    `json_lines=False` gives a plain one-line format for a developer's terminal; redaction
    applies either way. `process` names this process in every line (multi-process daemon).
    Returns the handler, for whoever must remove it again (tests).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RedactSecrets(known_secrets))
    tag = f" [{process}]" if process else ""
    text_format = f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s"
    handler.setFormatter(JsonFormatter(process) if json_lines else logging.Formatter(text_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler


@dataclass(frozen=True)
class LogSettings:
    """How the daemon logs, handed to its child processes so that they log the same way."""

    level: str | int = "INFO"
    json_lines: bool = True
    known_secrets: tuple[str, ...] = ()

    def apply(self, process: str | None = None) -> logging.Handler:
        return configure_logging(self.level, json_lines=self.json_lines, known_secrets=self.known_secrets, process=process)
