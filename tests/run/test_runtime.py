"""Process-wide settings: how Ctrl-C reaches the loop."""

from __future__ import annotations

import os
import signal

import pytest

from robocl.run.runtime import DeferredInterrupt


def test_ctrl_c_is_deferred_to_the_loop_and_a_second_one_raises() -> None:
    before = signal.getsignal(signal.SIGINT)
    interrupt = DeferredInterrupt()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs before kill() returns to Python code
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        interrupt.restore()
    assert signal.getsignal(signal.SIGINT) is before
