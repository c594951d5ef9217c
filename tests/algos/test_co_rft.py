"""CO-RFT: chunked targets vs brute force, loss terms by hand, a toy chain MDP, end-to-end runs."""

from __future__ import annotations

import copy
import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import robocl
from robocl.algos.chunk_losses import (
    chunk_bc_loss,
    chunked_targets,
    conservative_loss,
    critic_td_loss,
    distill_actor_loss,
    td3_bc_actor_loss,
    td_prefixes,
)
from robocl.algos.co_rft import CORFT, cosine_warmup
from robocl.algos.co_rft_config import CORFTConfig
from robocl.checkpoint import load_checkpoint, save_checkpoint
from robocl.nets.relative import LOG_SCALE_REACH
from robocl.nets.vla import BestOfN, VLAPolicyNet, candidate_scales, prefer_mode
from robocl.run.layout import RunDir
from robocl.run.loop import LoopConfig, NonFiniteError, fit, to_torch
from robocl.run.train import train_co_rft
from robocl.store import CameraCalibration, Feature, StoreView, TrajectoryStore, WindowSampler
from robocl.store.chunked import ChunkedTDSampler, mc_returns, step_rewards

GAMMA = 0.9
TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "language_model": None, "seed": 1}


def hand_store(tmp_path, *, with_flags: bool = True) -> TrajectoryStore:
    """Three episodes; the state is the step's id so the bootstrap value V(o) = o can be checked exactly.
    ep0: 4 steps, success at the last (terminated); ep1: 3 steps, time-out (truncated, final obs kept);
    ep2: 6 steps, success at the last (terminated)."""
    feats = {
        "observation.state": Feature("state", "float32", (1,)),
        "action": Feature("action", "float32", (1,)),
    }
    if with_flags:
        feats["success"] = Feature("flag", "bool", ())
        feats["reward"] = Feature("reward", "float32", ())
    store = TrajectoryStore.create(tmp_path / "hand.zarr", feats, fps=10)
    for ep, (length, success) in enumerate([(4, True), (3, False), (6, True)]):
        flags = np.zeros(length, bool)
        flags[-1] = success
        steps = {
            "observation.state": (100 * ep + np.arange(length, dtype=np.float32))[:, None],
            "action": np.linspace(-1, 1, length, dtype=np.float32)[:, None],
        }
        if with_flags:
            steps |= {"success": flags, "reward": flags.astype(np.float32) - 1}
        store.add_episode(
            steps,
            success=success,
            terminated=success,
            truncated=not success,
            final_obs={"observation.state": np.array([100 * ep + 50.0], np.float32)},
        )
    return store


def brute_force(store: TrajectoryStore, ep: int, t: int, h: int) -> list[float | None]:
    """y^(j) for j = 1..h straight from the episode arrays (None = masked prefix)."""
    e = store.episode(ep)
    state, L = e["observation.state"][:, 0], len(e)
    rewards = e["success"].astype(float) - 1
    out: list[float | None] = []
    for j in range(1, h + 1):
        if t + j > L:
            out.append(None)
            continue
        ret = sum(GAMMA**k * rewards[t + k] for k in range(j))
        at_end = t + j == L
        value = 100 * ep + 50.0 if at_end else state[t + j]
        out.append(ret + (0.0 if at_end and e.terminated else GAMMA**j * value))
    return out


@pytest.mark.parametrize("h", [1, 3, 5])
def test_chunked_targets_equal_brute_force(tmp_path, h):
    store = hand_store(tmp_path)
    algo = CORFT.from_store(
        CORFTConfig(
            state_keys=("observation.state",), horizon=h, n_obs=2, gamma=GAMMA, gripper=False, **TINY
        ),
        store,
    )
    rl = algo.rl_sampler(store)
    batch = rl.extend(rl.sampler.get_batch(np.arange(len(rl.sampler))))
    boot_obs = rl.histories(batch["boot_id"].reshape(-1))[0]["observation.state"]  # (B*h, n_obs, 1)
    value = torch.as_tensor(boot_obs[:, -1, 0].reshape(-1, h))  # V(o_{t+j}) = o_{t+j}
    is_pad = torch.as_tensor(batch["action_is_pad"])
    y = chunked_targets(
        torch.as_tensor(batch["reward"]), is_pad, torch.as_tensor(batch["done"]), value, GAMMA
    )
    mask = ~is_pad
    for w, (ep, t) in enumerate(zip(batch["episode"], batch["t"], strict=True)):
        for j, want in enumerate(brute_force(store, int(ep), int(t), h)):
            assert bool(mask[w, j]) == (want is not None), (ep, t, j)
            if want is not None:
                assert y[w, j].item() == pytest.approx(want, abs=1e-4), (ep, t, j + 1)
    # The full-chunk variant keeps only j = h_eff, which is the store sampler's own n-step target.
    plain = WindowSampler(store, n_obs=2, horizon=h, gamma=GAMMA, seed=0).get_batch(
        np.arange(len(rl.sampler))
    )
    drawn, _ = td_prefixes(is_pad, 2, torch.Generator().manual_seed(0))  # targets of drawn lengths only
    at_drawn = chunked_targets(
        torch.as_tensor(batch["reward"]), is_pad, torch.as_tensor(batch["done"]), value.gather(1, drawn - 1),
        GAMMA, drawn,
    )  # fmt: skip
    torch.testing.assert_close(at_drawn, y.gather(1, drawn - 1))
    h_eff, _ = td_prefixes(is_pad, 0)  # (B, 1): the whole-chunk backup's one prefix
    y_full = y.gather(1, h_eff - 1)[:, 0]
    boot = plain["next_obs"]["observation.state"][:, -1, 0]
    want = plain["reward_sum"] + plain["discount"] * (1 - plain["done"]) * boot
    np.testing.assert_allclose(y_full.numpy(), want, atol=1e-4)
    if h == 1:  # ordinary one-step TD: y = r + gamma (1 - done) V(o_{t+1}), every window in the loss
        assert mask.all()
        nxt = batch["next_obs"]["observation.state"][:, -1, 0]
        np.testing.assert_allclose(
            y[:, 0].numpy(), batch["reward"][:, 0] + GAMMA * (1 - batch["done"]) * nxt, atol=1e-4
        )


def test_prefix_histories_dedup_to_equal_rows_and_match_history_ids(tmp_path):
    store = hand_store(tmp_path)
    cfg = CORFTConfig(
        state_keys=("observation.state",),
        horizon=3,
        gripper=False,
        rl_train_backbone=True,
        n_obs=2,
        actor="distill",
        **TINY,
    )
    rl = CORFT.from_store(cfg, store).rl_sampler(store)
    assert not rl.history_ids  # a trained trunk needs the observations themselves
    batch = rl.extend(rl.sampler.get_batch(np.arange(len(rl.sampler))))
    flat = batch["prefix_obs"]["observation.state"].reshape(-1, 2, 1)  # (B*h, n_obs, 1)
    unique, inverse = batch["prefix_unique"], batch["prefix_inverse"]
    np.testing.assert_array_equal(flat[unique][inverse], flat)
    assert len(np.unique(flat, axis=0)) == len(unique) < len(flat)  # no two kept rows are equal
    # The history ids that a frozen trunk's batches carry name exactly these histories.
    np.testing.assert_array_equal(rl.histories(batch["boot_id"].reshape(-1))[0]["observation.state"], flat)
    np.testing.assert_array_equal(rl.histories(np.arange(len(rl.sampler)))[0]["observation.state"],
                                  batch["obs"]["observation.state"])  # fmt: skip
    with pytest.raises(IndexError, match="history ids"):
        rl.histories(np.array([rl.n_histories]))


@pytest.mark.parametrize("head", ["flow", "regression"])
def test_frozen_trunk_feature_cache_matches_computing_features(tmp_path, head):
    """Stage 2 with looked-up features gives the update that running the frozen trunk on every batch gives
    (the distilled actor for the flow head: best-of-N needs the looked-up features)."""
    store = hand_store(tmp_path)
    actor = "distill" if head == "flow" else "td3_bc"
    cfg = CORFTConfig(
        state_keys=("observation.state",), horizon=3, gripper=False, cql_n_samples=2, head=head, actor=actor,
        **TINY,
    )  # fmt: skip
    cached, computed = CORFT.from_store(cfg, store), CORFT.from_store(cfg, store)
    by_id = cached.rl_sampler(store)
    assert by_id.history_ids
    by_obs = ChunkedTDSampler(by_id.sampler, by_id.rewards, by_id.mc, prefix=True)
    cached.start_rl(), computed.start_rl()
    rng = np.random.default_rng(0)
    for _ in range(4):
        windows = rng.integers(0, len(by_id.sampler), 8)
        id_batch = by_id.extend(by_id.sampler.get_batch(windows, with_obs=False))
        assert id_batch["obs"] == {} and id_batch["next_obs"] == {}
        obs_batch = by_obs.extend(by_obs.sampler.get_batch(windows))
        torch.manual_seed(0)
        got = cached.update(to_torch(id_batch, "cpu"))
        torch.manual_seed(0)
        want = computed.update(to_torch(obs_batch, "cpu"))
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key
    cached.rl_sampler(store)  # a new sampler, a new id space: batches of the old one are refused
    with pytest.raises(ValueError, match="another sampler"):
        cached.update(to_torch(by_id.sample(8), "cpu"))


