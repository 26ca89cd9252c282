"""`unet tune`: a hyperparameter search of `unet train` with Ray Tune.

Each trial is a Ray Train run of the same training code as `unet train` (Ray 2.60's pattern for
Train V2 under Tune: a trial function builds the trainer and calls `fit()`, and
`TuneReportCallback` hands rank 0's per-epoch metrics to Tune). ASHA stops poor trials early on
their per-epoch val Dice; trials run side by side as the cluster's CPUs and GPUs allow
(`--max-concurrent` caps them). An interrupted search started again with the same --output
resumes: finished trials are kept, unfinished ones run again from their checkpoints.

    O/trials/<trial>/     each trial's bundle
    O/trials.runs/        each trial's Ray Train checkpoints
    O/trials.parquet      one row per trial: params, best val Dice, epochs, status, seconds
    O/best/               the best trial's bundle
    O/report.html         the trials table and val Dice per trial over epochs
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys

from jobs import train
from jobs.exits import Exit, run_main
from jobs.options import load_config_file
from jobs.output import configure as configure_output
from jobs.output import log, say, worker_env
from jobs.progress import Timer
from jobs.quieting import quiet_ray_data
from jobs.runtime import cluster_address, job_settings_env
from unet_core.errors import ConfigError, JobError
from unet_core.io import storage
from unet_core.tracking import Tracker, TrackingConfig
from unet_core.training.plan import local_cpus
from unet_core.tuning import Dimension, Kind, option_specs, parse_space, trial_flags
from unet_core.tuning_results import (
    TrialRow,
    TrialStatus,
    best_of,
    best_trial,
    curves_png,
    trials_table,
    tune_report_html,
)

TUNE_FOLDER = ".tune"  # Ray Tune's experiment state under --output (what a resumed search reads)
CPU_PER_TRIAL_DRIVER = 0.01  # the trial function only waits on its trainer; Tune refuses 0


def build_parser() -> argparse.ArgumentParser:
    p = train.build_parser()
    p.prog, p.description = "unet tune", __doc__
    t = p.add_argument_group("search")
    t.add_argument("--space", required=True, help="YAML file: unet train options -> {choice|uniform|loguniform|randint}")
    t.add_argument("--trials", type=int, required=True, help="how many trials to sample")
    t.add_argument("--scheduler", default="asha", choices=["asha", "fifo"],
                   help="asha stops poor trials early on their per-epoch metric; fifo runs every trial to its end")
    t.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as the cluster allows)")
    t.add_argument("--metric", default="val_dice", choices=["val_dice", "val_dice_hard"],
                   help="what the search maximises, per epoch")
    t.add_argument("--search-seed", type=int, default=0, help="seed of the sampler")
    return p


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _fixed_argv(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The command line less the search's own options and what each trial sets itself."""
    own = {a.dest for g in parser._action_groups if g.title == "search" for a in g._group_actions}
    own |= {"output", "storage", "run_name", "resume", "register_model"}
    flags = {s: a for a in parser._actions for s in a.option_strings}
    out, i = [], 0
    while i < len(argv):
        word = argv[i]
        name, eq, _ = word.partition("=")
        action = flags.get(name)
        takes = action is not None and action.nargs != 0
        if action is not None and action.dest in own:
            i += 1 if eq or not takes else 2
            continue
        out.append(word)
        if takes and not eq and i + 1 < len(argv):
            out.append(argv[i + 1])
            i += 1
        i += 1
    return out


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = train.parse_args(parser, argv)
    configure_output(args.verbose)
    if args.trials < 1:
        raise ConfigError("--trials must be at least 1")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError("--max-concurrent must be at least 1")
    dims = parse_space(load_config_file(args.space), option_specs(train.build_parser()), where=args.space)
    fixed = _fixed_argv(argv, parser)
    output = args.output.rstrip("/")
    tracking = train.tracking_config(args)

    # Every trial is checked as `unet train` would check it, before anything starts.
    probe = train.plan_run(train.parse_args(train.build_parser(), fixed + _sample_flags(dims) + [
        "--output", f"{output}/trials/probe"]), check_run=False)
    _start_ray(args, probe)
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    parent = Tracker.open(tracking, tags={"unet.kind": "search"}, warn=lambda line: say(line))
    if parent.active:
        parent.log_params({"space": {d.option: {d.kind.value: list(d.values)} for d in dims}, "trials": args.trials,
                           "scheduler": args.scheduler, "metric": args.metric})

    tune_path = storage.join(output, TUNE_FOLDER)
    fs, path = storage.resolve(tune_path)
    trainable = ray.tune.with_resources(
        _trial_function(fixed, dims, output, tracking, parent.run_id, os.getcwd()), {"CPU": CPU_PER_TRIAL_DRIVER})
    if ray.tune.Tuner.can_restore(f"{path}/search", storage_filesystem=fs):
        say(f"resuming the search in {output}")
        tuner = ray.tune.Tuner.restore(f"{path}/search", trainable, resume_errored=True, storage_filesystem=fs)
    else:
        # max_t past the last epoch: a trial that runs all its epochs ends by itself and writes its
        # bundle; Tune stopping it at max_t would kill it before the bundle is written.
        scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=args.epochs + 1, grace_period=1,
                                   reduction_factor=2) if args.scheduler == "asha" else FIFOScheduler())
        tuner = ray.tune.Tuner(
            trainable, param_space={d.option: _domain(d) for d in dims},
            tune_config=ray.tune.TuneConfig(num_samples=args.trials, metric=args.metric, mode="max",
                                            scheduler=scheduler, max_concurrent_trials=args.max_concurrent,
                                            search_alg=_searcher(args.search_seed)),
            run_config=ray.tune.RunConfig(name="search", storage_path=path, storage_filesystem=fs, verbose=0),
        )
    say(f"searching {len(dims)} options over {args.trials} trials ({args.scheduler}), {args.metric} to maximise")
    timer = Timer()
    grid = tuner.fit()
    rows = [_row(r, args.metric, output) for r in grid]
    _publish(rows, output, args, dims, parent)
    parent.close("FINISHED" if any(r.status is TrialStatus.FINISHED for r in rows) else "FAILED")
    best = best_trial(rows)
    counts = {s: sum(r.status is s for r in rows) for s in TrialStatus}
    print(f"{len(rows)} trials in {timer.seconds:.0f}s: {counts[TrialStatus.FINISHED]} finished, "
          f"{counts[TrialStatus.STOPPED]} stopped early, {counts[TrialStatus.FAILED]} failed"
          + (f"; best {best.trial_id}: {args.metric} {best.best_metric:.4f} -> {output}/best" if best else ""))
    if parent.lost:
        print(f"tracking was lost: {parent.lost}")
    if best is None:
        raise JobError(f"no trial finished with a bundle; see {output}/report.html and {output}/trials.parquet")
    return Exit.OK if not counts[TrialStatus.FAILED] else Exit.PARTIAL


