"""Running training/train.py from the tests: its argv, a subprocess run, what a run wrote, and a fork server.

The fork server (`python tests/support/train_server.py`) imports torch, diffusers, accelerate and train.py's own
modules once, then forks a fresh child per case that runs training/train.py as `__main__` with the case's argv,
its stderr going to a file: a bad-input case then costs a fraction of a second instead of seconds of imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "training" / "train.py"
HUB_TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # kept from train.py runs: no push may find a token


def train_args(tiny_config, output_dir, **overrides) -> list[str]:
    """A 12-step run of the tiny UNet (`tiny_config` fixture) on 40 Fashion-MNIST images, checkpoints every 4."""
    options = {
        "model_config_name_or_path": tiny_config, "output_dir": output_dir, "ddpm_num_steps": 50,
        "train_batch_size": 4, "max_train_steps": 12, "max_train_samples": 40, "learning_rate": 1e-3,
        "lr_warmup_steps": 4, "logging_steps": 2, "checkpointing_steps": 4, "save_images_steps": 1000,
        "eval_batch_size": 2, "ddpm_num_inference_steps": 3, "dropout": 0.1, "seed": 3,
    }
    options.update(overrides)
    args = []
    for key, value in options.items():
        if value is True:
            args.append(f"--{key}")
        elif value is not False:
            args += [f"--{key}", str(value)]
    return args


def run_train(args, launcher=(sys.executable,), env=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([*launcher, str(TRAIN), *map(str, args)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})}, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_with_probe(tmp_path, args, probe_body: str) -> subprocess.CompletedProcess:
    """Run train.py under a wrapper that installs a fault or a probe (`probe_body`) before the script starts."""
    probe = Path(tmp_path) / "probe.py"
    probe.write_text(
        "import os, runpy, signal, sys\n"
        + probe_body
        + f"\nsys.argv = [{str(TRAIN)!r}] + sys.argv[1:]\nrunpy.run_path({str(TRAIN)!r}, run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, str(probe), *map(str, args)], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


def final_weights(output_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(output_dir) / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")


def logged(output_dir, tag="train/loss") -> dict:
    """{step: value} of a TensorBoard scalar under OUTPUT_DIR/logs, over all event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted(Path(output_dir, "logs").rglob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values.update({e.step: e.value for e in accumulator.Scalars(tag)})
    return values


def assert_same_weights(a, b, atol=0.0) -> None:
    import torch

    assert a.keys() == b.keys()
    for key in a:
        if atol and key.endswith("to_k.bias"):
            # Softmax ignores a bias shared by all keys: its true gradient is 0, so what Adam sees (and
            # normalizes to a full-size step) is rounding noise that differs with the summation order.
            continue
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=key)


# ------------------------------------------------------------------------------------------- the fork server
class TrainServer:
    """Runs training/train.py argvs in children forked from one process that has done the imports already."""

    def __init__(self, root: Path, env: dict):
        self.root = Path(root)
        self.log = open(self.root / "server.stderr", "w")
        env = {k: v for k, v in {**os.environ, **env}.items() if k not in HUB_TOKEN_VARIABLES}
        self.process = subprocess.Popen([sys.executable, __file__], cwd=ROOT, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    def run(self, id: str, argv: list[str], timeout: int = 120) -> dict:
        """{"rc": exit status, "seconds", "stderr": all of it} of `python training/train.py ARGV`."""
        stderr_file = self.root / f"{id}.stderr"
        self.process.stdin.write(json.dumps({"id": id, "argv": argv, "stderr": str(stderr_file),
                                             "timeout": timeout}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died: {(self.root / 'server.stderr').read_text()[-3000:]}")
        result = json.loads(line)
        result["stderr"] = stderr_file.read_text(errors="replace")
        return result

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def serve_train_cases() -> None:
    """The fork server: one JSON case per stdin line, one JSON result per stdout line."""
    import runpy
    import signal
    import traceback

    sys.path.insert(0, str(TRAIN.parent))  # as the interpreter does for `python training/train.py`
    # every import train.py makes, done once here: training/'s own modules pull in the libraries. Not stopping.py:
    # it reads its PARENT_PID as it is imported, which must be in the child, as train.py starts.
    import checkpoints  # noqa: F401
    import config  # noqa: F401
    import datasets  # noqa: F401
    import inputs  # noqa: F401
    import outputs  # noqa: F401
    import performance  # noqa: F401
    from accelerate import Accelerator  # noqa: F401
    from diffusers.training_utils import EMAModel  # noqa: F401

    from hf_ddpm.hub import write_model_card  # noqa: F401

    for line in sys.stdin:
        case = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: `python training/train.py ARGV`, as the interpreter would run it
            code = 1
            try:
                signal.alarm(case["timeout"])
                os.dup2(os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                sys.argv = [str(TRAIN), *case["argv"]]
                try:
                    runpy.run_path(str(TRAIN), run_name="__main__")
                    code = 0
                except SystemExit as exit_:  # what the interpreter does with SystemExit
                    if exit_.code is None or isinstance(exit_.code, int):
                        code = exit_.code or 0
                    else:
                        print(exit_.code, file=sys.stderr)
                except BaseException:  # noqa: BLE001 - printed as the interpreter would
                    traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        result = {"id": case["id"], "rc": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - start}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    serve_train_cases()
