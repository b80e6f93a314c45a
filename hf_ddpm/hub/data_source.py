"""Where a run's training data came from, decided when the run records it (`record_training_data`, kept in
training_config.json), and how a model card names it (`DataSource`): a Hub dataset by its id, with a link and
`datasets:` metadata; local data (an image folder, an IDX file) by its file name, image count and resolution only.
A name with no recorded source is local when it is spelled like a path, whatever the current directory holds."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from ..artifacts import is_local_path

# How the card spells well-known Hub datasets.
DATASET_NAMES = {
    "fashion_mnist": "Fashion-MNIST", "zalando-datasets/fashion_mnist": "Fashion-MNIST", "mnist": "MNIST",
    "ylecun/mnist": "MNIST", "cifar10": "CIFAR-10", "uoft-cs/cifar10": "CIFAR-10", "celeba_hq": "CelebA-HQ",
    "lsun_church": "LSUN Church", "lsun_bedroom": "LSUN Bedroom", "lsun_cat": "LSUN Cat",
}
# Where training data came from: the `dataset_kind` of training_config.json and the `kind` of eval_results.json's
# dataset (the same words as hf_ddpm.evaluation's DatasetSpec.kind). "local" is any other local file or folder.
DATASET_KINDS = ("hub", "fashion_mnist", "folder", "idx", "local")
LOCAL_KIND_WORDS = {"folder": "the local image folder", "idx": "the local IDX file", "local": "the local data"}
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def record_training_data(dataset_name: str | None = None, train_data_dir: str | None = None,
                         idx_images: str | None = None, num_images: int | None = None) -> dict:
    """The training_config.json entries that say where a run's images came from, decided at training time (where
    a relative path still means what it meant): `dataset` (a Hub id, or the file name of local data),
    `dataset_kind` (DATASET_KINDS) and `dataset_num_images`. The arguments are train.py's data options."""
    if train_data_dir or idx_images:
        kind, name = ("folder", train_data_dir) if train_data_dir else ("idx", idx_images)
    elif dataset_name:
        kind, name = ("local", dataset_name) if is_local_path(dataset_name) else ("hub", dataset_name)
    else:
        kind, name = "fashion_mnist", "fashion_mnist"
    if kind not in ("hub", "fashion_mnist"):
        name = _basename(name)
    return {"dataset": name, "dataset_kind": kind, "dataset_num_images": num_images}


def _basename(name: str) -> str:
    return os.path.basename(os.path.normpath(os.path.expanduser(name))) or name


@dataclass(frozen=True)
class DataSource:
    """A dataset as the card names it: `name` is a Hub id or, for local data, only the file or folder name."""

    name: str
    kind: str
    num_images: int | None = None
    resolution: Any = None

    @classmethod
    def of(cls, name: str, kind: str | None = None, num_images: Any = None, resolution: Any = None) -> "DataSource":
        """`kind` as recorded; when it was not, a name spelled like a path or not like a Hub id is local."""
        name = str(name)
        if kind not in DATASET_KINDS:
            local = is_local_path(name, on_disk=False) or _HUB_ID_RE.match(name) is None
            kind = "local" if local else "hub"
        if kind not in ("hub", "fashion_mnist"):
            name = _basename(name)
        count = num_images if isinstance(num_images, int) and not isinstance(num_images, bool) else None
        return cls(name, kind, count, resolution)

    @property
    def hub_id(self) -> str | None:
        return self.name if self.kind in ("hub", "fashion_mnist") else None

    @property
    def pretty(self) -> str:
        return DATASET_NAMES.get(self.name.lower(), self.name)

    def markdown(self) -> str:
        """How the card's text names the data: a link for a Hub dataset; what and how much for local data."""
        if self.hub_id:
            return f"[{self.pretty}](https://huggingface.co/datasets/{self.hub_id})"
        details = [f"{self.num_images:,} images"] if self.num_images else []
        if self.resolution:
            size = self.resolution if isinstance(self.resolution, (list, tuple)) else (self.resolution,) * 2
            details.append("x".join(str(s) for s in size))
        return f"{LOCAL_KIND_WORDS[self.kind]} `{self.name}`" + (f", {' at '.join(details)}" if details else "")