def test_critic_forward_matches_torch_encoder():
    from robocl.nets.transformer import ChunkCritic

    torch.manual_seed(0)
    critic = ChunkCritic(8, 3, 4, d_model=16, n_layers=2, n_heads=2)
    feat, chunk = torch.randn(5, 8), torch.rand(5, 4, 3) * 2 - 1
    q = critic(feat, chunk)
    tokens = torch.cat([critic.context(feat).unsqueeze(1), critic.action(chunk)], 1) + critic.pos_emb
    out = critic.encoder(tokens, mask=critic.causal_mask)  # torch's own layers, same parameters
    torch.testing.assert_close(q, critic.head(out[:, 1:]).squeeze(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(critic.q_chunk(feat, chunk), critic(feat, chunk)[:, -1], rtol=1e-5, atol=1e-6)


def test_whole_chunk_td_loss_on_the_one_trained_prefix():
    """The whole-chunk backup computes Q^(h_eff) alone: its loss equals the masked loss over every prefix."""
    torch.manual_seed(0)
    q, y, h_eff = torch.randn(2, 5, 4), torch.randn(5, 4), torch.tensor([4, 1, 3, 4, 2])
    mask = torch.arange(1, 5) == h_eff[:, None]
    rows = torch.arange(5)
    alone = critic_td_loss(q[:, rows, h_eff - 1, None], y[rows, h_eff - 1, None], mask[rows, h_eff - 1, None])
    torch.testing.assert_close(alone, critic_td_loss(q, y, mask))


def test_td_prefixes_by_hand_and_unbiased():
    """Column 0 is h_eff (weight 1); the drawn shorter prefixes are distinct, below h_eff and weighted
    (h_eff - 1) / s; all of them (None) gives the every-prefix loss exactly, and the drawn estimate averages
    to it."""
    is_pad = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1]]).bool()
    length, weight = td_prefixes(is_pad, 2)
    assert length[:, 0].tolist() == [5, 3, 1, 2] and weight[:, 0].tolist() == [1, 1, 1, 1]
    assert weight[:, 1:].tolist() == [[2.0, 2.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]  # (h_eff - 1) / s
    assert sorted(length[1, 1:].tolist()) == [1, 2] and length[3, 1].item() == 1
    assert len(set(length[0, 1:].tolist())) == 2 and (length[0, 1:] < 5).all()
    torch.testing.assert_close(weight.sum(1), (~is_pad).sum(1).float())
    every, ones = td_prefixes(is_pad, None)
    assert every[0].tolist() == [5, 1, 2, 3, 4] and ones[1].tolist() == [1, 1, 1, 0, 0]
    assert td_prefixes(is_pad, 0)[0].tolist() == [[5], [3], [1], [2]]

    torch.manual_seed(0)
    q, y = torch.randn(2, 4, 5), torch.randn(4, 5)  # Q^(j) and y^(j) at index j - 1
    exact = critic_td_loss(q, y, ~is_pad)
    torch.testing.assert_close(critic_td_loss(q.gather(2, every[None].expand(2, -1, -1) - 1),
                                              y.gather(1, every - 1), ones), exact)  # fmt: skip
    generator, draws = torch.Generator().manual_seed(0), []
    for _ in range(4000):
        length, weight = td_prefixes(is_pad, 2, generator)
        draws.append(
            critic_td_loss(q.gather(2, length[None].expand(2, -1, -1) - 1), y.gather(1, length - 1), weight)
        )
    assert torch.stack(draws).mean().item() == pytest.approx(exact.item(), rel=0.01)


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_critics_are_causal_over_the_chunk(kind):
    from robocl.nets.critic import PrefixMLPCritic
    from robocl.nets.transformer import ChunkCritic

    torch.manual_seed(0)
    if kind == "mlp":
        critic = PrefixMLPCritic(8, 3, 4, (16, 16))
    else:
        critic = ChunkCritic(8, 3, 4, d_model=16, n_layers=2, n_heads=2)
    feat, chunk = torch.randn(5, 8), torch.rand(5, 4, 3) * 2 - 1
    q = critic(feat, chunk)
    later = chunk.clone()
    later[:, 2:] = torch.rand(5, 2, 3) * 2 - 1  # change a_3, a_4 only
    q_later = critic(feat, later)
    torch.testing.assert_close(q_later[:, :2], q[:, :2])  # Q^(1), Q^(2) do not see a_3, a_4
    assert not torch.allclose(q_later[:, 2:], q[:, 2:])
    torch.testing.assert_close(critic.q_chunk(feat, chunk), q[:, -1], rtol=1e-5, atol=1e-5)
    many = torch.rand(5, 3, 4, 3) * 2 - 1  # 3 chunks per context (best-of-N, the conservative samples)
    rows = critic.q_chunk(feat.repeat_interleave(3, 0), many.flatten(0, 1)).view(5, 3)
    torch.testing.assert_close(critic.q_chunk(feat, many), rows, rtol=1e-5, atol=1e-5)
    length = torch.tensor([1, 4, 2, 3, 4])  # one prefix per row, as the whole-chunk backup trains
    torch.testing.assert_close(critic.q_prefix(feat, chunk, length), q[torch.arange(5), length - 1])
    lengths = torch.tensor([[4, 1, 3], [2, 1, 2], [3, 2, 1], [1, 4, 4], [4, 3, 2]])  # several per row
    torch.testing.assert_close(critic.q_prefix(feat, chunk, lengths), q.gather(1, lengths - 1))
    # N chunks per context with a length each (best-of-N ranking on the executed actions).
    q_many_rows = critic(feat.repeat_interleave(3, 0), many.flatten(0, 1)).view(5, 3, 4)
    want = q_many_rows.gather(2, (lengths - 1).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(critic.q_prefix(feat, many, lengths), want, rtol=1e-5, atol=1e-5)
    # Lengths that only broadcast (one per context for N == B chunks each, or too few rows) are refused.
    with pytest.raises(ValueError, match=r"lengths of shape \(3,\) do not fit chunks \(3, 3, 4, 3"):
        critic.q_prefix(feat[:3], many[:3], length[:3])
    with pytest.raises(ValueError, match=r"lengths of shape \(4,\) do not fit"):
        critic.q_prefix(feat, chunk, length[:4])
    # Both kinds of query at once (the TD and conservative terms through one pass of the shared layers).
    prefixes, chunks = critic.q_many((feat, chunk, lengths), (feat[:2], many[:2], None))
    torch.testing.assert_close(prefixes, q.gather(1, lengths - 1))
    torch.testing.assert_close(chunks, rows[:2], rtol=1e-5, atol=1e-5)
    if kind == "mlp":  # Q^(j) is an ordinary MLP on [feat, a_1..a_j]: every prefix against one by hand
        for j in range(1, 5):
            first = critic.context(feat) + (chunk[:, :j, :, None] * critic.action_weight[:j]).sum((1, 2))
            torch.testing.assert_close(q[:, j - 1], critic.mlp(first + critic.prefix_emb[j - 1]).squeeze(-1))


def test_rewards_and_mc_returns_from_success_flags(tmp_path):
    store = hand_store(tmp_path)
    r = step_rewards(store, "step_penalty")
    np.testing.assert_array_equal(r, [-1, -1, -1, 0, -1, -1, -1, -1, -1, -1, -1, -1, 0])
    np.testing.assert_array_equal(step_rewards(store, "sparse"), np.maximum(r + 1, 0) * (r == 0))
    mc = mc_returns(r, store.episodes, GAMMA)
    assert mc[3] == 0.0 and mc[0] == pytest.approx(-1 - GAMMA - GAMMA**2)
    # The time-out episode never ends: its tail continues at -1/(1-gamma) (Cal-QL's failed-episode value).
    assert mc[6] == pytest.approx(-1 + GAMMA * (-1 / (1 - GAMMA)))
    assert mc[4] == pytest.approx(-1 / (1 - GAMMA))
    # No per-step flags: the episode table's success flag marks the last step.
    bare = hand_store(tmp_path / "bare", with_flags=False)
    np.testing.assert_array_equal(step_rewards(bare, "step_penalty"), r)


def test_bad_data_gives_clear_errors(tmp_path):
    feats = {
        "observation.state": Feature("state", "float32", (1,)),
        "action": Feature("action", "float32", (1,)),
    }
    store = TrajectoryStore.create(tmp_path / "bad.zarr", feats, fps=10)
    for n in (3, 4):
        store.add_episode({"observation.state": np.zeros((n, 1)), "action": np.zeros((n, 1))}, truncated=True)
    cfg = {"state_keys": ("observation.state",), "gripper": False, **TINY}
    algo = CORFT.from_store(CORFTConfig(horizon=2, **cfg), store)
    with pytest.raises(ValueError, match=r"cannot derive rewards.*no per-step 'success' flags"):
        algo.rl_sampler(store)
    with pytest.raises(ValueError, match="reward='store' but the store has no 'reward' feature"):
        CORFT.from_store(CORFTConfig(horizon=2, reward="store", **cfg), store).rl_sampler(store)
    with pytest.raises(ValueError, match=r"horizon=5 is longer than every episode .the longest has 4"):
        CORFT.from_store(CORFTConfig(horizon=5, **cfg), store).rl_sampler(store)
    with pytest.raises(ValueError, match=r"feature 'observation\.object' is not in the store"):
        CORFT.from_store(CORFTConfig(horizon=2, **{**cfg, "state_keys": ("observation.object",)}), store)
    with pytest.raises(ValueError, match=r"conservative=.sac. must be one of"):
        CORFTConfig(conservative="sac")  # type: ignore[arg-type]


def test_conservative_and_actor_losses_by_hand():
    q_data = torch.tensor([1.0])
    q_unif, q_pi, q_next = (
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[-2.0, 1.0]]),
        torch.tensor([[-3.0, 0.5]]),
    )
    mc = torch.tensor([-1.0])
    calql = conservative_loss(q_data, q_unif, q_pi, q_next, mc, alpha=2.0, temperature=1.0)
    # Policy samples floored at V_MC = -1: {-1, 1} and {-1, 0.5}.
    want = 2.0 * (math.log(1 + 1 + math.exp(-1) + math.e + math.exp(-1) + math.exp(0.5)) - 1.0)
    assert calql.item() == pytest.approx(want, rel=1e-6)
    cql = conservative_loss(q_data, q_unif, q_pi, q_next, None, alpha=2.0, temperature=0.5)
    lse = 0.5 * math.log(sum(math.exp(v / 0.5) for v in (0, 0, -2, 1, -3, 0.5)))
    assert cql.item() == pytest.approx(2.0 * (lse - 1.0), rel=1e-6)
    weighted = conservative_loss(
        q_data, q_unif, q_pi, q_next, None, alpha=1.0, temperature=1.0, log_uniform_density=math.log(0.5)
    )
    lse = math.log(2 * math.exp(-math.log(0.5)) + sum(math.exp(v) for v in (-2, 1, -3, 0.5)))
    assert weighted.item() == pytest.approx(lse - 1.0, rel=1e-6)
    # Twin critics: (C, B) data and (C, B, n) samples sum the per-critic terms.
    twin = conservative_loss(
        q_data.expand(2, 1),
        q_unif.expand(2, 1, 2),
        q_pi.expand(2, 1, 2),
        q_next.expand(2, 1, 2),
        mc,
        alpha=2.0,
        temperature=1.0,
    )
    assert twin.item() == pytest.approx(2 * want, rel=1e-6)

    q = torch.tensor([-2.0, -4.0], requires_grad=True)
    loss, lam = td3_bc_actor_loss(q, torch.tensor(0.5), alpha_bc=2.5)
    assert lam == pytest.approx(2.5 / 3) and loss.item() == pytest.approx(2.5 / 3 * 3 + 0.5)
    loss.backward()
    np.testing.assert_allclose(q.grad.numpy(), [-2.5 / 3 / 2] * 2)  # lambda is not differentiated

    chunk = torch.tensor([[[0.5, 0.0], [0.0, 0.0]]])  # (1, 2 steps, arm + gripper)
    target = torch.tensor([[[0.0, 1.0], [3.0, -1.0]]])
    logit = torch.tensor([[0.0, 0.0]])
    bc, parts = chunk_bc_loss(
        chunk, logit, target, torch.tensor([[False, True]]), gripper_weight=0.1, huber_delta=1.0
    )
    # Step 2 is padding; step 1: Huber(0.5) = 0.125, BCE(logit 0, target 1) = log 2.
    assert parts["bc_arm"] == pytest.approx(0.125) and parts["bc_gripper"] == pytest.approx(math.log(2))
    assert bc.item() == pytest.approx(0.125 + 0.1 * math.log(2))


def scalar_store(path) -> TrajectoryStore:
    """A store of 1-d states and actions with per-step success flags (the toy tasks below)."""
    feats = {
        "observation.state": Feature("state", "float32", (1,)),
        "action": Feature("action", "float32", (1,)),
        "success": Feature("flag", "bool", ()),
    }
    return TrajectoryStore.create(path, feats, fps=10)


def add_scalar_episode(store, states, actions, flags, final_state) -> None:
    """One episode; it succeeds (and terminates) when its last flag is set, else it is cut by time."""
    store.add_episode(
        {
            "observation.state": np.array(states, np.float32),
            "action": np.array(actions, np.float32),
            "success": np.array(flags),
        },
        success=flags[-1],
        terminated=flags[-1],
        truncated=not flags[-1],
        final_obs={"observation.state": np.array([final_state], np.float32)},
    )


def chain_store(tmp_path) -> TrajectoryStore:
    """Chain MDP: position 0..5, action > 0 moves one step right, otherwise stays; reaching 5 succeeds.
    Random behaviour (move with p=0.5) so both fast and slow chunks are in the data; 30-step time limit."""
    store = scalar_store(tmp_path / "chain.zarr")
    rng = np.random.default_rng(0)
    for _ in range(60):
        pos, states, actions, flags = int(rng.integers(0, 4)), [], [], []
        while len(states) < 30:
            a = 1.0 if rng.random() < 0.5 else -1.0
            states.append([pos])
            actions.append([a])
            pos += a > 0
            flags.append(pos == 5)
            if pos == 5:
                break
        add_scalar_episode(store, states, actions, flags, pos)
    return store


