"""The `reid-accel` command.

    reid-accel data info NAME ROOT [--subset S] [--option K=V] [--verify]   # counts per split, checked
    reid-accel data synth ROOT --domain {a,b} [--seed N] [--ids N]          # draw a synthetic world
    reid-accel data lookalike NAME ROOT [--official]                        # a fake folder in NAME's layout
    reid-accel train CONFIG [--output-dir DIR] [--resume] [key=value ...]   # train; also via accelerate launch
    reid-accel eval MODEL --dataset NAME --root ROOT [--flip] [--rerank]     # mAP / CMC of a model, pictures
    reid-accel push RUN_OR_MODEL_DIR --repo-id USER/NAME [--private]        # share a model on the Hub
    reid-accel export MODEL --format onnx --output reid.onnx [--batch dynamic] [--half]   # for other runtimes
    reid-accel embed MODEL FOLDER --output features.safetensors              # features of a folder of images
    reid-accel search build|add|query ...                                   # a saved gallery; find a person in it

Each sub-command is a parser built by an `_add_*` function and a handler `(args) -> int` set as the parser's
`handler` default; handlers import what they need, so `--help` answers without loading torch. Input mistakes
(`ReidAccelError`, or an `OSError` about a path the user gave) become one line `reid-accel: error: <message>` on
stderr and exit status 2, never a traceback; argparse's own errors also exit with 2. Anything else is a bug and
keeps its traceback. The command configures logging, at INFO with a plain format; the library only adds the
run's `train.log` handler (and raises the package logger to INFO) while a run records.
"""

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reid_accel.errors import DatasetLayoutError, ReidAccelError

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(levelname)s: %(message)s"
MODEL_HELP = "a save_pretrained folder, a run folder, a checkpoint folder or a Hub repo id"
RESIZE_HELP = "pil: antialiased, as training (default); opencv: bilinear without antialiasing, as trackers resize"
SUBSET_HELP = "cuhk03 only: labeled or detected (default: the subset folder ROOT points at, else labeled)"


def _is_main_process() -> bool:
    """Under a launcher every process runs the command; only the first one reports."""
    return os.environ.get("RANK", "0") == "0"


def _count(minimum: int):
    """An argparse type for whole numbers >= `minimum`, so a bad count is refused with the option's name."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    return parse


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

    options = dict(args.option)
    if args.subset is not None:
        options["subset"] = args.subset
    dataset = load_benchmark(args.name, args.root, cache_dir=args.cache_dir, **options)
    return _print_report(args.name, dataset, args.root, options, verify=args.verify)


def _option(text: str) -> tuple[str, Any]:
    """argparse type of `--option KEY=VALUE`: the value read as YAML, as config overrides are."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def _data_synth(args: argparse.Namespace) -> int:
    from reid_accel.data import load_benchmark
    from reid_accel.generators.synthetic import generate_world

    size = {"num_ids": args.ids} if args.ids is not None else {}
    generate_world(args.root, domain=args.domain, seed=args.seed, **size)
    return _print_report("synthetic", load_benchmark("synthetic", args.root, cache_dir=args.cache_dir), args.root, {})


