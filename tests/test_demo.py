"""`hf-ddpm demo` (issue 11): the page's work (DemoModel), the command's checks, `push --with-demo`, and the page end
to end in a real headless browser.

The browser test starts `hf-ddpm demo` on a tiny pipeline (T = 20) on 127.0.0.1 with a free port, and drives Debian's
chromium through chromium-driver with selenium: it loads the page, clicks Sample, waits for the image, checks its size
and that it is not blank, interpolates between the first two samples, and saves a screenshot. The browser reaches
loopback only: every other request goes to a proxy on 127.0.0.1 that does not exist, and host names do not resolve.

`python tests/test_demo.py PIPELINE OUT.png` runs the same browser session on any pipeline and keeps its screenshot
(docs/demo.png is made this way).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from conftest import T, offline_env, tiny_pipeline  # noqa: E402

import hf_ddpm.cli  # noqa: E402
from hf_ddpm.commands.sample import sample_images  # noqa: E402
from hf_ddpm.demo import DemoModel, display_scale, enlarge, space_files  # noqa: E402
from hf_ddpm.options import UsageError  # noqa: E402
from hf_ddpm.samplers import make_scheduler  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
INSTALL = 'apt-get install chromium chromium-driver; pip install -e ".[test,demo]" (scripts/setup.sh does both)'
TOKEN = "hf_hfDdpmTestToken0123456789abcdef"
SIDE = 28 * display_scale(28)  # one image as the page shows it in the sample grid...
STRIP_SIDE = 28 * display_scale(28, 48)  # ...and in rows of many (the progressive strip, interpolations)
pytestmark = pytest.mark.usefixtures("one_thread")  # a tiny model on a shared 2-core CPU


def _missing_for_browser() -> str | None:
    import importlib.util

    missing = [name for name in ("gradio", "selenium") if importlib.util.find_spec(name) is None]
    missing += [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None]
    return f"{', '.join(missing)} missing: {INSTALL}" if missing else None


needs_gradio = pytest.mark.skipif(__import__("importlib").util.find_spec("gradio") is None,
                                  reason=f"gradio missing: {INSTALL}")


@pytest.fixture(scope="module")
def model(tiny_pipeline_dir) -> DemoModel:
    return DemoModel(tiny_pipeline_dir, device="cpu")


# ------------------------------------------------------------------------------------------- the page's work
def test_sampling_reports_every_step_and_gives_the_images_of_hf_ddpm_sample(model, tiny_pipeline_dir):
    reports = []
    result = model.sample("ddim", 10, 3, seed=5, report=lambda done, total: reports.append((done, total)))
    assert reports == [(i, 10) for i in range(1, 11)]  # the progress bar is fed by the denoising loop itself
    pipe = tiny_pipeline()
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    expected = sample_images(pipe, 3, 10, seed=5, progress=False)  # what `hf-ddpm sample --seed 5` gives
    assert [np.asarray(a).tolist() for a in result.images] == [np.asarray(b).tolist() for b in expected]
    assert result.summary().startswith("3 images, ddim (DDIMScheduler), 10 steps, seeds 5..7")


def test_the_progressive_strip_holds_x0_along_the_chain_then_the_sample(model):
    result = model.sample("ddpm", None, 5, seed=0)
    assert result.steps == T and len(result.strip) == 4  # all T steps (T <= QUICK_STEPS), the first 4 images
    assert result.strip_timesteps[0] == T - 1 and result.strip_timesteps[-1] == 0
    assert all(len(row) == len(result.strip_timesteps) + 1 for row in result.strip)
    assert [row[-1] for row in result.strip] == result.images[:4]
    noisy, clean = (np.asarray(result.strip[0][i], dtype=float) for i in (0, -2))
    assert noisy.std() > 0 and clean.std() > 0 and not np.array_equal(noisy, clean)
    shown = model.show_strip(result.strip)
    assert shown.size == (9 * STRIP_SIDE + 8 * model.strip_scale, 4 * STRIP_SIDE + 3 * model.strip_scale)  # gaps
    unipc = model.sample("unipc", 5, 2)  # its steps return no x0: images, no strip, and a caption that says so
    assert unipc.strip is None and len(unipc.images) == 2 and "no progressive strip" in unipc.strip_caption()


def test_interpolation_reports_its_steps_and_keeps_its_end_points(model):
    first, second = model.sample("ddpm", None, 2, seed=1).images
    reports = []
    images = model.interpolate(enlarge(first, model.scale), enlarge(second, model.scale), t=8, num_points=5, seed=0,
                               report=lambda done, total: reports.append((done, total)))
    assert len(images) == 7 and reports[-1] == (9, 9) and len(reports) == 9  # t + 1 steps from t = 8
    assert np.array_equal(np.asarray(images[0]), np.asarray(first))  # an enlarged sample comes back exactly
    assert model.interpolate(first, second, t=8, num_points=3, steps=3)[1].size == (28, 28)
    with pytest.raises(UsageError, match="interpolation needs two images"):
        model.interpolate(first, None, t=8)
    with pytest.raises(UsageError, match=f"t = {T} is outside 0..{T - 1}"):
        model.interpolate(first, second, t=T)


def test_bad_settings_are_one_line_errors(model):
    with pytest.raises(UsageError, match="steps 21 is more than the model's T = 20"):
        model.sample("ddpm", T + 1, 1)
    with pytest.raises(UsageError, match="T - 1 = 19 for unipc"):
        model.sample("unipc", T, 1)
    with pytest.raises(UsageError, match="17 images is outside 1..16"):
        model.sample("ddpm", 2, 17)


def test_evaluation_numbers_come_from_eval_results_json(tiny_pipeline_dir, tmp_path):
    import json

    folder = Path(shutil.copytree(tiny_pipeline_dir, tmp_path / "run" / "pipeline"))
    assert "No evaluation numbers" in DemoModel(folder).evaluation_markdown()
    (folder / "eval_results.json").write_text(json.dumps({
        "dataset": {"name": "fashion_mnist", "split": "test", "num_images": 500},
        "metrics": {"fid": 87.6, "kid": 0.024, "kid_std": 0.002, "bpd": 3.6},
        "settings": {"num_samples": 200, "num_inference_steps": 1000, "bpd_num_images": 16}}))
    demo = DemoModel(folder)
    table = demo.evaluation_markdown()
    assert demo.title == "run"  # named after the run, as the card is
    assert "| FID | 87.6 |" in table and "| KID | 0.024 +- 0.002 |" in table
    assert "| NLL (bits/dim, upper bound) | 3.6 |" in table
    assert "Fashion-MNIST" in table and "200 samples is biased" in table.replace("FID from ", "")


# ------------------------------------------------------------------------------------------- the command
def test_demo_without_gradio_is_one_line_with_the_install_hint(tiny_pipeline_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert hf_ddpm.cli.main(["demo", tiny_pipeline_dir]) == 2
    err = capsys.readouterr().err
    assert err == ('hf-ddpm demo: error: the demo page needs gradio, which is not installed: '
                   'pip install "hf-ddpm[demo]"\n')


@needs_gradio
def test_demo_refuses_a_busy_port_a_bad_host_and_a_missing_pipeline(tiny_pipeline_dir, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert hf_ddpm.cli.main(["demo", tiny_pipeline_dir, "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(f"hf-ddpm demo: error: port {port} on 127.0.0.1 is in use (--port)")
    assert hf_ddpm.cli.main(["demo", tiny_pipeline_dir, "--host", "not a host"]) == 2
    assert "is not an IP address or host name (--host)" in capsys.readouterr().err
    assert hf_ddpm.cli.main(["demo", str(tmp_path / "nothing")]) == 2
    assert "pipeline folder" in capsys.readouterr().err
    assert hf_ddpm.cli.main(["demo", tiny_pipeline_dir, "--port", "70000"]) == 2
    assert "(--port)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- push --with-demo
def test_space_files_load_the_repo_by_id():
    files = space_files("user/my-ddpm")
    assert set(files) == {"app.py", "requirements.txt"}
    app = files["app.py"].decode()
    compile(app, "app.py", "exec")
    assert 'MODEL = "user/my-ddpm"' in app and "build_demo(MODEL)" in app and "demo.launch()" in app
    assert "hf-ddpm[demo]>=" in files["requirements.txt"].decode()


def test_push_with_demo_uploads_app_and_requirements_that_serve_the_repo(tiny_pipeline_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    from support.hub_server import LocalHub

    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)  # LocalHub speaks the Git-LFS upload path
    folder = shutil.copytree(tiny_pipeline_dir, tmp_path / "pipeline")
    with LocalHub() as hub:
        base = ["push", str(folder), "--token", TOKEN, "--endpoint", hub.endpoint]
        assert hf_ddpm.cli.main(base + ["--repo-id", "test-user/plain"]) == 0
        assert not {"app.py", "requirements.txt"} & set(hub.files("test-user/plain"))
        assert hf_ddpm.cli.main(base + ["--repo-id", "test-user/tiny-demo", "--with-demo"]) == 0
        files = hub.files("test-user/tiny-demo")
        assert {"app.py", "requirements.txt", "model_index.json", "unet/diffusion_pytorch_model.safetensors",
                "README.md"} <= set(files)
        assert files["app.py"] == space_files("test-user/tiny-demo")["app.py"]
        assert len(hub.commits("test-user/tiny-demo")) == 2  # the repo's first commit, then one with everything
        assert not (Path(folder) / "app.py").exists()  # nothing written into the pipeline folder
        if __import__("importlib").util.find_spec("gradio") is None:
            return  # the rest needs the demo extra
        # the pushed app.py, run as a Space runs it (without launching): loads the repo by id and builds the page
        (tmp_path / "space").mkdir()
        (tmp_path / "space" / "app.py").write_bytes(files["app.py"])
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf"),
               "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
        check = ("import runpy; space = runpy.run_path('app.py'); import gradio; "
                 "assert isinstance(space['demo'], gradio.Blocks); print('page of', space['MODEL'])")
        result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path / "space", env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "page of test-user/tiny-demo" in result.stdout


# ------------------------------------------------------------------------------------------- in a browser
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_demo(pipeline: str | os.PathLike, port: int, tmp: Path, stop_after: float = 300) -> subprocess.Popen:
    """`hf-ddpm demo` on 127.0.0.1:port, offline, stopping by itself after `stop_after` seconds."""
    env = {**os.environ, **offline_env(tmp / "hf-home"), "GRADIO_TEMP_DIR": str(tmp / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hf_ddpm.cli", "demo", str(pipeline), "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu", "--stop-after", str(stop_after)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_served(process: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"hf-ddpm demo exited with {process.returncode}: {process.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"hf-ddpm demo did not serve {url} within {timeout} s")


def headless_chromium(width: int = 1280, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     f"--window-size={width},{height}", "--disable-background-networking", "--disable-sync",
                     "--disable-component-update", "--disable-default-apps", "--disable-extensions",
                     # loopback only: every other request goes to a proxy that does not exist, names do not resolve
                     "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost",
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def shown_image(driver, elem_id: str, timeout: float = 60) -> Image.Image:
    """The image that component `elem_id` shows, once it shows one, fetched from its (loopback) URL."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = (f"const img = document.querySelector('#{elem_id} img');"
              "return img && img.complete && img.naturalWidth > 0 ? img.src : null;")
    src = WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script))
    assert src.startswith(("http://127.0.0.1:", "data:")), src
    if src.startswith("data:"):
        import base64

        return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    with urllib.request.urlopen(src, timeout=10) as response:
        return Image.open(io.BytesIO(response.read()))


