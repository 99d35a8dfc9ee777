"""Work-order drafts from transcripts: the downstream consumer a hotline's ticketing needs.

assembly (calls from one partition's events, the offset safe to commit) -> rules (category) and
contacts (phone numbers) -> draft (the JSON document) -> consumer (Kafka group member, CLI loop).
"""
