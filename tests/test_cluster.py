"""Operating train.py on clusters: a killed launcher never leaves train.py running, every resumable stop (a signal,
the launcher's exit, --max_train_time) checkpoints and exits with status 75, and `hf-ddpm export` writes any
checkpoint's pipeline, equal to the one training writes when it ends there."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from support.train_server import ROOT, TRAIN, assert_same_weights, final_weights, run_train, train_args

from hf_ddpm.options import UsageError
from training.checkpoints import MARKER
from training.config import parse_config, parse_duration

EXIT_RESUMABLE = 75  # the documented exit status of a resumable stop (README: "Clusters: stopping, time limits...")
LONG = 100_000  # --max_train_steps of runs that only a stop ends
PIPELINE_FILES = ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json", "training_config.json")
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def status(output_dir) -> dict:
    return json.loads((output_dir / "run_status.json").read_text())


def wait_until_training(output_dir, process, timeout=300) -> None:
    """Until the loop runs (its signal handlers are installed when run_status.json says "running")."""
    deadline = time.monotonic() + timeout
    while not (output_dir / "run_status.json").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "train.py did not start training"
        time.sleep(0.05)


def stopped_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if "resumable (exit status 75)" in line]
    return line


def assert_stopped_resumably(output_dir, stderr: str, reason: str) -> int:
    """The stop's log line and run_status.json name the same complete checkpoint; returns its step."""
    facts = status(output_dir)
    assert facts["status"] == "stopped" and facts["reason"] == reason and facts["exit_status"] == EXIT_RESUMABLE
    step = facts["step"]
    checkpoint = output_dir / "checkpoints" / f"checkpoint-{step}"
    assert facts["checkpoint"] == str(checkpoint) and (checkpoint / MARKER).is_file()
    assert json.loads((checkpoint / MARKER).read_text())["global_step"] == step
    line = stopped_line(stderr)
    assert f"stopped at step {step} ({reason})" in line and f"checkpoint {checkpoint};" in line
    assert line.endswith(facts["resume"]) and facts["resume"].endswith("--resume_from_checkpoint latest")
    assert not (output_dir / "pipeline").exists()
    return step


def resume_for_two_steps(args, output_dir, step: int) -> None:
    """Continue from the newest checkpoint to step + 2; the run then finishes."""
    run_train(args + ["--resume_from_checkpoint", "latest", "--max_train_steps", str(step + 2)])
    assert status(output_dir)["status"] == "finished" and status(output_dir)["step"] == step + 2
    assert (output_dir / "checkpoints" / f"checkpoint-{step + 2}" / MARKER).is_file()
    assert (output_dir / "pipeline" / UNET_WEIGHTS).is_file()


