"""Audio handed between processes through shared memory: a named segment of float32 samples.

One process writes an arena (an ingest worker puts each segment's audio there); another attaches
to it by name and reads what a request names (the inference process); requests between them
carry only (offset, count). The writer decides what is free with an
`ArenaAllocator`; the region of a request is freed when its answer comes back.

Why first-fit and not a ring: answers come back out of order (finals jump ahead of partials, a
superseded partial is answered at once), so a ring's tail would stall behind its oldest
unanswered request while later space is already free. First-fit reuses any hole, and because it
always takes the lowest offset that fits, the segment's high-water mark (the pages of /dev/shm
actually touched) stays at the peak of audio outstanding at once, not the arena's size.
"""

from __future__ import annotations

import bisect
import contextlib
from multiprocessing import shared_memory

import numpy as np

SAMPLE = np.dtype(np.float32)
#: Allocations start on 64-byte boundaries (16 samples), the width of the widest SIMD loads.
ALIGN_SAMPLES = 16


class SharedArena:
    """A shared-memory segment seen as float32 samples; `create` by the owner, `attach` by readers."""

    def __init__(self, memory: shared_memory.SharedMemory, owner: bool) -> None:
        self._memory = memory
        self._owner = owner
        assert memory.buf is not None  # open until close()
        self._buf = memory.buf
        self.samples = memory.size // SAMPLE.itemsize

    @classmethod
    def create(cls, name: str, size_bytes: int) -> SharedArena:
        """A new segment (sparse: pages are only allocated when first written)."""
        return cls(shared_memory.SharedMemory(name=name, create=True, size=size_bytes), owner=True)

    @classmethod
    def attach(cls, name: str) -> SharedArena:
        """An existing segment by name; FileNotFoundError if its owner has removed it."""
        return cls(shared_memory.SharedMemory(name=name), owner=False)

    @property
    def name(self) -> str:
        return self._memory.name

    def view(self, offset: int, count: int) -> np.ndarray:
        """Samples [offset, offset + count) without a copy; valid while the arena is open."""
        if offset < 0 or count < 0 or offset + count > self.samples:
            raise ValueError(f"samples {offset}..{offset + count} are outside the arena of {self.samples}")
        return np.frombuffer(self._buf, SAMPLE, count, offset * SAMPLE.itemsize)

    def write(self, offset: int, audio: np.ndarray) -> None:
        self.view(offset, audio.shape[0])[:] = audio

    def close(self) -> None:
        """Unmap (every view must have been dropped: take copies of what must outlive a request)."""
        self._memory.close()

    def destroy(self) -> None:
        """The owner's last step: unmap and remove the name (the pages go once every reader unmapped)."""
        self.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self._memory.unlink()


class ArenaAllocator:
    """First-fit allocation of sample ranges of one arena, by the one process that writes it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity - capacity % ALIGN_SAMPLES
        self._free: list[tuple[int, int]] = [(0, self.capacity)]  # (offset, count), sorted, never adjacent
        self._taken: dict[int, int] = {}

    @property
    def used(self) -> int:
        """Samples allocated (rounded up to the alignment)."""
        return sum(self._taken.values())

    def allocate(self, count: int) -> int | None:
        """The offset of `count` free samples, or None if no hole is large enough."""
        size = max(ALIGN_SAMPLES, -(-count // ALIGN_SAMPLES) * ALIGN_SAMPLES)
        for index, (offset, free) in enumerate(self._free):
            if free >= size:
                if free == size:
                    del self._free[index]
                else:
                    self._free[index] = (offset + size, free - size)
                self._taken[offset] = size
                return offset
        return None

    def free(self, offset: int) -> None:
        """Give back what `allocate` returned at `offset`; neighbouring holes merge."""
        size = self._taken.pop(offset)
        index = bisect.bisect_left(self._free, (offset, 0))
        if index < len(self._free) and self._free[index][0] == offset + size:  # merge with the next hole
            size += self._free.pop(index)[1]
        if index > 0 and sum(self._free[index - 1]) == offset:  # and with the previous one
            previous_offset, previous_size = self._free[index - 1]
            self._free[index - 1] = (previous_offset, previous_size + size)
        else:
            self._free.insert(index, (offset, size))
