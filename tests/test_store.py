"""The item store: content hashes, per-item datasets declared (not guessed), shards combined."""

import h5py
import numpy as np
import pytest

from cmbscat.store import (CONTENT_ATTR, ItemWriter, combine_shards, content_digest, content_hash,
                           differing_keys)


def _write(path, params, start, stop, n_channels=7):
    """A file like a scattering shard: per-item coeffs, labels, seeds; a whole-file /paths (C, 2)."""
    writer = ItemWriter(path, params, start, stop)
    for i in writer.pending():
        writer.put(i, {"coeffs": np.full((n_channels, 12), i, np.float32)})
    paths = np.arange(2 * n_channels).reshape(n_channels, 2)
    writer.finalize(per_item={"labels": np.arange(start, stop) % 2, "seeds": np.arange(start, stop)},
                    whole={"paths": paths}, attrs={"kind": "test"})
    return paths


def test_paths_are_not_concatenated_when_a_shard_has_as_many_maps_as_channels(tmp_path):
    """The review's case: 14 maps, 2 shards, 7 channels; /paths must stay (7, 2)."""
    parts = []
    for k, (start, stop) in enumerate([(0, 7), (7, 14)]):
        parts.append(tmp_path / f"part{k}.h5")
        paths = _write(parts[-1], {"n_maps": 14, "shard": f"{k}/2"}, start, stop)
    assert combine_shards(tmp_path / "all.h5", parts) == 14
    with h5py.File(tmp_path / "all.h5", "r") as f:
        assert f["paths"].shape == (7, 2) and np.array_equal(f["paths"][()], paths)
        assert f["coeffs"].shape == (14, 7, 12) and f["labels"].shape == (14,)
        assert sorted(f.attrs["per_item_datasets"]) == ["coeffs", "labels", "seeds"]


def test_content_hash_is_the_data_and_the_same_sharded_or_not(tmp_path):
    _write(tmp_path / "whole.h5", {"n_maps": 14, "shard": None}, 0, 14)
    parts = [tmp_path / "a.h5", tmp_path / "b.h5"]
    _write(parts[0], {"n_maps": 14, "shard": "0/2"}, 0, 5)
    _write(parts[1], {"n_maps": 14, "shard": "1/2"}, 5, 14)
    combine_shards(tmp_path / "all.h5", parts)
    with h5py.File(tmp_path / "whole.h5", "r") as f:
        recorded = f.attrs[CONTENT_ATTR]
        assert recorded == content_digest(f)  # recorded while writing == recomputed from the data
    assert content_hash(tmp_path / "all.h5") == recorded
    # a file written by another program (no recorded hash) is hashed from its data
    with h5py.File(tmp_path / "whole.h5", "r") as src, h5py.File(tmp_path / "foreign.h5", "w") as dst:
        for name in src:
            dst.create_dataset(name, data=src[name][()])
    assert content_hash(tmp_path / "foreign.h5") == recorded
    with h5py.File(tmp_path / "foreign.h5", "r+") as f:
        f["coeffs"][3, 0, 0] += 1.0
    assert content_hash(tmp_path / "foreign.h5") != recorded


def test_differing_keys_compare_values_and_respect_defaults():
    assert differing_keys({"fnl": 2000}, {"fnl": 2000.0}) == []
    assert differing_keys({"fnl": 2000}, {"fnl": "2000"}) == ["fnl"]
    assert differing_keys({"a": 1}, {"a": 1, "gnl": 0.0}, defaults={"gnl": 0.0}) == []
    assert differing_keys({"a": 1}, {"a": 1, "gnl": 5.0}, defaults={"gnl": 0.0}) == ["gnl"]
    assert differing_keys({"a": 1, "b": 2}, {"a": 1}) == ["b"]


def test_writer_accepts_an_older_file_whose_missing_settings_are_defaults(tmp_path):
    _write(tmp_path / "f.h5", {"n_maps": 4}, 0, 4)
    assert ItemWriter(tmp_path / "f.h5", {"n_maps": 4, "new": None}, 0, 4, defaults={"new": None}).complete
    from cmbscat.errors import CmbscatError

    with pytest.raises(CmbscatError, match="new None != 3"):
        ItemWriter(tmp_path / "f.h5", {"n_maps": 4, "new": 3}, 0, 4, defaults={"new": None})
