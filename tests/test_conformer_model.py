"""The PyTorch Conformer-CTC: relative-position shift, length masking, output geometry."""

from __future__ import annotations

import torch

from asr_stream.inference.conformer.frames import subsampled_lengths
from asr_stream.inference.conformer.model import ConformerConfig, ConformerCTC, rel_shift


def small_model(vocab_size: int = 32, subsampling_factor: int = 4) -> ConformerCTC:
    torch.manual_seed(0)
    return ConformerCTC(ConformerConfig(vocab_size=vocab_size, subsampling_factor=subsampling_factor)).eval()


def test_rel_shift_indexes_scores_by_relative_distance() -> None:
    frames = 7
    scores = torch.randn(2, 3, frames, 2 * frames - 1)  # column k is relative position (frames - 1 - k)
    i, j = torch.meshgrid(torch.arange(frames), torch.arange(frames), indexing="ij")
    expected = scores[:, :, i, frames - 1 - (i - j)]
    assert torch.equal(rel_shift(scores), expected)


def test_output_frames_follow_the_subsampling_arithmetic() -> None:
    for factor in (4, 8):
        model = small_model(subsampling_factor=factor)
        with torch.no_grad():
            log_probs = model(torch.randn(1, 80, 301), torch.tensor([301]))
        assert log_probs.shape == (1, subsampled_lengths(301, factor), 33)
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(1, log_probs.shape[1]))


def test_padding_in_a_batch_does_not_change_an_utterance() -> None:
    """Masks built from `length` keep padded frames out of every time-mixing step."""
    model = small_model()
    short, long = torch.randn(1, 80, 123), torch.randn(1, 80, 400)
    batch = torch.zeros(2, 80, 400)
    batch[0, :, :123], batch[1] = short[0], long[0]
    with torch.no_grad():
        alone = model(short, torch.tensor([123]))
        batched = model(batch, torch.tensor([123, 400]))
    valid = alone.shape[1]
    torch.testing.assert_close(batched[0, :valid], alone[0], atol=1e-4, rtol=1e-4)
