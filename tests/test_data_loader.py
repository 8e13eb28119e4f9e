import torch
from torch.utils.data import DataLoader

from unclip.data.loader import EmojiShards


def _keys(ds):
    return [s["key"] for s in ds]


def test_samples_have_requested_resolution_and_range(built_dataset):
    s = next(iter(EmojiShards(built_dataset, resolution=32)))
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert -1.0 <= s["image"].min() < s["image"].max() <= 1.0
    assert isinstance(s["caption"], str) and s["caption"]


def test_ranks_and_workers_partition_the_split(built_dataset):
    full = _keys(EmojiShards(built_dataset, shuffle=False, resolution=8))
    assert len(full) == EmojiShards(built_dataset).num_samples
    for world in (2, 3, 64):  # fewer and more readers than shards
        parts = [_keys(EmojiShards(built_dataset, resolution=8, rank=r, world_size=world)) for r in range(world)]
        assert sorted(k for p in parts for k in p) == sorted(full), f"world={world}: each sample exactly once"
    dl = DataLoader(EmojiShards(built_dataset, resolution=8), batch_size=4, num_workers=2)
    keys = [k for b in dl for k in b["key"]]
    assert sorted(keys) == sorted(full)


def test_epochs_shuffle_differently_and_reproducibly(built_dataset):
    ds = EmojiShards(built_dataset, resolution=8, seed=3)
    a = _keys(ds)
    assert a == _keys(ds)
    ds.set_epoch(1)
    assert _keys(ds) != a and sorted(_keys(ds)) == sorted(a)


def test_min_native_size_keeps_only_large_artwork(built_dataset):
    big = list(EmojiShards(built_dataset, split="train", resolution=8, min_native_size=128))
    assert big == [] or all(s["native_size"] >= 128 for s in big)
    small = list(EmojiShards(built_dataset, split="train", resolution=8))
    assert any(s["native_size"] == 64 for s in small)


def test_bad_split_and_missing_dataset_are_clear(built_dataset, tmp_path):
    import pytest

    with pytest.raises(ValueError, match="split 'valid' has no shards; splits:"):
        EmojiShards(built_dataset, split="valid")
    with pytest.raises(FileNotFoundError, match="run `unclip data build` first"):
        EmojiShards(tmp_path)
