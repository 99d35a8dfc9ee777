"""One YAML file, environment overrides, and `asr-stream config check` naming every problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asr_stream.app.config import ConfigError, load_config
from asr_stream.app.daemon import digest_auth

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_local_config_is_valid_and_defaults_fill_the_rest():
    config = load_config(REPO / "deploy" / "local.yaml", environ={})
    assert config.model == "whisper-tiny.en" and config.kafka["embedded"] is True
    assert config.scheduler["partial_interval_s"] == 1.0  # a default, not in the file


def test_environment_overrides_any_key_with_yaml_typed_values(tmp_path):
    path = write(tmp_path, "model: whisper-tiny.en\n")
    config = load_config(path, environ={"ASR_STREAM__SCHEDULER__MAX_BATCH": "16", "ASR_STREAM__KAFKA__TOPIC": "hotline.asr"})
    assert config.scheduler["max_batch"] == 16 and config.kafka["topic"] == "hotline.asr"


def test_every_problem_is_reported_with_its_path(tmp_path):
    path = write(
        tmp_path,
        "model: 5\nsip: {listen: nowhere}\nscheduler: {max_batch: 0, bogus: 1}\nrtp: {port_range: [3000, 2000]}\n"
        "segmenter: {max_segment_ms: 4000, split_search_ms: 5000}\nsip: {auth: {realm: x}}\n",
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={"ASR_STREAM__KAFKA__TOPIC": "bad topic!"})
    paths = {problem.split(":")[0] for problem in error.value.problems}
    assert {"model", "scheduler", "scheduler.max_batch", "rtp.port_range", "segmenter", "kafka.topic", "sip.auth"} <= paths


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
    auth = digest_auth(load_config(path, environ={}).sip["auth"])
    assert auth is not None and auth.realm == "hotline" and auth.algorithms == ("MD5",) and auth.proxy
    assert auth.users["alice"].password == "s3cret" and "s3cret" not in repr(auth)
    assert digest_auth(None) is None


def test_secrets_for_log_redaction_are_collected_from_every_section(tmp_path):
    path = write(
        tmp_path,
        "model: whisper-tiny.en\nhttp: {auth_token: tok}\nsip: {auth: {realm: r, users: {a: {password: pw}}}}\n"
        "kafka: {security: {security_protocol: SASL_SSL, sasl_plain_password: kpw}}\n",
    )
    assert sorted(load_config(path, environ={}).secrets()) == ["kpw", "pw", "tok"]


def test_serve_refuses_an_unusable_backend_in_one_line(tmp_path):
    """backend: tensorrt without built engines (none can be built here): the operator is told what to run."""
    path = write(tmp_path, 'model: whisper-tiny.en\nbackend: tensorrt\nengines_dir: engines\nsip: {listen: "127.0.0.1:0"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "asr_stream.cli", "serve", "--config", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "asr-stream engines build whisper-tiny.en" in result.stderr
