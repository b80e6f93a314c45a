"""The model card of a saved pipeline folder, rendered from the folder's own facts through `huggingface_hub.ModelCard`
and `model_cards/ddpm_model_card.md` into `README.md`.

Facts come from the saved pipeline (`model_index.json`, `unet/config.json`, `scheduler/scheduler_config.json`,
parameter count and dtypes from the safetensors headers), from `training_config.json` (the training run's record)
and from `eval_results.json` (written by evaluation: the model-index). A fact that was not recorded is printed as
"not recorded", never guessed. Where training_config.json repeats a saved config's value and disagrees, the card
shows the saved value and says so.

The card is named after the Hub repo (`repo_id`), else after the training run: the output folder that holds
`pipeline/` (or the folder itself when it has another name). The training data is described as
`hub/data_source.py` says (a Hub dataset linked and in `datasets:`, local data by its file name only).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from ..artifacts import (PipelineFacts, clean_training_config, read_json, read_pipeline_facts, read_training_config,
                         spatial_size, write_training_config)
from ..gaussian_diffusion import LEARNED_VARIANCES
from ..options import UsageError
from .data_source import DataSource

TEMPLATE_NAME = "ddpm_model_card.md"
CARD_MARKER = "hf-ddpm model card"  # in an HTML comment of every generated README.md
NOT_RECORDED = "not recorded"
DEFAULT_LICENSE = "apache-2.0"

# License identifiers the Hub accepts in a card's `license:` (https://huggingface.co/docs/hub/repositories-licenses;
# huggingface_hub does not ship the list). A common subset: anything else is `other` plus a LICENSE file.
HUB_LICENSES = (
    "apache-2.0", "mit", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause",
    "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by", "odbl", "osl-3.0", "postgresql", "ofl-1.1", "ncsa",
    "unlicense", "zlib", "pddl", "unknown", "other",
)

# The `training` keys the card knows, in the order of its training table, with their labels.
TRAINING_FIELDS = {
    "dataset": "dataset",
    "dataset_config": "dataset config",
    "random_flip": "random horizontal flip",
    "unet_preset": "UNet preset",
    "loss_type": "objective (loss)",
    "loss_weighting": "loss weighting",
    "max_train_steps": "training steps",
    "train_batch_size": "batch size (global)",
    "gradient_accumulation_steps": "gradient accumulation steps",
    "learning_rate": "learning rate",
    "lr_warmup_steps": "LR warmup steps",
    "adam_beta1": "Adam beta1",
    "adam_beta2": "Adam beta2",
    "adam_weight_decay": "Adam weight decay",
    "max_grad_norm": "gradient clipping (global norm)",
    "use_ema": "saved weights",
    "ema_decay": "EMA decay",
    "mixed_precision": "mixed precision",
    "hardware": "hardware",
    "num_processes": "processes (devices)",
    "training_time_hours": "training time (hours)",
    "seed": "seed",
}
# `training` keys that the saved configs / weights also state (see `_saved_facts`): the saved value is shown, and a
# recorded value that differs from it is reported.
CONFIG_CHECKED_FIELDS = ("resolution", "channels", "num_parameters", "beta_schedule", "num_train_timesteps",
                         "prediction_type", "variance_type", "dropout")

# eval_results.json metric -> (model-index type, display name, std key, which settings describe it)
METRICS = {
    "fid": ("fid", "FID", None, "inception"),
    "inception_score": ("is", "Inception Score", "inception_score_std", "inception"),
    "kid": ("kid", "KID", "kid_std", "inception"),
    "fd_dinov2": ("fd-dinov2", "FD (DINOv2)", None, "samples"),
    "bpd": ("bits-per-dim", "NLL (bits/dim, upper bound)", None, "bpd"),
}
# variance types whose sampling in stock diffusers' DDPMScheduler differs from hf-ddpm's (see hf_ddpm.scheduling_ddpm)
STOCK_VARIANCE_DIFFERENCES = {
    "fixed_large_log": "stock diffusers samples `fixed_large_log` with the square root of a log-variance (NaN)",
    "learned": "stock diffusers reads the model's variance output as a variance, hf-ddpm as a log-variance "
    "(Improved DDPM)",
}


# ------------------------------------------------------------------------------------------------ inputs
def model_card_template_path() -> Path:
    """The model-card template: `hf_ddpm/model_cards/` of an installed wheel, else `model_cards/` of the checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "model_cards" / TEMPLATE_NAME, package.parent / "model_cards" / TEMPLATE_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"The model-card template {TEMPLATE_NAME} is missing: it ships in model_cards/ of the hf-ddpm source and "
        "as hf_ddpm/model_cards/ in the wheel; reinstall hf-ddpm."
    )


