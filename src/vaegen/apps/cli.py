"""`vaegen` on the command line: train, test, tune, compare, config, data. Bad input exits non-zero with one readable paragraph."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

from vaegen import __version__
from vaegen.errors import CheckpointError, ConfigError, TrainingDiverged, VaegenError, plural


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaegen", description="Train and use variational autoencoders for images.")
    parser.add_argument("--version", action="version", version=f"vaegen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("--config", type=Path, help="YAML config (see configs/)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=5 (repeatable; VALUE is YAML)")
    train.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                       help="continue the latest run of --config, or the run in RUN_DIR (logs/<run>)")

    test = commands.add_parser("test", help="score a trained model (FID/KID, recon, KL) and draw sample, reconstruction and interpolation grids")
    test.add_argument("--config", type=Path, help="test YAML (see configs/test_apples.yaml)")
    test.add_argument("--checkpoint", type=Path, help="best_models/<run> (overrides the config's checkpoint)")
    test.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a test config value, e.g. --set num_samples=1000")

    tune = commands.add_parser("tune", help="search hyper-parameters with Ray Tune + Optuna (ASHA early stopping)")
    tune.add_argument("--config", type=Path, required=True, help="sweep YAML (see configs/tune_apples.yaml)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a sweep value, e.g. --set tune.num_samples=4 or --set overrides.train.epochs=5")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are not rerun")
    tune.add_argument("--address", metavar="HOST:PORT", help="join a running Ray cluster (`ray start --head` prints it; `auto`: the one on this machine); "
                      "default: $RAY_ADDRESS if set, else a Ray instance of the sweep's own")

    compare = commands.add_parser("compare", help="compare runs: one table of every metric, overlaid curves, sample grids side by side")
    compare.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_MODEL",
                         help="a run folder (logs/<run>), a model folder (best_models/<run>) or a sweep folder (logs/<sweep>: its trials); two runs or more")
    compare.add_argument("--out", type=Path, metavar="DIR", help="where compare.md and its pictures go (default: comparisons/<run>-vs-<run>...)")
    compare.add_argument("--metric", nargs="+", action="extend", metavar="KEY",
                         help="the table's metric columns: keys or patterns, e.g. --metric val_nelbo 'fd_*' (default: every metric of any run)")
    compare.add_argument("--strict", action="store_true", help="refuse runs whose FD/KID were measured under different protocols (exit 2)")

    show = commands.add_parser("config", help="check a training config as training will and print it with every default filled in")
    show.add_argument("--config", type=Path, required=True, help="training YAML (see configs/)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value first, e.g. --set train.epochs=5 (repeatable; VALUE is YAML)")

    from vaegen.data.prepare import WIKIART_GENRES  # light: vaegen data imports torch only once it writes

    data = commands.add_parser("data", help="build a training folder from a downloaded dataset")
    builders = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    fruit_help = "3 apple classes (Golden, Golden-Red, Red) from Fruit-360"
    fruit = builders.add_parser(
        "fruit360", help=fruit_help,
        description=f"{fruit_help}: Golden = Apple Golden 1-3, Golden-Red = Apple Red Yellow 1-2, Red = Apple Red 1-3, "
        "from both Training/ and Test/. Download from Kaggle (moltean/fruits) or GitHub (Horea94/Fruit-Images-Dataset).",
    )
    wikiart_help = "one WikiArt style, optionally one folder per genre"
    wikiart = builders.add_parser(
        "wikiart", help=wikiart_help,
        description=f"{wikiart_help}, from the ArtGAN WikiArt dump (the wikiart/ images and wikiart_csv/).",
    )
    fruit.add_argument("--src", type=Path, required=True, help="the extracted download: the folder holding Training/ and Test/")
    wikiart.add_argument("--src", type=Path, required=True, help="the extracted wikiart/ folder: one folder per style (Impressionism/, ...), with wikiart_csv/ in it")
    for sub in (fruit, wikiart):
        sub.add_argument("--out", type=Path, required=True, help="an empty or new folder to build into")
        sub.add_argument("--link", action="store_true", help="hard-link instead of copying where possible")
    wikiart.add_argument("--style", default="Impressionism", help="the style folder to take (default: %(default)s)")
    wikiart.add_argument("--by", choices=["genre"], default=None, help="one class folder per genre (default: the whole style is one class)")
    wikiart.add_argument("--genres", default=None,
                         help=f"comma-separated genres to keep with --by genre (default: {','.join(WIKIART_GENRES)})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        return COMMANDS[args.command](args)
    except VaegenError as exc:
        if args.debug:  # the traceback as well, and still the error's own exit code
            traceback.print_exc()
        # under torchrun every process meets the same config error or divergence: process 0 says it for all of
        # them, and torchrun stops the others as soon as it exits. They wait for that rather than race it (a loaded
        # machine can hold process 0 back for seconds), and say the error themselves only if process 0 never
        # does, because the error was theirs alone
        under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1  # distributed's checks, without importing torch
        if isinstance(exc, (ConfigError, TrainingDiverged)) and under_torchrun and os.environ.get("RANK", "0") != "0":
            time.sleep(30.0)
        print(f"error: {one_paragraph(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # `vaegen train` says itself where a run it started can continue
        print("interrupted.", file=sys.stderr)
        return 130


def one_paragraph(message: str) -> str:
    """Control characters that a message quotes (a folder named with a newline) written as escapes, as Python writes them."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda match: repr(match.group())[1:-1], message)


