"""torchrun + DistributedDataParallel on CPU (gloo, 2 processes): same losses as one process with the same
global batch, one set of files, resume across world sizes, clear errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vaegen
from vaegen.apps.cli import main

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}", "-m", "vaegen", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_config):
    one = tiny_config(tmp_path / "one", train={"epochs": 3, "batch_size": 32})
    two = tiny_config(tmp_path / "two", train={"epochs": 3, "batch_size": 32})
    assert main(["train", "--config", str(one)]) == 0
    done = torchrun("--config", str(two))
    assert done.returncode == 0, done.stderr[-3000:]

    single, parallel = rows(tmp_path / "one" / "logs" / "tiny"), rows(tmp_path / "two" / "logs" / "tiny")
    assert [row["epoch"] for row in parallel] == [1, 2, 3]
    # the same batches and global batch size; only the reparameterisation noise and the per-process
    # BatchNorm statistics differ, which moves the losses by well under 1 %
    for a, b in zip(single, parallel):
        for key in ("train_loss", "train_recon", "val_nelbo"):
            assert b[key] == pytest.approx(a[key], rel=0.01), (a["epoch"], key)

    # process 0 alone writes: one run folder, each epoch logged once, one best model
    assert [p.name for p in (tmp_path / "two" / "logs").iterdir()] == ["tiny"]
    log = (tmp_path / "two" / "logs" / "tiny" / "train.log").read_text()
    assert [line.split("/")[0] for line in log.splitlines() if line.startswith("epoch")] == ["epoch   1", "epoch   2", "epoch   3"]
    assert [p.name for p in (tmp_path / "two" / "best").iterdir()] == ["tiny"]
    assert done.stdout.count("done: 3 epoch(s)") == 1


def test_a_run_resumes_across_world_sizes(tmp_path, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 2, "batch_size": 32})
    run = tmp_path / "logs" / "tiny"
    done = torchrun("--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3"]) == 0  # two processes -> one
    done = torchrun("--resume", str(run), "--set", "train.epochs=4")  # one -> two
    assert done.returncode == 0, done.stderr[-3000:]
    assert [row["epoch"] for row in rows(run)] == [1, 2, 3, 4]
    losses = [row["train_loss"] for row in rows(run)]
    assert losses == sorted(losses, reverse=True)  # still learning after each change of world size


def test_a_global_batch_that_does_not_split_is_refused(tmp_path, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 1, "batch_size": 31})
    done = torchrun("--config", str(config))
    assert done.returncode != 0 and "(exitcode: 2)" in done.stderr  # torchrun itself exits 1
    assert done.stderr.count("error: train.batch_size 31 (the global batch) does not split evenly over 2 processes") == 1


def test_sync_batchnorm_on_cpu_is_refused(tmp_path, tiny_config):
    config = tiny_config(tmp_path, train={"epochs": 1, "sync_batchnorm": True})
    done = torchrun("--config", str(config))
    assert done.returncode != 0
    assert done.stderr.count("error: train.sync_batchnorm needs CUDA") == 1  # said once, by process 0
    assert "(exitcode: 2)" in done.stderr  # the processes end with vaegen's config-error code


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"adversarial": {"enabled": True}}, "adversarial.enabled is not supported under torchrun yet; train the VAE-GAN in one process"),
        ({"train": {"cuda_graph": True}}, "train.cuda_graph is not supported under torchrun yet; set train.cuda_graph: false"),
    ],
)
def test_one_process_options_are_refused_under_torchrun(tmp_path, monkeypatch, capsys, settings, message, tiny_config):
    """Refused before anything is built or written, in every process (the group is faked: two processes)."""
    monkeypatch.setattr("vaegen.training.distributed.world_size", lambda: 2)
    assert main(["train", "--config", str(tiny_config(tmp_path, **settings))]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "logs" / "tiny").exists()  # nothing of the run is written


def test_training_with_evaluation_on_scores_mid_run_and_at_the_end(tmp_path, tiny_config):
    """Process 0 scores alone: the metrics must not wait for the other processes (they never join its collectives)."""
    config = tiny_config(
        tmp_path, train={"epochs": 3, "batch_size": 32}, eval={"every": 2, "backbone": "efficientnet-lite0", "num_samples": 32},
        output={"select": "fid"},
    )
    done = torchrun("--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    run = rows(tmp_path / "logs" / "tiny")
    assert [row["epoch"] for row in run] == [1, 2, 3]
    assert ["fd_efficientnet_lite0" in row for row in run] == [False, True, True]
    best = json.loads((tmp_path / "best" / "tiny" / "metrics.json").read_text())
    assert best["criterion"] == "fd_efficientnet_lite0" and best["epoch"] in (2, 3)
    assert done.stdout.count("done: 3 epoch(s)") == 1


def test_a_divergence_stops_every_process_with_one_message(tmp_path, tiny_config):
    """One step per epoch: the loss is finite, the weights after the step are not; no checkpoint is written."""
    config = tiny_config(tmp_path, optim={"lr": 10.0}, train={"epochs": 2, "batch_size": 256}, eval={"every": 1})
    done = torchrun("--config", str(config))
    assert done.returncode != 0 and "(exitcode: 3)" in done.stderr
    assert done.stderr.count("error: ") == 1 and re.search(r"error: .*became (NaN|infinite).* at epoch 1", done.stderr)
    assert not (tmp_path / "logs" / "tiny" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("family", ["hvae", "vq_prior", "dcgan", "realnvp", "ddpm"])
def test_the_new_families_train_evaluate_and_resume_under_torchrun(tmp_path, tiny_config, family):
    evaluation = {"every": 1, "backbone": "efficientnet-lite0", "num_samples": 20, "batch_size": 10, "kid_subset_size": 10}
    model = {"name": "hvae", "latent_channels": 2, "blocks": 1}
    if family == "dcgan":  # two players, each update's gradients averaged over the processes by hand
        model = {"name": "dcgan", "gan_loss": "wgan_gp", "critic_steps": 2}
    if family == "vq_prior":
        vq = {"name": "conv_vqvae", "codebook_size": 16, "code_dim": 4}
        stage = tiny_config(tmp_path / "vq", train={"epochs": 1}, model=vq, sampler={"name": "gmm", "components": 2},
                            output={"select": "val_recon", "run_name": "vq"})
        assert main(["train", "--config", str(stage)]) == 0
        model = {"name": "vq_prior", "prior_layers": 1, "prior_width": 16, "prior_heads": 2, "prior_dropout": 0.1,
                 "first_stage": str(tmp_path / "vq" / "best" / "vq")}
    if family == "realnvp":
        model = {"name": "realnvp", "flow_scales": 2, "flow_couplings": 2, "flow_width": 8, "flow_blocks": 1}
    if family == "ddpm":
        model = {"name": "ddpm", "layers_per_block": 1, "timesteps": 50, "sample_steps": 4, "conditional": "embedding",
                 "guidance": 2.0}
    config = tiny_config(tmp_path, model=model, eval=evaluation, train={"epochs": 2}, output={"select": "fid"})
    done = torchrun("--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "logs" / "tiny"
    done = torchrun("--resume", str(run), "--set", "train.epochs=3")
    assert done.returncode == 0, done.stderr[-3000:]
    logged = rows(run)
    assert [row["epoch"] for row in logged] == [1, 2, 3] and all("fd_efficientnet_lite0" in row for row in logged)
    loaded = vaegen.load(tmp_path / "best" / "tiny")
    labels = "Red" if loaded.is_conditional else None
    assert loaded.sample(2, labels=labels, seed=0).shape == (2, 3, 16, 16)