def _data_lookalike(args: argparse.Namespace) -> int:
    from reid_accel.data import load_benchmark
    from reid_accel.data.benchmarks import get_benchmark
    from reid_accel.generators.lookalike import WRITERS

    name, benchmark = get_benchmark(args.name)
    if name not in WRITERS:
        raise DatasetLayoutError(f"no look-alike writer for {name!r}; expected one of {', '.join(WRITERS)}")
    if args.official and benchmark.official_stats is None:
        raise DatasetLayoutError(f"{name!r} has no official statistics to imitate")
    WRITERS[name](args.root, stats=benchmark.official_stats if args.official else None)
    dataset = load_benchmark(name, args.root, cache_dir=args.cache_dir)
    return _print_report(name, dataset, args.root, {}, check=args.official)


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="inspect benchmark folders, draw synthetic worlds")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    info = data_commands.add_parser("info", help="images, identities and cameras per split, checked")
    info.add_argument(
        "name", help="benchmark: market1501, dukemtmc, cuhk03, msmt17, market_style, synthetic, saved, folders, table"
    )
    info.add_argument("root", type=Path, help="the benchmark folder as extracted")
    info.add_argument("--subset", help=SUBSET_HELP)
    info.add_argument("--verify", action="store_true", help="also decode every image")
    info.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a benchmark option, e.g. camera_level=2 or test_fraction=0.2 (folders, table); repeatable",
    )
    info.set_defaults(handler=_data_info)

    synth = data_commands.add_parser("synth", help="draw a synthetic world in Market-1501's layout")
    synth.add_argument("root", type=Path, help="folder to write the world to")
    synth.add_argument("--domain", required=True, choices=("a", "b"), help="a: 4 cameras, mild; b: 5, harsh")
    synth.add_argument("--seed", type=_count(0), default=0, help="seeds people, cameras and images (default 0)")
    synth.add_argument("--ids", type=_count(2), help="training identities (default: the generator's)")
    synth.set_defaults(handler=_data_synth)

    lookalike = data_commands.add_parser("lookalike", help="write a tiny folder in a benchmark's exact layout")
    lookalike.add_argument("name", help="benchmark: market1501, dukemtmc, cuhk03, msmt17, market_style")
    lookalike.add_argument("root", type=Path, help="new folder to write")
    lookalike.add_argument("--official", action="store_true", help="the official image and identity counts")
    lookalike.set_defaults(handler=_data_lookalike)

    for command in (info, synth, lookalike):
        command.add_argument("--cache-dir", type=Path, help="parsed tables cache (default: datasets' cache)")


def _train(args: argparse.Namespace) -> int:
    wait_policy = _choose_openmp_wait_policy()  # before torch is imported
    if wait_policy is not None:
        logger.info("OpenMP: %s", wait_policy)
    import signal

    from reid_accel.config import load_config
    from reid_accel.engine.distributed import LostProcessError
    from reid_accel.engine.train import TrainingInterrupted, train

    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.resume:
        overrides.append("train.resume=auto")
    cfg = load_config(args.config, overrides)
    again = " ".join(["reid-accel train", str(args.config), *args.overrides, "--output-dir", cfg.train.output_dir])
    try:
        result = train(cfg)
    except TrainingInterrupted as stop:
        if _is_main_process():
            print(f"{stop}; resume with: {again} --resume", file=sys.stderr)
        return 128 + stop.signum if stop.signum in (signal.SIGINT, signal.SIGTERM) else 1
    except LostProcessError as lost:
        print(f"reid-accel: error: {lost}; resume from the last checkpoint with: {again} --resume", file=sys.stderr)
        return 1
    if not _is_main_process():
        return 0
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
    from reid_accel.engine.state import load_encoder

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
        resize=args.resize,
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
    evaluate.add_argument("model", help=MODEL_HELP)
    evaluate.add_argument("--dataset", required=True, help="benchmark: market1501, dukemtmc, cuhk03, msmt17, ...")
    evaluate.add_argument("--root", required=True, type=Path, help="the benchmark folder as extracted")
    evaluate.add_argument("--subset", help=SUBSET_HELP)
    evaluate.add_argument("--flip", action="store_true", help="average each feature with its mirror image's")
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
    evaluate.add_argument("--ap-mode", choices=("standard", "trapezoid"), default="standard", help="AP convention")
    evaluate.add_argument("--resize", choices=("pil", "opencv"), default="pil", help=RESIZE_HELP)
    evaluate.add_argument("--output-dir", type=Path, help="write metrics.json, features and pictures here")
    evaluate.add_argument("--batch-size", type=_count(1), default=256, help="images per forward pass (default 256)")
    evaluate.add_argument("--num-workers", type=_count(0), default=4, help="image decoding processes (default 4)")
    evaluate.set_defaults(handler=_eval)


def _push(args: argparse.Namespace) -> int:
    from reid_accel.hub import push_to_hub

    url = push_to_hub(args.path, repo_id=args.repo_id, private=args.private, revision=args.revision)
    print(url)
    return 0


