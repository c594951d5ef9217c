"""Progress output for every long-running command: a tqdm bar on a terminal; elsewhere (CI logs, ``nohup``,
a pipe) one plain line every ``every_s`` seconds and at the end, instead of a wall of carriage returns."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """A tqdm bar on a terminal; elsewhere (CI logs, ``nohup``) one plain line every ``every_s`` seconds and
    at the end, instead of a wall of carriage returns. ``enabled=False`` prints nothing."""

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "",
        unit: str = "upd",
        enabled: bool = True,
        every_s: float = 30.0,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.enabled, self.every_s = enabled, every_s
        self.stream = stream or sys.stderr
        self._bar: Any = None
        self._postfix = ""
        self._start, self._start_n = time.perf_counter(), initial
        self._last_line = self._start
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.perf_counter() - self._last_line >= self.every_s:
            self._line()

    def set_postfix(self, values: dict[str, float]) -> None:
        self._postfix = " ".join(f"{k}={v:.3g}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix)

    def rate(self) -> float:
        """Items per second since this progress started."""
        return (self.n - self._start_n) / max(time.perf_counter() - self._start, 1e-9)

    def _line(self) -> None:
        rate = self.rate()
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        print(
            f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%), "
            f"{rate:.3g} {self.unit}/s, eta {format_duration(eta)} {self._postfix}".rstrip(),
            file=self.stream,
            flush=True,
        )
        self._last_line = time.perf_counter()

    def note(self, text: str) -> None:
        """One line of text that does not break the bar (printed even off a terminal)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.n > self._start_n:
            self._line()


def progress_iter(items: Sequence[T], *, desc: str, unit: str = "ep", enabled: bool = True) -> Iterator[T]:
    """``items`` with :class:`Progress` output."""
    with Progress(len(items), desc=desc, unit=unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(1)


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` for an unknown (infinite) duration."""
    if seconds == float("inf"):
        return "?"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"
