"""Deployment files checked against the code they deploy: configs, commands, probes, metric names.

Nothing here runs Docker, systemd or Kubernetes; what can be checked without them is that each
file parses and that every name it shares with the code (config keys, CLI subcommands, HTTP
routes, Prometheus metrics) exists in this checkout.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from test_livefeed import ended, final, partial, started

from asr_stream.app.config import ConfigError, load_config
from asr_stream.app.http_api import HttpSettings, create_app
from asr_stream.app.metrics import DaemonMetrics
from asr_stream.cli import build_parser
from asr_stream.inference.scheduler import BatchScheduler
from asr_stream.sinks.kafka import KafkaSettings, KafkaSink
from asr_stream.sinks.livefeed import LiveFeedHub

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
ENV_PREFIX = "ASR_STREAM__"


def load_yaml(relative: str) -> list[Any]:
    return list(yaml.safe_load_all((DEPLOY / relative).read_text()))


def kubernetes_object(kind: str) -> dict[str, Any]:
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == kind:
                return document
    raise AssertionError(f"no {kind} under deploy/kubernetes")


def deployment_container() -> dict[str, Any]:
    return kubernetes_object("Deployment")["spec"]["template"]["spec"]["containers"][0]


def config_overrides(env: dict[str, str]) -> dict[str, str]:
    """The variables of `env` that load_config reads as config overrides."""
    return {name: value for name, value in env.items() if name.startswith(ENV_PREFIX)}


def assert_cli_accepts(argv: list[str]) -> None:
    """`argv` starts with the installed script's name and parses as a real subcommand."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(argv[0]).name in scripts, f"{argv[0]} is not a console script of this project"
    args = build_parser().parse_args(argv[1:])
    assert callable(args.handler)


def test_every_yaml_and_json_file_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.json")])
    assert len(files) >= 8
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert all(document is not None for document in yaml.safe_load_all(path.read_text())), path


def compose() -> dict[str, Any]:
    return load_yaml("docker-compose.yaml")[0]


def test_container_config_validates_with_the_compose_environment() -> None:
    env = config_overrides(compose()["services"]["asr-stream"]["environment"])
    config = load_config(DEPLOY / "config" / "container.yaml", environ=env)
    assert config.settings.kafka.bootstrap_servers == "kafka:9092"
    assert config.settings.http.listen.startswith("0.0.0.0:")  # reachable: so the token is required
    env.pop(f"{ENV_PREFIX}HTTP__AUTH_TOKEN")
    with pytest.raises(ConfigError, match="auth_token"):
        load_config(DEPLOY / "config" / "container.yaml", environ=env)


def test_compose_runs_kafka_in_kraft_mode_and_publishes_the_configured_rtp_range() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in json.dumps(kafka).upper()
    daemon = services["asr-stream"]
    assert daemon["depends_on"]["kafka"]["condition"] == "service_healthy"
    low, high = yaml.safe_load((DEPLOY / "config" / "container.yaml").read_text())["rtp"]["port_range"]
    assert f"{low}-{high}:{low}-{high}/udp" in daemon["ports"]
    internal = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")[0].split("//")[1]
    assert daemon["environment"][f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS"] == internal


def test_configmap_config_validates_with_the_deployment_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(kubernetes_object("ConfigMap")["data"]["config.yaml"])
    env = {item["name"]: item.get("value", "from-the-cluster") for item in deployment_container()["env"]}
    config = load_config(config_file, environ=config_overrides(env))
    assert config.settings.rtp.port_range == (20000, 20199)


def test_deployment_runs_serve_on_the_host_network_with_probes_the_app_answers() -> None:
    pod = kubernetes_object("Deployment")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    container = deployment_container()
    assert_cli_accepts(container["args"])
    app = create_app(LiveFeedHub(), CollectorRegistry(), {}, HttpSettings(require_auth=False))
    routes = {resource.canonical for resource in app.router.resources()}
    probes = [container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe", "startupProbe")]
    assert set(probes) <= routes
    monitor = kubernetes_object("PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert monitor["path"] in routes
    assert monitor["port"] in {port["name"] for port in container["ports"]}
    service = kubernetes_object("Service")
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= {port["name"] for port in container["ports"]}


def systemd_values(key: str) -> list[str]:
    text = (DEPLOY / "systemd" / "asr-stream.service").read_text()
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_systemd_unit_starts_a_real_serve_command_and_is_hardened() -> None:
    (exec_start,) = systemd_values("ExecStart")
    argv = shlex.split(exec_start)
    assert_cli_accepts(argv)
    assert argv[1] == "serve"
    for pre in systemd_values("ExecStartPre"):
        assert_cli_accepts(shlex.split(pre.lstrip("-")))
    for hardening in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "RestrictAddressFamilies", "CapabilityBoundingSet"):
        assert systemd_values(hardening), hardening
    assert systemd_values("User") == ["asr-stream"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_serve_the_config_they_copy(dockerfile: str) -> None:
    text = (DEPLOY / "docker" / dockerfile).read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.MULTILINE)
    argv = json.loads(cmd)
    assert_cli_accepts(argv)
    assert argv[argv.index("--config") + 1] == "/etc/asr-stream/config.yaml"
    assert "COPY deploy/config/container.yaml /etc/asr-stream/config.yaml" in text
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    if dockerfile.endswith(".gpu"):
        assert all(re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d+\.\d+-py3", base) for base in bases), bases


def test_kamailio_dispatches_to_the_set_its_list_defines() -> None:
    config = (DEPLOY / "kamailio" / "kamailio.cfg").read_text()
    (dispatcher_set,) = re.findall(r"#!define DISPATCHER_SET (\d+)", config)
    entries = [
        line.split() for line in (DEPLOY / "kamailio" / "dispatcher.list").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert len(entries) >= 2
    for setid, uri, _flags, _priority, attributes in entries:
        assert setid == dispatcher_set
        assert re.fullmatch(r"sip:[\d.]+:\d+", uri)
        assert "duid=" in attributes and "maxload=" in attributes  # call-load algorithm 10 needs both
    assert 'loadmodule "dispatcher.so"' in config and 'ds_select_dst("DISPATCHER_SET", "10")' in config


def exported_sample_names() -> set[str]:
    """Every sample name /metrics can show, with each component attached and each metric fed."""
    metrics = DaemonMetrics()
    metrics.watch_scheduler(BatchScheduler(lambda batch: batch))
    metrics.watch_kafka(KafkaSink(KafkaSettings(bootstrap_servers="127.0.0.1:9")))
    metrics.watch_livefeed(LiveFeedHub())
    for event in (started("c1"), partial("c1", 0, 0, "a"), final("c1", 0, "A."), ended("c1", 1)):
        metrics.observe_event(event)
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def test_grafana_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "asr-stream.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queried = {name for expr in expressions for name in re.findall(r"\basr_[a-z0-9_]+", expr)}
    exported = exported_sample_names()
    assert queried - exported == set()
    families = {name.removesuffix("_total").removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name in queried}
    assert len(families) >= 15  # the dashboard covers the metrics, not a token few
