"""The glue between a `Config` and the occupancy dataset, shared by the training and evaluation scripts."""
import os

from datasets.nuscenes_occ import NuScenesOccDataset
from datasets.waymo_occ import WaymoOccDataset
from datasets.prepare_nuscenes import info_path, prepare
from datasets.synthetic.generate import Options, generate

SPLIT_NAMES = {"train": ("train", "mini_train"), "val": ("val", "mini_val")}


def default_split(data_root, kind):
    """'train' / 'val' when their info files exist in data_root, else 'mini_train' / 'mini_val'."""
    for split in SPLIT_NAMES[kind]:
        if os.path.isfile(info_path(data_root, split)):
            return split
    tried = ", ".join(info_path(data_root, s) for s in SPLIT_NAMES[kind])
    raise FileNotFoundError(f"no {kind} info file in {data_root} (tried {tried}); "
                            f"run datasets/prepare_nuscenes.py --root {data_root} --version ...")


def dataset_from_config(cfg, data_root, info_file, train, load_gt=True, skip_bad_samples=False):
    """NuScenesOccDataset of an info file with the inputs the model of `cfg` reads (train: with
    the config's augmentation, drawn from (cfg.train.seed, epoch, sample index); otherwise
    deterministic, nearest sweeps). A detection model (model.head "detection") reads the info
    files' boxes as its ground truth (load_gt) instead of occupancy labels."""
    d = cfg.data
    detection = cfg.model.head == "detection"
    image_aug = {"resize_jitter": d.resize_jitter, "rotate_deg": d.rotate_deg, "flip_prob": d.flip_prob}
    if d.benchmark == "waymo":  # Occ3D-Waymo: 5 cameras, one sweep, its own GT (datasets/waymo_occ.py)
        return WaymoOccDataset(data_root, info_file, train=train, image_size=d.image_size, num_sweeps=0,
                               load_points=d.load_points, load_depth=d.load_depth,
                               load_images=cfg.model.modality != "lidar", load_gt=load_gt, bev_flip=d.bev_flip,
                               image_aug=image_aug, seed=cfg.train.seed, skip_bad_samples=skip_bad_samples,
                               color_order=d.color_order)
    return NuScenesOccDataset(data_root, info_file, train=train, image_size=d.image_size,
                              num_sweeps=d.num_sweeps, load_points=d.load_points, load_depth=d.load_depth,
                              load_images=cfg.model.modality != "lidar", load_gt=load_gt and not detection,
                              load_boxes=load_gt and detection,
                              occ_gt_dir=d.occ_gt_dir, bev_flip=d.bev_flip, image_aug=image_aug,
                              seed=cfg.train.seed, skip_bad_samples=skip_bad_samples, color_order=d.color_order,
                              max_depth=cfg.model.depth_bins[1], require_flow=d.benchmark == "openocc",
                              benchmark=d.benchmark)


def ensure_synthetic_world(root):
    """The default synthetic world (datasets/make_synthetic.py defaults) in `root`, generated when
    its tables are absent, with its info files (for the demo and the benchmarks)."""
    if not os.path.isdir(os.path.join(root, "v1.0-mini")):
        print(f"generating the default synthetic world in {root} (about 4 minutes on 2 cores)")
        generate(Options(root, workers=min(2, os.cpu_count() or 1)))
    return prepare(root, "v1.0-mini")