def cmd_tune(args) -> int:
    from vaegen.tuning.space import load_sweep
    from vaegen.tuning.sweep import format_table, run_sweep

    sweep = load_sweep(args.config, args.overrides)
    started = time.perf_counter()
    result = run_sweep(sweep, resume=args.resume, address=args.address)
    print(f"\n{format_table(result.trials, sweep)}\n")
    failed = sum(trial.status == "failed" for trial in result.trials)
    print(
        f"sweep {sweep.name}: {plural(len(result.trials), 'trial')}{f' ({failed} failed)' if failed else ''} in "
        f"{time.perf_counter() - started:.0f} s, optimising {sweep.metric}"
    )
    print(f"  summary          {result.summary_csv}")
    if result.plot:
        print(f"  plot             {result.plot}")
    if result.best_dir:
        print(f"  best model       {result.best_dir}/  (vaegen test --checkpoint {result.best_dir})")
    print(f"  trial runs       {sweep.trials_dir}/<trial>/  (TensorBoard: tensorboard --logdir {sweep.trials_dir})")
    if not result.complete:
        print(f"interrupted: continue with `vaegen tune --config {args.config} --resume`; finished trials are kept.", file=sys.stderr)
        return 130
    return 0


def cmd_compare(args) -> int:
    from vaegen.evaluation import compare

    comparison = compare.compare(args.paths, args.metric)
    if args.strict:
        compare.refuse_mismatch(comparison.entries)
    out = args.out or compare.default_out_dir(args.paths)
    files = compare.write(comparison, out)
    print(compare.console_table(comparison))
    for note in compare.protocol_notes(comparison.entries):
        print(f"\n{note}")
    print(f"\nwrote {', '.join(path.name for path in files)} to {out}/")
    return 0


def cmd_config(args) -> int:
    from vaegen.config import load_config
    from vaegen.models import resolved_and_checked

    # as training will take it: the family's own rules too, a second stage's settings from its first stage
    config, _ = resolved_and_checked(load_config(args.config, args.overrides))
    print(config.to_yaml(), end="")
    root, source = config.data.root, config.data.source
    # valid as a config, but training would stop at once (a torchvision dataset is downloaded then)
    if source == "folder" and not root.is_dir():
        print(f"note: data.root {root} does not exist here yet; build it (docs/guide.md, Datasets) or "
              f"point at a copy with --set data.root=DIR.", file=sys.stderr)
    if source == "array" and not root.is_file():
        print(f"note: data.root {root} is no file here; point at the array with --set data.root=FILE.", file=sys.stderr)
    return 0


