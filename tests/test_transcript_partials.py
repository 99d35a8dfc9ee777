"""PartialPolicy: a partial is due after the interval AND enough new speech, never on the clock alone."""

from __future__ import annotations

import pytest

from asr_stream.transcript.partials import PartialPolicy


def test_a_partial_needs_both_the_interval_and_new_speech():
    policy = PartialPolicy(interval_s=1.0, min_new_speech_s=0.5)
    assert policy.due(now=11.0, last_partial_at=10.0, speech_end_s=3.0, last_partial_speech_end_s=2.5)
    assert not policy.due(now=10.9, last_partial_at=10.0, speech_end_s=3.0, last_partial_speech_end_s=2.0)  # too soon
    assert not policy.due(now=15.0, last_partial_at=10.0, speech_end_s=2.7, last_partial_speech_end_s=2.5)  # a pause: nothing new


def test_nonsense_settings_are_refused():
    with pytest.raises(ValueError):
        PartialPolicy(interval_s=0)
    with pytest.raises(ValueError):
        PartialPolicy(min_new_speech_s=-1)
