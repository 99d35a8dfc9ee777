"""The daemon's configuration: one YAML file, overridable from the environment, validated up front.

Each section is a typed model (pydantic) whose defaults are the components' own: a default lives
once, on the dataclass of the component it configures (`IngestConfig`, `KafkaSettings`,
`SegmenterConfig`, ...), and the section refers to it. The JSON Schema that operators read
(`asr-stream config schema`) is generated from the same models, so schema, defaults and the
daemon cannot disagree. Pydantic rather than hand-written checks: it reports every problem with
its path in one pass and writes the schema.

`load_config` does everything `serve` does before it binds a socket: parse, apply the environment,
validate every field, and build every component's settings (`Config.components`), whose own
checks (an HTTP listener reachable from other hosts needs a token, a digest realm must be quotable,
...) run there too. So `asr-stream config check` says "ok" exactly when `serve` would start.

Environment overrides: `ASR_STREAM__<SECTION>__<KEY>=value` sets `section.key` (any depth, `__`
separates levels, names are case-insensitive); the value is parsed as a YAML scalar, so
`ASR_STREAM__SCHEDULER__MAX_BATCH=16` is the integer 16. Overrides let a container image keep one
config file and take per-deployment addresses and secrets from its environment.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from asr_stream.app.http_api import HttpSettings, is_loopback
from asr_stream.audio.segmenter import SegmenterConfig
from asr_stream.audio.vad_batch import TICK_S as VAD_TICK_S
from asr_stream.errors import OperatorError
from asr_stream.inference.hotwords import DEFAULT_BOOST, HotwordError, HotwordLists, parse_hotwords, read_hotwords_file
from asr_stream.inference.scheduler import SchedulerSettings
from asr_stream.ingest.telephony import IngestConfig
from asr_stream.ingest.webrtc.session import WhipConfig
from asr_stream.rtp.codecs import supported_encodings
from asr_stream.rtp.receiver import Latching
from asr_stream.sinks.kafka import KafkaSettings
from asr_stream.sip import DigestAuthConfig, DigestCredential, InviteRateLimit, SipServerConfig, TransportLimits
from asr_stream.transcript.partials import PartialPolicy
from asr_stream.transcript.script import ChineseScript

ENV_PREFIX = "ASR_STREAM__"


def split_hostport(value: str) -> tuple[str, int]:
    """'127.0.0.1:5060' -> ('127.0.0.1', 5060); '[::1]:5060' -> ('::1', 5060)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _port_in_range(value: str) -> str:
    # The pattern allows five digits; bind() would refuse 65536 and up only at start, with a traceback.
    if split_hostport(value)[1] > 65535:
        raise ValueError(f"port {split_hostport(value)[1]} is above 65535")
    return value


def _ip_address(value: str) -> str:
    # Receivers bind per call: a typo here would only show as every call failing.
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


HostPort = Annotated[
    str, Field(pattern=r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):[0-9]{1,5}$", description="host:port"), AfterValidator(_port_in_range)
]
Port = Annotated[int, Field(ge=1, le=65535)]
Positive = Annotated[float, Field(gt=0)]
ListName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="what X-ASR-Hotwords names")]
Hex64 = Annotated[str, Field(pattern="^[0-9a-fA-F]{64}$")]


class ConfigError(OperatorError):
    """A configuration that cannot be used; `problems` lists each one as 'path: message'."""

    def __init__(self, source: str, problems: list[str]):
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


