from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import robocl
from robocl.algos.symphony import (
    FF,
    CriticEnsemble,
    Symphony,
    SymphonyAdamW,
    SymphonyConfig,
    SymphonySpec,
    rehae,
    rehse,
    soft_truncated_value,
    swaddling,
    temporal_advantage,
    value_weights,
)
from robocl.checkpoint import load_checkpoint, save_checkpoint
from robocl.run.layout import RunDir
from robocl.run.online import OnlineSource, make_env
from robocl.run.train import OnlineLoopConfig, train_symphony
from robocl.store import TrajectoryStore
from robocl.store.fading import FadingReplay, fading_weights, transitions_at


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets on 2 shared cores: torch's second thread only spins (100x slower measured), so use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = SymphonyConfig(hidden=32, n_q=8, batch_size=16, n_explore=64, tile=4)


def loop(steps: int, eval_every: int = 0) -> OnlineLoopConfig:
    return OnlineLoopConfig(
        env="Walker2d-v5",
        steps=steps,
        eval_every=eval_every,
        eval_episodes=1,
        checkpoint_every=1000,
        log_every=50,
    )


# ------------------------------------------------------------------ fading buffer
def test_fading_weight_masses_match_the_paper():
    w = fading_weights(100_000, "tanh")
    p = w / w.sum()
    assert w[0] == 0.0
    assert float(p[:10_000].sum()) == pytest.approx(0.002, abs=5e-4)  # oldest 10% get 0.2% of draws
    assert float(p[:25_000].sum()) == pytest.approx(0.045, abs=1e-3)  # oldest 25% get 4.5%
    bell = fading_weights(100_000, "bell")
    assert float(bell[-1]) == pytest.approx(0.998, abs=1e-3)  # newest slot keeps weight 0.998
    assert float(bell[80_902]) == pytest.approx(1.0, abs=1e-9)  # peak at x = phi/2
    assert float(bell[23_000]) == pytest.approx(0.5, abs=0.01)  # half weight at x ~ 0.23
    v = value_weights(100_000, "tanh").double()
    assert float(v[-10_000:].sum()) == pytest.approx(0.002, abs=5e-4)  # top 10% of nodes: 0.2%
    # symphony.md quotes 8.7% and 11.6% for the top 30%; x_j = j/Nq as it defines gives 8.4% and 11.3%.
    assert float(v[-30_000:].sum()) == pytest.approx(0.0844, abs=5e-4)
    assert float(value_weights(100_000, "bell").double()[-30_000:].sum()) == pytest.approx(0.113, abs=1e-3)


def filled(capacity: int, discounts: list[float], recycle: str = "forever") -> FadingReplay:
    buf = FadingReplay(capacity, 1, 1, recycle=recycle)  # type: ignore[arg-type]
    m = len(discounts)
    rows = {
        "obs": torch.arange(m, dtype=torch.float32)[:, None],
        "action": torch.zeros(m, 1),
        "reward": torch.zeros(m),
        "next_obs": torch.zeros(m, 1),
        "discount": torch.tensor(discounts),
    }
    buf.fill(rows, np.arange(m))
    return buf


def by_age(buf: FadingReplay) -> list[int]:
    return buf.src[(np.arange(buf.capacity) + buf.ptr) % buf.capacity].tolist()


def add(buf: FadingReplay, src: int) -> None:
    buf.add(torch.tensor([float(src)]), torch.zeros(1), torch.tensor(0.0), torch.zeros(1), 0.99, src)


def test_tiling_eviction_order_and_terminal_recycling():
    buf = filled(8, [0.99, 0.0, 0.99, 0.99])
    assert by_age(buf) == [0, 1, 2, 3, 0, 1, 2, 3]
    add(buf, 10)  # evicts the oldest (rank 0)
    assert by_age(buf) == [1, 2, 3, 0, 1, 2, 3, 10]
    add(buf, 11)  # the oldest is terminal: it re-enters at the fresh end, the next one is evicted
    assert by_age(buf) == [3, 0, 1, 2, 3, 10, 1, 11]
    assert buf.obs[(buf.ptr - 1) % 8].item() == 11.0


