"""Load generation against a running daemon, without SIPp: `bench/callgen.py` drives these.

`call_audio` turns the shared speech clips into multi-utterance call programs (pre-encoded G.711,
utterance boundaries and reference text); `sip_caller` places and hangs up calls (one UDP socket
per process); `rtp_pacer` streams every call of a process on one 20 ms tick; `worker` is one
load-generator process; `recorder` reads the transcript topic with arrival times; `figures`
turns calls and events into the reported numbers.
"""
