"""What may go up to the Hub and how: the pipeline-folder upload policy, the token (resolved, never shown), Hub and
network errors turned into one token-free line, and `push_pipeline`.

What goes up (everything else in the folder is left out and listed): `model_index.json`; in each component folder
named by `model_index.json`, its `*.json` configs and `*.safetensors` weights; at the top level `README.md`,
`*.json` (training_config.json, eval_results.json...), images (`samples.png`...) and `LICENSE*`.
What is refused, before any network call: a folder without a loadable `model_index.json`, components that name
non-diffusers classes or lack their config / safetensors weights, any pickle-format file anywhere (`*.bin`, `*.pt`,
`*.pth`, `*.ckpt`, `*.pkl`, `*.pickle`) and training state (`checkpoints/`, `checkpoint-*/`, `logs/`, `runs/`,
`wandb/`, `optimizer*`, `*tfevents*`, `random_states*`): push the folder that `save_pretrained` wrote, not the
training output directory.

The token is resolved like every huggingface_hub call (argument > `HF_TOKEN` > the `hf auth login` cache). It is
only handed to `HfApi`; it is never printed, logged or written, and it is scrubbed from the message of any error
raised here. A folder file that contains the token is refused.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import diffusers

from ..artifacts import (HF_TOKEN_PATTERN, check_pipeline_folder_exists, read_json, read_pipeline_facts,
                         read_safetensors_header, weight_files)
from ..options import RunFailure, UsageError
from .card import check_repo_id, is_generated_card, write_model_card

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TRAINING_STATE_DIRS = ("checkpoints", "checkpoint-*", "logs", "runs", "wandb", "mlruns")
TRAINING_STATE_FILES = ("optimizer*", "*tfevents*", "random_states*")
TOP_LEVEL_UPLOADS = ("README.md", "*.json", "*.png", "*.jpg", "*.jpeg", "*.webp", "*.gif", "LICENSE", "LICENSE.*")
NO_TOKEN_FIX = "set HF_TOKEN, run `hf auth login`, or pass --token"


class HubPushError(RunFailure):
    """A push that failed on the Hub's side or on the way there (network, server error); exit status 1. Its message
    never contains the token."""


# ---------------------------------------------------------------------------------------------- the folder
@dataclass
class PipelineUpload:
    """The result of `check_pipeline_folder`: the files that go up and those left out (paths relative, POSIX)."""

    path: Path
    files: list[str]
    skipped: list[str]


def _list_files(path: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != ".cache")  # huggingface_hub's upload metadata cache
        rel_root = Path(root).relative_to(path)
        out.extend((rel_root / name).as_posix() for name in sorted(files))
    return sorted(out)


def _training_state(rel: str) -> bool:
    parts = rel.split("/")
    if any(fnmatch.fnmatch(d.lower(), pattern) for d in parts[:-1] for pattern in TRAINING_STATE_DIRS):
        return True
    return any(fnmatch.fnmatch(parts[-1].lower(), pattern) for pattern in TRAINING_STATE_FILES)


def _short_list(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _check_component(path: Path, name: str, library: str, class_name: str) -> None:
    """One component folder named by model_index.json: a stock class, its config, readable safetensors weights."""
    if library != "diffusers" or not hasattr(diffusers, class_name):
        raise ValueError(f"{path / 'model_index.json'} names {name} = [{library!r}, {class_name!r}], which stock "
                         "diffusers cannot load: save the pipeline with hf_ddpm (it writes stock diffusers class "
                         "names).")
    is_scheduler = class_name.endswith("Scheduler")
    expected = "scheduler_config.json" if is_scheduler else "config.json"
    if not (path / name / expected).is_file():
        raise ValueError(f"{path} is not a loadable pipeline: {name}/{expected} is missing.")
    config_class = read_json(path / name / expected).get("_class_name")
    if config_class is not None and not hasattr(diffusers, config_class):
        raise ValueError(f"{path / name / expected} names the class {config_class!r}, which stock diffusers "
                         "cannot load: save the pipeline with hf_ddpm (it writes stock diffusers class names).")
    if is_scheduler:
        return
    weights = weight_files(path / name)
    if not weights:
        raise ValueError(f"{path} is not a loadable pipeline: {name}/ has no *.safetensors weights. Save it "
                         "with pipeline.save_pretrained(folder, safe_serialization=True).")
    for weight in weights:
        if not weight.is_file():
            raise ValueError(f"{path} is not a loadable pipeline: {weight.relative_to(path)} is missing.")
        read_safetensors_header(weight)


def check_pipeline_folder(pipeline_dir: str | os.PathLike) -> PipelineUpload:
    """Check that `pipeline_dir` is a shareable pipeline; return what goes up. Raises ValueError saying what to fix.

    Refuses: pickle-format files anywhere, training state (checkpoints, logs, optimizer states), a missing or
    invalid model_index.json, components naming classes stock diffusers does not have, a component folder without
    its config, a model without safetensors weights (or with corrupt ones).
    """
    path = Path(pipeline_dir)
    check_pipeline_folder_exists(path)
    all_files = _list_files(path)
    pickles = [f for f in all_files if f.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"Refusing to push {path}: it holds pickle-format files ({_short_list(pickles)}), which can run code when "
            "loaded. Save the pipeline with pipeline.save_pretrained(folder, safe_serialization=True) and push that "
            "folder (safetensors only)."
        )
    state = [f for f in all_files if _training_state(f)]
    if state:
        raise ValueError(
            f"Refusing to push {path}: it holds training state ({_short_list(state)}). Push only the pipeline folder "
            "that pipeline.save_pretrained(folder) wrote; keep checkpoints, logs and optimizer states out of it."
        )

    facts = read_pipeline_facts(path)
    if not hasattr(diffusers, facts.class_name):
        raise ValueError(f"{path / 'model_index.json'} names the pipeline class {facts.class_name!r}, which diffusers "
                         "does not have.")
    if facts.class_name != "DDPMPipeline" or not {"unet", "scheduler"} <= set(facts.components):
        raise ValueError(
            f"{path} is a {facts.class_name} with components {sorted(facts.components)}: hf-ddpm pushes DDPMPipeline "
            "folders (unet + scheduler) as written by hf_ddpm.DDPMPipeline.save_pretrained()."
        )
    allowed = {"model_index.json"}
    for name, (library, class_name) in facts.components.items():
        _check_component(path, name, library, class_name)
        allowed.update(rel for rel in all_files if rel.startswith(f"{name}/") and rel.count("/") == 1
                       and rel.endswith((".json", ".safetensors")))
    allowed.update(rel for rel in all_files
                   if "/" not in rel and any(fnmatch.fnmatch(rel, pattern) for pattern in TOP_LEVEL_UPLOADS))
    return PipelineUpload(path=path, files=sorted(allowed), skipped=[f for f in all_files if f not in allowed])


# ---------------------------------------------------------------------------------------------- the token
def scrub(text: str, token: str | None) -> str:
    """`text` with the token, and anything that looks like a Hugging Face token, replaced by stars."""
    if token:
        text = text.replace(token, "***")
    return HF_TOKEN_PATTERN.sub("hf_***", text)


def resolve_token(token: str | None) -> str:
    """The token huggingface_hub would use (argument > HF_TOKEN > `hf auth login`), or a UsageError saying how to
    give one."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise UsageError("No Hugging Face token", "--token", NO_TOKEN_FIX)
    return token


