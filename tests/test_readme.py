"""The README's quick-start block runs as written, copy-paste, from an empty folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start() -> str:
    text = README.read_text()
    match = re.search(r"<!-- quick-start -->\n```bash\n(.*?)```\n<!-- /quick-start -->", text, re.DOTALL)
    assert match, "README.md has no <!-- quick-start --> bash block"
    return match.group(1)


@pytest.mark.slow
def test_the_quick_start_block_runs_from_an_empty_folder(tmp_path):
    # The robocl command of this interpreter's environment, as an activated venv puts it on PATH.
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "MUJOCO_GL": "egl"}
    env.pop("PYTHONPATH", None)  # nothing from the clone: the installed package only
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", quick_start()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for made in (
        "demos.zarr/zarr.json",
        "runs/bc/checkpoints/bc/last/config.json",
        "runs/bc/checkpoints/bc/eval/last_robocl_PickPlace-v0_seen/videos/episode_000.mp4",
        "runs/co-rft/checkpoints/rl/last/config.json",
        "plots",
        "lerobot_demos/meta/info.json",
    ):
        assert (tmp_path / made).exists(), made
    assert "bc: " in result.stderr and " more updates, about " in result.stderr  # the duration estimate
