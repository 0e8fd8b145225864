"""ServerApp: validate the run config, build the strategy from the registry, run it with the run recorder."""

from __future__ import annotations

from logging import ERROR, INFO

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedrl_app.config import ConfigError
from fedrl_app.runtime.paths import outputs_root
from fedrl_app.server.evaluation import central_evaluator, client_evaluate_config, client_train_config
from fedrl_app.server.metered_grid import MeteredGrid
from fedrl_app.server.recorder import RunRecorder, load_checkpoint, new_run_dir, resolve_resume_dir
from fedrl_app.server.registry import build_strategy, cap_example_claims, measure_replies_with, parse_config, task_model
from fedrl_app.server.reply_order import PartitionOrderGrid
from fedrl_app.tasks import mnist

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one experiment end to end; stop at once with a clear message on bad config."""
    try:
        cfg = parse_config(context.run_config)
        source = mnist.resolve_source(cfg.data_path) if cfg.task == "mnist" else None
        root = outputs_root(cfg.outputs_dir)
        resume = None
        if cfg.resume_from:
            run_dir = resolve_resume_dir(cfg.resume_from, root)
            resume = load_checkpoint(run_dir)
        else:
            run_dir = new_run_dir(root)
    except (ConfigError, FileNotFoundError) as err:
        log(ERROR, "fedrl: invalid configuration: %s", err)
        raise  # marks the run failed (a SystemExit would read as completed)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    strategy = build_strategy(cfg)
    if resume is not None:
        initial = ArrayRecord(resume["arrays"])
        strategy.load_state_dict({
            name: {k: t.numpy() for k, t in group.items()} for name, group in resume["strategy-state"].items()
        })
        strategy.round_offset = int(resume["round"])
        log(INFO, "fedrl: resuming %s from round %d", run_dir, strategy.round_offset)
    else:
        initial = ArrayRecord(task_model(cfg).state_dict())
    remaining = cfg.num_server_rounds - strategy.round_offset
    log(INFO, "fedrl: task=%s strategy=%s rounds=%d; outputs in %s", cfg.task, cfg.strategy, remaining, run_dir)

    metered = MeteredGrid(grid)
    measure_replies_with(strategy, metered.reply_nbytes)
    recorder = RunRecorder(cfg, run_dir, strategy, metered, central_evaluator(cfg, source), resume=resume)
    if remaining > 0:
        ordered = PartitionOrderGrid(metered)
        nodes = ordered.get_node_ids()  # asks each node its partition; waits for the federation the nodes report
        cap_example_claims(strategy, cfg, source, num_nodes=ordered.federation_size or len(nodes))
        strategy.start(
            grid=ordered, initial_arrays=initial, num_rounds=remaining,
            timeout=cfg.round_timeout,
            train_config=client_train_config(cfg), evaluate_config=client_evaluate_config(cfg),
            evaluate_fn=recorder.evaluate_fn,
        )
    else:
        log(INFO, "fedrl: %s already ran %d of %d rounds; nothing to do", run_dir, strategy.round_offset,
            cfg.num_server_rounds)
    recorder.finish()