def _start_ray(args: argparse.Namespace, probe: train.TrainRun) -> None:
    """The search's Ray: the cluster of --address, or a local instance whose address every one of
    its processes knows. A trial ASHA stops is killed with its Ray Train controller, and Ray
    Train's PlacementGroupCleaner (an actor of that instance) then removes the trial's worker
    placement group, after asking the state API whether the controller is dead. Without an
    address the state API looks for "the" Ray instance of the machine and fails where two run
    ("Found multiple active Ray instances"), and a local instance started without its API server
    has no state API at all: the group would stay and later trials wait for its CPUs for ever. So:
    the GCS port is chosen here (RAY_GCS_SERVER_PORT), RAY_ADDRESS names it in every worker's
    environment, and the API server runs on a free port (docs/design.md, "Search")."""
    if not cluster_address(args.address):
        import ray

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        address = f"{ray.util.get_node_ip_address()}:{port}"
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        try:
            ray.init(address="local", num_cpus=args.num_cpus or local_cpus(
                         args.workers.max, args.cpus_per_worker, os.cpu_count() or 1),
                     include_dashboard=None, dashboard_port=0,  # the API server alone, on a free port
                     runtime_env={"env_vars": {**worker_env(args.verbose), **job_settings_env(),
                                               "RAY_ADDRESS": address}},
                     log_to_driver=args.verbose, logging_level=logging.INFO if args.verbose else logging.ERROR)
        finally:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        if ray.get_runtime_context().gcs_address != address:
            say(f"the search's Ray instance is at {ray.get_runtime_context().gcs_address}, not {address}: a trial "
                "stopped early may keep its workers' CPUs")
        quiet_ray_data(args.verbose)
    train.start_ray(args, probe)  # attaches to --address; imports TensorFlow quietly


