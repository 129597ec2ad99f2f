"""The `reid-accel` command.

    reid-accel data info NAME ROOT [--subset labeled|detected] [--verify]   # counts per split, checked
    reid-accel data synth ROOT --domain {a,b} [--seed N] [--ids N]          # draw a synthetic world
    reid-accel data lookalike NAME ROOT [--official]                        # a fake folder in NAME's layout
    reid-accel train CONFIG [--output-dir DIR] [--resume] [key=value ...]   # train; also via accelerate launch
    reid-accel eval MODEL --dataset NAME --root ROOT [--flip] [--rerank]     # mAP / CMC of a model, pictures
    reid-accel push RUN_OR_MODEL_DIR --repo-id USER/NAME [--private]        # share a model on the Hub

Each sub-command is a parser built by an `_add_*` function and a handler `(args) -> int` set as the parser's
`handler` default; handlers import what they need, so `--help` answers without loading torch. Input mistakes
(`ReidAccelError`, or `FileNotFoundError` from our own checks) become one line `reid-accel: error: <message>` on
stderr and exit status 2, never a traceback; argparse's own errors also exit with 2. Logging is configured
here, at INFO with a plain format, and nowhere in the library.
"""

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reid_accel.errors import DatasetLayoutError, ReidAccelError

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(levelname)s: %(message)s"
SUBSET_HELP = "cuhk03 only: labeled or detected (default: the subset folder ROOT points at, else labeled)"


def _is_main_process() -> bool:
    """Under a launcher every process runs the command; only the first one reports."""
    return os.environ.get("RANK", "0") == "0"


def _print_report(
    name: str,
    dataset: Mapping[str, Any],
    root: Path,
    options: Mapping[str, str],
    *,
    check: bool = True,
    verify: bool = False,
) -> int:
    """Print the images / identities / cameras table of a `DatasetDict`.

    With `check`, warn where it departs from the official counts of benchmark `name` loaded from `root` with
    `options`; with `verify`, decode every image.
    """
    from reid_accel.data import compare_stats, dataset_stats, official_stats, verify_images
    from reid_accel.data.benchmarks import get_benchmark

    stats = dataset_stats(dataset)
    print(f"{'split':<8} {'images':>8} {'identities':>10} {'cameras':>7}")
    for split, counts in stats.items():
        print(f"{split:<8} {counts.images:>8} {counts.identities:>10} {counts.cameras:>7}")
    official = official_stats(name, root, **options) if check else None
    for problem in compare_stats(stats, official) if official is not None else []:
        logger.warning("%s differs from the official release: %s", get_benchmark(name)[0], problem)
    if verify:
        for split, records in dataset.items():
            logger.info("%s: decoded all %d images", split, verify_images(records))
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from reid_accel.data import load_benchmark

    options = {"subset": args.subset} if args.subset is not None else {}
    dataset = load_benchmark(args.name, args.root, cache_dir=args.cache_dir, **options)
    return _print_report(args.name, dataset, args.root, options, verify=args.verify)


def _data_synth(args: argparse.Namespace) -> int:
    from reid_accel.data import load_benchmark
    from reid_accel.data.synthetic import generate_world

    size = {"num_ids": args.ids} if args.ids is not None else {}
    generate_world(args.root, domain=args.domain, seed=args.seed, **size)
    return _print_report("synthetic", load_benchmark("synthetic", args.root, cache_dir=args.cache_dir), args.root, {})


def _data_lookalike(args: argparse.Namespace) -> int:
    from reid_accel.data import load_benchmark
    from reid_accel.data.benchmarks import get_benchmark
    from reid_accel.data.lookalike import WRITERS

    name, module = get_benchmark(args.name)
    if name not in WRITERS:
        raise DatasetLayoutError(f"no look-alike writer for {name!r}; expected one of {', '.join(WRITERS)}")
    if args.official and module.OFFICIAL_STATS is None:
        raise DatasetLayoutError(f"{name!r} has no official statistics to imitate")
    WRITERS[name](args.root, stats=module.OFFICIAL_STATS if args.official else None)
    dataset = load_benchmark(name, args.root, cache_dir=args.cache_dir)
    return _print_report(name, dataset, args.root, {}, check=args.official)


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="inspect benchmark folders, draw synthetic worlds")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    info = data_commands.add_parser("info", help="images, identities and cameras per split, checked")
    info.add_argument("name", help="benchmark: market1501, dukemtmc, cuhk03, msmt17, market_style, synthetic")
    info.add_argument("root", type=Path, help="the benchmark folder as extracted")
    info.add_argument("--subset", help=SUBSET_HELP)
    info.add_argument("--verify", action="store_true", help="also decode every image")
    info.set_defaults(handler=_data_info)

    synth = data_commands.add_parser("synth", help="draw a synthetic world in Market-1501's layout")
    synth.add_argument("root", type=Path, help="folder to write the world to")
    synth.add_argument("--domain", required=True, choices=("a", "b"), help="a: 4 cameras, mild; b: 5, harsh")
    synth.add_argument("--seed", type=int, default=0, help="seeds people, cameras and images (default 0)")
    synth.add_argument("--ids", type=int, help="training identities (default: the generator's)")
    synth.set_defaults(handler=_data_synth)

    lookalike = data_commands.add_parser("lookalike", help="write a tiny folder in a benchmark's exact layout")
    lookalike.add_argument("name", help="benchmark: market1501, dukemtmc, cuhk03, msmt17, market_style")
    lookalike.add_argument("root", type=Path, help="new folder to write")
    lookalike.add_argument("--official", action="store_true", help="the official image and identity counts")
    lookalike.set_defaults(handler=_data_lookalike)

    for command in (info, synth, lookalike):
        command.add_argument("--cache-dir", type=Path, help="parsed tables cache (default: datasets' cache)")


