"""Ingest: calls from the network as neutral calls and channels of 16 kHz audio.

`telephony` joins the SIP server (`asr_stream.sip`) to one RTP receiver per channel
(`asr_stream.rtp`); `webrtc` answers WHIP offers with aiortc. Both produce the types of `types`
(CallInfo, ChannelInfo, EndReason, AudioFrame, CallStarted, CallEnded), so everything after this
stage handles a SIP call, a SIPREC recording and a browser session alike.
"""
