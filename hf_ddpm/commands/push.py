"""`hf-ddpm push`: its options (`PushConfig`), their checks, and the command that uploads a pipeline folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..hub import check_pipeline_folder, check_repo_id, push_pipeline, resolve_token
from ..options import SWITCH, UsageError, option
from . import Command


def _check_endpoint(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"endpoint {url!r} is not an http(s) URL", "--endpoint",
                         "pass the Hub's address, e.g. https://huggingface.co")


def _check_branch(name: str) -> None:
    if not name.strip() or any(c.isspace() for c in name) or name.startswith("refs/pr/"):
        raise UsageError(f"{name!r} is not a branch name", "--revision",
                         "pass a branch such as dev (a pull request is opened with --create-pr)")


def _check_message(message: str) -> None:
    if not message.strip():
        raise UsageError("the commit message is empty", "--commit-message", "write a message, or leave the option out")


@dataclass
class PushConfig:
    pipeline_dir: str = option(help="the pipeline folder that pipeline.save_pretrained() wrote (OUTPUT_DIR/pipeline "
                               "of a training run)", positional=True, metavar="PIPELINE_DIR",
                               free="checked in validate(): a shareable pipeline folder")
    repo_id: str = option(None, "the Hub repo to push to, created if missing", metavar="USER/NAME",
                          check=lambda value: check_repo_id(value, "--repo-id"))
    private: bool = option(False, "create the repo as private (an existing public repo is not changed)", free=SWITCH)
    revision: str | None = option(None, "push to this branch (created from main if missing)", metavar="BRANCH",
                                  check=_check_branch)
    create_pr: bool = option(False, "open a pull request (against --revision, default main) instead of committing",
                             free=SWITCH)
    commit_message: str | None = option(None, "the commit message (default: 'Upload DDPM pipeline with hf-ddpm "
                                        "VERSION')", metavar="MESSAGE", check=_check_message)
    token: str | None = option(None, "a Hub token, or '-' to read it from stdin (default: HF_TOKEN, else `hf auth "
                               "login`; prefer those: command lines are visible to other users)", metavar="TOKEN",
                               free="checked in validate(): a token must be found; the Hub checks it")
    endpoint: str | None = option(None, "the Hub's address (default: HF_ENDPOINT, else https://huggingface.co)",
                                  metavar="URL", check=_check_endpoint)
    card_update: bool = option(True, "re-render a generated README.md for the repo id before uploading "
                               "(--no-card-update uploads it as it is)", free=SWITCH)
    with_demo: bool = option(False, "also upload an app.py and requirements.txt that serve `hf-ddpm demo`'s page for "
                             "this repo, so that a Gradio Space can run it", free=SWITCH)

    def validate(self) -> None:
        """Everything that can be checked without the network, before anything is written or sent: the repo id,
        the folder (what would go up), and that a token is there to push with."""
        if self.repo_id is None:
            raise UsageError("the repo to push to is missing", "--repo-id", "pass --repo-id USER/NAME")
        check_pipeline_folder(self.pipeline_dir)
        if self.token != "-":  # read from stdin when the command runs
            resolve_token(self.token)


def run(config: PushConfig) -> int:
    token = config.token
    if token == "-":
        token = sys.stdin.readline().strip() or None
    info = push_pipeline(config.pipeline_dir, config.repo_id, token=token, private=config.private,
                         revision=config.revision, create_pr=config.create_pr, commit_message=config.commit_message,
                         endpoint=config.endpoint, update_card=config.card_update, with_demo=config.with_demo)
    print(f"Pushed {config.pipeline_dir} to {config.repo_id}: {info.commit_url}")
    if config.with_demo:
        print("With app.py and requirements.txt: a Gradio Space with these two files serves the demo page")
    if getattr(info, "pr_url", None):
        print(f"Pull request: {info.pr_url}")
    return 0


COMMAND = Command(
    "push",
    "upload a saved pipeline folder to the Hugging Face Hub",
    run=run,
    config=PushConfig,
    description="Upload a pipeline folder written by save_pretrained() to the Hub: only its safetensors weights, "
    "configs, model card, results and images go up; pickle files and training state are refused. Token: --token, "
    "else HF_TOKEN, else `hf auth login`.",
)