def _train(args: argparse.Namespace) -> int:
    import signal

    from reid_accel.config import load_config
    from reid_accel.engine.train import TrainingInterrupted, train

    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.resume:
        overrides.append("train.resume=auto")
    cfg = load_config(args.config, overrides)
    try:
        result = train(cfg)
    except TrainingInterrupted as stop:
        again = " ".join(["reid-accel train", str(args.config), *args.overrides, "--output-dir", cfg.train.output_dir])
        print(f"{stop}; resume with: {again} --resume", file=sys.stderr)
        return 128 + stop.signum if stop.signum in (signal.SIGINT, signal.SIGTERM) else 1
    if not _is_main_process():
        return 0
    from reid_accel.hub import write_model_card

    write_model_card(result.model_dir, metrics_path=result.output_dir / "metrics.json")
    if result.evaluations:
        last = result.evaluations[-1]
        print(f"{'epoch':>5} {'mAP':>6} {'rank-1':>7} {'rank-5':>7} {'rank-10':>8}   ({cfg.eval_domain.name})")
        for row in result.evaluations:
            print(
                f"{row['epoch']:>5} {100 * row['mAP']:>6.1f} {100 * row['rank1']:>7.1f} "
                f"{100 * row['rank5']:>7.1f} {100 * row['rank10']:>8.1f}"
            )
        logger.info(
            "final target mAP %.1f%%, rank-1 %.1f%%; model in %s",
            100 * last["mAP"],
            100 * last["rank1"],
            result.model_dir,
        )
    return 0


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train on a labelled source and an unlabelled target")
    train.add_argument("config", type=Path, help="experiment YAML, e.g. configs/duke2market.yaml")
    train.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr_backbone=0.02"
    )
    train.add_argument("--output-dir", help="where checkpoints, metrics.json and the model go (train.output_dir)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the output dir")
    train.set_defaults(handler=_train)


def _eval(args: argparse.Namespace) -> int:
    from reid_accel.config import DomainConfig
    from reid_accel.engine.evaluate import evaluate_model
    from reid_accel.hub import load_encoder

    options = {"subset": args.subset} if args.subset is not None else {}
    encoder = load_encoder(args.model)
    metrics = evaluate_model(
        encoder,
        DomainConfig(name=args.dataset, root=str(args.root), options=options),
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        flip=args.flip,
        rerank=args.rerank,
        ap_mode=args.ap_mode,
        model_reference=str(args.model),
    )
    if _is_main_process():
        print(f"{'dataset':<12} {'queries':>7} {'mAP':>6} {'rank-1':>7} {'rank-5':>7} {'rank-10':>8}")
        print(
            f"{args.dataset:<12} {metrics['num_valid_queries']:>7} {100 * metrics['mAP']:>6.1f} "
            f"{100 * metrics['rank1']:>7.1f} {100 * metrics['rank5']:>7.1f} {100 * metrics['rank10']:>8.1f}"
        )
    return 0


def _add_eval_command(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="rank a benchmark's query/gallery split with a trained model")
    evaluate.add_argument("model", help="a save_pretrained folder, a run folder, a checkpoint folder or a Hub repo id")
    evaluate.add_argument("--dataset", required=True, help="benchmark: market1501, dukemtmc, cuhk03, msmt17, ...")
    evaluate.add_argument("--root", required=True, type=Path, help="the benchmark folder as extracted")
    evaluate.add_argument("--subset", help=SUBSET_HELP)
    evaluate.add_argument("--flip", action="store_true", help="average each feature with its mirror image's")
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
    evaluate.add_argument("--ap-mode", choices=("standard", "trapezoid"), default="standard", help="AP convention")
    evaluate.add_argument("--output-dir", type=Path, help="write metrics.json, features and pictures here")
    evaluate.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    evaluate.add_argument("--num-workers", type=int, default=4, help="image decoding processes (default 4)")
    evaluate.set_defaults(handler=_eval)


def _push(args: argparse.Namespace) -> int:
    from reid_accel.hub import push_model

    url = push_model(args.path, repo_id=args.repo_id, private=args.private, revision=args.revision)
    print(url)
    return 0


def _add_push_command(commands: argparse._SubParsersAction) -> None:
    push = commands.add_parser("push", help="upload a trained model with its card to the Hugging Face Hub")
    push.add_argument("path", type=Path, help="a training run folder or a model folder")
    push.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.set_defaults(handler=_push)


def build_parser() -> argparse.ArgumentParser:
    """The `reid-accel` parser; each command group adds its sub-commands here."""
    parser = argparse.ArgumentParser(
        prog="reid-accel", description="Domain-adaptive person re-identification on the Hugging Face stack."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(commands)
    _add_train_command(commands)
    _add_eval_command(commands)
    _add_push_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for bad input, with one line on stderr).

    Args:
        argv: the arguments after the program name; default `sys.argv[1:]`.
    """
    # Idle OpenMP threads sleep instead of spinning, so loader workers or another job on the same cores do not
    # slow training several-fold. Must be set before torch is imported (the handlers import it); users may override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # argparse gives a trailing positional nothing once an option came between: `train C --resume k=v`.
        if extra and args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # argparse exits 2 on bad arguments, 0 after --help
        return exit_.code if isinstance(exit_.code, int) else 0
    logging.basicConfig(level=logging.INFO if _is_main_process() else logging.WARNING, format=LOG_FORMAT)
    try:
        return args.handler(args)
    except (ReidAccelError, FileNotFoundError) as err:
        message = " ".join(str(err).split())
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
