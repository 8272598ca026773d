"""Step options (precision, layout, compile, data placement): how `auto` resolves, and that speed costs no correctness."""

from __future__ import annotations

import json

import pytest
import torch

from test_train import SAMPLE, tiny_config
from vaegen.accel import resolve_step_options
from vaegen.cli import main
from vaegen.config import DataConfig, TrainConfig, config_from_dict
from vaegen.data import batches, load_splits, to_device
from vaegen.errors import ConfigError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_on_cpu_is_fp32_eager_with_data_in_memory_and_the_fused_adam():
    options = resolve_step_options(TrainConfig(), DataConfig(root="x", image_size=64), torch.device("cpu"), data_bytes=10**9)
    assert (options.precision, options.channels_last, options.compile, options.on_device, options.fused_optimizer) == (
        "fp32", False, False, True, True,
    )
    assert options.autocast_dtype is None
    assert options.cudnn_benchmark is False
    # cuDNN's autotuner exists on CUDA only: asked for on CPU it stays off
    assert resolve_step_options(TrainConfig(cudnn_benchmark=True), DataConfig(root="x"), torch.device("cpu"), 1).cudnn_benchmark is False


@pytest.mark.parametrize(("image_size", "channels_last"), [(32, True), ((16, 64), True), ((32, 48), False), (96, False)])
def test_auto_layout_on_cpu_is_channels_last_for_small_images_only(image_size, channels_last):
    options = resolve_step_options(TrainConfig(), DataConfig(root="x", image_size=image_size), torch.device("cpu"), data_bytes=1)
    assert options.channels_last is channels_last
    forced = resolve_step_options(TrainConfig(channels_last=False), DataConfig(root="x", image_size=image_size), torch.device("cpu"), 1)
    assert forced.channels_last is False


def test_explicit_options_are_honoured():
    train = TrainConfig(precision="bf16", channels_last=True, compile=True)
    options = resolve_step_options(train, DataConfig(root="x", on_device=False), torch.device("cpu"), data_bytes=1)
    assert (options.precision, options.channels_last, options.compile, options.on_device) == ("bf16", True, True, False)
    assert options.autocast_dtype == torch.bfloat16


def test_compile_mode_reaches_torch_compile_and_cuda_graphs_need_cuda(monkeypatch):
    from vaegen import accel

    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.update(kwargs) or model)
    train = TrainConfig(compile=True, compile_mode="reduce-overhead")
    with pytest.warns(UserWarning, match="reduce-overhead replays the step as CUDA graphs, which needs CUDA; on cpu"):
        options = resolve_step_options(train, DataConfig(root="x"), torch.device("cpu"), 1)
    assert (options.compile_mode, options.cuda_graphs) == ("reduce-overhead", False)
    assert "compiled (reduce-overhead)" in options.describe()
    accel.compile_step(torch.nn.Linear(2, 2), options)
    assert seen == {"dynamic": False, "mode": "reduce-overhead"}
    default = resolve_step_options(TrainConfig(compile=True), DataConfig(root="x"), torch.device("cpu"), 1)
    accel.compile_step(torch.nn.Linear(2, 2), default)
    assert seen == {"dynamic": False, "mode": None} and "compiled," in default.describe()
    # not compiled (auto on CPU): the mode is inert, and says so nowhere
    eager = resolve_step_options(TrainConfig(compile_mode="max-autotune"), DataConfig(root="x"), torch.device("cpu"), 1)
    assert (eager.compile, eager.compile_mode, eager.cuda_graphs) == (False, "default", False)


def test_the_cudnn_autotuner_follows_the_step_options(monkeypatch):
    from dataclasses import replace

    from vaegen.accel import apply_backend_flags

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    options = resolve_step_options(TrainConfig(), DataConfig(root="x"), torch.device("cpu"), 1)
    apply_backend_flags(replace(options, cudnn_benchmark=True))
    assert torch.backends.cudnn.benchmark is True
    assert "cuDNN autotuned" in replace(options, cudnn_benchmark=True).describe() and "cuDNN" not in options.describe()
    apply_backend_flags(options)
    assert torch.backends.cudnn.benchmark is False


