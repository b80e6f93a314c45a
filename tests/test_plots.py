"""Pictures (issue 5): every `hf-ddpm plot` command writes a PNG whose size and content are checked, and the curves
behind them (schedule, TensorBoard scalars, rate-distortion) are checked as numbers."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from conftest import T, run_cli
from hf_ddpm import cli, plots
from hf_ddpm.commands import plot as plot_command

pytestmark = pytest.mark.usefixtures("one_thread")
C0 = np.array([31, 119, 180])  # matplotlib's first colour, of the first run's curve


def test_the_subcommand_is_registered_in_the_cli():
    assert plot_command.COMMAND in cli.COMMANDS, "add it to hf_ddpm.cli.COMMANDS"
    names = [command.name for command in plot_command.COMMAND.subcommands]
    assert names == ["schedule", "loss", "progressive", "interpolation", "rate-distortion", "bpd-terms",
                     "steps-vs-fid"]


@pytest.fixture(scope="module")
def pipeline_dir(tiny_pipeline_dir):
    return tiny_pipeline_dir


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, pipeline_dir):
    """bpd_terms.npz as `hf-ddpm evaluate` writes it (4 test images, T = 20)."""
    from hf_ddpm.evaluation import evaluate

    folder = tmp_path_factory.mktemp("eval")
    evaluate(pipeline_dir, metrics="bpd", bpd_num_images=4, output=folder, quiet=True)
    return str(folder)


def check_png(path, size=None, min_colors=3):
    """The file is a PNG of `size` (width, height) with real content: not one flat colour, not all white."""
    image = PIL.Image.open(path)
    assert image.format == "PNG"
    if size is not None:
        assert image.size == size
    pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= min_colors
    not_white = (pixels < 200).any(axis=2).mean()
    assert 0.005 < not_white < 0.99, not_white
    return pixels


def plot_area(pixels: np.ndarray) -> tuple[slice, slice]:
    """The inside of a figure's (single) axes: between the rows and columns that its dark frame spans."""
    dark = (pixels < 100).all(axis=2)
    rows = np.flatnonzero(dark.mean(axis=1) > 0.5)
    cols = np.flatnonzero(dark.mean(axis=0) > 0.5)
    assert len(rows) >= 2 and len(cols) >= 2, "no axes frame found"
    return slice(rows[0] + 2, rows[-1] - 1), slice(cols[0] + 2, cols[-1] - 1)


def near(pixels: np.ndarray, colour: np.ndarray, tolerance: int = 30) -> np.ndarray:
    return (np.abs(pixels - colour) < tolerance).all(axis=-1)


def run(argv, capsys):
    code, out, err = run_cli(argv, capsys)
    return code, out.strip(), err


# ------------------------------------------------------------------------------------------------ schedule


def test_schedule_curves_and_picture(tmp_path, capsys, pipeline_dir):
    curves = plots.schedule_curves(["linear", "cosine"], num_train_timesteps=1000)
    linear = curves["linear (T=1000)"]
    assert linear[0] == pytest.approx(1 - 1e-4) and linear[-1] == pytest.approx(4.0358e-5, rel=1e-3)
    assert (np.diff(linear) < 0).all() and (np.diff(curves["cosine (T=1000)"]) < 0).all()
    with_pipe = plots.schedule_curves([], pipeline=pipeline_dir)
    assert len(next(iter(with_pipe.values()))) == T
    output = tmp_path / "schedule.png"
    code, out, _ = run(["plot", "schedule", "--beta-schedule", "linear", "cosine", "quad", "--output", str(output)],
                       capsys)
    assert code == 0 and out == str(output)
    check_png(output, size=(1100, 400), min_colors=10)


# ---------------------------------------------------------------------------------------------------- loss


def write_events(folder, values, tag="train/loss"):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, value in enumerate(values):
        writer.add_scalar(tag, value, step)
    writer.add_scalar("eval/bpd", 5.0, 0)
    writer.close()


def test_loss_curve_from_tensorboard_logs(tmp_path, capsys):
    values = [1.0 / (1 + 0.1 * step) + 0.05 * np.sin(step) for step in range(100)]
    write_events(tmp_path / "logs" / "train", values)  # accelerate's tracker writes to LOGDIR/<project>
    runs = plots.read_scalars(str(tmp_path / "logs"))
    steps, read = runs["train"]
    np.testing.assert_array_equal(steps, np.arange(100))
    np.testing.assert_allclose(read, values, rtol=1e-6)
    smoothed = plots.smooth(read, 0.9)
    assert smoothed[0] == pytest.approx(read[0]) and np.abs(np.diff(smoothed)).max() < np.abs(np.diff(read)).max()
    code, out, _ = run(["plot", "loss", str(tmp_path / "logs")], capsys)
    assert code == 0 and out == str(tmp_path / "logs" / "loss.png")
    pixels = check_png(out, size=(800, 450), min_colors=10)
    rows, cols = plot_area(pixels)
    assert near(pixels[rows, cols], C0).sum() > 1000  # the smoothed curve, drawn across the plot area
    code, _, err = run(["plot", "loss", str(tmp_path / "logs"), "--tag", "train/los"], capsys)
    assert code == 2 and "no scalar 'train/los'" in err and "eval/bpd, train/loss" in err and err.count("\n") == 1
    code, _, err = run(["plot", "loss", str(tmp_path / "empty-logs")], capsys)
    assert code == 2 and "not found" in err


