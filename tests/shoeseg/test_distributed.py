"""Training in several processes: torchrun's environment, the global batch, and `shoeseg train` under torchrun
on CPU (two gloo processes, a few iterations on tiny generated images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shoeseg import distributed
from shoeseg.distributed import DistEnv, per_process_batch
from shoeseg.optim import train_step
from shoeseg.train import TrainConfig, TrainResult
from tests.synth import make_shoe_dataset

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_environment_is_read_and_checked():
    assert DistEnv.from_env({}) == DistEnv(rank=0, local_rank=0, world_size=1)
    assert not DistEnv.from_env({}).enabled and DistEnv.from_env({}).is_main
    env = DistEnv.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (env.rank, env.local_rank, env.world_size, env.enabled, env.is_main) == (3, 1, 4, True, False)
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "two"}, {"WORLD_SIZE": "0"},
                {"RANK": "0", "LOCAL_RANK": "-1", "WORLD_SIZE": "2"}):
        with pytest.raises(ValueError):
            DistEnv.from_env(bad)


def test_ims_per_batch_is_the_global_batch():
    assert per_process_batch(2, 1) == 2 and per_process_batch(4, 2) == 2 and per_process_batch(8, 8) == 1
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        per_process_batch(3, 2)
    with pytest.raises(ValueError, match="--ims-per-batch 4"):
        per_process_batch(2, 4)


def test_one_process_joins_no_group_and_wraps_nothing():
    import torch.distributed as dist

    one = DistEnv()
    model = torch.nn.Linear(2, 2)
    with distributed.process_group(one, torch.device("cpu")):
        assert not dist.is_initialized()
        assert distributed.wrap(model, one, torch.device("cpu")) is model
        assert distributed.mean_over_processes(one) is None
        assert distributed.per_rank(one, torch.device("cpu"), [3, 6]) == [[3, 6]]
        distributed.barrier(one, torch.device("cpu"))
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"


class _FakeDetector(torch.nn.Module):
    """Returns torchvision's five loss names, each a function of one parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, images, targets):
        names = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
        return {n: self.w * (k + 1) for k, n in enumerate(names)}


def test_losses_are_averaged_before_the_nan_check():
    model = _FakeDetector()
    params = list(model.parameters())
    kw = dict(optimizer=torch.optim.SGD(params, lr=0.0), scaler=torch.amp.GradScaler("cuda", enabled=False),
              params=params)
    image = [torch.zeros(3, 4, 4)]
    assert train_step(model, image, [{}], **kw)["total_loss"] == pytest.approx(15.0)
    assert train_step(model, image, [{}], reduce=lambda v: v / 3, **kw)["total_loss"] == pytest.approx(5.0)
    # another process's NaN reaches every process through the mean: all stop at the same iteration
    with pytest.raises(FloatingPointError, match="loss became nan"):
        train_step(model, image, [{}], reduce=lambda v: v + float("nan"), **kw)


def test_result_survives_the_json_hand_off(tmp_path):
    from shoeseg.evaluate import EvalResult

    result = TrainResult(checkpoint=tmp_path / "model.pt", metrics=[{"iteration": 2, "total_loss": 1.5}],
                         run_dir=tmp_path, version="v1", class_names=["shoe"],
                         eval=EvalResult(metrics={"segm_AP": 0.25}, losses={"total_loss": 2.0}, n_images=3,
                                         n_instances=4, per_image=[{"file_name": "a.png", "segm_AP": 0.5}]),
                         loss_plot=tmp_path / "loss_curve.png", wall_s=1.25, final_metrics={"iterations": 2})
    back = TrainResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back.checkpoint == result.checkpoint and back.version == "v1" and back.metrics == result.metrics
    assert back.eval.metrics == {"segm_AP": 0.25} and back.eval.n_instances == 4
    assert back.eval.per_image == [{"file_name": "a.png", "segm_AP": 0.5}]  # what the gate pairs
    assert (back.loss_plot, back.wall_s, back.final_metrics) == (result.loss_plot, 1.25, {"iterations": 2})


def test_config_file_replaces_the_recipe_options(tmp_path):
    from dataclasses import asdict

    from shoeseg_app.cli.core import _config_from_file

    cfg = TrainConfig.for_profile("cpu", device="cpu", iters=7, steps=(3, 5), progress_bar=False)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(asdict(cfg)))
    assert _config_from_file(path, given={"--iters": None}) == cfg
    with pytest.raises(ValueError, match="leave out --iters"):
        _config_from_file(path, given={"--iters": 3})
    path.write_text(json.dumps({"iters": 3, "lr": 0.1}))
    with pytest.raises(ValueError, match="unknown training settings"):
        _config_from_file(path, given={})


def test_shoeseg_train_under_torchrun_on_two_cpu_processes(tmp_path):
    from shoeseg.checkpoint import load_checkpoint
    from via_tools.io import save

    images = tmp_path / "images"
    ds = make_shoe_dataset(images, n_images=5, size_px=(64, 80), seed=5)
    data = save(ds, tmp_path / "shoes.json", fmt="via2")
    out, result_file = tmp_path / "run", tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "shoeseg_app", "train", "--data", str(data), "--images", str(images), "--out", str(out),
           "--profile", "cpu", "--weights", "none", "--device", "cpu", "--iters", "4", "--log-period", "2",
           "--ims-per-batch", "2", "--min-size", "64", "--max-size", "80", "--roi-batch", "32",
           "--warmup-iters", "2", "--val-frac", "0.2", "--result", str(result_file)]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    print(f"\ntorchrun, 2 processes, 4 iterations: {seconds:.1f} s")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]

    # both ranks joined and stepped, each on half of the global batch
    for rank in (0, 1):
        assert f"rank {rank}/2 joined the gloo process group" in output
        assert f"rank {rank}/2 on cpu: 1 of the 2 images per iteration" in output
        assert f"rank {rank}/2: 4 iterations, 4 images" in output
    # rank 0 alone wrote the run directory: one checkpoint, one row per logged iteration, one report
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "loss_curve.png", "metrics.jsonl", "model.pt",
                                                     "split.json"]
    assert list(tmp_path.rglob("*.pt")) == [out / "model.pt"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4]
    assert output.count("iter 4/4 ") == 1 and run.stdout.count("model ") == 1

    # the checkpoint loads and says how it was trained; the result file names it
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.metrics["distributed"] == {
        "world_size": 2, "backend": "gloo", "ims_per_batch": 2, "ims_per_process": 1,
        "iterations_per_rank": [4, 4], "images_per_rank": [4, 4]}
    assert ckpt.config["ims_per_batch"] == 2 and "segm_AP" in ckpt.metrics and ckpt.class_names == ["shoe"]
    assert not any(k.startswith("module.") for k in ckpt.model.state_dict())  # saved without the DDP wrapper
    with torch.no_grad():
        ckpt.model([torch.rand(3, 64, 80)])
    result = json.loads(result_file.read_text())
    assert result["version"] == ckpt.version and Path(result["checkpoint"]) == out / "model.pt"
    assert [r["iteration"] for r in result["metrics"]] == [2, 4] and result["eval"]["n_images"] == 1
