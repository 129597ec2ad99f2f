"""Benchmark: embedding throughput of an exported ONNX model in onnxruntime against the same encoder in PyTorch eager.

The encoder (random init; weights do not change the arithmetic) is exported with `reid_accel.export.export_encoder`
(dynamic batch, parity checked), then both runtimes embed the same random (B, 3, H, W) batches on the CPU. Calls
are interleaved: every repeat runs each batch size in each runtime once, after one warm-up call each, so both see
the same machine load. Reported: images/s of the median call (and of the fastest), per runtime and batch size.
Idle threads of both runtimes sleep instead of spinning (OpenMP's passive wait policy, onnxruntime's
`session.intra_op.allow_spinning = 0`): spinning pool threads of one runtime would otherwise steal the cores the
other runtime's next call needs.

    python scripts/bench_export.py                                  # resnet50.tv_in1k, 256x128, batch 1 and 64
    python scripts/bench_export.py --backbone test_resnet --height 64 --width 32 --repeats 3   # a quick smoke run
"""

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch starts its OpenMP pool
import platform
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime  # noqa: E402
import torch  # noqa: E402

from reid_accel.export import INPUT_NAME, OUTPUT_NAME, export_encoder  # noqa: E402
from reid_accel.modeling import ReIDEncoder  # noqa: E402


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50.tv_in1k")
    parser.add_argument("--last-stride", type=int, default=1)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="both runtimes (default: torch's)"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()} {os.cpu_count()} logical CPUs, {args.threads} threads per runtime")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, load average {os.getloadavg()}")
    torch.manual_seed(0)
    encoder = ReIDEncoder(args.backbone, last_stride=args.last_stride, input_size=(args.height, args.width)).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "encoder.onnx"
        start = time.perf_counter()
        report = export_encoder(encoder, path, fmt="onnx", batch=None)
        print(
            f"export + parity check: {time.perf_counter() - start:.1f} s, max abs difference {report.random_diff:.1e}"
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    inputs = {b: torch.randn(b, 3, args.height, args.width) for b in args.batches}
    runtimes = {
        "pytorch eager": lambda x: encoder.embed(x),
        "onnxruntime": lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()}),
    }
    times = {(name, b): [] for name in runtimes for b in args.batches}
    with torch.inference_mode():
        for run in runtimes.values():  # warm-up: allocators, thread pools, first-call planning
            for b in args.batches:
                run(inputs[b])
        for _ in range(args.repeats):
            for b in args.batches:
                for name, run in runtimes.items():
                    times[name, b].append(_timed(lambda run=run, b=b: run(inputs[b])))

    print(f"\n{args.backbone} at {args.height}x{args.width}, last stride {args.last_stride}, {args.repeats} repeats")
    print("| runtime | batch | median images/s | best images/s | median ms/call |")
    print("|---|---:|---:|---:|---:|")
    for b in args.batches:
        for name in runtimes:
            median, best = statistics.median(times[name, b]), min(times[name, b])
            print(f"| {name} | {b} | {b / median:.1f} | {b / best:.1f} | {1000 * median:.0f} |")
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
