"""Helpers below every pipeline stage: anything here may be imported by sip, rtp and all later stages.

Only code with no knowledge of calls, audio or transports belongs here (tests/test_layering.py
ranks this package first).
"""
