"""WebRTC ingest (WHIP, RFC 9725): `session.WhipIngest` answers offers, `audio` restores the timeline."""
