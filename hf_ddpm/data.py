"""Training images for the DDPM: where they come from and how they become tensors.

Reading order:

1. ``read_idx_images`` parses IDX files (the MNIST / Fashion-MNIST format) into a
   uint8 array, and ``load_fashion_mnist`` reads the Fashion-MNIST copy that the
   Debian package ``dataset-fashion-mnist`` installs: the default, offline dataset.
2. ``load_image_dataset`` picks exactly one source (a 🤗 dataset, a folder of
   images, an IDX file, or the default) and returns the raw images, undecoded:
   ``ArrayImages`` for IDX arrays, ``TableImages`` for a column of a
   ``datasets.Dataset``.
3. ``ImageDataset`` turns raw image ``i`` into ``{"pixel_values": [C, H, W]}`` in
   [-1, 1]: channels, resize, crop, scale. Its random crop depends only on
   (seed, epoch, index), so a resumed run sees the same crops.
4. ``flip_horizontally`` mirrors the images a boolean mask selects; the training
   loop draws the mask per step so that its randomness is reproducible.
"""

from __future__ import annotations

import gzip
import io
import math
import os
from typing import TYPE_CHECKING, Union

import numpy as np
import PIL.Image
import torch

if TYPE_CHECKING:  # datasets is slow to import and only the table sources need it
    import datasets

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# IDX files name Fashion-MNIST's test split "t10k".
_FASHION_MNIST_FILES = {
    "train": "train-images-idx3-ubyte.gz",
    "test": "t10k-images-idx3-ubyte.gz",
}

# The IDX type codes (third byte of the magic number). Only unsigned bytes are
# images; the others are named so the error for them says what the file holds.
_IDX_TYPES = {
    0x08: "uint8",
    0x09: "int8",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}

_GZIP_MAGIC = b"\x1f\x8b"

_RESAMPLING = {
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
}

# Column names taken to hold the images when the features do not say so.
_IMAGE_COLUMN_NAMES = ("image", "img")


