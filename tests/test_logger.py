"""`train.py --logger tensorboard|wandb` (issue 11): the same scalars and sample grids on both of Accelerate's trackers.

The wandb run is offline (WANDB_MODE=offline, every wandb folder inside tmp_path): nothing goes to the network. Its
history is read back from the run's `.wandb` file, a LevelDB-style log of wandb's own protobuf `Record`s, with the
record schema wandb ships (`wandb.proto.wandb_internal_pb2`); TensorBoard's event files are read as test_train.py
reads them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.train_server import run_train, train_args

from hf_ddpm.options import UsageError
from training.config import LOGGERS, parse_config

STEPS = {"max_train_steps": 4, "logging_steps": 2, "save_images_steps": 2, "eval_steps": 4, "eval_num_images": 2,
         "checkpointing_steps": 4}
SCALARS = {"train/loss", "train/lr", "train/grad_norm", "train/images_per_sec", "train/ema_decay", "eval/bpd"}
WANDB_OWN_KEYS = ("_step", "_runtime", "_timestamp")


# ------------------------------------------------------------------------------------------------ readers
def tensorboard_logs(output_dir: Path) -> tuple[dict[str, dict[int, float]], dict[int, np.ndarray]]:
    """({tag: {step: value}}, {step: the "samples" image}) of the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    images: dict[int, np.ndarray] = {}
    for events in sorted((output_dir / "logs").rglob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
        if "samples" in accumulator.Tags()["images"]:
            for event in accumulator.Images("samples"):
                images[event.step] = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
    return scalars, images


def wandb_records(path: Path) -> list:
    """The `Record`s of a `.wandb` file: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks,
    each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last); zero padding ends a block."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # padding up to the end of the block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_logs(wandb_dir: Path) -> tuple[dict[str, dict[int, float]], dict[int, np.ndarray], dict]:
    """({key: {step: value}}, {step: the "samples" image}, the run's config) of the one offline run in wandb_dir."""
    (run_file,) = sorted(wandb_dir.rglob("offline-run-*/*.wandb"))
    scalars: dict[str, dict[int, float]] = {}
    images: dict[int, np.ndarray] = {}
    config = {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        if kind != "history":
            continue
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        step = row["_step"]
        if row.get("samples/_type") == "image-file":
            images[step] = np.asarray(Image.open(run_file.parent / "files" / row["samples/path"]))
        for key, value in row.items():
            if not key.startswith(WANDB_OWN_KEYS) and not key.startswith("samples/"):
                scalars.setdefault(key, {})[step] = value
    return scalars, images, config


# -------------------------------------------------------------------------------------------------- tests
def test_logger_choices_and_a_missing_wandb_is_a_usage_error_at_start_up(monkeypatch):
    assert LOGGERS == ("tensorboard", "wandb")
    assert parse_config([]).logger == "tensorboard"
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(UsageError) as error:
        parse_config(["--logger", "wandb"])
    assert str(error.value) == ('--logger wandb needs the wandb package, which is not installed (--logger): '
                                'pip install "hf-ddpm[wandb]", or use --logger tensorboard')
    with pytest.raises(SystemExit):
        parse_config(["--logger", "mlflow"])


def test_tensorboard_and_wandb_log_the_same_scalars_and_sample_grids(tiny_config, tmp_path):
    pytest.importorskip("wandb", reason='wandb is not installed: pip install "hf-ddpm[wandb]" (scripts/setup.sh '
                                        "installs it with the test extra)")
    board_dir, wandb_out, wandb_dir = tmp_path / "tensorboard", tmp_path / "wandb-run", tmp_path / "wandb-files"
    run_train(train_args(tiny_config, board_dir, **STEPS))
    offline = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
               "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
               "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false", "WANDB_PROJECT": "hf-ddpm-test"}
    wandb_dir.mkdir()
    run_train(train_args(tiny_config, wandb_out, logger="wandb", **STEPS), env=offline)

    board_scalars, board_images = tensorboard_logs(board_dir)
    wandb_scalars, wandb_images, config = wandb_logs(wandb_dir)
    assert set(board_scalars) == set(wandb_scalars) == SCALARS
    for tag in SCALARS:
        assert set(board_scalars[tag]) == set(wandb_scalars[tag]) == ({4} if tag == "eval/bpd" else {2, 4}), tag
        if tag != "train/images_per_sec":  # the same seed: the same run, logged the same (float32 in TensorBoard)
            assert wandb_scalars[tag] == pytest.approx(board_scalars[tag], rel=1e-6), tag
    assert sorted(board_images) == sorted(wandb_images) == [2, 4]
    for step in (2, 4):  # the same sample grid on both, pixel for pixel, and not blank
        board, wandb = board_images[step][..., :3], wandb_images[step]
        wandb = np.repeat(wandb[..., None], 3, axis=-1) if wandb.ndim == 2 else wandb[..., :3]
        assert board.shape == wandb.shape and board.shape[0] >= 28
        assert np.array_equal(board, wandb) and board.std() > 0
    assert config["logger"] == "wandb" and config["max_train_steps"] == 4 and "hub_token" not in config
    assert not (board_dir / "logs" / "wandb").exists() and not list((wandb_out / "logs").rglob("events.out*"))
