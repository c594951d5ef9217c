"""CO-RFT's configuration, apart from its model (LeRobot's configuration / modeling split): every field with
its meaning, unit and the source of its default (refs co-rft.md, flow-policies.md; pilots are cited where the
default is robocl's measurement)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from robocl.nets.language import DEFAULT_LANGUAGE_MODEL

# Stage-1 updates per demonstration episode, the default of `robocl train co-rft` and `make demo`: 30,000 at
# 60 demos, 15,000 at 30. At 60 mixed demos (batch 128, 3 seeds, 50 episodes each at seen / unseen
# positions; benchmarks/results/co_rft_<task>_il3k.json and _il30k.json, 8fbe94e, an AMD EPYC CPU) 3,000
# updates reached 43% / 21% on pick-and-place and 56% / 55% on push, 30,000 85% / 59% and 86% / 64%
# (pilots: 10,000 gave 69% / 45% on pick-and-place; a cosine schedule or a weight EMA added nothing at
# 10k-30k). The head keeps learning the fine offsets of grasping and contact long after the loss flattens
# (diffusion_policy trains thousands of epochs on datasets this size). Fewer demos over-fit sooner: at 30
# (co_rft_<task>_d30_il<N>_pilot.json, 4567e33's defaults, seeds 0-2) 5,000 / 15,000 / 30,000 updates
# gave 86% / 72%, 89% / 66% and 86% / 49% on pick-and-place and 32% / 37%, 33% / 36% and 38% / 35% on
# push: 15,000 = 500 per episode is at or above 30,000 summed over both tasks (224 against 208 points) and
# keeps the 60-demo budget. Per episode rather than per step (epochs): the measured budgets differ in
# demonstrations, not in their lengths (push episodes are ~1.7x pick-and-place's at the same 30,000).
IL_UPDATES_PER_EPISODE = 500
# Stage-2 updates (the same users' default), from the critic's validation curve: the correlation of Q^(h)
# with the Monte-Carlo returns of the held-out successful demos, every 250 updates behind the 30,000-update
# flow (co_rft_<task>_exec5.json, 8f9070e, 60 demos, seeds 0-2, best-of-8). Its mean over the six runs
# rises 0.56 / 0.76 / 0.84 / 0.87 at 250-1,000 updates, peaks at 0.89 at 1,250-1,500 and eases to 0.86 at
# 2,000, where the bias is within 2.6 steps on every run. Success (seen / unseen, 5 of 10 executed) is
# the same at 1,000 (co_rft_<task>_logrel.json: pick-and-place 91% / 68%, push 90% / 69%) and 2,000
# updates (91% / 65%, 91% / 71%); 2,000 is the length the benchmark measured at these defaults.
RL_UPDATES = 2_000


def il_updates_for(n_episodes: int) -> int:
    """The default stage-1 budget for ``n_episodes`` demonstrations (IL_UPDATES_PER_EPISODE each)."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes={n_episodes}: no demonstrations to imitate")
    return IL_UPDATES_PER_EPISODE * n_episodes