def _add_push_command(commands: argparse._SubParsersAction) -> None:
    push = commands.add_parser("push", help="upload a trained model with its card to the Hugging Face Hub")
    push.add_argument("path", type=Path, help="a training run folder or a model folder")
    push.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.set_defaults(handler=_push)


def _batch_size_or_dynamic(text: str) -> int | None:
    """argparse type of `--batch`: a positive size, or None for "dynamic"."""
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive batch size or 'dynamic', got {text!r}")
    return int(text)


def _export(args: argparse.Namespace) -> int:
    from reid_accel.engine.state import load_encoder
    from reid_accel.errors import ExportError
    from reid_accel.export import dataset_images, export_encoder, validate_export

    if (args.dataset is None) != (args.root is None):
        raise ExportError("--dataset and --root go together (real images to check the exported model on)")
    validate_export(args.format, args.output, batch=args.batch, input_norm=args.input_norm)
    encoder = load_encoder(args.model)
    options = {"subset": args.subset} if args.subset is not None else {}
    images = dataset_images(encoder, args.dataset, args.root, options=options) if args.dataset else None
    report = export_encoder(
        encoder,
        args.output,
        fmt=args.format,
        batch=args.batch,
        half=args.half,
        images=images,
        tolerance=args.tolerance,
        input_norm=args.input_norm,
    )
    on_images = f", {len(images)} real images {report.image_diff:.2e}" if images is not None else ""
    print(
        f"max abs difference from PyTorch: random input {report.random_diff:.2e}{on_images} (tolerance {report.tolerance:.0e})"
    )
    written = [report.path, report.metadata_path, report.tracker_metadata_path]
    print(f"wrote {', '.join(str(path) for path in written if path is not None)}")
    return 0


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a model to ONNX, TorchScript or torch.export, checked first")
    export.add_argument("model", help=MODEL_HELP)
    export.add_argument("--format", required=True, choices=("onnx", "torchscript", "exported-program"))
    export.add_argument(
        "--output",
        required=True,
        type=Path,
        help="file to write (.onnx, .torchscript, .pt2); PATH.json and, for trackers, PATH.metadata.json beside",
    )
    export.add_argument(
        "--batch", type=_batch_size_or_dynamic, default=1, help="batch size the file takes, or 'dynamic' (default 1)"
    )
    export.add_argument("--half", action="store_true", help="float16 weights (float32 in and out)")
    export.add_argument(
        "--input-norm",
        choices=("model", "imagenet"),
        default="model",
        help="the input's mean/std: the model's own (default), or ImageNet's as trackers (BoxMOT) feed it; "
        "for a tracker: --input-norm imagenet --batch dynamic, .onnx or .torchscript",
    )
    export.add_argument("--dataset", help="also check on query images of this benchmark (with --root)")
    export.add_argument("--root", type=Path, help="the benchmark folder as extracted")
    export.add_argument("--subset", help="cuhk03 only: labeled (default) or detected")
    export.add_argument(
        "--tolerance", type=float, help="largest accepted feature difference (default 1e-4, 5e-3 half)"
    )
    export.set_defaults(handler=_export)


def _embed(args: argparse.Namespace) -> int:
    import torch

    from reid_accel.engine.state import load_encoder
    from reid_accel.inference import embed_images, list_images, save_embeddings

    files = list_images(args.folder)
    encoder = load_encoder(args.model)
    dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    features = embed_images(
        encoder,
        files,
        batch_size=args.batch_size,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        autocast_dtype=dtype,
        flip=args.flip,
        progress=True,
        resize=args.resize,
    )
    names = [path.relative_to(args.folder).as_posix() for path in files]
    save_embeddings(args.output, features, names, encoder=encoder, model=str(args.model))
    print(f"{len(names)} images -> ({features.shape[0]}, {features.shape[1]}) features in {args.output}")
    return 0