def click(driver, elem_id: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(expected_conditions.element_to_be_clickable((By.ID, elem_id))).click()


def text_of(driver, elem_id: str, contains: str, timeout: float = 60) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    script = f"const e = document.getElementById('{elem_id}'); return e ? e.innerText : '';"
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: (lambda text: text if contains in text else None)(d.execute_script(script)))


def save_full_page(driver, path: Path) -> None:
    """A PNG of the whole page, below the window's bottom too (Chrome DevTools' captureScreenshot)."""
    import base64

    width, height = driver.execute_script(
        "const e = document.documentElement;"
        "return [e.scrollWidth, Math.max(e.scrollHeight, document.body.scrollHeight)];")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))


# Records the step counts the page's progress bar shows ("7/20 steps"), however briefly each is shown.
WATCH_PROGRESS = """
window.progressSeen = [];
new MutationObserver(() => {
  for (const e of document.querySelectorAll('.progress-text')) {
    const m = e.innerText.match(/(\\d+)\\/(\\d+) steps/);
    if (m && !window.progressSeen.includes(m[0])) window.progressSeen.push(m[0]);
  }
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def browse(url: str, screenshot: Path, num_images: int = 9) -> dict:
    """Load the page, Sample (watching the progress bar), check the samples and strip, interpolate the first two,
    screenshot the Sample tab."""
    from selenium.webdriver.common.by import By

    driver = headless_chromium()
    try:
        driver.set_page_load_timeout(60)
        driver.get(url)
        text_of(driver, "title", "denoising diffusion")
        driver.execute_script(WATCH_PROGRESS)
        click(driver, "sample-button")
        samples = shown_image(driver, "samples")
        columns = int(np.ceil(np.sqrt(num_images)))
        assert samples.size == (columns * SIDE, int(np.ceil(num_images / columns)) * SIDE)
        pixels = np.asarray(samples.convert("L"), dtype=float)
        assert pixels.std() > 0, "the sample grid is blank"
        strip = shown_image(driver, "progressive")
        assert np.asarray(strip.convert("L"), dtype=float).std() > 0
        summary = text_of(driver, "sample-summary", f"{num_images} images, ddpm")
        progress = driver.execute_script("return window.progressSeen")
        save_full_page(driver, screenshot)

        driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Interpolate')]").click()
        click(driver, "use-samples")
        shown_image(driver, "image-a")
        shown_image(driver, "image-b")
        click(driver, "interpolate-button")
        mixes = shown_image(driver, "interpolation", timeout=120)
        assert mixes.size == (9 * STRIP_SIDE + 8 * STRIP_SIDE // 28, STRIP_SIDE)  # image A, 7 mixes, image B
        assert np.asarray(mixes.convert("L"), dtype=float).std() > 0
        driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Evaluation')]").click()
        evaluation = text_of(driver, "evaluation", "valuat")
        return {"samples": samples, "summary": summary, "evaluation": evaluation, "progress": progress}
    finally:
        driver.quit()


def test_the_page_in_a_headless_browser(tiny_pipeline_dir, tmp_path):
    missing = _missing_for_browser()
    if missing:
        pytest.skip(missing)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = start_demo(tiny_pipeline_dir, port, tmp_path, stop_after=120)
    try:
        wait_until_served(process, url)
        seen = browse(url, tmp_path / "demo.png")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "9 images, ddpm (DDPMScheduler), 20 steps, seeds 0..8" in seen["summary"]
    done = sorted(int(text.split("/")[0]) for text in seen["progress"])  # the live progress bar, step by step
    assert all(text.endswith("/20 steps") for text in seen["progress"]) and len(done) >= 3 and done[0] < 20, done
    assert "No evaluation numbers" in seen["evaluation"]
    screenshot = Image.open(tmp_path / "demo.png")
    assert screenshot.width >= 1000 and np.asarray(screenshot.convert("L"), dtype=float).std() > 0


def main(argv: list[str]) -> int:
    """`python tests/test_demo.py PIPELINE OUT.png [NUM_IMAGES]`: the browser session on any pipeline, keeping the
    screenshot of the Sample tab."""
    import tempfile

    pipeline, out = argv[0], Path(argv[1])
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        process = start_demo(pipeline, port, Path(tmp), stop_after=600)
        try:
            wait_until_served(process, f"http://127.0.0.1:{port}/")
            seen = browse(f"http://127.0.0.1:{port}/", out)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(seen["summary"], f"screenshot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
