"""Datasets, transforms and the resumable, shardable batch order."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from training.data import (DatasetNotFoundError, get_data_inverse_scaler, get_data_scaler,
                           load_dataset, random_flip, read_idx, uniform_dequantize)
from training.pipeline import BatchOrder, augment, shard_slice

# MNIST is not in the repository: tests that need its test split look where training.data does
# ($SCORE_SDE_DATA/mnist, else ./data/mnist) and skip without it.
MNIST = Path(os.environ.get("SCORE_SDE_DATA", "data")) / "mnist"


def _cfg(dataset, size, channels=1, **data):
    c = ConfigDict()
    base = dict(dataset=dataset, image_size=size, num_channels=channels, centered=False,
                random_flip=False, uniform_dequantization=False)
    c.data = ConfigDict({**base, **data})
    return c


def test_digits_offline_split_and_range():
    train = load_dataset(_cfg("DIGITS", 8), "train")
    test = load_dataset(_cfg("digits", 8), "test")
    assert len(train) == 1497 and len(test) == 300
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= y <= 9
    assert train.images.min() == 0 and train.images.max() == 1
    levels = torch.unique(train.images * 16)
    assert torch.allclose(levels, levels.round()) and len(levels) == 17
    big = load_dataset(_cfg("DIGITS", 16), "test")
    assert big[0][0].shape == (1, 16, 16)


def test_mnist_idx_files():
    d = MNIST
    if not (d / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test split not found under {d}")
    ds = load_dataset(_cfg("MNIST", 28), "test", data_dir=d)
    assert len(ds) == 10000
    assert ds.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test labels
    x, _ = ds[0]
    assert x.shape == (1, 28, 28) and x.max() == 1.0 and x.min() == 0.0
    assert load_dataset(_cfg("MNIST", 32), "test", data_dir=d)[0][0].shape == (1, 32, 32)


def test_missing_files_say_which_where_and_how(tmp_path):
    # download=False: the message for files that are not there (downloads: test_download.py)
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset(_cfg("MNIST", 28, download=False), "train", data_dir=tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg and "http" in msg
    with pytest.raises(DatasetNotFoundError, match="binary version"):
        load_dataset(_cfg("CIFAR10", 32, 3, download=False), "train", data_dir=tmp_path)
    with pytest.raises(NotImplementedError, match="FOLDER' or 'NPZ'"):
        load_dataset(_cfg("CELEBA", 64, 3), "train")
    with pytest.raises(ValueError, match="unknown config.data.dataset"):
        load_dataset(_cfg("NOPE", 8), "train")


def test_idx_reader_rejects_bad_files(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")
    with pytest.raises(ValueError, match="header says"):
        read_idx(p)


def test_cifar10_binary_layout(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)  # [N, C, H, W]
    labels = np.array([3, 9, 0], dtype=np.uint8)
    rec = np.concatenate([labels[:, None], imgs.reshape(3, -1)], axis=1)
    (d / "test_batch.bin").write_bytes(rec.tobytes())
    ds = load_dataset(_cfg("CIFAR10", 32, 3), "test", data_dir=tmp_path)
    assert ds.labels.tolist() == [3, 9, 0]
    torch.testing.assert_close(ds[1][0], torch.from_numpy(imgs[1]).float() / 255)


def test_image_folder_labels_and_pixels(tmp_path):
    from PIL import Image
    for cls, value in (("cats", 40), ("dogs", 200)):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(2):
            arr = np.full((12, 10, 3), value + i, dtype=np.uint8)  # 10 wide, 12 high
            Image.fromarray(arr).save(tmp_path / "train" / cls / f"{i}.png")
    ds = load_dataset(_cfg("FOLDER", 10, 3, path=str(tmp_path)), "train")
    assert len(ds) == 4 and ds.labels.tolist() == [0, 0, 1, 1]
    x, _ = ds[3]
    assert x.shape == (3, 10, 10)
    torch.testing.assert_close(x, torch.full_like(x, 201 / 255))


def test_npz_layouts_and_errors(tmp_path):
    hwc = np.random.default_rng(1).integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    p = tmp_path / "d.npz"
    np.savez(p, images=hwc, labels=np.arange(5))
    ds = load_dataset(_cfg("NPZ", 4, 3, path=str(p)), "train")
    torch.testing.assert_close(ds[2][0], torch.from_numpy(hwc[2]).permute(2, 0, 1).float() / 255)
    assert ds.labels.tolist() == [0, 1, 2, 3, 4]
    np.savez(p, images=np.full((2, 4, 4), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        load_dataset(_cfg("NPZ", 4, 1, path=str(p)), "train")
    np.savez(p, pixels=hwc)
    with pytest.raises(KeyError, match="no 'images'"):
        load_dataset(_cfg("NPZ", 4, 3, path=str(p)), "train")


def test_scalers_and_dequantization():
    c = _cfg("DIGITS", 8, centered=True)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(get_data_scaler(c)(x), 2 * x - 1)
    torch.testing.assert_close(get_data_inverse_scaler(c)(get_data_scaler(c)(x)), x)
    levels = torch.randint(0, 256, (2000, 1, 2, 2)).float() / 255
    dq = uniform_dequantize(levels, generator=torch.Generator().manual_seed(0))
    assert dq.min() >= 0 and dq.max() < 1
    # Each value stays in its own bin [k/256, (k+1)/256) and the offset is U[0, 1).
    k = (levels * 255).round()
    off = dq * 256 - k
    assert off.min() >= 0 and off.max() < 1 and abs(off.mean().item() - 0.5) < 0.02
    flipped = random_flip(x, generator=torch.Generator().manual_seed(1))
    for a, b in zip(x, flipped):
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)


def test_augment_same_rows_for_any_number_of_processes():
    c = _cfg("DIGITS", 8, random_flip=True, uniform_dequantization=True, centered=True)
    x = torch.rand(8, 1, 8, 8)
    whole = augment(x, c, generator=torch.Generator().manual_seed(2), global_batch=8)
    for rank in range(2):
        rows = shard_slice(8, rank, 2)
        part = augment(x[rows], c, generator=torch.Generator().manual_seed(2), global_batch=8,
                       rows=rows)
        torch.testing.assert_close(part, whole[rows])


def test_batch_order_epochs_resume_and_shards():
    order = BatchOrder(10, 3, seed=7)
    batches = [order.next() for _ in range(3)]  # 9 of 10 items; the tail is dropped
    assert len(torch.unique(torch.cat(batches))) == 9
    state = order.state_dict()
    ahead = [order.next() for _ in range(5)]
    resumed = BatchOrder(10, 3, seed=7)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed.next()) for a in ahead)
    assert not torch.equal(BatchOrder(10, 3, seed=8).next(), batches[0])
    with pytest.raises(ValueError, match="batch_size"):
        BatchOrder(10, 4, seed=7).load_state_dict(state)
    with pytest.raises(ValueError, match="divisible"):
        shard_slice(6, 0, 4)
    assert [shard_slice(6, r, 3) for r in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 6)]


def test_truncated_normal_dequantization_of_training_data():
    c = _cfg("DIGITS", 8, centered=False)
    c.data.dequantization, c.data.dequantization_std, c.data.levels = "truncated_normal", 0.01, 17
    x = torch.randint(0, 17, (64, 1, 8, 8)).float() / 16
    whole = augment(x, c, generator=torch.Generator().manual_seed(2), global_batch=64)
    off = whole - x
    assert off.abs().max() <= 0.5 / 16 + 1e-6 and off.std() > 0.008  # in the level's bin
    assert abs(off.mean().item()) < 1e-3 and off.std() < 0.01  # truncation narrows N(0, 0.01^2)
    for rank in range(2):  # the same rows for any number of processes
        rows = shard_slice(64, rank, 2)
        part = augment(x[rows], c, generator=torch.Generator().manual_seed(2), global_batch=64,
                       rows=rows)
        torch.testing.assert_close(part, whole[rows])
    c.data.dequantization_std = 0.0
    with pytest.raises(ValueError, match="dequantization_std"):
        augment(x, c, generator=torch.Generator().manual_seed(2))
    c.data.dequantization = "gaussian"
    with pytest.raises(ValueError, match="truncated_normal"):
        augment(x, c)
