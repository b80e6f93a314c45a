"""`hf-ddpm sample`: the images are the pipeline's for the same seed, sampler and steps; the settings JSON; bad
combinations are one line and exit 2 with nothing written; existing outputs are never replaced without --overwrite."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import hf_ddpm
import hf_ddpm.cli as cli
from hf_ddpm import DDPMPipeline
from hf_ddpm.commands.sample import sample_images
from hf_ddpm.samplers import SAMPLER_NAMES, SAMPLERS, make_scheduler

from conftest import T


def run(argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip() and "\r" not in line]


def loaded(pipeline_dir: str, scheduler: str) -> DDPMPipeline:
    pipe = DDPMPipeline.from_pretrained(pipeline_dir)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference(pipeline_dir, scheduler, steps, seed, num_images, eta=None) -> list[np.ndarray]:
    """The pipeline called directly: one batch, image i from torch.Generator().manual_seed(seed + i)."""
    pipe = loaded(pipeline_dir, scheduler)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_images)]
    images = pipe(num_images, generators, steps, eta=eta).images
    return [np.asarray(image) for image in images]


def snapshot(root: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("scheduler, steps, eta", [("ddpm", 7, None), ("ddim", 5, 0.5), ("dpmsolver++", 5, None),
                                                   ("euler-ancestral", 5, None)])
def test_images_equal_the_pipelines_for_the_same_seed_sampler_and_steps(scheduler, steps, eta, tiny_pipeline_dir,
                                                                        tmp_path, capsys):
    argv = ["sample", tiny_pipeline_dir, "--num-images", 3, "--batch-size", 3, "--scheduler", scheduler,
            "--steps", steps, "--seed", 11, "--output", tmp_path / "grid.png", "--output-dir", tmp_path / "images",
            "--quiet"]
    if eta is not None:
        argv += ["--eta", eta]
    rc, lines = run(argv, capsys)
    assert rc == 0, lines
    expected = reference(tiny_pipeline_dir, scheduler, steps, 11, 3, eta)
    written = [np.asarray(PIL.Image.open(tmp_path / "images" / f"0000{i}.png")) for i in range(3)]
    for ours, theirs in zip(written, expected):
        assert ours.dtype == np.uint8 and ours.shape == (28, 28)
        np.testing.assert_array_equal(ours, theirs)
    grid = np.asarray(PIL.Image.open(tmp_path / "grid.png").convert("L"))
    assert grid.shape == (2 * 28, 2 * 28)  # ceil(sqrt(3)) = 2 columns, 2 rows, the last tile black
    for i, image in enumerate(expected):
        row, column = divmod(i, 2)
        np.testing.assert_array_equal(grid[28 * row:28 * (row + 1), 28 * column:28 * (column + 1)], image)
    assert not grid[28:, 28:].any()


def test_an_image_depends_on_its_seed_not_on_the_batch_size(tiny_pipeline_dir):
    pipe = loaded(tiny_pipeline_dir, "ddpm")
    one_by_one = [np.asarray(im, np.int16) for im in sample_images(pipe, 3, 5, seed=4, batch_size=1, progress=False)]
    together = [np.asarray(im, np.int16) for im in sample_images(pipe, 3, 5, seed=4, batch_size=3, progress=False)]
    shifted = [np.asarray(im, np.int16) for im in sample_images(pipe, 2, 5, seed=5, batch_size=2, progress=False)]
    for a, b in zip(one_by_one + one_by_one[1:], together + shifted):
        assert np.abs(a - b).max() <= 1  # the same noise; batched convolutions may round differently
    assert np.abs(one_by_one[0] - one_by_one[1]).max() > 10


def test_settings_json_beside_each_output(tiny_pipeline_dir, tmp_path, capsys):
    rc, lines = run(["sample", tiny_pipeline_dir, "--num-images", 2, "--scheduler", "ddim", "--steps", 4, "--eta",
                     1.0, "--seed", 3, "--output", tmp_path / "g.png", "--output-dir", tmp_path / "d", "--quiet"],
                    capsys)
    assert rc == 0, lines
    settings = json.loads((tmp_path / "g.json").read_text())
    assert settings == json.loads((tmp_path / "d" / "settings.json").read_text())
    assert settings["scheduler"] == "ddim" and settings["scheduler_class"] == "DDIMScheduler"
    assert settings["scheduler_config"]["_class_name"] == "DDIMScheduler"
    assert settings["scheduler_config"]["num_train_timesteps"] == T
    assert (settings["steps"], settings["eta"], settings["seed"], settings["num_images"]) == (4, 1.0, 3, 2)
    assert settings["pipeline"] == str(Path(tiny_pipeline_dir).resolve())
    assert settings["hf_ddpm_version"] == hf_ddpm.__version__ and settings["device"] == "cpu"
    assert settings["images"] == ["00000.png", "00001.png"] and settings["grid"] == str(tmp_path / "g.png")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["00000.png", "00001.png", "settings.json"]


def test_defaults_are_all_T_for_ddpm_and_50_capped_for_the_others(tiny_pipeline_dir, tmp_path, capsys):
    # dpmsolver++ and unipc give NaN images with steps = T in diffusers: at most T - 1
    for scheduler, steps in (("ddpm", T), ("euler", T), ("unipc", T - 1), ("dpmsolver++", T - 1)):
        rc, lines = run(["sample", tiny_pipeline_dir, "--num-images", 1, "--scheduler", scheduler,
                         "--output", tmp_path / f"{scheduler}.png", "--quiet"], capsys)
        assert rc == 0, lines
        settings = json.loads((tmp_path / f"{scheduler}.json").read_text())
        assert settings["steps"] == steps and settings["eta"] is None
        assert np.asarray(PIL.Image.open(tmp_path / f"{scheduler}.png")).std() > 0  # not a NaN-black picture


BAD = [  # (argv after PIPELINE, fragments of the one error line)
    ([], ["nothing to write", "pass --output grid.png, --output-dir DIR"]),
    (["--output", "{out}/g.png", "--scheduler", "ddpm", "--eta", "0.5"],
     ["--eta has no meaning for --scheduler ddpm", "use --scheduler ddim"]),
    (["--output", "{out}/g.png", "--scheduler", "dpmsolver++", "--eta", "0"], ["--eta has no meaning"]),
    (["--output", "{out}/g.png", "--steps", str(T + 1)], [f"more than the model's T = {T}", f"pass at most {T}"]),
    (["--output", "{out}/g.png", "--scheduler", "unipc", "--steps", str(T)],
     [f"more than T - 1 = {T - 1} for unipc", f"pass at most {T - 1}"]),
    (["--output", "{out}/g.png", "--scheduler", "ddim", "--steps", "0"], ["--steps", "pass a value in [1, inf)"]),
    (["--output", "{out}/g.png", "--scheduler", "ddim", "--eta", "1.5"], ["--eta", "[0, 1]"]),
    (["--output", "{out}/g.png", "--num-images", "0"], ["--num_images", "[1, inf)"]),
    (["--output", "{out}/g.png", "--batch-size", "0"], ["--batch_size", "[1, inf)"]),
    (["--output", "{out}/g.png", "--seed", "-1"], ["--seed -1 is outside", "pass a seed"]),
    (["--output", "{out}/g.png", "--device", "cuda:99"], ["--device"]),
    (["--output", "{out}/g.png", "--device", "gpu"], ["not a torch device", "use cpu, cuda"]),
    (["--output", "{out}/g.jpg"], ["not a .png file name", "g.png"]),
    (["--output", "{out}/missing/g.png"], ["does not exist", "create it"]),
    (["--output", "{out}"], ["is a folder", "--output-dir"]),
    (["--output", "{out}/taken.png"], ["taken.png already exists", "pass --overwrite"]),
    (["--output", "{out}/g.png", "--grid-columns", "0"], ["--grid_columns"]),
    (["--output-dir", "{out}/d", "--grid-columns", "2"], ["--grid-columns has no grid", "add --output"]),
    (["--output-dir", "{out}"], ["already holds", "choose an empty or new folder", "--overwrite"]),
    (["--output-dir", "{out}/taken.png"], ["is a file", "give a folder path"]),
    (["--output-dir", "{out}/no/such/d"], ["does not exist", "create it"]),
]


@pytest.mark.parametrize("argv, fragments", BAD, ids=[" ".join(a).replace("{out}/", "") or "no-output" for a, _ in BAD])
def test_bad_combinations_are_one_line_exit_2_and_write_nothing(argv, fragments, tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "taken.png").write_bytes(b"an earlier grid")
    before = snapshot(tmp_path)
    rc, lines = run(["sample", tiny_pipeline_dir, *[a.format(out=out) for a in argv], "--quiet"], capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("hf-ddpm sample: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(tmp_path) == before


def test_bad_pipeline_folders_are_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "notpipe").mkdir()
    for folder, fragment in ((tmp_path / "missing", "not found"), (tmp_path / "notpipe", "no model_index.json")):
        rc, lines = run(["sample", folder, "--output", tmp_path / "g.png", "--quiet"], capsys)
        assert rc == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notpipe"]


def test_a_second_run_refuses_to_overwrite_and_overwrite_keeps_other_files(tiny_pipeline_dir, tmp_path, capsys):
    argv = ["sample", tiny_pipeline_dir, "--num-images", 2, "--steps", 3, "--output", tmp_path / "g.png",
            "--output-dir", tmp_path / "d", "--quiet"]
    assert run(argv, capsys)[0] == 0
    (tmp_path / "d" / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    rc, lines = run(argv, capsys)
    assert rc == 2 and len(lines) == 1 and "already exists" in lines[0] and "--overwrite" in lines[0], lines
    rc, lines = run(argv[:-1] + ["--output", tmp_path / "other.png", "--quiet"], capsys)
    assert rc == 2 and "already holds" in lines[0], lines  # the folder still holds the first run
    assert snapshot(tmp_path) == before
    rc, lines = run(argv + ["--overwrite", "--seed", 9], capsys)
    assert rc == 0, lines
    after = snapshot(tmp_path)
    assert after[str(tmp_path / "d" / "notes.txt")] == before[str(tmp_path / "d" / "notes.txt")]
    assert after[str(tmp_path / "d" / "00000.png")] != before[str(tmp_path / "d" / "00000.png")]
    assert json.loads((tmp_path / "g.json").read_text())["seed"] == 9


def test_the_sampler_table_builds_each_scheduler_from_the_pipelines_config(tiny_pipeline_dir):
    base = DDPMPipeline.from_pretrained(tiny_pipeline_dir).scheduler.config
    for name in SAMPLER_NAMES:
        scheduler = make_scheduler(name, base)
        assert type(scheduler) is SAMPLERS[name].scheduler_class
        assert scheduler.config.num_train_timesteps == T and scheduler.config.beta_end == base.beta_end
    dpm = make_scheduler("dpmsolver++", base)
    assert (dpm.config.algorithm_type, dpm.config.solver_order) == ("dpmsolver++", 2)
    assert make_scheduler("ddim", base, clip_sample=False).config.clip_sample is False
    assert [name for name in SAMPLER_NAMES if SAMPLERS[name].takes_eta] == ["ddim"]
    with pytest.raises(ValueError, match="unknown sampler 'plms'.*choose one of: ddpm, ddim"):
        make_scheduler("plms", base)


def test_help_lists_every_option_with_its_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    text = capsys.readouterr().out
    for flag in ("--num-images", "--scheduler", "--steps", "--eta", "--seed", "--batch-size", "--device",
                 "--output", "--output-dir", "--overwrite"):
        assert flag in text
    assert "dpmsolver++" in text and "euler-ancestral" in text
