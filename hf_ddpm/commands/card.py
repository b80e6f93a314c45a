"""`hf-ddpm card`: its options (`CardConfig`), their checks, and the command that (re-)renders a pipeline folder's
model card (README.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifacts import read_pipeline_facts
from ..hub import check_license, check_repo_id, is_generated_card, write_model_card
from ..options import UsageError, option
from . import Command


@dataclass
class CardConfig:
    pipeline_dir: str = option(help="the pipeline folder that pipeline.save_pretrained() wrote (OUTPUT_DIR/pipeline "
                               "of a training run)", positional=True, metavar="PIPELINE_DIR",
                               free="checked in validate(): a saved pipeline folder")
    repo_id: str | None = option(None, "the Hub repo id the card names and loads from (default: the previous card's; "
                                 "else the card is named after the training run)", metavar="USER/NAME",
                                 check=lambda value: check_repo_id(value, "--repo-id"))
    license: str | None = option(None, "the license identifier of the card's metadata, as the Hub lists them "
                                 "(default: the previous card's, else apache-2.0)",
                                 check=lambda value: check_license(value, "--license"))
    dataset: str | None = option(None, "the training dataset (default: training_config.json's): a Hub dataset id, "
                                 "or a local folder or file, which the card names without a path or link",
                                 free="any name: a Hub id is linked, a name spelled like a path is described as local")
    force: bool = option(False, "replace a README.md that hf-ddpm did not write", free="a switch: on or off")

    def validate(self) -> None:
        """The folder is a saved pipeline, and a README.md that is not a generated card is replaced only with
        --force."""
        read_pipeline_facts(self.pipeline_dir)
        readme = Path(self.pipeline_dir) / "README.md"
        if readme.exists() and not self.force and not is_generated_card(readme):
            raise UsageError(f"{readme} was not written by hf-ddpm", "--force",
                             "pass --force to replace it, or move it away first")


def run(config: CardConfig) -> int:
    print(write_model_card(config.pipeline_dir, dataset=config.dataset, license=config.license, repo_id=config.repo_id))
    return 0


COMMAND = Command(
    "card",
    "(re-)render a pipeline folder's README.md model card",
    run=run,
    config=CardConfig,
    description="Render PIPELINE_DIR/README.md from the saved configs, training_config.json and eval_results.json.",
)
