"""The one declarative configuration of training/train.py: every option with its help, default, check and group.

Precedence: the defaults below < a `--config` YAML preset (a name in training/configs/ or a file) < flags. Every
field is made with `hf_ddpm.options.option`, so `--help` lists it under its group with its default, choices and
range, and `check_options` checks a value however it arrived (flag, preset, Python); `TrainConfig.validate` adds
the checks between options. Checks that need the output folder, the data or the model are in train.py's setup
and training/checkpoints.py, and also run before anything is written. Option names follow diffusers'
`examples/unconditional_image_generation/train_unconditional.py` where they overlap; its other flags are in
`RENAMED`, with what to use here.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml
from accelerate.utils import PrecisionType
from diffusers.optimization import SchedulerType

import hf_ddpm
from hf_ddpm.gaussian_diffusion import LEARNED_VARIANCES, LOSS_TYPES, LOSS_WEIGHTINGS, PREDICTION_TYPES, VARIANCE_TYPES
from hf_ddpm.options import DocstringHelpFormatter, OptionParser, UsageError, check_options, declared, flag, is_set, option
from hf_ddpm.schedules import SCHEDULES

CONFIG_DIR = Path(__file__).parent / "configs"
PROG = "train.py"
DEFAULT_PRESET = "small28"  # the UNet when neither --model_preset nor --model_config_name_or_path is given
# fp8 needs an Accelerate recipe (TransformerEngine / MS-AMP) that train.py does not set up.
MIXED_PRECISIONS = tuple(p.value for p in PrecisionType if p.value != "fp8")
# --timestep_sampler: hf_ddpm.timestep_sampling's samplers by name
TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")
# piecewise_constant needs step rules that train.py has no option for.
LR_SCHEDULERS = tuple(s.value for s in SchedulerType if s.value != "piecewise_constant")
# --compile_mode: torch.compile's modes (torch._inductor.list_mode_options)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# --adam_implementation: torch.optim.AdamW's kernels (fused=True, foreach=True, or neither)
ADAM_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")
# Accelerate's trackers that train.py logs the same scalars and sample grids to (wandb: the optional extra).
LOGGERS = ("tensorboard", "wandb")
WANDB_INSTALL = 'pip install "hf-ddpm[wandb]"'

# diffusers' train_unconditional.py flags that have no meaning here, with what to use instead.
RENAMED = {
    "--num_epochs": "use --max_train_steps (hf-ddpm counts optimizer steps, not epochs)",
    "--save_images_epochs": "use --save_images_steps (counted in optimizer steps)",
    "--save_model_epochs": "use --checkpointing_steps; the final pipeline is written when training ends",
    "--local_rank": "not needed: `accelerate launch` and torchrun pass the rank in the environment",
    "--enable_xformers_memory_efficient_attention": "not needed: the UNet uses PyTorch's scaled_dot_product_attention",
    "--preserve_input_precision": "not supported: images are read as 8-bit grayscale or RGB",
    "--ddpm_num_train_steps": "use --ddpm_num_steps",
    "--config_name": "use --config (a YAML preset) or --model_config_name_or_path (a UNet config)",
}


# ------------------------------------------------------------------------------------------ value checks
def existing_folder_of_images(value: str) -> None:
    """--train_data_dir: a folder that exists and holds at least one image file imagefolder would read."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    path = Path(value)
    if not path.is_dir():
        problem = "is a file, not a folder" if path.exists() else "does not exist"
        raise UsageError(f"{value} {problem}", flag("train_data_dir"), "pass an existing folder of image files")
    suffixes = {s.lower() for s in ImageFolder.EXTENSIONS}
    if not any(p.suffix.lower() in suffixes for p in path.rglob("*") if p.is_file()):
        raise UsageError(f"{value} has no image files", flag("train_data_dir"),
                         "pass a folder that holds image files (PNG, JPEG, ...)")


def existing_file(name: str, what: str):
    def check(value: str) -> None:
        path = Path(value)
        if not path.is_file():
            problem = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise UsageError(f"{value} {problem}", flag(name), f"pass {what}")
    return check


# What a run writes under --output_dir besides its logs (checkpoints.py, outputs.py); --logging_dir is none of them.
RUN_FOLDERS = {"checkpoints": "keeps its checkpoints", "pipeline": "writes its pipeline",
               "samples": "writes its sample grids"}