def test_critic_ranks_faster_chunks_higher_on_a_chain(tmp_path):
    store = chain_store(tmp_path)
    cfg = CORFTConfig(
        state_keys=("observation.state",),
        horizon=2,
        n_obs=1,
        gripper=False,
        gamma=0.9,
        critic_lr=3e-3,
        cql_alpha=0.5,
        cql_n_samples=2,
        cql_fraction=1.0,  # all 32 rows (the default's 1/8 is 16 of the benchmark's 128, here only 4)
        **{**TINY, "d_model": 32},
    )
    algo = CORFT.from_store(cfg, store)
    rl = algo.rl_sampler(store)
    algo.start_rl()
    for _ in range(250):
        algo.update(to_torch(rl.sample(32), "cpu"))
    with torch.no_grad():
        obs = {"observation.state": torch.tensor([[[2.0]]])}
        feat = algo.policy_net.features(obs, None)
        chunks = torch.tensor(
            [[[1.0], [1.0]], [[1.0], [-1.0]], [[-1.0], [-1.0]]]
        )  # move-move, move-stay, stay
        q = algo.critics[0](feat.expand(3, -1), chunks)[:, -1]
    # From 2, moving twice reaches 4 (3 steps from success at best): -1 - .9 - .81 ~; staying costs more.
    assert q[0] > q[1] > q[2], q
    assert -10.0 < q[2].item() < q[0].item() < 0.0


LINE_GOAL, LINE_SPEED, LINE_LIMIT = 5.0, 0.5, 12  # reach x >= 5 moving 0.5 * action per step, 12 steps


def line_store(tmp_path) -> TrajectoryStore:
    """An easy reaching task whose 30 demos differ in pace: each operator keeps one speed in [0.2, 1]. The
    average pace (IL's) is too slow to reach the goal from x < 1 within the limit; full speed (10 steps)
    is fast enough, and the data shows that faster chunks reach success sooner."""
    store = scalar_store(tmp_path / "line.zarr")
    rng = np.random.default_rng(0)
    for _ in range(30):
        x, pace, states, actions, flags = rng.uniform(0, 4), rng.uniform(0.2, 1.0), [], [], []
        while len(states) < LINE_LIMIT and not (flags and flags[-1]):
            a = float(np.clip(pace + rng.normal(0, 0.05), -1, 1))
            states.append([x])
            actions.append([a])
            x += LINE_SPEED * a
            flags.append(x >= LINE_GOAL)
        add_scalar_episode(store, states, actions, flags, x)
    return store


def line_success_rate(policy, n_episodes: int = 20) -> float:
    rng, successes = np.random.default_rng(1), 0
    for _ in range(n_episodes):
        x = rng.uniform(0, 1)
        policy.reset()
        for _ in range(LINE_LIMIT):
            action = policy.predict({"observation.state": np.array([x], np.float32)})  # (1,)
            x += LINE_SPEED * float(np.clip(action[0], -1, 1))
            if x >= LINE_GOAL:
                successes += 1
                break
    return successes / n_episodes


def train_il_then_rl(cfg, store, run_dir, *, il_updates: int, rl_updates: int) -> tuple[float, float]:
    """Line-task success of the IL checkpoint, then of the RL one trained from it (the same run resumed)."""
    loop = {"batch_size": 64, "checkpoint_every": 1000}
    il_loop = LoopConfig(n_updates=il_updates, **loop)
    paths = train_co_rft(cfg, store.location, run_dir, il_loop=il_loop, rl_loop=None, progress=False)
    il = line_success_rate(robocl.load_policy(str(paths["il"])))
    rl_loop = LoopConfig(n_updates=rl_updates, **loop)
    paths = train_co_rft(cfg, store.location, run_dir, il_loop=il_loop, rl_loop=rl_loop, resume=True,
                         progress=False)  # fmt: skip
    return il, line_success_rate(robocl.load_policy(str(paths["rl"])))


@pytest.fixture(scope="module")
def pick_place_store(tmp_path_factory):
    from robocl.collect import collect

    out = tmp_path_factory.mktemp("pp") / "demos.zarr"
    collect("robocl/PickPlace-v0", 12, out, noise=0.1, progress=False, seed=0)
    return TrajectoryStore.open(out)


def test_state_only_end_to_end_pick_place(pick_place_store, tmp_path):
    from robocl.nets.language import LanguageEncoder
    from tests.nets.test_language import build_tiny_bert

    bert = build_tiny_bert(tmp_path / "bert")
    cfg = CORFTConfig(horizon=5, **{**TINY, "language_model": str(bert)})
    loop = {"batch_size": 32, "log_every": 5, "checkpoint_every": 100}
    paths = train_co_rft(
        cfg,
        pick_place_store.location,
        tmp_path / "run",
        il_loop=LoopConfig(n_updates=40, **loop),
        rl_loop=LoopConfig(n_updates=10, **loop),
        language=LanguageEncoder(str(bert)),
        progress=False,
    )
    run = RunDir(tmp_path / "run")
    assert set(paths) == {"il", "rl"} and run.tb("rl").is_dir() and run.info()["stages"] == ["il", "rl"]
    assert load_checkpoint(paths["il"]).spec["extra"]["stage"] == "il"
    rl = load_checkpoint(paths["rl"])
    assert rl.step == 10 and "critic.0.prefix_emb" in rl.tensors

    env = gym.make("robocl/PickPlace-v0")
    obs, _ = env.reset(seed=123)
    step = {
        "observation.state": obs["proprio"],
        "observation.object": obs["object"],
        "task": obs["instruction"],
    }
    # The inference-only policy acts as the whole algorithm restored from the same checkpoint does.
    live = CORFT.from_checkpoint(load_checkpoint(paths["rl"])).policy()
    for path in paths.values():  # IL and RL checkpoints both load as policies
        policy = robocl.load_policy(str(path))
        policy.reset()
        action = policy.predict(step)
        assert action.shape == (5,) and np.all(np.abs(action) <= 1.0 + 1e-6)
    live.reset()
    policy = robocl.load_policy(str(paths["rl"]))
    policy.reset()
    np.testing.assert_array_equal(policy.predict(step), live.predict(step))
    for _ in range(12):  # acts in the env, one action per step from 5-step chunks
        obs, _, terminated, truncated, _ = env.step(
            policy.predict(
                {
                    "observation.state": obs["proprio"],
                    "observation.object": obs["object"],
                    "task": obs["instruction"],
                }
            )
        )
        assert not truncated
        if terminated:
            break
    env.close()


def test_cli_pretrain_then_fine_tune_and_evaluate_both_stages(pick_place_store, tmp_path, capsys):
    from robocl.cli import main

    data = pick_place_store.location
    tiny = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--language-model", "none"]
    tiny += ["--horizon", "5", "--batch-size", "16", "--checkpoint-every", "100", "--state-path", "both"]
    assert main(["train", "vla-pretrain", "--data", data, "--run-dir", str(tmp_path / "pre"),
                 "--il-updates", "3", *tiny]) == 0  # fmt: skip
    generalist = RunDir(tmp_path / "pre").checkpoint("il")
    assert "fine-tune from it: robocl train co-rft --init" in capsys.readouterr().out
    assert RunDir(tmp_path / "pre").info()["stages"] == ["il"]  # pretraining is stage 1 only

    # --init copies the pretrained trunk; --il-updates 0 keeps it as is, so the RL stage starts from it.
    args = ["--data", data, "--init", str(generalist), "--il-updates", "0", "--rl-updates", "2"]
    assert (
        main(["train", "co-rft", "--run-dir", str(tmp_path / "ft"), *args, "--eval-episodes", "1", *tiny])
        == 0
    )
    ft = RunDir(tmp_path / "ft")
    # The end of the stage is evaluated by the shared evaluator at seen and unseen positions.
    tasks = sorted(path.parent.name for _, path in ft.evaluations("rl"))
    assert tasks == ["robocl_PickPlace-v0_seen", "robocl_PickPlace-v0_unseen"]
    pretrained = load_checkpoint(generalist).tensors
    tuned = load_checkpoint(ft.checkpoint("rl")).tensors
    key = next(k for k in pretrained if k.startswith("policy.trunk.lowdim"))
    assert pretrained[key].shape == tuned[key].shape

    # IL only (--rl-updates 0) writes the IL checkpoint and evaluates it.
    args = ["--data", data, "--il-updates", "2", "--rl-updates", "0", "--eval-episodes", "1"]
    assert main(["train", "co-rft", "--run-dir", str(tmp_path / "il"), *args, *tiny]) == 0
    il = RunDir(tmp_path / "il")
    assert il.info()["stages"] == ["il"] and len(list(il.evaluations("il"))) == 2


def camera_features(size: int) -> dict[str, Feature]:
    """A 3-d state, a 2-d action, front and wrist cameras of size x size pixels and the success flag."""
    return {
        "observation.state": Feature("state", "float32", (3,)),
        "action": Feature("action", "float32", (2,)),
        "observation.images.front": Feature("rgb", "uint8", (size, size, 3)),
        "observation.images.wrist": Feature("rgb", "uint8", (size, size, 3)),
        "success": Feature("flag", "bool", ()),
    }


def image_store(tmp_path) -> TrajectoryStore:
    store = TrajectoryStore.create(tmp_path / "img.zarr", camera_features(32), fps=10)
    rng = np.random.default_rng(0)
    for i, task in enumerate(
        ["put the red cube on the blue plate", "put the green bar on the red plate"] * 2
    ):
        n = 8 + i
        frames = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        store.add_episode(
            {
                "observation.state": rng.normal(size=(n, 3)),
                "action": rng.uniform(-1, 1, (n, 2)),
                "observation.images.front": frames,
                "observation.images.wrist": frames[:, ::-1],
                "success": np.arange(n) == n - 1,
            },
            task=task,
            success=True,
            terminated=True,
        )
    return store


def square_scenes(rng: np.random.Generator, n: int = 12):
    """``n`` times: a position (row, column in [0, 1]) and six 24 x 24 frames of a white 4 x 4 square there
    (its top-left pixel at 20 x the position), drawn from ``rng`` between the caller's draws."""
    for _ in range(n):
        where = rng.uniform(0, 1, 2)
        row, col = (where * 20).astype(int)
        front = np.zeros((6, 24, 24, 3), np.uint8)
        front[:, row : row + 4, col : col + 4] = 255
        yield where, front


def square_store(tmp_path) -> TrajectoryStore:
    """The front camera shows a white square where ``observation.object``'s x, y (row, column in [0, 1])
    put it, still through each 6-step episode; its qw, the wrist camera and the state are noise."""
    names = ("object.x", "object.y", "object.qw")
    feats = {**camera_features(24), "observation.object": Feature("state", "float32", (3,), names=names)}
    store = TrajectoryStore.create(tmp_path / "square.zarr", feats, fps=10)
    rng = np.random.default_rng(0)
    for where, front in square_scenes(rng):
        store.add_episode(
            {
                "observation.state": rng.normal(size=(6, 3)),
                "observation.object": np.column_stack([np.tile(where, (6, 1)), rng.normal(size=6)]),
                "action": rng.uniform(-1, 1, (6, 2)),
                "observation.images.front": front,
                "observation.images.wrist": rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8),
                "success": np.arange(6) == 5,
            },
            success=True,
            terminated=True,
        )
    return store


# 1 m above the table looking straight down at 20 px per metre: world (x, y) at row 20x + 1.5, column
# 20y + 1.5, the centre of the square ``calibrated_square_store`` draws there.
OVERHEAD = CameraCalibration((20.0, 20.0, 1.5, 1.5), (0.0, 0.0, 1.0), ((0, 1, 0), (1, 0, 0), (0, 0, -1)))