def test_a_compile_mode_without_compilation_is_refused():
    with pytest.raises(ConfigError, match="train.compile_mode is reduce-overhead but train.compile is false"):
        config_from_dict({"data": {"root": "x"}, "train": {"compile": False, "compile_mode": "reduce-overhead"}})
    with pytest.raises(ConfigError, match="train.compile_mode"):
        config_from_dict({"data": {"root": "x"}, "train": {"compile_mode": "fast"}})


@pytest.mark.parametrize(("name", "message"), [("gpu", "device is 'gpu', which is not a device; use auto, cpu"), ("", "which is not a device")]
                         + ([] if torch.cuda.is_available() else [("cuda", "device is cuda but CUDA is not available here; use device: auto or cpu")]))
def test_device_names_are_checked_and_errors_name_the_setting(name, message):
    from vaegen.accel import resolve_device

    with pytest.raises(ConfigError, match=message):
        resolve_device(name, key="device")
    assert resolve_device("cpu").type == "cpu" and resolve_device(torch.device("cpu")).type == "cpu"


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve_step_options(TrainConfig(precision="fp16"), DataConfig(root="x"), torch.device("cpu"), 1)


def test_yaml_values_for_the_options():
    config = config_from_dict({"data": {"root": "x", "on_device": False}, "train": {"compile": True, "channels_last": "auto"}})
    assert config.data.on_device is False and config.train.compile is True and config.train.channels_last == "auto"
    with pytest.raises(ConfigError, match="train.precision"):
        config_from_dict({"data": {"root": "x"}, "train": {"precision": "fp8"}})


@cuda
def test_device_cache_gives_the_same_batches_as_the_host_path(tmp_path):
    splits = load_splits(DataConfig(root=SAMPLE, image_size=16, cache_dir=tmp_path), seed=0)
    on_gpu = to_device(splits, torch.device("cuda"))
    host = batches(splits.train, 32, generator=torch.Generator().manual_seed(3), hflip=True)
    device = batches(on_gpu.train, 32, generator=torch.Generator().manual_seed(3), hflip=True)
    for (x_host, y_host), (x_dev, y_dev) in zip(host, device, strict=True):
        assert torch.equal(x_host, x_dev.cpu()) and torch.equal(y_host, y_dev.cpu())


