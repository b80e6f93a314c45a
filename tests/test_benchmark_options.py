"""The command lines of benchmarks/bench_likelihood.py, bench_sampling.py and bench_training.py: every option has
help and a validator decision, the invocations in their docstrings and benchmarks/README.md still parse to the
settings they always meant, and bad input is one line with exit status 2 before any benchmarking starts."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT, assert_declared_options, offline_env
from hf_ddpm.options import declared, walk_parsers

sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import their neighbours (timing, diffusers_example_loop)

SCRIPTS = ("bench_likelihood", "bench_sampling", "bench_training")


def script(name: str):
    return importlib.import_module(name)


def run_main(name: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str, str, list]:
    """`python benchmarks/NAME.py ARGV` in this process with the benchmark itself replaced by a recorder:
    (exit status, stdout, stderr, the configs the benchmark would have run with)."""
    module = script(name)
    started = []
    monkeypatch.setattr(module, "run", started.append)
    capsys.readouterr()
    try:
        code = module.main(argv)
    except SystemExit as exit_:  # the parser's own errors, and --help
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err, started


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_option_has_help_and_a_validator_decision(name):
    parsers = list(walk_parsers(script(name).build_parser()))
    assert parsers
    for prog, parser in parsers:
        assert parser.dataclass_types, f"{prog}: its options are not declared as a dataclass"
        assert_declared_options(prog, parser)


LIKELIHOOD_DEFAULTS = dict(preset="small28", num_images=4, timesteps=100, model_batch_size=100, feature_batch_size=25,
                           repeats=3, threads=None, device=None, skip_inception=False, json=None)
SAMPLING_DEFAULTS = dict(preset="small28", steps=50, batch_size=[8], repeats=5, device=None, dtype="float32",
                         compile=None, json=None)
TRAINING_DEFAULTS = dict(preset="small28", batch_size=32, steps=30, warmup=5, mixed_precision="no",
                         channels_last=False, compile=None, gradient_checkpointing=False, json=None)
INVOCATIONS = [  # (script, argv, the settings that differ from the defaults)
    ("bench_likelihood", [], {}),
    ("bench_likelihood", ["--threads", "1"], {"threads": 1}),
    ("bench_likelihood", ["--preset", "cifar10", "--timesteps", "1000", "--num-images", "16", "--device", "cpu"],
     {"preset": "cifar10", "timesteps": 1000, "num_images": 16, "device": "cpu"}),
    ("bench_likelihood", ["--model-batch-size", "50", "--feature-batch-size", "10", "--repeats", "1",
                          "--skip-inception", "--json", "likelihood.json"],
     {"model_batch_size": 50, "feature_batch_size": 10, "repeats": 1, "skip_inception": True,
      "json": "likelihood.json"}),
    ("bench_sampling", [], {}),
    ("bench_sampling", ["--preset", "cifar10", "--steps", "100", "--batch-size", "1", "16", "256", "--compile",
                        "reduce-overhead"],
     {"preset": "cifar10", "steps": 100, "batch_size": [1, 16, 256], "compile": "reduce-overhead"}),
    ("bench_sampling", ["--repeats", "3", "--dtype", "bfloat16", "--steps", "1000", "--json", "sampling.json"],
     {"repeats": 3, "dtype": "bfloat16", "steps": 1000, "json": "sampling.json"}),
    ("bench_training", [], {}),
    ("bench_training", ["--preset", "cifar10", "--batch-size", "128", "--mixed-precision", "bf16", "--channels-last",
                        "--compile", "default"],
     {"preset": "cifar10", "batch_size": 128, "mixed_precision": "bf16", "channels_last": True, "compile": "default"}),
    ("bench_training", ["--steps", "20", "--warmup", "4", "--gradient-checkpointing", "--json", "training.json"],
     {"steps": 20, "warmup": 4, "gradient_checkpointing": True, "json": "training.json"}),
]
DEFAULTS = {"bench_likelihood": LIKELIHOOD_DEFAULTS, "bench_sampling": SAMPLING_DEFAULTS,
            "bench_training": TRAINING_DEFAULTS}


@pytest.mark.parametrize("name, argv, changed", INVOCATIONS, ids=[" ".join([n, *a]) for n, a, _ in INVOCATIONS])
def test_the_documented_invocations_run_with_the_settings_they_meant(name, argv, changed, monkeypatch, capsys,
                                                                     tmp_path):
    monkeypatch.chdir(tmp_path)  # --json's relative paths: a folder that exists
    code, out, err, started = run_main(name, argv, monkeypatch, capsys)
    assert (code, err) == (0, "")
    assert len(started) == 1
    expected = {**DEFAULTS[name], **changed}
    assert {key: getattr(started[0], key) for key in expected} == expected
    assert {field.name for field in declared(started[0])} == set(expected)  # no option untested, none dropped


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_the_docstring_as_written_and_every_option(name, monkeypatch, capsys):
    code, out, err, started = run_main(name, ["--help"], monkeypatch, capsys)
    assert code == 0 and not started
    usage_lines = [line for line in script(name).__doc__.splitlines() if line.lstrip().startswith("python ")]
    assert usage_lines and all(line in out for line in usage_lines)  # the examples keep their lines
    for field in declared(script(name).build_parser().dataclass_types[0]):
        assert f"--{field.name}" in out


def outside_the_declarations() -> list[tuple[str, list[str], str]]:
    """For each option with a range, a value just past each finite end; for each with choices, one not among them."""
    cases = []
    for name in SCRIPTS:
        for field in declared(script(name).build_parser().dataclass_types[0]):
            meta, dashed = field.metadata, "--" + field.name.replace("_", "-")
            bounds = meta.get("range")
            if bounds is not None and bounds.low != -math.inf:
                cases.append((name, [dashed, f"{bounds.low - 1 if bounds.low_closed else bounds.low:g}"], dashed))
            if bounds is not None and bounds.high != math.inf:
                cases.append((name, [dashed, f"{bounds.high + 1 if bounds.high_closed else bounds.high:g}"], dashed))
            if meta.get("choices"):
                cases.append((name, [dashed, "nonsense"], dashed))
    return cases


BAD_INPUTS = outside_the_declarations() + [  # (script, argv, the flag the one error line must name)
    ("bench_likelihood", ["--device", "nonsense"], "--device"),
    ("bench_likelihood", ["--json", "{tmp}/missing/likelihood.json"], "--json"),
    ("bench_sampling", ["--batch-size", "8", "-1"], "--batch-size"),
    ("bench_sampling", ["--steps", "many"], "--steps"),
    ("bench_sampling", ["--device", "cuda:99"], "--device"),
    ("bench_training", ["--json", "{tmp}"], "--json"),
    ("bench_training", ["--warmup", "1.5"], "--warmup"),
]


def test_the_declarations_give_cases_for_every_script():
    checked = {(name, argv[0]) for name, argv, _ in outside_the_declarations()}
    for name, flag in [("bench_likelihood", "--repeats"), ("bench_likelihood", "--threads"),
                       ("bench_likelihood", "--preset"), ("bench_sampling", "--steps"), ("bench_sampling", "--dtype"),
                       ("bench_sampling", "--compile"), ("bench_training", "--batch-size"),
                       ("bench_training", "--warmup"), ("bench_training", "--mixed-precision")]:
        assert (name, flag) in checked


@pytest.mark.parametrize("name, argv, flag", BAD_INPUTS, ids=[" ".join([n, *a]) for n, a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_flag_before_any_benchmark(name, argv, flag, monkeypatch, capsys, tmp_path):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    code, out, err, started = run_main(name, argv, monkeypatch, capsys)
    assert code == 2 and not started and out == ""
    assert err.startswith(f"{name}.py: error: ") and err.count("\n") == 1, err
    assert flag.replace("-", "_") in err.replace("-", "_"), err  # --batch-size or --batch_size: both are accepted
    assert "Traceback" not in err


@pytest.mark.parametrize("name, argv, flag", [("bench_likelihood", ["--repeats", "0"], "--repeats"),
                                              ("bench_sampling", ["--steps", "0"], "--steps"),
                                              ("bench_training", ["--batch-size", "-1"], "--batch_size")])
def test_the_script_as_users_run_it_refuses_bad_input_with_exit_status_2(name, argv, flag, tmp_path):
    finished = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *argv], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path,
                              env={**os.environ, **offline_env(tmp_path / "hf-home")})
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert finished.stderr.startswith(f"{name}.py: error: ") and finished.stderr.count("\n") == 1, finished.stderr
    assert flag in finished.stderr and finished.stdout == ""