def calibrated_square_store(
    tmp_path, calibration: CameraCalibration | None = OVERHEAD, plate: bool = False, goal: bool = False
) -> TrajectoryStore:
    """``square_store``'s scenes seen by a calibrated overhead camera: the object (x, y, z = 0), with
    ``plate`` a plate at a random place per episode (not drawn), with ``goal`` a goal named by its x and y
    only (as the push task's), and the tool (tcp.x, tcp.y, tcp.z, then a joint) named as robocl's tasks
    name them."""
    names = (
        *("object.x", "object.y", "object.z"),
        *(("plate.x", "plate.y", "plate.z") if plate else ()),
        *(("goal.x", "goal.y") if goal else ()),
    )
    feats = {
        "observation.state": Feature("state", "float32", (4,), names=("tcp.x", "tcp.y", "tcp.z", "joint")),
        "observation.object": Feature("state", "float32", (len(names),), names=names),
        "action": Feature("action", "float32", (2,)),
        "observation.images.front": Feature("rgb", "uint8", (24, 24, 3), camera=calibration),
        "success": Feature("flag", "bool", ()),
    }
    store = TrajectoryStore.create(tmp_path / "calibrated.zarr", feats, fps=10)
    rng = np.random.default_rng(0)
    plate_at = (lambda r: (*r.uniform(size=2), 0.0)) if plate else (lambda r: ())
    goal_at = (lambda r: tuple(r.uniform(size=2))) if goal else (lambda r: ())
    for where, front in square_scenes(rng):
        store.add_episode(
            {
                "observation.state": rng.normal(size=(6, 4)),
                "observation.object": np.tile([*where, 0.0, *plate_at(rng), *goal_at(rng)], (6, 1)),
                "action": rng.uniform(-1, 1, (6, 2)),
                "observation.images.front": front,
                "success": np.arange(6) == 5,
            },
            success=True,
            terminated=True,
        )
    return store


def in_head_units(offsets: torch.Tensor) -> torch.Tensor:
    """Position differences (m) as the head reads them, by hand: in 10 cm, then log-scaled at the relative
    positions' 1 cm resolution."""
    return torch.cat([offsets / 0.1, torch.asinh(offsets / 0.01) / np.arcsinh(LOG_SCALE_REACH / 0.01)], 1)


def test_the_detector_learns_where_the_object_is_and_the_head_reads_it_from_the_tool(tmp_path):
    """With ``detect_entity`` the front camera's detector learns the square's pixel from the object's
    projected position; the head reads the detected object minus the tool (6 more features), in 10 cm
    units and log-scaled at the relative positions' resolution (1 cm); acting needs no object state."""
    store = calibrated_square_store(tmp_path)
    cfg = CORFTConfig(
        image_keys=("observation.images.front",), aux_state_keys=("observation.object",),
        detect_entity="object", head_input="trunk", horizon=2, vision_channels=(8, 8), aug_shift=0,
        il_lr=3e-3, **TINY,
    )  # fmt: skip
    algo = CORFT.from_store(cfg, store)
    net = algo.policy_net
    assert algo.spec.extra["detector"] == {
        "camera": "observation.images.front", "calibration": OVERHEAD.to_dict(),
        "entities": {"object": {"columns": [0, 1, 2], "height": 0.0}}, "instructed": False,
        "tool_columns": [0, 1, 2], "resolution": 0.01,
    }  # fmt: skip
    sampler = algo.il_sampler(store)
    pixel_loss = [algo.update(to_torch(sampler.sample(32), "cpu"))["detector_px"] for _ in range(300)]
    assert np.mean(pixel_loss[-20:]) < 0.2 * np.mean(pixel_loss[:20])
    batch = to_torch(sampler.sample(64), "cpu")
    net.eval()
    with torch.no_grad():
        encoding = net.features_and_trunk(batch["obs"], None)
        found = net.detected_entities(encoding.pixels[:, -1])[:, 0]
    truth = batch["obs"]["observation.object"][:, -1]
    assert (found - truth).abs()[:, :2].mean() < 0.05  # within a pixel (5 cm at 20 px per metre)
    tool = batch["obs"]["observation.state"][:, -1, :3]
    offset = found - tool
    expected = in_head_units(offset)
    torch.testing.assert_close(encoding.features[:, -6:], expected)
    obs = {
        "observation.images.front": np.zeros((2, 24, 24, 3), np.uint8),
        "observation.state": np.zeros((2, 4)),
    }
    assert np.isfinite(algo.policy().predict(obs)).all()


def test_the_head_can_read_only_the_positions_the_camera_estimates(tmp_path):
    """With ``head_input="positions"`` the head reads the robot state and, of the camera, only the
    differences of [tool, object from the detector, plate from the trunk's readout] (3 pairs, in 10 cm and
    log-scaled), detached: the head's loss reaches no trunk weight."""
    store = calibrated_square_store(tmp_path, plate=True)
    cfg = CORFTConfig(
        image_keys=("observation.images.front",), aux_state_keys=("observation.object",),
        detect_entity="object", head_input="positions", horizon=2, vision_channels=(8, 8), **TINY,
    )  # fmt: skip
    algo = CORFT.from_store(cfg, store)
    net = algo.policy_net
    assert algo.spec.extra["estimated_positions"] == {
        "entities": {"object": [0, 1, 2], "plate": [3, 4, 5]},
        "tool_columns": [0, 1, 2], "resolution": 0.01,
    }  # fmt: skip
    assert net.trunk_gate is None and net.feat_dim == 4 + 18  # the state, 3 pairs x 3 axes x 2 scales
    batch = to_torch(algo.il_sampler(store).sample(8), "cpu")
    encoding = net.features_and_trunk(batch["obs"], None)
    read = net.read_positions(encoding.trunk)
    # The object and the plate lie on the table: their z is known, not read (the readout's error there
    # would reach the head in metres, as a constant is left unscaled).
    assert net.aux_columns.tolist() == [0, 1, 3, 4]
    assert (read[:, [2, 5]] == 0).all()
    # The readout, standardised again, is what the auxiliary loss trains.
    standardised = net.normalizer.normalize("observation.object", read)[:, net.aux_columns]
    torch.testing.assert_close(standardised, net.aux_readout(encoding.trunk), rtol=1e-4, atol=1e-4)
    tool = batch["obs"]["observation.state"][:, -1, :3].float()
    found = net.detected_entities(encoding.pixels[:, -1])[:, 0]
    offsets = torch.cat([found - tool, read[:, 3:6] - tool, read[:, 3:6] - found], 1)
    expected = in_head_units(offsets)
    torch.testing.assert_close(encoding.features[:, -18:], expected)
    encoding.features.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in net.trunk.parameters())
    assert np.isfinite(algo.update(batch)["loss"])
    with pytest.raises(ValueError, match=r"head_input='positions' .* needs aux_state_keys"):
        CORFTConfig(image_keys=("observation.images.front",), head_input="positions")


def test_the_head_leaves_out_an_entity_named_by_x_and_y_only(tmp_path):
    """A goal named by goal.x and goal.y only (the push task's) is learnt by the readout but not read by the
    head (measured: read from the readout it lowered push success): the head reads object - tool alone."""
    store = calibrated_square_store(tmp_path, goal=True)
    cfg = CORFTConfig(
        image_keys=("observation.images.front",), aux_state_keys=("observation.object",),
        detect_entity="object", horizon=2, vision_channels=(8, 8), **TINY,
    )  # fmt: skip
    algo = CORFT.from_store(cfg, store)
    net = algo.policy_net
    assert algo.spec.extra["estimated_positions"]["entities"] == {"object": [0, 1, 2]}
    assert net.feat_dim == 4 + 6 and net.aux_columns.tolist() == [0, 1, 3, 4]  # object.z never varies
    batch = to_torch(algo.il_sampler(store).sample(8), "cpu")
    encoding = net.features_and_trunk(batch["obs"], None)
    tool = batch["obs"]["observation.state"][:, -1, :3].float()
    offset = net.detected_entities(encoding.pixels[:, -1])[:, 0] - tool
    expected = in_head_units(offset)
    torch.testing.assert_close(encoding.features[:, -6:], expected)


def two_plate_scenes(rng: np.random.Generator, n: int):
    """``n`` times: the red and the blue 4 x 4 square's positions (row, column in [0, 1], 6 px apart or
    more) and six 24 x 24 frames of both, seen as ``OVERHEAD`` sees the table."""
    for _ in range(n):
        red, blue = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)
        while np.abs(red - blue).max() < 0.3:
            blue = rng.uniform(0, 1, 2)
        front = np.zeros((6, 24, 24, 3), np.uint8)
        for where, colour in ((red, (255, 0, 0)), (blue, (0, 0, 255))):
            row, col = (where * 20).astype(int)
            front[:, row : row + 4, col : col + 4] = colour
        yield red, blue, front


def two_plate_store(tmp_path) -> TrajectoryStore:
    """``two_plate_scenes`` as the front camera of a store whose instructions name one of the two plates,
    the named one's x, y, z in ``observation.object``."""
    feats = {
        "observation.state": Feature("state", "float32", (4,), names=("tcp.x", "tcp.y", "tcp.z", "joint")),
        "observation.object": Feature("state", "float32", (3,), names=("plate.x", "plate.y", "plate.z")),
        "action": Feature("action", "float32", (2,)),
        "observation.images.front": Feature("rgb", "uint8", (24, 24, 3), camera=OVERHEAD),
        "success": Feature("flag", "bool", ()),
    }
    store = TrajectoryStore.create(tmp_path / "plates.zarr", feats, fps=10)
    rng = np.random.default_rng(0)
    for episode, (red, blue, front) in enumerate(two_plate_scenes(rng, 16)):
        named = episode % 2  # red, blue, red, ...
        store.add_episode(
            {
                "observation.state": rng.normal(size=(6, 4)),
                "observation.object": np.tile([*(red, blue)[named], 0.0], (6, 1)),
                "action": rng.uniform(-1, 1, (6, 2)),
                "observation.images.front": front,
                "success": np.arange(6) == 5,
            },
            task=f"put it on the {('red', 'blue')[named]} plate",
            success=True,
            terminated=True,
        )
    return store


def test_an_instructed_detector_finds_the_plate_the_instruction_names(tmp_path):
    """With ``detector_instructed`` the detector's score is conditioned on the instruction (standardised
    over the store's instructions): on new scenes, the same frame told "red" then "blue" is found at the red
    plate, then at the blue one; a detector that ignored the words would give one place for both (off by
    default: the spec says so)."""
    from robocl.nets.language import LanguageEncoder
    from tests.nets.test_language import build_tiny_bert

    store = two_plate_store(tmp_path)
    bert = str(build_tiny_bert(tmp_path / "bert"))
    cfg = CORFTConfig(
        image_keys=("observation.images.front",), aux_state_keys=("observation.object",),
        detect_entity="plate", detector_instructed=True, horizon=2, vision_channels=(8, 8), aug_shift=0,
        il_lr=3e-3, **{**TINY, "language_model": bert},
    )  # fmt: skip
    algo = CORFT.from_store(cfg, store, language=LanguageEncoder(bert))
    net = algo.policy_net
    assert algo.spec.extra["detector"]["instructed"] and net.detected_names == ["plate"]
    default = CORFT.from_store(dataclasses.replace(cfg, detector_instructed=False), store)
    assert not default.spec.extra["detector"]["instructed"]
    said = net.normalizer.normalize("instruction", net.task_embeddings)
    torch.testing.assert_close(said.mean(0), torch.zeros(said.shape[1]), atol=1e-5, rtol=0)
    sampler = algo.il_sampler(store)
    for _ in range(400):
        algo.update(to_torch(sampler.sample(32), "cpu"))
    red, blue, frames = zip(*two_plate_scenes(np.random.default_rng(1), 8), strict=True)
    n_obs = algo.config.n_obs
    obs = {
        "observation.images.front": torch.as_tensor(np.stack(frames)[:, :n_obs]),
        "observation.state": torch.zeros(8, n_obs, 4),
    }
    net.eval()
    for colour, named, other in (("red", red, blue), ("blue", blue, red)):
        lang = net.task_embeddings[store.tasks.index(f"put it on the {colour} plate")].expand(8, -1)
        with torch.no_grad():
            pixels = net.features_and_trunk(obs, lang).pixels
        found = net.detected_entities(pixels[:, -1])[:, 0, :2]
        error, off = ((found - torch.as_tensor(np.stack(p))).norm(dim=-1) for p in (named, other))
        # Within 2 px on average, nearer the named plate every time (the plates are 6 px apart or more).
        assert error.mean() < 0.1 and (error < off).all(), (colour, error, off)


