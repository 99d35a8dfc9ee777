"""bench/callgen.py end to end, so the load generator cannot rot: two short calls on CPU.

It starts its own Tansu and `asr-stream serve` (Whisper tiny.en on ONNX Runtime), places two real
SIP calls streaming shared speech as G.711 RTP, reads the topic, and writes its JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asr_stream.devtools.local_broker import free_tcp_port

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_two_calls_produce_every_final_with_a_sane_wer(tmp_path: Path, engines_dir: Path) -> None:
    port = free_tcp_port()
    config = tmp_path / "daemon.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "rtp": {"port_range": [port - port % 2, port - port % 2 + 100]},
                "model": "whisper-tiny.en",
                "engines_dir": str(engines_dir),
            }
        )
    )
    out = tmp_path / "report.jsonl"
    command = [sys.executable, "bench/callgen.py", "--spawn-daemon", str(config), "--calls", "2", "--ramp-s", "1"]
    command += ["--utterances", "2", "--no-warmup", "--drain-s", "30", "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=170, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stdout + run.stderr
    print(run.stdout)

    (step,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert step["generator"] == "callgen" and step["calls"] == 2 and step["answered"] == 2 and step["failed"] == {}
    assert step["finals_expected"] == 4 and step["utterances_matched"] == 4, "an utterance got no final"
    assert step["lost_calls"] == 0 and step["never_started"] == 0 and step["problems"] == []
    assert step["hangup_problems"] == {} and step["sip_responses"]["INVITE 200"] == 2 and step["sip_responses"]["BYE 200"] == 2
    assert step["error_metric"] == "WER" and step["error_rate"] <= 0.25
    assert all(call["error_rate"] <= 0.5 for call in step["per_call"])
    assert step["latency_ms"]["n"] == step["finals_received"] and step["latency_ms"]["p50"] > 0
    assert step["outside_ms"]["n"] == 4 and step["outside_ms"]["p50"] > 0
    # Emitted -> our consumer: the part of "outside" after the daemon's own latency (same machine, same clock).
    assert step["final_delivery_ms"]["n"] == step["finals_received"] and 0 <= step["final_delivery_ms"]["p50"] < step["outside_ms"]["p50"]
    assert step["partial_latency_ms"]["n"] == step["partial_delivery_ms"]["n"] > 0 and step["partial_latency_ms"]["p50"] > 0
    assert step["generator_lateness_ms"]["n"] > 100 and step["packets"] > 2 * 8 * 50, "two calls of two clips stream for > 8 s"
    assert step["packets_dropped"] == 0
    counters = step["daemon_counters"]  # the daemon's own histograms over the step
    # Histogram quantiles are interpolated inside buckets (up to 1 s wide from 2 s on), so the close
    # decision -> final is held below the whole latency at the median, where 0.6 s of closing silence separates them.
    assert 0 < counters["endpoint_s_p50"] <= counters["endpoint_s_p99"] and counters["endpoint_s_p50"] < step["latency_ms"]["p50"] / 1000
    assert 0 <= counters["final_wait_s_p50"] <= counters["final_wait_s_p99"]
