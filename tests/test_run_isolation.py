"""No option value of train.py deletes, overwrites or adds to a checkpoint, a pipeline or the logs of another run
(issue 9).

Every case starts from fresh copies of a complete earlier run ("other": checkpoint-2 and checkpoint-4, TensorBoard
logs, sample grids and the final pipeline; "third", a second copy, where a case involves two runs) and runs
train.py with adversarial values of the options that decide where a run writes and what it replaces or deletes:
paths into the other run's folders, '..' paths, absolute paths, a symlink, a pipeline or checkpoint folder as the
output folder, resuming another run's checkpoint into a third run's folder, resuming an earlier checkpoint where
later ones exist, and the switches that start over. Each case is either refused (exit status 2, one line naming the
option) or runs; either way every file of the other runs is byte-identical afterwards and none was added to them.
`--overwrite_output_dir` is the one option meant to start a new run in a run's folder: the earlier run's
checkpoints, pipeline, logs and sample grids must then all be kept, renamed, and none of them mixed with the new
run's.

`test_every_option_that_writes_is_walked` keeps the case list complete: each of train.py's options is either one
that decides where the run writes or what it replaces (and then appears in a case) or is classified with a reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import offline_env
from hf_ddpm.options import declared
from support.train_server import TrainServer, train_args
from training.config import TrainConfig
from training.outputs import STATUS_FILE

# Options that decide where the run writes, or what it replaces or deletes: each appears in a case below.
WRITES = ("output_dir", "logging_dir", "overwrite_output_dir", "resume_from_checkpoint", "checkpoints_total_limit",
          "cache_dir")
# The other options, by group (or by name), and why none of their values can touch another run's files.
NOT_WHERE = {
    "data": "where the images come from: read, never written (the datasets cache is --cache_dir, walked)",
    "model": "which network: a config is read, never written",
    "diffusion": "numbers and names of the objective",
    "optimization": "numbers and names of the optimizer and EMA",
    "performance": "how fast the same numbers are computed (memory format, compilation, TF32, workers)",
    "hub": "what goes to the Hub: only this run's pipeline folder is uploaded, and nothing local is written",
    "logger": "which tracker: it writes under --logging_dir (walked)",
    "logging_steps": "when to log, not where",
    "save_images_steps": "when to write a sample grid into this run's samples/ (the cases write grids)",
    "eval_batch_size": "how many images a sample grid holds",
    "ddpm_num_inference_steps": "how sample grids are drawn",
    "eval_steps": "when to log bits/dim, not where",
    "eval_num_images": "how many images bits/dim uses",
    "checkpointing_steps": "when to checkpoint into this run's checkpoints/ (the cases checkpoint)",
}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    options: tuple[str, ...]  # flags after the base run's ({other}, {third}, {case}, {new}: paths of the case)
    refused: tuple[str, ...] = ()  # fragments of the one-line error (exit 2); () = the run may go ahead
    link: bool = False  # {case}/link is a symlink to {other}


def case(id, options, refused=(), **kwargs):
    return pytest.param(Case(id, tuple(options), tuple(refused), **kwargs), id=id)


HOLDS_A_RUN = ["already holds a run's checkpoints or pipeline", "(--output_dir)"]
LOGS_OUTSIDE = ["outside --output_dir", "(--logging_dir)"]
CASES = [
    # --output_dir: another run, reached directly, through '..', through a symlink, or a folder inside it
    case("output-dir-is-another-run", ["--output_dir", "{other}"], HOLDS_A_RUN),
    case("output-dir-dot-dot-into-another-run", ["--output_dir", "{new}/../other"], HOLDS_A_RUN),
    case("output-dir-symlink-to-another-run", ["--output_dir", "{case}/link"], HOLDS_A_RUN, link=True),
    case("output-dir-is-a-pipeline", ["--output_dir", "{other}/pipeline"], ["is a saved pipeline", "(--output_dir)"]),
    case("output-dir-is-a-pipeline-with-overwrite", ["--output_dir", "{other}/pipeline", "--overwrite_output_dir"],
         ["is a saved pipeline", "(--output_dir)"]),
    case("output-dir-is-a-checkpoint", ["--output_dir", "{other}/checkpoints/checkpoint-4"],
         ["is a checkpoint", "(--output_dir)"]),
    case("output-dir-is-a-checkpoint-resumed",
         ["--output_dir", "{other}/checkpoints/checkpoint-4", "--resume_from_checkpoint", "latest"],
         ["is a checkpoint", "(--output_dir)"]),
    case("output-dir-is-a-checkpoints-folder", ["--output_dir", "{other}/checkpoints"],
         ["lies inside another run's folder", "(--output_dir)"]),
    case("output-dir-inside-another-runs-logs", ["--output_dir", "{other}/logs/mine"],
         ["lies inside another run's folder", "(--output_dir)"]),
    case("output-dir-inside-a-pipeline-through-dot-dot", ["--output_dir", "{other}/logs/../pipeline/unet/.."],
         ["is a saved pipeline", "(--output_dir)"]),
    # --logging_dir: into the other run, absolute or relative
    case("logging-dir-is-another-runs-logs", ["--logging_dir", "{other}/logs"], LOGS_OUTSIDE),
    case("logging-dir-dot-dot-into-another-runs-logs", ["--logging_dir", "../other/logs"], LOGS_OUTSIDE),
    case("logging-dir-into-another-runs-checkpoint", ["--logging_dir", "{other}/checkpoints/checkpoint-4"],
         LOGS_OUTSIDE),
    case("logging-dir-into-another-runs-pipeline", ["--logging_dir", "{other}/pipeline"], LOGS_OUTSIDE),
    case("logging-dir-of-a-resumed-run-into-another-run", ["--output_dir", "{third}", "--resume_from_checkpoint",
                                                            "latest", "--logging_dir", "../other/logs"], LOGS_OUTSIDE),
    case("logging-dir-is-the-runs-own-checkpoints", ["--output_dir", "{other}", "--resume_from_checkpoint", "latest",
                                                     "--logging_dir", "checkpoints/checkpoint-4"],
         ["is where the run keeps its checkpoints", "(--logging_dir)"]),
    case("logging-dir-is-the-output-dir-itself", ["--logging_dir", "."], ["(--logging_dir)", "logs"]),
    # --resume_from_checkpoint: another run's checkpoint into a third run; an earlier checkpoint of a run
    case("resume-another-runs-checkpoint-into-a-third-run", ["--output_dir", "{third}", "--resume_from_checkpoint",
                                                             "{other}/checkpoints/checkpoint-2"], HOLDS_A_RUN),
    case("resume-an-earlier-checkpoint", ["--output_dir", "{other}", "--resume_from_checkpoint",
                                          "{other}/checkpoints/checkpoint-2"],
         ["checkpoint-4 follows it", "(--resume_from_checkpoint)"]),
    case("resume-an-earlier-checkpoint-keeping-one",
         ["--output_dir", "{other}", "--resume_from_checkpoint", "{other}/checkpoints/checkpoint-2",
          "--checkpoints_total_limit", "1"],
         ["checkpoint-4 follows it", "(--resume_from_checkpoint)"]),
    case("resume-a-pipeline", ["--resume_from_checkpoint", "{other}/pipeline"],
         ["is not a complete checkpoint", "(--resume_from_checkpoint)"]),
    case("resume-another-runs-checkpoint-into-a-new-folder-keeping-one",
         ["--resume_from_checkpoint", "{other}/checkpoints/checkpoint-2", "--checkpoints_total_limit", "1"]),
    # --checkpoints_total_limit: a value that would delete every checkpoint of the run it continues
    case("keep-no-checkpoint-of-a-resumed-run", ["--output_dir", "{other}", "--resume_from_checkpoint", "latest",
                                                 "--checkpoints_total_limit", "0"],
         ["0 is not >= 1", "(--checkpoints_total_limit)"]),
    # --cache_dir: datasets' cache inside another run
    case("cache-dir-in-another-runs-pipeline", ["--cache_dir", "{other}/pipeline"],
         ["is a saved pipeline", "(--cache_dir)"]),
    case("cache-dir-in-another-runs-checkpoints", ["--cache_dir", "{other}/checkpoints/cache"],
         ["lies inside another run's folder", "(--cache_dir)"]),
    # --overwrite_output_dir: a new run in the other run's folder keeps all of it, renamed and unmixed
    case("overwrite-another-run", ["--output_dir", "{other}", "--overwrite_output_dir"]),
]


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes() + array.tobytes()


def base_args(tiny_config, root: Path, output_dir) -> list[str]:
    """A 4-step run on 8 images: checkpoints at 2 and 4, a sample grid at each, logs every step."""
    return [str(a) for a in train_args(
        tiny_config, output_dir, idx_images=root / "images-idx3-ubyte", max_train_samples=8, max_train_steps=4,
        checkpointing_steps=2, save_images_steps=2, logging_steps=1, eval_batch_size=1, ddpm_num_inference_steps=2,
        cache_dir=root / "hf-cache")]


def files(folder: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (size, SHA-256)} of every file under `folder` (symlinks not followed)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def results(tiny_config, tmp_path_factory):
    """Run the other run once, then every case on fresh copies of it, in train.py children of the fork server."""
    root = tmp_path_factory.mktemp("isolation")
    gray = np.stack([np.full((28, 28), 30 * i, np.uint8) for i in range(8)])
    (root / "images-idx3-ubyte").write_bytes(idx_bytes(gray))
    server = TrainServer(root, offline_env(root / "hf-home"))
    out = {}
    try:
        done = server.run("other", base_args(tiny_config, root, root / "other"))
        assert done["rc"] == 0, done["stderr"][-3000:]
        for param in CASES:
            c = param.values[0]
            case_dir = root / "cases" / c.id
            paths = {"other": case_dir / "other", "third": case_dir / "third", "case": case_dir,
                     "new": case_dir / "new"}
            shutil.copytree(root / "other", paths["other"], symlinks=True)
            shutil.copytree(root / "other", paths["third"], symlinks=True)
            if c.link:
                os.symlink(paths["other"], case_dir / "link")
            before = {name: files(paths[name]) for name in ("other", "third")}
            argv = base_args(tiny_config, root, paths["new"]) + [o.format(**paths) for o in c.options]
            result = server.run(c.id, argv)
            out[c.id] = {**result, "paths": paths, "before": before,
                         "after": {name: files(paths[name]) for name in ("other", "third")}}
    finally:
        server.close()
    return out


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip() and "\r" not in line]


@pytest.mark.parametrize("case", CASES)
def test_no_option_touches_another_run(case: Case, results):
    result = results[case.id]
    lines = stderr_lines(result["stderr"])
    if case.refused:
        assert result["rc"] == 2, f"exit status {result['rc']}, expected a refusal: {result['stderr'][-2500:]}"
        assert "Traceback" not in result["stderr"], result["stderr"][-2500:]
        assert lines[-1].startswith("train.py: error: "), lines[-1]
        missing = [fragment for fragment in case.refused if fragment not in lines[-1]]
        assert not missing, f"does not say {missing}: {lines[-1]}"
    else:
        assert result["rc"] == 0, result["stderr"][-2500:]
    if case.id == "overwrite-another-run":
        return check_set_aside(result)
    for name in ("other", "third"):
        before, after = result["before"][name], result["after"][name]
        changed = sorted(p for p in before if after.get(p) != before[p])
        added = sorted(set(after) - set(before))
        assert not changed and not added, f"{name}: changed or removed {changed}, added {added}"


def check_set_aside(result) -> None:
    """--overwrite_output_dir in the other run's folder: each of its folders is kept whole as <name>-replaced-<time>,
    nothing added to it, and the new run's checkpoints, logs, sample grids and pipeline are its own."""
    before, other = result["before"]["other"], result["paths"]["other"]
    before = {path: digest for path, digest in before.items() if path != STATUS_FILE}  # the new run's state replaces it
    after = files(other)
    kept = {}
    for path, digest in after.items():
        top, _, rest = path.partition("/")
        match = re.fullmatch(r"(.+)-replaced-\d+", top)
        if match:
            kept[f"{match.group(1)}/{rest}"] = digest
    assert kept == before, (f"the earlier run is not kept whole: missing {sorted(set(before) - set(kept))}, added "
                            f"{sorted(set(kept) - set(before))}")
    new_run = {p for p in after if not re.match(r"[^/]+-replaced-\d+/", p)}
    assert {p.split("/")[0] for p in new_run} == {"checkpoints", "logs", "samples", "pipeline", STATUS_FILE}, \
        sorted(new_run)
    mixed = sorted(p for p in new_run if p.startswith("logs/") and p in before)  # event files are named per run
    assert not mixed, f"the earlier run's logs are mixed with the new run's: {mixed}"


def test_every_option_that_writes_is_walked():
    """Each option of train.py either decides where a run writes or what it replaces (and is in a case) or is
    classified in NOT_WHERE with the reason its values cannot touch another run."""
    walked = {o.lstrip("-") for param in CASES for o in param.values[0].options if o.startswith("--")} | {"output_dir"}
    assert set(WRITES) <= walked, f"options of WRITES in no case: {set(WRITES) - walked}"
    unclassified = [f.name for f in declared(TrainConfig) if f.name not in WRITES and f.name not in NOT_WHERE
                    and f.metadata.get("group") not in NOT_WHERE]
    assert not unclassified, f"classify these options: in WRITES (and a case) or in NOT_WHERE: {unclassified}"
    outputs = [f.name for f in declared(TrainConfig) if f.metadata.get("group") == "outputs"]
    assert all(name in WRITES or name in NOT_WHERE for name in outputs)  # each output option by name
