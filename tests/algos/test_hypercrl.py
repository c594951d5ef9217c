"""HyperCRL: generated weights, look-ahead, output regulariser, per-task statistics, the continual run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from robocl.algos.dynamics import HyperCRLConfig, StateCodec, TaskData, model_input
from robocl.algos.hypercrl import HnetLearner, HyperCRL, adam_lookahead
from robocl.cli import build_parser, main
from robocl.nets import MLP
from robocl.nets.hypernet import HyperNetwork, mlp_forward, mlp_shapes
from robocl.run.continual import train_hypercrl
from robocl.run.layout import RunDir
from robocl.store import TrajectoryStore


def test_generated_weights_have_the_target_shapes_and_drive_an_ordinary_mlp() -> None:
    torch.manual_seed(0)
    shapes = mlp_shapes(5, (7, 6), 3)
    assert shapes == [(7, 5), (7,), (6, 7), (6,), (3, 6), (3,)]
    hnet = HyperNetwork(shapes, embedding_dim=10, hidden=(8, 8))
    assert all(torch.equal(h.bias, torch.zeros_like(h.bias)) for h in hnet.heads)  # Xavier init, zero biases
    bound = (6 / (8 + 42)) ** 0.5  # Xavier-uniform bound of the (6*7)-output head
    assert hnet.heads[2].weight.abs().max() <= bound
    weights = hnet(torch.randn(10))
    assert [tuple(w.shape) for w in weights] == shapes
    assert [tuple(w.shape) for w in hnet(torch.randn(4, 10))] == [(4, *s) for s in shapes]
    mlp = MLP(5, (7, 6), 3)
    mlp.load_state_dict(dict(zip(mlp.state_dict(), weights, strict=True)))
    x = torch.randn(9, 5)
    torch.testing.assert_close(mlp_forward(x, weights), mlp(x), atol=1e-6, rtol=0)


def test_lookahead_equals_adams_next_step_and_leaves_its_state_alone() -> None:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.Adam([p], lr=0.01)
    for k in range(4):  # k = 0 checks the empty-state first step
        p.grad = torch.randn(4, 3)
        state_before = copy.deepcopy(opt.state_dict())
        delta = adam_lookahead(opt)[p]
        after_lookahead = opt.state_dict()
        if k:
            assert torch.equal(after_lookahead["state"][0]["exp_avg"], state_before["state"][0]["exp_avg"])
            assert torch.equal(
                after_lookahead["state"][0]["exp_avg_sq"], state_before["state"][0]["exp_avg_sq"]
            )
            assert float(after_lookahead["state"][0]["step"]) == k
        else:
            assert after_lookahead["state"] == {}
        start = p.detach().clone()
        opt.step()
        torch.testing.assert_close(p.detach() - start, delta, atol=1e-7, rtol=1e-5)


def _drift_of_task0(beta: float) -> float:
    """Train two tiny regression tasks; how far the generated weights of task 0 move during task 1."""
    config = HyperCRLConfig(hidden=(16,), hnet_hidden=(16,), beta=beta, lr=3e-3, seed=0)
    learner = HnetLearner(config, in_dim=3, out_dim=2)
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(3, 2, generator=gen), torch.randn(3, 2, generator=gen)]

    def batch(j: int, idx: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(32, 3, generator=gen)
        return x, x @ maps[j]

    for task in range(2):
        learner.start_task(task, [])
        if task == 1:
            before = [w.detach().clone() for w in learner.weights(0)]
        losses = [learner.train_step(batch, task)["loss"] for _ in range(150)]
        assert losses[-1] < 0.5 * losses[0]  # both tasks are learned
    with torch.no_grad():
        after = learner.weights(0)
    return float(sum(((a - b) ** 2).sum() for a, b in zip(after, before, strict=True)) ** 0.5)


def test_output_regulariser_keeps_earlier_task_weights_fixed() -> None:
    protected, unprotected = _drift_of_task0(beta=1.0), _drift_of_task0(beta=0.0)
    assert protected < 0.05
    assert unprotected > 0.3
    assert unprotected > 10 * protected


def test_task_statistics_normalise_the_task_they_belong_to() -> None:
    d = TaskData(3, 1)
    for s, a in (([0.0, 1.0, 5.0], [1.0]), ([2.0, 1.0, 7.0], [3.0]), ([4.0, 1.0, 9.0], [5.0])):
        d.add(np.array(s), np.array(a), np.array(s) + 1, train=True)
    codec = StateCodec("push", 3)
    stats = d.stats(codec)
    torch.testing.assert_close(stats["feature_mean"], torch.tensor([2.0, 1.0, 7.0]))
    torch.testing.assert_close(stats["feature_std"], torch.tensor([2.0, 1.0, 2.0]))  # constant dim -> 1
    torch.testing.assert_close(stats["action_std"], torch.tensor([2.0]))

    config = HyperCRLConfig(n_tasks=2, hidden=(8,), hnet_hidden=(4,))
    algo = HyperCRL(config)
    dim = algo.codec.feature_dim
    algo.stats = [
        {
            "feature_mean": torch.zeros(dim),
            "feature_std": torch.ones(dim),
            "action_mean": torch.zeros(2),
            "action_std": torch.ones(2),
        },
        {
            "feature_mean": torch.full((dim,), 3.0),
            "feature_std": torch.full((dim,), 2.0),
            "action_mean": torch.ones(2),
            "action_std": torch.full((2,), 4.0),
        },
    ]
    algo.learner.start_task(0, [])
    algo.learner.start_task(1, [])
    state, action = torch.randn(36), torch.randn(2)
    for task in (0, 1):
        weights = algo.learner.weights(task)
        x = torch.cat(
            [
                (state - algo.stats[task]["feature_mean"]) / algo.stats[task]["feature_std"],
                (action - algo.stats[task]["action_mean"]) / algo.stats[task]["action_std"],
            ]
        )
        torch.testing.assert_close(model_input(algo.codec, algo.stats[task], state, action), x)
        torch.testing.assert_close(
            algo.predict_next(weights, task, state, action), state + mlp_forward(x, weights)
        )


@pytest.mark.parametrize("family", ["push", "door"])
def test_planner_rollout_equals_predict_next_with_the_normalisation_folded_in(family: str) -> None:
    torch.manual_seed(0)
    algo = HyperCRL(HyperCRLConfig(family=family, n_tasks=1, hidden=(16, 16), hnet_hidden=(8,)))
    d, a = algo.state_dim, algo.action_dim
    f = algo.codec.feature_dim
    algo.stats = [
        {
            "feature_mean": torch.randn(f),
            "feature_std": torch.rand(f) + 0.5,
            "action_mean": torch.randn(a),
            "action_std": torch.rand(a) + 0.5,
        }
    ]
    algo.learner.start_task(0, [])
    weights = [w.detach() for w in algo.learner.weights(0)]
    state = torch.randn(d)
    actions = torch.randn(4, 3, a)  # (K, H, A)
    seen: list[torch.Tensor] = []

    def reward_fn(prev: torch.Tensor, act: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        seen.append(nxt)
        return torch.zeros(nxt.shape[:2])

    algo.config.n_iters, algo.config.n_samples, algo.config.n_elites, algo.config.horizon = 0, 4, 1, 3
    gen = torch.Generator().manual_seed(1)
    algo.plan(0, state.numpy(), reward_fn, gen)
    actions = torch.randn((4, 3, a), generator=torch.Generator().manual_seed(1)) * algo.config.cem().init_std
    s, expected = state.expand(4, -1), []
    for h in range(3):
        s = algo.predict_next(weights, 0, s, actions[:, h])
        expected.append(s)
    # the planner hands the reward time-major (H, K, D) states
    torch.testing.assert_close(seen[0], torch.stack(expected), rtol=1e-4, atol=1e-4)


def test_model_error_is_the_validation_mse_of_the_predicted_change() -> None:
    algo = HyperCRL(HyperCRLConfig(family="push", n_tasks=1, hidden=(8,), hnet_hidden=(4,)))
    d = TaskData(algo.state_dim, algo.action_dim)
    rng = np.random.default_rng(0)
    for i in range(6):
        s = rng.normal(size=algo.state_dim)
        d.add(s, rng.normal(size=2), s + rng.normal(size=algo.state_dim), train=i % 2 == 0)
    algo.data, algo.stats = [d], [d.stats(algo.codec)]
    algo.learner.start_task(0, algo.data)
    with torch.no_grad():
        for head in algo.learner.hnet.heads:  # every generated weight 0: the model predicts no change
            head.weight.zero_()
            head.bias.zero_()
    val = ~d.train
    expected = float(((d.next_state[val] - d.state[val]) ** 2).mean())
    assert algo.model_error(0) == pytest.approx(expected, rel=1e-6)


def test_early_stopping_ends_a_session_on_the_weights_that_scored_best_on_its_selection_split() -> None:
    # lr 1.0 overshoots within a few Adam steps, so the best weights come before the session's last update
    cfg = HyperCRLConfig(
        family="push", n_tasks=1, hidden=(16,), hnet_hidden=(8,), lr=1.0, early_stop_fraction=0.5,
        early_stop_every=2,
    )  # fmt: skip
    algo = HyperCRL(cfg)
    algo.start_task(0)
    rng = np.random.default_rng(0)
    for i in range(80):
        s = rng.normal(size=algo.state_dim)
        algo.data[0].add(s, rng.normal(size=2), s + 0.1 * rng.normal(size=algo.state_dim), train=i % 2 == 0)
    algo.refresh_stats()
    d, selection = algo.data[0], algo._selection(0)
    assert selection.any() and not (selection & d.train).any() and (~d.train & ~selection).any()
    off = HyperCRL(HyperCRLConfig(family="push", n_tasks=1, hidden=(16,), hnet_hidden=(8,)))
    off.data = algo.data
    assert not off._selection(0).any()  # off by default: no validation transition is set aside

    algo.start_session()
    scores = {0: algo.selection_error(0)}
    train = torch.nonzero(d.train).flatten()
    for step in range(1, 11):
        algo.update(
            {"idx": train[torch.randperm(len(train), generator=torch.Generator().manual_seed(step))[:8]]}
        )
        if step % 2 == 0:
            scores[step] = algo.selection_error(0)
    best = min(scores, key=scores.__getitem__)
    assert scores[best] < scores[10]  # the test means something only if the last update is not the best
    algo.end_session()
    assert algo.early_stops == [[best]]
    assert algo.selection_error(0) == pytest.approx(scores[best], rel=1e-6)
    # the reported error is the validation rows less the selection split
    assert algo.model_error(0) == pytest.approx(algo._error(0, ~d.train & ~selection), rel=1e-6)


def test_cheetah_codec_turns_the_pitch_into_cos_sin_and_predicts_velocity_as_a_value() -> None:
    codec = StateCodec("cheetah", 18)
    state = torch.arange(18.0)
    feats = codec.features(state)
    assert codec.feature_dim == 18 and feats.shape == (18,)  # drop v_x, pitch -> 2 dims
    torch.testing.assert_close(feats[-2:], torch.tensor([np.cos(2.0), np.sin(2.0)], dtype=torch.float32))
    assert 0.0 not in feats[:16].tolist() and 2.0 not in feats[:16].tolist()
    nxt = state + 0.5
    nxt[0] = 7.0
    target = codec.target(state, nxt)
    assert target[0] == 7.0 and torch.all(target[1:] == 0.5)
    torch.testing.assert_close(codec.compose(state, target), nxt)


TINY = [
    "--family",
    "push",
    "--n-tasks",
    "2",
    "--hidden",
    "16,16",
    "--hnet-hidden",
    "8,8",
    "--n-random",
    "12",
    "--n-mpc",
    "4",
    "--retrain-every",
    "2",
    "--grad-steps",
    "2",
    "--batch-size",
    "8",
    "--horizon",
    "3",
    "--n-samples",
    "16",
    "--n-elites",
    "4",
    "--n-iters",
    "1",
    "--eval-every",
    "10",
    "--eval-episodes",
    "1",
    "--eval-max-steps",
    "2",
]


class Killed(Exception):
    pass


EARLY_STOP = ["--early-stop-fraction", "0.3", "--early-stop-every", "1"]


@pytest.mark.parametrize("early_stop", [[], EARLY_STOP], ids=["reference", "early-stop"])
def test_tiny_continual_run_writes_the_after_task_matrix_and_resumes_after_a_kill(
    tmp_path, capsys, early_stop
) -> None:
    whole = RunDir(tmp_path / "whole")
    assert main(["train", "hypercrl", "--run-dir", str(whole.path), *TINY, *early_stop]) == 0
    assert "after_task_matrix" in capsys.readouterr().out
    result = json.loads((whole.path / "continual.json").read_text())
    R = np.array(result["metrics"]["after_task_matrix"], dtype=float)
    assert R.shape == (2, 2) and np.isnan(R[0, 1]) and np.isfinite(R[[0, 1, 1], [0, 0, 1]]).all()
    assert len(result["metrics"]["forgetting_ratio"]) == 1
    errors = result["metrics"]["model_error_matrix"]  # per-task validation error after each task
    assert [len(row) for row in errors] == [1, 2] and all(e >= 0 for row in errors for e in row)
    assert result["log"]["task_ends"] == [16, 32]  # 12 random + 4 MPC steps per task
    kept = result["metrics"]["early_stop_updates"]  # per task, the update each 2-update session kept
    assert len(kept) == 2 and all(0 <= k <= 2 for row in kept for k in row)
    assert (sum(map(len, kept)) > 0) == bool(early_stop)
    assert (whole.path / "curves.png").stat().st_size > 0
    # One run directory: a stage per task, through the shared loop (TensorBoard) and the shared evaluator.
    assert whole.info()["stages"] == ["task0", "task1"] and whole.tb("task1").is_dir()
    last = [json.loads(p.read_text()) for step, p in whole.evaluations("task1") if step == 32]
    assert sorted(info["env_id"] for info in last) == ["robocl/Push-Density0-v0", "robocl/Push-Density1-v0"]
    assert last[1]["aggregate"]["mean_return"] == pytest.approx(R[1, 1])
    with TrajectoryStore.open(whole.data("data.zarr")) as store:
        assert store.n_steps == 32
        ids = [ep.task for ep in store]
        assert ids[0].endswith("Density0-v0") and ids[-1].endswith("Density1-v0")
        assert {t for ep in store for t in ep.tags} == {"task0", "task1", "hypercrl"}

    from robocl.config import config_from_args

    argv = ["train", "hypercrl", "--run-dir", str(tmp_path / "killed"), *TINY, *early_stop]
    config = config_from_args(HyperCRLConfig, build_parser(argv).parse_args(argv))

    def kill(step: int, task: int) -> None:
        if step == 22:  # inside task 1
            raise Killed

    with pytest.raises(Killed):
        train_hypercrl(config, tmp_path / "killed", progress=False, on_env_step=kill)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train_hypercrl(config, tmp_path / "killed", progress=False)
    metrics = train_hypercrl(config, tmp_path / "killed", resume=True, progress=False)  # from task 1's start
    np.testing.assert_array_equal(np.array(metrics["after_task_matrix"]), R)  # same as the uninterrupted run
    assert metrics["model_error_matrix"] == errors
    assert metrics["early_stop_updates"] == kept
    with pytest.raises(ValueError, match="another config"):
        train_hypercrl(HyperCRLConfig(family="push", n_tasks=2, seed=1), tmp_path / "killed", resume=True)

    # The last task's checkpoint is an ordinary robocl policy: load_policy + the shared evaluator score it.
    import robocl
    from robocl.eval.evaluate import evaluate

    policy = robocl.load_policy(str(whole.checkpoint("task1")))
    result = evaluate(
        policy, "robocl/Push-Density1-v0", n_episodes=1, max_steps=2, out_dir=tmp_path / "ev", progress=False
    )
    assert result["episodes"][0].length == 2
