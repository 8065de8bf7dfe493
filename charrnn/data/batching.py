"""The seed's batch layout, as pure functions over an encoded text.

The text is cut into B contiguous streams of L characters each; window k takes
columns [k*T, (k+1)*T) of every stream, and the targets are the inputs shifted
by one character:

    text:     c0 c1 c2 ... c(L-1) | cL ... c(2L-1) | ... | c((B-1)L) ... c(BL-1) c(BL)
    stream 0: c0 ... c(L-1)                   targets: c1 ... cL
    stream 1: cL ... c(2L-1)                  targets: c(L+1) ... c(2L)

    inputs (B, L) = text[:B*L].reshape(B, L);  targets = text[1:B*L+1].reshape(B, L)
    window k = inputs[:, k*T:(k+1)*T], targets[:, k*T:(k+1)*T]     both (B, T)

Consecutive windows of a stream are contiguous, so the state carried from
window k into window k+1 continues the same text (truncated BPTT). The last
L mod T characters of each stream are not used.

A labelled text (--label-by) comes with its segments: where each document's label begins in the text
(starts, ascending, the first 0) and which label it is. A window's labels, (B, T), are looked up from
them for the window's positions, so no array of one label per character is ever held.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from charrnn.errors import UserError


@dataclass(frozen=True)
class Streams:
    """Views of the text as B streams; building it copies nothing (memory maps stay mapped)."""

    inputs: np.ndarray   # (B, L)
    targets: np.ndarray  # (B, L)
    seq_len: int
    segments: Optional[Tuple[np.ndarray, np.ndarray]] = None   # (starts, label ids) of a labelled text
    first_row: int = 0   # which stream of the whole layout row 0 is (a shard's)

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def num_windows(self) -> int:
        return self.inputs.shape[1] // self.seq_len

    def window(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Window k as contiguous int64 arrays (B, T), ready for any engine."""
        if not 0 <= k < self.num_windows:
            raise IndexError(f"window {k} out of range [0, {self.num_windows})")
        cols = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return (np.ascontiguousarray(self.inputs[:, cols], dtype=np.int64),
                np.ascontiguousarray(self.targets[:, cols], dtype=np.int64))

    def labels(self, k: int) -> Optional[np.ndarray]:
        """Window k's labels (B, T) as int64, one per input character; None for an unlabelled text."""
        if self.segments is None:
            return None
        starts, ids = self.segments
        length = self.inputs.shape[1]
        rows = np.arange(self.first_row, self.first_row + self.batch_size, dtype=np.int64)[:, None]
        positions = rows * length + np.arange(k * self.seq_len, (k + 1) * self.seq_len, dtype=np.int64)
        return np.ascontiguousarray(ids[np.searchsorted(starts, positions, side="right") - 1], dtype=np.int64)

    def shard(self, rank: int, world_size: int) -> "Streams":
        """The contiguous share of streams owned by one of `world_size` processes."""
        start, stop = share_of(self.batch_size, rank, world_size)
        return Streams(self.inputs[start:stop], self.targets[start:stop], self.seq_len, self.segments,
                       self.first_row + start)


def share_of(batch_size: int, rank: int, world_size: int) -> Tuple[int, int]:
    """Rows [start, stop) of a batch of streams that process `rank` of `world_size` owns."""
    if batch_size % world_size:
        raise UserError(f"--batch-size {batch_size} does not divide among {world_size} processes; "
                        f"choose a multiple of {world_size} (it is the global batch under torchrun)")
    per = batch_size // world_size
    return rank * per, (rank + 1) * per


def make_streams(data: np.ndarray, batch_size: int, seq_len: int, what: str = "text",
                 segments: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Streams:
    """Lay `data` out as `batch_size` streams cut into `seq_len` windows (see module docstring)."""
    if batch_size < 1 or seq_len < 1:
        raise UserError("--batch-size and --seq-len must be at least 1")
    stream_len = (len(data) - 1) // batch_size
    if stream_len < seq_len:
        need = batch_size * seq_len + 1
        raise UserError(
            f"the {what} has {len(data)} characters, too short for one window of --batch-size {batch_size} "
            f"x --seq-len {seq_len} (needs {need}); use a longer text or smaller --batch-size/--seq-len"
        )
    used = batch_size * stream_len
    return Streams(data[:used].reshape(batch_size, stream_len), data[1 : used + 1].reshape(batch_size, stream_len),
                   seq_len, segments)


def validation_streams(data: np.ndarray, batch_size: int, seq_len: int, multiple_of: int = 1,
                       segments: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Streams | None:
    """Validation laid out like training, with fewer streams when the split is short.

    Returns None when the split cannot hold one window even as `multiple_of` streams.
    """
    b = batch_size
    while b >= multiple_of:
        if (len(data) - 1) // b >= seq_len and b % multiple_of == 0:
            return make_streams(data, b, seq_len, what="validation split", segments=segments)
        b -= 1
    return None


def first_of_each_label(data: np.ndarray, segments: Tuple[np.ndarray, np.ndarray],
                        chars: int) -> Tuple[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """`--val-chars` of a labelled text: the first chars / N characters of each of its N labels' parts (in the
    text's order), so that a short validation still scores every label; a copy, with its own segments."""
    starts, ids = segments
    ends = np.append(starts[1:], len(data))
    per_label = chars // max(1, len(np.unique(ids)))
    left = {int(label): per_label for label in np.unique(ids)}
    pieces, new_starts, new_ids, at = [], [], [], 0
    for start, end, label in zip(starts.tolist(), ends.tolist(), ids.tolist()):
        take = min(end - start, left[label])
        if take <= 0:
            continue
        left[label] -= take
        pieces.append(data[start:start + take])
        new_starts.append(at)
        new_ids.append(label)
        at += take
    if not pieces:
        return data[:0], (np.zeros(1, np.int64), np.zeros(1, np.int64))
    return np.concatenate(pieces), (np.asarray(new_starts, np.int64), np.asarray(new_ids, np.int64))
