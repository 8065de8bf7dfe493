"""Characters from a generator thread to server-sent events.

The engines step in plain Python/NumPy/torch calls, so a generation runs in its own thread and
hands characters to the event loop; each event carries whatever piled up while the last one was
being sent, so a fast model costs few events and a slow one shows every character as it comes.
"""
from __future__ import annotations

import asyncio
import json
import threading
from typing import AsyncIterator, Callable, Iterator, Optional, Tuple


def sse(event: str, data: dict) -> str:
    """One server-sent event: a name and a JSON payload (JSON escapes newlines, so one data line)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class Generation:
    """Runs `chars` in a new thread from `start()`; `release` is called in that thread when it ends,
    however it ends, so a slot is returned even if nobody ever reads the events. Make it and start
    it from the event loop. `chars` yields steps: a character, or (for n samples drawn together) a
    string of n characters, one per sample."""

    def __init__(self, prime: str, chars: Iterator[str], release: Callable[[], None]):
        self.prime, self.chars, self.release = prime, chars, release
        self.loop = asyncio.get_running_loop()
        self.items: asyncio.Queue = asyncio.Queue()
        self.stop = threading.Event()

    def start(self) -> "Generation":
        threading.Thread(target=self._produce, name="charrnn-generate", daemon=True).start()
        return self

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.stop.set()

    def _produce(self) -> None:
        outcome = ("end", {"reason": "done"})
        try:
            for ch in self.chars:
                if self.stop.is_set():
                    outcome = ("end", {"reason": "stopped"})
                    break
                self._put(ch)
        except Exception as e:  # a bug, not the user's: say so in the stream rather than cut it silently
            outcome = ("error", {"error": f"generation failed: {type(e).__name__}: {e}"})
        finally:
            self.release()
            self._put(outcome)

    async def batches(self) -> AsyncIterator[Tuple[list, Optional[tuple]]]:
        """(steps, end): the steps (what `chars` yields) that piled up since the last batch, and at the last
        batch the end: ("end", {"reason": "done" | "stopped"}) or ("error", {"error": message}); else None.
        Closing this iterator stops the thread at its next step."""
        try:
            while True:
                batch = [await self.items.get()]
                while not self.items.empty():
                    batch.append(self.items.get_nowait())
                ends = [item for item in batch if isinstance(item, tuple)]
                yield [item for item in batch if not isinstance(item, tuple)], (ends[0] if ends else None)
                if ends:
                    return
        finally:
            self.stop.set()

    async def events(self) -> AsyncIterator[str]:
        """"prime", then "text" (batches of characters), then "end" {"reason": "done" | "stopped"} or
        "error". Closing this iterator (the client went away or pressed stop) stops the thread at its
        next character."""
        try:
            yield sse("prime", {"text": self.prime})
            async for steps, end in self.batches():
                if steps:
                    yield sse("text", {"text": "".join(steps)})
                if end:
                    yield sse(*end)
        finally:
            self.stop.set()