@dataclass
class CORFTConfig:
    """CO-RFT: imitation, then chunked offline RL (Cal-QL critic; best-of-N, distilled or TD3+BC actor)."""

    # ---- the policy network
    # Low-dimensional store features; None = every state feature of the store (observation.state first).
    state_keys: tuple[str, ...] | None = None
    image_keys: tuple[str, ...] = ()  # camera features (uint8 HxWx3); empty = the state-only policy
    # Frozen sentence encoder for the instruction (name or folder); None = off. A store with one instruction
    # gets none: a constant input tells the policy nothing.
    language_model: str | None = DEFAULT_LANGUAGE_MODEL
    # Add the differences between the positions the state features name (object - tool, ...; see
    # robocl.nets.relative); stores without position names get none.
    relative_positions: bool = True
    # The relative positions once more on a log scale, linear within this many metres (asinh(d / r), see
    # robocl.nets.relative.log_scaled; DreamerV3's symlog inputs); 0 = standardised only. Failed grasps miss
    # by 2-4 cm, a change of 0.1-0.3 in the standardised input. Pilots on the benchmark's 60 demos (AMD
    # EPYC, seeds 0-2, 50 episodes per position set): at 3,000 updates pick-and-place IL went from 43% / 21%
    # (seen / unseen) to 87% / 63%; the log scale alone, without the standardised copy, 78% / 51% (and on
    # push 28% / 28% against 48% / 40% at seed 0). At 30,000 updates (co_rft_<task>_logrel.json, 52931d1,
    # seeds 0-2) pick-and-place IL went from 85% / 59% to 89% / 55% (85% / 62% -> 90% / 71% executing 5 of
    # 10), push from 86% / 64% to 85% / 63%, and the distilled actor from 13% / 2% to 70% / 38% on
    # pick-and-place.
    relative_resolution: float = 0.01
    # Keep the absolute positions of the scene's entities (object, plate, goal: every entity but the tool)
    # in the input beside their relative positions; False leaves them out (the tool's own position stays),
    # so the policy cannot tie an action to where in the workspace an object lies, only to where it lies
    # from the tool. Needs relative_positions (otherwise nothing is left out). IL pilots on the benchmark's
    # 60 demos (co_rft_<task>_{nobs1,nobs1_noabs,noabs}.json in benchmarks/results: cb47b25, and f80378e's
    # code for the last two, whose JSONs name 5361213, a snapshot of it; seeds 0-2, 30,000 updates, seen /
    # unseen, 5 of 10 executed, whole chunk in brackets):
    # with n_obs=1, push 68% / 55% (85% / 60%) -> 64% / 73% (83% / 75%), pick-and-place 91% / 76% (95% /
    # 67%) -> 92% / 73% (90% / 66%); with n_obs=2, push 70% / 63% -> 77% / 68%, pick-and-place 90% / 71%
    # -> 93% / 64%. Unseen push positions gain 10-20 points either way.
    absolute_positions: bool = False
    # Observation history length (RoboVLMs uses 8-16, diffusion_policy 2). IL pilots as for
    # absolute_positions (without the scene's absolute positions): 1 frame against 2 gave pick-and-place 92%
    # / 73% against 93% / 64% (whole chunk 90% / 66% against 93% / 56%) and push 64% / 73% against 77% /
    # 68% (83% / 75% against 89% / 75%): unseen positions favour one frame, the plain-MLP
    # reference reads one too, and it halves the state input.
    n_obs: int = 1
    horizon: int = 10  # actions per chunk h (RoboVLMs' fwd_pred_next_n)
    d_model: int = 128  # width of the trunk and critic transformers
    n_layers: int = 2  # transformer layers in the trunk and in each critic
    n_heads: int = 4  # attention heads
    vision_channels: tuple[int, ...] = (32, 64, 128, 128)  # conv widths per camera encoder (stride 2 each)
    aug_shift: int = 4  # random-shift augmentation of frames during training, pixels
    # Store state features the policy does not read (an object's pose, a target's position: what a simulator
    # records and a camera shows) whose positions the trunk learns to predict in stage 1: a linear readout
    # of its output regresses the standardised position columns (named <entity>.x/.y/.z; every column of a
    # feature without such names) at the last observed frame, squared error on targets clipped to 5 std,
    # ``aux_weight`` x that loss added to the imitation loss. Acting reads the cameras only. Levine et al.
    # 2016 (end-to-end visuomotor policies) pretrained their conv layers to regress the object's pose the
    # same way. Why: trained on imitation alone, the image trunk learned less about where the object lies
    # than its untrained features held. Pilots on the image benchmark's 60 pick-and-place demos (seed 0,
    # 5,000 updates of the 15,000-update cosine, 50 episodes per position set; benchmarks/co_rft_log.md):
    # front camera only with a 12 px shift, 13/50 seen and 0/50 unseen with observation.object predicted
    # (9/50 and 2/50 with the pilot's own readout) against 2/50 and 0/50 without; both cameras 6/50 and
    # 0/50 (12 px), 3/50 and 0/50 (4 px), against 2/50 and 1/50 without (4 px). Off by default: real-robot
    # stores record no object state, and no setting here is near the state policy. On its own rollouts
    # the readout is off by 1-15 cm where on the demos it is within 0.7: 60 scenes are too few for the
    # encoder to localise in new ones.
    aux_state_keys: tuple[str, ...] = ()  # privileged state features the trunk learns to predict (stage 1)
    aux_weight: float = 1.0  # weight of that auxiliary loss against the imitation loss
    # The entity (as the auxiliary state names it: "object" for object.x/y/z) the encoder of the first
    # calibrated camera among image_keys locates (robocl.nets.vision: a local detector, soft-argmax),
    # trained on the entity's projected pixel; the head reads its position lifted to the table (at the
    # entity's median height at the episodes' first steps) minus the tool's, as the state policy reads
    # object - tool. Why: the trunk's readout does not carry over to unseen positions (4-5 cm off at the
    # first frame), the detector does (0.3-0.5 cm). Pilots on the image benchmark's 200 pick-and-place
    # demos (front camera, aux_state_keys=("observation.object",), 5,000 of 15,000 updates, seeds 0-2,
    # benchmarks/co_rft_log.md): 31, 31, 40 of 50 seen and 13, 3, 10 of 50 unseen, against 25 and 29 seen,
    # 6 and 2 unseen without (seeds 0, 1). Off by default: it needs a calibrated camera and the entity's
    # position in training. Several entities (("object", "plate")) get a detector channel each.
    detect_entity: tuple[str, ...] | None = None  # the entities the camera's detector locates; None: off
    detector_weight: float = 0.1  # weight of the detector's smooth-L1 pixel loss (pixels) against imitation
    # Every detector channel conditioned on the instruction (robocl.nets.vision; a store with one instruction
    # gives it none to read), to tell the entity the words name from look-alikes: pick-place's target plate
    # from the distractor, which the trunk's readout put on the wrong side in 4-5% of windows. Measured on
    # the image benchmark (seed 1, 5,000 updates, benchmarks/co_rft_log.md): detecting the object and the
    # plate this way located the plate to 0.3 cm (the readout: 3.2-4.5 cm in y) and scored 34 / 29 of 50
    # (seen / unseen) against the object-only detector's 38 / 26, so it is off by default.
    detector_instructed: bool = False
    # What of the cameras the action head (and the critic) reads: "trunk" = the trunk's fused feature (pi0's
    # action expert reading the VLM's), "positions" = only the positions the camera estimates, detached (the
    # detected entity from the detector, every other aux_state_keys position from the trunk's readout), as
    # the state policy reads positions: every pair's difference with the tool's and each other's, in 10 cm
    # and log-scaled (relative_resolution). The instruction still picks what the readout reads (the target
    # plate). Why: with the detector the image policy located the object at unseen positions to 1 cm yet
    # lifted it in 5 of 50 episodes; without the trunk's feature the same head lifted it in 24 (and, blind
    # to the plate, placed 3), and a trunk trained by its readout alone still broke reaching: its feature
    # moves with the object and extrapolates, three numbers per entity do not. The image benchmark (200
    # pick-and-place demos, front camera, 15,000 updates, seeds 0-1, 100 episodes per position set;
    # benchmarks/co_rft_log.md): 87% seen and 64% unseen reading the positions, against 81% and 31% reading
    # the trunk with the detector, 75% and 8% without it. None (the default) = "positions" with a detector
    # (detect_entity) and the robot state at the head, "trunk" otherwise: without a detector the positions
    # would come from the trunk's readout, 4-5 cm off at unseen first frames, not measured as the head's
    # input.
    head_input: Literal["trunk", "positions"] | None = None
    dropout: float = 0.1  # trunk transformer dropout in stage 1 (ACT's 0.1: a few dozen demos overfit fast)
    head: Literal["flow", "regression"] = "flow"  # flow-matching action expert, or chunk regression
    head_hidden: tuple[int, ...] = (256, 256, 256)  # MLP widths of the action head (and the one-step actor)
    flow_steps: int = 10  # Euler steps K from noise to chunk (FQL, QC, pi0, SmolVLA: 10)
    # Where the low-dim history goes: "head" = straight to the action head and the critic (pi0's robot state;
    # the trunk fuses cameras and instruction), "trunk" = a token of the trunk, "both".
    state_path: Literal["head", "trunk", "both"] = "head"
    gripper: bool = True  # the last action channel is a gripper (flow: snapped at execution; regression: BCE)
    # ---- execution
    # Actions executed per predicted chunk before the next prediction (receding horizon); None = half the
    # chunk, rounded up (diffusion_policy executes 8 of 16), 0 = the whole chunk, open loop. On the
    # benchmark's 60 demos (co_rft_<task>_logrel.json, 52931d1, seeds 0-2, seen / unseen) 5 of 10 lifted
    # every stage-2 policy on both tasks (best-of-8: pick-and-place 79% / 51% -> 91% / 68%, push 87% / 63%
    # -> 90% / 69%) and cut its cycle time (4.00 -> 3.83 s on pick-and-place); flow IL rose on
    # pick-and-place (89% / 55% -> 90% / 71%) and fell at seen push positions (85% / 63% -> 70% / 63%).
    # Executing 1 or 2 of 10 fell to 24% / 10% and 46% / 18% (IL pilots, pick-and-place, 3k updates).
    n_action_steps: int | None = None
    ensemble_coef: float = 0.0  # temporal ensembling weight m (ACT: 0.01), a chunk every step; 0 = off
    # Noise scale sigma of x_0 ~ N(0, sigma^2 I) when acting (the flow IL policy; the distilled actor's z);
    # 0 = deterministic, the flow's mode; the policy is seeded, so runs repeat either way. IL pilots on the
    # benchmark's 60 demos (co_rft_<task>_sigma*_pilot.json: 193a6c7, seeds 0-2, 30,000 updates, seen /
    # unseen, 5 of 10 executed): sigma 0 gave pick-and-place 92% / 73% and push 64% / 73%, 0.25 95% / 75%
    # and 79% / 73%, 0.5 89% / 72% and 88% / 71%. At 0 the push policy is slower (8.5 s per success
    # against 8.1 s at 0.25) and fails more. Behind the cosine-lr imitation (il_lr_schedule; 5 seeds, 250
    # episodes per cell, co_rft_push_acting_min_pilot.json and co_rft_pick_place_min_n32_sigma_pilot.json,
    # f7efa6d) 0.5 scored pick-place 241 / 208 and push 224 / 206 successes (seen / unseen) against 0.25's
    # 248 / 214 and 190 / 177: 879 against 829 summed, the only setting here that meets both tasks' IL
    # floors (>= 95% / 80% and >= 85% / 65%). The sharper cosine fit creeps on push from near the mode.
    # At 30 demos (co_rft_<task>_d30_min_n32.json, cc22b00) 0.5 scored 230 / 176 and 110 / 94 against
    # 0.25's 235 / 186 and 58 / 84.
    flow_noise: float = 0.5
    # ---- stage 1: imitation
    gripper_weight: float = 0.01  # regression: BCE weight against the arm Huber loss (RoboVLMs)
    huber_delta: float = 1.0  # regression: Huber threshold on normalised arm actions (torch's default)
    il_lr: float = 3e-4  # stage-1 AdamW lr, also the trunk's in stage 2 (RoboVLMs' 2e-5 is for a VLM)
    # Stage-1 lr schedule: "cosine" warms up linearly over ``il_warmup`` updates, then decays to 0 at
    # ``il_schedule_updates`` (robocl.algos.co_rft.cosine_warmup; diffusion_policy's and LeRobot's diffusion
    # default, with their 500 warm-up steps); "constant" keeps il_lr. IL pilots on the benchmark's 60 demos
    # (co_rft_<task>_il_cosine_pilot.json: 714d03f + this schedule, seeds 0-2, 30,000 updates, successes of
    # 150 seen / unseen, 5 of 10 executed): pick-and-place 148 / 132 against 146 / 111 at a constant lr,
    # push 113 / 108 against 109 / 107 (whole chunks 116 / 121 against 138 / 112). Over 5 seeds
    # (co_rft_<task>_cosine.json, 250 episodes per cell) IL scored 248 / 214 and 190 / 177 against 244 / 174
    # and 199 / 186 (829 against 803 summed), CO-RFT on it 243 / 217 and 221 / 209 against 244 / 195 and 238
    # / 217 (890 against 894). An earlier pilot on the then-defaults found nothing at 10k-30k updates
    # (IL_UPDATES_PER_EPISODE).
    il_lr_schedule: Literal["cosine", "constant"] = "cosine"  # stage 1: warm-up, cosine to 0; or constant lr
    il_warmup: int = 500  # linear warm-up updates of the cosine schedule (diffusion_policy: 500)
    # The stage-1 budget the cosine decays over: robocl train, make demo and the benchmark set it to the
    # imitation loop's n_updates; None keeps the lr constant (a learner updated by hand, without a budget).
    il_schedule_updates: int | None = None  # cosine horizon (robocl train: the IL budget); None: constant lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay (RoboVLMs: 0)
    max_grad_norm: float = 1.0  # stage-1 gradient clipping (RoboVLMs: 1.0)
    # ---- stage 2: chunked offline RL
    # How the policy improves through the critic; None = best_of_n for a flow head, td3_bc for regression.
    # Best-of-N keeps what imitation learned: its first proposal is the flow's mode, so the critic can only
    # swap it for a sample it ranks higher. The distilled one-step actor (FQL) has to relearn the flow from
    # scratch in stage 2: behind a 3,000-update flow it was within noise of best-of-8 (co_rft_<task>.json,
    # 0e31477, 5 seeds), but behind the 30,000-update flow (co_rft_<task>_il30k.json, 8fbe94e, 60 demos, 3
    # seeds) 1,000 updates left it at 13% / 2% (seen / unseen) on pick-and-place, where best-of-8 kept 79% /
    # 57% against IL's 85% / 59%; on push it led (93% / 87% against best-of-8's 87% / 65%). Summed: 195
    # against 288 points. At today's defaults (co_rft_<task>_s59.json, 15d9a20, 5 seeds, 250 episodes per
    # cell) it scored pick-place 226 / 206 and push 231 / 235 against best-of-32's 243 / 222 and 218 / 225
    # (IL 241 / 204, 225 / 213): again the stronger on push only, at 3.3x best-of-N's update.
    actor: Literal["best_of_n", "distill", "td3_bc"] | None = None
    # Best-of-N proposals per decision: the first from x_0 = 0 (the flow's mode), the others from noise of the
    # ``candidate_noise`` scales in turn. QC draws 32 at full noise; on 60 mixed demos (seed-0 pilots, 1k
    # updates) that lifted push from 20/28% (seen/unseen) to 58/68% but cut pick-place from 90/62% to
    # 50/30%: the critic's errors grow away from the mode, and the argmax of 32 finds them. 8 proposals at
    # 0.25/0.5 gave 50/70% and 80/52%; 32 at 0.25/0.5 40/62% and 74/54%; 32 at 0.1/0.25 30/42% and 86/60%.
    # At 4b17f6e's defaults (60 demos, 5 seeds, 250 episodes per cell, co_rft_<task>_candidates_pilot.json)
    # 32 proposals were faster and summed more successes (pick-place 97% / 75%, 3.71 s; push 95% / 88%,
    # 5.94 s) than 8 (98% / 74%, 3.79 s; 91% / 85%, 6.58 s), but fell one success below IL's 244 of 250 at
    # pick-place's seen positions, and re-ranking 4x the proposals every 50 updates raised the mean update
    # 16-36%. Re-ranking them every 200 (bon_refresh, below) costs what 8 every 50 did. With best-of-N
    # scoring the executed actions (rank_executed), 64 proposals (co_rft_<task>_n64_pilot.json, fbd8ebd, same
    # benchmark) scored pick-place 98% / 78% (3.37 s per success) and push 95% / 87% (5.12 s) against 32's
    # 99% / 77% (3.52 s) and 93% / 88% (5.50 s) (co_rft_<task>_steps_pilot.json): at or above IL (98% / 70%,
    # 4.05 s; 80% / 74%, 7.53 s) at all four cells and 17% faster than IL on pick-place, at 2x the ranking
    # and inference cost (mean update +10%; 5.8-12.6 ms per chunk, floor 50). Behind the cosine-lr imitation
    # (co_rft_<task>_cosine_safe_pilot.json, e7d28b9) 16 proposals scored 247 / 218 and 223 / 214 (3.47 s,
    # 5.58 s) against 64's 243 / 217 and 221 / 209 (3.27 s, 4.98 s), and 64 at noise 0.1 / 0.25 249 / 226
    # and 199 / 181 (3.58 s, 6.30 s): closer to the flow's mode is slower, IL scoring 248 / 214 and 190 / 177.
    # Ranked by the critics' minimum (bon_acting_q), 32 proposals (co_rft_pick_place_min_n32_sigma_pilot.json,
    # co_rft_push_min_n32_pilot.json, f7efa6d) scored 247 / 230 (3.36 s) and 221 / 217 (5.35 s) against
    # 64's 244 / 226 (3.29 s) and 220 / 209 (5.02 s): 915 successes summed against 899, at 4.5-5.0 ms per
    # chunk instead of 6.0-6.9; 16 (co_rft_<task>_min_n16_pilot.json, cc22b00) 246 / 221 (3.46 s) and 222 /
    # 213 (5.87 s), 902 summed.
    n_candidates: int = 32
    candidate_noise: tuple[float, ...] = (0.25, 0.5)
    # best-of-N: updates between re-ranking every history's candidates (the target). With 32 proposals, 200
    # (co_rft_<task>_refresh_pilot.json, 419dd85, same benchmark) scored pick-place 98% / 76% (3.71 s) and
    # push 93% / 86% (5.65 s) against 8 proposals every 50 at 98% / 74% (3.79 s) and 91% / 85% (6.58 s), IL
    # 98% / 70% and 80% / 74%: at or above IL at all four cells, at the same mean update (9.7-10.0 ms). 8
    # every 200 scored 98% / 76% and 93% / 82%. The slower refresh leaves push's critic validating a little
    # worse (val_q_spread 0.31 against 0.44, mean |Q - MC| 6.8 against 5.8 steps).
    bon_refresh: int = 200
    # Best-of-N when acting: score the proposals by Q^(k) of the k actions executed before the next choice
    # (n_action_steps; Q^(k) = r_1..k + gamma^k V(o_{t+k}), the critic's value of executing k and choosing
    # again, the policy-improvement step of receding-horizon execution) instead of Q^(h) of the whole chunk
    # (QC, which executes whole chunks). The training target ranks by Q^(h) either way. On the benchmark's
    # 60 demos (co_rft_<task>_rank_pilot.json, 13a8a2b, 5 seeds, 250 episodes per cell) scoring the 5
    # executed actions lifted pick-place from 98% / 76% (seen / unseen; 3.71 s per success) to 98% / 77%
    # (3.50 s) and push from 93% / 86% (5.65 s) to 95% / 86% (5.37 s); IL: 98% / 70% (4.05 s), 80% / 74%
    # (7.53 s). Proposals from wider noise (0.5 / 1.0) were faster still and lost 10-14 points.
    rank_executed: bool = True
    # Best-of-N when acting: rank the proposals by the critics' mean (QC's q_agg) or by their minimum (the
    # pessimistic value the TD target bootstraps from): an argmax over many finds the proposals one critic
    # over-values, and the minimum ranks down those the twins disagree on. On the benchmark's 60 demos
    # (co_rft_<task>_acting_min_pilot.json, f7efa6d, 5 seeds, 250 episodes per cell; the same critics)
    # the minimum scored pick-place 244 / 226 (seen / unseen; 3.29 s per success) and push 220 / 209
    # (5.02 s) against the mean's 243 / 217 (3.27 s) and 221 / 209 (4.98 s).
    bon_acting_q: Literal["mean", "min"] = "min"
    # Best-of-N, acting and target alike: keep the flow's mode (the x_0 = 0 proposal) unless the best
    # proposal's value beats it by more than this; with reward -1 per step that is roughly the control
    # steps the switch is predicted to save. 0 is QC's plain argmax. A guard against a critic that ranks
    # proposals from estimated inputs: where the head reads the positions a camera estimates, it may rank a
    # noisy proposal over the mode by a small, spurious margin. None (the default) = 1.5 where the head
    # reads estimated positions (head_input="positions": a detector on the cameras), 0 (QC) otherwise. The
    # benchmark (250 episodes per cell at 5 seeds, 100 at 2; seen / unseen successes):
    # - state, 60 demos (co_rft_<task>_margin_pilot.json, f8ffc9f): 1.5 left pick-place at 244 / 235 (the
    #   argmax 247 / 231) and cost push 64 seen (165 / 166; the argmax 229 / 208, IL 227 / 203);
    # - image pick-place, imitation seeds 0-4 (co_rft_pick_place_images_stage2_s{1,3,4}.json and the
    #   seed-0 and seed-2 margin JSONs): 1.5 228 / 181, the argmax 214 / 166, IL 222 / 169;
    # - image push, seeds 0-1 (co_rft_push_images_stage2_s{0,1}.json, ae09ce0): 1.5 88 / 72, the argmax
    #   89 / 71, IL 90 / 68.
    # So the margin follows how exactly the policy knows where things are, not the task.
    bon_mode_margin: float | None = None
    # Best-of-N: bootstrap from the value the latest ranking gave each history's chosen chunk, min_c Q_targ,
    # held until the next ranking (DQN's hard target period, here bon_refresh updates, on top of the Polyak
    # copies), instead of scoring the chosen chunks of the B x h bootstrap prefixes under the target critics
    # at every update (False). With cql_fraction 0.25 (below) on the benchmark's 60 demos (5 seeds, 250
    # episodes per cell, co_rft_<task>_stage2_estimators_pilot.json, cd28a0b, MuJoCo 4.0.1) best-of-8 scored
    # pick-place 98% / 74% (seen / unseen) and push 93% / 83% against 98% / 75% and 94% / 84% for both off
    # (IL 98% / 70% and 80% / 74%), at 0.38 instead of 0.74 GFLOP and 16 instead of 28-31 ms per update.
    # Ignored by the other actors.
    bon_ranked_target: bool = True  # best-of-N: bootstrap from the values of its latest ranking
    distill_alpha: float = 10.0  # distill: weight of ||mu(o, z) - flow(o, z)||^2 (FQL: 10)
    val_fraction: float = 0.1  # episodes held out of stage 2 to validate the critic (0 = none)
    # Stage-2 clipping, against spikes only: TD3/Cal-QL do not clip, and clipping the critic at 1.0 left its
    # TD error growing (critic gradient norms are 10-200 while it fits -1/step returns).
    rl_max_grad_norm: float = 100.0
    gamma: float = 0.99  # per-step discount (QC, Cal-QL, TD3+BC)
    reward: Literal["step_penalty", "sparse", "store"] = "step_penalty"  # -1/step until success | +1 | stored
    critic_loss: Literal["prefix", "full"] = "prefix"  # TD target for every prefix j, or only the whole chunk
    # "prefix": shorter prefixes trained per window besides the whole chunk, drawn without replacement and
    # weighted so the loss estimates the every-prefix loss without bias (chunk_losses.td_prefixes; the
    # estimator cql_fraction also uses: a random part of a mean); None = all h - 1 of them, as is any
    # k >= h - 1 (so `--prefix-samples 9` on the command line). On the benchmark's 60 demos (5 seeds, 250
    # episodes per cell, co_rft_<task>_prefix_samples_pilot.json, 03e014c, MuJoCo 4.0.1) 3 scored
    # pick-place 98% / 74% (seen / unseen) and push 91% / 85% against 98% / 77% and 92% / 82% with all 9
    # (IL 98% / 70%, 80% / 74%), at 8.6-8.8 instead of 12.5-13.2 ms per update (median; IL 3.4-3.6); 1
    # scored 96% / 78% and 90% / 83% at 7.1-7.5 ms, below IL at one cell (241 against 244 successes of 250,
    # pick-place seen). Behind today's imitation and best-of-32 by the critics' minimum (5 seeds, 250 episodes
    # per cell, co_rft_<task>_p2_c4_pilot.json, 47629cf) 2 scored pick-place 245 / 230 (3.34 s per success)
    # and push 232 / 215 (5.27 s) against 3's 247 / 230 (3.36 s) and 221 / 217 (5.35 s), IL 241 / 208 and
    # 224 / 206: at or above IL at all four cells, at 0.15-0.18 instead of 0.18-0.21 GFLOP per update. At
    # five other seeds (co_rft_<task>_s59.json, 15d9a20) 2 scored 243 / 222 and 218 / 225, IL 241 / 204
    # and 225 / 213: below IL at seen push positions there. At 30 demos (co_rft_<task>_d30_p2.json,
    # b7e8669) 227 / 191 and 166 / 136 against 3's 231 / 187 and 160 / 147 (IL 230 / 176, 110 / 94).
    # 1 (co_rft_<task>_p1_pilot.json, b7e8669, seeds 0-4) scored 248 / 218 and 227 / 207 at 2.04-2.07x an
    # IL update (2 prefixes: 2.1-2.4x); with cql_fraction 0.125 as well 248 / 214 and 228 / 205 at
    # 1.77-1.86x, the first setting under the 2x floor. At seeds 5-9 (co_rft_<task>_p1_s59.json, 3478b18)
    # 245 / 220 and 222 / 218 (2.05-2.11x), and with cql_fraction 0.125 243 / 220 and 225 / 226
    # (1.69-1.74x), IL 241 / 204 and 225 / 213. Pooled over the 10 seeds, 1 with cql_fraction 0.125 (the
    # default) scored 491 / 434 and 453 / 431 of 500 against IL's 482 / 412 and 449 / 419 (2: 488 / 452
    # and 450 / 440), -18% cycle time on pick-place, at 1.69-1.86x an IL update: every 60-demo floor met.
    prefix_samples: int | None = 1
    n_critics: int = 2  # twin critics; targets take the minimum
    # critic network: "mlp" = PrefixMLPCritic (causal by a masked first layer, LayerNorm; ~5x cheaper),
    # "transformer" = T-SAC's causal transformer over [context, a_1..a_h] (ChunkCritic)
    critic: Literal["mlp", "transformer"] = "mlp"
    # Widths of the MLP critic. TD3+BC and Cal-QL use 256 x 2-3; on the benchmark's 60 demos (5 seeds, 250
    # episodes per cell, co_rft_<task>_stage2_lean_pilot.json, ab093c6) 128 x 2 lifted best-of-8 from 92% /
    # 74% (seen / unseen) to 94% / 81% on pick-place, where IL had 94% / 72%, and held push (87% / 86% ->
    # 92% / 79%, IL 80% / 74%), at 0.81 instead of 2.79 GFLOP and 33-35 instead of 71-72 ms per update.
    # At 30 demos (co_rft_<task>_d30_critic128.json) it led IL on push (46% / 51% against 33% / 36%) and
    # trailed it on pick-place (84% / 64% against 90% / 66%), as 256 x 2 did there.
    critic_hidden: tuple[int, ...] = (128, 128)
    critic_lr: float = 3e-4  # critic Adam lr (QC, TD3+BC)
    actor_lr: float = 3e-4  # stage-2 actor Adam lr (TD3+BC; FQL)
    tau: float = 0.005  # Polyak rate of the target networks, per critic step
    # Stage 2 trains the trunk (through the critic) or freezes it (the notes: "frozen or at the IL lr").
    # Frozen: the policy keeps the features it imitated with, and each history is encoded once for the
    # whole stage (see rl_sampler); recomputing the trunk per batch took 4.4x an IL update (batch 256).
    rl_train_backbone: bool = False
    # Conservative term on Q^(h). Without it stage 2 collapsed on the arm tasks (regression head, 60 mixed
    # demos, 3 seeds: 0-1% success against IL's 30% pick-place and 79% push): the critic extrapolates over
    # 20-50-d chunks the demos never visit (benchmarks/results/co_rft_*_ablation.json).
    conservative: Literal["calql", "cql", "none"] = "calql"
    # Weight of the conservative term. Cal-QL's 5.0 over h x A = 50-d chunks pushed the logged chunks' Q up
    # without bound (TD error 19 -> 114 over 1k updates, pick-place, 60 mixed demos); 1.0 kept it at 3-6.
    cql_alpha: float = 1.0
    # Chunks per kind (uniform, policy at o, policy at o'). Cal-QL uses 10; 3 measured as good: on pick-place
    # (20 demos, h=10) one draw's critic gradient has cosine 0.95 with a 3x40-sample mean, as at n=10
    # (0.95) and above n=1-2 (0.92-0.93), at 40% of n=10's update time (the term is ~90% of it).
    cql_n_samples: int = 3
    # Share of a batch's contexts the conservative term is computed at (the first rows: a batch is a random
    # draw, so they are a random subset). Its loss is a mean over contexts, and a subset estimates that mean
    # without bias (unlike fewer samples per context, which bias the logsumexp down), at more variance.
    # Alone, 0.25 scored 98% / 75% and 92% / 83% (same run as bon_ranked_target's) at 20 ms per update;
    # 0.125 with 1 drawn prefix is the default (measured under prefix_samples above).
    cql_fraction: float = 0.125  # share of a batch's contexts the conservative term is computed at
    cql_temperature: float = 1.0  # logsumexp temperature
    # Best-of-N with rank_executed acts on Q^(k) of the k actions executed per choice, but the term above
    # pushes down Q^(h) only: the values the policy acts on are held down only through the layers they share
    # with Q^(h). True adds Cal-QL's term on Q^(k) too (the logged chunk's first k actions against the same
    # samples' first k; the same V_MC floor, since both are values of o_t), so each value the policy uses
    # has its own conservative term, as each critic of the twins has. Why: at seen push positions the
    # failures of 47629cf's default (seed 2 of the benchmark, 9 of 50) were mostly overshoots, 6 blocks
    # brought within 3.0-3.5 cm of the goal (2.5-3.1 cm of sideways error left) and then pushed 15-24 cm
    # past it by fast chunks the demos never take there, where IL's 2 were slow pushes that timed out short.
    # Measured (co_rft_<task>_s59.json, 15d9a20, seeds 5-9, 250 episodes per cell): pick-place 248 / 228
    # (seen / unseen), push 215 / 217, against the default's 243 / 222 and 218 / 225, at 1.4x its update;
    # seed 2 above still overshot 6 times with it.
    cql_executed: bool = False
    cql_sample_noise: float = 0.2  # std of the Gaussian added to TD3+BC / distilled chunks for the CQL term
    cql_importance_sample: bool = False  # subtract the uniform log-density h*d*log(0.5) (see deviations)
    # TD3+BC: lambda = alpha_bc / mean|Q|. TD3+BC's 2.5 assumes an MSE over one d-dim action; this BC term
    # averages a Huber over h x A chunk entries, ~17x smaller gradients per entry, and 2.5 (or 1.0) drove
    # the policy off the demos (0-13% success from 27%); 0.05 was the best of the pilots, and with Cal-QL
    # at weight 1, 2.5 still fell to 5% (pick-place) and 33% (push) against 41% and 84% (the ablation).
    alpha_bc: float = 0.05
    policy_delay: int = 2  # TD3+BC: critic steps per actor step
    target_noise: float = 0.2  # TD3+BC: target policy smoothing std, normalised actions
    target_noise_clip: float = 0.5  # TD3+BC: clip of that noise
    seed: int = 0  # network initialisation (both stages), the samplers' streams and the acting noise

    def __post_init__(self) -> None:
        self.image_keys, self.aux_state_keys = tuple(self.image_keys), tuple(self.aux_state_keys)
        if self.state_keys is not None:
            self.state_keys = tuple(self.state_keys)
        self.critic_hidden, self.head_hidden = tuple(self.critic_hidden), tuple(self.head_hidden)
        self.vision_channels, self.candidate_noise = tuple(self.vision_channels), tuple(self.candidate_noise)
        if isinstance(self.detect_entity, str):  # one entity, as configs and checkpoints named it before
            self.detect_entity = (self.detect_entity,)
        elif self.detect_entity is not None:
            self.detect_entity = tuple(self.detect_entity)
            if not self.detect_entity or len(set(self.detect_entity)) < len(self.detect_entity):
                raise ValueError(f"detect_entity={self.detect_entity}: name each entity once, at least one")
        if self.state_keys == () and not self.image_keys:
            raise ValueError("CO-RFT needs state_keys or image_keys")
        if self.aux_state_keys and not self.image_keys:
            raise ValueError(
                f"aux_state_keys={self.aux_state_keys} teach the camera trunk where things are: it needs "
                "image_keys (a state policy can read those features directly: add them to state_keys)"
            )
        if set(self.aux_state_keys) & set(self.state_keys or ()):
            raise ValueError(
                f"aux_state_keys={self.aux_state_keys} overlap state_keys={self.state_keys}: the policy "
                "already reads those features"
            )
        if self.aux_weight < 0 or self.detector_weight < 0:
            raise ValueError(
                f"aux_weight={self.aux_weight} and detector_weight={self.detector_weight} must be >= 0"
            )
        if self.detect_entity is not None and not self.aux_state_keys:
            raise ValueError(
                f"detect_entity={list(self.detect_entity)} learns where the entity is from its position: "
                "name the feature that holds it in aux_state_keys (e.g. observation.object)"
            )
        if self.head_input is None:
            detector_at_head = self.detect_entity is not None and self.state_path != "trunk"
            self.head_input = "positions" if detector_at_head else "trunk"
        if self.bon_mode_margin is None:
            self.bon_mode_margin = 1.5 if self.head_input == "positions" else 0.0
        if self.head_input == "positions" and (not self.aux_state_keys or self.state_path == "trunk"):
            raise ValueError(
                f"head_input='positions' reads the positions the trunk estimates of aux_state_keys="
                f"{self.aux_state_keys} beside the robot state: it needs aux_state_keys and "
                f"state_path='head' or 'both' (got {self.state_path!r})"
            )
        if self.horizon < 1 or self.n_obs < 1 or self.flow_steps < 1:
            raise ValueError(
                f"horizon={self.horizon}, n_obs={self.n_obs}, flow_steps={self.flow_steps} must be >= 1"
            )
        if self.n_action_steps is None:  # half the chunk; temporal ensembling predicts every step
            self.n_action_steps = 1 if self.ensemble_coef else -(-self.horizon // 2)
        if not 0 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps={self.n_action_steps} must be in [0, horizon={self.horizon}]")
        if self.ensemble_coef < 0 or (self.ensemble_coef and self.n_action_steps > 1):
            raise ValueError(
                f"ensemble_coef={self.ensemble_coef} must be >= 0, and temporal ensembling predicts every "
                f"step (n_action_steps={self.n_action_steps} must be 0 or 1)"
            )
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma={self.gamma} must be in [0, 1) (V_MC of unfinished episodes needs it)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.actor is None:
            self.actor = "best_of_n" if self.head == "flow" else "td3_bc"
        choices = {
            "il_lr_schedule": ("cosine", "constant"),
            "head": ("flow", "regression"),
            "state_path": ("head", "trunk", "both"),
            "actor": ("best_of_n", "distill", "td3_bc"),
            "reward": ("step_penalty", "sparse", "store"),
            "critic_loss": ("prefix", "full"),
            "conservative": ("calql", "cql", "none"),
            "critic": ("mlp", "transformer"),
            "bon_acting_q": ("mean", "min"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {allowed}")
        if self.actor == "best_of_n" and self.rl_train_backbone:
            raise ValueError(
                "actor='best_of_n' ranks candidates drawn once from the frozen trunk's features: it needs "
                "rl_train_backbone=False (or use actor='distill')"
            )
        if (self.head == "regression") != (self.actor == "td3_bc"):
            raise ValueError(
                f"actor={self.actor!r} does not fit head={self.head!r}: a regression head improves by "
                "'td3_bc', a flow head by 'best_of_n' or 'distill'"
            )
        for name in ("n_critics", "policy_delay", "cql_n_samples", "n_candidates", "bon_refresh"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.il_warmup < 0 or (self.il_schedule_updates is not None and self.il_schedule_updates < 1):
            budget = self.il_schedule_updates
            raise ValueError(f"il_warmup={self.il_warmup} must be >= 0 and il_schedule_updates={budget} >= 1")
        if self.prefix_samples is not None and self.prefix_samples < 1:
            raise ValueError(f"prefix_samples={self.prefix_samples} must be >= 1 (None = every prefix)")
        if not 0.0 < self.cql_fraction <= 1.0:
            raise ValueError(f"cql_fraction={self.cql_fraction} must be in (0, 1]")
        if self.relative_resolution < 0:
            raise ValueError(f"relative_resolution={self.relative_resolution} must be >= 0 (0 = off)")
        if not self.bon_mode_margin >= 0:
            raise ValueError(f"bon_mode_margin={self.bon_mode_margin} must be >= 0")
        if self.flow_noise < 0 or any(s <= 0 for s in self.candidate_noise):
            raise ValueError(
                f"flow_noise={self.flow_noise} must be >= 0 and candidate_noise={self.candidate_noise} > 0"
            )
        if self.language_model in ("", "none", "None"):
            self.language_model = None