# ----------------------------------------------------------------------------------------- the launcher dies
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killing_the_launcher_stops_train_py_with_a_checkpoint(tiny_config, tmp_path, how):
    args = train_args(tiny_config, tmp_path, max_train_steps=LONG, checkpointing_steps=LONG, logging_steps=1)
    launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--cpu", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_cpu_threads_per_process", "1"]
    launcher = subprocess.Popen([*launch, str(TRAIN), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    wait_until_training(tmp_path, launcher)
    (child,) = psutil.Process(launcher.pid).children()
    assert str(TRAIN) in child.cmdline()
    launcher.send_signal(how)
    try:  # train.py holds the launcher's stderr: it ends when train.py has exited
        _, stderr = launcher.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        child.kill()
        raise
    assert launcher.returncode == -how
    deadline = time.monotonic() + 60
    while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:  # not our child: init reaps it
        assert time.monotonic() < deadline, "train.py still runs after its launcher died"
        time.sleep(0.05)
    step = assert_stopped_resumably(tmp_path, stderr, "the launcher exited")
    assert stopped_line(stderr).split("resume: ")[1].startswith(f"accelerate launch ... {TRAIN} ")
    if how == signal.SIGTERM:  # the same checkpoint writer in both cases: one resume shows it continues
        resume_for_two_steps(args, tmp_path, step)


def test_a_launcher_is_gone_once_the_parent_changes_and_waited_for_until_then(monkeypatch):
    """The launcher's SIGTERM can come before its process has gone: launcher_gone waits for the parent to change."""
    from training import stopping

    monkeypatch.setattr(stopping, "PARENT_PID", os.getppid() + 1)  # the parent train.py started under has exited
    assert stopping.launcher_gone(wait=0.0)
    monkeypatch.setattr(stopping, "PARENT_PID", os.getppid())  # still the same parent: waits, then says alive
    start = time.monotonic()
    assert not stopping.launcher_gone(wait=0.2)
    assert time.monotonic() - start >= 0.2


# ----------------------------------------------------------------------------------------- a signal to train.py
def test_sigusr1_to_train_py_stops_it_resumably_with_status_75(tiny_config, tmp_path):
    """SLURM's `--signal=USR1@SECONDS` (SIGTERM and SIGINT: tests/test_train.py); the resume command keeps the
    options, without the token or an earlier --resume_from_checkpoint."""
    args = train_args(tiny_config, tmp_path, max_train_steps=LONG, checkpointing_steps=LONG)
    process = subprocess.Popen([sys.executable, str(TRAIN), *args, "--hub_token", "hf_not_a_real_token_at_all",
                                "--resume_from_checkpoint", "latest"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_until_training(tmp_path, process)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_RESUMABLE, stderr[-3000:]
    assert_stopped_resumably(tmp_path, stderr, "SIGUSR1")
    resume = status(tmp_path)["resume"]
    assert resume.startswith(f"python {TRAIN} --model_config_name_or_path {tiny_config} ")
    assert "hf_not_a_real" not in stderr and "hf_not_a_real" not in resume and resume.count("--resume_from") == 1


# ------------------------------------------------------------------------------ --max_train_time, then export
@pytest.mark.parametrize("text, seconds", [("23h30m", 84600), ("90m", 5400), ("45s", 45), ("1d2h", 93600),
                                           ("1.5h", 5400), (" 2H ", 7200)])
def test_durations_are_read_with_their_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["90", "1h1d", "30 minutes", "1h30", "0s", "h", ""])
def test_a_bad_max_train_time_is_refused_in_one_line(tiny_config, tmp_path, text):
    with pytest.raises(UsageError) as refused:
        parse_config(train_args(tiny_config, tmp_path, max_train_time=text))
    message = str(refused.value)
    assert "\n" not in message and "(--max_train_time)" in message and "23h30m" in message
    assert not tmp_path.joinpath("checkpoints").exists()


@pytest.fixture(scope="module")
def timed_run(tiny_config, tmp_path_factory):
    """A run stopped by --max_train_time 1s (counted from the process start: it runs out after the first step),
    then resumed to its end at step 4, checkpointing every 2 steps."""
    output_dir = tmp_path_factory.mktemp("timed")
    args = train_args(tiny_config, output_dir, max_train_steps=4, checkpointing_steps=2, logging_steps=1)
    stopped = run_train(args + ["--max_train_time", "1s"], check=False)
    resumed = run_train(args + ["--resume_from_checkpoint", "latest"])
    return output_dir, stopped, resumed


def step_stopped_by_max_train_time(stderr: str) -> int:
    """The step of the --max_train_time stop, as its log line says (run_status.json has moved on to "finished")."""
    line = stopped_line(stderr)
    assert "(--max_train_time 1s)" in line
    return int(line.split("stopped at step ")[1].split(" ")[0])


def test_max_train_time_stops_with_a_checkpoint_and_the_run_resumes(timed_run):
    output_dir, stopped, resumed = timed_run
    assert stopped.returncode == EXIT_RESUMABLE, stopped.stderr[-3000:]
    assert step_stopped_by_max_train_time(stopped.stderr) == 1
    assert "resumed from" in resumed.stderr and "checkpoint-1 at step 1" in resumed.stderr
    assert status(output_dir)["status"] == "finished" and status(output_dir)["step"] == 4
    names = sorted(p.name for p in (output_dir / "checkpoints").iterdir())
    assert names == ["checkpoint-1", "checkpoint-2", "checkpoint-4"]


def test_export_of_the_final_checkpoint_equals_the_run_pipeline(timed_run, tmp_path, capsys):
    output_dir, _, _ = timed_run
    code, out, err = run_cli(["export", str(output_dir / "checkpoints" / "checkpoint-4"), "--output",
                              str(tmp_path / "exported")], capsys)
    assert code == 0, err
    assert "step 4, EMA weights" in out
    pipeline, exported = output_dir / "pipeline", tmp_path / "exported"
    exported_weights = load_file(exported / UNET_WEIGHTS)
    assert_same_weights(exported_weights, final_weights(output_dir))  # tensor by tensor, bitwise
    assert all(w.dtype == torch.float32 for w in exported_weights.values())
    for name in PIPELINE_FILES:  # the same configs, and the same run record for the card
        assert json.loads((exported / name).read_text()) == json.loads((pipeline / name).read_text()), name
    card = (exported / "README.md").read_text()
    assert "library_name: diffusers" in card and "samples.png" in card and (exported / "samples.png").is_file()
    assert json.loads((exported / "training_config.json").read_text())["max_train_steps"] == 4


def test_export_of_an_intermediate_checkpoint_loads_in_stock_diffusers(timed_run, tmp_path, capsys):
    from diffusers import DDPMPipeline

    output_dir, _, _ = timed_run
    checkpoint = output_dir / "checkpoints" / "checkpoint-2"
    code, out, err = run_cli(["export", str(checkpoint), "--output", str(tmp_path / "step-2"), "--no-samples"],
                             capsys)
    assert code == 0, err
    assert not (tmp_path / "step-2" / "samples.png").exists()
    assert json.loads((tmp_path / "step-2" / "training_config.json").read_text())["max_train_steps"] == 2
    ema = load_file(checkpoint / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert_same_weights(load_file(tmp_path / "step-2" / UNET_WEIGHTS), ema)
    pipe = DDPMPipeline.from_pretrained(tmp_path / "step-2")
    assert type(pipe).__module__.startswith("diffusers.") and type(pipe.unet).__module__.startswith("diffusers.")
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 28, 28, 1) and ((0 <= images) & (images <= 1)).all()


def test_export_of_a_run_without_ema_writes_its_raw_weights(tiny_config, tmp_path, capsys):
    """--no_use_ema: the checkpoint holds no EMA folder; export writes the trained weights, equal to the run's own
    pipeline at its end, and says which weights they are."""
    output_dir = tmp_path / "run"
    run_train(train_args(tiny_config, output_dir, max_train_steps=2, checkpointing_steps=2, no_use_ema=True))
    checkpoint = output_dir / "checkpoints" / "checkpoint-2"
    assert not (checkpoint / "unet_ema").exists()
    code, out, err = run_cli(["export", str(checkpoint), "--output", str(tmp_path / "exported"), "--no-samples"],
                             capsys)
    assert code == 0, err
    assert "step 2, raw (the run had --no_use_ema) weights" in out
    assert_same_weights(load_file(tmp_path / "exported" / UNET_WEIGHTS), final_weights(output_dir))
    for name in PIPELINE_FILES:
        assert json.loads((tmp_path / "exported" / name).read_text()) == \
            json.loads((output_dir / "pipeline" / name).read_text()), name


def test_export_refuses_what_is_no_checkpoint_and_an_existing_output_in_one_line(timed_run, tmp_path, capsys):
    output_dir, _, _ = timed_run
    checkpoint = str(output_dir / "checkpoints" / "checkpoint-4")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / ".partial-checkpoint-6").mkdir()
    new = ["--output", str(tmp_path / "a")]
    cases = [
        ([str(output_dir / "pipeline"), *new], "is a saved pipeline, not a training checkpoint"),
        ([str(output_dir), *new], f"pass one of its checkpoints, such as {checkpoint}"),
        ([str(tmp_path / ".partial-checkpoint-6"), *new], "is not a complete training checkpoint"),
        ([str(tmp_path / "missing"), *new], "does not exist (CHECKPOINT)"),
        ([checkpoint], "the folder to write is missing (--output)"),
        ([checkpoint, "--output", str(tmp_path / "taken")], "is a folder with files (--output)"),
        ([checkpoint, "--output", str(output_dir / "pipeline")], "is a saved pipeline (--output)"),
        ([checkpoint, "--output", f"{checkpoint}/inside"], "lies inside a checkpoint"),
    ]
    for argv, problem in cases:
        code, out, err = run_cli(["export", *argv], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("hf-ddpm export: error: "), err
        assert problem in err, err
    assert os.listdir(tmp_path / "taken") == ["notes.txt"] and (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists() and not (tmp_path / ".partial-a").exists()
