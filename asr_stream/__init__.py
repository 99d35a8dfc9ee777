"""asr-stream: streaming speech transcription for call centres and public-service hotlines.

Data flows one way through the subpackages, and imports follow it (a stage may import the
stages before it, never after; tests/test_layering.py keeps it so):

    sip -> rtp -> ingest -> audio -> inference -> transcript -> sinks -> app

`app` is the composition root (the daemon for live calls, `offline` for files), `devtools`
holds development and demo tools, `cli` is the only entry point.
"""

__version__ = "0.1.0"
