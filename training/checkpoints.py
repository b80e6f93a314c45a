"""A run's checkpoints under OUTPUT_DIR/checkpoints: atomic writes, `latest`, resuming, pruning, never data loss.

A checkpoint is written into a hidden `.partial-checkpoint-<step>` folder (model, optimizer and RNG states by
Accelerate, EMA weights and an importance sampler's loss history as safetensors, what `hf-ddpm export` needs to
write the run's pipeline from it (`hf_ddpm.final_pipeline.ExportFacts`), and last `training_state.json`, the loop's
state), flushed to disk and renamed to `checkpoint-<step>`: a crash at any moment leaves either the complete
checkpoint or debris that `latest` never picks and the next save removes. Only complete checkpoints of this run are ever deleted, and only
beyond `--checkpoints_total_limit` (at least 1).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hf_ddpm.final_pipeline import EMA_FOLDER, MARKER, RAW_WEIGHTS, ExportFacts
from hf_ddpm.options import RunFailure, UsageError

logger = logging.getLogger(__name__)

SAMPLER_FILE = "timestep_sampler.safetensors"  # --timestep_sampler loss-second-moment's history (none for uniform)
PARTIAL_PREFIX = ".partial-checkpoint-"
# Options that decide the network's parameter shapes: a checkpoint only loads into the same values.
MODEL_OPTIONS = ("model_preset", "model_config_name_or_path", "learned_variance", "resolution")


def step_of(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def fsync_tree(folder: Path, files: bool = True) -> None:
    """Flush a folder (and its files) to disk, so a renamed checkpoint survives a power loss intact."""
    paths = [p for p in folder.rglob("*") if p.is_file()] if files else []
    for path in paths + [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Checkpointer:
    """Finds, saves, loads and prunes the checkpoints of one run, on every process of it (Accelerate).

    Accelerate saves the prepared model and optimizer and the RNG states; the EMA weights (a diffusers EMAModel,
    or None) go beside them as `unet_ema/` (safetensors), the export facts as JSON, and the loop's state as the
    JSON marker (MARKER, whose presence makes a checkpoint complete).
    """

    def __init__(self, accelerator, folder: Path, total_limit: int | None = None):
        if total_limit is not None and total_limit < 1:  # 0 or less would delete every checkpoint as it is written
            raise UsageError(f"a limit of {total_limit} would delete every checkpoint", "--checkpoints_total_limit",
                             "pass a number >= 1, or leave it out to keep every checkpoint")
        self.accelerator, self.folder, self.total_limit = accelerator, Path(folder), total_limit

    # ----------------------------------------------------------------------------------------- finding
    def complete(self) -> list[Path]:
        """checkpoint-<step> folders holding their marker, oldest first (partial writes have other names)."""
        found = [p for p in self.folder.glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit() and (p / MARKER).exists()]
        return sorted(found, key=step_of)

    def resume_point(self, resume_from: str | None, pipeline_dir: Path, overwrite: bool) -> Path | None:
        """The checkpoint to resume from (None: a new run), refusing to silently start over on an earlier run."""
        complete = self.complete()
        if resume_from is None:
            if (complete or pipeline_dir.exists()) and not overwrite:
                raise UsageError(f"{self.folder.parent} already holds a run's checkpoints or pipeline", "--output_dir",
                                 "pass --resume_from_checkpoint latest to continue it, --overwrite_output_dir to start "
                                 "a new run beside it, or choose another --output_dir")
            return None
        if resume_from == "latest":
            if not complete:
                logger.info(f"no complete checkpoint in {self.folder}: starting a new run")
                return None
            return complete[-1]
        path = Path(resume_from)
        if not (path / MARKER).is_file():
            fix = f"pick one of {[p.name for p in complete]}" if complete else "start without --resume_from_checkpoint"
            raise UsageError(f"{path} is not a complete checkpoint (no {MARKER})", "--resume_from_checkpoint", fix)
        if path.resolve().parent != self.folder.resolve():  # another run's checkpoint, continued in this folder
            if (complete or pipeline_dir.exists()) and not overwrite:
                raise UsageError(f"{self.folder.parent} already holds a run's checkpoints or pipeline, and {path} "
                                 "is not one of them", "--output_dir", f"choose a new --output_dir to continue "
                                 f"{path.name} in, or pass --overwrite_output_dir to set the run there aside")
            return path
        later = [p.name for p in complete if step_of(p) > _step_or(path)]
        if later:  # continuing from here would write those steps again, replacing them
            raise UsageError(f"{path.name} is not the newest checkpoint in {self.folder}: {', '.join(later)} "
                             f"follow{'s' if len(later) == 1 else ''} it and would be replaced",
                             "--resume_from_checkpoint", f"pass latest, move {', '.join(later)} out of {self.folder} "
                             f"first, or continue {path.name} in a new --output_dir")
        return path

    def holds(self, checkpoint: Path | None) -> bool:
        """Whether `checkpoint` is one of this run's (in its checkpoints folder)."""
        return checkpoint is not None and checkpoint.resolve().parent == self.folder.resolve()

    def set_aside_earlier_run(self, *others: Path) -> None:
        """--overwrite_output_dir: keep the earlier run's checkpoints and `others` (its logs and sample grids),
        renamed <name>-replaced-<time>, so this run never mixes with them nor writes over them."""
        if self.accelerator.is_main_process:
            stamp = int(time.time())
            for folder in (self.folder, *others):
                if folder.is_dir() and any(folder.iterdir()):
                    aside = folder.with_name(f"{folder.name}-replaced-{stamp}")
                    os.replace(folder, aside)
                    logger.info(f"kept the earlier run's {folder.name} as {aside}")
        self.accelerator.wait_for_everyone()

    # ----------------------------------------------------------------------------------------- loading
    def load(self, checkpoint: Path, options: dict, ema=None, timestep_sampler=None) -> dict:
        """Restore model, optimizer, RNG, `ema` and `timestep_sampler` from `checkpoint`; return the loop state saved
        with it. A checkpoint without a sampler state (written with the uniform sampler) leaves the sampler fresh.

        A damaged checkpoint is named with its damaged file; one whose network does not fit this run's names the
        model options that differ from the run that wrote it.
        """
        state = self._read_state(checkpoint)
        recorded = state.pop("options", None) or {}
        try:
            self._check_weights(checkpoint)
            self.accelerator.load_state(str(checkpoint))
            if ema is not None:
                load_ema(ema, checkpoint / EMA_FOLDER, self.accelerator.device)
        except Exception as error:  # noqa: BLE001 - every failure here becomes one line with its way out
            detail = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
            if "size mismatch" in str(error) or "Missing key" in str(error) or "Unexpected key" in str(error):
                raise self._mismatch(checkpoint, detail, recorded, options) from None
            raise UsageError(f"cannot resume from {checkpoint} ({detail})", "--resume_from_checkpoint",
                             self._way_past(checkpoint)) from None
        if timestep_sampler is not None and timestep_sampler.state_dict() and (checkpoint / SAMPLER_FILE).exists():
            try:
                timestep_sampler.load_state_dict(load_file(str(checkpoint / SAMPLER_FILE)))
            except Exception as error:  # noqa: BLE001 - a damaged file, or another T / history length
                raise UsageError(f"cannot restore the timestep sampler from {checkpoint / SAMPLER_FILE} "
                                 f"({type(error).__name__}: {' '.join(str(error).split())[:200]})",
                                 "--timestep_sampler_history", "resume with the --ddpm_num_steps and "
                                 f"--timestep_sampler_history of the run that wrote it (see its {MARKER})") from None
        differ = [k for k in options if k in recorded and recorded[k] != options[k]]
        if differ:
            logger.info(f"resuming with options that differ from the checkpoint's run: {', '.join(differ)}")
        return state

    def _read_state(self, checkpoint: Path) -> dict:
        try:
            state = json.loads((checkpoint / MARKER).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"cannot resume from {checkpoint}: {checkpoint / MARKER} is damaged ({error})",
                             "--resume_from_checkpoint", self._way_past(checkpoint)) from None
        if not isinstance(state, dict) or "global_step" not in state:
            raise UsageError(f"cannot resume from {checkpoint}: {checkpoint / MARKER} holds no training state",
                             "--resume_from_checkpoint", self._way_past(checkpoint))
        return state

    @staticmethod
    def _check_weights(checkpoint: Path) -> None:
        """Read the weights' header before Accelerate does, so a damaged file is named in the error."""
        weights = checkpoint / RAW_WEIGHTS
        if not weights.exists():
            raise FileNotFoundError(f"{weights} is missing")
        try:
            with safe_open(str(weights), framework="pt") as reader:
                reader.keys()
        except Exception as error:  # noqa: BLE001 - safetensors raises several types
            raise ValueError(f"{weights} is truncated or not safetensors ({error})") from None

    def _way_past(self, checkpoint: Path) -> str:
        earlier = [p for p in self.complete() if p.resolve() != checkpoint.resolve() and step_of(p) < _step_or(checkpoint)]
        if earlier:  # resumed in place, an earlier checkpoint would replace this one: it is moved away first
            return (f"move this one out of {self.folder} so that latest picks {earlier[-1].name}, or continue "
                    f"{earlier[-1]} in a new --output_dir")
        return "move it away to start a new run, or choose another --output_dir"

    def _mismatch(self, checkpoint: Path, detail: str, recorded: dict, options: dict) -> UsageError:
        differ = [f"--{k} {recorded.get(k)!r} (this run: {options.get(k)!r})" for k in MODEL_OPTIONS
                  if k in recorded and recorded.get(k) != options.get(k)]
        if differ:
            return UsageError(f"{checkpoint} holds another network than this run builds: its run had {', '.join(differ)}",
                              "--resume_from_checkpoint", "resume with the checkpoint's model options, or choose another "
                              "--output_dir for a new run")
        flags = ", ".join(f"--{k}" for k in MODEL_OPTIONS)
        return UsageError(f"{checkpoint} holds another network than this run builds ({detail})", "--resume_from_checkpoint",
                          f"resume with the model options of the run that wrote it ({flags}), or choose another "
                          "--output_dir for a new run")

    # ------------------------------------------------------------------------------------------ saving
    def save(self, step: int, state: dict, ema=None, timestep_sampler=None, export: ExportFacts | None = None) -> Path:
        """Write checkpoint-<step> atomically (see the module docstring); `state` becomes its marker file, and
        `export` (the UNet, the scheduler and the run's record at this step) lets `hf-ddpm export` read it.

        A failed write (disk full, permissions) stops the run with the previous checkpoints untouched.
        """
        accelerator = self.accelerator
        final, partial = self.folder / f"checkpoint-{step}", self.folder / f"{PARTIAL_PREFIX}{step}"
        try:
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)  # debris of a run killed while writing
                self.folder.mkdir(parents=True, exist_ok=True)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(partial), safe_serialization=True)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                if ema is not None:
                    ema.save_pretrained(str(partial / EMA_FOLDER))
                if export is not None:
                    export.write(partial)
                sampler_state = timestep_sampler.state_dict() if timestep_sampler is not None else {}
                if sampler_state:  # tensors only (safetensors), the same on every process
                    save_file(sampler_state, str(partial / SAMPLER_FILE))
                (partial / MARKER).write_text(json.dumps(state))
                fsync_tree(partial)
                if final.exists():  # the same step saved by an earlier attempt of this run: identical by construction
                    shutil.rmtree(final)
                os.replace(partial, final)
                fsync_tree(self.folder, files=False)
                self.prune()
                logger.info(f"saved {final}")
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)
            kept = ", ".join(p.name for p in self.complete()) or "none yet"
            raise RunFailure(f"could not write {final.name} ({error.strerror or error}); earlier checkpoints are intact "
                             f"({kept})", None, f"free space or fix permissions on {self.folder}, then rerun with "
                             "--resume_from_checkpoint latest") from None
        accelerator.wait_for_everyone()
        return final

    def prune(self) -> None:
        """Drop debris of killed writes, and the oldest complete checkpoints beyond the limit (never the newest)."""
        for debris in self.folder.glob(f"{PARTIAL_PREFIX}*"):
            shutil.rmtree(debris)
        if self.total_limit is None:
            return
        keep = max(1, self.total_limit)  # checked in __init__ too: no value can delete the newest checkpoint
        for old in self.complete()[:-keep]:
            shutil.rmtree(old)


def load_ema(ema, folder: Path, device) -> None:
    """Load EMA weights saved by `EMAModel.save_pretrained` into `ema`, quietly (its own config keys are not
    UNet2DModel's, which diffusers would warn about on every resume)."""
    from diffusers import UNet2DModel
    from diffusers.training_utils import EMAModel
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = EMAModel.from_pretrained(str(folder), model_cls=UNet2DModel)
    finally:
        diffusers_logging.set_verbosity(level)
    ema.load_state_dict(loaded.state_dict())
    ema.to(device)


def _step_or(path: Path) -> float:
    try:
        return step_of(path)
    except ValueError:
        return float("inf")
