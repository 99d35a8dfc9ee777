#!/usr/bin/env bash
# Device side of stage.sh: keep a carried part in /tmp/gpustage; once every part is there,
# reassemble and install the wheels into /tmp/site (TensorRT-RTX too, when staged) and the speech into /tmp/speech,
# linked as ../shared/speech beside the repo copy, where the test suite's conftest looks for it.
# Run from the repo root.
set -euo pipefail
PART_DIR="$1"
mkdir -p /tmp/gpustage
cp "$PART_DIR"/part-* /tmp/gpustage/
COUNT=$(cat "$PART_DIR/count")
HAVE=$(ls /tmp/gpustage/part-* | wc -l)
echo "stashed $(ls "$PART_DIR"/part-*): $HAVE of $COUNT parts"
[ "$HAVE" -eq "$COUNT" ] || exit 0
[ -f /tmp/site/.complete ] && { echo "already installed"; exit 0; }
mkdir -p /tmp/gpustage/payload
cat $(ls /tmp/gpustage/part-* | sort) | tar -xf - -C /tmp/gpustage/payload
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/gpustage/payload/*.whl
if [ -f /tmp/gpustage/payload/tensorrt_rtx_pkg.tgz ]; then tar -xzf /tmp/gpustage/payload/tensorrt_rtx_pkg.tgz -C /tmp/site; fi
rm -rf /tmp/speech && cp -r /tmp/gpustage/payload/speech /tmp/speech
mkdir -p ../shared && ln -sfn /tmp/speech ../shared/speech
touch /tmp/site/.complete
echo "installed into /tmp/site; speech in /tmp/speech"
