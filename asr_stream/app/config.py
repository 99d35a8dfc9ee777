"""The daemon's configuration: one YAML file, overridable from the environment, validated up front.

Validation uses JSON Schema (the `jsonschema` library) rather than hand-written checks so that
`asr-stream config check FILE` can report *every* problem with its path in one pass, and so the
schema doubles as the reference for operators (`asr-stream config schema`).

Environment overrides: `ASR_STREAM__<SECTION>__<KEY>=value` sets `section.key` (any depth, `__`
separates levels, names are case-insensitive); the value is parsed as a YAML scalar, so
`ASR_STREAM__SCHEDULER__MAX_BATCH=16` is the integer 16. Overrides let a container image keep one
config file and take per-deployment addresses and secrets from its environment.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from asr_stream.audio.segmenter import SegmenterConfig

ENV_PREFIX = "ASR_STREAM__"

_HOSTPORT = {"type": "string", "pattern": r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):[0-9]{1,5}$"}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}

_HEX64 = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
_SIP_AUTH = {
    "type": "object",
    "additionalProperties": False,
    "required": ["realm", "users"],
    "description": "SIP digest authentication (RFC 7616/8760); absent: off",
    "properties": {
        "realm": {"type": "string", "minLength": 1, "pattern": r'^[^"\\\r\n]+$'},
        "methods": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": ["INVITE", "BYE", "OPTIONS"]}},
        "algorithms": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": ["SHA-256", "SHA-512-256", "MD5"]}},
        "proxy": {"type": "boolean"},
        "nonce_ttl_s": _POSITIVE,
        "max_tracked_nonces": {"type": "integer", "minimum": 1},
        "users": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": {
                    "password": {"type": "string", "minLength": 1},
                    "ha1": {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {"SHA-256": _HEX64, "SHA-512-256": _HEX64, "MD5": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}},
                    },
                },
            },
        },
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["model"],
    "properties": {
        "sip": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "listen": _HOSTPORT,
                "advertised_address": {"type": "string", "description": "address put in SDP c= lines (defaults to the listen host)"},
                "max_calls": {"type": "integer", "minimum": 1},
                "retry_after_s": {"type": "integer", "minimum": 1},
                "allowed_sources": {
                    "type": "array",
                    "uniqueItems": True,
                    "items": {"type": "string", "pattern": r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"},
                    "description": "CIDRs allowed to send SIP; empty: all (docs/security.md)",
                },
                "auth": _SIP_AUTH,
            },
        },
        "rtp": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "port_range": {"type": "array", "items": _PORT, "minItems": 2, "maxItems": 2},
                "bind": {"type": "string"},
                "latching": {"type": "boolean"},
                "timeout_s": _POSITIVE,
                "playout_delay_ms": {"type": "integer", "minimum": 0, "maximum": 1000},
            },
        },
        "webrtc": {
            "type": "object",
            "additionalProperties": False,
            "description": "WHIP ingest (POST /v1/whip) for browser softphones and agent microphones",
            "properties": {
                "enabled": {"type": "boolean"},
                "max_sessions": {"type": "integer", "minimum": 1},
                "inactivity_timeout_s": _POSITIVE,
            },
        },
        "http": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "listen": _HOSTPORT,
                "auth_token": {"type": "string", "description": "bearer token for the page and WebSockets (set it from the environment)"},
                "require_auth": {"type": ["boolean", "null"], "description": "null: required unless listening on loopback"},
                "max_websockets": {"type": "integer", "minimum": 1},
                "max_request_bytes": {"type": "integer", "minimum": 1024},
            },
        },
        "kafka": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "bootstrap_servers": {"type": "string", "minLength": 1},
                "topic": {"type": "string", "pattern": r"^[A-Za-z0-9._\-]{1,249}$"},
                "partitions": {"type": "integer", "minimum": 1},
                "spool_dir": {"type": "string"},
                "embedded": {"type": "boolean", "description": "start the bundled Tansu broker on bootstrap_servers (local demo)"},
                "security": {"type": "object", "description": "passed to kafka-python as is (security_protocol, sasl_*, ssl_*)"},
            },
        },
        "model": {"type": "string", "minLength": 1},
        "backend": {"enum": ["onnxruntime", "tensorrt", "torch"]},
        "engines_dir": {"type": "string"},
        "language": {"type": ["string", "null"]},
        "vad": {"type": "object"},
        "segmenter": {"type": "object"},
        "scheduler": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_batch": {"type": "integer", "minimum": 1, "maximum": 1024},
                "max_wait_ms": {"type": "number", "minimum": 0},
                "max_queue": {"type": "integer", "minimum": 1},
                "partial_interval_s": _POSITIVE,
                "final_deadline_s": _POSITIVE,
                "workers": {"type": "integer", "minimum": 1},
            },
        },
    },
}

DEFAULTS: dict[str, Any] = {
    "sip": {"listen": "0.0.0.0:5060", "max_calls": 200, "retry_after_s": 5, "allowed_sources": []},
    "rtp": {"port_range": [20000, 20999], "bind": "0.0.0.0", "latching": True, "timeout_s": 30, "playout_delay_ms": 60},
    "http": {"listen": "127.0.0.1:8080", "require_auth": None},
    "webrtc": {"enabled": True, "max_sessions": 64, "inactivity_timeout_s": 30},
    "kafka": {
        "bootstrap_servers": "127.0.0.1:9092",
        "topic": "asr.transcripts",
        "partitions": 1,
        "spool_dir": "var/spool",
        "embedded": False,
        "security": {},
    },
    "model": "whisper-tiny.en",
    "backend": "onnxruntime",
    "engines_dir": "engines",
    "language": None,
    "vad": {},
    "segmenter": {},
    "scheduler": {
        "max_batch": 8,
        "max_wait_ms": 30,
        "max_queue": 256,
        "partial_interval_s": 1.0,
        "final_deadline_s": 1.5,
        "workers": 1,
    },
}


class ConfigError(ValueError):
    """A configuration that cannot be used; `problems` lists each one as 'path: message'."""

    def __init__(self, source: str, problems: list[str]):
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return overrides


def _problems(document: Any) -> Iterator[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        yield f"{path}: {error.message}"
    segmenter = document.get("segmenter") if isinstance(document, dict) else None
    if isinstance(segmenter, dict):
        try:
            SegmenterConfig(**segmenter)
        except (TypeError, ValueError) as error:  # unknown key, or values that contradict each other
            yield f"segmenter: {error}"
    port_range = document.get("rtp", {}).get("port_range") if isinstance(document, dict) else None
    valid_shape = isinstance(port_range, list) and len(port_range) == 2 and all(isinstance(p, int) for p in port_range)
    if valid_shape and port_range[0] >= port_range[1]:
        yield f"rtp.port_range: first port {port_range[0]} must be below the last {port_range[1]}"


@dataclass(frozen=True)
class Config:
    """The validated configuration; sections are plain dicts with every default filled in."""

    raw: dict[str, Any]
    source: str = "<defaults>"

    def secrets(self) -> list[str]:
        """Values logs must never show: the HTTP token, SIP credentials, Kafka credentials."""
        values = [self.raw["http"].get("auth_token")]
        for user in self.raw["sip"].get("auth", {}).get("users", {}).values():
            values += [user.get("password"), *user.get("ha1", {}).values()]
        values += [value for key, value in self.raw["kafka"]["security"].items() if "password" in key or "key" in key]
        return [str(value) for value in values if value]

    def __getattr__(self, section: str) -> Any:
        try:
            return self.raw[section]
        except KeyError:
            raise AttributeError(section) from None


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read `path` (YAML; None for defaults only), apply environment overrides, validate.

    Raises ConfigError listing every problem found, each with its path in the document.
    """
    source = str(path) if path is not None else "<defaults>"
    document: Any = {}
    if path is not None:
        try:
            document = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(source, [f"(file): cannot read: {exc.strerror}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError(source, [f"(file): not valid YAML: {str(exc).splitlines()[0]}"]) from None
        if not isinstance(document, dict):
            raise ConfigError(source, ["(top level): expected a mapping of sections"])
    merged = _merge(DEFAULTS, _merge(document, _env_overrides(os.environ if environ is None else environ)))
    problems = list(_problems(merged))
    if problems:
        raise ConfigError(source, problems)
    return Config(raw=merged, source=source)


def split_hostport(value: str) -> tuple[str, int]:
    """'127.0.0.1:5060' -> ('127.0.0.1', 5060); '[::1]:5060' -> ('::1', 5060)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)
