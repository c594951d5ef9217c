"""A store on S3, served by moto's server on 127.0.0.1 (skipped only when moto or s3fs is missing)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from robocl.store import StoreLockedError, TrajectoryStore, WindowSampler
from robocl.store.locks import ObjectStoreLock
from robocl.store.validate import validate_store
from tests.store.conftest import FEATURES, final_of, make_episode

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3_options():
    # moto checks If-None-Match and then writes, two steps that two racing puts can interleave on a loaded
    # machine (a CI run beside a benchmark once saw both writers get the lock). S3 decides a conditional put
    # atomically, so the mock's put is serialised here; robocl's own requests still race freely.
    from moto.s3.responses import S3Response

    put, one_at_a_time = S3Response.put_object, threading.Lock()

    def atomic_put(self: S3Response) -> Any:
        with one_at_a_time:
            return put(self)

    patch = pytest.MonkeyPatch()
    patch.setattr(S3Response, "put_object", atomic_put)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1"},
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="robocl-test")
    yield options
    server.stop()
    patch.undo()


def test_s3_round_trip_lock_and_sampling(s3_options):
    url = "s3://robocl-test/demo.zarr"
    store = TrajectoryStore.create(url, FEATURES, fps=10, storage_options=s3_options)
    for e, length in enumerate([4, 70]):  # 70 frames span two image shards
        store.add_episode(make_episode(e, length), final_obs=final_of(e, length), task="push")
    with pytest.raises(StoreLockedError, match="writer lock"):
        TrajectoryStore.open(url, "a", storage_options=s3_options)
    store.close()

    reader = TrajectoryStore.open(url, "r", storage_options=s3_options)
    assert reader.n_episodes == 2 and reader.tasks == ["push"]
    np.testing.assert_array_equal(
        reader.episode(1)["observation.images.front"], make_episode(1, 70)["observation.images.front"]
    )
    batch = WindowSampler(reader, n_obs=2, horizon=3).get_batch(np.array([0, 73]))
    np.testing.assert_array_equal(
        batch["obs"]["observation.images.front"][1, 1], make_episode(1, 70)["observation.images.front"][69]
    )
    assert validate_store(url, storage_options=s3_options).ok

    writer = TrajectoryStore.open(url, "a", storage_options=s3_options)  # lock released by close()
    writer.add_episode(make_episode(2, 3))
    writer.close()
    reader.refresh()
    assert reader.n_episodes == 3


def test_racing_writers_never_both_get_the_lock(s3_options):
    """Two writers, each with its own S3 client, start together (the second up to 10 ms later, seeded):
    with check-then-write locking both won in several of these trials; with a conditional put, never."""
    import s3fs

    clients = [s3fs.S3FileSystem(**s3_options, skip_instance_cache=True) for _ in range(2)]
    delays = np.random.default_rng(0).uniform(0, 0.01, size=60)
    barrier = threading.Barrier(2)

    def take(writer: int, trial: int) -> ObjectStoreLock | None:
        barrier.wait()
        time.sleep(delays[trial] * writer)
        try:
            return ObjectStoreLock(clients[writer], "robocl-test/race.zarr", break_lock=False)
        except StoreLockedError:
            return None

    with ThreadPoolExecutor(2) as pool:
        for trial in range(len(delays)):
            held = [lock for lock in pool.map(take, [0, 1], [trial, trial]) if lock is not None]
            assert len(held) == 1, f"trial {trial}: {len(held)} writers hold the lock"
            held[0].release()


def test_broken_lock_is_not_released_by_its_old_owner_and_overwrite_waits(s3_options):
    url = "s3://robocl-test/broken.zarr"
    first = TrajectoryStore.create(url, FEATURES, fps=10, storage_options=s3_options)
    first.add_episode(make_episode(0, 3))
    with pytest.raises(StoreLockedError):  # overwrite takes the lock first: the live writer keeps its store
        TrajectoryStore.create(url, FEATURES, fps=10, overwrite=True, storage_options=s3_options)
    second = TrajectoryStore.open(url, "a", storage_options=s3_options, break_lock=True)
    with pytest.warns(RuntimeWarning, match="broke this writer's lock"):
        first.close()
    with pytest.raises(StoreLockedError):  # the second writer's lock survived the first one's release
        TrajectoryStore.open(url, "a", storage_options=s3_options)
    second.close()
    assert TrajectoryStore.open(url, storage_options=s3_options).n_episodes == 1
    with pytest.raises(FileExistsError, match="overwrite=True"):
        TrajectoryStore.create(url, FEATURES, fps=10, storage_options=s3_options)
    fresh = TrajectoryStore.create(url, FEATURES, fps=10, overwrite=True, storage_options=s3_options)
    assert fresh.n_episodes == 0
    fresh.close()
