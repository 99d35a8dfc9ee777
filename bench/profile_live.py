"""Where one live batch's time goes: the daemon's model call (`LoadedModel.live`) on a realistic mix,
timed and profiled (cProfile, host side).

Why: through the whole daemon on the H200 (docs/benchmarks.md, "GPU ladder"), the inference process
keeps the GPU only about half busy while its batches queue; this shows whether the host (features,
decoding loop, loop guard, result assembly) or the device is the bottleneck for one batch.

The mix is what the live path sends: finals (whole clips, no prefix) and partials (the first
seconds of a clip with the tokens an earlier, shorter partial chose forced as prefix, so prefixes
differ in length across rows).

    python bench/profile_live.py --model whisper-base --backend torch --batch 32 --repeats 5
    python bench/profile_live.py --mix partials --batch 64 128 --torch-profile   # the partial lane's batches

`--mix partials` is what the daemon's partial lane runs under load: partials only, all in the 5 s
window (open segments of 1.5-4.5 s), each with the prefix its previous partial (1 s shorter) agreed
on. `--torch-profile` adds the device's view (torch.profiler): the kernels' total time against the
batch's wall time says how much of a batch the GPU is actually busy.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import numpy as np

from asr_stream.audio.wavfile import load_audio
from asr_stream.inference.live import Utterance
from asr_stream.inference.runners import load_model

RATE = 16_000


def live_mix(model, clips: list[np.ndarray], batch: int) -> list[Utterance]:
    """Half finals, half partials with the forced prefix an earlier partial would have agreed on."""
    requests = []
    for k in range(batch):
        audio = clips[k % len(clips)]
        if k % 2:
            requests.append(Utterance(audio))
            continue
        early = model.live([Utterance(audio[: 2 * RATE], partial=True)])[0]
        prefix = early.tokens[: max(0, len(early.tokens) - 2)]
        requests.append(Utterance(audio[: 4 * RATE], partial=True, prefix=tuple(prefix)))
    return requests


def partial_mix(model, clips: list[np.ndarray], batch: int, rng: np.random.Generator) -> list[Utterance]:
    """The partial lane's batch: open segments of 1.5-4.5 s, each forcing what its partial 1 s earlier agreed on."""
    requests = []
    for k in range(batch):
        audio = clips[k % len(clips)]
        seconds = min(rng.uniform(1.5, 4.5), len(audio) / RATE)
        early = model.live([Utterance(audio[: int((seconds - 1) * RATE)], partial=True)])[0]
        prefix = early.tokens[: max(0, len(early.tokens) - 2)]
        requests.append(Utterance(audio[: int(seconds * RATE)], partial=True, prefix=tuple(prefix)))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--engines-dir", type=Path, default=Path("engines"))
    parser.add_argument("--speech", type=Path, default=Path("../shared/speech"))
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mix", choices=["live", "partials"], default="live", help="half finals, half partials; or the partial lane's")
    parser.add_argument(
        "--profiles-dir", type=Path, default=Path("profiles"), help="where <model>.yaml gives the torch backend's batch buckets"
    )
    parser.add_argument("--torch-profile", action="store_true", help="also the device's kernel time (torch.profiler)")
    args = parser.parse_args()
    manifest = [json.loads(line) for line in (args.speech / "manifest.jsonl").read_text().splitlines() if line.strip()]
    clips = [load_audio(args.speech / row["path_wav16k"])[0][0] for row in manifest if row["lang"] == "en"]
    model = load_model(args.model, args.engines_dir, "en", backend=args.backend, live=True, profiles_dir=args.profiles_dir)
    for batch in args.batch:
        requests = live_mix(model, clips, batch) if args.mix == "live" else partial_mix(model, clips, batch, np.random.default_rng(batch))
        profile_batch(model, requests, args)


def profile_batch(model, requests: list[Utterance], args: argparse.Namespace) -> None:
    prefixes = sorted({len(request.prefix) for request in requests if request.partial})
    print(f"{args.model} on {args.backend}, {args.mix}: batch {len(requests)}, partial prefix lengths {prefixes}")
    sync = _device_sync(args.backend)
    model.live(requests)  # warm
    sync()
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        model.live(requests)
        sync()
        times.append(time.perf_counter() - started)
    print(f"batch wall s: median {np.median(times):.3f}, min {min(times):.3f} ({len(requests) / np.median(times):.0f} rows/s)")
    profile = cProfile.Profile()
    profile.enable()
    model.live(requests)
    sync()
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())
    if args.torch_profile:
        device_profile(model, requests, sync)


def device_profile(model, requests: list[Utterance], sync) -> None:
    """Kernel time on the device vs the batch's wall time, and the kernels that take it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as recorded:
        # Timed inside: the profiler's own start-up (seconds, the first time) is not the batch's.
        started = time.perf_counter()
        model.live(requests)
        sync()
        wall = time.perf_counter() - started
    events = recorded.key_averages()
    # "Activity Buffer Request" is the profiler's own buffer, listed with a device time of its own.
    device_s = sum(event.self_device_time_total for event in events if event.key != "Activity Buffer Request") / 1e6
    print(f"device kernels {device_s:.3f} s of {wall:.3f} s wall under the profiler ({device_s / wall:.0%} busy)")
    print(events.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))


def _device_sync(backend: str):
    if backend != "torch":
        return lambda: None
    import torch

    return torch.cuda.synchronize


if __name__ == "__main__":
    main()
