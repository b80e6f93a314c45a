"""training/train.py end to end, in subprocesses (Accelerate's state is per process), on a tiny UNet."""

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from support.train_server import ROOT, TRAIN, assert_same_weights, final_weights, logged, run_train, train_args

from hf_ddpm import LossSecondMomentSampler
from hf_ddpm.options import UsageError, declared
from training.checkpoints import MARKER, SAMPLER_FILE, Checkpointer
from training.config import CONFIG_DIR, RENAMED, TrainConfig, build_parser, load_preset, parse_config


@pytest.fixture(scope="module")
def reference_run(tiny_config, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("reference")
    run_train(train_args(tiny_config, output_dir, eval_steps=6, eval_num_images=2))  # evaluation changes no weight
    return output_dir


def test_run_writes_stock_loadable_ema_pipeline_checkpoints_and_logs(reference_run):
    pipeline = reference_run / "pipeline"
    index = json.loads((pipeline / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert (pipeline / "samples.png").stat().st_size > 0
    card = (pipeline / "README.md").read_text()
    assert "library_name: diffusers" in card and "samples.png" in card
    facts = json.loads((pipeline / "training_config.json").read_text())
    assert facts["train_batch_size"] == 4 and facts["max_train_steps"] == 12 and facts["dataset"] == "fashion_mnist"
    assert str(reference_run) not in json.dumps(facts)  # no local paths in what gets published
    assert sorted(p.name for p in (reference_run / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    ema = load_file(reference_run / "checkpoints" / "checkpoint-12" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    raw = load_file(reference_run / "checkpoints" / "checkpoint-12" / "model.safetensors")
    assert_same_weights(final_weights(reference_run), ema)  # the pipeline holds the EMA weights...
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # ...which are not the raw ones
    losses = logged(reference_run)
    assert sorted(losses) == [2, 4, 6, 8, 10, 12] and all(v > 0 for v in losses.values())
    # the LR warms up over 4 optimizer steps, then stays: counted in optimizer steps
    assert logged(reference_run, "train/lr") == pytest.approx({2: 5e-4, 4: 1e-3, 6: 1e-3, 8: 1e-3, 10: 1e-3, 12: 1e-3})
    assert set(logged(reference_run, "train/grad_norm")) == set(losses)
    bpd = logged(reference_run, "eval/bpd")  # the periodic bits/dim of held-out images
    assert sorted(bpd) == [6, 12] and all(0 < v < 100 for v in bpd.values())


def test_same_run_twice_is_bitwise_reproducible(reference_run, tiny_config, tmp_path):
    run_train(train_args(tiny_config, tmp_path))
    assert_same_weights(final_weights(tmp_path), final_weights(reference_run))
    assert logged(tmp_path) == logged(reference_run)


def wait_for(path, process, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(reference_run, tiny_config, tmp_path, how):
    args = train_args(tiny_config, tmp_path, save_images_steps=4)  # sample grids slow it down: a window to kill in
    process = subprocess.Popen([sys.executable, str(TRAIN), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "checkpoints" / "checkpoint-4", process)
    process.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    returncode = process.wait(timeout=300)
    assert not (tmp_path / "pipeline").exists()  # it really was interrupted
    if how == "sigterm":
        assert returncode == 75  # stopped with a checkpoint, resumable (README: Clusters)
        saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
        assert saved[-1] > 4 or saved == [4]  # it wrote a checkpoint at the step it stopped
    else:
        assert returncode == -signal.SIGKILL
    # without --resume_from_checkpoint the earlier run is protected
    refused = run_train(args, check=False)
    assert refused.returncode != 0 and "--resume_from_checkpoint latest" in refused.stderr
    run_train(args + ["--resume_from_checkpoint", "latest"])
    assert_same_weights(final_weights(tmp_path), final_weights(reference_run))
    reference_losses, resumed_losses = logged(reference_run), logged(tmp_path)
    assert all(resumed_losses[s] == pytest.approx(v, rel=1e-6) for s, v in reference_losses.items() if s in resumed_losses)
    assert set(resumed_losses) == set(reference_losses)


def test_gradient_accumulation_matches_the_same_global_batch(tiny_config, tmp_path):
    # without dropout: its masks depend on the micro-batch shapes (everything else is drawn per global batch)
    run_train(train_args(tiny_config, tmp_path / "one", dropout=0.0))
    run_train(train_args(tiny_config, tmp_path / "accumulated", dropout=0.0, train_batch_size=2, gradient_accumulation_steps=2))
    assert_same_weights(final_weights(tmp_path / "accumulated"), final_weights(tmp_path / "one"), atol=1e-5)
    assert logged(tmp_path / "accumulated") == pytest.approx(logged(tmp_path / "one"), rel=1e-5)
    assert logged(tmp_path / "accumulated", "train/lr") == logged(tmp_path / "one", "train/lr")  # optimizer steps


def test_two_cpu_processes_match_one_with_the_same_global_batch(tiny_config, tmp_path):
    common = {"max_train_steps": 6, "dropout": 0.0, "checkpointing_steps": 6}
    run_train(train_args(tiny_config, tmp_path / "one", train_batch_size=4, **common))
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517")
    two = run_train(train_args(tiny_config, tmp_path / "two", train_batch_size=2, **common), launcher=torchrun,
                    env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    assert "2 processes" in two.stderr
    assert_same_weights(final_weights(tmp_path / "two"), final_weights(tmp_path / "one"), atol=1e-5)
    assert logged(tmp_path / "two") == pytest.approx(logged(tmp_path / "one"), rel=1e-5)


def test_bf16_mixed_precision_runs_the_model_in_bf16(tiny_config, tmp_path):
    """Run the real script with a global forward hook that records the dtypes the convolutions produce."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import runpy, sys, torch\n"
        "seen = set()\n"
        "def hook(module, inputs, output):\n"
        "    if isinstance(module, torch.nn.Conv2d) and module.training: seen.add(str(output.dtype))\n"
        "torch.nn.modules.module.register_module_forward_hook(hook)\n"
        f"sys.argv = [{str(TRAIN)!r}] + sys.argv[1:]\n"
        "try:\n"
        f"    runpy.run_path({str(TRAIN)!r}, run_name='__main__')\n"
        "finally:\n"
        f"    open({str(tmp_path / 'dtypes.txt')!r}, 'w').write(','.join(sorted(seen)))\n"
    )
    result = subprocess.run([sys.executable, str(probe), *train_args(tiny_config, tmp_path / "out", mixed_precision="bf16", max_train_steps=4)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "dtypes.txt").read_text() == "torch.bfloat16"
    weights = final_weights(tmp_path / "out")
    assert all(w.dtype == torch.float32 for w in weights.values())  # master and EMA weights stay fp32


def test_checkpoint_limit_and_partial_checkpoints(tiny_config, tmp_path):
    (tmp_path / "checkpoints" / ".partial-checkpoint-99").mkdir(parents=True)  # debris of a killed write
    run_train(train_args(tiny_config, tmp_path, checkpoints_total_limit=2, resume_from_checkpoint="latest"))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["checkpoint-12", "checkpoint-8"]


def test_fast_cpu_is_the_demo_changed_where_its_header_says():
    """fast_cpu.yaml is marked as a copy of fashion_mnist_cpu.yaml except the options its header names: exactly
    those differ (so the sweep's base and the main job's preset cannot drift apart unnoticed)."""
    fast, demo = load_preset("fast_cpu"), load_preset("fashion_mnist_cpu")
    header = " ".join(line for line in (CONFIG_DIR / "fast_cpu.yaml").read_text().splitlines() if line.startswith("#"))
    named = set(re.findall(r"\w+", header.split("except", 1)[1].split(":", 1)[0])) - {"and"}
    assert {key for key in fast.keys() | demo.keys() if fast.get(key) != demo.get(key)} == named
    assert (fast["train_batch_size"], fast["learning_rate"]) == (32, 2e-3)
    assert (fast["lr_scheduler"], fast["dropout"]) == ("cosine", 0)


def test_config_presets_and_errors(tiny_config, tmp_path):
    paper = parse_config(["--config", "cifar10_paper"])
    assert (paper.learning_rate, paper.lr_warmup_steps, paper.train_batch_size, paper.max_grad_norm) == (2e-4, 5000, 128, 1.0)
    assert (paper.ema_max_decay, paper.model_preset, paper.random_flip, paper.max_train_steps) == (0.9999, "cifar10", True, 800000)
    assert parse_config(["--config", "cifar10_paper", "--learning_rate", "1e-4"]).learning_rate == 1e-4
    assert parse_config(["--config", "fashion_mnist_cpu", "--no_use_ema"]).use_ema is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rte: 1e-4\n")
    with pytest.raises(UsageError, match=r"sets unknown options \['learning_rte'\] \(--config\): .*learning_rte -> learning_rate"):
        parse_config(["--config", str(bad)])
    with pytest.raises(UsageError, match=r"'cifar100_paper' is neither a file nor a preset \(--config\)"):
        parse_config(["--config", "cifar100_paper"])
    bad.write_text("checkpoints_total_limit: 0\n")  # preset values are checked like flags
    with pytest.raises(UsageError, match=r"bad.yaml: 0 is not >= 1 \(--checkpoints_total_limit\)"):
        parse_config(["--config", str(bad)])
    result = run_train(train_args(tiny_config, tmp_path, resume_from_checkpoint=tmp_path / "nope"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"train.py: error: {tmp_path / 'nope'} is not a complete checkpoint")


# ------------------------------------------------------------------------------------------ the options
def test_every_option_has_help_and_a_validator_decision():
    """Walk train.py's parser: every flag has help; every option declares choices, a range, a check or why not."""
    parser = build_parser()
    fields = {field.name: field for field in declared(TrainConfig)}
    seen = set()
    for action in parser._actions:
        if not action.option_strings:
            continue
        if action.help == argparse.SUPPRESS:  # a hidden spelling of a declared option (--no_X beside --no-X)
            assert action.dest in fields, action.option_strings
            continue
        assert action.help and len(action.help) > 10, f"{action.option_strings[0]} has no help"
        if action.dest in ("help", "debug", "config"):  # the parser's own flags, not options of a run
            continue
        assert action.dest in fields, f"{action.option_strings[0]} is not declared in TrainConfig"
        seen.add(action.dest)
        meta = fields[action.dest].metadata
        decisions = [key for key in ("choices", "range", "check", "free") if meta.get(key)]
        assert decisions, f"--{action.dest} declares no choices, range, check or free reason"
        assert meta.get("group") in ("data", "model", "diffusion", "optimization", "performance", "outputs", "hub"), \
            action.dest
    assert seen == set(fields)  # and every declared option is a flag


def test_help_is_grouped_and_shows_defaults_choices_and_ranges():
    text = build_parser(description="train a DDPM").format_help()
    headings = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings[-7:] == ["data", "model", "diffusion", "optimization", "performance", "outputs", "hub"]
    sections = dict(zip(headings, text.rstrip().split("\n\n")[-len(headings):]))
    assert "--train_data_dir" in sections["data"] and "--learning_rate" in sections["optimization"]
    assert "--checkpoints_total_limit" in sections["outputs"] and "--hub_model_id" in sections["hub"]
    assert "AdamW learning rate after warm-up; range (0, inf) (default: 0.0002)" in " ".join(text.split())
    assert "{simple,kl,hybrid}" in text and "--config PRESET" in text


@pytest.mark.parametrize("argv, message", [
    (["--checkpoints_total_limit", "0"], r"0 is not >= 1 \(--checkpoints_total_limit\)"),
    (["--checkpoints_total_limit", "-1"], r"-1 is not >= 1 \(--checkpoints_total_limit\)"),
    (["--model_preset", "small32", "--model_config_name_or_path", "x.json"], "cannot be used together"),
    (["--loss_type", "hybrid"], r"--loss_type hybrid adds L_vlb .* \(--loss_type\): add --learned_variance"),
    (["--learned_variance"], r"L_simple does not train a learned variance"),
    (["--loss_type", "kl", "--loss_weighting", "p2"], r"which --loss_type kl does not have \(--loss_weighting\)"),
    (["--p2_gamma", "2"], r"--p2_gamma applies to --loss_weighting p2 only"),
    (["--loss_weighting", "min_snr", "--snr_gamma", "-1"], r"-1.0 is not > 0 \(--snr_gamma\)"),
    (["--ddpm_num_steps", "100", "--ddpm_num_inference_steps", "101"], r"\(--ddpm_num_inference_steps\): pass at most 100"),
    (["--seed", "-3"], r"\(--seed\)"),
])
def test_contradicting_or_out_of_range_options_are_refused(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_config(argv)


def test_pushing_needs_a_token_and_a_valid_repo_id(monkeypatch, tmp_path):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(UsageError, match=r"no Hugging Face token to push with \(--push_to_hub\)"):
        parse_config(["--push_to_hub", "--hub_model_id", "user/name"])
    with pytest.raises(UsageError, match=r"invalid repo id 'a/b/c'.*\(--hub_model_id\): use USER/NAME"):
        parse_config(["--push_to_hub", "--hub_model_id", "a/b/c", "--hub_token", "hf_x"])
    with pytest.raises(UsageError, match=r"the default repo id 'not a name!' .*\(--hub_model_id\)"):
        parse_config(["--push_to_hub", "--hub_token", "hf_x", "--output_dir", str(tmp_path / "not a name!")])
    assert parse_config(["--push_to_hub", "--hub_model_id", "user/name", "--hub_token", "hf_x"]).push_to_hub


def test_diffusers_example_flags_say_what_to_use(capsys):
    assert set(RENAMED) >= {"--num_epochs", "--save_images_epochs", "--save_model_epochs"}
    with pytest.raises(SystemExit) as exit_:
        parse_config(["--num_epochs", "100"])
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line == ("train.py: error: unknown option --num_epochs: use --max_train_steps (hf-ddpm counts optimizer "
                    "steps, not epochs): see `train.py --help`")


def test_checkpoint_limit_below_one_is_refused_before_anything_is_written(reference_run, tiny_config, tmp_path):
    run = shutil.copytree(reference_run, tmp_path / "run")
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    for limit in ("0", "-1"):
        result = run_train(train_args(tiny_config, run, checkpoints_total_limit=limit, max_train_steps=16,
                                      resume_from_checkpoint="latest"), check=False)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == (
            f"train.py: error: {limit} is not >= 1 (--checkpoints_total_limit): pass a value in [1, inf)")
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before
    with pytest.raises(UsageError, match="would delete every checkpoint"):  # the pruning code refuses it too
        Checkpointer(None, run / "checkpoints", total_limit=0)


def test_resuming_a_checkpoint_of_another_network_names_the_option(reference_run, tiny_config, tmp_path):
    run = shutil.copytree(reference_run, tmp_path / "run")
    shutil.rmtree(run / "pipeline")
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**json.loads(tiny_config.read_text()), "block_out_channels": [24, 32, 32]}))
    result = run_train(train_args(wider, run, max_train_steps=16, resume_from_checkpoint="latest"), check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert f"checkpoint-12 holds another network than this run builds: its run had --model_config_name_or_path " \
           f"'{tiny_config}' (this run: '{wider}')" in line
    assert "resume with the checkpoint's model options, or choose another --output_dir" in line and "move" not in line


def test_checkpointer_prunes_only_complete_checkpoints_and_sets_an_earlier_run_aside(tmp_path):
    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    folder, pipeline = tmp_path / "checkpoints", tmp_path / "pipeline"
    for step in (2, 4, 10):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / MARKER).write_text("{}")
    (folder / "checkpoint-12").mkdir()  # no marker: not a checkpoint, never picked nor deleted
    (folder / ".partial-checkpoint-14").mkdir()  # debris of a killed write
    checkpointer = Checkpointer(accelerator, folder, total_limit=2)
    checkpointer.prune()
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-10", "checkpoint-12", "checkpoint-4"]
    assert checkpointer.resume_point("latest", pipeline, overwrite=False) == folder / "checkpoint-10"
    with pytest.raises(UsageError, match=r"already holds a run's checkpoints or pipeline \(--output_dir\)"):
        checkpointer.resume_point(None, pipeline, overwrite=False)
    checkpointer.set_aside_earlier_run()  # --overwrite_output_dir: the earlier run's checkpoints are kept, renamed
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoints-replaced-")]
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-10", "checkpoint-12", "checkpoint-4"]
    assert checkpointer.resume_point(None, pipeline, overwrite=False) is None


# --------------------------------------------------------------------- importance sampling of t (issue 10)
def importance_args(tiny_config, output_dir, **overrides) -> list[str]:
    """The tiny run with the bound as the loss and t importance-sampled; T = 4 and 2 terms kept per t, so the
    history fills within the first 4 steps and the later steps draw t from it."""
    options = dict(loss_type="kl", timestep_sampler="loss-second-moment", timestep_sampler_history=2,
                   ddpm_num_steps=4, checkpointing_steps=2)
    return train_args(tiny_config, output_dir, **{**options, **overrides})


def sampler_state(output_dir, step: int) -> dict:
    return load_file(output_dir / "checkpoints" / f"checkpoint-{step}" / SAMPLER_FILE)


def test_importance_sampled_run_resumes_to_the_uninterrupted_result(tiny_config, tmp_path):
    """2 steps, then resumed to 12, equal 12 steps in one go, bitwise; resumed without the sampler's saved history,
    the run differs (so the history is what makes them equal)."""
    one, two, fresh = tmp_path / "one", tmp_path / "two", tmp_path / "fresh"
    run_train(importance_args(tiny_config, one))
    run_train(importance_args(tiny_config, two, max_train_steps=2))
    partial = sampler_state(two, 2)  # 8 terms seen: a partial history (some t lack theirs), still uniform draws
    assert partial["loss_counts"].sum() > 0 and (partial["loss_counts"] < 2).any()
    assert torch.equal(partial["loss_history"], sampler_state(one, 2)["loss_history"])
    shutil.copytree(two, fresh)
    (fresh / "checkpoints" / "checkpoint-2" / SAMPLER_FILE).unlink()
    run_train(importance_args(tiny_config, two, resume_from_checkpoint="latest"))
    assert_same_weights(final_weights(two), final_weights(one))
    full, resumed = sampler_state(one, 12), sampler_state(two, 12)
    assert (full["loss_counts"] == 2).all()  # warmed up: steps after the first few drew t from the history
    assert all(torch.equal(full[key], resumed[key]) for key in full)
    sampler = LossSecondMomentSampler(4, history_per_term=2)
    sampler.load_state_dict(full)
    assert not torch.allclose(sampler.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    assert logged(two) == pytest.approx(logged(one), rel=1e-6)
    run_train(importance_args(tiny_config, fresh, resume_from_checkpoint="latest"))
    weights, reference = final_weights(fresh), final_weights(one)
    assert any(not torch.equal(weights[key], reference[key]) for key in reference)
    # a history of another length cannot continue this one: refused, naming the option
    refused = run_train(importance_args(tiny_config, one, timestep_sampler_history=3, max_train_steps=14,
                                        resume_from_checkpoint="latest"), check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "cannot restore the timestep sampler from" in refused.stderr and \
        "(--timestep_sampler_history): resume with the --ddpm_num_steps and --timestep_sampler_history of the run" \
        in refused.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["--timestep_sampler", "loss-second-moment"],
     r"--timestep_sampler loss-second-moment importance-samples the bound's terms, which --loss_type simple does not "
     r"have \(--timestep_sampler\): use --loss_type kl or hybrid"),
    (["--loss_type", "kl", "--timestep_sampler_history", "5"],
     r"applies to --timestep_sampler loss-second-moment only \(--timestep_sampler_history\)"),
    (["--loss_type", "kl", "--timestep_sampler", "loss-second-moment", "--timestep_sampler_history", "0"],
     r"0 is not >= 1 \(--timestep_sampler_history\)"),
])
def test_timestep_sampler_options_are_checked(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_config(argv)
    config = parse_config(["--loss_type", "hybrid", "--learned_variance", "--timestep_sampler", "loss-second-moment"])
    assert config.timestep_sampler == "loss-second-moment" and config.timestep_sampler_history == 10


def test_timestep_sampler_choices_are_listed(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(["--loss_type", "kl", "--timestep_sampler", "importance"])
    assert exit_.value.code == 2
    assert "invalid choice: 'importance' (choose from 'uniform', 'loss-second-moment')" in capsys.readouterr().err