def check_repo_id(repo_id: str, option: str | None = None) -> None:
    """A UsageError (a ValueError) unless `repo_id` is a valid Hub repo id (huggingface_hub's own rule)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UsageError(f"invalid repo id {repo_id!r} ({str(error).rstrip('.')})", option, "use USER/NAME") from None


def check_license(license: str, option: str | None = None) -> None:
    """A UsageError (a ValueError) unless `license` is an identifier the Hub accepts in a card (HUB_LICENSES)."""
    if license not in HUB_LICENSES:
        near = [name for name in HUB_LICENSES if name.startswith(str(license).lower()[:2])][:6] or HUB_LICENSES[:6]
        raise UsageError(f"{license!r} is not a license identifier the Hub knows", option,
                         f"use one of {', '.join(near)}, ... (https://huggingface.co/docs/hub/repositories-licenses), "
                         "or 'other' and add a LICENSE file to the folder")


def run_name(pipeline_dir: str | os.PathLike) -> str:
    """The training run a pipeline folder belongs to: OUTPUT_DIR for OUTPUT_DIR/pipeline, else the folder's name."""
    path = Path(pipeline_dir).resolve()
    return path.parent.name if path.name == "pipeline" and path.parent.name else path.name


# ---------------------------------------------------------------------------------------------- the data
def _training_data(dataset: str | None, training: dict, evaluation: dict | None) -> DataSource | None:
    """The training data: `dataset` if given, else training_config.json's, else the evaluation data's name."""
    recorded = training.get("dataset")
    if dataset and recorded and str(dataset) != str(recorded):
        return DataSource.of(dataset)  # a name given by the caller, with nothing recorded about it
    if dataset or recorded:
        return DataSource.of(dataset or recorded, training.get("dataset_kind"), training.get("dataset_num_images"),
                              training.get("resolution"))
    eval_data = (evaluation or {}).get("dataset") if isinstance(evaluation, dict) else None
    if isinstance(eval_data, dict) and eval_data.get("name"):
        return DataSource.of(eval_data["name"], eval_data.get("kind"))
    return None


# ------------------------------------------------------------------------------------------------ tables
def _fmt(value: Any) -> str:
    """A value for a Markdown table cell."""
    if value is None:
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = "(" + ", ".join(str(v) for v in value) + ")"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ") or NOT_RECORDED


def _sample_size(unet_config: dict) -> tuple[int, int] | None:
    try:
        return spatial_size(unet_config)
    except (KeyError, TypeError, ValueError, IndexError):  # not recorded, or not a size
        return None