@pytest.mark.parametrize(("recycle", "expected"), [("forever", [0, 11, 0, 12]), ("once", [10, 0, 11, 12])])
def test_terminals_recycled_forever_s3_or_once_newest(recycle, expected):
    buf = filled(4, [0.0, 0.99], recycle)
    add(buf, 10)
    assert by_age(buf) == [0, 1, 0, 10]
    add(buf, 11)
    assert by_age(buf) == [0, 10, 0, 11]
    add(buf, 12)  # the oldest terminal was recycled once already
    assert by_age(buf) == expected


def test_sampling_matches_the_fading_weights_chi_square():
    n, draws = 50, 200_000
    buf = filled(n, [0.99] * 10)
    for src in range(100, 117):  # move the pointer so ranks and slots differ
        add(buf, src)
    gen = torch.Generator().manual_seed(0)
    slots = torch.cat([buf.sample_slots(10_000, gen) for _ in range(draws // 10_000)])
    counts = np.bincount(((slots.numpy() - buf.ptr) % n), minlength=n).astype(float)
    expected = (fading_weights(n) / fading_weights(n).sum()).numpy() * draws
    assert counts[0] == 0  # rank 0 has weight tanh(0) = 0
    small = expected < 5  # merge sparse bins so the chi-square approximation holds
    obs_b = np.append(counts[~small], counts[small].sum())
    exp_b = np.append(expected[~small], expected[small].sum())
    chi2 = float(((obs_b - exp_b) ** 2 / exp_b).sum())
    df = len(obs_b) - 1
    z = 3.090232  # standard normal 0.999 quantile; Wilson-Hilferty gives the chi-square quantile
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    assert df == 48 and chi2 < critical


# ------------------------------------------------------------------ networks
#: An FF critic's tensor names (and the keys of checkpoints before the fused ensemble) -> the stacked names.
STACKED = {"0.weight": "w1", "0.bias": "b1", "1.weight": "ln_w", "1.bias": "ln_b", "2.weight": "w2",
           "2.bias": "b2", "3.p": "p", "3.b": "b", "4.weight": "w3", "4.bias": "b3"}  # fmt: skip


def per_critic(ensemble: CriticEnsemble, c: int, grad: bool = False) -> dict[str, torch.Tensor]:
    """Critic c's slice of the stacked tensors (or of their gradients), named as an ``FF`` names them."""
    stacked = {
        old: getattr(ensemble, new) for old, new in STACKED.items() if getattr(ensemble, new) is not None
    }
    return {old: (t.grad if grad else t)[c] for old, t in stacked.items()}


@pytest.mark.parametrize("learnable_w", [False, True])
def test_fused_critic_ensemble_equals_a_loop_of_ff_critics(learnable_w):
    torch.manual_seed(0)
    ensemble = CriticEnsemble(3, 7, 16, 4, learnable_w)
    with torch.no_grad():  # move LayerNorm off its (1, 0) init so every stacked tensor matters
        for p in ensemble.parameters():
            p.add_(0.3 * torch.randn_like(p))
    critics = [FF(7, 16, 4, learnable_w) for _ in range(3)]
    for c, critic in enumerate(critics):
        critic.load_state_dict({k: v.detach().clone() for k, v in per_critic(ensemble, c).items()})
    x = torch.randn(5, 7, requires_grad=True)
    x_loop = x.detach().clone().requires_grad_()
    fused, looped = ensemble(x), torch.cat([critic(x_loop) for critic in critics], dim=-1)
    torch.testing.assert_close(fused, looped)
    weights = torch.randn(5, 12)  # any loss: gradients must match too
    (fused * weights).sum().backward()
    (looped * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_loop.grad)
    for c, critic in enumerate(critics):
        fused_grads = per_critic(ensemble, c, grad=True)
        for name, p in critic.named_parameters():
            torch.testing.assert_close(fused_grads[name], p.grad, msg=f"critic {c} {name}")


def test_ensemble_is_initialised_as_separately_built_critics():
    torch.manual_seed(3)
    ensemble = CriticEnsemble(3, 7, 16, 4, learnable_w=True)
    torch.manual_seed(3)
    critics = [FF(7, 16, 4, learnable_w=True) for _ in range(3)]
    for c, critic in enumerate(critics):
        state = per_critic(ensemble, c)
        assert all(torch.equal(state[k], v) for k, v in critic.state_dict().items())


def test_checkpoints_with_per_critic_tensors_load_for_inference_but_not_resume(tmp_path):
    spec = SymphonySpec(obs_dim=5, action_dim=2)
    algo = Symphony(TINY, spec)
    state = algo.state_dict()
    critics = algo.net.critics
    old = {k: v for k, v in state["model"].items() if not k.startswith("net.critics.")}
    for c in range(TINY.n_critics):  # the layout before the fused ensemble: net.critics.<c>.<layer>.<name>
        old |= {f"net.critics.{c}.{k}": v.detach().clone() for k, v in per_critic(critics, c).items()}
    path = save_checkpoint(tmp_path / "old", method="symphony", config=dataclasses.asdict(TINY),
                           spec=dataclasses.asdict(spec), tensors=old, step=0, seed=0)  # fmt: skip
    obs = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(robocl.load_policy(str(path)).predict(obs), algo.policy().predict(obs))
    with pytest.raises(ValueError, match="predates the fused critics: it acts but cannot resume"):
        Symphony(TINY, spec).load_state_dict({"model": old, "trainer": state["trainer"]})


# ------------------------------------------------------------------ losses
def test_rehse_rehae_values():
    u = torch.tensor([-2.0, 0.0, 1.0])
    t1, t05 = math.tanh(1.0), math.tanh(0.5)
    torch.testing.assert_close(rehse(u), torch.tensor([2 * t1, 0.0, t05]))
    torch.testing.assert_close(rehae(u), torch.tensor([-2 * t1, 0.0, t05]))


def test_sorted_node_aggregation():
    w4 = value_weights(4)
    raw = [math.tanh((math.pi * (1 - x)) ** math.e) for x in (0, 0.25, 0.5, 0.75)]
    torch.testing.assert_close(w4, torch.tensor([r / sum(raw) for r in raw]))
    nodes = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
    torch.testing.assert_close(soft_truncated_value(nodes, weights), torch.tensor([1.0, 1.0]))


def test_temporal_advantage_both_baselines_and_zero_guard():
    q, ema = torch.tensor([2.0, 4.0]), torch.tensor(1.0)
    adv, new = temporal_advantage(q, ema, 0.5, "per_sample")  # b = [1.5, 2.5]
    torch.testing.assert_close(adv, torch.tensor([0.5 / 1.5, 1.5 / 2.5]))
    assert new.item() == 2.0
    adv, new = temporal_advantage(q, ema, 0.5, "scalar")  # M = 0.5 * 1 + 0.5 * 3
    torch.testing.assert_close(adv, torch.tensor([0.0, 1.0]))
    assert new.item() == 2.0
    adv, _ = temporal_advantage(torch.zeros(2), torch.tensor(0.0), 0.618, "per_sample")
    torch.testing.assert_close(adv, torch.zeros(2))  # 0 / |0| would be NaN without the guard


def test_swaddling_values_and_detached_exponent():
    s = torch.tensor([[0.5]], requires_grad=True)
    b = torch.tensor([[0.5]], requires_grad=True)
    sw, beta_term = swaddling(s, b)
    assert sw.item() == pytest.approx(math.log(5 / 3) + 0.25 * math.log(0.5), rel=1e-6)
    assert beta_term.item() == pytest.approx(math.log(5 / 3), rel=1e-6)  # Omega(0.5^2)
    (sw.sum()).backward()
    assert b.grad.item() == pytest.approx(0.5 * math.log(0.5), rel=1e-6)  # only the omega(S) term
    # Clamped to [1e-3, 1 - 1e-3]: finite at the ends, no gradient past the clamp.
    s0 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    sw0, bt0 = swaddling(s0, torch.tensor([[0.0, 1.0]]))
    assert torch.isfinite(sw0).all() and torch.isfinite(bt0).all()
    sw0.sum().backward()
    assert s0.grad.tolist() == [[0.0, 0.0]]
    # The newest draft's clamp [1e-8, 1 - 1e-8] lets a strength of 1e-4 through; S3's lifts it to 1e-3.
    tiny, half = torch.tensor([[1e-4]]), torch.tensor([[0.5]])
    newest, _ = swaddling(tiny, half, clamp=1e-8)
    assert newest.item() == pytest.approx(2 * math.atanh(1e-8) + 0.5e-4 * math.log(1e-4), abs=1e-7)
    assert swaddling(tiny, half)[0].item() == pytest.approx(
        2 * math.atanh(1e-6) + 0.5e-3 * math.log(1e-3), abs=1e-7
    )


def test_adamw_without_bias_correction_matches_hand_update():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = SymphonyAdamW([p], lr=0.1, betas=(0.618, 0.995), weight_decay=0.01)
    p.grad = torch.tensor([0.5, -0.25])
    opt.step()
    m = [0.382 * 0.5, 0.382 * -0.25]
    v = [0.005 * 0.25, 0.005 * 0.0625]
    want = [
        w - 0.1 * (mi / (math.sqrt(vi) + 1e-8) + 0.01 * w)
        for w, mi, vi in zip([1.0, -2.0], m, v, strict=True)
    ]
    torch.testing.assert_close(p.data, torch.tensor(want))
    q = torch.nn.Parameter(torch.tensor([1.0]))
    annealed = SymphonyAdamW([q], lr=0.1, betas=(0.618, 0.995), weight_decay=0.01, anneal_eps=True)
    q.grad = torch.tensor([0.5])
    annealed.step()
    eps = 0.995 * (1 - 1e-8) + 0.005 * 1e-8
    want_q = 1.0 * (1 - 0.1 * 0.01) - 0.1 * 0.191 / (math.sqrt(0.005 * 0.25) + eps)
    assert q.item() == pytest.approx(want_q, rel=1e-6)


@pytest.mark.parametrize("swaddle_weight", [1.0, 0.25])
def test_one_update_is_one_backward_through_actor_and_critics(monkeypatch, swaddle_weight):
    algo = Symphony(
        dataclasses.replace(TINY, swaddle_weight=swaddle_weight), SymphonySpec(obs_dim=5, action_dim=2)
    )
    gen = torch.Generator().manual_seed(1)
    m = 64
    rows = {
        "obs": torch.randn(m, 5, generator=gen),
        "action": torch.rand(m, 2, generator=gen) * 2 - 1,
        "reward": torch.randn(m, generator=gen),
        "next_obs": torch.randn(m, 5, generator=gen),
        "discount": torch.full((m,), 0.99),
    }
    feed = algo.feed()
    feed.buffer.fill(rows, np.arange(m))
    calls = []
    original = torch.Tensor.backward
    monkeypatch.setattr(
        torch.Tensor, "backward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    before_target = {k: v.clone() for k, v in algo.target.state_dict().items()}
    metrics = algo.update(feed.sample(TINY.batch_size))
    assert len(calls) == 1 and algo.step == 1
    assert metrics["loss"] == pytest.approx(
        metrics["actor_loss"] + metrics["critic_loss"] + swaddle_weight * metrics["swaddling"], rel=1e-5
    )
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.net.actor.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.net.critics.parameters())
    after = algo.target.state_dict()
    assert all(torch.equal(after[k], before_target[k]) for k in after if k.startswith("actor."))
    k = "critics.w1"  # Polyak: target moved by tau toward the updated online critic
    online = algo.net.state_dict()[k]
    torch.testing.assert_close(after[k], before_target[k] + TINY.tau * (online - before_target[k]))


@pytest.mark.slow
def test_compiled_loss_updates_as_the_eager_one():
    spec = SymphonySpec(obs_dim=5, action_dim=2)
    eager, compiled = Symphony(TINY, spec), Symphony(TINY, spec, compile=True)
    gen = torch.Generator().manual_seed(2)
    batch = {"obs": torch.randn(16, 5, generator=gen), "action": torch.rand(16, 2, generator=gen) * 2 - 1,
             "reward": torch.randn(16, generator=gen), "next_obs": torch.randn(16, 5, generator=gen),
             "discount": torch.full((16,), 0.99)}  # fmt: skip
    for _ in range(3):  # the same noise draws: both generators start from the seed
        want, got = eager.update(batch), compiled.update(batch)
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    for a, b in zip(eager.net.parameters(), compiled.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device; this Symphony runs on cpu"):
        Symphony(TINY, SymphonySpec(obs_dim=5, action_dim=2), cuda_graphs=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_update_as_the_eager_loss():
    """The graphed loss replays into the same output buffers every update: the EMA carried across updates
    must not be overwritten by the next replay (five updates: past the warm-up and the recording)."""
    spec = SymphonySpec(obs_dim=5, action_dim=2)
    eager, graphed = Symphony(TINY, spec, "cuda"), Symphony(TINY, spec, "cuda", cuda_graphs=True)
    gen = torch.Generator().manual_seed(2)
    batch = {"obs": torch.randn(16, 5, generator=gen), "action": torch.rand(16, 2, generator=gen) * 2 - 1,
             "reward": torch.randn(16, generator=gen), "next_obs": torch.randn(16, 5, generator=gen),
             "discount": torch.full((16,), 0.99)}  # fmt: skip
    batch = {k: v.cuda() for k, v in batch.items()}
    for _ in range(5):
        want, got = eager.update(batch), graphed.update(batch)
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    for a, b in zip(eager.net.parameters(), graphed.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ online loop
def test_exploration_sets_reward_scale_and_fills_the_buffer_by_tiling(tmp_path):
    env = make_env("Walker2d-v5")
    spec = SymphonySpec(obs_dim=17, action_dim=6, env_id="Walker2d-v5", max_episode_steps=1000)
    env.close()
    algo = Symphony(TINY, spec)
    flags = []

    def act(obs, training, t):
        flags.append(training)
        return algo.act(obs, training, t)

    feed = algo.feed()
    source = OnlineSource("Walker2d-v5", act, feed, tmp_path / "replay.zarr", seed=0, explore_steps=64,
                          updates_per_step=3, commit_every=1000)  # fmt: skip
    try:
        batches = [source.sample(8) for _ in range(3)]  # exploration, then one env step per 3 batches
        assert flags == [False] * 64 + [True] and source.env_steps == 65
        assert all(b["obs"].shape == (8, 17) for b in batches)
        raw = transitions_at(source.replay, np.arange(65))
        assert feed.reward_scale.item() == pytest.approx(float(np.abs(raw["reward"][:64]).mean()), rel=1e-6)
        buf = feed.buffer
        assert by_age(buf)[-1] == 64 and buf.ptr == 1 + int(raw["terminated"][0])
        tile = np.arange(64, 128)  # the second copy of the exploration, untouched by one add
        assert buf.src[tile].tolist() == list(range(64))
        reward = torch.from_numpy(raw["reward"][:64]) / feed.reward_scale
        torch.testing.assert_close(buf.reward[tile], reward)
        discount = torch.from_numpy(np.where(raw["terminated"][:64], 0.0, 0.99)).float()
        torch.testing.assert_close(buf.discount[tile], discount)
        source.sample(8)
        assert source.env_steps == 66
    finally:
        source.close()


def test_the_fall_steps_of_a_capped_training_episode_are_noise_only():
    algo = Symphony(TINY, SymphonySpec(obs_dim=5, action_dim=2, max_episode_steps=100))
    obs = np.ones(5, np.float32)
    for training, t, actor_on in [(True, 49, True), (True, 50, False), (False, 99, True)]:
        state = algo.generator.get_state()
        action = algo.act(obs, training, t)
        algo.generator.set_state(state)
        noise = symphony_action_noise(algo)
        direction, strength, _ = algo.net.heads(torch.as_tensor(obs)[None])
        want = torch.tanh((strength * direction if actor_on else 0) + noise)[0].detach().numpy()
        np.testing.assert_allclose(action, want, rtol=1e-6)


def symphony_action_noise(algo: Symphony) -> torch.Tensor:
    from robocl.algos.symphony import action_noise

    return action_noise((1, algo.spec.action_dim), algo.config.noise_bound, algo.generator, algo.device)


def online(steps: int, eval_every: int = 0) -> OnlineLoopConfig:
    return OnlineLoopConfig(env="Walker2d-v5", steps=steps, eval_every=eval_every, eval_episodes=1,
                            checkpoint_every=1000, log_every=50)  # fmt: skip


def test_seeded_run_is_deterministic_and_stores_what_collect_stores(tmp_path):
    runs = [RunDir(tmp_path / name) for name in ("a", "b")]
    for run in runs:
        train_symphony(TINY, online(110, eval_every=20), run.path, progress=False)
    a, b = (load_checkpoint(run.checkpoint("online")) for run in runs)
    assert a.step == 3 * (110 - 64)  # updates start after exploration's 64 steps
    assert all(torch.equal(v, b.tensors[k]) for k, v in a.tensors.items())
    # Periodic evaluation goes through the shared evaluator, every 20 env steps = 60 updates.
    steps = sorted({step for step, _ in runs[0].evaluations("online")})
    assert steps == [60, 120, 138]
    reports = [[json.loads(p.read_text())["aggregate"] for _, p in run.evaluations("online")] for run in runs]
    assert reports[0] == reports[1] and np.isfinite(reports[0][0]["mean_return"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(runs[0].tb("online")))
    scalars.Reload()
    for name in ("strength", "action_abs", "action_abs_above_half", "noisy/mean_return"):
        assert [e.step for e in scalars.Scalars(f"eval/{name}")] == [60, 120, 138]
    assert runs[0].info()["method"] == "symphony" and runs[0].info()["env"] == "Walker2d-v5"
    with TrajectoryStore.open(runs[0].data("replay.zarr")) as store:
        assert 0 < store.n_steps <= 110 and store.meta["env_id"] == "Walker2d-v5"
        assert store.features == make_env("Walker2d-v5").features()  # a collected run's schema
    with pytest.raises(ValueError, match=r"steps=50 ends before exploration does \(n_explore=64\)"):
        train_symphony(TINY, online(50), tmp_path / "c", progress=False)


def test_resume_equals_uninterrupted_run(tmp_path):
    train_symphony(TINY, online(150), tmp_path / "full", progress=False)
    train_symphony(TINY, online(97), tmp_path / "cut", progress=False)  # exit checkpoint mid-episode
    state = load_checkpoint(RunDir(tmp_path / "cut").checkpoint("online")).trainer_state()
    assert state["source"]["replay"]["tail"] is not None  # mid-episode: the resume re-plays its actions
    train_symphony(TINY, online(150), tmp_path / "cut", resume=True, progress=False)
    full, resumed = (load_checkpoint(RunDir(tmp_path / d).checkpoint("online")) for d in ("full", "cut"))
    assert resumed.step == full.step == 3 * (150 - 64)
    assert all(torch.equal(v, resumed.tensors[k]) for k, v in full.tensors.items())
    state_full, state_resumed = full.trainer_state(), resumed.trainer_state()
    assert (
        state_full["source"]["feed"]["buffer"]["src"].tolist()
        == state_resumed["source"]["feed"]["buffer"]["src"].tolist()
    )
    with pytest.raises(FileExistsError):
        train_symphony(TINY, online(150), tmp_path / "cut", progress=False)


def test_policy_reads_the_rollout_engines_dict_observations_of_an_arm_task():
    import robocl_envs  # noqa: F401  (registers robocl/PickPlace-v0)

    env = make_env("robocl/PickPlace-v0")
    obs, _ = env.reset(seed=3)
    flat = np.concatenate([obs["observation.state"], obs["observation.object"]])
    assert flat.shape == (37,) and flat.dtype == np.float32  # proprio (24) then object state (13)
    policy = Symphony(TINY, SymphonySpec(obs_dim=37, action_dim=5), "cpu").policy()
    as_dict = {k: v[None] for k, v in obs.items()} | {"task": ["put it there"]}
    np.testing.assert_array_equal(policy.predict(as_dict)[0], policy.predict(flat))


def test_evaluation_policies_act_with_or_without_the_training_noise_and_report_what_they_did():
    algo = Symphony(TINY, SymphonySpec(obs_dim=5, action_dim=2))
    obs = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    training_stream = algo.generator.get_state()
    deterministic = algo.policy()
    action = deterministic.predict(obs)
    with torch.no_grad():
        direction, strength, _ = algo.net.heads(torch.as_tensor(obs))
    a_max = algo.config.a_max
    np.testing.assert_allclose(action, a_max * np.tanh((strength * direction).numpy()), rtol=1e-6)
    magnitude = np.abs(action) / a_max
    stats = deterministic.action_stats()
    assert stats["strength"] == pytest.approx(float(strength.mean()), rel=1e-6)
    assert stats["action_abs"] == pytest.approx(float(magnitude.mean()), rel=1e-6)
    assert stats["action_abs_above_half"] == pytest.approx(float((magnitude > 0.5).mean()))
    noisy = [algo.policy(noisy=True).predict(obs) for _ in range(2)]
    np.testing.assert_array_equal(noisy[0], noisy[1])  # seeded by the update count
    assert not np.allclose(noisy[0], action)
    assert torch.equal(algo.generator.get_state(), training_stream)  # evaluating never moves training
