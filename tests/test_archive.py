"""FeatureArchive gives h5py's values whatever way HDF5 reaches a video's dataset, or an InputError."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from cnm_runtime import archive as archive_module
from cnm_runtime.archive import C3D_DATASET, FeatureArchive
from cnm_runtime.errors import InputError
from cnm_runtime.options import ArchiveOptions

FEATURES = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)


def write_other(path, padding_rows: int = 1000) -> None:
    """A second file whose datasets sit at offsets of their own: read from the wrong file, they are garbage."""
    with h5py.File(path, "w") as other:
        other["padding"] = np.full((padding_rows, 8), 5.4e7, np.float32)
        other["v"] = FEATURES
        other.create_group("group")[C3D_DATASET] = FEATURES


def virtual(out: h5py.File, name: str, *sources: tuple[str, str]) -> None:
    """A virtual dataset stacking the rows of ``sources`` ((file, dataset) pairs, each as FEATURES)."""
    rows = FEATURES.shape[0]
    layout = h5py.VirtualLayout(shape=(rows * len(sources), FEATURES.shape[1]), dtype=np.float32)
    for index, (file, dataset) in enumerate(sources):
        layout[index * rows:(index + 1) * rows] = h5py.VirtualSource(file, dataset, shape=FEATURES.shape)
    out.create_virtual_dataset(name, layout)


# Each video of the archive below, and what its values are
EXPECTED = {
    "contiguous": FEATURES,
    "external_link": FEATURES,
    "external_link_to_group": FEATURES,
    "soft_link": FEATURES,
    "hard_link": FEATURES,
    "virtual": FEATURES,
    "virtual_two_files": np.concatenate([FEATURES, FEATURES]),
    "external_raw": FEATURES,
    "chunked": FEATURES,
    "gzip": FEATURES,
    "lzf": FEATURES,
    "shuffle_gzip": FEATURES,
    "big_endian": FEATURES.astype(">f4"),
    "big_endian_chunked": FEATURES.astype(">f8"),
    "float16": FEATURES.astype(np.float16),
    "float64": FEATURES.astype(np.float64),
    "int32": (FEATURES * 100).astype(np.int32),
    "uint8": (np.abs(FEATURES) * 50).astype(np.uint8),
    "group": FEATURES,
}


@pytest.fixture
def archive_path(tmp_path):
    write_other(tmp_path / "other.h5")
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w", userblock_size=512) as out:  # a user block shifts every offset
        out["filler"] = np.full((2000, 8), 5.4e7, np.float32)  # other.h5's offsets lie inside this file too
        out["contiguous"] = FEATURES
        out["external_link"] = h5py.ExternalLink("other.h5", "v")
        out["external_link_to_group"] = h5py.ExternalLink("other.h5", "group")
        out["soft_link"] = h5py.SoftLink("/contiguous")
        out["hard_link"] = out["contiguous"]
        virtual(out, "virtual", ("other.h5", "v"))
        virtual(out, "virtual_two_files", ("other.h5", "v"), (".", "contiguous"))
        out.create_dataset("external_raw", data=FEATURES, external=[(str(tmp_path / "raw.bin"), 0, FEATURES.nbytes)])
        out.create_dataset("chunked", data=FEATURES, chunks=(4, 8))
        out.create_dataset("gzip", data=FEATURES, compression="gzip")
        out.create_dataset("lzf", data=FEATURES, compression="lzf")
        out.create_dataset("shuffle_gzip", data=FEATURES, compression="gzip", shuffle=True)
        out["big_endian"] = EXPECTED["big_endian"]
        out.create_dataset("big_endian_chunked", data=EXPECTED["big_endian_chunked"], chunks=(2, 8))
        for name in ("float16", "float64", "int32", "uint8"):
            out[name] = EXPECTED[name]
        out.create_group("group")[C3D_DATASET] = FEATURES
    return path


@pytest.mark.parametrize("video", sorted(EXPECTED))
def test_every_way_to_reach_a_dataset_gives_h5pys_values(archive_path, video):
    with h5py.File(archive_path, "r") as plain:
        node = plain[video]
        by_h5py = (node[C3D_DATASET] if isinstance(node, h5py.Group) else node)[()]
    with FeatureArchive(archive_path) as archive:
        values = archive.load(video).features
    np.testing.assert_array_equal(by_h5py, EXPECTED[video])
    assert values.dtype == by_h5py.dtype
    np.testing.assert_array_equal(values, by_h5py)


def test_only_a_datasets_own_contiguous_bytes_in_this_file_are_read_straight(archive_path, monkeypatch):
    straight = []
    preadv = os.preadv
    monkeypatch.setattr(archive_module.os, "preadv", lambda fd, buffers, offset: straight.append(1) or
                        preadv(fd, buffers, offset))
    with FeatureArchive(archive_path) as archive:
        for video in EXPECTED:
            straight.clear()
            archive.load(video)
            assert bool(straight) == (video in ("contiguous", "soft_link", "hard_link", "big_endian", "float16",
                                                "float64", "int32", "uint8", "group")), video


def test_a_nul_in_a_name_is_no_video(archive_path):
    with FeatureArchive(archive_path) as archive, pytest.raises(InputError) as caught:
        archive.load("contiguous\x00other")
    assert caught.value.code == "unknown_video"


@pytest.mark.parametrize("video, reason", [
    ("missing_file", "external link to 'v' in 'gone.h5'"),
    ("missing_dataset", "external link to 'nope' in 'other.h5'"),
    ("dangling_soft_link", "soft link to '/nowhere'"),
    ("virtual_missing_file", "source file 'gone.h5' of its virtual dataset is missing"),
    ("virtual_missing_dataset", "source 'nope' in 'other.h5' of its virtual dataset is missing"),
    ("external_raw_missing", "gone.bin cannot be used"),
])
def test_a_link_that_leads_nowhere_is_an_unreadable_video(tmp_path, video, reason):
    write_other(tmp_path / "other.h5")
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out["missing_file"] = h5py.ExternalLink("gone.h5", "v")
        out["missing_dataset"] = h5py.ExternalLink("other.h5", "nope")
        out["dangling_soft_link"] = h5py.SoftLink("/nowhere")
        virtual(out, "virtual_missing_file", ("gone.h5", "v"))
        virtual(out, "virtual_missing_dataset", ("other.h5", "nope"))
        out.create_dataset("external_raw_missing", shape=FEATURES.shape, dtype=np.float32,
                           external=[(str(tmp_path / "gone.bin"), 0, FEATURES.nbytes)])
    with FeatureArchive(path) as archive, pytest.raises(InputError) as caught:
        archive.load(video)
    assert caught.value.code == "unreadable_video"
    assert repr(video) in caught.value.message and reason in caught.value.message


@pytest.fixture
def linked_both_ways(tmp_path):
    """An archive in ``inside/`` reaching files beside it and in ``outside/`` every way there is."""
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    write_other(inside / "beside.h5")
    write_other(outside / "far.h5")
    with h5py.File(inside / "beside.h5", "a") as beside:  # a file beside it that links outside in turn
        beside["far"] = h5py.ExternalLink("../outside/far.h5", "v")
    os.symlink(outside / "far.h5", inside / "symlink.h5")
    path = inside / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out["link_beside"] = h5py.ExternalLink("beside.h5", "v")
        out["link_outside"] = h5py.ExternalLink("../outside/far.h5", "v")
        out["link_through_symlink"] = h5py.ExternalLink("symlink.h5", "v")
        out["link_beside_then_outside"] = h5py.ExternalLink("beside.h5", "far")
        out["group_outside"] = h5py.ExternalLink(str(outside / "far.h5"), "group")
        virtual(out, "virtual_beside", ("beside.h5", "v"))
        virtual(out, "virtual_outside", ("beside.h5", "v"), ("../outside/far.h5", "v"))
        virtual(out, "virtual_beside_then_outside", ("beside.h5", "far"))
        for name, folder in (("raw_beside", inside), ("raw_outside", outside)):
            out.create_dataset(name, data=FEATURES, external=[(str(folder / f"{name}.bin"), 0, FEATURES.nbytes)])
    return path


@pytest.mark.parametrize("video, outside", [
    ("link_beside", False), ("virtual_beside", False), ("raw_beside", False),
    ("link_outside", True), ("link_through_symlink", True), ("link_beside_then_outside", True),
    ("group_outside", True), ("virtual_outside", True), ("virtual_beside_then_outside", True),
    ("raw_outside", True),
])
def test_links_outside_the_archives_folder_are_followed_or_refused(linked_both_ways, video, outside):
    with FeatureArchive(linked_both_ways) as archive:
        values = archive.load(video).features
    assert values.shape[1] == FEATURES.shape[1]
    with FeatureArchive(linked_both_ways, ArchiveOptions(follow_outside_links=False)) as archive:
        if not outside:
            np.testing.assert_array_equal(archive.load(video).features, values)
            return
        with pytest.raises(InputError) as caught:
            archive.load(video)
    assert caught.value.code == "link_outside_archive" and repr(video) in caught.value.message