def test_smoothing_is_tensorboards_debiased_moving_average():
    # TensorBoard's smoothing (its scalar dashboard): last = last * w + (1 - w) * value from last = 0, each value
    # divided by 1 - w^(i + 1): a constant stays constant, and the curve starts at the first value, not near 0
    np.testing.assert_allclose(plots.smooth(np.full(20, 5.0), 0.9), 5.0, rtol=1e-12)
    np.testing.assert_allclose(plots.smooth(np.array([0.0, 10.0]), 0.5), [0.0, 5 / 0.75])
    values = np.random.default_rng(0).normal(size=300) + np.linspace(3, 1, 300)
    last, expected = 0.0, []
    for i, value in enumerate(values):
        last = last * 0.6 + 0.4 * value
        expected.append(last / (1 - 0.6 ** (i + 1)))
    np.testing.assert_allclose(plots.smooth(values, 0.6), expected, rtol=1e-12)
    np.testing.assert_array_equal(plots.smooth(values, 0.0), values)  # no smoothing at all


@pytest.mark.parametrize("num_points", [1, 3])
def test_a_loss_log_with_few_points_draws_markers(num_points, tmp_path, capsys):
    write_events(tmp_path / "logs", [0.5 + 0.1 * k for k in range(num_points)])
    code, out, _ = run(["plot", "loss", str(tmp_path / "logs"), "--output", str(tmp_path / "loss.png")], capsys)
    assert code == 0
    pixels = check_png(out, size=(800, 450))
    rows, cols = plot_area(pixels)
    inside = near(pixels[rows, cols], C0)
    width = inside.shape[1]
    middle = inside[:, width // 3: 2 * width // 3]  # the legend keeps off the data, to a side
    if num_points == 1:  # one point: autoscaling centres it; without a marker nothing would be drawn
        assert middle.sum() > 20, middle.sum()
    else:
        assert inside.sum() > 3 * 20


# ------------------------------------------------------------------------------------------ from a pipeline


def test_progressive_generation_picture(pipeline_dir, tmp_path, capsys):
    output = tmp_path / "progressive.png"
    code, out, _ = run(["plot", "progressive", pipeline_dir, "--num-images", "3", "--num-frames", "5",
                        "--output", str(output)], capsys)
    assert code == 0 and out == str(output)
    check_png(output, size=(660, 420), min_colors=50)  # (1.2 * 5 + 0.6) x (1.2 * 3 + 0.6) inches at 100 dpi


def test_the_progressive_title_fits_a_small_figure(pipeline_dir, tmp_path, capsys):
    output = tmp_path / "small.png"
    code, _, _ = run(["plot", "progressive", pipeline_dir, "--num-images", "1", "--num-frames", "2",
                      "--num-inference-steps", "2", "--output", str(output)], capsys)
    assert code == 0
    pixels = check_png(output, size=(300, 180), min_colors=20)
    ink = (pixels < 160).all(axis=2)
    assert ink[:20].sum() > 50  # the title is there, at the top
    assert not ink[:, :2].any() and not ink[:, -2:].any()  # and nothing, title included, runs off either side


def test_interpolation_picture(pipeline_dir, tmp_path, capsys):
    output = tmp_path / "interpolation.png"
    code, out, _ = run(["plot", "interpolation", pipeline_dir, "--t", "5", "15", "--num-points", "4",
                        "--num-inference-steps", "3", "--output", str(output)], capsys)
    assert code == 0
    pixels = check_png(output, size=(720, 310), min_colors=50)  # (1.1 * 6 + 0.6) x (1.2 * 2 + 0.7)
    assert pixels.std() > 20
    # image files as end points; their size must be the model's
    for name, index in (("a.png", 0), ("b.png", 1)):
        from hf_ddpm.data import load_fashion_mnist

        PIL.Image.fromarray(load_fashion_mnist("test")[index]).save(tmp_path / name)
    code, _, _ = run(["plot", "interpolation", pipeline_dir, "--image-a", str(tmp_path / "a.png"), "--image-b",
                      str(tmp_path / "b.png"), "--t", "10", "--num-points", "3", "--output", str(output)], capsys)
    assert code == 0
    check_png(output, size=(610, 190), min_colors=50)
    PIL.Image.new("L", (32, 32), 128).save(tmp_path / "big.png")
    code, _, err = run(["plot", "interpolation", pipeline_dir, "--image-a", str(tmp_path / "a.png"), "--image-b",
                        str(tmp_path / "big.png"), "--output", str(output)], capsys)
    assert code == 2 and "is 32x32 but the model makes 28x28 images" in err
    code, _, err = run(["plot", "interpolation", pipeline_dir, "--t", "20", "--output", str(output)], capsys)
    assert code == 2 and "timesteps [20] are outside [0, 19]" in err


# ---------------------------------------------------------------------------------------- from eval results


def test_rate_distortion_curves():
    rng = np.random.default_rng(0)
    terms = {"terms_bpd": rng.uniform(0.01, 0.5, size=(3, 6)), "x0_mse": rng.uniform(0, 0.5, size=(3, 6)),
             "prior_bpd": np.full(3, 1e-5)}
    curves = plots.rate_distortion_curves(terms)
    np.testing.assert_array_equal(curves["steps"], [6, 5, 4, 3, 2, 1])
    # holding x_{T-1} costs only the prior; holding x_0 costs everything but the decoder term L_0
    assert curves["rate"][-1] == pytest.approx(1e-5)
    assert curves["rate"][0] + terms["terms_bpd"][:, 0].mean() == pytest.approx(float(curves["total_bpd"]))
    assert (np.diff(curves["rate"]) < 0).all()  # more rate the further along the reverse chain
    np.testing.assert_allclose(curves["distortion"], 127.5 * np.sqrt(terms["x0_mse"].mean(0)))


def test_rate_distortion_and_bpd_terms_pictures(eval_dir, tmp_path, capsys):
    code, out, _ = run(["plot", "rate-distortion", eval_dir], capsys)
    assert code == 0 and out.endswith("rate_distortion.png")
    check_png(out, size=(1300, 400), min_colors=10)
    code, out, _ = run(["plot", "bpd-terms", eval_dir + "/bpd_terms.npz", "--output", str(tmp_path / "t.png")], capsys)
    assert code == 0
    check_png(tmp_path / "t.png", size=(800, 450), min_colors=10)
    code, _, err = run(["plot", "bpd-terms", str(tmp_path)], capsys)
    assert code == 2 and "bpd_terms.npz not found" in err
    code, _, err = run(["plot", "rate-distortion", eval_dir, "--output", str(tmp_path / "no" / "x.png")], capsys)
    assert code == 2 and "does not exist" in err


# ------------------------------------------------------------------------------ quality against NFE (issue 10)
C1, C2 = np.array([255, 127, 14]), np.array([44, 160, 44])  # matplotlib's second and third colours
SWEEP = {"ddpm-20": ("ddpm", 20), "ddpm-5": ("ddpm", 5), "ddim-2-eta0": ("ddim", 2), "ddim-5-eta0": ("ddim", 5),
         "dpmsolver++-2": ("dpmsolver++", 2), "dpmsolver++-5": ("dpmsolver++", 5)}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, pipeline_dir, fake_inception):
    """`hf-ddpm evaluate --sweep` of the tiny pipeline (T = 20): 3 samplers x 2 step counts, 6 samples each."""
    from hf_ddpm.evaluation import evaluate

    folder = tmp_path_factory.mktemp("sweep")
    evaluate(pipeline_dir, sweep=["ddpm:20,5", "ddim:2,5", "dpmsolver++:2,5"], num_samples=6, batch_size=3,
             max_reference_images=20, inception_weights=fake_inception["pool3"], cache_dir=str(folder / "cache"),
             output=folder, quiet=True)
    return folder