def _add_embed_command(commands: argparse._SubParsersAction) -> None:
    embed = commands.add_parser("embed", help="L2-normalised features of every image of a folder")
    embed.add_argument("model", help=MODEL_HELP)
    embed.add_argument("folder", type=Path, help="images below this folder, any depth, sorted by path")
    embed.add_argument("--output", required=True, type=Path, help="safetensors file: features (N, D) and paths")
    embed.add_argument("--batch-size", type=_count(1), default=64, help="images per forward pass (default 64)")
    embed.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: cuda when available)")
    embed.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="autocast")
    embed.add_argument("--flip", action="store_true", help="add each image's mirror image's feature")
    embed.add_argument(
        "--resize",
        choices=("pil", "opencv"),
        default="pil",
        help=RESIZE_HELP,
    )
    embed.set_defaults(handler=_embed)


def _search_build(args: argparse.Namespace) -> int:
    from reid_accel.engine.state import load_encoder
    from reid_accel.gallery import GalleryIndex, check_pattern
    from reid_accel.inference import list_images

    if args.output.exists():
        raise ReidAccelError(f"{args.output}: already exists; grow it with `reid-accel search add`")
    check_pattern(args.pattern)
    files = list_images(args.folder.resolve())
    gallery = GalleryIndex.from_images(
        load_encoder(args.model), files, pattern=args.pattern, batch_size=args.batch_size, device=args.device
    )
    if args.approximate:
        gallery.build_approximate(args.approximate)
    gallery.save(args.output)
    print(f"{len(gallery)} crops -> gallery {args.output} ({gallery.dim}-d, model {gallery.model_id})")
    return 0


def _search_add(args: argparse.Namespace) -> int:
    from reid_accel.engine.state import load_encoder
    from reid_accel.gallery import GalleryIndex
    from reid_accel.inference import list_images

    gallery = GalleryIndex.load(args.gallery)
    files = list_images(args.folder.resolve())
    gallery.add(
        GalleryIndex.from_images(
            load_encoder(args.model), files, pattern=gallery.pattern, batch_size=args.batch_size, device=args.device
        )
    )
    gallery.save(args.gallery)
    print(f"added {len(files)} crops -> gallery {args.gallery} now holds {len(gallery)}")
    return 0


def _search_query(args: argparse.Namespace) -> int:
    from reid_accel.engine.state import load_encoder
    from reid_accel.gallery import GalleryIndex
    from reid_accel.inference import list_images

    gallery = GalleryIndex.load(args.gallery)
    queries = [path for item in args.queries for path in (list_images(item) if item.is_dir() else [item])]
    missing = [str(path) for path in queries if not path.is_file()]
    if missing:
        raise ReidAccelError(f"{missing[0]}: no such query image")
    if args.approximate and gallery.approximate is None:
        raise ReidAccelError(f"{args.gallery}: has no approximate index; build it with --approximate")
    own = {"cameras": [args.camera] * len(queries)} if args.camera is not None else {}
    own |= {"times": [args.time] * len(queries)} if args.time is not None else {}
    results = gallery.search_images(
        load_encoder(args.model),
        queries,
        args.k,
        device=args.device,
        exclude_same_camera=args.exclude_same_camera,
        window=args.window,
        approximate=args.approximate,
        **own,
    )
    print(f"{'query':<24} {'rank':>4} {'score':>7} {'camera':>7} {'time':>9}  path")
    for row in results.rows():
        time_text = "" if row["time"] is None else f"{row['time']:g}"
        camera = row["camera"] or ""
        print(
            f"{Path(row['query']).name:<24} {row['rank']:>4} {row['score']:>7.4f} {camera:>7} {time_text:>9}  {row['path']}"
        )
    if args.table:
        results.write_csv(args.table)
    if args.picture:
        gallery.plot(results, queries, args.picture, top_k=args.k)
    return 0


