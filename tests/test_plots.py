"""Pictures (issue 5): every `hf-ddpm plot` command writes a PNG whose size and content are checked, and the curves
behind them (schedule, TensorBoard scalars, rate-distortion) are checked as numbers."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from hf_ddpm import DDPMPipeline, DDPMScheduler, DDPMUNet2DModel
from hf_ddpm import plots
from hf_ddpm import cli

T = 20

def cli_main(argv):
    return cli.main(argv)


def test_the_subcommand_is_registered_in_the_cli():
    assert "hf_ddpm.plots" in cli.SUBCOMMAND_MODULES, "add it to hf_ddpm.cli.SUBCOMMAND_MODULES"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    torch.manual_seed(0)
    unet = DDPMUNet2DModel.from_preset("small28", block_out_channels=(16, 32, 32), norm_num_groups=8).eval()
    path = tmp_path_factory.mktemp("pipe") / "tiny-ddpm"
    DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=T)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, pipeline_dir):
    """bpd_terms.npz as `hf-ddpm evaluate` writes it (4 test images, T = 20)."""
    from hf_ddpm.evaluation import evaluate

    folder = tmp_path_factory.mktemp("eval")
    evaluate(pipeline_dir, metrics="bpd", bpd_num_images=4, output=folder, progress=False)
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


def run(argv, capsys):
    code = cli_main(argv)
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err


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
    check_png(out, size=(800, 450), min_colors=10)
    code, _, err = run(["plot", "loss", str(tmp_path / "logs"), "--tag", "train/los"], capsys)
    assert code == 2 and "no scalar 'train/los'" in err and "eval/bpd, train/loss" in err and err.count("\n") == 1
    code, _, err = run(["plot", "loss", str(tmp_path / "empty-logs")], capsys)
    assert code == 2 and "not found" in err


# ------------------------------------------------------------------------------------------ from a pipeline


def test_progressive_generation_picture(pipeline_dir, tmp_path, capsys):
    output = tmp_path / "progressive.png"
    code, out, _ = run(["plot", "progressive", pipeline_dir, "--num-images", "3", "--num-frames", "5",
                        "--output", str(output)], capsys)
    assert code == 0 and out == str(output)
    check_png(output, size=(660, 420), min_colors=50)  # (1.2 * 5 + 0.6) x (1.2 * 3 + 0.6) inches at 100 dpi


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