def _refuse_files_with_token(upload: PipelineUpload, token: str) -> None:
    for rel in upload.files:
        if rel.endswith((".json", ".md")) and token in (upload.path / rel).read_text("utf-8", errors="replace"):
            raise ValueError(f"Refusing to push {upload.path}: {rel} contains your Hugging Face token. Remove it "
                             "first.")


# ---------------------------------------------------------------------------------------------- errors
def _network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean 'could not talk to the server': the socket's own, and those of the HTTP clients
    huggingface_hub may use (httpx2 in huggingface_hub 2.x, httpx, requests in older versions)."""
    import socket

    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror, socket.herror]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            imported = importlib.import_module(module)
        except ImportError:
            continue
        kinds += [getattr(imported, name) for name in names if isinstance(getattr(imported, name, None), type)]
    return tuple(kinds)


def _one_line(error: BaseException, token: str | None) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return scrub(text, token)


@contextmanager
def hub_errors(token: str | None, repo_id: str, endpoint: str) -> Iterator[None]:
    """Re-raise Hub and network errors as one token-free line: PermissionError (exit 2) for a rejected token,
    HubPushError (exit 1) for an unreachable endpoint or a server error."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        yield
    except OfflineModeIsEnabled:
        raise UsageError("HF_HUB_OFFLINE is set: pushing needs the network", None, "unset it to push") from None
    except (RepositoryNotFoundError, HfHubHTTPError) as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        detail = _one_line(error, token)
        if isinstance(error, RepositoryNotFoundError) or status in (401, 403):
            raise PermissionError(
                f"the Hub refused access to {repo_id} (HTTP {status}): check that your token (HF_TOKEN, "
                f"`hf auth login` or --token) has write access to it. Hub said: {detail}"
            ) from None
        raise HubPushError(f"pushing to {repo_id} failed (HTTP {status}): {detail}") from None
    except PermissionError as error:  # a local file: the one-line message, scrubbed
        raise PermissionError(_one_line(error, token)) from None
    except _network_errors() as error:
        raise HubPushError(f"pushing to {repo_id} failed: cannot reach the Hub at {endpoint} "
                           f"({type(error).__name__}: {_one_line(error, token)})", "--endpoint",
                           "check the address (--endpoint, else HF_ENDPOINT), your network and proxy, then push "
                           "again") from None
    except OSError as error:  # e.g. a full disk while the card is re-rendered
        raise HubPushError(f"pushing to {repo_id} failed: {_one_line(error, token)}") from None
    except (ValueError, RuntimeError) as error:
        message = str(error)
        if scrub(message, token) == message:
            raise
        if isinstance(error, ValueError):
            raise type(error)(scrub(message, token)) from None
        raise HubPushError(scrub(message, token)) from None


