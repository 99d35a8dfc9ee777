"""RTP stage: UDP port pairs in, gap-free PCM on the sender's clock out, per channel.

`receiver.RtpReceiver` is the entry point (one per negotiated channel, ports from
`ports.PortAllocator`); inside it a datagram goes `packet` (RFC 3550 header) -> `timeline`
(SSRC/timestamp -> sample position) -> `stats` (RFC 3550 loss/jitter) -> `jitter` (reorder, fill
holes) -> `codecs`/`g711` (decode), with `dtmf` (RFC 4733) and `rtcp` beside it. Nothing here
knows about SIP, models or sinks; `asr_stream.ingest.telephony` joins this stage to the SIP server.
"""
