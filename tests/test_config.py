"""One YAML file, environment overrides, and `asr-stream config check` naming every problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asr_stream.app.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_local_config_is_valid_and_defaults_fill_the_rest():
    config = load_config(REPO / "deploy" / "local.yaml", environ={})
    assert config.settings.model == "whisper-tiny.en" and config.settings.kafka.embedded is True
    assert config.settings.scheduler.partial_interval_s == 1.0  # a default, not in the file


def test_environment_overrides_any_key_with_yaml_typed_values(tmp_path):
    path = write(tmp_path, "model: whisper-tiny.en\n")
    config = load_config(path, environ={"ASR_STREAM__SCHEDULER__MAX_BATCH": "16", "ASR_STREAM__KAFKA__TOPIC": "hotline.asr"})
    assert config.settings.scheduler.max_batch == 16 and config.settings.kafka.topic == "hotline.asr"


@pytest.mark.parametrize(
    ("backend", "final_max_wait_ms", "expected_s"),
    [("torch", None, 0.15), ("onnxruntime", None, None), ("torch", 0, 0.0), ("onnxruntime", 100, 0.1)],
)
def test_finals_wait_longer_for_company_on_the_gpu_backend_unless_told(tmp_path, backend, final_max_wait_ms, expected_s):
    """The finals' lane waits 150 ms on backend torch by default (a GPU batch costs little per row),
    the partials' max_wait elsewhere (None), and whatever the operator sets anywhere."""
    wait = "" if final_max_wait_ms is None else f"scheduler: {{final_max_wait_ms: {final_max_wait_ms}}}\n"
    config = load_config(write(tmp_path, f"model: whisper-base\nbackend: {backend}\n{wait}"), environ={})
    settings = config.settings.scheduler.build(128, config.settings.backend)
    assert settings.final_max_wait_s == expected_s and settings.max_wait_s == 0.03


def test_every_problem_is_reported_with_its_path(tmp_path):
    path = write(
        tmp_path,
        "model: 5\nsip: {listen: nowhere}\nscheduler: {max_batch: 0, bogus: 1}\nrtp: {port_range: [3000, 2000]}\n"
        "vad: {max_segment_ms: 4000, split_search_ms: 5000}\nsip: {auth: {realm: x}}\n",
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={"ASR_STREAM__KAFKA__TOPIC": "bad topic!"})
    paths = {problem.split(":")[0] for problem in error.value.problems}
    assert {"model", "scheduler.bogus", "scheduler.max_batch", "rtp.port_range", "vad", "kafka.topic", "sip.auth.users"} <= paths