def another_run(path: Path, own_run: Path | None = None) -> str | None:
    """What the resolved `path` is, or lies in, that belongs to another run: a saved pipeline, a checkpoint or a run
    folder (one with a complete checkpoint or a pipeline); None if nothing is, or if `own_run` comes first."""
    try:
        for folder in (path, *path.parents):
            if folder == own_run:
                return None
            if (folder / "model_index.json").is_file():
                return "is a saved pipeline" if folder == path else f"lies inside a saved pipeline ({folder})"
            if (folder / "training_state.json").is_file():
                return "is a checkpoint" if folder == path else f"lies inside a checkpoint ({folder})"
            if folder != path and ((folder / "pipeline" / "model_index.json").is_file()
                                   or any((folder / "checkpoints").glob("checkpoint-*/training_state.json"))):
                return f"lies inside another run's folder ({folder})"
    except OSError:  # a folder that cannot be read holds nothing this run could write over
        return None
    return None


def repo_id(value: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as error:
        raise UsageError(f"invalid repo id {value!r} ({' '.join(str(error).split())})", flag("hub_model_id"),
                         "use USER/NAME") from None


def torch_seed(value: int) -> None:
    if not 0 <= value < 2**63:
        raise UsageError(f"{value} is not in [0, 2**63)", flag("seed"), "pass a seed in [0, 2**63)")


DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
DURATION_UNITS = (86400, 3600, 60, 1)  # seconds of d, h, m, s


def parse_duration(value: str) -> float:
    """--max_train_time: the seconds of a duration written with units d, h, m, s in that order (23h30m, 90m,
    45s, 1d2h, 1.5h); refused in one line when it is anything else or zero."""
    match = DURATION.fullmatch(value.strip().lower())
    if not match or not any(match.groups()):
        raise UsageError(f"{value!r} is not a duration", flag("max_train_time"),
                         "write it with units d, h, m and s in that order, such as 23h30m, 90m, 45s or 1d2h")
    seconds = sum(float(number) * unit for number, unit in zip(match.groups(), DURATION_UNITS) if number)
    if seconds <= 0:
        raise UsageError(f"{value!r} leaves no time to train", flag("max_train_time"),
                         "pass a positive duration such as 23h30m, or leave it out")
    return seconds


# ------------------------------------------------------------------------------------------------ options
@dataclass
class TrainConfig:
    """Every option of train.py; counted in optimizer steps, whatever the number of processes or accumulation."""

    # data: one of dataset_name / train_data_dir / idx_images, or the offline Fashion-MNIST default
    dataset_name: str | None = option(
        None, "a Hugging Face Hub dataset name or a local dataset folder (datasets.load_dataset); default: Debian's "
        "Fashion-MNIST", free="opened by datasets.load_dataset at start-up; its errors stop the run before "
        "anything is written", excludes=("train_data_dir", "idx_images"), group="data")
    dataset_config_name: str | None = option(
        None, "the config of --dataset_name, when it has several", free="checked with --dataset_name by datasets",
        group="data")
    train_data_dir: str | None = option(
        None, "a folder of image files (datasets' imagefolder layout; subfolders are read too)",
        check=existing_folder_of_images, excludes=("idx_images",), group="data")
    idx_images: str | None = option(
        None, "an MNIST-style IDX image file, gzipped or not (e.g. train-images-idx3-ubyte.gz)",
        check=existing_file("idx_images", "an IDX image file such as train-images-idx3-ubyte(.gz)"), group="data")
    image_column: str | None = option(
        None, "the column of --dataset_name / --train_data_dir that holds the images; default: the one Image "
        "column, or one named image/img", free="checked against the dataset's columns when it is opened",
        group="data")
    cache_dir: str | None = option(
        None, "where datasets caches downloads and prepared data; default: ~/.cache/huggingface",
        free="validate(): outside other runs; datasets creates it", group="data")
    resolution: int | None = option(
        None, "image side in pixels: images are resized (shorter side) and cropped to it; default: the model's "
        "sample_size", range="[1, inf)", group="data")
    center_crop: bool = option(False, "crop the centre of resized images instead of a random crop per epoch",
                               free="a switch", group="data")
    random_flip: bool = option(False, "flip training images horizontally with probability 0.5",
                               free="a switch", group="data")
    convert_channels: bool = option(
        False, "convert the images to the model's channels (grayscale <-> RGB) instead of refusing data whose "
        "channels differ from the model's in_channels", free="a switch", group="data")
    max_train_samples: int | None = option(None, "train on the first N images only (quick runs); default: all",
                                           range="[1, inf)", group="data")
    dataloader_num_workers: int = option(0, "DataLoader worker processes per training process (0: load in the "
                                         "training process)", range="[0, inf)", group="data")

    # model
    model_preset: str | None = option(
        None, f"a network of the paper by name (hf_ddpm.UNET_PRESETS); default: {DEFAULT_PRESET} unless "
        "--model_config_name_or_path is given", choices=tuple(hf_ddpm.UNET_PRESETS), group="model")
    model_config_name_or_path: str | None = option(
        None, "a UNet2DModel config (a config.json, or a folder / Hub repo holding one) instead of a preset",
        free="read by UNet2DModel.load_config at start-up; errors name this option",
        excludes=("model_preset",), group="model")
    learned_variance: bool = option(
        False, "learn the reverse-process variance (Improved DDPM): the model outputs 2C channels; needs "
        "--loss_type hybrid or kl", free="a switch; checked against --variance_type and --loss_type",
        group="model")
    dropout: float | None = option(None, "dropout probability of the residual blocks; default: the preset's",
                                   range="[0, 1)", group="model")

    # diffusion and objective
    ddpm_num_steps: int = option(1000, "diffusion steps T", range="[1, inf)", group="diffusion")
    ddpm_beta_schedule: str = option("linear", "beta schedule (hf_ddpm.schedules)", choices=SCHEDULES,
                                     group="diffusion")
    prediction_type: str = option("epsilon", "what the network predicts: the noise, x_0, or v",
                                  choices=PREDICTION_TYPES, group="diffusion")
    variance_type: str | None = option(
        None, "reverse-process variance; default: fixed_small, or learned_range with --learned_variance",
        choices=VARIANCE_TYPES, group="diffusion")
    loss_type: str = option("simple", "objective: simple (L_simple, eq. 14), kl (the bound's terms), hybrid "
                            "(L_simple + 0.001 L_vlb, Improved DDPM)", choices=LOSS_TYPES, group="diffusion")
    loss_weighting: str | None = option(
        None, "weighting of the MSE term: min_snr (Hang et al. 2023) or p2 (Choi et al. 2022); default: none",
        choices=tuple(w for w in LOSS_WEIGHTINGS if w), group="diffusion")
    snr_gamma: float = option(5.0, "gamma of --loss_weighting min_snr: weight min(SNR, gamma) / SNR",
                              range="(0, inf)", group="diffusion")
    p2_k: float = option(1.0, "k of --loss_weighting p2: weight (k + SNR)^-gamma", range="[0, inf)",
                         group="diffusion")
    p2_gamma: float = option(1.0, "gamma of --loss_weighting p2: weight (k + SNR)^-gamma", range="[0, inf)",
                             group="diffusion")
    timestep_sampler: str = option(
        "uniform", "how training draws t: uniform (the paper), or loss-second-moment (Improved DDPM Sec. 3.3: "
        "p_t proportional to the RMS of the last --timestep_sampler_history bound terms at t, uniform until every t "
        "has them, losses weighted by 1 / (T p_t)); loss-second-moment needs --loss_type kl or hybrid",
        choices=TIMESTEP_SAMPLERS, group="diffusion")
    timestep_sampler_history: int = option(
        10, "bound terms kept per t by --timestep_sampler loss-second-moment", range="[1, inf)", group="diffusion")

    # optimization
    train_batch_size: int = option(16, "images per process and micro-step (global batch: x processes x "
                                   "--gradient_accumulation_steps)", range="[1, inf)", group="optimization")
    gradient_accumulation_steps: int = option(1, "micro-steps per optimizer step", range="[1, inf)",
                                              group="optimization")
    max_train_steps: int = option(1000, "optimizer steps to train for", range="[1, inf)", group="optimization")
    max_train_time: str | None = option(
        None, "stop before a job's time limit: once this long has passed since the process started (counted "
        "afresh by each resumed process), write a checkpoint and exit with status 75, resumable, e.g. 23h30m, 90m, "
        "45s, 1d2h. Checked after every step (several processes: every --logging_steps steps, where they agree), "
        "stopping at the last check before the time is up; leave a margin for writing the checkpoint",
        check=parse_duration, group="optimization")
    learning_rate: float = option(2e-4, "AdamW learning rate after warm-up", range="(0, inf)",
                                  group="optimization")
    lr_scheduler: str = option("constant_with_warmup", "learning-rate schedule (diffusers.optimization), counted "
                               "in optimizer steps", choices=LR_SCHEDULERS, group="optimization")
    lr_warmup_steps: int = option(500, "optimizer steps of linear LR warm-up", range="[0, inf)",
                                  group="optimization")
    adam_beta1: float = option(0.9, "AdamW beta1", range="[0, 1)", group="optimization")
    adam_beta2: float = option(0.999, "AdamW beta2", range="[0, 1)", group="optimization")
    adam_weight_decay: float = option(0.0, "AdamW decoupled weight decay", range="[0, inf)", group="optimization")
    adam_epsilon: float = option(1e-8, "AdamW epsilon", range="(0, inf)", group="optimization")
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this", range="(0, inf)",
                                  group="optimization")
    use_ema: bool = option(True, "keep an exponential moving average of the weights and save it as the "
                           "pipeline (--no_use_ema: save the raw weights)", free="a switch", group="optimization")
    ema_max_decay: float = option(0.9999, "EMA decay (its maximum with --ema_warmup)", range="[0, 1)",
                                  group="optimization")
    ema_warmup: bool = option(False, "diffusers' EMA warm-up: decay = 1 - (1 + step / inv_gamma) ** -power, "
                              "capped at --ema_max_decay", free="a switch", group="optimization")
    ema_inv_gamma: float = option(1.0, "inv_gamma of --ema_warmup", range="(0, inf)", group="optimization")
    ema_power: float = option(0.75, "power of --ema_warmup", range="(0, inf)", group="optimization")
    mixed_precision: str = option("no", "autocast the model to fp16 or bf16 (weights, EMA and diffusion "
                                  "coefficients stay fp32)", choices=MIXED_PRECISIONS, group="optimization")
    seed: int = option(0, "seed of every random draw (weights, data order, flips, noise, timesteps, dropout)",
                       check=torch_seed, group="optimization")

    # performance: how fast a step runs on the same math (results agree with the plain run within rounding)
    channels_last: bool = option(
        False, "keep the UNet's weights and input batches in torch.channels_last memory format: faster convolutions "
        "on GPUs with tensor cores (NVIDIA Volta and later), mostly with --mixed_precision bf16 or fp16; on a CPU "
        "it rarely helps. Dropout then draws other (equally random) masks than in the default layout",
        free="a switch", group="performance")
    compile: bool = option(
        False, "torch.compile the UNet's training forward pass: faster steps on a GPU after a compile of a minute "
        "or more at start-up (again on resume); sample grids, evaluation and saved weights use the plain module. "
        "The run first checks the compiled gradients against eager PyTorch's on a test batch and stops if the "
        "compiler got them wrong (PyTorch 2.13 does on CPUs). Needs a C/C++ compiler (and Triton on GPUs)",
        free="a switch", group="performance")
    compile_mode: str = option(
        "default", "torch.compile mode of --compile: reduce-overhead replays CUDA graphs (less launch overhead for "
        "small models and batches, more GPU memory), max-autotune also searches kernels (slowest compile, fastest "
        "steps), max-autotune-no-cudagraphs the same without CUDA graphs", choices=COMPILE_MODES,
        group="performance")
    allow_tf32: bool = option(
        False, "allow TensorFloat-32 in fp32 matmuls and cuDNN convolutions on NVIDIA Ampere and later GPUs: "
        "several times faster fp32 math, rounded to a 10-bit mantissa inside the products (no effect on CPUs, "
        "and little under bf16/fp16 autocast); without it PyTorch's defaults apply (TF32 in cuDNN convolutions "
        "only)", free="a switch", group="performance")
    gradient_checkpointing: bool = option(
        False, "recompute the UNet blocks' activations in the backward pass instead of keeping them "
        "(UNet2DModel.enable_gradient_checkpointing): far less activation memory for about a third more compute "
        "per step; for batches or resolutions (256x256) that do not fit otherwise", free="a switch",
        group="performance")
    adam_implementation: str = option(
        "auto", "AdamW's kernels, the same update within rounding: fused (one kernel per step; fp16's GradScaler "
        "then skips overflowing steps on the device, without a host sync), foreach (a few kernels over all "
        "tensors), for-loop (a few kernels per tensor: PyTorch's CPU default); auto: fused where PyTorch has a "
        "fused AdamW for the training device (CUDA, CPU, ...), foreach elsewhere", choices=ADAM_IMPLEMENTATIONS,
        group="performance")

    # outputs
    output_dir: str = option("ddpm-output", "run folder: checkpoints/, logs/, samples/ and the final pipeline/",
                             free="any path; checked writable and free of another run before training",
                             group="outputs")
    overwrite_output_dir: bool = option(
        False, "start a new run in an --output_dir that holds one (its checkpoints and pipeline are kept beside, "
        "renamed)", free="a switch", group="outputs")
    logger: str = option(
        "tensorboard", "where to log the scalars (loss, LR, grad norm, img/s, EMA decay, eval bits/dim) and sample "
        f"grids: TensorBoard event files, or a Weights & Biases run ({WANDB_INSTALL}; WANDB_MODE=offline keeps it "
        "on this machine)", choices=LOGGERS, group="outputs")
    logging_dir: str = option("logs", "log folder (TensorBoard's event files, wandb's run folder unless WANDB_DIR is "
                              "set), relative to --output_dir",
                              free="validate(): a folder of its own inside --output_dir (never another run's)",
                              group="outputs")
    logging_steps: int = option(10, "log loss, LR, grad norm and img/s every N optimizer steps",
                                range="[1, inf)", group="outputs")
    save_images_steps: int = option(500, "save a sample grid every N optimizer steps", range="[1, inf)",
                                    group="outputs")
    eval_batch_size: int = option(16, "images in each sample grid", range="[1, inf)", group="outputs")
    ddpm_num_inference_steps: int | None = option(
        None, "sampling steps of the sample grids (respaced); default: all T", range="[1, inf)", group="outputs")
    eval_steps: int = option(0, "every N optimizer steps, log the bits/dim of --eval_num_images test images "
                             "(0: never)", range="[0, inf)", group="outputs")
    eval_num_images: int = option(8, "held-out images for --eval_steps", range="[1, inf)", group="outputs")
    checkpointing_steps: int = option(500, "write a resumable checkpoint every N optimizer steps (and at the end)",
                                      range="[1, inf)", group="outputs")
    checkpoints_total_limit: int | None = option(
        None, "keep only the newest N checkpoints (at least 1); default: keep all", range="[1, inf)",
        group="outputs")
    resume_from_checkpoint: str | None = option(
        None, "continue a run: 'latest' (the newest complete checkpoint in --output_dir, or a new run if none) "
        "or a checkpoint folder", free="resolved by training/checkpoints.py before anything is written",
        group="outputs")

    # Hub
    push_to_hub: bool = option(False, "upload the final pipeline folder (never checkpoints or logs) to the Hub",
                               free="a switch; a token and repo id are checked at start-up", group="hub")
    hub_model_id: str | None = option(None, "the Hub repo, USER/NAME; default: the --output_dir folder's name",
                                      check=repo_id, group="hub")
    hub_token: str | None = option(None, "Hub token; default: HF_TOKEN or `hf auth login` (never logged or saved)",
                                   free="any string; the Hub checks it when pushing", group="hub")
    hub_private_repo: bool = option(False, "create the Hub repo as private", free="a switch", group="hub")

    # ----------------------------------------------------------------------------------- derived values
    @property
    def model_flag(self) -> str:
        """The option that chose the network, for error messages."""
        return flag("model_config_name_or_path" if self.model_config_name_or_path else "model_preset")

    @property
    def preset(self) -> str | None:
        """The UNet preset in use (None with --model_config_name_or_path)."""
        return None if self.model_config_name_or_path else self.model_preset or DEFAULT_PRESET

    @property
    def resolved_variance_type(self) -> str:
        return self.variance_type or ("learned_range" if self.learned_variance else "fixed_small")

    def image_source(self) -> dict:
        """The keyword arguments of hf_ddpm.data.load_image_dataset that choose the images."""
        return {"dataset_name": self.dataset_name, "dataset_config_name": self.dataset_config_name,
                "train_data_dir": self.train_data_dir, "idx_images": self.idx_images,
                "image_column": self.image_column, "cache_dir": self.cache_dir}

    def recorded(self) -> dict:
        """The options as saved with checkpoints and logged: everything but the token."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "hub_token"}

    # ------------------------------------------------------------------------------------------ checks
    def validate(self) -> None:
        """The checks between options (each option's own checks are in its declaration), before anything runs."""
        if self.dataset_config_name is not None and self.dataset_name is None:
            raise UsageError("a dataset config needs a dataset", flag("dataset_config_name"),
                             "add --dataset_name, or drop --dataset_config_name")
        if self.image_column is not None and self.dataset_name is None and self.train_data_dir is None:
            raise UsageError("--image_column applies to --dataset_name and --train_data_dir only",
                             flag("image_column"), "drop it")
        learned = self.resolved_variance_type in LEARNED_VARIANCES
        if self.learned_variance and not learned:
            raise UsageError(f"--learned_variance needs a learned --variance_type, not {self.variance_type!r}",
                             flag("variance_type"), "use learned or learned_range, or leave it out")
        if learned and not self.learned_variance:
            raise UsageError(f"--variance_type {self.variance_type} needs a 2C-channel model",
                             flag("variance_type"), "add --learned_variance")
        if self.loss_type == "hybrid" and not learned:
            raise UsageError("--loss_type hybrid adds L_vlb to train the variance, which is fixed here",
                             flag("loss_type"), "add --learned_variance, or use --loss_type simple")
        if learned and self.loss_type == "simple":
            raise UsageError("L_simple does not train a learned variance (its output channels would stay random)",
                             flag("loss_type"), "use --loss_type hybrid or kl, or drop --learned_variance")
        if self.loss_weighting is not None and self.loss_type == "kl":
            raise UsageError(f"--loss_weighting {self.loss_weighting} weights the MSE term, which --loss_type kl "
                             "does not have", flag("loss_weighting"), "drop it, or use --loss_type simple or hybrid")
        if self.timestep_sampler != "uniform" and self.loss_type not in ("kl", "hybrid"):
            raise UsageError(f"--timestep_sampler {self.timestep_sampler} importance-samples the bound's terms, which "
                             f"--loss_type {self.loss_type} does not have", flag("timestep_sampler"),
                             "use --loss_type kl or hybrid, or drop --timestep_sampler")
        if self.timestep_sampler == "uniform" and is_set(self, "timestep_sampler_history"):
            raise UsageError("--timestep_sampler_history applies to --timestep_sampler loss-second-moment only",
                             flag("timestep_sampler_history"), "add --timestep_sampler loss-second-moment, or drop it")
        for name, weighting in (("snr_gamma", "min_snr"), ("p2_k", "p2"), ("p2_gamma", "p2")):
            if self.loss_weighting != weighting and is_set(self, name):
                raise UsageError(f"{flag(name)} applies to --loss_weighting {weighting} only", flag(name),
                                 f"add --loss_weighting {weighting}, or drop {flag(name)}")
        if is_set(self, "compile_mode") and not self.compile:
            raise UsageError(f"--compile_mode {self.compile_mode} applies to --compile only", flag("compile_mode"),
                             "add --compile, or drop --compile_mode")
        steps = self.ddpm_num_inference_steps
        if steps is not None and steps > self.ddpm_num_steps:
            raise UsageError(f"{steps} sampling steps is more than the {self.ddpm_num_steps} diffusion steps",
                             flag("ddpm_num_inference_steps"), f"pass at most {self.ddpm_num_steps} (--ddpm_num_steps)")
        if self.logger == "wandb" and importlib.util.find_spec("wandb") is None:
            raise UsageError("--logger wandb needs the wandb package, which is not installed", flag("logger"),
                             f"{WANDB_INSTALL}, or use --logger tensorboard")
        self._validate_paths()
        if self.push_to_hub:
            self._validate_hub()

    def _validate_paths(self) -> None:
        """Nothing this run writes can land in another run, a pipeline or a checkpoint (resolved: '..' and symlinks
        included); its logs stay in a folder of their own inside --output_dir."""
        output = Path(self.output_dir).resolve()
        problem = another_run(output)
        if problem:
            raise UsageError(f"--output_dir {self.output_dir} {problem}", flag("output_dir"),
                             "choose a new folder outside other runs, e.g. beside them")
        logs = (output / self.logging_dir).resolve()
        if logs == output or output not in logs.parents:
            where = "is the output folder itself" if logs == output else f"resolves to {logs}, outside --output_dir"
            raise UsageError(f"--logging_dir {self.logging_dir} {where}", flag("logging_dir"),
                             "pass a folder of its own inside --output_dir, such as logs (the default)")
        top = logs.relative_to(output).parts[0]
        if top in RUN_FOLDERS or "-replaced-" in top or top.startswith("."):
            what = RUN_FOLDERS.get(top, "keeps an earlier run's files, or a partial write")
            raise UsageError(f"--logging_dir {self.logging_dir} is where the run {what}", flag("logging_dir"),
                             "pass a folder of its own, such as logs (the default)")
        if self.cache_dir is not None:
            problem = another_run(Path(self.cache_dir).resolve(), own_run=output)
            if problem:
                raise UsageError(f"--cache_dir {self.cache_dir} {problem}", flag("cache_dir"),
                                 "choose a folder outside other runs, or leave it out for ~/.cache/huggingface")

    def _validate_hub(self) -> None:
        """Pushing is checked now, not after days of training: a token, and a valid repo id."""
        from huggingface_hub import get_token

        if self.hub_model_id is None:
            name = Path(self.output_dir).resolve().name
            try:
                repo_id(name)
            except UsageError:
                raise UsageError(f"the default repo id {name!r} (the --output_dir folder's name) is not a valid repo "
                                 "id", flag("hub_model_id"), "pass --hub_model_id USER/NAME") from None
        if not (self.hub_token or get_token()):
            raise UsageError("no Hugging Face token to push with", flag("push_to_hub"),
                             "set HF_TOKEN, run `hf auth login`, or pass --hub_token; or drop --push_to_hub")


# ---------------------------------------------------------------------------------------------- parsing
class TrainParser(OptionParser):
    """train.py's parser: an unknown flag is answered with diffusers' meaning (RENAMED) or the closest option."""

    def unknown_option(self, arg: str) -> str:
        message = super().unknown_option(arg)
        name = arg.split("=")[0]
        if name not in self.renamed:
            options = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
            close = difflib.get_close_matches(name, options, n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
        return message


def build_parser(description: str | None = None) -> TrainParser:
    parser = TrainParser(TrainConfig, prog=PROG, renamed=RENAMED, description=description,
                          formatter_class=DocstringHelpFormatter)
    parser.add_argument("--config", metavar="PRESET", help="YAML preset: a name in training/configs/ ("
                        f"{', '.join(preset_names())}) or a file; its values replace the defaults, flags override "
                        "them")
    return parser


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    """The options a `--config` preset sets, checked like flags: known names, right types, ranges and choices."""
    path = Path(name)
    if not path.exists():
        path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        raise UsageError(f"{name!r} is neither a file nor a preset", flag("config"),
                         f"pass a YAML file or one of: {', '.join(preset_names())}")
    if not path.is_file():
        raise UsageError(f"{path} is a folder, not a YAML file", flag("config"),
                         f"pass a YAML file or one of: {', '.join(preset_names())}")
    try:
        preset = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UsageError(f"cannot read {path}: {' '.join(str(error).split())}", flag("config"),
                         "correct the YAML: use one `option: value` line per option") from None
    if not isinstance(preset, dict):
        raise UsageError(f"{path} holds a {type(preset).__name__}, not `option: value` lines", flag("config"),
                         "write one `option: value` line per option")
    names = [f.name for f in declared(TrainConfig)]
    unknown = sorted(set(map(str, preset)) - set(names))
    if unknown:
        hints = [f"{u} -> {RENAMED.get('--' + u) or ', '.join(difflib.get_close_matches(u, names, 1)) or '?'}"
                 for u in unknown]
        raise UsageError(f"{path} sets unknown options {unknown}", flag("config"),
                         f"remove or rename them ({'; '.join(hints)}); see `{PROG} --help`")
    try:
        check_options(TrainConfig(**preset))
    except UsageError as error:
        raise UsageError(f"{path}: {error.what}", error.option, error.fix) from None
    return preset


def parse_config(argv: Sequence[str] | None = None, description: str | None = None) -> TrainConfig:
    """Defaults < `--config` preset < flags, every value checked, then `TrainConfig.validate`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_flags = [i for i, arg in enumerate(argv) if arg == "--config" or arg.startswith("--config=")]
    preset = {}
    if config_flags:  # the last one wins, as for any flag
        i = config_flags[-1]
        name = argv[i].partition("=")[2] if "=" in argv[i] else (argv[i + 1] if i + 1 < len(argv) else None)
        if not name:
            raise UsageError("--config needs a value", flag("config"), f"pass a YAML file or one of: "
                             f"{', '.join(preset_names())}")
        preset = load_preset(name)
    (config,) = build_parser(description).parse_config(argv, defaults=preset)
    return config
