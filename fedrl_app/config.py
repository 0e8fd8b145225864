"""Run configuration: the typed, validated view of `[tool.flwr.app.config]`, one field per key.

Each field carries its default, its help text, its group and the values it accepts (`option`),
so validation, `pyproject.toml` and `docs/configuration.md` all derive from this one list (a test
checks that they agree). Which strategy works with which task and wrapper is the strategy
registry's business (`fedrl_app.server.registry`), checked when the ServerApp starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fedrl_app.agents.dqn import AGENTS, DQNConfig
from fedrl_app.agents.sync_controller import ACTION_SETS, FEATURE_SETS, TIME_COSTS, ControllerConfig
from fedrl_app.protocol.codecs import RESIDUAL_ON_DENSE
from fedrl_app.systems.profiles import ProfileError, check_profile_name
from fedrl_app.tasks.env_variation import EnvVariationError, env_params, parse_variation
from fedrl_app.tasks.mnist import DATA_SHIFTS

TASKS = ("mnist", "cartpole", "lunarlander")
RL_TASKS = ("cartpole", "lunarlander")
FAULT_MODES = ("", "raise", "hang")
MALFORMED_REPLIES = ("nan", "wrong-shape", "pickle-exploit", "metadata-bomb")
RL_ONLY_ATTACKS = ("random-action", "reward-flip", "poison-rewards", "poison-states")  # the last two: Fusion only
BYZANTINE_ATTACKS = ("sign-flip", "scale", "noise", "weight-inflation", "sparse-scale", *RL_ONLY_ATTACKS,
                     *MALFORMED_REPLIES)
TRUST_RULES = ("update-cosine", "param-cosine")
TRUST_CLIPS = ("median-update", "median-norm")  # likewise
TRUST_WEIGHTINGS = ("proportional", "gate")  # likewise
DIVERSITY_SPACES = ("normalised", "raw")
DIVERSITY_MEASURES = ("mean", "nearest")  # as TRUST_RULES: strategies/fusion.py keeps the same tuple (a test checks)
FUSION_DEPLOYS = ("learner", "average")  # likewise
SYNC_POLICIES = ("dqn", "compressed", "full", "bandwidth-rule", "pace-rule")
CONTROLLER_REWARDS = ("own-gain", "global-gain")  # see fedrl_app.agents.sync_controller
DP_MODES = ("off", "server", "client")  # Flower's fixed-clipping DP wrappers: who clips the updates
WANDB_MODES = ("offline", "online", "disabled")
TRACK_METRICS = ("", "accuracy", "loss", "return")

# Groups of keys, as docs/configuration.md lists them.
RUN = "Run"
DATA = "Data (MNIST)"
CLIENT = "Client training"
SERVER_OPT = "Server optimisers"
DRL_COMPRESS = "drl-compress"
ASYNC = "Asynchronous aggregation"
CLUSTERING = "Clustering"
DQN = "RL agents (DQN family)"
FUSION = "Fusion"
PG = "Policy gradient (FedPG, LAPG, AFedPG)"
DRILLS = "Robustness drills"
DP = "Differential privacy"
SYSTEMS = "Systems (virtual clock)"


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type, or outside its allowed range."""


def option(default: Any, help: str, *, group: str, choices: tuple[str, ...] | None = None, ge: float | None = None,
           gt: float | None = None, interval: tuple[float, float, str] | None = None,
           check: Callable[[Any], None] | None = None, accepts: str = "") -> Any:
    """A RunConfig field: its default, help text and docs group, and what it accepts.

    `choices` lists the allowed strings; `ge` / `gt` bound a number from below; `interval` is
    (low, high, brackets) with brackets "[]", "(]", "[)" or "()" for closed or open ends; `check`
    raises ConfigError for values the others cannot describe, and `accepts` says in words what it takes.
    """
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "ge": ge, "gt": gt,
                                            "interval": interval, "check": check, "accepts": accepts})


def _systems_profile(value: str) -> None:
    try:
        check_profile_name(value)
    except ProfileError as err:
        raise ConfigError(str(err)) from None