# ---------------------------------------------------------------------------------------------- push
def _escape_pattern(rel: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", rel)


def push_pipeline(
    pipeline_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    endpoint: str | None = None,
    update_card: bool = True,
    with_demo: bool = False,
):
    """Push a saved DDPM pipeline folder to the Hub; returns huggingface_hub's `CommitInfo` (a str: the commit URL).

    The folder is checked first (`check_pipeline_folder`). The repo is created if needed (`private` applies to a new
    repo; pushing with private=True to an existing public repo is refused). `revision` is a branch, created from
    main if missing; with `create_pr` the commit opens a pull request against it (default main). With `update_card`,
    a missing README.md, or one generated by hf-ddpm, is (re-)rendered for `repo_id` first. `endpoint` defaults to
    HF_ENDPOINT / the Hub. Only the files listed by `check_pipeline_folder` are uploaded; with `with_demo`, also an
    `app.py` and `requirements.txt` that serve hf-ddpm's demo page for `repo_id` from a Gradio Space
    (`hf_ddpm.demo.space_files`), in the same commit.
    """
    from huggingface_hub import HfApi, constants

    from .. import __version__

    path = Path(pipeline_dir)
    check_repo_id(repo_id)
    upload = check_pipeline_folder(path)  # before any network call
    token = resolve_token(token)
    _refuse_files_with_token(upload, token)

    api = HfApi(endpoint=endpoint, token=token, library_name="hf-ddpm", library_version=__version__)
    with hub_errors(token, repo_id, endpoint or constants.ENDPOINT):
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if private and not api.repo_info(repo_id).private:
            raise ValueError(f"{repo_id} already exists and is public: --private only applies to a new repo. Make it "
                             "private in its settings first, or push without --private.")
        if revision and revision != "main":  # a branch to commit to, or the base of the pull request
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        readme = path / "README.md"
        if update_card and (not readme.exists() or is_generated_card(readme)):
            write_model_card(path, repo_id=repo_id, license=None)
            upload = check_pipeline_folder(path)
        elif readme.exists():
            from huggingface_hub import ModelCard

            try:
                ModelCard.load(readme)
            except Exception as error:  # noqa: BLE001 - any parse failure means the Hub would reject the card
                raise ValueError(f"{readme} has invalid metadata: {error}") from None
        if upload.skipped:
            logger.warning("Not uploading (not part of the pipeline): %s", _short_list(upload.skipped, 10))
        commit_message = commit_message or f"Upload DDPM pipeline with hf-ddpm {__version__}"
        if with_demo:  # the folder's files and the Space's, generated, in one commit
            from huggingface_hub import CommitOperationAdd

            from ..demo import space_files

            operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path / rel)) for rel in upload.files]
            operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data)
                           for name, data in space_files(repo_id).items()]
            return api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision,
                                     create_pr=create_pr)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=path,
            allow_patterns=[_escape_pattern(rel) for rel in upload.files],
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
        )