class _Section(BaseModel):
    """A config section; `build()` makes its component's settings, whose own checks then run too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def build(self) -> object:
        return None

    @model_validator(mode="after")
    def _component_accepts_it(self) -> _Section:
        # In the same validation pass as the field checks, so `config check` lists every problem at once.
        self.build()
        return self


# -- sections ------------------------------------------------------------------------------------


class SipUser(_Section):
    password: Annotated[str, Field(min_length=1)] | None = None
    ha1: dict[Literal["SHA-256", "SHA-512-256", "MD5"], str] = Field(default_factory=dict, description="precomputed HA1 per algorithm")

    @model_validator(mode="after")
    def _has_a_secret(self) -> SipUser:
        if self.password is None and not self.ha1:
            raise ValueError("a user needs a password or an ha1")
        return self


class SipAuthSection(_Section):
    """SIP digest authentication (RFC 7616/8760); absent: off."""

    realm: Annotated[str, Field(min_length=1, pattern=r'^[^"\\\r\n]+$')]
    users: Annotated[dict[str, SipUser], Field(min_length=1)]
    methods: tuple[Literal["INVITE", "BYE", "OPTIONS"], ...] = DigestAuthConfig.methods  # type: ignore[assignment]
    algorithms: tuple[Literal["SHA-256", "SHA-512-256", "MD5"], ...] = DigestAuthConfig.algorithms  # type: ignore[assignment]
    proxy: bool = DigestAuthConfig.proxy
    nonce_ttl_s: Positive = DigestAuthConfig.nonce_ttl_s
    max_tracked_nonces: Annotated[int, Field(ge=1)] = DigestAuthConfig.max_tracked_nonces

    def build(self) -> DigestAuthConfig:
        # .items(): a dict keyed by the Literal algorithm names is not a dict[str, str] to mypy; its pairs are.
        users = {name: DigestCredential(password=user.password, ha1=dict(user.ha1.items())) for name, user in self.users.items()}
        return DigestAuthConfig(
            realm=self.realm,
            users=users,
            methods=self.methods,
            algorithms=self.algorithms,
            proxy=self.proxy,
            nonce_ttl_s=self.nonce_ttl_s,
            max_tracked_nonces=self.max_tracked_nonces,
        )


class InviteRateSection(_Section):
    """New-call INVITEs per source address (docs/security.md); `sip.invite_rate_limit: null` turns it off."""

    per_second: Positive = InviteRateLimit.per_second
    burst: Annotated[int, Field(ge=1)] = InviteRateLimit.burst

    def build(self) -> InviteRateLimit:
        return InviteRateLimit(per_second=self.per_second, burst=self.burst)


class SipTcpSection(_Section):
    """Limits on SIP over TCP: connections in all and per source (oldest idle evicted), idle timeout."""

    max_connections: Annotated[int, Field(ge=1)] = TransportLimits.max_tcp_connections
    max_connections_per_source: Annotated[int, Field(ge=1)] = TransportLimits.max_tcp_connections_per_source
    idle_timeout_s: Positive = TransportLimits.tcp_idle_timeout_s

    def build(self) -> TransportLimits:
        return TransportLimits(
            max_tcp_connections=self.max_connections,
            max_tcp_connections_per_source=self.max_connections_per_source,
            tcp_idle_timeout_s=self.idle_timeout_s,
        )


class SipSection(_Section):
    listen: HostPort = f"{SipServerConfig.host}:{SipServerConfig.port}"
    advertised_address: str | None = Field(default=None, description="address put in SDP c= lines (defaults to the listen host)")
    max_calls: Annotated[int, Field(ge=1)] = SipServerConfig.max_calls
    retry_after_s: Annotated[int, Field(ge=1)] = SipServerConfig.retry_after_s
    allowed_sources: tuple[Annotated[str, Field(pattern=r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$")], ...] = Field(
        default=SipServerConfig.allowed_sources, description="CIDRs allowed to send SIP; empty: all (docs/security.md)"
    )
    auth: SipAuthSection | None = None
    invite_rate_limit: InviteRateSection | None = InviteRateSection()
    tcp: SipTcpSection = SipTcpSection()

    def build(self) -> SipServerConfig:
        host, port = split_hostport(self.listen)
        return SipServerConfig(
            host=host,
            port=port,
            advertised_address=self.advertised_address,
            max_calls=self.max_calls,
            retry_after_s=self.retry_after_s,
            allowed_sources=self.allowed_sources,
            auth=self.auth.build() if self.auth is not None else None,
            invite_rate_limit=self.invite_rate_limit.build() if self.invite_rate_limit is not None else None,
            limits=self.tcp.build(),
            # Everything the RTP stage decodes (Opus listed first); sdp.negotiate picks the
            # offerer's most preferred of these, so this order only documents our preference.
            accepted_codecs=tuple(supported_encodings()),
        )


class RtpSection(_Section):
    port_range: tuple[Port, Port] = (IngestConfig.rtp_port_min, IngestConfig.rtp_port_max)
    bind: Annotated[str, AfterValidator(_ip_address)] = IngestConfig.rtp_host
    latching: bool = Field(default=IngestConfig.latching is Latching.FIRST, description="send to where RTP comes from (NAT)")
    timeout_s: Positive = IngestConfig.rtp_timeout_s
    playout_delay_ms: Annotated[int, Field(ge=0, le=1000)] = round(IngestConfig.playout_delay_s * 1000)

    @field_validator("port_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] >= value[1]:
            raise ValueError(f"first port {value[0]} must be below the last {value[1]}")
        return value


class WebRtcSection(_Section):
    """WHIP ingest (POST /v1/whip) for browser softphones and agent microphones."""

    enabled: bool = True
    max_sessions: Annotated[int, Field(ge=1)] = WhipConfig.max_sessions
    inactivity_timeout_s: Positive = WhipConfig.inactivity_timeout_s

    def build(self) -> WhipConfig:
        return WhipConfig(max_sessions=self.max_sessions, inactivity_timeout_s=self.inactivity_timeout_s)


class HttpSection(_Section):
    listen: HostPort = "127.0.0.1:8080"
    auth_token: str | None = Field(default=None, description="bearer token for the page and WebSockets (set it from the environment)")
    require_auth: bool | None = Field(default=None, description="null: required unless listening on loopback")
    max_websockets: Annotated[int, Field(ge=1)] = HttpSettings.max_websockets
    max_request_bytes: Annotated[int, Field(ge=1024)] = HttpSettings.max_request_bytes

    def build(self) -> HttpSettings:
        host, _ = split_hostport(self.listen)
        return HttpSettings(
            auth_token=self.auth_token or None,
            require_auth=not is_loopback(host) if self.require_auth is None else self.require_auth,
            max_websockets=self.max_websockets,
            max_request_bytes=self.max_request_bytes,
        )


class KafkaSection(_Section):
    bootstrap_servers: Annotated[str, Field(min_length=1)] = "127.0.0.1:9092"
    topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._\-]{1,249}$")] = KafkaSettings.topic
    partitions: Annotated[int, Field(ge=1)] = Field(default=KafkaSettings.partitions, description="used when the daemon creates the topic")
    spool_dir: str = Field(default=str(KafkaSettings.spool_dir), description="the spool and the open-calls journal (docs/operations.md)")
    spool_max_bytes: Annotated[int, Field(ge=2**20)] = KafkaSettings.spool_max_bytes
    request_timeout_ms: Annotated[int, Field(ge=100)] = KafkaSettings.request_timeout_ms
    delivery_timeout_ms: Annotated[int, Field(ge=100)] = Field(
        default=KafkaSettings.delivery_timeout_ms, description="how long a batch may wait for its acknowledgement before it is spooled"
    )
    in_doubt_retry_ms: Annotated[int, Field(ge=100)] = Field(
        default=KafkaSettings.in_doubt_retry_ms,
        description="how long the producer retries a spooled batch in doubt with its original sequence numbers (written once)",
    )
    embedded: bool = Field(default=False, description="start the bundled Tansu broker on bootstrap_servers (local demo)")
    security: dict[str, Any] = Field(default_factory=dict, description="passed to kafka-python as is (security_protocol, sasl_*, ssl_*)")

    @model_validator(mode="after")
    def _embedded_is_local(self) -> KafkaSection:
        host = split_hostport(self.bootstrap_servers)[0] if ":" in self.bootstrap_servers else self.bootstrap_servers
        if self.embedded and not is_loopback(host):
            raise ValueError(f"embedded: true starts a local broker, so bootstrap_servers must be on loopback, not {host}")
        return self

    def build(self) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.bootstrap_servers,
            topic=self.topic,
            partitions=self.partitions,
            spool_dir=Path(self.spool_dir),
            spool_max_bytes=self.spool_max_bytes,
            request_timeout_ms=self.request_timeout_ms,
            delivery_timeout_ms=self.delivery_timeout_ms,
            in_doubt_retry_ms=self.in_doubt_retry_ms,
            security=self.security,
        )


class VadSection(_Section):
    """Speech detection and segmentation per channel (Silero VAD + the segmenter, docs/vad.md)."""

    start_threshold: Annotated[float, Field(ge=0, le=1)] = SegmenterConfig.start_threshold
    stop_threshold: Annotated[float, Field(ge=0, le=1)] = SegmenterConfig.stop_threshold
    min_speech_ms: Annotated[int, Field(ge=0)] = SegmenterConfig.min_speech_ms
    min_silence_ms: Annotated[int, Field(ge=0)] = SegmenterConfig.min_silence_ms
    pre_speech_pad_ms: Annotated[int, Field(ge=0)] = SegmenterConfig.pre_speech_pad_ms
    post_speech_pad_ms: Annotated[int, Field(ge=0)] = SegmenterConfig.post_speech_pad_ms
    max_segment_ms: Annotated[int, Field(gt=0)] = SegmenterConfig.max_segment_ms
    split_search_ms: Annotated[int, Field(gt=0)] = SegmenterConfig.split_search_ms
    batch_tick_ms: Annotated[float, Field(ge=0, le=1000)] = Field(
        default=VAD_TICK_S * 1000,
        description="score every channel's VAD windows in one batch per tick (adds up to a tick of latency); 0: each channel scores its own",
    )

    def build(self) -> SegmenterConfig:
        return SegmenterConfig(**self.model_dump(exclude={"batch_tick_ms"}))


# On a GPU a final batch costs about as much for 30 finals as for 10, and an early final is asked for
# ~300 ms before its segment closes: waiting up to 150 ms for company halved the finals' GPU time and
# gave partials 1.75x as many turns at the same end of speech -> final p95 (H200, 2,000 channels,
# docs/benchmarks.md, "2026-12-04, fifth and sixth sessions"). On a CPU a batch costs its rows, so waiting buys nothing there.
GPU_FINAL_MAX_WAIT_MS = 150.0


class SchedulerSection(_Section):
    max_batch: Annotated[int, Field(ge=1, le=1024)] = SchedulerSettings.max_batch
    max_wait_ms: Annotated[float, Field(ge=0)] = SchedulerSettings.max_wait_s * 1000
    final_max_wait_ms: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="with final_lane: how long the oldest final waits for company; null: 150 on backend torch, else max_wait_ms",
    )
    max_queue: Annotated[int, Field(ge=1)] = SchedulerSettings.max_queue
    partial_interval_s: Positive = Field(default=PartialPolicy.interval_s, description="least time between two partials of a segment")
    partial_min_new_speech_s: Annotated[float, Field(ge=0)] = Field(
        default=PartialPolicy.min_new_speech_s, description="new voiced audio a partial needs since the segment's last one"
    )
    partial_prefix: bool = Field(default=PartialPolicy.reuse_prefix, description="decode only a partial's tail after the agreed tokens")
    final_prefix: bool = Field(default=PartialPolicy.final_prefix, description="force the agreed tokens on the final too")
    early_final: bool = Field(
        default=PartialPolicy.early_final, description="ask for a final during its closing silence, once its audio is settled"
    )
    final_lane: bool = Field(default=SchedulerSettings.final_lane, description="a worker of their own for finals (never behind a partial)")
    partial_nice: Annotated[int, Field(ge=0, le=19)] = Field(
        default=SchedulerSettings.partial_nice, description="with final_lane: how much nicer the partial threads run (Linux)"
    )
    partial_engine_threads: Annotated[int, Field(ge=1)] | None = Field(
        default=1, description="onnxruntime: partials on sessions of their own with this many threads; null: shared with finals"
    )
    # On by default: finals first is the scheduler's first rule. Measured on an H200 at 2,000 channels
    # (docs/benchmarks.md): p95 endpoint -> final 450 -> 354 ms, partials per segment 1.32 -> 0.57.
    finals_pause_partials: bool = Field(
        default=True, description="torch: a running partial batch pauses while a final batch runs (the GPU to the finals)"
    )
    final_deadline_s: Positive = SchedulerSettings.final_deadline_s
    engine_threads: Annotated[int, Field(ge=1)] = Field(default=SchedulerSettings.threads, description="threads calling the engine")

    def build(self, engine_max_batch: int = 1024, backend: str = "onnxruntime") -> SchedulerSettings:
        final_max_wait_ms = self.final_max_wait_ms
        if final_max_wait_ms is None and backend == "torch":
            final_max_wait_ms = GPU_FINAL_MAX_WAIT_MS
        return SchedulerSettings(
            max_batch=min(self.max_batch, engine_max_batch),
            max_wait_s=self.max_wait_ms / 1000,
            final_max_wait_s=final_max_wait_ms / 1000 if final_max_wait_ms is not None else None,
            max_queue=self.max_queue,
            final_deadline_s=self.final_deadline_s,
            threads=self.engine_threads,
            final_lane=self.final_lane,
            partial_nice=self.partial_nice,
        )

    def partials(self) -> PartialPolicy:
        return PartialPolicy(
            self.partial_interval_s, self.partial_min_new_speech_s, self.partial_prefix, self.final_prefix, self.early_final
        )


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's cpuset, taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(workers: int | Literal["auto"], cores: int) -> int:
    """The number of ingest worker processes for the `workers` setting on a machine with `cores`.

    `auto` leaves one core to the main process (SIP, Kafka, HTTP, WebRTC) and one to the inference
    process (batching, features, the decoder's host side), and gives every other core an ingest
    worker (RTP, VAD, segmentation: CPU-bound per channel), at least one.
    """
    return max(1, cores - 2) if workers == "auto" else workers


class TextSection(_Section):
    """How transcripts are written (docs/mandarin.md)."""

    chinese_script: ChineseScript = Field(
        default="simplified",
        description="script of Chinese (zh, yue) partials and finals: simplified, traditional, or original (as the model wrote it)",
    )


class Settings(_Section):
    """The whole file."""

    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=1,
        description="ingest worker processes: 1 keeps everything in one process; N > 1 runs SIP in the main process, "
        "each call whole in one of N workers and the model in one inference process; auto: usable CPU cores - 2, at least 1",
    )
    model: Annotated[str, Field(min_length=1)] = "whisper-tiny.en"
    backend: Literal["onnxruntime", "tensorrt", "torch"] = "onnxruntime"
    engines_dir: str = "engines"
    profiles_dir: str = Field(default="profiles", description="shape profiles (profiles/<model>.yaml): TensorRT and torch batch buckets")
    language: str | None = Field(default=None, description="fix the language of a multilingual model; null: detect")
    sip: SipSection = SipSection()
    rtp: RtpSection = RtpSection()
    webrtc: WebRtcSection = WebRtcSection()
    http: HttpSection = HttpSection()
    kafka: KafkaSection = KafkaSection()
    vad: VadSection = VadSection()
    scheduler: SchedulerSection = SchedulerSection()
    text: TextSection = TextSection()
    hotwords: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        default=(), description="domain terms for every call (docs/mandarin.md)"
    )
    hotwords_file: str | None = Field(default=None, description="or a UTF-8 file of them: one term per line, # comments")
    hotword_lists: dict[ListName, tuple[Annotated[str, Field(min_length=1)], ...] | str] = Field(
        default_factory=dict,
        description="named lists (terms, or a file) a call picks with the SIP header X-ASR-Hotwords, instead of hotwords",
    )
    hotword_boost: Annotated[float, Field(gt=0, le=20)] = Field(
        default=DEFAULT_BOOST, description="CTC and Paraformer: bonus per matched token"
    )

    @model_validator(mode="after")
    def _hotwords_readable(self) -> Settings:
        if self.hotwords and self.hotwords_file:
            raise ValueError("hotwords and hotwords_file: set one of them")
        try:
            self.hotword_sets()
        except HotwordError as error:
            raise ValueError(str(error)) from None
        return self

    def hotword_sets(self) -> HotwordLists:
        """The default and named lists, files read (HotwordError for one that cannot be used)."""

        def terms(value: tuple[str, ...] | str | None, where: str) -> tuple[str, ...]:
            if isinstance(value, str):
                return read_hotwords_file(value)
            return parse_hotwords(value or (), where)

        default = terms(self.hotwords_file, "hotwords_file") if self.hotwords_file else terms(self.hotwords, "hotwords")
        named = {name: terms(value, f"hotword_lists.{name}") for name, value in self.hotword_lists.items()}
        return HotwordLists(default, named, self.hotword_boost)

    @field_validator("workers", mode="before")
    @classmethod
    def _count_or_auto(cls, value: object) -> object:
        # One problem in the operator's words rather than one per branch of the union.
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"expected a number of ingest worker processes >= 1, or auto; got {value!r}")

    @model_validator(mode="after")
    def _a_port_pair_per_worker(self) -> Settings:
        workers = resolve_workers(self.workers, usable_cores())
        low, high = self.rtp.port_range
        pairs = (high - (low + low % 2)) // 2
        if workers > 1 and pairs < workers:
            raise ValueError(f"rtp.port_range {low}-{high} holds {pairs} port pairs, fewer than the {workers} workers that share it")
        return self


# -- what the daemon builds from it --------------------------------------------------------------


@dataclass(frozen=True)
class Components:
    """Every component's settings, built once from the sections (their own checks run here)."""

    ingest: IngestConfig
    whip: WhipConfig
    http: HttpSettings
    kafka: KafkaSettings
    segmenter: SegmenterConfig
    hotwords: HotwordLists


@dataclass(frozen=True)
class Config:
    """A validated configuration: `settings` holds the sections, `components` what they build."""

    settings: Settings
    source: str = "<defaults>"

    @cached_property
    def workers(self) -> int:
        """Ingest worker processes (`workers: auto` resolved on this machine); 1: a single process."""
        return resolve_workers(self.settings.workers, usable_cores())

    @cached_property
    def components(self) -> Components:
        s = self.settings
        return Components(
            ingest=IngestConfig(
                sip=s.sip.build(),
                rtp_host=s.rtp.bind,
                rtp_port_min=s.rtp.port_range[0],
                rtp_port_max=s.rtp.port_range[1],
                latching=Latching.FIRST if s.rtp.latching else Latching.SDP,
                playout_delay_s=s.rtp.playout_delay_ms / 1000,
                rtp_timeout_s=s.rtp.timeout_s,
            ),
            whip=replace(s.webrtc.build(), retry_after_s=s.sip.retry_after_s),
            http=s.http.build(),
            kafka=s.kafka.build(),
            segmenter=s.vad.build(),
            hotwords=s.hotword_sets(),
        )

    def secrets(self) -> list[str]:
        """Values logs must never show: the HTTP token, SIP credentials, Kafka credentials."""
        s = self.settings
        values: list[object] = [s.http.auth_token]
        for user in s.sip.auth.users.values() if s.sip.auth else ():
            values += [user.password, *user.ha1.values()]
        values += [value for key, value in s.kafka.security.items() if "password" in key or "key" in key]
        return [str(value) for value in values if value]


def json_schema() -> str:
    """The JSON Schema of the config file, with every default (`asr-stream config schema`)."""
    schema = Settings.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "asr-stream configuration"
    return json.dumps(schema, indent=2)


# -- loading -------------------------------------------------------------------------------------


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


def _problem(error: Mapping[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{path}: {message}"


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read `path` (YAML; None for defaults only), apply environment overrides, validate, build components.

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
    merged = _merge(document, _env_overrides(os.environ if environ is None else environ))
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(source, [_problem(e) for e in error.errors()]) from None
    return Config(settings, source)