def panels(pixels: np.ndarray) -> list[tuple[slice, slice]]:
    """The insides of a figure's two side-by-side axes (its left and right halves)."""
    half = pixels.shape[1] // 2
    areas = []
    for offset, part in ((0, pixels[:, :half]), (half, pixels[:, half:])):
        rows, cols = plot_area(part)
        areas.append((rows, slice(cols.start + offset, cols.stop + offset)))
    return areas


def test_steps_vs_fid_figure_of_a_sweep(sweep_dir, tmp_path, capsys):
    from hf_ddpm.plots_samplers import sampler_curves

    results = json.loads((sweep_dir / "eval_results.json").read_text())
    assert set(results["samplers"]) == set(SWEEP)  # every (sampler, steps) pair of the sweep
    for key, (name, steps) in SWEEP.items():
        settings = results["samplers"][key]["settings"]
        assert (settings["scheduler"], settings["nfe"], settings["seed"]) == (name, steps, 0)
        assert {"fid", "kid"} <= set(results["samplers"][key]["metrics"])
    curves, shared = sampler_curves(results["samplers"])
    assert list(curves) == ["DDPM", "DDIM", "DPM-Solver++(2M)"] and shared["num_samples"] == 6
    np.testing.assert_array_equal(curves["DDPM"]["nfe"], [5, 20])  # sorted by NFE
    assert curves["DDPM"]["fid"][1] == results["samplers"]["ddpm-20"]["metrics"]["fid"]

    code, out, err = run(["plot", "steps-vs-fid", str(sweep_dir)], capsys)
    assert code == 0, err
    assert out == str(sweep_dir / "steps_vs_fid.png")
    pixels = check_png(out, size=(2000, 800), min_colors=20)  # 10 x 4 inches at 200 dpi
    for rows, cols in panels(pixels):  # FID left, KID right: a line with markers per sampler in each
        inside = pixels[rows, cols]
        for colour in (C0, C1, C2):
            assert near(inside, colour).sum() > 300, colour
    # without KID: one FID panel; --dpi and --title apply
    only_fid = {"dataset": results["dataset"], "metrics": {}, "settings": {},
                "samplers": {k: {"metrics": {"fid": v["metrics"]["fid"]}, "settings": v["settings"]}
                             for k, v in results["samplers"].items()}}
    (tmp_path / "fid.json").write_text(json.dumps(only_fid))
    code, _, err = run(["plot", "steps-vs-fid", str(tmp_path / "fid.json"), "--dpi", "100", "--title", "FID",
                        "--output", str(tmp_path / "fid.png")], capsys)
    assert code == 0, err
    pixels = check_png(tmp_path / "fid.png", size=(550, 400), min_colors=10)
    rows, cols = plot_area(pixels)
    assert all(near(pixels[rows, cols], colour).sum() > 50 for colour in (C0, C1, C2))