def test_the_head_reads_the_positions_by_default_when_a_detector_locates_the_object():
    cams, aux = ("observation.images.front",), ("observation.object",)
    assert CORFTConfig(image_keys=cams, aux_state_keys=aux, detect_entity="object").head_input == "positions"
    assert CORFTConfig(image_keys=cams, aux_state_keys=aux).head_input == "trunk"  # no detector
    robot_state_in_trunk = CORFTConfig(image_keys=cams, aux_state_keys=aux, detect_entity="object",
                                       state_path="trunk")  # fmt: skip
    assert robot_state_in_trunk.head_input == "trunk"
    chosen = CORFTConfig(image_keys=cams, aux_state_keys=aux, detect_entity="object", head_input="trunk")
    assert chosen.head_input == "trunk"


def test_best_of_n_keeps_the_mode_by_default_only_where_the_head_reads_estimated_positions():
    cams, aux = ("observation.images.front",), ("observation.object",)
    assert CORFTConfig(image_keys=cams, aux_state_keys=aux, detect_entity="object").bon_mode_margin == 1.5
    assert CORFTConfig(image_keys=cams, aux_state_keys=aux).bon_mode_margin == 0.0  # the trunk's feature
    assert CORFTConfig(state_keys=("observation.state",)).bon_mode_margin == 0.0  # exact state: QC's argmax
    chosen = CORFTConfig(image_keys=cams, aux_state_keys=aux, detect_entity="object", bon_mode_margin=0.0)
    assert chosen.bon_mode_margin == 0.0


def test_the_detector_needs_a_calibrated_camera_the_entity_and_the_tool(tmp_path):
    cams, aux = ("observation.images.front",), ("observation.object",)
    with pytest.raises(ValueError, match=r"detect_entity=\['object'\] .* name the feature that holds it"):
        CORFTConfig(image_keys=cams, detect_entity="object")
    config = CORFTConfig(image_keys=cams, aux_state_keys=aux, detect_entity="object", **TINY)
    with pytest.raises(ValueError, match=r"needs a calibrated camera among image_keys"):
        CORFT.from_store(config, calibrated_square_store(tmp_path / "a", calibration=None))
    store = calibrated_square_store(tmp_path / "b")
    with pytest.raises(
        ValueError, match=r"name no plate.x/y/z \(entities with a position there: \['object'\]\)"
    ):
        CORFT.from_store(dataclasses.replace(config, detect_entity="plate"), store)


def test_aux_state_teaches_the_trunk_where_the_object_is(tmp_path):
    """The readout of the trunk learns the square's position (the feature's position columns, not its qw)
    from the front camera; acting reads no ``observation.object``; stage 2 leaves the readout frozen."""
    store = square_store(tmp_path)
    cams = ("observation.images.front", "observation.images.wrist")
    cfg = CORFTConfig(
        image_keys=cams, aux_state_keys=("observation.object",), horizon=2, vision_channels=(8, 8),
        aug_shift=0, il_lr=1e-3, **TINY,
    )  # fmt: skip
    algo = CORFT.from_store(cfg, store)
    assert algo.config.state_keys == ("observation.state",)  # every state feature but the predicted one
    assert algo.policy_net.aux_readout.out_features == 2
    sampler = algo.il_sampler(store)
    aux = [algo.update(to_torch(sampler.sample(32), "cpu"))["aux_state"] for _ in range(200)]
    assert np.mean(aux[-20:]) < 0.25 * np.mean(aux[:20])
    algo.start_rl()
    assert not algo.policy_net.aux_readout.weight.requires_grad and len(algo._polyak) == 1
    obs = {k: np.zeros((2, 24, 24, 3), np.uint8) for k in cams} | {"observation.state": np.zeros((2, 3))}
    assert np.isfinite(algo.policy().predict(obs)).all()


def test_an_image_policy_is_evaluated_at_the_frame_size_it_learnt_from(tmp_path):
    """A policy trained on 32 x 32 frames (``robocl collect --image-size 32``) is rolled out on 32 x 32
    frames from its checkpoint, where the 96 x 96 default would not fit the world it recorded."""
    from robocl.collect import collect
    from robocl.eval.evaluate import evaluate
    from robocl.run.loop import save_algorithm

    store = collect("robocl/PickPlace-v0", 1, tmp_path / "demos", images=True, image_size=32, max_steps=8,
                    progress=False)  # fmt: skip
    cfg = CORFTConfig(
        state_keys=("observation.state",), image_keys=("observation.images.front",), horizon=2,
        vision_channels=(8, 8), **TINY,
    )  # fmt: skip
    algo = CORFT.from_store(cfg, store)
    algo.update(to_torch(algo.il_sampler(store).sample(4), "cpu"))
    policy = algo.policy()
    assert policy.obs_shapes["observation.images.front"] == (32, 32, 3)
    state = np.zeros(policy.obs_shapes["observation.state"], np.float32)
    frame = {"observation.state": state, "observation.images.front": np.zeros((96, 96, 3), np.uint8)}
    message = r"observation.images.front: this policy learnt from \(32, 32, 3\) per step, got \(96, 96, 3\)"
    with pytest.raises(ValueError, match=message):
        policy.predict({**frame, "task": "put the red cube on the blue plate"})
    checkpoint = save_algorithm(algo, tmp_path / "il")
    result = evaluate(checkpoint, "robocl/PickPlace-v0", n_episodes=1, max_steps=3, out_dir=tmp_path / "eval",
                      progress=False)  # fmt: skip
    assert result["summary"]["n_episodes"] == 1


def test_aux_state_keys_are_checked(tmp_path):
    store = square_store(tmp_path)
    cams, aux = ("observation.images.front",), ("observation.object",)
    with pytest.raises(ValueError, match=r"aux_state_keys=.*needs image_keys"):
        CORFTConfig(state_keys=("observation.state",), aux_state_keys=aux)
    with pytest.raises(ValueError, match="overlap state_keys"):
        CORFTConfig(state_keys=aux, image_keys=cams, aux_state_keys=aux)
    with pytest.raises(ValueError, match=r"feature 'observation\.pose' is not in the store"):
        CORFT.from_store(CORFTConfig(image_keys=cams, aux_state_keys=("observation.pose",), **TINY), store)
    # A feature whose positions never vary leaves the readout nothing to learn.
    pose = Feature("state", "float32", (2,), names=("object.x", "object.y"))
    feats = {**camera_features(24), "observation.pose": pose}
    still = TrajectoryStore.create(tmp_path / "still.zarr", feats, fps=10)
    rng = np.random.default_rng(0)
    for _ in range(2):
        steps = {k: rng.uniform(0, 1, (4, *f.shape)).astype(f.dtype) for k, f in feats.items()}
        steps |= {"observation.pose": np.full((4, 2), 0.5), "success": np.arange(4) == 3}
        still.add_episode(steps, success=True, terminated=True)
    message = r"aux_state_keys \['observation.pose'\]: no column varies in the demos"
    with pytest.raises(ValueError, match=message):
        CORFT.from_store(CORFTConfig(image_keys=cams, aux_state_keys=("observation.pose",), **TINY), still)


@pytest.mark.parametrize("detect", [False, True, "positions", "instructed"])
def test_resume_with_aux_state_equals_uninterrupted(tmp_path, detect):
    """Imitation with the auxiliary loss (and the detector's, and the head reading estimated positions of
    two detected entities, and a detector conditioned on the instruction) stopped at update 3 of 6 and
    resumed, then stage 2: bit-exact."""
    entities = {True: ("object",), "positions": ("object", "plate"), "instructed": ("plate",)}.get(detect)
    language = {}
    if detect == "instructed":
        from tests.nets.test_language import build_tiny_bert

        store, language = two_plate_store(tmp_path), {"language_model": str(build_tiny_bert(tmp_path / "b"))}
    else:
        store = calibrated_square_store(tmp_path, plate=True) if detect else square_store(tmp_path)
    cfg = CORFTConfig(
        image_keys=("observation.images.front",), aux_state_keys=("observation.object",), horizon=2,
        vision_channels=(8, 8), n_candidates=4, il_schedule_updates=6, detect_entity=entities,
        detector_instructed=detect == "instructed", **{**TINY, **language},
        head_input="trunk" if detect is True else None,
    )  # fmt: skip
    loop = {"batch_size": 8, "log_every": 1, "checkpoint_every": 2}

    def run(run_dir, il_updates, rl_updates, resume=False):
        rl_loop = LoopConfig(n_updates=rl_updates, **loop) if rl_updates else None
        train_co_rft(cfg, store.location, run_dir, il_loop=LoopConfig(n_updates=il_updates, **loop),
                     rl_loop=rl_loop, resume=resume, progress=False)  # fmt: skip
        return RunDir(run_dir)

    full = load_checkpoint(run(tmp_path / "full", 6, 2).checkpoint("rl"))
    run(tmp_path / "split", 3, 0)
    torch.manual_seed(1234)  # a new process: other RNG use before resuming must not matter
    resumed = load_checkpoint(run(tmp_path / "split", 6, 2, resume=True).checkpoint("rl"))
    assert any(key.startswith("policy.aux_readout") for key in full.tensors)
    assert any("detector" in key for key in full.tensors) == bool(detect)
    for key, value in full.tensors.items():
        assert torch.equal(value, resumed.tensors[key]), key


def test_image_language_policy_trains(tmp_path):
    from robocl.nets.language import LanguageEncoder
    from tests.nets.test_language import build_tiny_bert

    store = image_store(tmp_path)
    enc = LanguageEncoder(str(build_tiny_bert(tmp_path / "bert")))
    cams = ("observation.images.front", "observation.images.wrist")
    cfg = CORFTConfig(
        state_keys=("observation.state",),
        image_keys=cams,
        horizon=3,
        vision_channels=(8, 8),
        cql_n_samples=2,
        actor="best_of_n",  # its candidate table is what a frozen image trunk must fill
        **{**TINY, "language_model": str(tmp_path / "bert")},
    )
    algo = CORFT.from_store(cfg, store, language=enc)
    torch.testing.assert_close(algo.policy_net.task_embeddings, enc.encode(store.tasks))
    il, rl = algo.il_sampler(store), algo.rl_sampler(store)
    before = algo.policy_net.trunk.cameras["observation__images__front"].conv[0].weight.clone()
    il_losses = [algo.update(to_torch(il.sample(8), "cpu"))["loss"] for _ in range(3)]
    assert not torch.equal(before, algo.policy_net.trunk.cameras["observation__images__front"].conv[0].weight)
    algo.start_rl()
    assert len(algo._polyak) == 1  # the frozen trunk, its gate and the head: only the critics are averaged
    rl_metrics = [algo.update(to_torch(rl.sample(8), "cpu")) for _ in range(2)]
    assert all(np.isfinite(il_losses)) and rl_metrics[0]["conservative"] != 0
    assert algo._candidates.shape == (algo._histories.n_histories, cfg.n_candidates, 3, 2)
    policy = algo.policy()
    obs = {k: np.zeros((2, 32, 32, 3), np.uint8) for k in cams} | {"observation.state": np.zeros((2, 3))}
    # A known instruction uses the stored embedding; an unseen one goes through the encoder.
    new_task = "put the yellow cylinder on the green plate"
    emb = policy.embed([store.tasks[1], new_task])
    torch.testing.assert_close(emb, torch.stack([enc.encode([store.tasks[1]])[0], enc.encode([new_task])[0]]))
    actions = policy.predict({**obs, "task": [store.tasks[0], new_task]})
    assert actions.shape == (2, 2) and np.isfinite(actions).all()
    with pytest.raises(KeyError, match="obs\\['task'\\]"):
        policy.predict(obs)


