"""TensorRT for NVIDIA GPUs, one module per concern; imports flow one way (tests/test_layering.py):

    buffers      CUDA device and pinned host memory through cuda-python
    cache        build records, keys, `engines/<model>/trt/`, list/use/rollback, compatibility checks
    calibration  INT8 calibration batches and TensorRT's entropy calibrator      (buffers, cache)
    build        parsing ONNX and building engines into the cache; `engines` commands  (cache, calibration)
    engine       the Engine protocol over a deserialized engine                 (buffers, cache)

TensorRT itself (`tensorrt` >= 10, or `tensorrt_rtx` with the same builder API) and cuda-python are
imported only inside the functions that need them: both are optional GPU-node dependencies, and
everything else here (keys, manifests, refusals, shape checks) is usable and tested without them.
"""