def _saved_facts(facts: PipelineFacts) -> dict:
    """The model's facts as its saved configs and weights state them: what the model table shows, and what a
    training_config.json value is checked against (CONFIG_CHECKED_FIELDS)."""
    unet, sched = facts.unet_config, facts.scheduler_config
    size = _sample_size(unet)
    in_ch, out_ch = unet.get("in_channels"), unet.get("out_channels")
    variance = sched.get("variance_type")
    return {
        "size": size,
        "resolution": size[0] if size and size[0] == size[1] else (list(size) if size else None),
        "channels": in_ch,
        "out_channels": out_ch,
        # the scheduler says whether the variance is learned; channel counts only when it does not say
        "learned_variance": variance in LEARNED_VARIANCES if variance else in_ch is not None and out_ch == 2 * in_ch,
        "num_parameters": facts.num_parameters,
        "beta_schedule": sched.get("beta_schedule"),
        "num_train_timesteps": sched.get("num_train_timesteps"),
        "prediction_type": sched.get("prediction_type"),
        "variance_type": variance,
        "dropout": unet.get("dropout"),
        "attention": [size[0] // 2**i for i, block in enumerate(unet.get("down_block_types") or ()) if "Attn" in block]
        if size else [],
    }


def _model_rows(facts: PipelineFacts, saved: dict) -> list[tuple[str, str]]:
    unet, sched = facts.unet_config, facts.scheduler_config
    if sched.get("trained_betas") is not None:
        schedule = f"{sched.get('beta_schedule', 'linear')} (saved as explicit trained_betas)"
    else:
        schedule = (f"{sched.get('beta_schedule', NOT_RECORDED)}, "
                    f"beta {sched.get('beta_start')} -> {sched.get('beta_end')}")
    if sched.get("rescale_betas_zero_snr"):
        schedule += ", rescaled to zero terminal SNR"
    params = f"{saved['num_parameters']:,}" if saved["num_parameters"] is not None else NOT_RECORDED
    if facts.weight_dtypes:
        params += f" ({', '.join(facts.weight_dtypes)} weights)"
    clip_range = ""
    if sched.get("clip_sample") and "clip_sample_range" in sched:
        clip_range = f" (to +-{sched['clip_sample_range']})"
    size, attn = saved["size"], saved["attention"]
    rows = [
        ("architecture", f"`{facts.components.get('unet', ('', 'UNet2DModel'))[1]}` (U-Net, diffusers)"),
        ("parameters", params),
        ("resolution", f"{size[0]}x{size[1]}" if size else NOT_RECORDED),
        ("channels", f"{saved['channels']} in, {saved['out_channels']} out"
         + (" (mean and variance)" if saved["learned_variance"] else "")),
        ("block channels", _fmt(unet.get("block_out_channels"))),
        ("residual blocks per resolution", _fmt(unet.get("layers_per_block"))),
        ("self-attention at", ", ".join(f"{r}x{r}" for r in attn) if attn else "none"),
        ("dropout", _fmt(saved["dropout"])),
        ("diffusion steps T", _fmt(saved["num_train_timesteps"])),
        ("beta schedule", schedule),
        ("model predicts (objective target)", _fmt(saved["prediction_type"])),
        ("reverse-process variance", _fmt(saved["variance_type"])),
        ("x0 clipping when sampling", _fmt(sched.get("clip_sample")) + clip_range),
    ]
    return [(name, value.replace("|", "\\|")) for name, value in rows]


def _training_rows(training: dict) -> tuple[list[tuple[str, str]], list[str]]:
    rows, missing = [], []
    for key, label in TRAINING_FIELDS.items():
        value = training.get(key)
        if value is None:
            missing.append(f"`{key}`")
        if key == "dataset" and value is not None:  # local data: its file name only
            value = DataSource.of(value, training.get("dataset_kind")).pretty
        if key == "use_ema" and value is not None:
            value = "exponential moving average (EMA) of the parameters" if value else "raw parameters (no EMA)"
        if key == "ema_decay" and value is not None and training.get("use_ema") is False:
            value = f"{_fmt(value)} (EMA not used for the saved weights)"
        rows.append((label, _fmt(value)))
    return rows, missing


def _conflicts(training: dict, saved: dict) -> list[str]:
    """training_config.json values that differ from what the saved configs and weights state."""
    out = []
    for key in CONFIG_CHECKED_FIELDS:
        recorded, actual = training.get(key), saved[key]
        if recorded is None or actual is None:
            continue
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (recorded, actual))
        if not (math.isclose(float(recorded), float(actual)) if numbers else recorded == actual):
            out.append(f"`{key}`: training_config.json says {_fmt(recorded)}, the saved pipeline has {_fmt(actual)}.")
    return out


