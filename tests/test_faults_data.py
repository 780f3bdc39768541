"""Bad input files are refused with one-line errors naming the file, info files never run code, and
train-mode augmentation depends only on (seed, epoch, sample index).

Damaged files live in tmp_path roots that mirror the shared synthetic world through symlinks
(`damaged_root`); the session fixture itself is never written to.
"""
import json
import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import prepare_nuscenes, prepare_occbev, transforms
from datasets.nuscenes_occ import NuScenesOccDataset, collate, load_infos, load_occ_gt
from datasets.occbev_targets import load_occbev_target, save_occbev_target
from occ.errors import DataError, UsageError

REPO = Path(__file__).resolve().parents[1]
VERSION = "v1.0-mini"
TINY = (32, 88)  # input image size: keeps the camera tests fast


@pytest.fixture(scope="module")
def infos_dir(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("fault_infos")
    prepare_nuscenes.prepare(synthetic_root, VERSION, out_dir=str(out))
    return out


@pytest.fixture(scope="module")
def train_info(infos_dir):
    return str(infos_dir / "occ_infos_mini_train.pkl")


def damaged_root(tmp_path, source_root, relative_path, content):
    """A root mirroring `source_root` through symlinks in which only `relative_path` is a real file
    holding `content` (bytes; None = the file is absent). Returns the root (str)."""
    root = tmp_path / "root"
    src, dst = Path(source_root), root
    for part in Path(relative_path).parts:
        dst.mkdir(parents=True, exist_ok=True)
        for entry in os.listdir(src):
            if entry != part:
                (dst / entry).symlink_to(src / entry)
        src, dst = src / part, dst / part
    if content is not None:
        dst.write_bytes(content)
    return str(root)


def names(path):
    """A regex matching the path's file name in an error message."""
    return re.escape(os.path.basename(str(path)))


def write_pickle(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


# --------------------------------------------------------------------------- info files: no code
class RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_info_file_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "MARKER"
    path = write_pickle(tmp_path / "evil.pkl", {"version": "x", "split": "x",
                                                "infos": [RunsShell(f"touch {marker}")]}, protocol)
    with pytest.raises(DataError, match=names(path) + r".*tries to load '(posix|os|nt)\.system'.*numpy arrays"):
        load_infos(path)
    with pytest.raises(DataError, match="system"):
        NuScenesOccDataset("/nonexistent", path, train=True)
    assert not marker.exists()
    path = write_pickle(tmp_path / "eval.pkl", CallsEval(), protocol)
    with pytest.raises(DataError, match=names(path) + r".*'(builtins|__builtin__)\.eval'"):
        load_infos(path)


def assert_same(a, b):
    """Recursive equality of plain containers and numpy arrays, types included."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    else:
        assert a == b or (a != a and b != b)  # NaN


def test_prepared_info_files_round_trip_through_every_pickle_protocol(train_info, infos_dir, tmp_path):
    infos = load_infos(train_info)  # what datasets/prepare_nuscenes.py wrote
    assert len(infos) == 3 and all(len(info["cams"]) == 6 for info in infos)
    with open(train_info, "rb") as f:
        reference = pickle.load(f)  # test-only: the file was written by this very test session
    extras = {"scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), 2j, None], "set": {1, 2},
              "frozenset": frozenset("ab"), "bytes": b"\x00\xff", "bytearray": bytearray(b"xy"),
              "strided": np.arange(12.0).reshape(3, 4).T, "strings": np.array(["a", "bc"])}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = dict(reference, extras=extras)
        path = write_pickle(tmp_path / f"p{protocol}.pkl", data, protocol)
        loaded = load_infos(path)
        assert_same(loaded, reference["infos"])
        with open(path, "rb") as f:
            from datasets.nuscenes_occ import InfoUnpickler
            assert_same(InfoUnpickler(f, path).load()["extras"], extras)
    assert sorted(load_infos(str(infos_dir / "occ_infos_mini_val.pkl"))[0]) == sorted(infos[0])


def test_numpy2_pickles_are_allowed(train_info, tmp_path):
    """numpy 2 writes numpy._core.multiarray where numpy 1 writes numpy.core.multiarray."""
    with open(train_info, "rb") as f:
        data = pickle.load(f)
    raw = pickle.dumps(data, protocol=2)
    assert b"cnumpy.core.multiarray\n" in raw
    path = tmp_path / "numpy2.pkl"
    path.write_bytes(raw.replace(b"cnumpy.core.multiarray\n", b"cnumpy._core.multiarray\n"))
    assert_same(load_infos(str(path)), data["infos"])


def bad_info_files(tmp_path, train_info):
    good = Path(train_info).read_bytes()
    with open(train_info, "rb") as f:
        data = pickle.load(f)
    record = dict(data["infos"][0])
    del record["lidar_path"]
    return {
        "empty": (b"", "empty"),
        "truncated": (good[:len(good) // 2], "corrupt info file"),
        "one byte short": (good[:-1], "corrupt info file"),
        "not a pickle": (b"version: 1\ninfos: []\n", "corrupt info file"),
        "no samples": (pickle.dumps({"version": "x", "split": "x", "infos": []}), "holds no samples"),
        "a list": (pickle.dumps([1, 2]), "expected a dict"),
        "infos not a list": (pickle.dumps({"infos": {"a": 1}}), "expected a dict"),
        "record not a dict": (pickle.dumps({"infos": ["token"]}), "record 0 is a str"),
        "record lacks keys": (pickle.dumps({"infos": [record]}), r"record 0 lacks \['lidar_path'\]"),
    }


@pytest.mark.parametrize("case", ["empty", "truncated", "one byte short", "not a pickle", "no samples", "a list",
                                  "infos not a list", "record not a dict", "record lacks keys"])
def test_bad_info_file_is_named(case, tmp_path, train_info):
    content, message = bad_info_files(tmp_path, train_info)[case]
    path = tmp_path / "occ_infos_bad.pkl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        load_infos(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_info_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=names(tmp_path / "occ_infos_none.pkl")):
        load_infos(str(tmp_path / "occ_infos_none.pkl"))


# ----------------------------------------------------------------------------- occupancy GT
def gt_arrays(synthetic_root, info, gt_dir="gts"):
    with np.load(os.path.join(synthetic_root, gt_dir, info["scene_name"], info["token"], "labels.npz")) as npz:
        return {key: npz[key] for key in npz.files}


def npz_bytes(tmp_path, **arrays):
    path = tmp_path / "made.npz"
    np.savez_compressed(path, **arrays)
    return path.read_bytes()


def corrupt_middle(data):
    data = bytearray(data)
    start = len(data) // 3
    data[start:start + 64] = bytes(64)
    return bytes(data)


def bad_gt_files(tmp_path, synthetic_root, info):
    occ3d_gt = gt_arrays(synthetic_root, info)
    openocc_gt = gt_arrays(synthetic_root, info, "openocc_v2")
    good = Path(synthetic_root, "gts", info["scene_name"], info["token"], "labels.npz").read_bytes()

    def changed(gt, **changes):
        return npz_bytes(tmp_path, **{**gt, **changes})

    sem = occ3d_gt["semantics"]
    np.save(tmp_path / "single.npy", sem)
    return {
        "empty": (b"", "unreadable occupancy GT.*EOFError"),
        "truncated": (good[:len(good) // 2], "unreadable occupancy GT.*BadZipFile"),
        "corrupt": (corrupt_middle(good), "unreadable occupancy GT"),
        "not an archive": (b"\x93NUMPY garbage", "unreadable occupancy GT"),
        "single array": ((tmp_path / "single.npy").read_bytes(), "single .npy array"),
        "missing key": (npz_bytes(tmp_path, semantics=sem, mask_camera=occ3d_gt["mask_camera"]),
                        "lacks 'mask_lidar'"),
        "wrong shape": (changed(occ3d_gt, semantics=sem[:100]), "'semantics' has shape"),
        "float semantics": (changed(occ3d_gt, semantics=sem.astype(np.float32)), "dtype float32, expected integer"),
        "bool semantics": (changed(occ3d_gt, semantics=sem > 3), "dtype bool, expected integer"),
        "label 18": (changed(occ3d_gt, semantics=np.where(sem == 5, 18, sem).astype(np.uint8)),
                     r"outside \[0, 17\] \(Occ3D\)"),
        "negative label": (changed(occ3d_gt, semantics=np.where(sem == 5, -1, sem).astype(np.int16)),
                           r"outside \[0, 17\]"),
        "openocc label 17": (changed(openocc_gt, semantics=np.where(openocc_gt["semantics"] == 3, 17,
                                                                     openocc_gt["semantics"]).astype(np.uint8)),
                             r"outside \[0, 16\] \(OpenOcc v2\)"),
        "mask of 2": (changed(occ3d_gt, mask_camera=occ3d_gt["mask_camera"] * 2),
                      "'mask_camera' holds values other than 0 and 1"),
        "float mask": (changed(occ3d_gt, mask_lidar=occ3d_gt["mask_lidar"].astype(np.float32)),
                       "'mask_lidar' has dtype float32"),
        "int flow": (changed(openocc_gt, flow=openocc_gt["flow"].astype(np.int32)), "'flow' has dtype int32"),
    }


GT_CASES = ["empty", "truncated", "corrupt", "not an archive", "single array", "missing key", "wrong shape",
            "float semantics", "bool semantics", "label 18", "negative label", "openocc label 17", "mask of 2",
            "float mask", "int flow"]


@pytest.mark.parametrize("case", GT_CASES)
def test_bad_gt_file_is_named(case, tmp_path, synthetic_root, train_info):
    info = load_infos(train_info)[0]
    content, message = bad_gt_files(tmp_path, synthetic_root, info)[case]
    path = tmp_path / "labels.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        load_occ_gt(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_good_gt_files_load_with_bool_or_01_masks(tmp_path, synthetic_root, train_info):
    info = load_infos(train_info)[0]
    for gt_dir in ("gts", "openocc_v2"):
        gt = load_occ_gt(os.path.join(synthetic_root, gt_dir, info["scene_name"], info["token"], "labels.npz"))
        assert gt["semantics"].dtype == np.int64 and gt["mask_camera"].dtype == bool
        assert ("flow" in gt) == (gt_dir == "openocc_v2")
    arrays = gt_arrays(synthetic_root, info)
    path = tmp_path / "bool.npz"
    np.savez(path, semantics=arrays["semantics"].astype(np.int32), mask_camera=arrays["mask_camera"] > 0,
             mask_lidar=arrays["mask_lidar"].astype(np.int64))
    np.testing.assert_array_equal(load_occ_gt(str(path))["mask_lidar"], arrays["mask_lidar"] > 0)


def test_missing_gt_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.npz"):
        load_occ_gt(str(tmp_path / "labels.npz"))


def test_truncated_occbev_target_is_named(tmp_path):
    path = tmp_path / "token.npz"
    save_occbev_target(path, np.zeros((200, 200, 16), bool))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=names(path)):
        load_occbev_target(path)
    path.write_bytes(b"")
    with pytest.raises(DataError, match=names(path)):
        load_occbev_target(path)
    np.savez(path, other=np.zeros(3))
    with pytest.raises(DataError, match=names(path) + ".*'occupied'") as error:
        load_occbev_target(path)
    assert isinstance(error.value, KeyError) and str(error.value).startswith("Occ-BEV")  # no KeyError quotes


# ------------------------------------------------------------------------------ predictions
@pytest.fixture(scope="module")
def evaluate_module():
    import evaluate
    return evaluate


@pytest.mark.parametrize("case", ["empty", "truncated", "corrupt", "not an archive", "single array", "two arrays",
                                  "float", "label 18"])
def test_bad_prediction_is_named(case, tmp_path, evaluate_module):
    pred = np.random.default_rng(0).integers(0, 18, (200, 200, 16)).astype(np.uint8)
    good = npz_bytes(tmp_path, semantics=pred)
    np.save(tmp_path / "single.npy", pred)
    content, message = {
        "empty": (b"", "EOFError"),
        "truncated": (good[:len(good) // 2], "BadZipFile"),
        "corrupt": (corrupt_middle(good), "unreadable prediction"),
        "not an archive": (b"PK\x03\x04 not really", "unreadable prediction"),
        "single array": ((tmp_path / "single.npy").read_bytes(), "single .npy array"),
        "two arrays": (npz_bytes(tmp_path, a=pred, b=pred), "expected 'semantics' or a single array"),
        "float": (npz_bytes(tmp_path, semantics=pred.astype(np.float32)), "dtype float32"),
        "label 18": (npz_bytes(tmp_path, semantics=pred + 1), r"outside \[0, 17\]"),
    }[case]
    path = tmp_path / "token.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        evaluate_module.load_prediction(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_prediction_round_trip_and_missing(tmp_path, evaluate_module):
    pred = np.random.default_rng(0).integers(0, 18, (200, 200, 16)).astype(np.uint8)
    (tmp_path / "ok.npz").write_bytes(npz_bytes(tmp_path, semantics=pred))
    np.testing.assert_array_equal(evaluate_module.load_prediction(str(tmp_path / "ok.npz")), pred)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        evaluate_module.load_prediction(str(tmp_path / "absent.npz"))


# ------------------------------------------------------------------- point clouds and images
def test_zero_byte_key_frame_and_sweep_are_refused(tmp_path, synthetic_root, train_info):
    infos = load_infos(train_info)
    info = infos[1]  # has 10 sweeps
    assert len(info["sweeps"]) == 10
    for case, relative in [("key", info["lidar_path"]), ("sweep", info["sweeps"][4]["path"])]:
        root = damaged_root(tmp_path / case, synthetic_root, relative, b"")
        dataset = NuScenesOccDataset(root, train_info, train=False, num_sweeps=10, load_images=False,
                                     load_depth=False, load_gt=False)
        with pytest.raises(DataError, match="empty point cloud .*" + names(relative)):
            dataset[1]
        with pytest.raises(DataError, match=names(relative)):
            transforms.load_points(os.path.join(root, relative))
    assert len(transforms.load_points(os.path.join(synthetic_root, info["lidar_path"]))) > 1000


@pytest.mark.parametrize("case", ["empty", "garbage", "truncated"])
def test_undecodable_image_is_named(case, tmp_path, synthetic_root, train_info):
    info = load_infos(train_info)[0]
    relative = info["cams"]["CAM_FRONT"]["path"]
    good = Path(synthetic_root, relative).read_bytes()
    content = {"empty": b"", "garbage": b"this is not a JPEG" * 10, "truncated": good[:len(good) // 3]}[case]
    root = damaged_root(tmp_path, synthetic_root, relative, content)
    dataset = NuScenesOccDataset(root, train_info, train=True, image_size=TINY, load_depth=False,
                                 load_points=False, load_gt=False)
    with pytest.raises(DataError, match="unreadable image .*" + names(relative)) as error:
        dataset[0]
    assert "\n" not in str(error.value)


def test_truncated_gt_through_the_dataset_is_named(tmp_path, synthetic_root, train_info):
    info = load_infos(train_info)[2]
    relative = os.path.join("gts", info["scene_name"], info["token"], "labels.npz")
    good = Path(synthetic_root, relative).read_bytes()
    root = damaged_root(tmp_path, synthetic_root, relative, good[:1000])
    dataset = NuScenesOccDataset(root, train_info, train=True, load_images=False, load_depth=False, num_sweeps=0)
    with pytest.raises(DataError, match=re.escape(relative)):
        dataset[2]


# -------------------------------------------------------------------------- prepare_nuscenes
def table_bytes(synthetic_root, table):
    return Path(synthetic_root, VERSION, f"{table}.json").read_bytes()


def bad_table_roots(tmp_path, synthetic_root):
    sample_data = json.loads(table_bytes(synthetic_root, "sample_data"))
    sample_data[0]["calibrated_sensor_token"] = "no-such-token"
    return {
        "missing table": ("ego_pose.json", None, FileNotFoundError, "nuScenes table missing: .*ego_pose.json"),
        "truncated table": ("sample.json", table_bytes(synthetic_root, "sample")[:500], DataError,
                            "corrupt nuScenes table .*sample.json.*JSONDecodeError"),
        "empty table": ("scene.json", b"", DataError, "corrupt nuScenes table .*scene.json"),
        "not a list": ("log.json", b'{"token": "x"}', DataError, "corrupt nuScenes table .*log.json.*JSON list"),
        "binary table": ("sensor.json", b"\xff\xfe\x00garbage", DataError, "corrupt nuScenes table .*sensor.json"),
        "dangling token": ("sample_data.json", json.dumps(sample_data).encode(), DataError,
                           "do not fit together.*no-such-token"),
    }


@pytest.mark.parametrize("case", ["missing table", "truncated table", "empty table", "not a list", "binary table",
                                  "dangling token"])
def test_bad_nuscenes_table_is_named(case, tmp_path, synthetic_root):
    table, content, error_type, message = bad_table_roots(tmp_path, synthetic_root)[case]
    root = damaged_root(tmp_path, synthetic_root, os.path.join(VERSION, table), content)
    with pytest.raises(error_type, match=message) as error:
        prepare_nuscenes.prepare(root, VERSION, out_dir=str(tmp_path / "out"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")  # nothing half-written


def test_missing_version_folder_and_unknown_version(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(str(tmp_path), VERSION))):
        prepare_nuscenes.prepare(str(tmp_path), VERSION)
    with pytest.raises(UsageError, match="unknown --version 'v2.0'"):
        prepare_nuscenes.prepare(str(tmp_path), "v2.0")


def test_prepare_scripts_print_a_corrupt_table_as_one_line(tmp_path, synthetic_root):
    root = damaged_root(tmp_path, synthetic_root, os.path.join(VERSION, "sample.json"), b"[{")
    result = subprocess.run([sys.executable, str(REPO / "datasets" / "prepare_nuscenes.py"), "--root", root,
                             "--version", VERSION, "--out-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: corrupt nuScenes table") and "sample.json" in lines[0]
    with pytest.raises(DataError, match="sample.json"):  # prepare_occbev loads the tables the same way
        prepare_occbev.main(["--root", root, "--version", VERSION, "--out", str(tmp_path / "targets")])


# ------------------------------------------------------------------ reproducible augmentation
def assert_samples_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        elif isinstance(a[key], list) and torch.is_tensor(a[key][0]):  # a batch's `points`
            assert len(a[key]) == len(b[key]) and all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key
        else:
            assert a[key] == b[key], key


def camera_dataset(root, info, **options):
    options = {"train": True, "image_size": TINY, "num_sweeps": 3, "load_gt": True, **options}
    return NuScenesOccDataset(root, info, **options)


def test_same_seed_epoch_index_gives_identical_samples_in_any_order(synthetic_root, train_info):
    first = camera_dataset(synthetic_root, train_info, seed=7)
    second = camera_dataset(synthetic_root, train_info, seed=7)
    first.set_epoch(3)
    second.set_epoch(3)
    forward = [first[i] for i in range(len(first))]
    torch.manual_seed(123)  # the global RNGs play no part
    np.random.seed(123)
    backward = [second[i] for i in reversed(range(len(second)))][::-1]
    for a, b in zip(forward, backward):
        assert_samples_equal(a, b)
    # a random sweep subset, camera augmentation and flips were all drawn
    assert any(not torch.equal(s["bda"], torch.eye(4)) for s in forward)
    assert len(torch.unique(forward[1]["points"][:, 4])) == 4  # key frame + 3 of 10 sweeps
    assert_samples_equal(forward[0], first[0])  # asking again gives the same sample


def test_epoch_and_seed_change_the_augmentation(synthetic_root, train_info):
    dataset = camera_dataset(synthetic_root, train_info, load_gt=False)
    epoch0 = [dataset[i] for i in range(len(dataset))]
    dataset.set_epoch(1)
    epoch1 = [dataset[i] for i in range(len(dataset))]
    other_seed = camera_dataset(synthetic_root, train_info, load_gt=False, seed=1)
    seed1 = [other_seed[i] for i in range(len(other_seed))]
    for other in (epoch1, seed1):
        for a, b in zip(epoch0, other):
            assert not torch.equal(a["post_rot"], b["post_rot"])  # every sample re-drawn
    with pytest.raises(UsageError, match="epoch"):
        dataset.set_epoch(-1)
    with pytest.raises(UsageError, match="seed"):
        camera_dataset(synthetic_root, train_info, seed=-2)


def test_test_mode_ignores_seed_and_epoch(synthetic_root, train_info):
    dataset = camera_dataset(synthetic_root, train_info, train=False, load_gt=False)
    before = dataset[1]
    dataset.set_epoch(5)
    assert_samples_equal(before, camera_dataset(synthetic_root, train_info, train=False, load_gt=False, seed=9)[1])
    assert_samples_equal(before, dataset[1])


def test_getitem_leaves_the_global_rngs_alone(synthetic_root, train_info):
    import random
    dataset = camera_dataset(synthetic_root, train_info)
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    dataset[0]
    assert torch.equal(torch_state, torch.get_rng_state())
    assert all(np.array_equal(a, b) for a, b in zip(numpy_state, np.random.get_state()))
    assert python_state == random.getstate()


def loader_samples(dataset, num_workers, epoch):
    dataset.set_epoch(epoch)  # before the iterator (and its workers) is created
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate)
    return [batch for batch in loader]


def test_dataloader_workers_do_not_change_the_samples(synthetic_root, train_info):
    dataset = camera_dataset(synthetic_root, train_info, seed=3)
    in_process = loader_samples(dataset, 0, epoch=2)
    with_workers = loader_samples(dataset, 2, epoch=2)
    assert len(in_process) == len(with_workers) == 3
    for a, b in zip(in_process, with_workers):
        assert_samples_equal(a, b)
    direct = collate([dataset[1]])  # the epoch set last is still 2
    assert_samples_equal(direct, in_process[1])


# -------------------------------------------------------------------------- skip_bad_samples
def test_skipped_sample_is_replaced_with_its_own_augmentation_and_counted(tmp_path, synthetic_root, train_info,
                                                                          caplog):
    info = load_infos(train_info)[0]
    relative = os.path.join("gts", info["scene_name"], info["token"], "labels.npz")
    root = damaged_root(tmp_path, synthetic_root, relative, b"PK\x05\x06 truncated")
    skipping = camera_dataset(root, train_info, skip_bad_samples=True, seed=5)
    clean = camera_dataset(synthetic_root, train_info, seed=5)
    for dataset in (skipping, clean):
        dataset.set_epoch(1)
    with caplog.at_level(logging.WARNING):
        replaced = skipping[0]
    assert replaced.pop("num_skipped").item() == 1
    assert_samples_equal(replaced, clean[1])  # sample 1 with the generator of index 1
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(logged) == 1 and relative in logged[0] and "DataError" in logged[0]
    assert skipping[1]["num_skipped"].dtype == torch.int64 and skipping[1]["num_skipped"].item() == 0

    # through DataLoader workers the counts arrive with the batches
    batches = loader_samples(skipping, 2, epoch=1)
    assert [b["num_skipped"].tolist() for b in batches] == [[1], [0], [0]]
    assert sum(int(b["num_skipped"].sum()) for b in batches) == 1


def test_skip_never_hides_configuration_errors_and_gives_up_naming_the_info_file(tmp_path, synthetic_root,
                                                                                 train_info):
    with open(train_info, "rb") as f:
        data = pickle.load(f)
    lidar_only = write_pickle(tmp_path / "lidar_only.pkl",
                              dict(data, infos=[dict(info, cams={}) for info in data["infos"]]))
    dataset = camera_dataset(synthetic_root, lidar_only, skip_bad_samples=True)
    with pytest.raises(UsageError, match="has no cameras"):
        dataset[0]
    assert dataset.num_skipped == 0
    missing_root = str(tmp_path / "nothing_here")
    everything_bad = camera_dataset(missing_root, train_info, skip_bad_samples=True, load_images=False,
                                    load_depth=False)
    with pytest.raises(DataError, match="every sample of .*" + names(train_info) + r" is bad \(3 tried\)"):
        everything_bad[0]
