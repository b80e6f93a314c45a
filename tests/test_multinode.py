"""Two machines played by this one: two launchers joined over loopback (gloo) train as one process would.

Each node runs the README's command for several machines with its own machine rank: `accelerate launch`, or
torchrun. On CPUs Accelerate needs `--multi_gpu` (its torchrun path, which joins the machines) and
ACCELERATE_USE_CPU=1 (gloo on the CPU): `accelerate launch --cpu --num_machines 2` starts each node's script alone,
as an unrelated single-process run.
"""

import json
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest
from conftest import offline_env
from support.train_server import ROOT, TRAIN, assert_same_weights, final_weights, logged, run_train, train_args

NODES = 2
NODE_TIMEOUT = 300  # seconds for both nodes to finish; a node left waiting for its peer would wait 30 minutes (gloo)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_command(launcher: str, machine_rank: int, port: int, args: list[str]) -> list[str]:
    """The command of one node of a NODES-machine run, one process per node."""
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", str(NODES),
                "--num_processes", str(NODES), "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1",
                "--main_process_port", str(port), "--num_cpu_threads_per_process", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", str(TRAIN), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NODES), "--nproc_per_node", "1",
            "--node_rank", str(machine_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
            str(TRAIN), *args]


def kill_tree(process: subprocess.Popen) -> None:
    """Kill a launcher and everything under it: torchrun starts each worker in a session (process group) of its own,
    so killing the launcher's group alone would leave the workers training on."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    process.kill()
    for descendant in descendants:
        try:
            descendant.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)  # reaped here, not by psutil: Popen would then report status 0
    psutil.wait_procs(descendants, timeout=30)


def run_nodes(launcher: str, args: list[str], tmp_path) -> None:
    """Start the NODES launchers at once and wait for both; on a failure or the timeout kill what still runs (no
    orphans) and fail with both nodes' logs (stdout and stderr, in tmp_path/node<rank>.log)."""
    # one thread per node (OMP_NUM_THREADS=1), and HF_HOME without a user's accelerate config
    env = {**os.environ, **offline_env(tmp_path / "hf-home"), "ACCELERATE_USE_CPU": "1"}
    port = free_port()
    logs = [tmp_path / f"node{rank}.log" for rank in range(NODES)]
    nodes = []
    try:
        for rank, log in enumerate(logs):
            with open(log, "w") as out:
                nodes.append(subprocess.Popen(node_command(launcher, rank, port, args), cwd=ROOT, env=env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + NODE_TIMEOUT
        while (codes := [node.poll() for node in nodes]).count(0) < NODES:
            if any(code not in (None, 0) for code in codes) or time.monotonic() > deadline:
                break  # a failed node's peer would wait for it until gloo's timeout
            time.sleep(0.1)
    finally:
        killed = [rank for rank, node in enumerate(nodes) if node.poll() is None]
        for rank in killed:
            kill_tree(nodes[rank])
    texts = [log.read_text(errors="replace") for log in logs]
    codes = [node.returncode for node in nodes]
    assert codes == [0] * NODES, f"exit statuses {codes}, killed: nodes {killed}\n" + "\n".join(
        f"--- node {rank} ---\n{text[-3000:]}" for rank, text in enumerate(texts))


COMMON = {"max_train_steps": 6, "logging_steps": 2, "checkpointing_steps": 6, "dropout": 0.0}  # dropout: per process


@pytest.fixture(scope="module")
def one_process_run(tiny_config, tmp_path_factory):
    """The single-process run with the global batch (4) of the two nodes' runs."""
    root = tmp_path_factory.mktemp("one")
    run_train(train_args(tiny_config, root / "run", train_batch_size=4, **COMMON), env=offline_env(root / "hf-home"))
    return root / "run"


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_nodes_match_one_process_with_the_same_global_batch(launcher, one_process_run, tiny_config, tmp_path):
    run_nodes(launcher, train_args(tiny_config, tmp_path / "two", train_batch_size=2, **COMMON), tmp_path)

    record = json.loads((tmp_path / "two" / "pipeline" / "training_config.json").read_text())
    assert record["num_processes"] == NODES and record["train_batch_size"] == 4  # one run of two processes
    assert record["hardware"] == "2 x CPU process (1 threads each)"
    # The gradients are all-reduced (summed in another order than one process sums its batch): float32 rounding.
    assert_same_weights(final_weights(tmp_path / "two"), final_weights(one_process_run), atol=1e-5)
    losses = logged(tmp_path / "two")
    assert sorted(losses) == [2, 4, 6]
    assert losses == pytest.approx(logged(one_process_run), rel=1e-5)
    # every process writes its RNG state into the checkpoint: --output_dir must be one folder that all nodes share
    checkpoint = tmp_path / "two" / "checkpoints" / "checkpoint-6"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