@pytest.mark.parametrize(
    "variant",
    [
        {"bon_refresh": 5},  # a resume at step 3 ranks with the saved choice and values of step 0
        {"prefix_samples": 2},  # the drawn prefixes come from the restored RNG
        {"bon_refresh": 5, "bon_ranked_target": False, "cql_fraction": 1.0},  # targets scored every update
        {"actor": "distill"},
        {"head": "regression", "val_fraction": 0.0},
        {"critic": "transformer", "n_action_steps": 2, "flow_noise": 0.5},
        {"n_action_steps": 2, "cql_executed": True},
        {"bon_refresh": 5, "bon_mode_margin": 0.05},
    ],
    ids=[
        "best-of-n",
        "prefix-samples",
        "best-of-n-scored-target",
        "distill",
        "regression",
        "transformer-critic",
        "conservative-executed",
        "best-of-n-mode-margin",
    ],
)
def test_resume_equals_uninterrupted(tmp_path, variant):
    store = chain_store(tmp_path)
    cfg = CORFTConfig(state_keys=("observation.state",), horizon=3, gripper=False, **{**TINY, **variant})
    loop = {"batch_size": 16, "log_every": 1, "checkpoint_every": 2}

    def run(run_dir, rl_updates, resume=False):
        il_loop, rl_loop = LoopConfig(n_updates=4, **loop), LoopConfig(n_updates=rl_updates, **loop)
        train_co_rft(cfg, store.location, run_dir, il_loop=il_loop, rl_loop=rl_loop, resume=resume,
                     progress=False)  # fmt: skip
        return load_checkpoint(RunDir(run_dir).checkpoint("rl"))

    full = run(tmp_path / "full", 7)
    run(tmp_path / "split", 3)
    torch.manual_seed(1234)  # a new process: other RNG use before resuming must not matter
    resumed = run(tmp_path / "split", 7, resume=True)
    assert resumed.step == full.step == 7
    for key, value in full.tensors.items():
        assert torch.equal(value, resumed.tensors[key]), key
    state_full, state_resumed = full.trainer_state()["algorithm"], resumed.trainer_state()["algorithm"]
    for key, value in state_full["target_critics"].items():
        assert torch.equal(value, state_resumed["target_critics"][key]), key


def test_cosine_warmup_by_hand():
    """Warm-up 2 of 6 updates: 1/2, 1, then 0.5 (1 + cos(pi p)) for p = 0, 1/4, 1/2, 3/4; 0 from the end."""
    factors = [cosine_warmup(step, 6, 2) for step in range(8)]
    half = math.sqrt(0.5) / 2
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.5 + half, 0.5, 0.5 - half, 0.0, 0.0])
    assert cosine_warmup(0, 3, 0) == 1.0  # no warm-up: the decay starts at once


def test_imitation_follows_its_lr_schedule_and_resumes_on_it(tmp_path):
    """Each IL update steps at il_lr x cosine_warmup(step); without a budget the lr stays il_lr; robocl
    train sets the budget from the IL loop, and a run interrupted mid-schedule resumes bit-exactly."""
    store = chain_store(tmp_path)
    base = {"state_keys": ("observation.state",), "horizon": 2, "gripper": False, **TINY}
    sampler = None
    for budget in (6, None):
        algo = CORFT.from_store(CORFTConfig(il_warmup=2, il_schedule_updates=budget, **base), store)
        sampler = sampler or algo.il_sampler(store)
        for step in range(7):
            algo.update(to_torch(sampler.sample(8), "cpu"))
            factor = cosine_warmup(step, budget, 2) if budget else 1.0
            assert algo.il_opt.param_groups[0]["lr"] == pytest.approx(algo.config.il_lr * factor)

    loop = {"batch_size": 16, "log_every": 1, "checkpoint_every": 2}

    def run(run_dir, cfg, n_updates, resume=False):
        train_co_rft(cfg, store.location, run_dir, il_loop=LoopConfig(n_updates=n_updates, **loop),
                     rl_loop=None, resume=resume, progress=False)  # fmt: skip
        return load_checkpoint(RunDir(run_dir).checkpoint("il"))

    assert run(tmp_path / "set", CORFTConfig(**base), 3).config["il_schedule_updates"] == 3
    cfg = CORFTConfig(il_warmup=1, il_schedule_updates=6, **base)  # the budget of the interrupted run
    full = run(tmp_path / "full", cfg, 6)
    run(tmp_path / "split", cfg, 3)
    resumed = run(tmp_path / "split", cfg, 6, resume=True)
    for key, value in full.tensors.items():
        assert torch.equal(value, resumed.tensors[key]), key


def test_resume_through_shared_fit_matches_losses(tmp_path):
    store = chain_store(tmp_path)
    cfg = CORFTConfig(state_keys=("observation.state",), horizon=2, gripper=False, critic_loss="full", **TINY)

    def rl_algo():
        algo = CORFT.from_store(cfg, store)
        algo.start_rl()
        return algo, algo.rl_sampler(store)

    loop = {"batch_size": 16, "log_every": 1, "checkpoint_every": 3}
    common = {"stage": "rl", "progress": False}
    algo, sampler = rl_algo()
    full = fit(algo, sampler, LoopConfig(n_updates=6, **loop), tmp_path / "a", **common)
    algo, sampler = rl_algo()
    first = fit(algo, sampler, LoopConfig(n_updates=3, **loop), tmp_path / "b", **common)
    algo, sampler = rl_algo()
    rest = fit(algo, sampler, LoopConfig(n_updates=6, **loop), tmp_path / "b", resume=True, **common)
    assert [m["critic_td"] for m in first + rest] == [m["critic_td"] for m in full]
    assert [m.get("actor_loss") for m in first + rest] == [m.get("actor_loss") for m in full]


def test_a_frozen_policy_keeps_its_target_copy_equal(tmp_path):
    """Best-of-N trains critics only: the policy's target copy (not soft-updated then) stays the policy."""
    store = chain_store(tmp_path)
    cfg = CORFTConfig(state_keys=("observation.state",), horizon=2, gripper=False, **TINY)
    algo = CORFT.from_store(cfg, store)
    algo.start_rl()
    sampler = algo.rl_sampler(store)
    for _ in range(3):
        algo.update(to_torch(sampler.sample(8), "cpu"))
    target, policy = algo.target_policy.state_dict(), algo.policy_net.state_dict()
    assert all(torch.equal(target[k], policy[k]) for k in policy)


def test_stage_two_runs_in_float32_under_bf16_autocast(tmp_path):
    """The loop autocasts to bf16 on a GPU; stage 2's TD maths must not follow (Q of tens of steps is
    resolved to 0.25 in bf16): under autocast it gives the float32 run's numbers exactly. CPU autocast stands
    in for the GPU's here."""
    store = chain_store(tmp_path)
    cfg = CORFTConfig(state_keys=("observation.state",), horizon=2, gripper=False, **TINY)
    runs = []
    for autocast in (False, True):
        algo = CORFT.from_store(cfg, store)
        algo.start_rl()
        sampler = algo.rl_sampler(store)
        torch.manual_seed(0)  # the CQL samples' stream
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            runs.append([algo.update(to_torch(sampler.sample(8), "cpu")) for _ in range(3)])
    assert runs[0] == runs[1]


def test_a_non_finite_stage_two_loss_names_its_source(tmp_path):
    """A NaN in stage 2 is traced to the first non-finite input of the critic loss, and no weight moves."""
    store = chain_store(tmp_path)
    cfg = CORFTConfig(state_keys=("observation.state",), horizon=2, gripper=False, **TINY)
    algo = CORFT.from_store(cfg, store)
    algo.start_rl()
    batch = to_torch(algo.rl_sampler(store).sample(8), "cpu")
    batch["reward"][3, 1] = float("nan")
    before = copy.deepcopy(algo.critics.state_dict())
    with pytest.raises(
        NonFiniteError, match=r"loss is nan; stage-2 critic, update 1: non-finite: batch reward$"
    ):
        algo.update(batch)
    for name, value in algo.critics.state_dict().items():
        torch.testing.assert_close(value, before[name])
    # The distilled actor's loss names its inputs too: a NaN flow chunk is its distillation target.
    cfg = CORFTConfig(state_keys=("observation.state",), horizon=2, gripper=False, actor="distill", **TINY)
    algo = CORFT.from_store(cfg, store)
    with torch.no_grad():
        algo.policy_net.head.net[-1].bias.fill_(float("nan"))
    algo.start_rl()
    batch = to_torch(algo.rl_sampler(store).sample(8), "cpu")
    with pytest.raises(NonFiniteError, match=r"distilled actor, update 1: non-finite: flow chunk$"):
        algo._actor_update(batch, torch.randn(8, algo.policy_net.feat_dim))


