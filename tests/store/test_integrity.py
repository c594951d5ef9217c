"""Damage after the commit: every read path and ``robocl validate`` name it; ``--repair`` removes only it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from robocl.cli import main
from robocl.store import TrajectoryStore, WindowSampler
from robocl.store.integrity import DamagedChunkError, DamagedStoreError
from robocl.store.validate import repair_store, validate_store
from tests.store.conftest import FEATURES, final_of, make_episode

N_EPISODES, LENGTH = 12, 10  # 120 steps: image shards hold rows 0..63 and 64..119
CHUNK_ROWS = 8  # low-dimensional chunk c/3 holds rows 24..31: episodes 2 and 3


def episodes_of_rows(lo: int, hi: int) -> list[int]:
    return list(range(lo // LENGTH, (hi - 1) // LENGTH + 1))


@pytest.fixture
def damaged_dir(tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    store = TrajectoryStore.create(path, FEATURES, fps=10, lowdim_chunk_rows=CHUNK_ROWS)
    for e in range(N_EPISODES):
        store.add_episode(make_episode(e, LENGTH), final_obs=final_of(e, LENGTH), task=f"t{e % 2}")
    store.close()
    return path


def _shard_frame_offset(shard: Path, row: int) -> int:
    raw = shard.read_bytes()
    index = np.frombuffer(raw[-(16 * 64 + 4) : -4], dtype="<u8").reshape(64, 2)
    return int(index[row, 0])


# (file, what a byte flip there hits, the rows it damages); the image flip lands inside frame 3 of shard 1.
TARGETS = {
    "lowdim": ("data/action/c/3/0", (24, 32)),
    "image": ("data/observation.images.front/c/1/0/0/0", (64, 120)),
    "table": ("episodes/success/c/0", None),  # the table's rows are episodes: all 12 share one chunk
    "group": ("data/zarr.json", ()),  # group metadata holds no steps
}


def _damage(path: Path, target: str, fault: str) -> list[int]:
    """Apply ``fault`` to ``target``; returns the episodes that lost data."""
    key, rows = TARGETS[target]
    file = path / key
    raw = bytearray(file.read_bytes())
    if fault == "flip":
        at = _shard_frame_offset(file, 3) + 10 if target == "image" else len(raw) // 2
        raw[at] ^= 0xFF
        file.write_bytes(bytes(raw))
        if target == "image":
            rows = (67, 68)
    elif fault == "truncate":
        file.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        file.unlink()
    if rows is None:
        return list(range(N_EPISODES))
    return episodes_of_rows(*rows) if rows else []


def _assert_episode_equals_original(store: TrajectoryStore, index: int, original: int) -> None:
    ep = store.episode(index)
    for key, values in make_episode(original, LENGTH).items():
        np.testing.assert_array_equal(ep[key], values, err_msg=f"{key} of episode {original}")
    for key, value in final_of(original, LENGTH).items():
        np.testing.assert_array_equal(ep.final_obs[key], value)
    assert ep.task == f"t{original % 2}"


@pytest.mark.parametrize("fault", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("target", list(TARGETS))
def test_fault_is_named_by_validate_and_drop_repair_keeps_everything_else(damaged_dir, target, fault):
    damaged = _damage(damaged_dir, target, fault)
    report = validate_store(damaged_dir)
    assert not report.ok
    assert report.damaged_episodes == damaged
    where = TARGETS[target][0].rsplit("/c/", 1)[0].removesuffix("/zarr.json")
    assert all(where in p.where for p in report.problems), report.as_text()

    result = repair_store(damaged_dir, "drop")
    assert result.dropped == damaged and result.kept == N_EPISODES - len(damaged)
    assert validate_store(damaged_dir).ok
    repaired = TrajectoryStore.open(damaged_dir)
    kept = [e for e in range(N_EPISODES) if e not in damaged]
    assert repaired.n_episodes == len(kept)
    for index, original in enumerate(kept):
        _assert_episode_equals_original(repaired, index, original)
    if damaged:
        assert Path(result.damaged_copy).is_dir()  # the original, kept aside


def test_truncate_repair_keeps_the_prefix_in_place(damaged_dir, capsys):
    _damage(damaged_dir, "lowdim", "flip")  # episodes 2 and 3
    assert main(["validate", str(damaged_dir)]) == 1
    out = capsys.readouterr().out
    assert "data/action chunk c/3/0 (rows 24..31): fails its crc32c checksum" in out
    assert "(episodes 2-3)" in out
    assert main(["validate", str(damaged_dir), "--repair", "truncate"]) == 0
    out = capsys.readouterr().out
    assert "kept 2 episodes, removed 10" in out and f"{damaged_dir}: OK" in out
    store = TrajectoryStore.open(damaged_dir, "a")
    assert store.n_episodes == 2 and store.n_steps == 2 * LENGTH
    _assert_episode_equals_original(store, 1, 1)
    # Statistics describe the kept steps only, and appending after the cut works.
    np.testing.assert_allclose(store.stats["action"]["max"], [1.25, 9.25])
    store.add_episode(make_episode(2, LENGTH), final_obs=final_of(2, LENGTH), task="t0")
    store.close()
    assert validate_store(damaged_dir).ok


def test_store_reads_name_the_damaged_chunk_and_episodes(damaged_dir):
    _damage(damaged_dir, "lowdim", "flip")
    store = TrajectoryStore.open(damaged_dir)
    with pytest.raises(DamagedChunkError, match=r"data/action chunk c/3/0 \(rows 24..31, episodes 2-3\)"):
        store.steps("action")  # what the samplers load
    with pytest.raises(DamagedChunkError, match="episodes 2-3"):
        store.episode(3)
    with pytest.raises(DamagedChunkError, match=r"chunk c/3/0 .*episodes 2-3"):
        store.take("action", np.array([25, 3]))  # the fading replay's reads of old transitions
    np.testing.assert_array_equal(store.take("action", np.array([41, 3])), [[4.25, 1.25], [0.25, 3.25]])
    np.testing.assert_array_equal(store.episode(5)["action"], make_episode(5, LENGTH)["action"])


def test_appending_next_to_a_damaged_chunk_names_it_and_commits_nothing(damaged_dir):
    store = TrajectoryStore.open(damaged_dir, "a")
    store.add_episode(make_episode(12, 3))  # rows 120..122: reward chunk c/15 is left partly filled
    store.close()
    path = damaged_dir / "data/reward/c/15"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    store = TrajectoryStore.open(damaged_dir, "a")
    with pytest.raises(DamagedChunkError, match=r"data/reward chunk c/15 \(rows 120..122, episode 12\)"):
        store.add_episode(make_episode(13, 2))  # rewriting c/15 reads it back first
    assert store.n_episodes == N_EPISODES + 1
    store.close()


def test_direct_shard_decoder_checks_every_frame(damaged_dir):
    _damage(damaged_dir, "image", "flip")  # frame 3 of shard 1: row 67, episode 6
    store = TrajectoryStore.open(damaged_dir)
    sampler = WindowSampler(store, n_obs=1, horizon=1, seed=0)
    with pytest.raises(DamagedChunkError, match=r"c/1/0/0/0 .*frame 3 fails its crc32c") as err:
        sampler.get_batch(np.arange(len(sampler)))
    assert err.value.episodes == [6] and err.value.rows == (67, 68)


def test_deleted_chunks_are_errors_not_zeros(damaged_dir):
    (damaged_dir / "data/reward/c/0").unlink()
    store = TrajectoryStore.open(damaged_dir)
    with pytest.raises(DamagedChunkError, match=r"data/reward chunk c/0 .*episode 0.*is missing"):
        store.steps("reward")
    report = validate_store(damaged_dir, read_chunks=False)  # --quick lists files without reading them
    assert [str(p) for p in report.problems] == ["data/reward chunk c/0 (rows 0..7): is missing (episode 0)"]


def test_all_zero_chunks_and_black_frames_are_written(tmp_path):
    store = TrajectoryStore.create(tmp_path / "z.zarr", FEATURES, fps=10)
    steps = {k: np.zeros_like(v) for k, v in make_episode(0, 3).items()}
    store.add_episode(steps)
    store.close()
    assert validate_store(tmp_path / "z.zarr").ok  # zarr alone would skip these chunks: "missing"


def test_validate_never_raises_and_names_what_is_unreadable(damaged_dir, tmp_path):
    (damaged_dir / "episodes" / "final" / "zarr.json").unlink()
    (damaged_dir / "episodes" / "zarr.json").unlink()
    report = validate_store(damaged_dir)
    assert report.damaged_episodes == [] and len(report.problems) == 2
    shutil.rmtree(damaged_dir / "data" / "reward")
    meta = damaged_dir / "data" / "action" / "zarr.json"
    meta.write_text(meta.read_text()[:50])
    report = validate_store(damaged_dir)
    for array in ("data/reward", "data/action"):
        assert f"array {array}: metadata (zarr.json) missing or unreadable" in report.as_text()
    assert report.damaged_episodes == list(range(N_EPISODES))

    root = damaged_dir / "zarr.json"
    root.write_text(root.read_text()[:40])
    report = validate_store(damaged_dir)
    assert report.damaged_episodes is None
    assert "zarr.json is not valid JSON (truncated?)" in str(report.problems[0])
    with pytest.raises(DamagedStoreError, match="cannot repair"):
        repair_store(damaged_dir, "truncate")


def _rewrite_as_format_1(path: Path) -> None:
    """What robocl wrote before checksums: blosc without crc32c, all-zero chunks skipped, format 1."""
    root = zarr.open_group(path, mode="r+")
    for name, array in [*root["data"].arrays(), *root["episodes"].arrays(), *root["episodes/final"].arrays()]:
        group = array.path.rsplit("/", 1)[0]
        values, chunks, shards = array[:], array.chunks, array.shards
        blosc = next(c for c in array.compressors if isinstance(c, BloscCodec))
        del root[array.path]
        new = root[group].create_array(
            name, shape=values.shape, dtype=values.dtype, chunks=chunks, shards=shards, compressors=[blosc]
        )
        new[:] = values
    header = root.attrs["robocl"]
    root.update_attributes({"robocl": header | {"format_version": 1}})


def test_format_1_stores_open_append_and_validate_with_a_note(damaged_dir):
    _rewrite_as_format_1(damaged_dir)
    store = TrajectoryStore.open(damaged_dir, "a")
    assert store.format_version == 1 and not store.checksummed
    store.add_episode(make_episode(12, LENGTH), final_obs=final_of(12, LENGTH), task="t0")
    store.close()
    report = validate_store(damaged_dir)
    assert report.ok and "no crc32c" in report.notes[0]
    _assert_episode_equals_original(TrajectoryStore.open(damaged_dir), 12, 12)
    assert json.loads((damaged_dir / "zarr.json").read_text())["attributes"]["robocl"]["format_version"] == 1