def test_steps_vs_fid_draws_nfe_on_a_log_axis(tmp_path, capsys):
    """NFE 1, 10, 100 at a constant FID: on a log axis the three markers are equally spaced."""
    settings = {"scheduler": "ddim", "num_samples": 10, "seed": 0, "feature_extractor": "x"}
    samplers = {f"ddim-{n}-eta0": {"metrics": {"fid": 50.0}, "settings": {**settings, "nfe": n}} for n in (1, 10, 100)}
    (tmp_path / "eval_results.json").write_text(json.dumps({"dataset": {}, "samplers": samplers}))
    code, out, err = run(["plot", "steps-vs-fid", str(tmp_path), "--dpi", "100"], capsys)
    assert code == 0, err
    pixels = check_png(out, size=(550, 400))
    rows, cols = plot_area(pixels)
    inside = near(pixels[rows, cols], C0)
    legend_free = inside[inside.shape[0] // 4:]  # the legend sits in a top corner
    columns = np.flatnonzero(legend_free.sum(axis=0) > 5)  # taller than the line: the markers
    groups = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    centres = [group.mean() for group in groups]
    assert len(centres) == 3, centres
    assert abs((centres[1] - centres[0]) - (centres[2] - centres[1])) < 3, centres


def test_steps_vs_fid_refuses_results_it_cannot_draw(tmp_path, capsys):
    (tmp_path / "eval_results.json").write_text(json.dumps({"dataset": {}, "metrics": {"bpd": 3.0}, "settings": {}}))
    code, _, err = run(["plot", "steps-vs-fid", str(tmp_path)], capsys)
    assert code == 2 and "holds no sampler results ('samplers')" in err and "--sweep" in err and err.count("\n") == 1
    code, _, err = run(["plot", "steps-vs-fid", str(tmp_path / "none")], capsys)
    assert code == 2 and "not found" in err
    alike = {"scheduler": "ddim", "seed": 0, "nfe": 5}
    mixed = {"samplers": {"a": {"metrics": {"fid": 1.0}, "settings": {**alike, "num_samples": 10}},
                          "b": {"metrics": {"fid": 2.0}, "settings": {**alike, "num_samples": 20, "nfe": 10}}}}
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    code, _, err = run(["plot", "steps-vs-fid", str(tmp_path / "mixed.json"), "--output", str(tmp_path / "m.png")],
                       capsys)
    assert code == 2 and "not comparable: they differ in {'num_samples': ['10', '20']}" in err
    assert not (tmp_path / "m.png").exists()
    code, _, err = run(["plot", "steps-vs-fid", str(tmp_path), "--dpi", "10"], capsys)
    assert code == 2 and "(--dpi)" in err
