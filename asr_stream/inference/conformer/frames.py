"""Subsampling arithmetic shared by the PyTorch definition and the torch-free runner."""

from __future__ import annotations

from typing import Protocol, Self, TypeVar


class _IntArithmetic(Protocol):
    """What the formula uses: `- int`, `// int` and `+ int`, each giving the same kind of value."""

    def __sub__(self, other: int, /) -> Self: ...
    def __floordiv__(self, other: int, /) -> Self: ...
    def __add__(self, other: int, /) -> Self: ...


Lengths = TypeVar("Lengths", bound=_IntArithmetic)  # int, numpy int array or torch int tensor


def subsampled_lengths(lengths: Lengths, factor: int) -> Lengths:
    """Frames left after log2(factor) convs of kernel 3, stride 2, padding 1 (NeMo's calc_length).

    NeMo's exported graphs emit only log-probs, so the runner derives each utterance's valid
    output frames from its input frames with this same formula.
    """
    for _ in range(factor.bit_length() - 1):
        lengths = (lengths - 1) // 2 + 1
    return lengths
