"""The errors the command line reports as one line, without a traceback: bad input (files, stores,
checkpoints, options), a store held by another writer, a diverged run, a dead env worker."""

from __future__ import annotations


def user_errors() -> tuple[type[Exception], ...]:
    from robocl.eval.rollout import WorkerDiedError
    from robocl.run.loop import TrainingDiverged
    from robocl.store import StoreLockedError

    return (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        KeyError,
        PermissionError,
        StoreLockedError,
        TrainingDiverged,
        WorkerDiedError,
    )
