"""TensorBoard event files beside metrics.jsonl, so that `tensorboard --logdir runs/` shows every run.

Each metrics.jsonl row becomes one event at the row's iteration: one scalar per number in the row, named
by TAGS (train and validation loss in nats and bits per character, learning rate, characters per second,
epoch, seconds); `--sample-every`'s samples become text events. Optional: it needs the `tensorboard` extra,
and without it one line says how to install it and training goes on.

Written with TensorBoard's own record writer and protocol buffers (the ones torch.utils.tensorboard and
tensorboardX build on), synchronously in the training thread, and not through a SummaryWriter: both of those
write from a background thread, so a full disk became a thread's traceback (tensorboardX's then hangs training
once its queue fills) where the rest of the run directory gives one line; and torch's imports TensorFlow
wherever it is installed (4 s and its log lines on every run).

Resume: the new file starts with TensorBoard's restart marker (SessionLog START at the resumed iteration + 1,
what SummaryWriter's `purge_step` writes), so readers drop the older files' events past the checkpoint, as
metrics.jsonl drops its rows. A fresh run removes the event files an earlier charrnn run left in its
directory, and no other program's.
"""
from __future__ import annotations

import math
import os
import re
import socket
import struct
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from charrnn.errors import install_hint

EVENTS_PREFIX = "events.out.tfevents."   # how TensorBoard finds event files in a run directory
OWN_SUFFIX = ".charrnn"                   # ends the names of the event files charrnn writes (_new_file_name)
TAGS = {                                  # metrics.jsonl key -> TensorBoard tag ("section/chart")
    "train_loss": "loss/train", "val_loss": "loss/validation",           # nats per character
    "train_bpc": "bpc/train", "val_bpc": "bpc/validation",               # bits per character
    "lr": "train/lr", "chars_per_sec": "train/chars_per_sec", "grad_norm": "train/grad_norm",
    "epoch": "progress/epoch", "elapsed_s": "progress/elapsed_s",
}
STEP_KEY = "iter"
SAMPLE_TAG = "samples"
INSTALL_LINE = ("note: no TensorBoard events for this run: the tensorboard package is not installed; "
                f"{install_hint('tensorboard')}")


def tag_for(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key; a key TAGS does not know keeps its own name."""
    return TAGS.get(key, key)


def event_files(run_dir: Path) -> list:
    return sorted(Path(run_dir).glob(EVENTS_PREFIX + "*"))


def open_event_log(run_dir: Path, resume_from_iter: Optional[int],
                   warn: Callable[[str], None]) -> Optional["EventLog"]:
    """The run's event log, or None (after one line from `warn`) when TensorBoard is not installed.
    A fresh run (resume_from_iter None) first removes an earlier run's event files, as its metrics.jsonl
    starts empty; only charrnn's own (OWN_SUFFIX): another program's, in a folder given as --out, are the
    user's. OSError: the directory cannot be written (the caller words it)."""
    if resume_from_iter is None:
        for path in event_files(run_dir):
            if path.name.endswith(OWN_SUFFIX):
                path.unlink()
    try:
        return EventLog(Path(run_dir), resume_from_iter)
    except ImportError:
        warn(INSTALL_LINE)
        return None


class EventLog:
    """One event file for this session of the run; every event is flushed to the OS as it is written
    (a killed process loses nothing metrics.jsonl kept; like metrics.jsonl's appends, no fsync)."""

    def __init__(self, run_dir: Path, resume_from_iter: Optional[int]):
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        # a tag gets one point per step, the first: a step at or below the checkpoint is in an older file already
        self._floor = -1 if resume_from_iter is None else resume_from_iter
        self._last_step: Dict[str, int] = {}
        self.path = run_dir / _new_file_name(run_dir)
        self._file = open(self.path, "wb")
        self._records = _record_writer(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        if resume_from_iter is not None:
            self._write(event_pb2.Event(wall_time=time.time(), step=resume_from_iter + 1,
                                        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def scalars(self, row: dict) -> None:
        """A metrics.jsonl row: every number in it (but the step) as a scalar at step row["iter"]."""
        step = row.get(STEP_KEY)
        if not _is_number(step):
            return
        values = []
        for key, value in row.items():
            tag = tag_for(key)
            if key == STEP_KEY or not _is_number(value) or step <= self._last_step.get(tag, self._floor):
                continue
            self._last_step[tag] = int(step)
            values.append(self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value)))
        if values:  # one event per row: one write, whatever the number of scalars
            self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                              summary=self._summary_pb2.Summary(value=values)))

    def text(self, text: str, step: int, tag: str = SAMPLE_TAG) -> None:
        """A text event, shown verbatim: TensorBoard renders text as Markdown, and indenting every line by
        four spaces makes the whole of it one code block (`sample_text` undoes it)."""
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2
        from tensorboard.plugins.text.metadata import create_summary_metadata

        if step <= self._last_step.get(tag, self._floor):
            return
        self._last_step[tag] = int(step)
        tensor = tensor_pb2.TensorProto(dtype="DT_STRING", tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                        string_val=[as_code_block(text).encode("utf-8")])
        value = self._summary_pb2.Summary.Value(tag=tag, tensor=tensor,
                                                metadata=create_summary_metadata(tag, "a sample during training"))
        self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                          summary=self._summary_pb2.Summary(value=[value])))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
        self._file.flush()


class _Records:
    """TFRecord framing, the format of event files: length, its masked CRC-32C, the bytes, theirs. TensorBoard's
    own RecordWriter does the same but imports its TensorFlow stub (some 16 MB of a training process's peak)
    for the checksum; google-crc32c computes it in C."""

    def __init__(self, file, crc32c):
        self._file, self._crc32c = file, crc32c

    def _masked(self, data: bytes) -> bytes:
        crc = self._crc32c(data)
        return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    def write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._file.write(header + self._masked(header) + data + self._masked(data))


def _record_writer(file):
    try:
        from google_crc32c import value as crc32c
    except ImportError:  # installed with the tensorboard extra; TensorBoard's writer works without it
        from tensorboard.summary.writer.record_writer import RecordWriter

        return RecordWriter(file)
    return _Records(file, crc32c)


def as_code_block(text: str) -> str:
    return "\n".join("    " + line for line in text.split("\n"))


def sample_text(block: str) -> str:
    """The sample a text event holds (as_code_block undone)."""
    return "\n".join(line[4:] for line in block.split("\n"))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _new_file_name(run_dir: Path) -> str:
    """TensorBoard's naming (time, host, process), named so that it sorts after every event file already there:
    readers load a directory's files in name order, and a restart marker acts on the files before it."""
    stamp = int(time.time())
    for path in event_files(run_dir):
        found = re.match(re.escape(EVENTS_PREFIX) + r"(\d+)\.", path.name)
        if found:
            stamp = max(stamp, int(found.group(1)) + 1)   # a second in the future at worst; it is only a name
    return f"{EVENTS_PREFIX}{stamp:010d}.{socket.gethostname()}.{os.getpid()}{OWN_SUFFIX}"
