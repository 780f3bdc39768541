"""Shared fixtures.

`synthetic_root`: a small synthetic nuScenes world generated once per test session (2 scenes from
the v1.0-mini list, scene-0061 in mini_train and scene-0103 in mini_val, 3 key frames each with
their LiDAR sweeps, 400x225 images, Occ3D + OpenOcc flow + OpenOccupancy GT). Read-only for tests.
`data_root`: that world linked into a folder of its own with its info files, as the scripts read it.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import prepare_nuscenes  # noqa: E402
from datasets.synthetic.generate import Options, generate  # noqa: E402

SYNTHETIC_SMALL = dict(scenes=2, samples_per_scene=3, seed=0, image_size=(400, 225), workers=1)


@pytest.fixture(scope="session")
def synthetic_options(tmp_path_factory):
    """The Options the small world was generated with (root = options.out)."""
    root = tmp_path_factory.mktemp("synthetic") / "nuscenes"
    options = Options(str(root), **SYNTHETIC_SMALL)
    generate(options, progress=False)
    return options


@pytest.fixture(scope="session")
def synthetic_root(synthetic_options):
    """Path (str) of the small synthetic nuScenes world."""
    return synthetic_options.out


@pytest.fixture(scope="session")
def data_root(synthetic_root, tmp_path_factory):
    """Path (str) of a folder that links every entry of the small world (read-only) and holds its
    info files (occ_infos_mini_train.pkl, occ_infos_mini_val.pkl): what the scripts' --data-root
    reads. Read-only for tests too."""
    root = tmp_path_factory.mktemp("data_root")
    for entry in os.listdir(synthetic_root):
        os.symlink(os.path.join(synthetic_root, entry), root / entry)
    prepare_nuscenes.prepare(str(root), "v1.0-mini", out_dir=str(root))
    return str(root)