def cmd_test(args) -> int:
    from vaegen.config import load_test_config
    from vaegen.evaluation.frechet import protocol_text
    from vaegen.evaluation.report import run_test

    overrides = list(args.overrides) + ([f"checkpoint={args.checkpoint}"] if args.checkpoint else [])
    report = run_test(load_test_config(args.config, overrides))
    width = max(len(key) for key in report.metrics)
    print()
    for key, value in report.metrics.items():
        if key == "protocol":
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        if isinstance(value, list):  # per-dimension numbers: hundreds of them for a wide latent
            shown = f"{len(value)} values in metrics.json"
        print(f"  {key:<{width}}  {shown}")
    protocol = report.metrics.get("protocol")
    if protocol:
        print(f"  protocol: {protocol_text(protocol)}")
    print(f"wrote {', '.join(path.name for path in report.files)} to {report.output_dir}/")
    return 0


def cmd_train(args) -> int:
    from vaegen.training import distributed
    from vaegen.training.log import kept_in, log
    from vaegen.training.loop import nothing_left, train

    config, paths, resume = resolve_run(args)
    if resume and not distributed.launched_by_torchrun():
        from vaegen.checkpoint import load_training_state

        # said before the data, the networks and the real features are set up (train() reads the tensors)
        done = nothing_left(paths.run_dir, load_training_state(paths.last_checkpoint, mmap=True)["epoch"], config.train.epochs)
        if done:
            print(done)
            return 0
    if distributed.launched_by_torchrun():  # one run folder for every process (new names carry the time)
        distributed.init(config.train.device)
        paths = distributed.broadcast(paths)
    started = time.perf_counter()
    main_process = distributed.is_main()
    log_file = paths.run_dir / "train.log"

    def kept(echo: bool = True):  # train.log keeps what the console showed, once the run has one
        return kept_in(log_file if main_process and log_file.is_file() else None, echo=echo and main_process)

    ended_well = False
    try:
        result = train(config, paths, resume=resume)
        ended_well = True
    except KeyboardInterrupt:
        with kept():
            log.warning(f"interrupted. {where_to_continue(paths)}")
        return 130
    except VaegenError as exc:
        with contextlib.suppress(OSError), kept(echo=False):  # main() prints it; a full disk must not replace it
            log.error(f"error: {exc}")
        raise
    finally:
        distributed.finish(together=ended_well)
    if not main_process:
        return 0
    with kept():
        log.info(f"\ndone: {result.epochs_run} epoch(s) in {time.perf_counter() - started:.0f} s")
        if result.best_epoch is not None:
            log.info(f"  best checkpoint  {paths.best_dir}/  (epoch {result.best_epoch}, {result.criterion} {result.best_value:.4f})")
            log.info(f"  best samples     {paths.best_dir / 'samples.png'}")
        if result.last_samples:
            log.info(f"  latest samples   {result.last_samples}")
        log.info(f"  curves           {paths.run_dir / 'curves.png'}")
        log.info(f"  TensorBoard      tensorboard --logdir {paths.run_dir / 'tensorboard'}")
        log.info(f"  continue         vaegen train --resume {paths.run_dir} --set train.epochs={config.train.epochs * 2}")
    return 0


def where_to_continue(paths) -> str:
    """After Ctrl+C: the command that continues this run, and from which epoch (the write in flight has finished)."""
    from vaegen.checkpoint import load_training_state

    if not paths.last_checkpoint.is_file():
        return f"Nothing of {paths.run_dir} was saved yet (the first checkpoint is written when the first epoch ends); start the run again."
    try:
        epoch = f"after epoch {load_training_state(paths.last_checkpoint, mmap=True)['epoch']}"
    except (VaegenError, KeyError):
        epoch = f"from {paths.last_checkpoint}"
    return f"Continue with `vaegen train --resume {paths.run_dir}`: it picks up {epoch}."


