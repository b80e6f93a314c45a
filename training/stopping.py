"""When train.py stops early and resumably (a signal, its launcher's exit, --max_train_time), and the command that
resumes it."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time

import psutil
import torch
from accelerate import Accelerator

EXIT_RESUMABLE = 75  # sysexits' EX_TEMPFAIL: stopped early with a checkpoint; --resume_from_checkpoint latest goes on
# The launchers whose exit stops train.py (watch_launcher), recognized by a variable each sets for its processes.
LAUNCHERS = {"ACCELERATE_DYNAMO_BACKEND": "accelerate launch", "TORCHELASTIC_RUN_ID": "torchrun"}
# read as the script starts (train.py imports this module at start-up): a launcher that exits before it is watched
# is noticed too
PARENT_PID = os.getppid()
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")  # SIGUSR1: SLURM's --signal=USR1@SECONDS, before the time limit
# Why a run stops early, as codes the processes can exchange (0: no reason); the launcher's exit is a SIGTERM.
STOP_REASONS = (None, "--max_train_time", "the launcher exited", *STOP_SIGNALS)


def launcher() -> str | None:
    """The launcher that started this process (`accelerate launch`, torchrun), or None for a plain `python`."""
    return next((name for variable, name in LAUNCHERS.items() if variable in os.environ), None)


def watch_launcher() -> None:
    """Under a launcher on Linux, have the kernel send this process SIGTERM when the launcher exits, even by SIGKILL
    (prctl PR_SET_PDEATHSIG), so that train.py never runs on alone: before the loop the signal ends the process,
    in the loop StopSignal checkpoints and stops. A plain `python train.py` is left to outlive its shell (nohup)."""
    if launcher() is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
        return  # not available (e.g. a sandbox): the launcher's own signals still reach train.py
    if os.getppid() != PARENT_PID:  # the launcher exited before prctl, so no signal will come: as if it had
        os.kill(os.getpid(), signal.SIGTERM)


def launcher_gone(wait: float = 2.0) -> bool:
    """Whether this process's launcher has exited, waiting up to `wait` seconds for it. watch_launcher's SIGTERM
    comes when the launcher's thread exits, which can be well before the whole launcher has (os.getppid() changes
    only then); a SIGTERM that a live launcher forwards costs the wait, short beside a scheduler's grace period."""
    deadline = time.monotonic() + wait
    while os.getppid() == PARENT_PID:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


class StopSignal:
    """Stops the loop resumably on SIGTERM, SIGINT or SIGUSR1, on the launcher's exit (the SIGTERM of
    watch_launcher) or after --max_train_time: the current step finishes, the loop checkpoints and exits with
    EXIT_RESUMABLE. The time counts from the start of the process."""

    def __init__(self, max_seconds: float | None = None):
        self.reason = None
        self.deadline = None if max_seconds is None else psutil.Process().create_time() + max_seconds
        self.last_check = time.time()
        for name in STOP_SIGNALS:
            if hasattr(signal, name):  # SIGUSR1 is POSIX only
                signal.signal(getattr(signal, name), self._request)

    def _request(self, signum, frame):
        if self.reason is None:
            self.reason = signal.Signals(signum).name

    def _out_of_time(self) -> bool:
        """Whether the next check, as far off as the last one was, would come after the deadline."""
        now = time.time()
        interval, self.last_check = now - self.last_check, now
        return self.deadline is not None and now + interval >= self.deadline

    def agreed(self, accelerator: Accelerator) -> str | None:
        """Why to stop at this step, the same on every process: with several, any process's reason (a collective)."""
        if self.reason is None and self._out_of_time():
            self.reason = "--max_train_time"
        if self.reason == "SIGTERM" and launcher() is not None and launcher_gone():
            self.reason = "the launcher exited"
        if accelerator.num_processes == 1:
            return self.reason
        codes = accelerator.gather(torch.tensor([STOP_REASONS.index(self.reason)], device=accelerator.device))
        self.reason = STOP_REASONS[next((code for code in codes.tolist() if code), 0)]
        return self.reason


def resume_command(argv: list[str]) -> str:
    """This run's command continued from its newest checkpoint: its arguments without --hub_token (never logged)
    or an earlier --resume_from_checkpoint, then `--resume_from_checkpoint latest`; a launcher's own options, which
    train.py does not see, are shown as `...`."""
    kept, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg.split("=", 1)[0] in ("--hub_token", "--resume_from_checkpoint"):
            skip_value = "=" not in arg
        else:
            kept.append(arg)
    start = [*launcher().split(), "..."] if launcher() else ["python"]
    return " ".join([*start, shlex.join([sys.argv[0], *kept, "--resume_from_checkpoint", "latest"])])