def _eval_section(evaluation: dict):
    """(EvalResult list for the model-index, table rows, description, notes) from an eval_results.json dict."""
    from huggingface_hub import EvalResult

    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("metrics", {}), dict):
        raise ValueError("eval_results.json must be an object with a 'metrics' object.")
    dataset = evaluation.get("dataset") or {}
    settings = evaluation.get("settings") or {}
    metrics = evaluation.get("metrics") or {}
    if not isinstance(dataset, dict) or not isinstance(settings, dict):
        raise ValueError("eval_results.json: 'dataset' and 'settings' must be objects.")
    data = DataSource.of(dataset["name"], dataset.get("kind")) if dataset.get("name") else None
    name, split, config = (data.name if data else None), dataset.get("split"), dataset.get("config")
    described = {
        "samples": ("num_samples", "num_inference_steps"),
        "inception": ("num_samples", "num_inference_steps", "feature_extractor"),
        "bpd": ("bpd_num_images",),
    }
    metric_settings = {kind: {k.replace("bpd_", ""): settings[k] for k in keys if settings.get(k) is not None}
                       for kind, keys in described.items()}

    results, rows, notes = [], [], []
    for key in sorted(metrics, key=lambda k: list(METRICS).index(k) if k in METRICS else len(METRICS)):
        value = metrics[key]
        if key not in METRICS:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            notes.append(f"`{key}` is not a finite number in eval_results.json ({value!r}); it is left out.")
            continue
        metric_type, label, std_key, kind = METRICS[key]
        args = dict(metric_settings[kind])
        std = metrics.get(std_key) if std_key else None
        has_std = isinstance(std, (int, float)) and not isinstance(std, bool)
        shown = f"{value:.4g}" + (f" +- {std:.2g}" if has_std else "")
        rows.append((label, shown, ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in args.items()) or NOT_RECORDED))
        if data:
            results.append(EvalResult(
                task_type="unconditional-image-generation",
                task_name="Unconditional Image Generation",
                dataset_type=name,
                dataset_name=data.pretty,
                dataset_config=config,
                dataset_split=split,
                dataset_args={"num_images": dataset["num_images"]} if dataset.get("num_images") else None,
                metric_type=metric_type,
                metric_name=label,
                metric_value=float(value),
                metric_args=args or None,
            ))
    unknown = sorted(k for k in metrics if k not in METRICS and not k.endswith("_std"))
    if unknown:
        notes.append(f"Other metrics in eval_results.json, not described by this card: {', '.join(unknown)}.")
    if rows and not data:
        notes.append("The evaluation dataset was not recorded, so these results are not in the card's model-index.")
    if data is None:
        where = f"a dataset that was {NOT_RECORDED}"
    else:
        named = data.markdown()
        if data.hub_id:
            named = f"{data.pretty} (`{name}`{f', config `{config}`' if config else ''})"
        where = f"{named}, split `{split or NOT_RECORDED}`"
    n = dataset.get("num_images")
    description = f"Evaluated against {where}{f', {n} reference images' if n else ''} (from `eval_results.json`)."
    num_samples = settings.get("num_samples")
    if "fid" in metrics and isinstance(num_samples, int) and num_samples < 50000:
        notes.append(f"FID from {num_samples} samples is biased upwards compared with the usual 50,000.")
    return results, rows, description, notes


