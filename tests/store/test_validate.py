from __future__ import annotations

import json

import zarr

from robocl.cli import main
from robocl.store.validate import validate_store


def test_valid_store_passes_and_cli_reports(filled_store, capsys):
    filled_store.close()
    assert validate_store(filled_store.location).ok
    assert main(["validate", filled_store.location]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["info", filled_store.location, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_episodes"] == 5 and info["n_steps"] == 28
    assert info["success_rate"] == 0.4
    assert info["tasks"] == ["task 0", "task 1"]
    assert info["features"]["observation.images.front"]["shape"] == [6, 5, 3]
    assert info["bytes_stored"] > 0
    assert main(["info", filled_store.location]) == 0
    text = capsys.readouterr().out
    assert "episodes     5   steps 28" in text and "success rate 40.0%" in text


def test_corrupt_chunk_is_reported_with_its_array(filled_store, capsys):
    filled_store.close()
    chunk = next((filled_store._zstore.root / "data" / "action" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.write_bytes(b"not a blosc frame")
    report = validate_store(filled_store.location)
    assert not report.ok
    assert [str(p) for p in report.problems] == [
        "data/action chunk c/0/0 (rows 0..27): fails its crc32c checksum (bytes changed after they were "
        "written) (episodes 0-4)"
    ]
    assert main(["validate", filled_store.location]) == 1
    assert "PROBLEM: data/action" in capsys.readouterr().out


def test_commit_record_ahead_of_arrays_is_reported(filled_store):
    filled_store.close()
    root = zarr.open_group(filled_store.location, mode="r+")
    commit = root.attrs["commit"]
    root.update_attributes({"commit": commit | {"n_steps": commit["n_steps"] + 3}})
    report = validate_store(filled_store.location)
    assert "data/action: 28 rows but the commit record says 31" in report.as_text()


def test_missing_array_and_non_store(filled_store, tmp_path):
    filled_store.close()
    zarr.open_group(filled_store.location, mode="r+")["episodes"].__delitem__("success")
    report = validate_store(filled_store.location)
    assert [str(p) for p in report.problems] == [
        "array episodes/success: metadata (zarr.json) missing or unreadable, its data too (episodes 0-4)"
    ]
    report = validate_store(tmp_path / "nothing.zarr")
    assert not report.ok and "no robocl store at" in str(report.problems[0])


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.zarr")]) == 2
    assert "no robocl store" in capsys.readouterr().err
