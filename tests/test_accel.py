"""Step options (precision, layout, compile, data placement): how `auto` resolves, and that speed costs no correctness."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SAMPLE, TIMINGS

from vaegen.apps.cli import main
from vaegen.config import DataConfig, TrainConfig, config_from_dict
from vaegen.data.dataset import batches, load_splits, to_device
from vaegen.errors import ConfigError
from vaegen.training.accel import resolve_step_options

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
    from vaegen.training import accel

    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.update(kwargs) or model)
    train = TrainConfig(compile=True, compile_mode="reduce-overhead")
    with pytest.warns(UserWarning, match="reduce-overhead.*needs CUDA"):
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

    from vaegen.training.accel import apply_backend_flags

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


def test_a_captured_step_needs_cuda_and_says_so_when_it_runs():
    from dataclasses import replace

    with pytest.warns(UserWarning, match="train.cuda_graph.*needs CUDA"):
        options = resolve_step_options(TrainConfig(cuda_graph=True), DataConfig(root="x"), torch.device("cpu"), 1)
    assert options.step_graph is False and "CUDA graph" not in options.describe()
    assert replace(options, step_graph=True).describe().endswith(", the whole step replayed as a CUDA graph")


def test_warnings_of_a_run_are_kept_in_its_train_log(tmp_path, tiny_config):
    """train.log keeps what the console showed, warnings (on stderr) included."""
    with pytest.warns(UserWarning, match="train.cuda_graph.*needs CUDA"):
        assert main(["train", "--config", str(tiny_config(tmp_path, train={"epochs": 1, "cuda_graph": True}))]) == 0
    log = (tmp_path / "logs" / "tiny" / "train.log").read_text()
    assert any(line.startswith("warning: train.cuda_graph") and "needs CUDA" in line for line in log.splitlines())


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"train": {"precision": "fp16"}}, "train.precision fp16"),
        ({"optim": {"skip_grad_norm": 10.0}}, "optim.skip_grad_norm"),
        ({"train": {"ema": 0.999}}, "train.ema"),
        ({"adversarial": {"enabled": True}}, "adversarial.enabled"),
    ],
)
def test_a_captured_step_refuses_what_needs_the_host_between_steps(settings, named):
    raw = {"data": {"root": "x"}, **settings}
    raw["train"] = {**raw.get("train", {}), "cuda_graph": True}
    with pytest.raises(ConfigError, match="train.cuda_graph replays one recorded step") as info:
        config_from_dict(raw)
    assert named in str(info.value) and "set train.cuda_graph: false" in str(info.value)
    raw["train"]["cuda_graph"] = False
    config_from_dict(raw)  # each of them is fine without the graph


def test_a_captured_step_is_not_captured_twice():
    with pytest.raises(ConfigError, match="train.cuda_graph.*train.compile_mode reduce-overhead"):
        config_from_dict({"data": {"root": "x"}, "train": {"cuda_graph": True, "compile_mode": "reduce-overhead"}})
    assert config_from_dict({"data": {"root": "x"}, "train": {"cuda_graph": True, "compile": True}}).train.cuda_graph is True


def test_a_captured_step_keeps_no_autocast_cache():
    """torch.cuda.graph's rule: weights autocast cached during the capture would be stale in every replay."""
    from dataclasses import replace

    from vaegen.training.accel import autocast

    options = replace(resolve_step_options(TrainConfig(precision="bf16"), DataConfig(root="x"), torch.device("cpu"), 1), step_graph=True)
    with autocast(options, torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and not torch.is_autocast_cache_enabled()
    with autocast(replace(options, step_graph=False), torch.device("cpu")):
        assert torch.is_autocast_cache_enabled()


def test_the_step_takes_beta_as_a_tensor_as_it_takes_a_number():
    """A captured step gets β as a device tensor (one recording serves every epoch's β): same loss, same update."""
    from vaegen.data.dataset import to_input
    from vaegen.training.loop import train_step
    from vaegen.training.run import build_optimizer, build_run

    config = config_from_dict({"data": {"root": str(SAMPLE), "image_size": 16}, "model": {"widths": [8, 16], "latent_dim": 8}})
    options = resolve_step_options(config.train, config.data, torch.device("cpu"), 1)
    images = to_input(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)), torch.device("cpu"))
    results = []
    for beta in (0.7, torch.tensor(0.7)):
        torch.manual_seed(0)
        run = build_run(config, torch.device("cpu"), options, ["a"])
        run.optimizer = build_optimizer(config, run.model, fused=True, capturable=True)  # as a captured step's
        terms = train_step(run, images, None, beta)
        results.append((terms, torch.cat([p.detach().flatten() for p in run.model.parameters()])))
    (terms_float, weights_float), (terms_tensor, weights_tensor) = results
    assert terms_float[2] > 0 and torch.equal(terms_float, terms_tensor)
    assert torch.equal(weights_float, weights_tensor)