# ------------------------------------------------------------------------------------------------ render
def render_model_card(
    pipeline_dir: str | os.PathLike,
    training: dict | None = None,
    dataset: str | None = None,
    license: str = DEFAULT_LICENSE,
    repo_id: str | None = None,
    evaluation: dict | None = None,
    template_path: str | os.PathLike | None = None,
):
    """The `huggingface_hub.ModelCard` of a pipeline folder, without writing anything.

    `training` defaults to nothing recorded; `evaluation` is an eval_results.json dict (None: not evaluated).
    The card is named `repo_id`, else after the training run (`run_name`).
    """
    from huggingface_hub import ModelCard, ModelCardData

    from .. import __version__

    check_license(license)
    if repo_id is not None:
        check_repo_id(repo_id)
    path = Path(pipeline_dir)
    facts = read_pipeline_facts(path)
    for name, config in (("unet/config.json", facts.unet_config),
                         ("scheduler/scheduler_config.json", facts.scheduler_config)):
        if not config:
            raise ValueError(f"{path} has no {name}: the card reads the model's facts from it. Pass the folder "
                             "written by pipeline.save_pretrained(folder).")
    training = clean_training_config(training or {})
    model_name = repo_id or run_name(path)
    data = _training_data(dataset, training, evaluation)
    eval_results, eval_rows, eval_description, eval_notes = _eval_section(evaluation) if evaluation is not None else (
        [], [], "", [])
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=license,
        tags=["ddpm", "hf-ddpm", "diffusers", "unconditional-image-generation", "diffusion-models"],
        datasets=[data.hub_id] if data and data.hub_id else None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )

    saved = _saved_facts(facts)
    size, channels = saved["size"], saved["channels"]
    kind = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels}-channel" if channels else "")
    image_description = f"{size[0]}x{size[1]} {kind} images" if size else "images"
    T = saved["num_train_timesteps"] or 1000  # stock's default when the config leaves it out
    variance = saved["variance_type"]
    stock_note = ""
    if variance in STOCK_VARIANCE_DIFFERENCES:
        stock_note = (f"> **Note:** this model uses `variance_type=\"{variance}\"`, and "
                      f"{STOCK_VARIANCE_DIFFERENCES[variance]}. Sample it with `hf_ddpm.DDPMPipeline` (below) to get "
                      "the intended chain.")
    elif variance:
        stock_note = (f"For the full chain with `variance_type=\"{variance}\"`, stock diffusers' `DDPMScheduler` "
                      "samples the same chain as hf-ddpm (up to floating-point rounding).")
    training_rows, missing = _training_rows(training)
    limitations = []
    steps = training.get("max_train_steps")
    if isinstance(steps, int) and steps < 800_000:
        limitations.append(f"Trained for {steps:,} steps; the paper trains its models for 800k steps or more.")
    if not eval_rows:
        limitations.append("No evaluation was recorded: the sample quality of this model is not measured.")
    samples = next((path / n for n in ("samples.png", "samples_grid.png") if (path / n).is_file()), None)
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path or model_card_template_path()),
        marker=f"{CARD_MARKER} " + json.dumps({"repo_id": repo_id, "license": license,
                                               "dataset": data.hub_id if data else None}),
        model_name=model_name,
        load_id=repo_id or "USER/MODEL_NAME",
        load_id_is_placeholder=repo_id is None,
        hf_ddpm_version=__version__,
        pipeline_class=facts.class_name,
        unet_class=facts.components["unet"][1] if "unet" in facts.components else NOT_RECORDED,
        scheduler_class=facts.components["scheduler"][1] if "scheduler" in facts.components else NOT_RECORDED,
        image_description=image_description,
        num_train_timesteps=T,
        record_example=", ".join(str(t) for t in sorted({T - 1, T // 2, 0}, reverse=True)),
        dataset_md=data.markdown() if data else None,
        stock_note=stock_note,
        samples_file=samples.name if samples else None,
        samples_caption=f"The sample grid saved with the model (`{samples.name if samples else ''}`).",
        model_rows=_model_rows(facts, saved),
        training_recorded=bool(training),
        training_rows=training_rows,
        missing_training=missing if training else [],
        conflicts=_conflicts(training, saved),
        eval_rows=eval_rows,
        eval_description=eval_description,
        eval_notes=eval_notes,
        show_paper_results="cifar" in (data.name.lower() if data else ""),
        limitations=limitations,
    )


def _existing_card_settings(readme: Path) -> dict:
    """The settings recorded in the marker of an hf-ddpm generated README.md ({} for other or missing cards)."""
    if not readme.is_file():
        return {}
    match = re.search(r"<!-- " + re.escape(CARD_MARKER) + r" (\{.*?\}) -->", readme.read_text(encoding="utf-8"))
    if not match:
        return {}
    try:
        settings = json.loads(match.group(1))
    except ValueError:
        return {}
    return settings if isinstance(settings, dict) else {}


def is_generated_card(readme: str | os.PathLike) -> bool:
    """Whether `readme` is a README.md written by hf-ddpm (and may be re-rendered)."""
    readme = Path(readme)
    return readme.is_file() and f"<!-- {CARD_MARKER} " in readme.read_text(encoding="utf-8")


def write_model_card(
    pipeline_dir: str | os.PathLike,
    training: dict | None = None,
    dataset: str | None = None,
    license: str | None = DEFAULT_LICENSE,
    repo_id: str | None = None,
) -> Path:
    """Render the model card of a saved pipeline into `pipeline_dir/README.md` and return its path.

    `training` (see TRAINING_FIELDS; missing keys are reported as "not recorded") is first saved as
    training_config.json (`hf_ddpm.artifacts.write_training_config`: secret-looking entries dropped); when it is
    None the saved training_config.json is used, if any. `eval_results.json` in the folder, when present, fills the
    evaluation section and the model-index. `repo_id=None` keeps the repo id of a previously generated card (else
    the card is named after the run, with a placeholder id); `license=None` keeps the previous card's license
    (else apache-2.0).
    """
    path = Path(pipeline_dir)
    read_pipeline_facts(path)  # fail early on a folder that is not a pipeline
    previous = _existing_card_settings(path / "README.md")
    if training is not None:
        write_training_config(path, training)
    training = read_training_config(path)
    eval_path = path / "eval_results.json"
    evaluation = None
    if eval_path.is_file():
        evaluation = read_json(eval_path, "fix it, or delete it and run `hf-ddpm evaluate` again")
    card = render_model_card(
        path,
        training=training,
        dataset=dataset or (training or {}).get("dataset") or previous.get("dataset"),
        license=license or previous.get("license") or DEFAULT_LICENSE,
        repo_id=repo_id or previous.get("repo_id"),
        evaluation=evaluation,
    )
    readme = path / "README.md"
    readme.write_text(str(card), encoding="utf-8")
    return readme
