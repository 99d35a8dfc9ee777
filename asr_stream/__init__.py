"""asr-stream: streaming speech transcription for call centres and public-service hotlines.

Data flows one way through the subpackages, and imports follow it (a stage may import the
stages before it, never after):

    sip -> rtp -> audio -> inference -> transcript -> sinks

`daemon` wires them for live calls, `offline` for files, `cli` is the only entry point.
"""

__version__ = "0.1.0"