@pytest.mark.parametrize(
    ("text", "expected"),
    [("model: [\n", "not valid YAML"), ("- a\n- b\n", "expected a mapping"), ("backend: cuda-magic\n", "backend")],
)
def test_config_check_cli_prints_problems_and_fails(tmp_path, text, expected):
    result = subprocess.run(
        [sys.executable, "-m", "asr_stream.cli", "config", "check", str(write(tmp_path, text))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and expected in result.stderr and "Traceback" not in result.stderr


def test_config_check_cli_accepts_a_good_file():
    result = subprocess.run(
        [sys.executable, "-m", "asr_stream.cli", "config", "check", "deploy/local.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_sip_digest_section_becomes_the_servers_auth_settings(tmp_path):
    path = write(
        tmp_path,
        "model: whisper-tiny.en\nsip: {auth: {realm: hotline, users: {alice: {password: s3cret}}, algorithms: [MD5], proxy: true}}\n",
    )
    auth = load_config(path, environ={}).components.ingest.sip.auth
    assert auth is not None and auth.realm == "hotline" and auth.algorithms == ("MD5",) and auth.proxy
    assert auth.users["alice"].password == "s3cret" and "s3cret" not in repr(auth)
    assert load_config(None, environ={}).components.ingest.sip.auth is None


def test_secrets_for_log_redaction_are_collected_from_every_section(tmp_path):
    path = write(
        tmp_path,
        "model: whisper-tiny.en\nhttp: {auth_token: tok}\nsip: {auth: {realm: r, users: {a: {password: pw}}}}\n"
        "kafka: {security: {security_protocol: SASL_SSL, sasl_plain_password: kpw}}\n",
    )
    assert sorted(load_config(path, environ={}).secrets()) == ["kpw", "pw", "tok"]


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "inference-process"])
def test_serve_refuses_an_unusable_backend_in_one_line(tmp_path, workers):
    """backend: tensorrt without built engines (none can be built here): the operator is told what to run,
    also when the model is loaded by the inference process (workers: 2)."""
    path = write(
        tmp_path,
        f"workers: {workers}\nmodel: whisper-tiny.en\nbackend: tensorrt\nengines_dir: engines\n"
        'sip: {listen: "127.0.0.1:0"}\nhttp: {listen: "127.0.0.1:0"}\n',
    )
    result = subprocess.run(
        [sys.executable, "-m", "asr_stream.cli", "serve", "--config", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "asr-stream engines build whisper-tiny.en" in result.stderr


def test_workers_is_one_process_by_default_a_number_or_auto(tmp_path):
    from asr_stream.app.config import json_schema, resolve_workers, usable_cores

    assert load_config(None, environ={}).workers == 1
    assert load_config(write(tmp_path, "workers: 4\n"), environ={}).workers == 4
    assert load_config(write(tmp_path, "workers: auto\n"), environ={}).workers == max(1, usable_cores() - 2)
    assert load_config(None, environ={"ASR_STREAM__WORKERS": "3"}).workers == 3
    # auto: a core for the main process, one for the inference process, the rest ingest workers
    assert [resolve_workers("auto", cores) for cores in (1, 2, 3, 16, 64)] == [1, 1, 1, 14, 62]
    workers = json.loads(json_schema())["properties"]["workers"]
    assert workers["default"] == 1 and {"const": "auto", "type": "string"} in workers["anyOf"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("workers: 0\n", "workers: expected a number of ingest worker processes >= 1, or auto; got 0"),
        ("workers: many\n", "workers: expected a number of ingest worker processes >= 1, or auto; got 'many'"),
        ("workers: 3\nrtp: {port_range: [20000, 20005]}\n", "rtp.port_range 20000-20005 holds 2 port pairs, fewer than the 3 workers"),
    ],
)
def test_workers_mistakes_are_named(tmp_path, text, expected):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), environ={})
    assert [problem for problem in error.value.problems if expected in problem] == error.value.problems, error.value.problems


def test_each_default_lives_on_its_component(tmp_path):
    """The sections take their defaults from the components they configure, and the schema shows them."""
    from asr_stream.ingest.telephony import IngestConfig
    from asr_stream.sinks.kafka import KafkaSettings

    components = load_config(None, environ={}).components
    assert (components.ingest.rtp_port_min, components.ingest.rtp_port_max) == (IngestConfig.rtp_port_min, IngestConfig.rtp_port_max)
    assert components.kafka.partitions == KafkaSettings.partitions and components.kafka.spool_dir == KafkaSettings.spool_dir
    result = subprocess.run([sys.executable, "-m", "asr_stream.cli", "config", "schema"], capture_output=True, text=True, timeout=60)
    schema = json.loads(result.stdout)
    rtp = schema["$defs"]["RtpSection"]["properties"]["port_range"]
    assert rtp["default"] == [IngestConfig.rtp_port_min, IngestConfig.rtp_port_max]
    assert schema["$defs"]["KafkaSection"]["properties"]["partitions"]["default"] == KafkaSettings.partitions


def test_vad_section_reaches_the_segmenter(tmp_path):
    path = write(tmp_path, "vad: {start_threshold: 0.6, stop_threshold: 0.4, min_silence_ms: 800, max_segment_ms: 15000}\n")
    segmenter = load_config(path, environ={}).components.segmenter
    assert (segmenter.start_threshold, segmenter.stop_threshold, segmenter.min_silence_ms, segmenter.max_segment_ms) == (
        0.6,
        0.4,
        800,
        15000,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('http: {listen: "0.0.0.0:8080"}\n', "http: no http.auth_token is set"),
        ("http: {require_auth: true}\n", "http: no http.auth_token is set"),
        ('kafka: {embedded: true, bootstrap_servers: "kafka.example:9092"}\n', "kafka: embedded: true starts a local broker"),
        ("kafka: {delivery_timeout_ms: 200}\n", "kafka: delivery_timeout_ms must be at least request_timeout_ms"),
        # Once accepted by `check`, then a traceback from bind() in `serve`, or every call failing:
        ('http: {listen: "127.0.0.1:99999"}\n', "http.listen: port 99999 is above 65535"),
        ('sip: {listen: "127.0.0.1:70000"}\n', "sip.listen: port 70000 is above 65535"),
        ("rtp: {bind: rtp-host}\n", "rtp.bind: 'rtp-host' is not an IP address"),
    ],
)
def test_config_check_refuses_what_serve_would_refuse(tmp_path, text, expected):
    """Checks that only a component can make (HTTP auth, the embedded broker) run in `config check` too."""
    path = write(tmp_path, text)
    check = subprocess.run(
        [sys.executable, "-m", "asr_stream.cli", "config", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 1 and expected.split(": ", 1)[1] in check.stderr, check.stderr
    serve = subprocess.run(
        [sys.executable, "-m", "asr_stream.cli", "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert serve.returncode == 2 and "Traceback" not in serve.stderr and len(serve.stderr.strip().splitlines()) == 1, serve.stderr


def test_hotword_settings_become_the_models_lists(tmp_path):
    (tmp_path / "housing.txt").write_text("# 住房\n住房公积金\n\n不动产登记\n", encoding="utf-8")
    path = write(
        tmp_path,
        f"hotwords: [12345热线, 社保卡]\nhotword_lists:\n  housing: {tmp_path / 'housing.txt'}\n  traffic: [交通违章]\nhotword_boost: 2.0\n"
        "text: {chinese_script: traditional}\n",
    )
    config = load_config(path, environ={})
    lists = config.components.hotwords
    assert lists.default == ("12345热线", "社保卡") and lists.boost == 2.0
    assert dict(lists.named) == {"housing": ("住房公积金", "不动产登记"), "traffic": ("交通违章",)}
    assert config.settings.text.chinese_script == "traditional"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hotwords: [a]\nhotwords_file: x.txt\n", "set one of them"),
        ("hotwords_file: /nonexistent/hotwords.txt\n", "cannot read hotwords file /nonexistent/hotwords.txt"),
        ("hotword_lists: {'bad name': [a]}\n", "hotword_lists.bad name"),
        ("text: {chinese_script: pinyin}\n", "text.chinese_script"),
    ],
)
def test_hotword_and_text_mistakes_are_reported(tmp_path, text, expected):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), environ={})
    assert any(expected in problem for problem in error.value.problems), error.value.problems