def _add_search_commands(commands: argparse._SubParsersAction) -> None:
    search = commands.add_parser("search", help="a saved gallery of crops: build it, grow it, find a person in it")
    search_commands = search.add_subparsers(dest="search_command", required=True, metavar="SUBCOMMAND")
    build = search_commands.add_parser("build", help="embed every crop below a folder into a new gallery")
    build.add_argument("model", help=MODEL_HELP)
    build.add_argument("folder", type=Path, help="crops below this folder, any depth")
    build.add_argument("--output", required=True, type=Path, help="the gallery folder to create")
    build.add_argument(
        "--pattern",
        help="regular expression read from each crop's path, with named groups among person, camera, frame, time, "
        r"e.g. 'cam(?P<camera>\d+)/(?P<frame>\d+)'",
    )
    build.add_argument("--approximate", choices=("hnsw", "ivf"), help="also build a faiss index (needs faiss-cpu)")
    add = search_commands.add_parser("add", help="embed more crops into a gallery (its model and pattern)")
    add.add_argument("gallery", type=Path, help="a gallery folder")
    add.add_argument("model", help=MODEL_HELP)
    add.add_argument("folder", type=Path, help="crops below this folder, any depth")
    query = search_commands.add_parser("query", help="the gallery crops closest to each query crop")
    query.add_argument("gallery", type=Path, help="a gallery folder")
    query.add_argument("model", help=MODEL_HELP + " (the gallery's own model)")
    query.add_argument("queries", nargs="+", type=Path, help="query images or folders of them")
    query.add_argument("-k", type=_count(1), default=10, help="results per query (default 10)")
    query.add_argument("--exclude-same-camera", action="store_true", help="drop the query's own camera")
    query.add_argument("--window", type=float, help="drop the query camera's crops within this time of the query")
    query.add_argument("--camera", help="the queries' camera (default: read by the gallery's pattern)")
    query.add_argument("--time", type=float, help="the queries' time (default: read by the gallery's pattern)")
    query.add_argument("--approximate", action="store_true", help="search the gallery's faiss index")
    query.add_argument("--table", type=Path, help="write the results as CSV")
    query.add_argument("--picture", type=Path, help="write each query beside its top-k crops as PNG")
    for sub in (build, add, query):
        sub.add_argument("--device", help="e.g. cuda, cpu (default: the model's device, cpu)")
    for sub in (build, add):
        sub.add_argument("--batch-size", type=_count(1), default=64, help="images per forward pass (default 64)")
    build.set_defaults(handler=_search_build)
    add.set_defaults(handler=_search_add)
    query.set_defaults(handler=_search_query)


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
    _add_export_command(commands)
    _add_embed_command(commands)
    _add_search_commands(commands)
    return parser


BUSY_CORES = 0.5  # other work keeping this much of the machine's cores busy means the cores are shared


def _busy_cores(window_s: float = 0.2) -> float | None:
    """Cores kept busy by other processes right now, from two reads of /proc/stat (None where there is none).

    Not the load average, which lags a minute behind: just after an install or another job it still reads busy.
    """

    def read() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy_before, total_before = read()
        time.sleep(window_s)
        busy_after, total_after = read()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = max(total_after - total_before, 1)
    return (busy_after - busy_before) / elapsed * (os.cpu_count() or 1)


def _choose_openmp_wait_policy() -> str | None:
    """Let idle OpenMP threads sleep (`OMP_WAIT_POLICY=PASSIVE`) when other work already runs on the machine.

    Spinning threads make a step 1.4x faster on idle cores, but when another job holds a core every parallel
    operation waits for a descheduled thread and the step runs 1.4x slower than with sleeping ones (BENCHMARKS.md).
    So the choice follows what the cores are doing when the command starts; it must be made before torch is imported
    (the handlers import it), and a policy set by the user is kept. Returns what was decided, for the log.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return None
    busy = _busy_cores()
    if busy is None:
        return None
    if busy > BUSY_CORES:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return f"idle threads sleep ({busy:.1f} cores busy with other work)"
    return f"idle threads spin briefly (the cores are free: {busy:.1f} busy)"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for bad input, with one line on stderr).

    Args:
        argv: the arguments after the program name; default `sys.argv[1:]`.
    """
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
    except ReidAccelError as err:
        message = str(err)
    except OSError as err:  # a path the user gave cannot be read or written; other OS errors are bugs
        if err.filename is None and not isinstance(err, FileNotFoundError):
            raise
        message = f"{err.filename}: {err.strerror}" if err.filename is not None else str(err)
    print(f"{parser.prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