def _trial_function(fixed: list[str], dims: list[Dimension], output: str, tracking: TrackingConfig,
                    parent_run_id: str | None, launched_in: str):
    def trial(config: dict) -> None:
        import ray.tune
        from ray.tune.integration.ray_train import TuneReportCallback

        # Tune starts a trial in a folder of its own: relative paths of the command line (--data,
        # --config, --initial-weights) mean the folder the search was started in.
        if os.path.isdir(launched_in):
            os.chdir(launched_in)
        trial_id = ray.tune.get_context().get_trial_id()
        argv = fixed + trial_flags(dims, config) + ["--output", f"{output}/trials/{trial_id}",
                                                    "--storage", f"{output}/trials.runs", "--run-name", trial_id]
        args = train.parse_args(train.build_parser(), argv)
        run = train.plan_run(args, check_run=False)
        child = TrackingConfig(uri=tracking.uri, experiment=tracking.experiment, run_name=trial_id,
                               parent_run_id=parent_run_id) if tracking.uri else tracking
        train.fit_and_write(run, callbacks=[TuneReportCallback()], tracking=child, quiet=True)

    return trial


def _domain(d: Dimension):
    import ray.tune

    if d.kind is Kind.CHOICE:
        return ray.tune.choice(list(d.values))
    if d.kind is Kind.UNIFORM:
        return ray.tune.uniform(*d.values)
    if d.kind is Kind.LOGUNIFORM:
        return ray.tune.loguniform(*d.values)
    return ray.tune.randint(*d.values)


def _searcher(seed: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed)


def _sample_flags(dims: list[Dimension]) -> list[str]:
    """One point of the space (the first choice, the lower bounds): what the up-front check parses."""
    return trial_flags(dims, {d.option: d.values[0] for d in dims})


def _row(result, metric: str, output: str) -> TrialRow:
    """One trial's row from Tune's result: Tune adds `trial_id` and `time_total_s` to every report."""
    metrics = result.metrics or {}
    trial_id = str(metrics.get("trial_id") or os.path.basename(str(result.path or "?").rstrip("/")))
    frame = result.metrics_dataframe
    curve = [float(v) for v in frame[metric]] if frame is not None and metric in frame else []
    bundle = f"{output}/trials/{trial_id}"
    has_bundle = storage.exists(storage.join(bundle, "bundle.json"))
    if result.error is not None:
        status, error = TrialStatus.FAILED, _reason(result.error)
    elif has_bundle:
        status, error = TrialStatus.FINISHED, None
    else:  # no error and no bundle: the scheduler stopped it
        status, error = TrialStatus.STOPPED, None
    return TrialRow(trial_id=trial_id, params=dict(result.config or {}), best_metric=best_of(curve), epochs=len(curve),
                    status=status, seconds=float(metrics.get("time_total_s") or 0.0),
                    bundle=bundle if has_bundle else None, curve=curve, error=error)


def _reason(error: BaseException) -> str:
    """The trial's own error (Ray wraps it: RayTaskError.cause), its last line, without colour codes."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).strip().splitlines() if line.strip()]
    text = f"{type(cause).__name__}: {lines[-1]}" if lines else type(cause).__name__
    return text[:300]


def _publish(rows: list[TrialRow], output: str, args, dims: list[Dimension], parent: Tracker) -> None:
    storage.write_bytes(storage.join(output, "trials.parquet"), trials_table(rows, args.metric))
    best = best_trial(rows)
    if best is not None:
        for entry in storage.list_files(best.bundle):
            rel = entry.uri[len(best.bundle.rstrip("/")) + 1:]
            storage.write_bytes(storage.join(output, "best", rel), storage.read_bytes(entry.uri))
    storage.write_bytes(storage.join(output, "report", "curves.png"), curves_png(rows, args.metric))
    search = {"space": {d.option: {d.kind.value: list(d.values)} for d in dims}, "trials": args.trials,
              "scheduler": args.scheduler, "metric": args.metric, "data": args.data}
    storage.write_bytes(storage.join(output, "report.html"),
                        tune_report_html(storage.basename(output), rows, args.metric, args.scheduler, search))
    if parent.active and best is not None:
        parent.set_tags({"unet.best_trial": best.trial_id})
        parent.log_metrics({f"best_{args.metric}": best.best_metric}, 0)
    log.info("trials table -> %s", storage.join(output, "trials.parquet"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
