"""Development and demo tools, apart from the product: the SIPp runner, the embedded Tansu broker,
`asr-stream run` (the local demo), the topic tail, and WER/CER scoring for tests and benchmarks."""