# --------------------------------------------------------------------------- IDX


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX image file (gzipped or not) into a uint8 array.

    The IDX header is 4 magic bytes (0, 0, type code, number of dimensions)
    followed by one big-endian uint32 per dimension; the pixels follow, row-major.
    Returns [N, H, W] for grayscale files and [N, H, W, C] for files with a
    channel dimension (C of 1 is squeezed away, so that is [N, H, W] too).
    Raises ValueError, in one line, for anything that is not a complete IDX
    image file.
    """
    data = _read_maybe_gzipped(path)
    dims, offset = _parse_idx_header(data, path)
    shape = "x".join(map(str, dims))
    if len(dims) not in (3, 4):
        raise ValueError(
            f"{path} holds {len(dims)}-dimensional data (shape {shape}), not images "
            "[N, H, W] or [N, H, W, C]: is it a labels file? Pass the *-images-idx3-ubyte file."
        )
    if len(dims) == 4 and dims[3] not in (1, 3, 4):
        raise ValueError(
            f"{path} has {dims[3]} channels (shape {shape}); images need 1, 3 or 4 channels."
        )
    expected, found = math.prod(dims), len(data) - offset
    if found != expected:
        problem = "is truncated" if found < expected else "has extra bytes at the end"
        raise ValueError(
            f"{path} {problem}: its header promises {shape} = {expected} bytes of pixels "
            f"but {found} follow; download or extract the file again."
        )
    # np.frombuffer over bytes is read-only; copy so callers (and torch) may write.
    images = np.frombuffer(data, np.uint8, offset=offset).reshape(dims).copy()
    return images[..., 0] if images.ndim == 4 and images.shape[3] == 1 else images


def _read_maybe_gzipped(path: str | os.PathLike) -> bytes:
    """Return the bytes of ``path``, gunzipped if it is gzip (by content, not by name)."""
    with open(path, "rb") as file:
        data = file.read()
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as err:
        raise ValueError(
            f"{path} is a damaged gzip file ({err}); download it again."
        ) from err


def _parse_idx_header(data: bytes, path: str | os.PathLike) -> tuple[tuple[int, ...], int]:
    """Check the IDX magic number of ``data``; return (dimensions, offset of the pixels)."""
    if len(data) < 4 or data[:2] != b"\0\0":
        raise ValueError(
            f"{path} is not an IDX file (it starts with bytes {data[:4].hex(' ') or 'nothing'}, "
            "an IDX file starts with 00 00); pass an IDX file such as train-images-idx3-ubyte(.gz)."
        )
    type_code, ndim = data[2], data[3]
    if type_code != 0x08:
        name = _IDX_TYPES.get(type_code, "an unknown type")
        raise ValueError(
            f"{path} holds {name} values (IDX type code 0x{type_code:02x}); "
            "images must be uint8 (type code 0x08)."
        )
    offset = 4 + 4 * ndim
    if ndim == 0 or len(data) < offset:
        raise ValueError(
            f"{path} is not a complete IDX file: its header announces {ndim} dimensions "
            f"but the file is {len(data)} bytes long; download or extract the file again."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    return dims, offset


def load_fashion_mnist(split: str = "train", directory: str = FASHION_MNIST_DIR) -> np.ndarray:
    """Return the Fashion-MNIST images of ``split`` ("train" or "test") as uint8 [N, 28, 28].

    This is the default dataset because it needs no network: Debian's
    ``dataset-fashion-mnist`` package installs it under ``FASHION_MNIST_DIR``.
    """
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(
            f"Fashion-MNIST has no split {split!r}; use one of {sorted(_FASHION_MNIST_FILES)}."
        )
    path = os.path.join(directory, _FASHION_MNIST_FILES[split])
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Fashion-MNIST (the default dataset) is not at {path}: install it with "
            "`apt-get install dataset-fashion-mnist`, or choose other images with "
            "dataset_name, train_data_dir or idx_images."
        )
    return read_idx_images(path)


# ----------------------------------------------------------------- raw sources


class ArrayImages:
    """Images held in memory as one uint8 array [N, H, W] or [N, H, W, C] (3 or 4 channels)."""

    def __init__(self, array: np.ndarray, name: str):
        if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[3:] not in ((), (3,), (4,)):
            raise ValueError(
                f"{name}: expected a uint8 array [N, H, W] or [N, H, W, C], "
                f"got {array.dtype} with shape {array.shape}."
            )
        self.array = array
        self.name = name

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.array[index]

    def describe(self, index: int) -> str:
        """Name image ``index`` for error messages."""
        return f"image {index} of {self.name}"


class TableImages:
    """Images in one column of a ``datasets.Dataset``.

    The column is cast to ``datasets.Image(decode=False)`` so that rows hold the
    encoded file (bytes and/or path): decoding here, not inside ``datasets``,
    lets a corrupt image's error name its file.
    """

    def __init__(self, table: datasets.Dataset, column: str, name: str):
        import datasets

        try:
            # Only the image column: rows then do not decode the others.
            only_images = table.select_columns([column])
            self.table = only_images.cast_column(column, datasets.Image(decode=False))
        except (TypeError, ValueError, NotImplementedError) as err:  # pyarrow's cast errors
            raise ValueError(
                f"Column {column!r} of {name} holds {table.features[column]}, not images ({err}); "
                "pass the column of images as image_column."
            ) from err
        self.column = column
        self.name = name

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> PIL.Image.Image:
        encoded = self.table[index][self.column]
        source = io.BytesIO(encoded["bytes"]) if encoded["bytes"] else encoded["path"]
        try:
            # open() only reads the header; load() decodes, so it finds truncated files.
            with PIL.Image.open(source) as image:
                image.load()
        except (OSError, ValueError, SyntaxError) as err:  # what PIL raises for bad files
            raise ValueError(
                f"{self.describe(index)} cannot be read ({err}); remove or replace it."
            ) from err
        return image

    def describe(self, index: int) -> str:
        """Name image ``index`` (and its file, when known) for error messages."""
        path = self.table[index][self.column]["path"]
        return f"image {index} of {self.name}" + (f" (file {path})" if path else "")


RawImages = Union[ArrayImages, TableImages]


def load_image_dataset(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    idx_images: str | None = None,
    image_column: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    max_samples: int | None = None,
) -> RawImages:
    """Return the raw training images from exactly one source.

    - ``dataset_name``: ``datasets.load_dataset(dataset_name, dataset_config_name)``
      (a Hub name, or a local folder of data files such as parquet);
    - ``train_data_dir``: a folder of image files, through the "imagefolder" builder;
    - ``idx_images``: an IDX image file (``split`` and ``image_column`` do not apply);
    - none of these: Fashion-MNIST from ``FASHION_MNIST_DIR`` (split "train" or "test").

    ``image_column`` names the column holding the images; by default it is found
    from the features (see ``find_image_column``). ``max_samples`` keeps the first
    images only, for quick runs.
    """
    given = [flag for flag, value in (("dataset_name", dataset_name),
                                      ("train_data_dir", train_data_dir),
                                      ("idx_images", idx_images)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"Give at most one image source, not {' and '.join(given)}.")
    if dataset_config_name is not None and dataset_name is None:
        raise ValueError("dataset_config_name needs dataset_name.")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}.")
    if dataset_name is None and train_data_dir is None:
        images = _load_array_source(idx_images, image_column, split, max_samples)
    else:
        images = _load_table_source(dataset_name, dataset_config_name, train_data_dir,
                                    image_column, split, cache_dir, max_samples)
    if len(images) == 0:
        raise ValueError(f"{images.name} holds no images.")
    return images


def _load_array_source(idx_images: str | None, image_column: str | None, split: str,
                       max_samples: int | None) -> ArrayImages:
    """Read ``idx_images``, or Fashion-MNIST's ``split`` when no file is given."""
    if image_column is not None:
        raise ValueError("image_column applies to dataset_name and train_data_dir only.")
    if idx_images is None:
        array, name = load_fashion_mnist(split), f"Fashion-MNIST {split} ({FASHION_MNIST_DIR})"
    elif split != "train":
        # An IDX file is one split already; silently ignoring split would train on the wrong one.
        raise ValueError(
            f"split={split!r} does not apply to idx_images: pass the IDX file of that split."
        )
    else:
        array, name = read_idx_images(idx_images), str(idx_images)
    return ArrayImages(array[:max_samples], name)


