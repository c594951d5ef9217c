"""A store on S3, served by moto's server on 127.0.0.1 (skipped only when moto or s3fs is missing)."""

from __future__ import annotations

import numpy as np
import pytest

from robocl.store import StoreLockedError, TrajectoryStore, WindowSampler
from robocl.store.validate import validate_store
from tests.store.conftest import FEATURES, final_of, make_episode

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3_options():
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
