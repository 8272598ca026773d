"""Training throughput of vaegen against the reference-style loop and against the model-step ceiling.

    python scripts/benchmark.py                       # CPU, 32 px, batch 64
    python scripts/benchmark.py --device cuda --size 96 --batch 256
    python scripts/benchmark.py --device cuda --full  # also time a whole configs/train_apples.yaml run

Rows, all with the same model, data and batch size, images/s in steady state, each warmed up once and
then timed in --rounds interleaved rounds (medians reported; c/a also with its range over rounds):
  (a) reference: torchvision ImageFolder + PIL transforms in a DataLoader, fp32, `.item()` every step;
  (b) ceiling:   synthetic batches already on the device, the same step and options as (c);
  (c) vaegen:    `vaegen.training.loop.train_one_epoch` on the decoded data cache, as `vaegen train` runs it.
The table is printed and a dated row is appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vaegen.config import config_from_dict  # noqa: E402
from vaegen.data.dataset import load_splits, to_device  # noqa: E402
from vaegen.errors import VaegenError  # noqa: E402
from vaegen.models import build_model  # noqa: E402
from vaegen.training.accel import CapturedStep, apply_backend_flags, resolve_device, resolve_step_options  # noqa: E402
from vaegen.training.loop import train_one_epoch, train_step  # noqa: E402
from vaegen.training.run import Run, build_run  # noqa: E402


def default_data() -> Path:
    shared = REPO.parent / "shared" / "data" / "apples"
    return shared if shared.is_dir() else REPO / "data" / "apples_sample"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: writing 5 resets the process's peak RSS (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_loop(config, device):
    """(a) The typical script: ImageFolder + PIL transforms, fp32, a host sync (`.item()`) every step."""
    from torchvision import datasets, transforms

    from vaegen.models.losses import vae_loss

    size = config.data.image_size
    dataset = datasets.ImageFolder(str(config.data.root), transforms.Compose([transforms.Resize(size), transforms.ToTensor()]))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.train.batch_size, shuffle=True, drop_last=True,
        num_workers=min(4, os.cpu_count() or 1), pin_memory=device.type == "cuda", persistent_workers=True,
    )
    model = build_model(config.model, size, 3, len(dataset.classes)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr)

    def batches():
        while True:
            yield from loader

    stream = batches()

    def run(steps: int) -> float:
        torch.backends.cudnn.benchmark = False  # the typical script leaves PyTorch's default; (b) and (c) set theirs
        sync(device)
        start, images = time.perf_counter(), 0
        for _ in range(steps):
            x, _ = next(stream)
            x = x.to(device)
            logits, mu, logvar = model(x)
            loss = vae_loss(logits, x, mu, logvar, 1.0, "mse")
            optimizer.zero_grad()
            loss.total.backward()
            optimizer.step()
            loss.total.item()
            images += len(x)
        sync(device)
        return images / (time.perf_counter() - start)

    return run


def build_step(config, options, device, num_classes: int) -> Run:
    """The training state and (train.cuda_graph) the captured step, as `vaegen train` builds them."""
    run = build_run(config, device, options, [f"class {k}" for k in range(num_classes)])
    if options.step_graph:
        run.captured = CapturedStep(lambda x, y, beta: train_step(run, x, y, beta), device)
    return run


def ceiling_loop(config, options, device, num_classes: int):
    """(b) The same step on one synthetic batch that never leaves the device: the model's speed limit."""
    training = build_step(config, options, device, num_classes)
    x = torch.rand(config.train.batch_size, 3, *config.data.image_size, device=device)
    if options.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    training.model.train()

    def run(steps: int) -> float:
        apply_backend_flags(options)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            if training.captured is not None:
                training.captured(x, None, 1.0)
            else:
                train_step(training, x, None, 1.0)
        sync(device)
        return steps * len(x) / (time.perf_counter() - start)

    return run