def _load_table_source(dataset_name: str | None, dataset_config_name: str | None,
                       train_data_dir: str | None, image_column: str | None, split: str,
                       cache_dir: str | None, max_samples: int | None) -> TableImages:
    """Load a 🤗 dataset or an image folder and pick its image column."""
    import datasets  # imported here: IDX and Fashion-MNIST runs do not need it

    if dataset_name is not None:
        table = datasets.load_dataset(dataset_name, dataset_config_name,
                                      cache_dir=cache_dir, split=split)
        name = dataset_name
    else:
        table = datasets.load_dataset("imagefolder", data_dir=train_data_dir,
                                      cache_dir=cache_dir, split=split)
        name = train_data_dir
    column = find_image_column(table.features, image_column)
    if max_samples is not None and max_samples < len(table):
        table = table.select(range(max_samples))
    return TableImages(table, column, f"{name} [{split}]")


def find_image_column(features: datasets.Features, image_column: str | None = None) -> str:
    """Return the column holding the images, given the dataset's ``features``.

    ``image_column`` is checked to exist. Otherwise: the one ``datasets.Image``
    column; among several, or with none, the one named "image" or "img".
    """
    import datasets

    listing = ", ".join(f"{name} ({type(kind).__name__})" for name, kind in features.items())
    if image_column is not None:
        if image_column not in features:
            raise ValueError(
                f"image_column {image_column!r} is not a column; the columns are: {listing}."
            )
        return image_column
    image_typed = [name for name, kind in features.items() if isinstance(kind, datasets.Image)]
    if len(image_typed) == 1:
        return image_typed[0]
    named = [name for name in (image_typed or features) if name in _IMAGE_COLUMN_NAMES]
    if len(named) == 1:
        return named[0]
    problem = "several image columns" if len(image_typed) > 1 else "no image column"
    raise ValueError(f"Found {problem}; pass image_column, one of: {listing}.")


# ------------------------------------------------------------- preprocessing


