"""Sharing pipelines on the Hugging Face Hub: `card` renders a pipeline folder's model card, `data_source` says where
its training data came from, `upload` checks what may go up and pushes it. Their public names are re-exported here
(`from hf_ddpm.hub import push_pipeline, write_model_card`)."""

from .card import (CARD_MARKER, HUB_LICENSES, TEMPLATE_NAME, TRAINING_FIELDS, check_license, check_repo_id,
                   is_generated_card, model_card_template_path, render_model_card, run_name, write_model_card)
from .data_source import DATASET_KINDS, DataSource, record_training_data
from .upload import (HubPushError, PipelineUpload, check_pipeline_folder, hub_errors, push_pipeline, resolve_token,
                     scrub)

__all__ = [
    "CARD_MARKER", "DATASET_KINDS", "HUB_LICENSES", "TEMPLATE_NAME", "TRAINING_FIELDS", "DataSource", "HubPushError",
    "PipelineUpload", "check_license", "check_pipeline_folder", "check_repo_id", "hub_errors", "is_generated_card",
    "model_card_template_path", "push_pipeline", "record_training_data", "render_model_card", "resolve_token",
    "run_name", "scrub", "write_model_card",
]