@pytest.mark.parametrize(("name", "message"), [("gpu", "device is 'gpu', which is not a device; use auto, cpu"), ("", "which is not a device")]
                         + ([] if torch.cuda.is_available() else [("cuda", "device is cuda but CUDA is not available")]))
def test_device_names_are_checked_and_errors_name_the_setting(name, message):
    from vaegen.training.accel import resolve_device

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


def test_data_in_memory_and_streamed_from_the_host_train_the_same_run_on_cpu(tmp_path, tiny_config):
    rows = {}
    for placement in [True, False]:
        config = tiny_config(tmp_path / str(placement), train={"epochs": 2}, data={"on_device": placement, "hflip": True})
        assert main(["train", "--config", str(config)]) == 0
        lines = (tmp_path / str(placement) / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()
        rows[placement] = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]
    assert rows[True] == rows[False]  # same batches, same flips, same steps: the same numbers to the last bit


def test_bf16_training_reaches_the_fp32_loss(tmp_path, tiny_config):
    finals = {}
    for precision in ["fp32", "bf16"]:
        config = tiny_config(tmp_path / precision, train={"epochs": 3, "precision": precision})
        assert main(["train", "--config", str(config)]) == 0
        rows = [json.loads(line) for line in (tmp_path / precision / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
        finals[precision] = rows[-1]["train_loss"]
    assert finals["bf16"] == pytest.approx(finals["fp32"], rel=0.05)


def _cuda_step_setup(train: dict, conditional: str = "none"):
    """A Run on the GPU as `vaegen train` builds it (channels_last, the step compiled as `train` says), and a batch."""
    from vaegen.training.run import build_run

    config = config_from_dict(
        {"data": {"root": str(SAMPLE), "image_size": 32}, "model": {"widths": [8, 16], "conditional": conditional}, "eval": {"backbone": "none"},
         "output": {"select": "val_nelbo"}, "train": {"channels_last": True, **train}}
    )
    device = torch.device("cuda")
    options = resolve_step_options(config.train, config.data, device, 1)
    torch.manual_seed(0)
    run = build_run(config, device, options, ["a", "b", "c"])
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device=device, generator=torch.Generator(device).manual_seed(0))
    return run, images


@cuda
@pytest.mark.parametrize(("train", "conditional"), [
    ({"compile": False}, "none"),
    ({"compile": True, "compile_mode": "reduce-overhead"}, "none"),
    ({"compile": False}, "onehot"),  # the labels' range is checked where users pass them, not in the step
    ({"compile": False}, "embedding"),
], ids=["eager", "cuda-graphs", "eager-onehot", "eager-embedding"])
def test_training_step_never_syncs_with_the_host(train, conditional):
    """Every step of an epoch but the logging ones runs under sync-debug 'error': no hidden .item()."""
    from vaegen.data.dataset import to_input
    from vaegen.training.loop import train_step

    run, images = _cuda_step_setup(train, conditional)
    device = images.device
    labels = None if conditional == "none" else torch.arange(len(images), device=device) % 3
    for _ in range(3):  # warm-up: compilation, and CUDA graphs record on a later call than the first
        train_step(run, to_input(images, device, True), labels, 1.0)
    torch.cuda.synchronize()
    sums = torch.zeros(len(run.family.terms) + 1, device=device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            sums += train_step(run, to_input(images, device, True), labels, 1.0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(sums).all()


@cuda
def test_cuda_graphs_replay_the_step_and_train_like_the_default_compiled_step():
    """compile_mode reduce-overhead: no graph is skipped (a skip would silently fall back to launching every
    kernel), and 30 steps on one batch reach the loss the default compiled step reaches."""
    from torch._dynamo.utils import counters

    from vaegen.data.dataset import to_input
    from vaegen.training.loop import train_step

    final = {}
    for mode in ("default", "reduce-overhead"):
        torch._dynamo.reset()
        counters.clear()
        run, images = _cuda_step_setup({"compile": True, "compile_mode": mode, "precision": "fp32"})
        options = run.options
        assert options.cuda_graphs is (mode == "reduce-overhead") and options.cudnn_benchmark is True  # auto on CUDA
        for _ in range(30):
            terms = train_step(run, to_input(images, images.device, True), None, 1.0)
        final[mode] = float(terms[0])
        assert counters["inductor"]["cudagraph_skips"] == 0
    # the reparameterisation noise may be drawn differently; the fit to the batch may not
    assert final["reduce-overhead"] == pytest.approx(final["default"], rel=0.05)


@pytest.fixture
def fake_cuda_graphs(monkeypatch):
    """torch.cuda's graph and stream calls stood in for on the CPU: a recording registers what its replay
    runs (`recording["graph"].body`) instead of running it. Yields the dict that holds the graph being recorded."""
    import contextlib

    class Stream:
        def wait_stream(self, other):
            pass

    class Graph:
        body = None

        def replay(self):
            self.body()

    recording = {}

    @contextlib.contextmanager
    def record(graph, stream=None, capture_error_mode=None):
        recording["graph"] = graph
        try:
            yield
        finally:
            recording.pop("graph")

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", record)
    return recording


def test_the_captured_step_warms_up_records_once_and_replays_on_new_inputs(fake_cuda_graphs):
    """CapturedStep's bookkeeping: three ordinary steps, then one recording into static inputs (which runs
    nothing) replayed at once, then replays that see each new batch and β; every result is a tensor of its own."""
    from vaegen.training.accel import CapturedStep

    recording, runs = fake_cuda_graphs, []

    def step(x, y, beta):  # stands for train_step: what a replay computes is what the recording saw
        assert isinstance(beta, torch.Tensor)
        compute = lambda: torch.stack([x.sum() * beta, y.sum().float()])  # noqa: E731
        if "graph" not in recording:
            runs.append("step")
            return compute()
        out = torch.empty(2)
        recording["graph"].body = lambda: (runs.append("replay"), out.copy_(compute()))
        return out

    captured = CapturedStep(step, torch.device("cpu"))
    results = [captured(torch.full((2, 2), float(i)), torch.tensor([i, 1]), beta=0.5 * i) for i in range(1, 7)]
    assert runs == ["step"] * 3 + ["replay"] * 3
    # call i sums a 2x2 batch of i's, times β = i/2, and its labels i + 1
    assert [r.tolist() for r in results] == [[4.0 * i * 0.5 * i, i + 1.0] for i in range(1, 7)]
    assert results[3].data_ptr() != results[4].data_ptr() != captured.terms.data_ptr()


def test_a_step_that_cannot_be_recorded_names_the_setting(fake_cuda_graphs):
    from vaegen.training.accel import CapturedStep

    def step(x, y, beta):
        if "graph" in fake_cuda_graphs:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")
        return x.sum()

    captured = CapturedStep(step, torch.device("cpu"))
    for _ in range(3):
        captured(torch.ones(2), None, 1.0)
    with pytest.raises(ConfigError) as error:
        captured(torch.ones(2), None, 1.0)
    message = str(error.value)
    assert "could not be recorded as a CUDA graph" in message and "train.cuda_graph: false" in message
    assert "operation not permitted when stream is capturing" in message


@cuda
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_the_captured_step_replays_and_trains_like_the_step_itself(compile):
    """train.cuda_graph: 30 calls (3 warm-up, 1 capture, 26 replays) take 30 optimizer steps, replays never
    sync with the host, β set between replays reaches the recorded loss, and the fit matches the plain step's."""
    from vaegen.data.dataset import to_input
    from vaegen.training.accel import CapturedStep
    from vaegen.training.loop import train_step

    final = {}
    for graphed in (False, True):
        torch._dynamo.reset()
        run, images = _cuda_step_setup({"compile": compile, "precision": "fp32", "cuda_graph": graphed})
        assert run.options.step_graph is graphed  # and build_run made the optimizer capturable
        model = run.model
        x = to_input(images, images.device, True)
        step = lambda x, y, beta: train_step(run, x, y, beta)  # noqa: E731
        captured = CapturedStep(step, images.device) if graphed else None
        for call in range(30):
            if captured is None:
                terms = step(x, None, 1.0)
                continue
            if call == 4:  # calls 0-2 warm up, call 3 records and replays, the rest replay
                before = [p.detach().clone() for p in model.parameters()]
            if call >= 4:
                torch.cuda.set_sync_debug_mode("error")
            try:
                terms = captured(x, None, 1.0)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        final[graphed] = float(terms[0])
        if graphed:
            assert captured.graph is not None
            assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # the replays update the weights
            state = run.optimizer.state[next(model.parameters())]
            assert float(state["step"]) == 30
            # β is read from its tensor at every replay: β 0 drops the KL term from the total
            zero = captured(x, None, 0.0)
            assert float(zero[0]) == pytest.approx(float(zero[1]), rel=1e-5) and float(zero[2]) > 0
    assert final[True] == pytest.approx(final[False], rel=0.05)


@cuda
def test_a_run_with_the_captured_step_checkpoints_and_resumes(tmp_path, tiny_config):
    """End to end on CUDA: two epochs with train.cuda_graph, then a resume (a new capture) to a third; the
    capturable optimizer's state goes through last.pt like any other."""
    config = tiny_config(tmp_path, train={"epochs": 2, "device": "cuda", "compile": False, "cuda_graph": True})
    assert main(["train", "--config", str(config)]) == 0
    log = (tmp_path / "logs" / "tiny" / "train.log").read_text()
    assert "the whole step replayed as a CUDA graph" in log and "first epoch, capturing" in log
    assert main(["train", "--config", str(config), "--resume", "--set", "train.epochs=3"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "logs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in rows)
    assert rows[2]["train_recon"] < rows[0]["train_recon"]  # the replays train


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


def test_a_compiled_run_trains_without_graph_breaks_and_times_its_compilation_apart(tmp_path, tiny_config):
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
