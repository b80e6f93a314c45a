"""Tests of hf_ddpm.data: IDX parsing, image sources, preprocessing, batch flips."""

import gzip
import os

import numpy as np
import PIL.Image
import pytest
import torch

from hf_ddpm.data import (
    FASHION_MNIST_DIR,
    ArrayImages,
    ImageDataset,
    TableImages,
    find_image_column,
    load_fashion_mnist,
    load_image_dataset,
    flip_horizontally,
    read_idx_images,
)

FASHION_TRAIN = os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isfile(FASHION_TRAIN), reason="apt-get install dataset-fashion-mnist"
)


# ------------------------------------------------------------------ helpers


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Encode ``array`` as IDX: magic (0, 0, type, ndim), big-endian uint32 dims, data."""
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def write(path, data: bytes, gz: bool = False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_png(path, array: np.ndarray):
    PIL.Image.fromarray(array).save(path)
    return path


def pixel_values(dataset, index=0) -> torch.Tensor:
    return dataset[index]["pixel_values"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Keep `datasets` off the network and its cache inside tmp_path; returns the cache dir."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # datasets reads the variables when imported, so set what it read too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()
    return str(tmp_path / "cache")


# ---------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(5, 4, 3), (2, 4, 3, 3)])
def test_idx_round_trip(tmp_path, gz, shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = write(tmp_path / "images.idx", idx_bytes(array), gz)
    read = read_idx_images(path)
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, array)
    read[0, 0, 0] = 7  # the result is an ordinary writable array


def test_idx_single_channel_is_squeezed(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1)
    read = read_idx_images(write(tmp_path / "x.idx", idx_bytes(array)))
    np.testing.assert_array_equal(read, array[..., 0])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda a: b"\x89PNG\r\n\x1a\n" + bytes(40), "not an IDX file"),
        (lambda a: b"\0\0", "not an IDX file"),
        (lambda a: b"", "not an IDX file"),
        (lambda a: idx_bytes(a)[:10], "not a complete IDX file"),
        (lambda a: idx_bytes(a)[:-1], "is truncated"),
        (lambda a: idx_bytes(a) + b"\0", "extra bytes"),
        (lambda a: idx_bytes(a.reshape(-1)), "is it a labels file"),
        (lambda a: idx_bytes(a.astype(">i4"), type_code=0x0C), "int32"),
        (lambda a: idx_bytes(a.reshape(2, 3, 4, 2)), "2 channels"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_errors(tmp_path, make, message, gz):
    data = make(np.zeros((4, 3, 4), np.uint8))
    path = write(tmp_path / "bad.idx", data, gz)
    with pytest.raises(ValueError, match=message) as raised:
        read_idx_images(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_idx_damaged_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((4, 3, 4), np.uint8)))
    path = write(tmp_path / "cut.idx.gz", data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged gzip file.*download it again"):
        read_idx_images(path)


@needs_fashion_mnist
def test_real_fashion_mnist():
    images = load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    assert 50 < images.mean() < 90  # mostly dark background: the bytes are pixels, not noise
    assert load_fashion_mnist("test").shape == (10000, 28, 28)


def test_fashion_mnist_missing_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(directory=str(tmp_path))
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_fashion_mnist("validation")


# ------------------------------------------------------------ preprocessing


def test_scaling_is_exact():
    every_value = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    values = pixel_values(ImageDataset(ArrayImages(every_value, "all"), resolution=16, num_channels=1))
    expected = torch.from_numpy((np.arange(256) * 2 / 255 - 1).astype(np.float32)).reshape(1, 16, 16)
    assert values.dtype == torch.float32
    assert torch.equal(values, expected)
    flat = values.flatten()
    assert flat[0] == -1 and flat[255] == 1
    assert flat[128] == np.float32(2 * 128 / 255 - 1)


def test_fast_path_matches_pil_path(tmp_path, offline):
    """The numpy-only path for unresized arrays gives what PIL gives."""
    gray = np.random.default_rng(1).integers(0, 256, (1, 12, 12), dtype=np.uint8)
    array_dataset = ImageDataset(ArrayImages(gray, "gray"), resolution=12, num_channels=3)
    png = write_png(tmp_path / "gray.png", gray[0])
    table = TableImages(_table_of_paths([png]), "image", "pngs")
    pil_dataset = ImageDataset(table, resolution=12, num_channels=3)
    assert torch.equal(pixel_values(array_dataset), pixel_values(pil_dataset))


def _table_of_paths(paths):
    import datasets

    return datasets.Dataset.from_dict({"image": [str(p) for p in paths]})


@pytest.mark.parametrize("num_channels", [1, 3])
@pytest.mark.parametrize(
    "shape, resolution", [((20, 30), 10), ((8, 8), 16), ((28, 28), 28), ((30, 20, 3), 10), ((5, 7), None)]
)
def test_output_shapes(shape, resolution, num_channels):
    images = ArrayImages(np.zeros((2, *shape), np.uint8), "zeros")
    for center_crop in (False, True):
        dataset = ImageDataset(images, resolution=resolution, num_channels=num_channels,
                               center_crop=center_crop)
        size = (resolution, resolution) if resolution else shape[:2]
        assert pixel_values(dataset, 1).shape == (num_channels, *size)
        assert dataset.image_size == size


def test_resize_keeps_aspect_then_center_crops():
    # Columns 0..39 of a 20x40 image; halving the shorter side makes it 10x20,
    # and the centre crop keeps the middle 10 columns (original columns 10..29).
    columns = np.tile(np.arange(0, 240, 6, dtype=np.uint8), (1, 20, 1))
    dataset = ImageDataset(ArrayImages(columns, "columns"), resolution=10, num_channels=1,
                           center_crop=True, interpolation="bicubic")
    first_row = ((pixel_values(dataset)[0, 0] + 1) * 255 / 2).round()
    assert first_row[0] > 6 * 9 and first_row[-1] < 6 * 30
    assert torch.all(first_row[1:] > first_row[:-1])


def test_center_crop_offsets():
    columns = np.tile(np.arange(16, dtype=np.uint8), (1, 10, 1))  # 10x16, value = column
    dataset = ImageDataset(ArrayImages(columns, "columns"), resolution=10, num_channels=1, center_crop=True)
    kept = ((pixel_values(dataset)[0, 0] + 1) * 255 / 2).round().long()
    assert kept.tolist() == list(range(3, 13))


def _crop_left(dataset, index):
    """The left offset of the crop of image ``index`` (each pixel holds its column)."""
    return int(((pixel_values(dataset, index)[0, 0, 0] + 1) * 255 / 2).round())


def test_random_crop_depends_on_seed_epoch_index_only():
    columns = np.tile(np.arange(40, dtype=np.uint8), (8, 10, 1))  # 8 identical 10x40 images
    images = ArrayImages(columns, "columns")

    def crops(seed, epoch):
        dataset = ImageDataset(images, resolution=10, num_channels=1, seed=seed)
        dataset.set_epoch(epoch)
        return [_crop_left(dataset, index) for index in range(8)]

    epoch_3 = crops(seed=0, epoch=3)
    assert crops(seed=0, epoch=3) == epoch_3  # a fresh dataset (a resumed run) sees the same crops
    assert all(0 <= left <= 30 for left in epoch_3)
    assert len(set(epoch_3)) > 1  # identical images at different indices: different crops
    assert crops(seed=0, epoch=4) != epoch_3
    assert crops(seed=1, epoch=3) != epoch_3


def test_dataloader_batches():
    images = ArrayImages(np.zeros((6, 28, 28), np.uint8), "zeros")
    loader = torch.utils.data.DataLoader(ImageDataset(images, resolution=28, num_channels=1), batch_size=4)
    shapes = [batch["pixel_values"].shape for batch in loader]
    assert shapes == [(4, 1, 28, 28), (2, 1, 28, 28)]


def test_bad_options():
    images = ArrayImages(np.zeros((1, 4, 4), np.uint8), "zeros")
    with pytest.raises(ValueError, match="num_channels"):
        ImageDataset(images, resolution=4, num_channels=2)
    with pytest.raises(ValueError, match="interpolation"):
        ImageDataset(images, resolution=4, interpolation="nearest")
    with pytest.raises(ValueError, match="uint8"):
        ArrayImages(np.zeros((1, 4, 4), np.float32), "floats")


# ------------------------------------------------------------------- flips


def test_flip_horizontally_mirrors_exactly_the_selected_images():
    batch = torch.arange(8.0).view(2, 1, 2, 2)
    flipped = flip_horizontally(batch, torch.tensor([True, False]))
    assert torch.equal(flipped[0], batch[0].flip(-1))
    assert torch.equal(flipped[1], batch[1])


# ------------------------------------------------------------------ sources


@needs_fashion_mnist
def test_default_source_is_fashion_mnist():
    images = load_image_dataset(max_samples=5)
    assert isinstance(images, ArrayImages) and len(images) == 5
    assert "Fashion-MNIST" in images.describe(0)
    values = pixel_values(ImageDataset(images, resolution=28, num_channels=1))
    expected = torch.from_numpy(load_fashion_mnist()[0].astype(np.float32)) * 2 / 255 - 1
    assert torch.allclose(values[0], expected, atol=1e-6)


def test_idx_source(tmp_path):
    array = np.random.default_rng(2).integers(0, 256, (7, 6, 6), dtype=np.uint8)
    path = write(tmp_path / "x-images-idx3-ubyte.gz", idx_bytes(array), gz=True)
    images = load_image_dataset(idx_images=str(path), max_samples=3)
    assert len(images) == 3
    np.testing.assert_array_equal(images[2], array[2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dataset_name="x", train_data_dir="y"), "at most one image source"),
        (dict(train_data_dir="y", idx_images="z"), "at most one image source"),
        (dict(dataset_config_name="c"), "needs dataset_name"),
        (dict(max_samples=0), "at least 1"),
        (dict(idx_images="z", split="test"), "does not apply to idx_images"),
        (dict(image_column="image"), "image_column applies"),
    ],
)
def test_source_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_image_dataset(**kwargs)


def _image_folder(tmp_path, sizes, corrupt=False):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (height, width) in enumerate(sizes):
        write_png(folder / f"{i}.png", np.full((height, width, 3), 40 * i, np.uint8))
    if corrupt:
        (folder / "9_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return str(folder)


def test_image_folder(tmp_path, offline):
    folder = _image_folder(tmp_path, [(8, 8)] * 3)
    images = load_image_dataset(train_data_dir=folder, cache_dir=offline)
    assert isinstance(images, TableImages) and images.column == "image" and len(images) == 3
    dataset = ImageDataset(images, resolution=None, num_channels=3)
    values = sorted(float(pixel_values(dataset, i)[0, 0, 0]) for i in range(3))
    assert values == pytest.approx([-1, 80 / 255 - 1, 160 / 255 - 1])
    assert len(load_image_dataset(train_data_dir=folder, cache_dir=offline, max_samples=2)) == 2


def test_corrupt_image_names_index_and_file(tmp_path, offline):
    images = load_image_dataset(train_data_dir=_image_folder(tmp_path, [(8, 8)] * 2, corrupt=True),
                                cache_dir=offline)
    dataset = ImageDataset(images, resolution=8)
    bad = next(i for i in range(len(images)) if "9_bad.png" in images.describe(i))
    with pytest.raises(ValueError, match=rf"image {bad} .*9_bad\.png.* cannot be read.*remove or replace"):
        dataset[bad]
    good = [i for i in range(len(images)) if i != bad]
    assert len(good) == 2
    assert all(dataset[i]["pixel_values"].shape == (3, 8, 8) for i in good)  # the others still load


def test_mixed_sizes(tmp_path, offline):
    images = load_image_dataset(train_data_dir=_image_folder(tmp_path, [(8, 8), (8, 8), (6, 10)]),
                                cache_dir=offline)
    dataset = ImageDataset(images, resolution=None)
    odd = next(i for i in range(3) if "2.png" in images.describe(i))
    with pytest.raises(ValueError, match="mixed sizes, so pass a resolution"):
        dataset[odd]
    resized = ImageDataset(images, resolution=4)
    assert {tuple(pixel_values(resized, i).shape) for i in range(3)} == {(3, 4, 4)}


def test_parquet_folder_with_img_column(tmp_path, offline):
    import datasets

    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    pictures = [PIL.Image.fromarray(np.full((4, 4), value, np.uint8)) for value in (0, 255)]
    folder = tmp_path / "parquet"
    folder.mkdir()
    datasets.Dataset.from_dict({"img": pictures, "label": [0, 1]}, features=features).to_parquet(
        str(folder / "train.parquet"))

    images = load_image_dataset(dataset_name=str(folder), cache_dir=offline)
    assert images.column == "img"
    values = ImageDataset(images, resolution=4, num_channels=1)
    assert torch.equal(pixel_values(values, 1), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="'label' of .* holds .*not images"):
        load_image_dataset(dataset_name=str(folder), image_column="label", cache_dir=offline)
    with pytest.raises(ValueError, match=r"'pixels' is not a column; the columns are: img \(Image\), label"):
        load_image_dataset(dataset_name=str(folder), image_column="pixels", cache_dir=offline)


def test_find_image_column(offline):
    from datasets import Features, Image, Value

    assert find_image_column(Features({"img": Image(), "label": Value("int64")})) == "img"
    assert find_image_column(Features({"picture": Image(), "label": Value("int64")})) == "picture"
    # several image columns: the one with the usual name; none: a column with that name
    assert find_image_column(Features({"image": Image(), "mask": Image()})) == "image"
    assert find_image_column(Features({"image": Value("string"), "label": Value("int64")})) == "image"
    assert find_image_column(Features({"a": Image(), "b": Image()}), image_column="b") == "b"
    with pytest.raises(ValueError, match=r"several image columns; pass image_column, one of: image \(Image\), img \(Image\)"):
        find_image_column(Features({"image": Image(), "img": Image()}))
    with pytest.raises(ValueError, match=r"no image column; pass image_column, one of: text \(Value\)"):
        find_image_column(Features({"text": Value("string")}))


def test_image_column_of_paths(tmp_path, offline):
    """A string column of file paths named "image" is read as images."""
    png = write_png(tmp_path / "a.png", np.full((5, 5, 3), 255, np.uint8))
    dataset = ImageDataset(TableImages(_table_of_paths([png]), "image", "paths"), resolution=5)
    assert torch.equal(pixel_values(dataset), torch.ones(3, 5, 5))