@dataclass(frozen=True)
class RunConfig:
    """Every run-config key, kebab-case in TOML, snake_case here (defaults equal `pyproject.toml`'s)."""

    task: str = option(
        "mnist", "`mnist`, or the RL tasks `cartpole` (CartPole-v1) and `lunarlander` (LunarLander-v3)",
        group=RUN, choices=TASKS)
    strategy: str = option(
        "fedavg", "the aggregation strategy: a name in the strategy registry (docs/configuration.md lists them)",
        group=RUN)
    num_server_rounds: int = option(10, "total rounds (a resumed run counts the rounds already done)", group=RUN, ge=1)
    fraction_train: float = option(
        1.0, "fraction of nodes sampled for training each round (0, 1]; the sample is drawn from the seed and the "
             "round over the nodes in partition order, so two runs of a seed (and a resumed run) train the same ones",
        group=CLIENT, interval=(0.0, 1.0, "(]"))
    fraction_evaluate: float = option(
        0.5, "fraction of nodes sampled for client-side evaluation [0, 1]",
        group=CLIENT, interval=(0.0, 1.0, "[]"))
    local_epochs: int = option(1, "local epochs per round", group=CLIENT, ge=1)
    batch_size: int = option(32, "local mini-batch size", group=CLIENT, ge=1)
    lr: float = option(0.1, "client SGD learning rate at round 0", group=CLIENT, gt=0)
    momentum: float = option(
        0.0, "client SGD momentum (must be 0 with `scaffold`, whose control-variate update assumes plain SGD)",
        group=CLIENT, interval=(0.0, 1.0, "[)"))
    lr_decay_factor: float = option(
        0.5, "the lr sent in round r is `lr * lr-decay-factor ** (r // lr-decay-every)`",
        group=CLIENT, interval=(0.0, 1.0, "(]"))
    lr_decay_every: int = option(5, "rounds between two lr decays (see `lr-decay-factor`)", group=CLIENT, ge=1)
    proximal_mu: float = option(0.01, "FedProx μ: clients add (μ/2)·‖w − w_global‖²", group=SERVER_OPT, ge=0)
    server_lr: float = option(0.01, "FedAdagrad server step η", group=SERVER_OPT, gt=0)
    adagrad_tau: float = option(0.001, "FedAdagrad adaptivity τ", group=SERVER_OPT, gt=0)
    bytes_penalty: float = option(
        0.1, "drl-compress: λ in the controllers' reward, accuracy gain − λ · bytes sent / full-model bytes",
        group=DRL_COMPRESS, ge=0)
    sync_policy: str = option(
        "dqn", "drl-compress: `dqn` (each client's controller decides), the ablations `compressed` (always top-k + int8 at the initial rate) and `full`, or the hand-written rules `bandwidth-rule` (top-k ∝ the client's uplink, halved until it makes the deadline) and `pace-rule` (the densest update that adds no delay to the synchronous round: dense if it is done before the slowest download + compute of the last round, else the largest top-k rate from 25% down that is; pair it with `update-aggregation = sent-mean`, so that the slow clients' top-k replies do not shrink the dense ones' step)",
        group=DRL_COMPRESS, choices=SYNC_POLICIES)
    controller_reward: str = option(
        "own-gain", "drl-compress: the accuracy gain in the controllers' reward: `own-gain`, what the client's own message (decoded as the server will) adds to the global model's local accuracy, measured at once; or `global-gain`, the global model's local accuracy gain by the next round (mostly other clients' doing)",
        group=DRL_COMPRESS, choices=CONTROLLER_REWARDS)
    async_aggregation: bool = option(
        False, "FedBuff-style asynchronous aggregation (with `fedavg`, `fedprox`, `drl-compress`); a \"round\" is then one aggregation",
        group=ASYNC)
    buffer_size: int = option(5, "async: K, updates per aggregation", group=ASYNC, ge=1)
    staleness_exponent: float = option(0.5, "async: a in the staleness weight s(τ) = (1+τ)^−a", group=ASYNC, ge=0)
    clustering: bool = option(
        False, "cluster clients by the direction of their summed updates over the last `cluster-every` rounds, one model per cluster (with synchronous `fedavg`, `fedprox`, `drl-compress`)",
        group=CLUSTERING)
    cluster_every: int = option(5, "clustering: re-cluster after every this many rounds", group=CLUSTERING, ge=1)
    max_clusters: int = option(4, "clustering: largest k tried (k chosen by silhouette score)", group=CLUSTERING, ge=2)
    prune_threshold: float = option(
        0.0, "drl-compress: layers whose update norm relative to the layer's weight norm is below this are not sent (0 = off)",
        group=DRL_COMPRESS, ge=0)
    residual_on_dense: str = option(
        "flush", "drl-compress: what a client's dense update does with its error-feedback residual (what top-k left out of its earlier compressed updates): `flush` (sends it along) or `drop` (discards it: after k rounds at top-0.1% the residual holds nearly k rounds of updates, and one dense reply carrying them is a k-fold step computed on models the federation has left behind)",
        group=DRL_COMPRESS, choices=RESIDUAL_ON_DENSE)
    dirichlet_alpha: float = option(
        0.3, "Dirichlet concentration of the label partition (smaller = more non-IID)",
        group=DATA, gt=0)
    seed: int = option(42, "seed of the partition, local splits, shuffling and model init", group=RUN)
    data_path: str = option(
        "", "empty: the shipped MNIST copy; a directory with `train.parquet`/`test.parquet`; or a hub id such as `ylecun/mnist` (needs network)",
        group=DATA)
    local_test_fraction: float = option(
        0.1, "share of each client's partition held out for client-side evaluation",
        group=DATA, interval=(0.0, 0.9, "(]"))
    max_client_examples: int = option(0, "cap on each client's partition (0 = all); for quick tests", group=DATA, ge=0)
    eval_batch_size: int = option(1000, "batch size of evaluation", group=DATA, ge=1)
    round_timeout: float = option(600.0, "seconds the server waits for replies each round", group=RUN, gt=0)
    track_metric: str = option(
        "", "metric the best-model checkpoint follows (`accuracy`, `loss`, `return`); empty: `accuracy` for MNIST, `return` for RL",
        group=RUN, choices=TRACK_METRICS)
    agent: str = option("dqn", "RL: `dqn`, `double`, `dueling`, `double-dueling`", group=DQN, choices=AGENTS)
    steps_per_round: int = option(1000, "RL: environment steps each client takes per round", group=DQN, ge=1)
    eval_episodes: int = option(
        5, "RL: greedy episodes the server (and an evaluating client) plays per round; the server's start from "
           "other states each round (drawn from the seed and the round)",
        group=DQN, ge=1)
    dqn_hidden: int = option(256, "RL: width of the Q-network's two hidden layers", group=DQN, ge=1)
    dqn_learning_starts: int = option(1000, "RL: env steps before the first gradient step", group=DQN, ge=0)
    dqn_epsilon_decay_steps: int = option(20000, "RL: env steps of linear ε decay (1.0 → 0.05)", group=DQN, ge=1)
    dqn_batch_size: int = option(128, "RL: replay minibatch size", group=DQN, ge=1)
    dqn_train_frequency: int = option(
        1, "RL: env steps per gradient step (1, the default since it was measured best on LunarLander: Fusion Double 184.0 ± 13.9 against 79.6 ± 31.5 at 4, N = 3, 3 seeds; about 2.5× the compute per env step)",
        group=DQN, ge=1)
    dqn_target_update_every: int = option(250, "RL: gradient steps between target-network copies", group=DQN, ge=1)
    dqn_tau: float = option(
        1.0, "RL: target-network update, 1.0 a hard copy every `dqn-target-update-every` gradient steps, < 1 a Polyak average θ' ← τθ + (1 − τ)θ' (soft updates: with e.g. τ = 0.005 set `dqn-target-update-every = 1`)",
        group=DQN, interval=(0.0, 1.0, "(]"))
    dqn_learning_rate: float = option(6.3e-4, "RL: the DQN agents' Adam learning rate (Fusion's server learner too)", group=DQN, gt=0)
    dqn_max_grad_norm: float = option(10.0, "RL: gradient-norm clipping of each DQN step", group=DQN, gt=0)
    dqn_buffer_size: int = option(50_000, "RL: each client agent's replay-buffer capacity (Fusion's server buffer: `server-buffer-size`)", group=DQN, ge=1)
    dqn_n_step: int = option(
        3, "RL: n-step returns (3, the default since it was measured best for one agent alone on LunarLander: 171.8 ± 37.5 against 110.0 ± 31.7 with 1-step targets, better on each of 3 seeds), Σ_{k<n} γ^k r_{t+k} + γ^n Q(s_{t+n}), built at sampling time from consecutive stored transitions of one episode (the buffer and shared experience stay 1-step)",
        group=DQN, interval=(1, 10, "[]"))
    dqn_personal_share: float = option(
        0.0, "RL (DQN clients of a federation): β, the share of its own last network a client keeps: each round it starts from (1 − β)·θ_global + β·θ_own and uploads θ_global + what it learned (θ_trained − θ_start), so the server's model and its trust scores see the same kind of update as with β = 0, and the client's own-environment behaviour keeps what suits its dynamics (0, the default: start from the global network; measured at 0.5 under `env-variation = \"varied\"`, N = 3, 3 seeds: 204.2 ± 35.7 against 221.4 ± 14.8 without, and a worse global network)",
        group=DQN, interval=(0.0, 1.0, "[)"))
    dqn_personal_head: bool = option(
        False, "RL (DQN clients of a federation): keep the output layers (`head`, or `value` and `advantage` when dueling) the client's own, FedPer-style: each round it starts from the global body and its own last head, and uploads θ_global + what it learned (θ_trained − θ_start), as with `dqn-personal-share`, so the server still averages a head for the global network (false, the default: measured under `env-variation = \"varied\"`, N = 3, 3 seeds, Fusion: 209.3 ± 19.6 against 221.4 ± 14.8 without, the windy client lower on every seed, and the global network's final model at 84.6 on the nominal environment)",
        group=DQN)
    fusion_mix: float = option(
        0.0, "Fusion: α kept on the global network, θ = α·θ_global + (1−α)·Σ w_k θ_k (0, the default since it was measured best: every client of 3 seeds solves LunarLander at N = 3, against 6 of 9 with α = 0.5, whose kept half diluted the clients' 1,000 gradient steps a round)",
        group=FUSION, interval=(0.0, 1.0, "[)"))
    diversity_filter: bool = option(
        True, "Fusion: admit shared transitions only if diverse enough (false: the ablation)",
        group=FUSION)
    diversity_threshold: float = option(
        0.15, "Fusion: θ; with `diversity-measure = mean`, the minimum mean distance to sampled buffer states (0.15 admits every LunarLander state, fresh or already in the buffer: benchmarks/diversity_threshold.py), with `nearest`, the minimum distance to the nearest buffer state in units of the buffer's median spacing",
        group=FUSION, ge=0)
    filter_k: int = option(16, "Fusion: buffer states sampled per diversity test", group=FUSION, ge=1)
    server_updates_per_round: int = option(
        100, "Fusion: DQN steps the server takes on the global buffer each round",
        group=FUSION, ge=0)
    server_buffer_size: int = option(
        50000, "Fusion: capacity of the server's global replay buffer (oldest transitions go first)",
        group=FUSION, ge=1)
    server_learner_restart: bool = option(
        False, "Fusion: each round the server learner starts afresh from the mixed network: its target network set to it and its Adam moments cleared (off: both carry over from the previous round's learner, whose online network the mix has just replaced)",
        group=FUSION)
    fusion_deploy: str = option(
        "average", "Fusion: the global network the server evaluates and saves as `best_model.pt`: `average` (the default since it was measured steadier: the trust-weighted average of the clients' networks, before the server learner's updates; the clients still start from the learner's network, so training is unchanged, and the learner's network is also evaluated, as `sent-return`) or `learner` (the server learner's network after its updates, the one the clients start each round from)",
        group=FUSION, choices=FUSION_DEPLOYS)
    experience_sample: int = option(
        256, "Fusion: transitions each client shares per round (gzip-compressed)",
        group=FUSION, ge=0)
    pg_lr: float = option(0.001, "fedpg/lapg: η, the server's ascent step θ ← θ + η·mean ĝ", group=PG, gt=0)
    pg_batch_episodes: int = option(
        10, "policy gradient: episodes each client samples per gradient estimate",
        group=PG, ge=1)
    pg_hidden: int = option(64, "policy gradient: width of the policy's two tanh hidden layers", group=PG, ge=1)
    pg_gamma: float = option(
        0.99, "policy gradient: discount in the rewards-to-go (1 = unbiased for the undiscounted return)",
        group=PG, interval=(0.0, 1.0, "(]"))
    lapg_threshold: float = option(
        1.0, "LAPG: ξ; a client skips when ‖ĝ_new − ĝ_last‖² ≤ (ξ/D)·(1/η²)·Σ_{d≤D} ‖θ^{k+1−d} − θ^{k−d}‖²",
        group=PG, ge=0)
    lapg_memory: int = option(10, "LAPG: D, past steps in the bound above", group=PG, ge=1)
    afedpg_step_size: float = option(
        0.1, "AFedPG: α, the length of the normalized step θ ← θ + α·d/‖d‖ (see `afedpg-step-exponent`)",
        group=PG, gt=0)
    afedpg_eta_exponent: float = option(
        0.5, "AFedPG: p in the momentum/lookahead weight η_v = (v+1)^−p (0: no momentum). 0.8, the exponent of the paper's analysis as reconstructed here, freezes the momentum when N agents make N updates per round (see the policy-gradient benchmark)",
        group=PG, interval=(0.0, 1.0, "[]"))
    afedpg_delay_adaptive: bool = option(
        True, "AFedPG: weight a gradient δ updates late by η_v/(1−δη_v) instead of η_v",
        group=PG)
    afedpg_step_exponent: float = option(
        0.0, "AFedPG: q in the step length α_k = α·(k+1)^−q of update k (the paper's decaying rate; 0: constant α)",
        group=PG, interval=(0.0, 1.0, "[]"))
    outputs_dir: str = option("", "where run folders go; empty: `<project>/outputs`", group=RUN)
    resume_from: str = option("", "a run folder (or `latest`) to continue from its last checkpoint", group=RUN)
    byzantine_fraction: float = option(
        0.0, "share of clients (the first partitions) that attack every round",
        group=DRILLS, interval=(0.0, 1.0, "[]"))
    byzantine_attack: str = option(
        "sign-flip", "well-formed: `sign-flip` (send −Δ), `scale` (send `byzantine-scale`·Δ), `noise` (send Gaussian noise, per tensor `byzantine-scale` × the honest update's RMS), `sparse-scale` (the same through drl-compress's compressed update), `weight-inflation` (claim 10¹² training examples, an honest update); faulty RL agents: `random-action` (acts uniformly at random), `reward-flip` (learns from −r), and with `fusion`, poisoned shared experience: `poison-rewards` (every shared reward negated) or `poison-states` (shared states drawn uniformly from [−10, 10]); malformed (drills of the server's checks): `nan` (a NaN in the model), `wrong-shape` (an array one entry short), `pickle-exploit` (metadata that names `os.system`), `metadata-bomb` (a 2 KB metadata pickle that renders to 12¹² numbers)",
        group=DRILLS, choices=BYZANTINE_ATTACKS)
    byzantine_scale: float = option(
        10.0, "factor of the `scale` and `sparse-scale` attacks (FedPG-BR's sign flip is `scale` with −2.5), and of the `noise` attack's spread",
        group=DRILLS)
    trimmed_beta: float = option(
        0.2, "`fedtrimmedavg`: fraction cut at each end per coordinate",
        group=DRILLS, interval=(0.0, 0.5, "[)"))
    krum_malicious: int = option(0, "`krum`: f, the number of attackers Krum tolerates", group=DRILLS, ge=0)
    dp_mode: str = option(
        "off", "differential privacy with Flower's fixed-clipping wrappers (`fedavg`, `fedprox`): `server` (the server clips each update) or `client` (clients clip with Flower's `fixedclipping_mod`; the server refuses an update longer than the clipping norm)",
        group=DP, choices=DP_MODES)
    dp_noise_multiplier: float = option(
        1.0, "DP: z; Gaussian noise of std z·C/n is added to the equal-weight mean of n clipped updates (0: clipping only, no privacy)",
        group=DP, ge=0)
    dp_clipping_norm: float = option(1.0, "DP: C, the largest update norm one client can contribute", group=DP, gt=0)
    dp_target_delta: float = option(
        1e-5, "DP: δ at which ε is reported each round (`dp-epsilon` in metrics.jsonl, Flower's RDP accountant)",
        group=DP, interval=(0.0, 1.0, "()"))
    fault_mode: str = option(
        "", "fault injection for drills and tests: `raise` (the client raises) or `hang` (it answers after `fault-hang-s`)",
        group=DRILLS, choices=FAULT_MODES)
    fault_partition: int = option(-1, "the partition that misbehaves (-1: none)", group=DRILLS)
    fault_round: int = option(0, "the round it misbehaves in (0: every round)", group=DRILLS, ge=0)
    fault_hang_s: float = option(30.0, "how long a `hang` client sleeps before answering", group=DRILLS)
    wandb_mode: str = option(
        "offline", "`offline`, `online` or `disabled`; the `WANDB_MODE` environment variable wins",
        group=RUN, choices=WANDB_MODES)
    wandb_project: str = option("fedrl", "W&B project name", group=RUN)
    systems_profile: str = option(
        "uniform", "clients' links, compute and availability for the virtual clock: `uniform` (every client the median mobile one, always available), `mobile` (FedScale/FLASH-shaped heterogeneity, seeded), or `file:PATH` (a CSV trace; see fedrl_app/systems/profiles.py)",
        group=SYSTEMS, check=_systems_profile, accepts="`uniform`, `mobile`, `file:PATH`")
    round_deadline_s: float = option(
        0.0, "synchronous rounds: a reply whose simulated time exceeds this many seconds is dropped, and a round with a late or unavailable client lasts until the deadline (0: no deadline)",
        group=SYSTEMS, ge=0)
    local_work: str = option(
        "full", "MNIST clients: `full` (every local epoch over the whole partition), `samples` (each round a fresh random subset of `local-samples` examples, as FedScale's fixed local steps) or `deadline` (partial work, as FedScale's deadline-aware training: each client trains on as many of its examples, a fresh random subset each round, as its own profile lets it finish, upload a dense update and still make `round-deadline-s`; it reports that many examples, which weight it and time it)",
        group=SYSTEMS, choices=("full", "samples", "deadline"))
    local_samples: int = option(
        400, "MNIST clients with `local-work = \"samples\"`: examples trained on per local epoch, a fresh random subset of the partition each round (400: FedScale's default 20 local steps × batch 20)",
        group=SYSTEMS, ge=1)
    mnist_width: int = option(
        1, "MNIST: the CNN's width multiplier w (conv 16w, 32w, FC 128w): 1 is 215k parameters (0.86 MB), 4 is 3.4M (13.7 MB, MobileNet V2-sized), for a federation where uploads cost real time",
        group=DATA, interval=(1, 8, "[]"))
    data_shift: str = option(
        "none", "MNIST: give client groups conflicting optima, group = partition id mod 4: `rotate` (images turned by group × 90°, rotated MNIST as in IFCA) or `permute-labels` (each group relabels the digits); each client's local test split is shifted too, the server's test set is not",
        group=DATA, choices=DATA_SHIFTS)
    topk_ratio: float = option(
        0.01, "drl-compress: the top-k ratio a controller starts from, and the fixed rate of `sync-policy = compressed`",
        group=DRL_COMPRESS, interval=(0.0, 1.0, "(]"))
    controller_features: str = option(
        "basic", "drl-compress: the controller's state: `basic` (accuracy, divergence, staleness, progress, rate) or `resources` (also its expected upload times of a full and of a compressed update and its compute time, relative to the deadline, and its availability)",
        group=DRL_COMPRESS, choices=FEATURE_SETS)
    update_aggregation: str = option(
        "mean", "drl-compress: how the senders' decoded updates combine: `mean` (example-weighted), `sent-mean` (example-weighted per coordinate over the clients that sent it: a top-k reply beside dense ones does not shrink the coordinates it left out; meant for mixes such as the pace rule's, not for all-top-k rounds, whose steps it enlarges), or robustly, unweighted, `median` or `trimmed-mean` (cutting `trimmed-beta` at each end), coordinate-wise",
        group=DRL_COMPRESS, choices=("mean", "sent-mean", "median", "trimmed-mean"))
    max_update_norm: float = option(
        0.0, "every strategy: bound each reply's update norm to this (norm bounding, Sun et al. 2019: the update is scaled down; 0: off). Values beyond ±1e6 are refused whatever this is",
        group=DRILLS, ge=0)
    controller_sharing: str = option(
        "per-client", "drl-compress: `per-client` (each client learns its own controller from its ~one decision a round) or `shared` (one controller, learned on the server from every client's reported transitions and sent down with the model)",
        group=DRL_COMPRESS, choices=("per-client", "shared"))
    env_variation: str = option(
        "none", "RL: per-client environment dynamics: `none`, a profile (`gravity`, `wind`, `varied`: five variants, partition i gets variant i mod 5) or explicit lists `gravity=-10,-6,-3; wind-power=0,10,5` (LunarLander: `gravity` (−12, 0), `wind-power` [0, 20], `turbulence-power` [0, 2]; CartPole: `gravity`, `masspole`, `length`); partition i takes entry i mod the list's length. The server evaluates the global policy on the nominal environment and on every variant",
        group=DQN, accepts="`none`, `gravity`, `wind`, `varied`, `name=v0,v1,...; ...`")
    trust: str = option(
        "update-cosine", "Fusion: how clients are weighted: `update-cosine` (sim_k = cos(Δθ_k, coordinate-wise median Δθ), made into weights by `trust-weighting` and each Δθ_k scaled down by `trust-clip`; a client with weight 0 also has its shared experience refused) or `param-cosine` (w_k ∝ max(0, cos(θ_k, θ_global)), the earlier rule, ≈ 1/N for every client)",
        group=FUSION, choices=TRUST_RULES)
    trust_clip: str = option(
        "median-norm", "Fusion with `trust = \"update-cosine\"`: the norm each client's update Δθ_k is scaled down to (never up): `median-norm` (the default: the median of the clients' norms, so the shorter half stays whole) or `median-update` (the earlier default: the norm of the coordinate-wise median Δθ, below a typical client's, so honest steps shrink too: each to 0.55–0.85 of its length on the LunarLander runs measured)",
        group=FUSION, choices=TRUST_CLIPS)
    trust_weighting: str = option(
        "gate", "Fusion with `trust = \"update-cosine\"`: how similarities become weights: `proportional` (the earlier default, w_k ∝ max(0, sim_k): a client whose honest update differs, e.g. in another environment, loses weight in proportion) or `gate` (the default since it was measured best with `trust-clip = \"median-norm\"` on LunarLander, N = 5, one faulty client, seed 2: 89.9–108.4% of the clean return under six attacks, mean 99.9%, against 83.0–102.3%, mean 93.6%, on the earlier defaults; reward flip on seed 3: 85.3% against 98.2%, single seeds swing by late collapses of honest clients; ρ_k = sim_k / the round's median similarity; w_k ∝ 0 at ρ_k ≤ 0.5, 1 at ρ_k ≥ 0.75, linear between: every client near the majority weighs the same, one far from it nothing, and its shared experience is refused)",
        group=FUSION, choices=TRUST_WEIGHTINGS)
    trust_td_probe: int = option(
        0, "Fusion: transitions of the server's buffer each client's network is scored on every round; its median TD error e_k scales its weight by min(1, median e / e_k), and a network whose e_k is over 3 × the median also has its shared experience refused (0: off)",
        group=FUSION, ge=0)
    diversity_space: str = option(
        "normalised", "Fusion: where the diversity filter measures distance: `normalised` (per-dimension z-scores of the server buffer's states, divided by √(2·dim) so a typical pair of states is 1 apart on any environment) or `raw` (L2 on raw states, the earlier rule)",
        group=FUSION, choices=DIVERSITY_SPACES)
    diversity_measure: str = option(
        "mean", "Fusion: what the diversity filter compares with θ: `mean` (mean distance to `filter-k` sampled buffer states; measured to admit repeats as often as fresh states) or `nearest` (distance to the nearest buffer state, in units of the buffer's median nearest-neighbour spacing: repeats are refused, θ = 1 admits states as isolated as a typical buffer state)",
        group=FUSION, choices=DIVERSITY_MEASURES)
    time_penalty: float = option(
        0.0, "drl-compress: μ in the controllers' reward, charging μ · (upload seconds of the message / upload seconds of a dense update on the median mobile link)",
        group=DRL_COMPRESS, ge=0)
    time_cost: str = option(
        "upload", "drl-compress: what a message's time is, in the controllers' reward and resource features: `upload` (its upload seconds) or `added-delay` (the seconds it adds to a synchronous round: its download + compute + upload beyond the slowest download + compute of the last round, which the server then broadcasts; its upload on the async clock)",
        group=DRL_COMPRESS, choices=TIME_COSTS)
    controller_actions: str = option(
        "rate-steps", "drl-compress: what the controllers choose from: `rate-steps` (full, compressed at the current top-k rate, skip, raise or lower compression) or `with-pace` (also `pace`, the pace rule's update: dense if this client's round ends by the last round's slowest download + compute, which the server then broadcasts, else the largest top-k rate that does; the controllers start from it and leave it where they learn that something else pays more; pair it with `update-aggregation = sent-mean`)",
        group=DRL_COMPRESS, choices=ACTION_SETS)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build and validate a RunConfig from Flower's `context.run_config`.

        Raises
        ------
        ConfigError
            Naming the offending key and what it accepts.
        """
        known = {key_of(f): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        values = {known[key].name: _coerce(key, value, known[key].type) for key, value in run_config.items()}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check every value against its field's choices and bounds; raise ConfigError naming the key."""
        for f in fields(self):
            _check_field(key_of(f), getattr(self, f.name), f.metadata)
        if self.env_variation.strip() not in ("", "none"):
            if not self.is_rl:
                raise ConfigError(f"config key 'env-variation' applies to the RL tasks {list(RL_TASKS)}; "
                                  f"task is {self.task!r}")
            try:
                parse_variation(self.task, self.env_variation)
            except EnvVariationError as err:
                raise ConfigError(f"config key {err}") from None
        if self.local_work == "samples" and self.is_rl:
            raise ConfigError(f"config key 'local-work' = 'samples' applies to task 'mnist' (RL clients take "
                              f"'steps-per-round'); task is {self.task!r}")
        if self.local_work == "deadline" and (self.round_deadline_s <= 0 or self.is_rl):
            raise ConfigError("config key 'local-work' = 'deadline' needs task 'mnist' and a round deadline "
                              f"(round-deadline-s > 0; got task {self.task!r}, round-deadline-s={self.round_deadline_s:g})")
        if self.byzantine_fraction > 0 and self.byzantine_attack in RL_ONLY_ATTACKS and not self.is_rl:
            raise ConfigError(f"config key 'byzantine-attack' = {self.byzantine_attack!r} is a faulty RL agent; "
                              f"task is {self.task!r}")

    @property
    def tracked_metric(self) -> str:
        """The metric the best checkpoint follows: 'track-metric', or the task's natural one."""
        return self.track_metric or ("return" if self.task in RL_TASKS else "accuracy")

    @property
    def is_rl(self) -> bool:
        """True for the gymnasium tasks."""
        return self.task in RL_TASKS

    def dqn_config(self) -> DQNConfig:
        """The DQN-family agent's hyperparameters (clients' agents and Fusion's server learner)."""
        return DQNConfig.for_agent(
            self.agent, hidden=self.dqn_hidden, learning_starts=self.dqn_learning_starts,
            epsilon_decay_steps=self.dqn_epsilon_decay_steps, batch_size=self.dqn_batch_size,
            train_frequency=self.dqn_train_frequency, target_update_every=self.dqn_target_update_every,
            tau=self.dqn_tau, learning_rate=self.dqn_learning_rate, max_grad_norm=self.dqn_max_grad_norm,
            buffer_size=self.dqn_buffer_size, n_step=self.dqn_n_step,
        )

    def env_params(self, partition_id: int) -> dict[str, float]:
        """RL: the environment dynamics of this partition (`env-variation`)."""
        return env_params(self.task, self.env_variation, partition_id)

    def controller_config(self) -> ControllerConfig:
        """drl-compress: the sync controller's settings (each client's, or the shared one's)."""
        return ControllerConfig(bytes_penalty=self.bytes_penalty, initial_rate=self.topk_ratio,
                                features=self.controller_features, time_penalty=self.time_penalty,
                                time_cost=self.time_cost, pace_action=self.controller_actions == "with-pace")

    def as_dict(self) -> dict[str, Any]:
        """Kebab-case dict, as in pyproject.toml (for JSON and W&B)."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}


def key_of(f: dataclasses.Field) -> str:
    """The TOML key of a RunConfig field (kebab-case)."""
    return f.name.replace("_", "-")


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    type_name = type_name if isinstance(type_name, str) else type_name.__name__
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if type_name == "str":
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    raise AssertionError(f"unsupported field type {type_name} for {key}")


def _check_field(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if meta.get("check") is not None:
        meta["check"](value)
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"config key '{key}' is {value!r}; allowed values: {list(meta['choices'])}")
    if isinstance(value, float) and not math.isfinite(value) and (meta.get("ge") is not None or meta.get("gt")
                                                                  is not None or meta.get("interval")):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    if meta.get("ge") is not None and not value >= meta["ge"]:
        raise ConfigError(f"config key '{key}' must be >= {meta['ge']}, got {value!r}")
    if meta.get("gt") is not None and not value > meta["gt"]:
        raise ConfigError(f"config key '{key}' must be > {meta['gt']}, got {value!r}")
    if meta.get("interval") is not None:
        low, high, brackets = meta["interval"]
        too_low = value <= low if brackets[0] == "(" else value < low
        too_high = value >= high if brackets[1] == ")" else value > high
        if too_low or too_high:
            raise ConfigError(f"config key '{key}' must be in {brackets[0]}{low}, {high}{brackets[1]}, got {value!r}")


def describe_accepted(meta: Mapping[str, Any]) -> str:
    """What a field accepts, in words, for the docs ('' when anything of its type goes)."""
    if meta.get("accepts"):
        return meta["accepts"]
    if meta.get("choices") is not None:
        return ", ".join(f"`{c}`" if c else '`""`' for c in meta["choices"])
    if meta.get("interval") is not None:
        low, high, brackets = meta["interval"]
        return f"{brackets[0]}{low:g}, {high:g}{brackets[1]}"
    if meta.get("ge") is not None:
        return f"≥ {meta['ge']:g}"
    if meta.get("gt") is not None:
        return f"> {meta['gt']:g}"
    return ""