def test_data_in_memory_and_streamed_from_the_host_train_the_same_run_on_cpu(tmp_path):
    rows = {}
    for placement in [True, False]:
        config = tiny_config(tmp_path / str(placement), train={"epochs": 2}, data={"on_device": placement, "hflip": True})
        assert main(["train", "--config", str(config)]) == 0
        lines = (tmp_path / str(placement) / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()
        rows[placement] = [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]
    assert rows[True] == rows[False]  # same batches, same flips, same steps: the same numbers to the last bit


def test_bf16_training_reaches_the_fp32_loss(tmp_path):
    finals = {}
    for precision in ["fp32", "bf16"]:
        config = tiny_config(tmp_path / precision, train={"epochs": 3, "precision": precision})
        assert main(["train", "--config", str(config)]) == 0
        rows = [json.loads(line) for line in (tmp_path / precision / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
        finals[precision] = rows[-1]["train_loss"]
    assert finals["bf16"] == pytest.approx(finals["fp32"], rel=0.05)


def _cuda_step_setup(train: dict):
    from vaegen.accel import compile_step
    from vaegen.models import build_model
    from vaegen.train import build_optimizer

    config = config_from_dict(
        {"data": {"root": str(SAMPLE), "image_size": 32}, "model": {"widths": [8, 16]}, "eval": {"backbone": "none"},
         "output": {"select": "val_nelbo"}, "train": train}
    )
    device = torch.device("cuda")
    options = resolve_step_options(config.train, config.data, device, 1)
    torch.manual_seed(0)
    model = build_model(config.model, (32, 32), 3, 3).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, model, fused=options.fused_optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device=device, generator=torch.Generator(device).manual_seed(0))
    return config, options, model, compile_step(model, options), optimizer, scaler, images


@cuda
@pytest.mark.parametrize("train", [{"compile": False}, {"compile": True, "compile_mode": "reduce-overhead"}], ids=["eager", "cuda-graphs"])
def test_training_step_never_syncs_with_the_host(train):
    """Every step of an epoch but the logging ones runs under sync-debug 'error': no hidden .item()."""
    from vaegen.train import to_input, train_step

    config, options, model, step_model, optimizer, scaler, images = _cuda_step_setup(train)
    device = images.device
    for _ in range(3):  # warm-up: compilation, and CUDA graphs record on a later call than the first
        train_step(model, step_model, optimizer, scaler, to_input(images, device, True), None, config, options, 1.0, device)
    torch.cuda.synchronize()
    sums = torch.zeros(4, device=device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            sums += train_step(model, step_model, optimizer, scaler, to_input(images, device, True), None, config, options, 1.0, device)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(sums).all()


@cuda
def test_cuda_graphs_replay_the_step_and_train_like_the_default_compiled_step():
    """compile_mode reduce-overhead: no graph is skipped (a skip would silently fall back to launching every
    kernel), and 30 steps on one batch reach the loss the default compiled step reaches."""
    from torch._dynamo.utils import counters

    from vaegen.train import to_input, train_step

    final = {}
    for mode in ("default", "reduce-overhead"):
        torch._dynamo.reset()
        counters.clear()
        config, options, model, step_model, optimizer, scaler, images = _cuda_step_setup(
            {"compile": True, "compile_mode": mode, "precision": "fp32"}
        )
        assert options.cuda_graphs is (mode == "reduce-overhead") and options.cudnn_benchmark is True  # auto on CUDA
        for _ in range(30):
            terms = train_step(model, step_model, optimizer, scaler, to_input(images, images.device, True), None, config, options, 1.0, images.device)
        final[mode] = float(terms[0])
        assert counters["inductor"]["cudagraph_skips"] == 0
    # the reparameterisation noise may be drawn differently; the fit to the batch may not
    assert final["reduce-overhead"] == pytest.approx(final["default"], rel=0.05)


def test_benchmark_script_prints_each_row_and_the_ratios(tmp_path):
    """The benchmark's plumbing on the bundled sample (its speeds are measured in docs/benchmarks.md, not here)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(repo / "scripts" / "benchmark.py"), "--data", str(SAMPLE), "--steps", "2", "--rounds", "2",
         "--warmup", "1", "--no-record"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for label in ("a reference loop", "b model-step ceiling", "c vaegen train loop"):
        row = next(line for line in lines if label in line)
        rate = float(row.split(label)[1].split("images/s")[0].replace(",", ""))
        assert rate > 0
        assert row.count("rounds:") == 1 and len(row.split("rounds:")[1].split(",")) == 2  # one rate per round
    ratio = next(line for line in lines if "c/a =" in line)
    assert float(ratio.split("c/a =")[1].split()[0]) > 0 and "c/b =" in ratio


def test_a_compiled_run_trains_without_graph_breaks_and_times_its_compilation_apart(tmp_path):
    """The CUDA default path, compiled, through `vaegen train` on CPU: the model compiles to whole graphs
    (a graph break would silently cost speed), and the time line shows the compiling first epoch apart."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 2, "compile": True}))]) == 0
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 1
    log = (tmp_path / "logs" / "tiny" / "train.log").read_text()
    assert "fp32, channels_last, compiled, fused optimizer" in log
    (timing,) = [line for line in log.splitlines() if line.startswith("time: ")]
    assert "first epoch, compiling " in timing and "training steps " in timing