class ImageDataset(torch.utils.data.Dataset):
    """Raw images as training samples: ``{"pixel_values": float32 [C, H, W] in [-1, 1]}``.

    Each image is converted to ``num_channels`` (1: "L", 3: "RGB"), resized so its
    shorter side is ``resolution`` (PIL, antialiased), cropped to
    ``resolution`` x ``resolution`` (centre, or random), and scaled: pixel k
    becomes 2k/255 - 1. With ``resolution=None`` images are used as they are
    and must all have the size of image 0.

    The random crop of image i depends only on (seed, epoch, i): call
    ``set_epoch`` at the start of each epoch, before iterating the DataLoader
    (its workers copy the dataset when the iteration starts, so do not use
    persistent_workers).
    """

    def __init__(
        self,
        images: RawImages,
        *,
        resolution: int | None,
        num_channels: int = 3,
        center_crop: bool = False,
        interpolation: str = "bilinear",
        seed: int = 0,
    ):
        if num_channels not in (1, 3):
            raise ValueError(
                f"num_channels must be 1 (grayscale) or 3 (RGB), got {num_channels}."
            )
        if interpolation not in _RESAMPLING:
            raise ValueError(
                f"interpolation must be one of {sorted(_RESAMPLING)}, got {interpolation!r}."
            )
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}.")
        self.images = images
        self.resolution = resolution
        self.num_channels = num_channels
        self.center_crop = center_crop
        self.resample = _RESAMPLING[interpolation]
        self.seed = seed
        self.epoch = 0
        # The [H, W] every sample must have, since the DataLoader stacks samples into
        # batches; without a resolution, image 0 (read now, so a bad one fails early) sets it.
        self.image_size = (
            (resolution, resolution) if resolution is not None else self._pixels(0).shape[:2]
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pixels = self._crop(self._pixels(index), index)
        if pixels.shape[:2] != self.image_size:
            height, width = pixels.shape[:2]
            raise ValueError(
                f"{self.images.describe(index)} is {height}x{width} but image 0 is "
                f"{self.image_size[0]}x{self.image_size[1]}: the images have mixed sizes, "
                "so pass a resolution to resize and crop them."
            )
        return {"pixel_values": _to_unit_range(pixels)}

    def _pixels(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 [H, W, C] with the right channels and shorter side."""
        image = self.images[index]
        if isinstance(image, np.ndarray):
            if self._array_is_ready(image):
                return image[..., None] if self.num_channels == 1 else _as_rgb(image)
            image = PIL.Image.fromarray(image)
        mode = "L" if self.num_channels == 1 else "RGB"
        if image.mode != mode:
            image = image.convert(mode)
        if self.resolution is not None and min(image.size) != self.resolution:
            image = image.resize(_resized_size(image.size, self.resolution), self.resample)
        pixels = np.asarray(image)
        return pixels[..., None] if pixels.ndim == 2 else pixels

    def _array_is_ready(self, array: np.ndarray) -> bool:
        """Whether ``array`` needs no PIL work: no resize, and channels by copying.

        This is the fast path for IDX data (28x28 Fashion-MNIST at resolution 28).
        Gray to RGB repeats the gray value, exactly as PIL's convert("RGB") does.
        """
        size_ok = self.resolution is None or min(array.shape[:2]) == self.resolution
        channels_ok = array.ndim == 2 or (array.shape[2] == 3 and self.num_channels == 3)
        return size_ok and channels_ok

    def _crop(self, pixels: np.ndarray, index: int) -> np.ndarray:
        """Crop ``pixels`` [H, W, C] to resolution x resolution (no-op without a resolution)."""
        if self.resolution is None:
            return pixels
        height, width = pixels.shape[:2]
        spare_h, spare_w = height - self.resolution, width - self.resolution
        if self.center_crop:
            # Rounded as torchvision's CenterCrop does, so results match diffusers' script.
            top, left = int(round(spare_h / 2)), int(round(spare_w / 2))
        elif spare_h or spare_w:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            top, left = int(rng.integers(spare_h + 1)), int(rng.integers(spare_w + 1))
        else:
            top = left = 0
        return pixels[top:top + self.resolution, left:left + self.resolution]


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """Return [H, W, 3] from gray [H, W] (repeated) or RGB [H, W, 3] (unchanged)."""
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


def _resized_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """PIL (width, height) with shorter side ``resolution``; the longer truncated as torchvision does."""
    width, height = size
    if width <= height:
        return resolution, int(resolution * height / width)
    return int(resolution * width / height), resolution


def _to_unit_range(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] -> float32 [C, H, W] with k -> 2k/255 - 1.

    2k - 255 is an exact integer in float32 and IEEE division rounds correctly,
    so every value is the float32 nearest to 2k/255 - 1: 0 -> -1, 255 -> 1 exactly.
    """
    tensor = torch.tensor(pixels).permute(2, 0, 1)  # a copy: PIL's arrays are read-only
    return (tensor.to(torch.float32) * 2 - 255) / 255


# ------------------------------------------------------------------ batches


def flip_horizontally(batch: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror the images of ``batch`` [B, C, H, W] whose entry of the boolean ``flips`` [B] is set.

    The training loop draws ``flips`` (probability 0.5 each) for the whole global batch from the step's
    seeded generator and passes each process its slice, so flips are reproducible, resumable and the same
    whatever the number of processes.
    """
    return torch.where(flips.to(batch.device).view(-1, 1, 1, 1), batch.flip(-1), batch)