def resolve_run(args):
    """The config, run folders and resume flag for `vaegen train` (new run or --resume)."""
    from vaegen.config import load_config
    from vaegen.training import distributed
    from vaegen.training.runs import RunPaths, claim_new_name, name_taken, new_run_name, taken

    if args.resume is None:
        if args.config is None:
            raise ConfigError("vaegen train needs --config FILE (examples in configs/), or --resume RUN_DIR.")
        config = load_config(args.config, args.overrides)
        if config.output.run_name:
            paths = RunPaths.for_config(config, config.output.run_name)
            if taken(paths):
                raise name_taken(paths)
        elif distributed.launched_first():  # under torchrun process 0 names the run and tells the others
            paths = claim_new_name(config, args.config)
        else:
            paths = RunPaths.for_config(config, new_run_name(config, args.config))
        return config, paths, False

    if args.resume is True:
        if args.config is None:
            raise ConfigError("--resume without a RUN_DIR needs --config FILE to find the run; or pass --resume logs/<run>.")
        wanted = load_config(args.config, args.overrides)
        run_dir = latest_run(wanted.output.logs_dir, wanted.output.run_name or args.config.stem, exact=bool(wanted.output.run_name))
    else:
        run_dir = Path(args.resume)
        if args.config is not None:
            print(f"note: resuming uses {run_dir}/config.yaml, the run's own config; --config is not read.", file=sys.stderr)
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise CheckpointError(
            f"{run_dir} has no checkpoints/last.pt to resume from. Pass a run folder written by vaegen train "
            f"(logs/<run>), or start a new run without --resume."
        )
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(
            f"{run_dir} has a checkpoint but no config.yaml, which --resume reads. Copy {run_dir / 'checkpoints' / 'config.yaml'} "
            f"(the copy vaegen train keeps beside last.pt) to {run_dir / 'config.yaml'}, or start a new run without --resume."
        )
    config = load_config(run_dir / "config.yaml", args.overrides)
    return config, RunPaths(run_dir.name, run_dir, config.output.best_dir / run_dir.name), True


def latest_run(logs_dir: Path, name: str, exact: bool) -> Path:
    candidates = [logs_dir / name] if exact else sorted(logs_dir.glob(f"{name}-*"))
    runs = [p for p in candidates if (p / "checkpoints" / "last.pt").is_file()]
    if not runs:
        raise CheckpointError(
            f"found no run of {name!r} with a checkpoint in {logs_dir}/ to resume. Start one without --resume, "
            f"or pass the run folder: --resume logs/<run>."
        )
    latest = max(runs, key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime)
    newer = [p.name for p in candidates if p.is_dir() and p not in runs and p.stat().st_mtime >= latest.stat().st_mtime]
    if newer:  # e.g. a run stopped before its first epoch ended: there is nothing in it to resume
        print(f"note: resuming {latest}; the newer {', '.join(newer)} has no checkpoint to resume from.", file=sys.stderr)
    return latest


def cmd_data(args) -> int:
    from vaegen.data import prepare

    if args.dataset == "fruit360":
        counts = prepare.build_fruit360(args.src, args.out, link=args.link)
    else:
        genres = [genre for genre in args.genres.split(",") if genre] if args.genres is not None else None  # "" keeps none
        counts = prepare.build_wikiart(args.src, args.out, style=args.style, by=args.by, genres=genres, link=args.link)
    for name, count in counts.items():
        print(f"  {name:<20} {count:>6} {'image' if count == 1 else 'images'}")
    print(f"built {args.out} ({plural(sum(counts.values()), 'image')}); train on it with --set data.root={args.out}")
    return 0


COMMANDS = {"train": cmd_train, "test": cmd_test, "tune": cmd_tune, "compare": cmd_compare, "config": cmd_config, "data": cmd_data}
