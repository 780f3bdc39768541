"""The Occ3D facts live in one place (occ/occ3d.py, occ/openocc.py) and everything else uses them:
one palette colour per class, one class list (the synthetic world writes its GT with it), one grid."""
import importlib
import os
import pkgutil

import numpy as np
import pytest

import datasets.synthetic
from datasets.synthetic import catalog
from occ import occ3d, openocc
from occ.config import get_config
from occ.models.occnet import occ_grid_shape

# The synthetic world's names for the Occ3D classes (datasets/synthetic/catalog.py).
CATALOG_CLASSES = {
    "OTHERS": "others", "BARRIER": "barrier", "BICYCLE": "bicycle", "BUS": "bus", "CAR": "car",
    "CONSTRUCTION": "construction_vehicle", "MOTORCYCLE": "motorcycle", "PEDESTRIAN": "pedestrian",
    "CONE": "traffic_cone", "TRAILER": "trailer", "TRUCK": "truck", "DRIVEABLE": "driveable_surface",
    "OTHER_FLAT": "other_flat", "SIDEWALK": "sidewalk", "TERRAIN": "terrain", "MANMADE": "manmade",
    "VEGETATION": "vegetation",
}
# nuScenes categories whose Occ3D class is named differently from the category's last part.
CATEGORY_CLASS = {"human.pedestrian": "pedestrian", "movable_object.trafficcone": "traffic_cone",
                  "vehicle.construction": "construction_vehicle", "flat.other": "other_flat",
                  "vehicle.bus": "bus"}


def library_modules():
    """Every module of occ/ (not the compiled ops) and datasets/synthetic/, imported."""
    names = ["occ.occ3d", "occ.openocc", "occ.metrics", "occ.visualize", "occ.losses", "occ.config"]
    names += [f"datasets.synthetic.{m.name}" for m in pkgutil.iter_modules(datasets.synthetic.__path__)]
    names += ["datasets.nuscenes_occ", "datasets.occbev_targets", "datasets.prepare_nuscenes"]
    return [importlib.import_module(name) for name in names]


def test_free_is_the_last_class():
    assert occ3d.NUM_CLASSES == len(occ3d.CLASS_NAMES) == 18
    assert occ3d.FREE == occ3d.NUM_CLASSES - 1 and occ3d.CLASS_NAMES[occ3d.FREE] == "free"
    assert len(set(occ3d.CLASS_NAMES)) == occ3d.NUM_CLASSES
    assert occ3d.CLASS_NAMES[occ3d.LAST_THING] == "truck"


def test_palette_has_one_distinct_colour_per_class():
    palette = occ3d.PALETTE
    assert palette.dtype == np.uint8 and palette.shape == (occ3d.NUM_CLASSES, 3)
    assert len({tuple(colour) for colour in palette}) == occ3d.NUM_CLASSES
    # the Occ3D / FlashOcc visualisation colours (see the occ3d docstring)
    assert tuple(palette[occ3d.CLASS_NAMES.index("other_flat")]) == (175, 0, 75)
    assert tuple(palette[occ3d.CLASS_NAMES.index("car")]) == (0, 150, 245)
    assert tuple(palette[occ3d.FREE]) == (255, 255, 255)
    with pytest.raises(ValueError):
        palette[0, 0] = 1  # read-only: nobody repaints the shared palette in place


def test_no_module_keeps_a_second_palette_or_class_list():
    class_lists = (occ3d.CLASS_NAMES, openocc.CLASS_NAMES, openocc.OPENOCCUPANCY_CLASS_NAMES)
    for module in library_modules():
        for name, value in vars(module).items():
            if isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] == 3 \
                    and value.shape[0] in (occ3d.FREE, occ3d.NUM_CLASSES) and value.dtype == np.uint8:
                assert value is occ3d.PALETTE or value is openocc.PALETTE, f"{module.__name__}.{name} is a second palette"
            if isinstance(value, (list, tuple)) and "other_flat" in value:
                assert any(value is names for names in class_lists), f"{module.__name__}.{name} is a second class list"


def test_synthetic_world_uses_the_occ3d_class_list():
    """The synthetic GT is written with catalog's class indices: they must name the same classes as
    occ.occ3d.CLASS_NAMES, and nuScenes categories must map to the class of the same name."""
    assert {name: occ3d.CLASS_NAMES[getattr(catalog, const)] for const, name in CATALOG_CLASSES.items()} \
        == {name: name for name in CATALOG_CLASSES.values()}
    assert sorted(getattr(catalog, const) for const in CATALOG_CLASSES) == list(range(occ3d.FREE))
    for category, label in catalog.CATEGORY_TO_OCC3D.items():
        class_name = occ3d.CLASS_NAMES[label]
        if class_name == "others":
            continue
        expected = next((c for prefix, c in CATEGORY_CLASS.items() if category.startswith(prefix)),
                        category.split(".")[-1])
        assert class_name == expected, (category, class_name)
    for label, category in catalog.STUFF_CATEGORY.items():
        assert catalog.CATEGORY_TO_OCC3D[category] == label


def test_the_openocc_palette_is_the_occ3d_one_in_the_openocc_order():
    for index, name in enumerate(openocc.CLASS_NAMES):
        assert np.array_equal(openocc.PALETTE[index], occ3d.PALETTE[occ3d.CLASS_NAMES.index(name)]), name


def test_openocc_classes_follow_the_occ3d_names():
    mapping = openocc.OCC3D_TO_OPENOCC
    assert mapping.shape == (occ3d.NUM_CLASSES,)
    assert mapping[0] == mapping[occ3d.FREE] == openocc.FREE  # "others" has no OpenOcc class
    for label in range(1, occ3d.FREE):
        assert openocc.CLASS_NAMES[mapping[label]] == occ3d.CLASS_NAMES[label]
    assert openocc.OPENOCCUPANCY_CLASS_NAMES[1:] == occ3d.CLASS_NAMES[1:occ3d.FREE]


def test_grid_facts_agree():
    extent = occ3d.GRID_MAX - occ3d.GRID_MIN
    assert tuple(np.round(extent / occ3d.VOXEL_SIZE).astype(int)) == occ3d.GRID_SHAPE == (200, 200, 16)
    assert occ3d.GRID_RANGE == tuple(occ3d.GRID_MIN) + tuple(occ3d.GRID_MAX)
    assert occ_grid_shape(get_config("effocc_fusion_r18").model) == occ3d.GRID_SHAPE


def test_gt_path_layout():
    assert occ3d.gt_path("root", "scene-0061", "tok") == os.path.join("root", "gts", "scene-0061", "tok", "labels.npz")
    assert occ3d.gt_path("", "scene-0061", "tok", openocc.GT_DIR) == "openocc_v2/scene-0061/tok/labels.npz"