def vaegen_loop(config, options, device, splits):
    """(c) vaegen's own epoch function on the decoded cache, whole epochs (its rate is the epoch's images/s)."""
    training = build_step(config, options, device, len(splits.train.classes))
    training.shuffle = torch.Generator().manual_seed(0)
    steps_per_epoch = max(1, len(splits.train.images) // config.train.batch_size)
    epoch = 0

    def run(steps: int) -> float:
        nonlocal epoch
        apply_backend_flags(options)
        rates = []
        for _ in range(max(1, round(steps / steps_per_epoch))):
            epoch += 1
            stats = train_one_epoch(training, splits.train, 1.0, epoch)
            rates.append(stats["images_per_s"])
        return statistics.mean(rates)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per row and round (c: whole epochs, about as many steps)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; medians are reported")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per row first (c: at least one epoch)")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode for (b), (c) and the full run; reduce-overhead = CUDA graphs")
    parser.add_argument("--cudnn-benchmark", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--cuda-graph", action="store_true", help="train.cuda_graph for (b), (c) and the full run: the whole step replayed as a CUDA graph")
    parser.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--full", action="store_true", help="also time a whole configs/train_apples.yaml run")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args()

    data_root = args.data or default_data()
    flag = {"auto": "auto", "true": True, "false": False}
    config = config_from_dict({
        "data": {"root": str(data_root), "image_size": args.size, "val_fraction": 0.1},
        "train": {"batch_size": args.batch, "device": args.device, "precision": args.precision, "compile": flag[args.compile],
                  "compile_mode": args.compile_mode, "cudnn_benchmark": flag[args.cudnn_benchmark], "cuda_graph": args.cuda_graph,
                  "channels_last": flag[args.channels_last], "log_every": 10**9},
        "eval": {"backbone": "none"},
        "output": {"select": "val_nelbo"},
    })
    device = resolve_device(config.train.device)
    splits = load_splits(config.data, config.train.seed)
    options = resolve_step_options(config.train, config.data, device, splits.train.images.nbytes)
    if options.on_device:
        splits = to_device(splits, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"
    print(f"{name}, torch {torch.__version__}, {args.size} px, batch {args.batch}, {len(splits.train.images)} images from {data_root}")
    print(f"step options for (b) and (c): {options.describe()}\n")

    # Rows are built and warmed up once (DataLoader workers, compilation, first-touch allocations), then
    # timed in interleaved rounds: a shared or noisy machine slows every row of a round alike, and the
    # median over rounds of each row and of each round's ratio is what gets reported.
    runs, peaks = {}, {}
    for key, build in [
        ("a", lambda: reference_loop(config, device)),
        ("b", lambda: ceiling_loop(config, options, device, len(splits.train.classes))),
        ("c", lambda: vaegen_loop(config, options, device, splits)),
    ]:
        reset_peak(device)
        runs[key] = build()
        runs[key](args.warmup)
        peaks[key] = peak_mib(device)
    rates: dict[str, list[float]] = {key: [] for key in runs}
    for _ in tqdm(range(args.rounds), desc="rounds", unit="round", disable=None):
        for key, run in runs.items():
            rates[key].append(run(args.steps))
    rows = {key: (statistics.median(rates[key]), peaks[key]) for key in runs}
    c_over_a = statistics.median(c / a for a, c in zip(rates["a"], rates["c"]))
    c_over_b = statistics.median(c / b for b, c in zip(rates["b"], rates["c"]))
    spread = [c / a for a, c in zip(rates["a"], rates["c"])]
    labels = {"a": "a reference loop", "b": "b model-step ceiling", "c": "c vaegen train loop"}
    for key, (rate, peak) in rows.items():
        each = ", ".join(f"{r:,.0f}" for r in rates[key])
        print(f"  {labels[key]:<22} {rate:>10,.0f} images/s   peak {'GPU' if device.type == 'cuda' else 'RSS'} {peak:,.0f} MiB   rounds: {each}")
    print(f"\n  c/a = {c_over_a:.2f} (rounds {min(spread):.2f}-{max(spread):.2f})   c/b = {c_over_b:.2f}")

    full = ""
    if args.full:
        from vaegen.apps.cli import main as vaegen_main

        start = time.perf_counter()
        vaegen_main(["train", "--config", str(REPO / "configs" / "train_apples.yaml"), "--set", f"data.root={data_root}",
                     "--set", f"train.device={args.device}", "--set", f"train.compile={flag[args.compile]}",
                     "--set", f"train.compile_mode={args.compile_mode}", "--set", f"train.cudnn_benchmark={flag[args.cudnn_benchmark]}",
                     "--set", f"train.cuda_graph={args.cuda_graph}",
                     "--set", "output.run_name=benchmark-full",
                     "--set", "output.logs_dir=/tmp/vaegen-benchmark/logs", "--set", "output.best_dir=/tmp/vaegen-benchmark/best"])
        full = f"{time.perf_counter() - start:.0f} s"
        print(f"  full train_apples.yaml run (100 epochs, FID every 5): {full}")

    if not args.no_record:
        record(name, args, options, rows, f"{c_over_a:.2f} ({min(spread):.2f}-{max(spread):.2f})", c_over_b, full)


def record(name, args, options, rows, c_over_a: str, c_over_b: float, full: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Benchmarks\n\nRows appended by `python scripts/benchmark.py` (see its docstring). Images/s in steady state; "
            "(a) reference-style loop, (b) model-step ceiling, (c) vaegen's loop; peak memory = GPU max allocated or "
            "process peak RSS per row.\n\n"
            "| date | device | torch | px | batch | step options | a img/s | b img/s | c img/s | c/a | c/b | peak MiB a/b/c | full run | command |\n"
            "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|\n"
        )
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:])
    peaks = "/".join(f"{rows[k][1]:.0f}" for k in "abc")
    row = (
        f"| {date.today()} | {name} | {torch.__version__} | {args.size} | {args.batch} | {options.describe()} | "
        f"{rows['a'][0]:,.0f} | {rows['b'][0]:,.0f} | {rows['c'][0]:,.0f} | {c_over_a} | {c_over_b:.2f} | {peaks} | "
        f"{full or '-'} | `{command.strip()}` |"
    )
    lines = path.read_text().splitlines()
    # below the last row of the first table, so prose after the table stays after it
    table_end = next(i for i, line in enumerate(lines) if line.startswith("|---"))
    while table_end + 1 < len(lines) and lines[table_end + 1].startswith("|"):
        table_end += 1
    lines.insert(table_end + 1, row)
    path.write_text("\n".join(lines) + "\n")
    print(f"appended a row to {path}")


if __name__ == "__main__":
    try:
        main()
    except VaegenError as exc:  # bad data folder, a device that is not there, ...: the message, not a traceback
        sys.exit(f"error: {exc}")