class HandCritic(torch.nn.Module):
    """Q(o, A) = -||A - 0.3||^2: the chunk nearest 0.3 everywhere is the best; Q^(j) of a prefix
    = -||a_1..a_j + 0.3||^2, so the best prefix lies elsewhere."""

    def q_chunk(self, feat: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        return -((chunk - 0.3) ** 2).sum((-2, -1))  # (B, h, A) -> (B,), (B, N, h, A) -> (B, N)

    def q_prefix(self, feat: torch.Tensor, chunk: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        kept = torch.arange(chunk.shape[-2]) < length[..., None]  # (B, [N,] h)
        return -(((chunk + 0.3) ** 2).sum(-1) * kept).sum(-1)


def test_best_of_n_executes_the_argmax_under_the_critic(tmp_path):
    store = hand_store(tmp_path)
    cfg = CORFTConfig(state_keys=("observation.state",), horizon=3, gripper=False, **TINY)
    net = CORFT.from_store(cfg, store).policy_net.eval()
    choose = BestOfN(net, torch.nn.ModuleList([HandCritic()]), 8, (0.5, 1.0))
    feat = torch.randn(4, net.feat_dim)
    with torch.no_grad():
        candidates = choose.propose(feat, torch.Generator().manual_seed(3))  # (4, 8, 3, 1)
        chosen = choose(feat, torch.Generator().manual_seed(3))
        torch.testing.assert_close(candidates[:, 0], net.sample(feat))  # the first is the mode (x_0 = 0)
    best = (-((candidates - 0.3) ** 2).sum((2, 3))).argmax(1)
    torch.testing.assert_close(chosen, candidates[torch.arange(4), best])
    assert candidate_scales(6, (0.5, 1.0)).tolist() == [0.0, 0.5, 1.0, 0.5, 1.0, 0.5]
    # Scoring the 2 actions executed per choice: the argmax of Q^(2) of each candidate's first two actions.
    choose = BestOfN(net, torch.nn.ModuleList([HandCritic()]), 8, (0.5, 1.0), score_steps=2)
    with torch.no_grad():
        chosen = choose(feat, torch.Generator().manual_seed(3))
    best = (-((candidates[:, :, :2] + 0.3) ** 2).sum((2, 3))).argmax(1)
    torch.testing.assert_close(chosen, candidates[torch.arange(4), best])
    assert BestOfN(net, torch.nn.ModuleList([HandCritic()]), 8, (0.5,), score_steps=3).score_steps is None
    with pytest.raises(ValueError, match=r"score_steps=4 must be in \[1, horizon=3\]"):
        BestOfN(net, torch.nn.ModuleList([HandCritic()]), 8, (0.5,), score_steps=4)


def test_prefer_mode_keeps_the_mode_unless_the_best_beats_it_by_the_margin():
    q = torch.tensor([[1.0, 1.5, 0.2], [1.0, 3.0, 2.5], [2.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    assert prefer_mode(q, 0.0).tolist() == [1, 1, 0, 1]  # the argmax (ties: the first)
    assert prefer_mode(q, 0.5).tolist() == [0, 1, 0, 1]  # 1.5 - 1.0 is not more than 0.5
    assert prefer_mode(q, 2.0).tolist() == [0, 0, 0, 0]


def test_best_of_n_mode_margin_acts_and_bootstraps_on_the_mode(tmp_path):
    """bon_mode_margin: a margin no proposal clears executes the flow's mode, and the target ranking
    chooses it too (with the value the target critics give it); a negative margin is refused."""
    store = hand_store(tmp_path)
    cfg = CORFTConfig(state_keys=("observation.state",), horizon=3, gripper=False, **TINY)
    net = CORFT.from_store(cfg, store).policy_net.eval()
    feat = torch.randn(4, net.feat_dim)
    critics = torch.nn.ModuleList([HandCritic()])
    with torch.no_grad():
        switching = BestOfN(net, critics, 8, (0.5, 1.0))(feat, torch.Generator().manual_seed(3))
        kept = BestOfN(net, critics, 8, (0.5, 1.0), mode_margin=1e6)(feat, torch.Generator().manual_seed(3))
        torch.testing.assert_close(kept, net.sample(feat))
    assert not torch.equal(switching, kept)
    with pytest.raises(ValueError, match=r"mode_margin=-1.0 must be >= 0"):
        BestOfN(net, critics, 8, (0.5,), mode_margin=-1.0)
    with pytest.raises(ValueError, match=r"bon_mode_margin=-0.1 must be >= 0"):
        CORFTConfig(state_keys=("observation.state",), bon_mode_margin=-0.1)

    store = chain_store(tmp_path / "chain")
    base = {"state_keys": ("observation.state",), "horizon": 2, "gripper": False, **TINY}
    for margin, left_mode in ((0.0, True), (1e6, False)):
        algo = CORFT.from_store(CORFTConfig(**base, bon_mode_margin=margin), store)
        algo.start_rl()
        sampler = algo.rl_sampler(store)
        for _ in range(20):
            algo.update(to_torch(sampler.sample(16), "cpu"))
        algo._best_of_n_targets(sampler.token, rank=True)
        assert bool((algo._choice != 0).any()) == left_mode
        table = algo._history_features(sampler.token)
        with torch.no_grad():
            chosen = algo._candidates[torch.arange(len(table)), algo._choice]
            value = torch.stack([c.q_chunk(table, chosen) for c in algo.target_critics]).min(0).values
        torch.testing.assert_close(algo._choice_value, value)


class CentredCritic(torch.nn.Module):
    """Q(o, A) = -||A - centre||^2."""

    def __init__(self, centre: float) -> None:
        super().__init__()
        self.centre = centre

    def q_chunk(self, feat: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        return -((chunk - self.centre) ** 2).sum((-2, -1))

    def q_prefix(self, feat: torch.Tensor, chunk: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        kept = torch.arange(chunk.shape[-2]) < length[..., None]  # (B, [N,] h)
        return -(((chunk - self.centre) ** 2).sum(-1) * kept).sum(-1)


@pytest.mark.parametrize("score_steps", [None, 2])
def test_best_of_n_ranks_by_the_critics_mean_or_their_minimum(tmp_path, score_steps):
    """Both aggregates, on the whole chunk's Q^(h) and on the executed prefix's Q^(2)."""
    store = hand_store(tmp_path)
    cfg = CORFTConfig(state_keys=("observation.state",), horizon=3, gripper=False, **TINY)
    net = CORFT.from_store(cfg, store).policy_net.eval()
    critics = torch.nn.ModuleList([CentredCritic(0.3), CentredCritic(-0.6)])
    feat = torch.randn(16, net.feat_dim)
    chosen = {}
    for aggregate in ("mean", "min"):
        choose = BestOfN(net, critics, 8, (0.5, 1.0), score_steps, aggregate)
        with torch.no_grad():
            candidates = choose.propose(feat, torch.Generator().manual_seed(3))
            chosen[aggregate] = choose(feat, torch.Generator().manual_seed(3))
        scored = candidates[:, :, :score_steps]  # the first score_steps actions (all of them for None)
        q = torch.stack([-((scored - c) ** 2).sum((2, 3)) for c in (0.3, -0.6)])
        best = (q.mean(0) if aggregate == "mean" else q.min(0).values).argmax(1)
        torch.testing.assert_close(chosen[aggregate], candidates[torch.arange(16), best])
    assert not torch.equal(chosen["mean"], chosen["min"])  # the two rules pick differently here
    with pytest.raises(ValueError, match=r"aggregate='max' must be 'mean' or 'min'"):
        BestOfN(net, critics, 8, (0.5,), aggregate="max")  # type: ignore[arg-type]


def test_rank_executed_scores_the_executed_prefix(tmp_path):
    """rank_executed: best-of-N acts on Q^(n_action_steps); whole chunks and temporal ensembling keep
    Q^(h); a checkpoint's policy scores (steps and critic aggregate) as the algorithm's does."""
    store = hand_store(tmp_path)
    keys = {"state_keys": ("observation.state",), "gripper": False}
    cfg = CORFTConfig(horizon=4, n_action_steps=2, rank_executed=True, **keys, **TINY)
    algo = CORFT.from_store(cfg, store)
    algo.start_rl()
    assert algo.policy().choose.score_steps == 2
    assert algo.policy(n_action_steps=3).choose.score_steps == 3
    assert algo.policy(n_action_steps=0).choose.score_steps is None
    assert algo.policy(ensemble_coef=0.01).choose.score_steps is None
    config, spec = dataclasses.asdict(cfg), dataclasses.asdict(algo.spec)
    path = save_checkpoint(
        tmp_path / "ckpt", method="co-rft", config=config, spec=spec, tensors=algo.state_dict()["model"],
        step=0, seed=0,
    )  # fmt: skip
    restored = CORFT.policy_from_checkpoint(load_checkpoint(path)).choose
    assert restored.score_steps == 2
    # Both build best-of-N with the config's critic aggregate (the default: the twins' minimum).
    assert algo.policy().choose.aggregate == restored.aggregate == "min"
    cfg.rank_executed = False
    assert algo.policy().choose.score_steps is None


def stage_two_metrics(store, cfg, n_updates: int) -> list[dict[str, float]]:
    algo = CORFT.from_store(cfg, store)
    algo.start_rl()
    sampler = algo.rl_sampler(store)
    torch.manual_seed(0)  # the CQL samples' stream
    return [algo.update(to_torch(sampler.sample(16), "cpu")) for _ in range(n_updates)]


def test_ranked_target_is_the_scored_target_held_until_the_next_ranking(tmp_path):
    """bon_ranked_target (the default) bootstraps from min_c Q_targ of each history's choice as ranked: at
    a ranking step that is the target scored afresh; between rankings it is held while the Polyak copies
    move."""
    store = chain_store(tmp_path)
    base = {"state_keys": ("observation.state",), "horizon": 2, "gripper": False, "bon_refresh": 3, **TINY}
    scored = stage_two_metrics(store, CORFTConfig(**base, bon_ranked_target=False), 2)
    ranked = stage_two_metrics(store, CORFTConfig(**base), 2)
    assert ranked[0]["target_mean"] == pytest.approx(scored[0]["target_mean"], rel=1e-6)
    assert ranked[0]["critic_td"] == pytest.approx(scored[0]["critic_td"], rel=1e-6)
    assert ranked[1]["target_mean"] != pytest.approx(scored[1]["target_mean"], rel=1e-6)

    algo = CORFT.from_store(CORFTConfig(**base), store)
    algo.start_rl()
    sampler = algo.rl_sampler(store)
    algo.update(to_torch(sampler.sample(16), "cpu"))
    table = algo._history_features(sampler.token)
    chosen = algo._candidates[torch.arange(len(table)), algo._choice]
    with torch.no_grad():
        value = torch.stack([c.q_chunk(table, chosen) for c in algo.target_critics]).min(0).values
    # ranked at step 0, before the first soft update moved the target critics by tau
    assert not torch.allclose(value, algo._choice_value)
    algo._best_of_n_targets(sampler.token, rank=True)
    with torch.no_grad():
        chosen = algo._candidates[torch.arange(len(table)), algo._choice]
        value = torch.stack([c.q_chunk(table, chosen) for c in algo.target_critics]).min(0).values
    torch.testing.assert_close(algo._choice_value, value)


def test_conservative_term_on_a_share_of_the_batch(tmp_path, monkeypatch):
    """cql_fraction=0.25 computes the Cal-QL term at the batch's first quarter of contexts:
    the same Q of the logged chunks there, and samples and Monte-Carlo floors for those rows only."""
    import robocl.algos.co_rft as co_rft

    store = chain_store(tmp_path)
    seen = []
    loss = co_rft.conservative_loss
    monkeypatch.setattr(co_rft, "conservative_loss", lambda *a, **k: seen.append(a) or loss(*a, **k))
    base = {"state_keys": ("observation.state",), "horizon": 2, "gripper": False, "cql_n_samples": 2, **TINY}
    stage_two_metrics(store, CORFTConfig(**base, cql_fraction=1.0), 1)
    stage_two_metrics(store, CORFTConfig(**base, cql_fraction=0.25), 1)
    (full_q, *_, full_mc), (q, uniform, policy, next_policy, mc) = seen
    assert full_q.shape == (2, 16) and q.shape == (2, 4) and mc.shape == (4,)
    assert uniform.shape == policy.shape == next_policy.shape == (2, 4, 2)
    torch.testing.assert_close(q, full_q[:, :4])
    torch.testing.assert_close(mc, full_mc[:4])


def test_conservative_term_on_the_executed_prefix(tmp_path, monkeypatch):
    """cql_executed: a second Cal-QL term on Q^(k) of the k = n_action_steps actions best-of-N acts on: the
    logged chunk's first min(k, h_eff) actions and the same conservative samples' first k, each critic's
    q_prefix; none for whole chunks (the policy then acts on Q^(h), which the first term covers)."""
    import robocl.algos.co_rft as co_rft
    from robocl.nets.critic import PrefixMLPCritic

    store = chain_store(tmp_path)
    seen, queries = [], []
    loss = co_rft.conservative_loss
    monkeypatch.setattr(co_rft, "conservative_loss", lambda *a, **k: seen.append(a) or loss(*a, **k))
    q_many = PrefixMLPCritic.q_many
    monkeypatch.setattr(PrefixMLPCritic, "q_many", lambda c, *q: queries.append(q) or q_many(c, *q))
    base = {"state_keys": ("observation.state",), "horizon": 4, "gripper": False, "cql_n_samples": 2, **TINY}
    cfg = CORFTConfig(**base, n_action_steps=2, cql_executed=True, cql_fraction=1.0)
    algo = CORFT.from_store(cfg, store)
    algo.start_rl()
    critics = copy.deepcopy(algo.critics)  # the weights the update's Qs come from
    torch.manual_seed(0)
    metrics = algo.update(to_torch(algo.rl_sampler(store).sample(16), "cpu"))
    (feat, data_chunk, length), (_, samples, _), *_ = queries[0]
    (_, *chunk_terms), (q_k, uniform_k, policy_k, next_policy_k, _) = seen
    executed = torch.minimum(torch.tensor(2), length[:, 0])  # short windows: their whole logged chunk
    assert (executed == 1).any() and (executed == 2).any()  # both cases occur in this batch
    rows, flat = feat.repeat_interleave(6, 0), samples.flatten(0, 1)  # 3 kinds x 2 samples per context
    with torch.no_grad():
        want_data = torch.stack([c.q_prefix(feat, data_chunk, executed) for c in critics])
        want = torch.stack([c.q_prefix(rows, flat, torch.full((96,), 2)) for c in critics]).view(2, 16, 6)
    torch.testing.assert_close(q_k, want_data)
    torch.testing.assert_close(torch.cat([uniform_k, policy_k, next_policy_k], -1), want)
    assert uniform_k.shape == chunk_terms[0].shape == (2, 16, 2)
    by_hand = loss(*seen[1], alpha=1.0, temperature=1.0).item()
    assert metrics["conservative_executed"] == pytest.approx(by_hand)
    seen.clear()
    stage_two_metrics(store, dataclasses.replace(cfg, n_action_steps=0), 1)  # whole chunks: Q^(h) only
    assert len(seen) == 1


def test_distill_actor_loss_by_hand():
    q = torch.tensor([-2.0, -4.0], requires_grad=True)
    actor = torch.tensor([[[0.5, 0.0]], [[0.0, 1.0]]], requires_grad=True)  # (2, 1, 2)
    flow = torch.tensor([[[0.0, 0.0]], [[0.0, 0.0]]])
    loss, distill = distill_actor_loss(q, actor, flow, alpha=10.0)
    # distill = mean of squares (0.25 + 1) / 4; the Q term is -mean(Q) / mean|Q| = 3 / 3.
    assert distill == pytest.approx(1.25 / 4) and loss.item() == pytest.approx(10 * 1.25 / 4 + 1.0)
    loss.backward()
    np.testing.assert_allclose(q.grad.numpy(), [-1 / 2 / 3] * 2)  # mean|Q| is not differentiated
    np.testing.assert_allclose(actor.grad.numpy(), 10 * 2 * (actor - flow).detach().numpy() / 4)


@pytest.mark.parametrize(
    "actor",
    [
        {"actor": "best_of_n", "n_candidates": 32, "candidate_noise": (0.5, 1.0)},  # QC's: the fast tail
        {"actor": "distill", "distill_alpha": 0.1},
        {"head": "regression", "alpha_bc": 2.5},  # TD3+BC at its usual alpha
    ],
    ids=["best-of-n", "distill", "td3-bc"],
)
def test_stage_two_lifts_a_policy_over_its_imitation_on_an_easy_task(tmp_path, actor):
    """The line task: imitation moves at a typical operator's pace, too slow from x < 1. Best-of-N's
    proposals at other noise include faster chunks, which the critic ranks higher; the distilled actor
    (held less tightly to the flow than the default alpha) and TD3+BC move towards them. No conservative
    term: on this 1-d task Cal-QL's push-down holds Q of the rare fast chunks down, and the actor at IL's
    pace. On the arm tasks TD3+BC without it collapsed to 0% (benchmarks/results/co_rft_*_ablation.json),
    hence the defaults."""
    store = line_store(tmp_path)
    cfg = CORFTConfig(
        state_keys=("observation.state",),
        horizon=5,
        n_obs=1,
        gripper=False,
        conservative="none",
        **{**TINY, "d_model": 32, "seed": 0, **actor},
    )
    il, rl = train_il_then_rl(cfg, store, tmp_path / "run", il_updates=400, rl_updates=600)
    assert il <= 0.2 and rl >= 0.8, (il, rl)


def test_validation_scores_the_critic_on_held_out_episodes(tmp_path):
    store = chain_store(tmp_path)
    add_scalar_episode(store, [[0.0]] * 30, [[-1.0]] * 30, [False] * 30, 0.0)  # stays put: cut at 30 steps
    cfg = CORFTConfig(  # the target re-ranked every 50 of the 150 updates (the default 200 would never)
        state_keys=("observation.state",), horizon=2, n_obs=1, gripper=False, bon_refresh=50, **TINY
    )
    algo = CORFT.from_store(cfg, store)
    train, val = algo.split(store)
    assert len(val.episode_indices) == 6 and not set(val.episode_indices) & set(train.episode_indices)
    algo.start_rl()
    sampler = algo.rl_sampler(train)
    for _ in range(150):
        algo.update(to_torch(sampler.sample(32), "cpu"))
    succeeded = store.episodes["success"]
    held_out = StoreView(store, val.episode_indices[succeeded[val.episode_indices]])
    metrics = algo.validate(algo.val_sampler(held_out))
    names = {"val_q_bias", "val_q_abs_err", "val_q_mc_corr", "val_q_spread", "val_q_policy_gap"}
    names |= {"val_bon_left_mode", "val_bon_gain"}  # best-of-N (the flow's default actor)
    assert set(metrics) == names | {"val_failed_episodes"} and metrics["val_failed_episodes"] == 0
    assert 0 <= metrics["val_bon_left_mode"] <= 1 and metrics["val_bon_gain"] >= 0
    # Q of the logged chunks tracks the Monte-Carlo returns of episodes the critic never trained on.
    assert metrics["val_q_mc_corr"] > 0.5 and metrics["val_q_abs_err"] < 3.0, metrics
    assert (
        algo.validate(algo.val_sampler(held_out)) == metrics
    )  # fixed noise: the same critic scores the same
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a GPU's loop autocasts; Q stays float32 (update)
        assert algo.validate(algo.val_sampler(held_out)) == metrics
    # A failed episode (V_MC = -1 / (1 - gamma) at every step) is scored apart: the calibration over the
    # successful ones is unchanged, and its own bias is reported.
    with_failure = StoreView(store, np.append(held_out.episode_indices, len(succeeded) - 1))
    mixed = algo.validate(algo.val_sampler(with_failure))
    assert mixed["val_failed_episodes"] == 1 and mixed["val_q_failed_bias"] > metrics["val_q_bias"]
    for name in ("val_q_bias", "val_q_abs_err", "val_q_mc_corr"):
        assert mixed[name] == pytest.approx(metrics[name], abs=1e-5), name


def test_execution_defaults_to_half_the_chunk():
    """Receding horizon by default (the benchmark's choice); 0 keeps the whole chunk (as older
    checkpoints' configs say), and temporal ensembling alone predicts every step."""
    assert CORFTConfig().n_action_steps == 5 and CORFTConfig(horizon=3).n_action_steps == 2
    assert CORFTConfig(n_action_steps=0).n_action_steps == 0
    assert CORFTConfig(ensemble_coef=0.01).n_action_steps == 1


def test_new_config_errors_name_the_values():
    with pytest.raises(ValueError, match=r"actor='td3_bc' does not fit head='flow'"):
        CORFTConfig(actor="td3_bc")
    with pytest.raises(ValueError, match="needs rl_train_backbone=False"):
        CORFTConfig(actor="best_of_n", rl_train_backbone=True)
    with pytest.raises(ValueError, match=r"n_action_steps=5 must be 0 or 1"):
        CORFTConfig(ensemble_coef=0.01, n_action_steps=5)
    assert CORFTConfig(head="regression").actor == "td3_bc" and CORFTConfig().actor == "best_of_n"
    with pytest.raises(ValueError, match=r"cql_fraction=0 must be in \(0, 1\]"):
        CORFTConfig(cql_fraction=0)
    with pytest.raises(ValueError, match=r"prefix_samples=0 must be >= 1"):
        CORFTConfig(prefix_samples=0)
    with pytest.raises(ValueError, match=r"il_lr_schedule='linear' must be one of"):
        CORFTConfig(il_lr_schedule="linear")
    with pytest.raises(ValueError, match=r"il_warmup=-1 must be >= 0 and il_schedule_updates=None >= 1"):
        CORFTConfig(il_warmup=-1)


def test_relative_positions_come_from_store_names(tmp_path):
    feats = {
        "observation.state": Feature("state", "float32", (2,), names=("tcp.x", "tcp.y")),
        "observation.object": Feature("state", "float32", (2,), names=("object.x", "object.y")),
        "action": Feature("action", "float32", (1,)),
        "success": Feature("flag", "bool", ()),
    }
    store = TrajectoryStore.create(tmp_path / "named.zarr", feats, fps=10)
    rng = np.random.default_rng(0)
    for _ in range(3):
        store.add_episode(
            {
                "observation.state": rng.normal(size=(5, 2)),
                "observation.object": rng.normal(size=(5, 2)) + 3,
                "action": rng.uniform(-1, 1, (5, 1)),
                "success": np.arange(5) == 4,
            },
            success=True,
            terminated=True,
        )
    cfg = CORFTConfig(horizon=2, gripper=False, n_obs=2, absolute_positions=True, **TINY)
    net = CORFT.from_store(cfg, store).policy_net
    assert net.relative.names == ["object-tcp.x", "object-tcp.y"]
    diff = store.steps("observation.object") - store.steps("observation.state")
    mean = torch.as_tensor(diff.mean(0), dtype=torch.float32)
    torch.testing.assert_close(net.normalizer.relative_shift, mean)
    assert net.feat_dim == 2 * 8  # n_obs x (2 + 2 state dims, 2 differences standardised, 2 log-scaled)
    obs = {k: torch.as_tensor(store.steps(k)[:2][None]) for k in ("observation.state", "observation.object")}
    feat = net.features(obs, None).view(2, 8)  # (n_obs, dims) of one history
    d = torch.as_tensor(diff[:2], dtype=torch.float32)
    torch.testing.assert_close(feat[:, 4:6], (d - mean) / net.normalizer.relative_scale)
    torch.testing.assert_close(feat[:, 6:], torch.asinh(d / 0.01) / float(np.arcsinh(10.0)))
    linear = CORFT.from_store(
        CORFTConfig(
            horizon=2, gripper=False, n_obs=2, relative_resolution=0.0, absolute_positions=True, **TINY
        ),
        store,
    )
    assert linear.policy_net.feat_dim == 2 * 6
    off = CORFT.from_store(
        CORFTConfig(
            horizon=2, gripper=False, n_obs=2, relative_positions=False, absolute_positions=True, **TINY
        ),
        store,
    )
    assert off.policy_net.relative is None and off.policy_net.feat_dim == 2 * 4
    # A checkpoint saved before relative_resolution existed records no resolution: standardised only.
    algo = CORFT.from_store(cfg, store)
    old_spec = copy.deepcopy(algo.spec)
    del old_spec.extra["relative_resolution"]
    assert VLAPolicyNet(algo.config, old_spec).feat_dim == 2 * 6
    # absolute_positions=False: the object's own position leaves the input, its offset from the tool stays.
    relative_only = CORFT.from_store(
        CORFTConfig(horizon=2, gripper=False, n_obs=2, absolute_positions=False, **TINY), store
    )
    net = relative_only.policy_net
    assert relative_only.spec.extra["dropped_state_columns"] == [2, 3] and net.feat_dim == 2 * 6
    moved = {**obs, "observation.object": obs["observation.object"] + 0.5}
    moved["observation.state"] = obs["observation.state"] + 0.5  # the scene shifted, tool and object alike
    assert not torch.equal(algo.policy_net.features(moved, None), algo.policy_net.features(obs, None))
    feat, feat_moved = net.features(obs, None).view(2, 6), net.features(moved, None).view(2, 6)
    torch.testing.assert_close(feat[:, 2:], feat_moved[:, 2:])  # only the tool's own columns changed


def test_flow_policy_samples_are_seeded(tmp_path):
    store = hand_store(tmp_path)
    cfg = CORFTConfig(
        state_keys=("observation.state",), horizon=3, gripper=False, n_obs=2, flow_noise=1.0, **TINY
    )
    algo = CORFT.from_store(cfg, store)
    obs = {"observation.state": np.array([[1.0], [2.0]], np.float32)}

    def chunk(policy):
        policy.reset()
        return policy.predict_chunk({"observation.state": np.repeat(obs["observation.state"][:, None], 2, 1)})

    a, b = algo.policy(), algo.policy()
    np.testing.assert_array_equal(chunk(a), chunk(b))  # the same seed: the same noise
    assert not np.array_equal(chunk(a), chunk(a))  # the stream moves on
    assert not np.array_equal(chunk(algo.policy(flow_noise=0.0)), chunk(b))
    np.testing.assert_array_equal(chunk(algo.policy(flow_noise=0.0)), chunk(algo.policy(flow_noise=0.0)))
