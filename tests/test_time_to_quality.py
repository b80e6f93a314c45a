"""benchmarks/time_to_quality.py and its diffusers example loop: every train.py recipe is a valid train.py run that
changes what it says, the example loop resumes exactly, evaluation targets fall where the budget says, and a smoke
run of a train.py recipe and of the example loop (seconds of training, the tiny UNet, a stand-in Inception) gives run
records, a plot and a table."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import diffusers_example_loop as example  # noqa: E402
import time_to_quality as ttq  # noqa: E402

from hf_ddpm import DDPMUNet2DModel  # noqa: E402
from training.config import load_preset  # noqa: E402
from training.inputs import build_unet_config  # noqa: E402

DEMO = "demo"


def settings(recipe: str, **overrides) -> ttq.RunSettings:
    return ttq.RunSettings(**{"recipe": recipe, "seed": 0, "budget": 600.0, "eval_every": 150.0, "batch_size": 64,
                              "evaluation": ttq.EvalSettings(), **overrides})


def named_options(flags: tuple[str, ...], demo_preset: dict) -> set[str]:
    """The train.py options a list of flags sets (--no_x sets x), less those it sets to the demo preset's own value
    (a recipe on another preset may set one of that preset's changes back)."""
    named = set()
    for arg, value in zip(flags, [*flags[1:], "--"]):
        if arg.startswith("--") and (value.startswith("--") or yaml.safe_load(value) != demo_preset.get(arg[2:])):
            named.add(arg[2:].removeprefix("no_"))
    return named


def default_settings(recipe: str, *options: str) -> ttq.RunSettings:
    """What `time_to_quality.py run RECIPE OPTIONS` runs (with no options: the recipe's defaults)."""
    return ttq.run_settings(ttq.build_parser().parse_args(["run", recipe, *options]))


def test_every_train_recipe_is_the_demo_changed_where_it_says(tmp_path):
    """Parsed and validated by training/config.py (no training), each recipe's default run differs from the demo's
    exactly in the options its flags name and those its own preset sets otherwise (less the ones every run sets: its
    output, image grids and, with a constant LR, its steps, and those a flag sets back to the demo's value), and, for
    UNet changes, in the network: built here from its config. A recipe whose LR decays keeps its own steps, so that
    its schedule ends where it says."""
    demo_preset = load_preset(ttq.RECIPES[DEMO].preset)
    demo = ttq.TrainScriptRunner(DEMO, tmp_path, default_settings(DEMO)).config.recorded()
    assert demo["max_train_steps"] == ttq.UNBOUNDED_STEPS and demo["train_batch_size"] == 64
    for name, recipe in ttq.RECIPES.items():
        if recipe.flags is None or name == DEMO:
            continue
        run_dir = tmp_path / name
        run_dir.mkdir()
        config = ttq.TrainScriptRunner(name, run_dir, default_settings(name)).config
        changed = {key for key, value in config.recorded().items() if value != demo[key]} - {"output_dir"}
        own_preset = load_preset(recipe.preset)
        decays = config.lr_scheduler not in ttq.STEP_FREE_SCHEDULES
        assert (config.max_train_steps < ttq.UNBOUNDED_STEPS) == decays, name
        set_back = {arg[2:] for arg in recipe.flags if arg.startswith("--")} - named_options(recipe.flags, demo_preset)
        expected = named_options(recipe.flags, demo_preset) | (
            {key for key in own_preset.keys() | demo_preset.keys() if own_preset.get(key) != demo_preset.get(key)}
            - {"output_dir", "save_images_steps"} - (set() if decays else {"max_train_steps"}) - set_back)
        if recipe.unet:
            expected |= {"model_preset", "model_config_name_or_path"}
            unet_config = build_unet_config(config)
            assert {k: unet_config[k] for k in recipe.unet} == recipe.unet, name
            DDPMUNet2DModel.from_config(unet_config)  # the changed network builds
        assert changed == expected, name


@pytest.mark.parametrize("argv, batch_size", [(["fast-cpu"], 32), (["demo"], 64), (["diffusers-example"], 64),
                                              (["sweep-batch-32"], 32), (["fast-cpu", "--batch-size", "16"], 16),
                                              (["sweep-batch-32", "--batch-size", "16"], 16)])
def test_a_run_trains_at_its_recipe_batch_size_unless_told(argv, batch_size, tmp_path):
    """Without --batch-size a run trains at its recipe's own batch (fast_cpu's 32 as the main job trains it; a
    sweep's flag); with it, at the one given, which is what train.py then trains at and the record states."""
    settings = default_settings(*argv)
    assert settings.batch_size == batch_size
    if ttq.RECIPES[argv[0]].flags is not None:
        assert ttq.TrainScriptRunner(argv[0], tmp_path, settings).config.train_batch_size == batch_size


def test_example_unet_matches_the_demo_parameter_count():
    """The counts example_unet_config's docstring states: within 1% of the small28 preset's."""
    torch.manual_seed(0)
    demo = sum(p.numel() for p in DDPMUNet2DModel.from_preset("small28").parameters())
    import diffusers

    ours = sum(p.numel() for p in diffusers.UNet2DModel.from_config(example.example_unet_config()).parameters())
    assert (demo, ours) == (1_112_801, 1_105_665)


def tiny_example_loop(tiny_config, accelerator):
    import diffusers

    from hf_ddpm.data import ArrayImages, ImageDataset

    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    dataset = ImageDataset(ArrayImages(images, "random"), resolution=28, num_channels=1)
    torch.manual_seed(0)
    model = diffusers.UNet2DModel.from_config(json.loads(tiny_config.read_text()))
    return example.DiffusersExampleLoop(model, dataset, 8, accelerator, seed=3)


def test_example_loop_resumed_repeats_the_uninterrupted_run(tiny_config, tmp_path, one_thread):
    """3 steps, save, 4 more (crossing an epoch of 3 batches) == load the save into a fresh loop, 4 steps: weights,
    EMA, AdamW moments and LR bitwise equal."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    straight = tiny_example_loop(tiny_config, accelerator)
    for _ in range(3):
        straight.step()
    straight.save(tmp_path / "state", {"train_seconds": 1.5})
    for _ in range(4):
        straight.step()
    resumed = tiny_example_loop(tiny_config, accelerator)
    assert resumed.load(tmp_path / "state") == {"train_seconds": 1.5}
    for _ in range(4):
        resumed.step()
    assert resumed.global_step == straight.global_step == 7
    for a, b in zip(straight.unet.state_dict().values(), resumed.unet.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.shadow_params, resumed.ema.shadow_params):
        assert torch.equal(a, b)
    straight_moments, resumed_moments = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert straight_moments.keys() == resumed_moments.keys() and straight_moments  # by parameter index
    for index, moments in straight_moments.items():
        assert all(torch.equal(value, resumed_moments[index][key]) for key, value in moments.items())
    assert straight.lr_scheduler.get_last_lr() == resumed.lr_scheduler.get_last_lr()
    assert straight.ema.optimization_step == resumed.ema.optimization_step == 7


def test_smoke_runs_plot_and_table(tiny_config, fake_inception, tmp_path, monkeypatch, capsys):
    """Two recipes for 12 training seconds, evaluated every 6 (two points each), then the same commands again
    (nothing new), a changed setting (refused), the plot, the sample grids and the table. A train.py segment's first
    step takes up to seconds on a loaded machine (its one-time costs are on the clock), hence not a smaller budget."""
    monkeypatch.setenv("HF_DDPM_CACHE", str(tmp_path / "fid-cache"))
    output = tmp_path / "runs"
    common = ["--budget", "12", "--eval-every", "6", "--output", str(output), "--batch-size", "8",
              "--max-train-samples", "64", "--model-config", str(tiny_config), "--num-samples", "4", "--steps", "2",
              "--bpd-num-images", "1", "--max-reference-images", "8", "--inception-weights", fake_inception["pool3"]]
    for recipe in (DEMO, "diffusers-example"):
        assert ttq.main(["run", recipe, *common]) == 0, capsys.readouterr().err
        record = json.loads((output / f"{recipe}-seed0" / ttq.RUN_FILE).read_text())
        points = record["points"]
        seconds = [p["train_seconds"] for p in points]
        assert len(points) == 2 and seconds == sorted(seconds) and len(set(seconds)) == len(seconds), recipe
        assert seconds[-1] >= 12 - ttq.TOLERANCE * 6
        steps = [p["step"] for p in points]
        assert steps == sorted(steps) and steps[0] > 0
        for point in points:
            assert all(math.isfinite(point[k]) for k in ("fid", "kid", "kid_std", "bpd")), point
            assert (output / f"{recipe}-seed0" / point["pipeline"] / "eval_results.json").is_file()
        assert record["train_batch_size"] == 8 and record["num_parameters"] > 0
    # train.py's segments are stopped by the signal within about a step of their targets, start-up off the clock
    demo = json.loads((output / "demo-seed0" / ttq.RUN_FILE).read_text())
    assert [s["exit_status"] for s in demo["segments"]] == [ttq.EXIT_RESUMABLE] * len(demo["segments"])
    first_seconds = demo["points"][0]["train_seconds"]
    assert 6 - ttq.TOLERANCE * 6 <= first_seconds < 9, first_seconds

    before = {r: (output / f"{r}-seed0" / ttq.RUN_FILE).read_text() for r in (DEMO, "diffusers-example")}
    for recipe in (DEMO, "diffusers-example"):
        assert ttq.main(["run", recipe, *common]) == 0
        again = json.loads((output / f"{recipe}-seed0" / ttq.RUN_FILE).read_text())
        first = json.loads(before[recipe])
        assert (again["points"], again["segments"]) == (first["points"], first["segments"])  # nothing trained
    assert ttq.main(["run", DEMO, *common, "--eval-every", "5"]) == 2
    assert "eval_every" in capsys.readouterr().err

    png = tmp_path / "ttq.png"
    runs = [str(output / f"{r}-seed0") for r in (DEMO, "diffusers-example")]
    assert ttq.main(["plot", *runs, "--output", str(png)]) == 0
    with PIL.Image.open(png) as image:
        assert image.size[0] > 500 and len(np.unique(np.asarray(image.convert("L")))) > 10  # drawn, not blank
    samples_png = tmp_path / "samples.png"
    assert ttq.main(["grids", *runs, "--output", str(samples_png)]) == 0
    with PIL.Image.open(samples_png) as image:
        assert image.size[0] > image.size[1] > 300  # a row per run, a column per point
        every_point_height = image.size[1]
    last_png = tmp_path / "last.png"
    assert ttq.main(["grids", *runs, "--last", "--output", str(last_png)]) == 0
    with PIL.Image.open(last_png) as image:  # one row: each run's last point
        assert image.size[0] > image.size[1] and image.size[1] < every_point_height
    capsys.readouterr()
    assert ttq.main(["grids", str(output / "demo-seed0" / ttq.RUN_FILE), "--output", str(samples_png)]) == 2
    assert "a run.json alone holds no images" in capsys.readouterr().err
    assert ttq.main(["table", *runs]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 4 and rows[2].startswith("| demo (seed 0)") and rows[3].startswith("| diffusers-example")


@pytest.mark.parametrize("budget, every, targets", [(600, 150, [150, 300, 450, 600]), (500, 150, [150, 300, 450, 500]),
                                                    (4, 2, [2, 4])])
def test_targets(budget, every, targets):
    assert settings(DEMO, budget=budget, eval_every=every).targets == targets
