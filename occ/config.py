"""Configs as plain dataclasses, the named presets, and "a.b=value" overrides.

A `Config` has four parts: `data` (what the loader produces), `model` (what `build_model` builds),
`train` (optimisation and logging) and `distill` (teacher settings of the distillation script).
`get_config(name)` returns a fresh preset; `apply_overrides(cfg, ["train.lr=1e-3"])` changes
fields with type checking; `config_to_dict` / `config_from_dict` round-trip through JSON.

`data.load_points` and `data.load_depth` are derived from the model (LiDAR points for every model
that has a LiDAR branch, depth maps for the fusion model with LiDAR-depth input and for camera
models trained with depth supervision, model.depth_loss_weight > 0); they are
recomputed after every change and cannot be set by hand.
"""
import ast
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Optional, Tuple

from occ import occ3d, openocc, waymo
from occ.errors import UsageError

MODALITIES = ("fusion", "camera", "lidar")
BACKBONES = ("resnet18", "resnet50", "swin_t", "swin_b")
IMG_NECKS = ("custom_fpn", "fpn_lss")
BEV_ENCODERS = ("second", "resnet")
HEADS = ("occ", "geometry", "detection")
BEV_POOLINGS = ("sum", "mean")  # of the camera frustum points in a BEV cell
LOSSES = ("ce", "four", "focal", "centerpoint", "ohem")
LR_SCHEDULES = ("step", "cosine")
COLOR_ORDERS = ("rgb", "bgr")
FLOW_LOSS_VOXELS = ("occupied", "all", "balanced")
BENCHMARKS = ("occ3d", "openocc", "openoccupancy", "waymo")  # which GT the dataset reads (docs/data.md)
DERIVED_FIELDS = ("data.load_points", "data.load_depth")


@dataclass
class DataConfig:
    image_size: Tuple[int, int] = (256, 704)  # network input (H, W)
    num_sweeps: int = 9  # LiDAR sweeps added to the key frame
    resize_jitter: Tuple[float, float] = (-0.06, 0.11)  # added to W_in / W_src when training
    rotate_deg: Tuple[float, float] = (-5.4, 5.4)
    flip_prob: float = 0.5  # horizontal image flip
    bev_flip: bool = True  # random x / y flips of the BEV (p=0.5 each) when training
    load_points: bool = True  # derived: the model has a LiDAR branch
    load_depth: bool = True  # derived: the model takes LiDAR depth maps
    benchmark: str = "occ3d"  # "occ3d" | "openocc" | "openoccupancy" | "waymo": the GT format and grid
    occ_gt_dir: str = occ3d.GT_DIR  # Occ3D ground truth folder inside the data root
    color_order: str = "rgb"  # "rgb" | "bgr": channel order of the input images (official checkpoints: bgr)
    num_workers: int = 4
    batch_size: int = 8  # per GPU / process


@dataclass
class ModelConfig:
    modality: str = "fusion"  # "fusion" | "camera" | "lidar"
    # camera branch
    backbone: str = "resnet18"  # "resnet18" | "resnet50" | "swin_t" | "swin_b" (torchvision)
    backbone_stages: Tuple[int, ...] = (2, 3, 4)  # stage s has stride 2**(s+1)
    pretrained_path: Optional[str] = None  # local torchvision state dict (ImageNet weights)
    img_neck: str = "custom_fpn"  # "custom_fpn" | "fpn_lss"
    img_neck_channels: int = 128
    downsample: int = 8  # image stride of the frustum
    depth_bins: Tuple[float, float, float] = (1.0, 45.0, 0.5)  # start, stop, step -> D = 88
    context_channels: int = 64
    use_lidar_depth: bool = True  # LiDAR depth maps as an input of the depth net (fusion)
    depth_loss_weight: float = 0.0  # > 0: BEVDepth-style depth supervision from LiDAR (camera branch)
    camera_height_bins: int = 1  # z bins of the camera BEV, stacked into channels (published: 1)
    camera_bev_pooling: str = "sum"  # "sum" of a cell's frustum points (published) or their "mean"
    camera_ground_prior: bool = False  # the image trunk also reads each pixel's ground inverse depth (published: no)
    camera_depth_convs: int = 0  # 3x3 conv+BN+ReLU layers before a camera-only 1x1 depth net (published: 0)
    # LiDAR branch
    voxel_size: Tuple[float, float, float] = (0.05, 0.05, 0.16)
    max_points_per_voxel: int = 10
    max_voxels: Tuple[int, int] = (90000, 120000)  # (train, test)
    sparse_channels: Tuple[int, int, int, int] = (16, 32, 64, 128)
    sparse_blocks: int = 2  # BasicBlocks per stage
    sparse_down_strides: Tuple[Tuple[int, int, int], ...] = ((2, 2, 2), (2, 2, 2), (2, 2, 2))  # (z, y, x)
    # fusion and BEV encoder
    fuser_channels: int = 256
    bev_encoder: str = "second"  # "second" (SECOND + SECONDFPN) | "resnet" (CustomResNet + FPN_LSS)
    second_channels: Tuple[int, int] = (128, 256)
    second_layers: Tuple[int, int] = (5, 5)  # 3x3 convs after the first one of each stage
    secondfpn_channels: Tuple[int, int] = (256, 256)
    bev_resnet_channels: Tuple[int, int, int] = (128, 256, 512)
    bev_resnet_blocks: int = 2
    bev_neck_mid_channels: int = 512
    bev_neck_channels: int = 256
    # head
    head: str = "occ"  # "occ" (channel-to-height semantics) | "geometry" (Occ-BEV 3-D decoder) | "detection"
    head_hidden: int = 256  # conv width; the MLP hidden width is twice this
    num_classes: int = occ3d.NUM_CLASSES
    flow_head: bool = False  # OpenOcc: a per-voxel (vx, vy) branch on the occupancy head's feature
    point_cloud_range: Tuple[float, float, float, float, float, float] = occ3d.GRID_RANGE
    occ_voxel_size: float = occ3d.VOXEL_SIZE  # -> occ3d.GRID_SHAPE (200 x 200 x 16)


@dataclass
class TrainConfig:
    optimizer: str = "adamw"
    lr: float = 4e-4
    weight_decay: float = 1e-2
    backbone_lr_mult: float = 1.0
    grad_clip: float = 5.0
    warmup_iters: int = 200
    warmup_ratio: float = 1e-3
    lr_schedule: str = "step"  # "step" | "cosine"
    cosine_steps: int = 0  # > 0: the cosine decay spans this many optimizer updates instead of train.epochs
    lr_step_epochs: Tuple[int, ...] = (24,)
    lr_gamma: float = 0.1
    epochs: int = 48
    ema_decay: float = 0.999
    ema_ramp: int = 2000  # decay * (1 - exp(-updates / ramp))
    loss: str = "ce"  # "ce" | "four" (CE + sem_scal + geo_scal + Lovasz) | "focal" (Occ-BEV) | "centerpoint" (detection)
    flow_loss_weight: float = 0.25  # model.flow_head: weight of the L1 flow loss
    flow_loss_voxels: str = "occupied"  # "occupied" (GT not free) | "all" (the original) | "balanced" (moving = static)
    seed: int = 0
    log_interval: int = 50  # iterations
    val_interval: int = 1  # epochs
    ckpt_interval: int = 1  # epochs


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # preset name of the frozen fusion teacher
    teacher_ckpt: Optional[str] = None
    inherit_head: bool = False  # initialise the student head from the teacher head


@dataclass
class Config:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


# ------------------------------------------------------------------------------------- presets
def effocc_fusion_r18():
    return Config(name="effocc_fusion_r18")


def effocc_fusion_r50():
    cfg = effocc_fusion_r18()
    cfg.name = "effocc_fusion_r50"
    cfg.model.backbone = "resnet50"
    return cfg


def effocc_fusion_swinb():
    cfg = effocc_fusion_r18()
    cfg.name = "effocc_fusion_swinb"
    cfg.data.image_size = (512, 1408)
    m = cfg.model
    m.backbone, m.backbone_stages = "swin_b", (3, 4)
    m.img_neck, m.img_neck_channels, m.downsample, m.context_channels = "fpn_lss", 512, 16, 256
    return cfg


def effocc_fusion_r18_flow():
    """OpenOcc v2 occupancy + flow (EFFOcc's flashocc-fusion-r18_flow): 17 OpenOcc classes, a flow
    branch, CE over every voxel + 0.25 L1 flow (docs/training.md#occupancy-and-flow-openocc)."""
    cfg = effocc_fusion_r18()
    cfg.name = "effocc_fusion_r18_flow"
    cfg.data.benchmark, cfg.data.occ_gt_dir, cfg.data.batch_size = "openocc", openocc.GT_DIR, 2
    cfg.model.num_classes, cfg.model.flow_head = len(openocc.CLASS_NAMES), True
    cfg.train.lr, cfg.train.epochs = 1e-4, 24
    return cfg


def effocc_openoccupancy_r18():
    """OpenOccupancy (nuScenes-Occupancy; EFFOcc's effocc-fusion-r18 for it): the 512 x 512 x 40 grid
    of the LiDAR frame at 0.2 m, depth [1, 60) at 1 m, 0.025 x 0.025 x 0.2 m LiDAR voxels (sparse
    41 x 4096 x 4096, stride 8 -> 512 x 512), 17 classes (40 x 17 = 680 logits per BEV cell), the
    four losses with fixed class weights and no camera mask (docs/training.md#openoccupancy)."""
    cfg = effocc_fusion_r18()
    cfg.name = "effocc_openoccupancy_r18"
    cfg.data.benchmark, cfg.data.batch_size = "openoccupancy", 2
    m = cfg.model
    m.point_cloud_range, m.occ_voxel_size = openocc.OPENOCCUPANCY_GRID_RANGE, openocc.OPENOCCUPANCY_VOXEL_SIZE
    m.depth_bins, m.voxel_size = (1.0, 60.0, 1.0), (0.025, 0.025, 0.2)
    m.num_classes = len(openocc.OPENOCCUPANCY_CLASS_NAMES)
    cfg.train.loss, cfg.train.lr, cfg.train.epochs = "four", 1e-4, 24
    return cfg


def effocc_openoccupancy_r50():
    cfg = effocc_openoccupancy_r18()
    cfg.name = "effocc_openoccupancy_r50"
    cfg.data.image_size, cfg.model.backbone, cfg.train.epochs = (512, 1408), "resnet50", 15
    return cfg


def effocc_lidar():
    cfg = effocc_fusion_r18()
    cfg.name = "effocc_lidar"
    cfg.model.modality = "lidar"
    return cfg


def effocc_waymo_fusion_r18():
    """EFFOcc-T on Occ3D-Waymo (flashocc-fusion-waymoD1-1f): 5 cameras, one LiDAR sweep, 16 Waymo
    classes, OHEM cross-entropy with the published class weights, AdamW 1e-4, batch 2, 24 epochs
    (the 20 % / 8-epoch setting: train_fusion.py --frames-every 5 --set train.epochs=8)."""
    cfg = effocc_fusion_r18()
    cfg.name = "effocc_waymo_fusion_r18"
    cfg.data.benchmark, cfg.data.occ_gt_dir, cfg.data.num_sweeps, cfg.data.batch_size = "waymo", waymo.GT_DIR, 0, 2
    cfg.model.num_classes = waymo.NUM_CLASSES
    cfg.train.lr, cfg.train.epochs, cfg.train.lr_step_epochs, cfg.train.loss = 1e-4, 24, (24,), "ohem"
    return cfg


def effocc_waymo_lidar():
    """EFFOcc-L on Occ3D-Waymo (flashocc-lidar-waymoD1-1f): effocc_waymo_fusion_r18 without cameras."""
    cfg = effocc_waymo_fusion_r18()
    cfg.name = "effocc_waymo_lidar"
    cfg.model.modality = "lidar"
    return cfg


def flashocc_r50():
    cfg = Config(name="flashocc_r50")
    m = cfg.model
    m.modality, m.backbone, m.backbone_stages = "camera", "resnet50", (3, 4)
    m.img_neck_channels, m.downsample, m.use_lidar_depth = 256, 16, False
    m.bev_encoder = "resnet"
    cfg.train.lr, cfg.train.epochs = 1e-4, 24
    return cfg


def distillocc_r50():
    cfg = flashocc_r50()
    cfg.name = "distillocc_r50"
    cfg.model.bev_neck_channels = 512  # matches the teacher's SECONDFPN output
    cfg.distill = DistillConfig(teacher="effocc_fusion_r18", inherit_head=True)
    return cfg


def occbev_pretrain():
    cfg = flashocc_r50()  # same backbone, neck, view transformer and BEV encoder as fine-tuning
    cfg.name = "occbev_pretrain"
    cfg.model.head, cfg.model.head_hidden = "geometry", 32  # 256 = 16 ch x 16 heights
    t = cfg.train
    t.lr, t.weight_decay, t.backbone_lr_mult = 2e-4, 0.01, 0.1
    t.lr_schedule, t.warmup_iters, t.epochs, t.loss = "cosine", 500, 24, "focal"
    return cfg


def bevdet_r50():
    """BEVDet-R50 (dev3.0) 3-D detection: flashocc_r50's camera branch and BEV encoder on the grid
    [-51.2, 51.2]^2 x [-5, 3] at 0.8 m (128 x 128), depth [1, 60) at 1 m, a CenterPoint head
    (docs/architecture.md#detection-head)."""
    cfg = flashocc_r50()
    cfg.name = "bevdet_r50"
    m = cfg.model
    m.point_cloud_range, m.occ_voxel_size = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), 0.8
    m.depth_bins = (1.0, 60.0, 1.0)
    m.head, m.head_hidden, m.num_classes = "detection", 64, 10  # occ.detection.CLASS_NAMES
    t = cfg.train
    t.lr, t.weight_decay, t.grad_clip, t.warmup_iters, t.epochs, t.loss = 2e-4, 1e-7, 5.0, 200, 24, "centerpoint"
    return cfg


def occbev_det_r50():
    """Detection on the Occ-BEV pre-training model (occbev_pretrain's grid, depth bins, camera
    branch and BEV encoder: every pre-trained weight but the decoder's transfers) with bevdet_r50's
    head and schedule, the image backbone at 0.1 x the learning rate (Occ-BEV fine-tuning)."""
    cfg = occbev_pretrain()
    cfg.name = "occbev_det_r50"
    cfg.model.head, cfg.model.head_hidden, cfg.model.num_classes = "detection", 64, 10
    cfg.train = bevdet_r50().train
    cfg.train.backbone_lr_mult = 0.1
    return cfg


def make_tiny(cfg):
    """A version of a preset that trains on a 2-core CPU: 128 x 352 images, narrow layers, 0.2 m
    LiDAR voxels; the same output grid (200 x 200 x 16, or OpenOccupancy's 512 x 512 x 40) and classes."""
    cfg.name += "_tiny"
    d, m = cfg.data, cfg.model
    d.image_size, d.num_workers, d.batch_size = (128, 352), 0, 1
    if m.backbone == "swin_b":
        m.backbone = "swin_t"
    m.img_neck_channels = 64 if m.img_neck == "custom_fpn" else 128
    m.context_channels = 16
    m.voxel_size, m.max_points_per_voxel, m.max_voxels = (0.2, 0.2, 0.4), 10, (30000, 40000)
    # sparse z: 17 -> 9 -> 5 -> 3 -> 1 (out conv); xy: 400 -> 200
    m.sparse_channels, m.sparse_blocks = (8, 16, 32, 32), 1
    m.sparse_down_strides = ((2, 2, 2), (2, 1, 1), (1, 1, 1))
    if d.benchmark == "openoccupancy":  # keeps its 512 x 512 BEV: xy stride 1; z 21 -> 11 -> 6 -> 4 -> 1
        m.sparse_down_strides = ((2, 1, 1), (2, 1, 1), (1, 1, 1))
    m.fuser_channels = 32
    m.second_channels, m.second_layers, m.secondfpn_channels = (32, 64), (1, 1), (32, 32)
    m.bev_resnet_channels, m.bev_resnet_blocks = (32, 64, 128), 1
    m.bev_neck_mid_channels = 64
    m.bev_neck_channels = 64 if m.bev_neck_channels == 512 else 32
    if m.head == "geometry":
        m.bev_neck_channels, m.head_hidden = 32, 8  # 32 = 2 ch x 16 heights
    else:
        m.head_hidden = 32
    # minutes of CPU training, not 24-48 epochs: a higher rate, short warm-up and EMA ramp
    cfg.train.lr, cfg.train.warmup_iters, cfg.train.ema_ramp, cfg.train.log_interval = 1e-3, 20, 200, 10
    if m.modality == "camera":
        camera_from_scratch_levers(cfg)
    return cfg


def camera_from_scratch_levers(cfg):
    """What moves a randomly initialised camera-only model past the ground-only stage within minutes
    of a CPU (docs/training.md#camera-only-tiny-presets): depth supervision from the LiDAR, 8 height
    bins and mean pooling in the camera BEV, no augmentation (the tiny models underfit), a cosine
    decay over 1600 updates (10 epochs of the synthetic world; set train.cosine_steps to the run's length), and
    for an occupancy model the four class-balanced losses (the distilled student on its labelled
    frames too, so that it differs from the camera-only model only by what it learns from the teacher)."""
    d, m = cfg.data, cfg.model
    m.depth_loss_weight, m.camera_height_bins, m.camera_bev_pooling = 3.0, 8, "mean"
    cfg.train.lr_schedule, cfg.train.cosine_steps = "cosine", 1600
    d.resize_jitter, d.rotate_deg, d.flip_prob, d.bev_flip = (0.0, 0.0), (0.0, 0.0), 0.0, False
    if m.head == "occ":
        cfg.train.loss = "four"


PRESETS = {fn.__name__: fn for fn in (effocc_fusion_r18, effocc_fusion_r50, effocc_fusion_swinb, flashocc_r50,
                                      effocc_lidar, distillocc_r50, occbev_pretrain, effocc_fusion_r18_flow,
                                      bevdet_r50, occbev_det_r50, effocc_waymo_fusion_r18, effocc_waymo_lidar,
                                      effocc_openoccupancy_r18, effocc_openoccupancy_r50)}


def preset_names():
    return sorted(list(PRESETS) + [name + "_tiny" for name in PRESETS])


def get_config(name):
    """A fresh `Config` for a preset name (see `preset_names()`)."""
    base = name[:-len("_tiny")] if name.endswith("_tiny") else name
    if base not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}")
    cfg = PRESETS[base]()
    if name.endswith("_tiny"):
        cfg = make_tiny(cfg)
        if cfg.distill.teacher is not None:
            cfg.distill.teacher += "_tiny"
    return finalize(cfg)


# --------------------------------------------------------------------------- derived and checks
def finalize(cfg):
    """Recompute the derived fields and check the choice fields; returns cfg."""
    m = cfg.model
    for key, value, choices in (("model.modality", m.modality, MODALITIES), ("model.backbone", m.backbone, BACKBONES),
                                ("model.img_neck", m.img_neck, IMG_NECKS),
                                ("model.bev_encoder", m.bev_encoder, BEV_ENCODERS), ("model.head", m.head, HEADS),
                                ("train.loss", cfg.train.loss, LOSSES),
                                ("train.lr_schedule", cfg.train.lr_schedule, LR_SCHEDULES),
                                ("data.color_order", cfg.data.color_order, COLOR_ORDERS),
                                ("data.benchmark", cfg.data.benchmark, BENCHMARKS)):
        if value not in choices:
            raise UsageError(f"{key} = {value!r} is not one of {choices}")
    check_flow_settings(cfg)
    cfg.data.load_points = m.modality in ("fusion", "lidar")
    if m.depth_loss_weight < 0 or (m.depth_loss_weight > 0 and m.modality == "lidar"):
        raise UsageError(f"model.depth_loss_weight = {m.depth_loss_weight} needs a camera branch and a value >= 0")
    if cfg.train.cosine_steps < 0:
        raise UsageError(f"train.cosine_steps must be >= 0 (0: the cosine spans train.epochs), got {cfg.train.cosine_steps}")
    if m.camera_height_bins < 1:
        raise UsageError(f"model.camera_height_bins must be >= 1, got {m.camera_height_bins}")
    if m.camera_depth_convs < 0 or (m.camera_depth_convs > 0 and m.modality == "fusion" and m.use_lidar_depth):
        raise UsageError(f"model.camera_depth_convs = {m.camera_depth_convs} must be >= 0, and 0 with LiDAR-depth "
                         f"input (whose depth net has its own two 3x3 convs)")
    if m.camera_ground_prior and (m.modality == "lidar" or m.backbone not in ("resnet18", "resnet50")):
        raise UsageError(f"model.camera_ground_prior needs a camera branch with a ResNet backbone "
                         f"(model.modality = {m.modality!r}, model.backbone = {m.backbone!r})")
    if m.camera_bev_pooling not in BEV_POOLINGS:
        raise UsageError(f"model.camera_bev_pooling must be one of {BEV_POOLINGS}, got {m.camera_bev_pooling!r}")
    cfg.data.load_depth = (m.modality == "fusion" and m.use_lidar_depth) or m.depth_loss_weight > 0
    return cfg


def check_flow_settings(cfg):
    """OpenOcc (docs/training.md#occupancy-and-flow-openocc): its 17 classes, and a flow head only on it."""
    d, m, t = cfg.data, cfg.model, cfg.train
    if d.benchmark == "openocc" and m.head == "occ" and m.num_classes != len(openocc.CLASS_NAMES):
        raise UsageError(f"data.benchmark = 'openocc' has {len(openocc.CLASS_NAMES)} classes (free = "
                         f"{openocc.FREE}); model.num_classes = {m.num_classes}")
    if m.flow_head and d.benchmark != "openocc":
        raise UsageError(f"model.flow_head needs flow ground truth: data.benchmark = 'openocc', not {d.benchmark!r}")
    if t.flow_loss_voxels not in FLOW_LOSS_VOXELS:
        raise UsageError(f"train.flow_loss_voxels = {t.flow_loss_voxels!r} is not one of {FLOW_LOSS_VOXELS}")
    if t.flow_loss_weight < 0:
        raise UsageError(f"train.flow_loss_weight must be >= 0, got {t.flow_loss_weight}")


# ---------------------------------------------------------------------------- typed conversion
def _coerce(value, tp, key):
    """Check / convert a Python value (from literal_eval or JSON) to the annotated type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            value = (value,)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise UsageError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UsageError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UsageError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"{key}: unsupported field type {tp}")


def _parse_text(text, tp):
    """A command-line string -> Python value for a field of type `tp` (before `_coerce`)."""
    text = text.strip()
    if text.lower() in ("none", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if tp is str or (typing.get_origin(tp) is typing.Union and str in typing.get_args(tp)):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # let _coerce report the type mismatch


def _section(cfg, name, key):
    if name not in {f.name for f in dataclasses.fields(cfg)} or not dataclasses.is_dataclass(getattr(cfg, name)):
        sections = [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]
        raise UsageError(f"bad override key {key!r}: unknown section {name!r} (valid: {', '.join(sections)})")
    return getattr(cfg, name)


def apply_overrides(cfg, overrides):
    """Apply ["section.field=value", ...] in place (typed) and return cfg."""
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"bad override {item!r}: expected section.field=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key == "name":
            cfg.name = text.strip()
            continue
        if key in DERIVED_FIELDS:
            raise UsageError(f"{key} is derived from model.modality / model.use_lidar_depth and cannot be set")
        parts = key.split(".")
        if len(parts) != 2:
            raise UsageError(f"bad override key {key!r}: expected section.field, e.g. train.lr")
        section = _section(cfg, parts[0], key)
        hints = typing.get_type_hints(type(section))
        if parts[1] not in hints:
            raise UsageError(f"bad override key {key!r}: {parts[0]} has no field {parts[1]!r} "
                             f"(valid: {', '.join(hints)})")
        setattr(section, parts[1], _coerce(_parse_text(text, hints[parts[1]]), hints[parts[1]], key))
    return finalize(cfg)


def config_to_dict(cfg):
    """A Config (or an already plain dict) -> JSON-compatible dict: tuples become lists."""
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    return json.loads(json.dumps(cfg))


def config_from_dict(d):
    """Inverse of `config_to_dict` (lists from JSON become tuples); unknown keys raise UsageError."""
    cfg = Config()
    for key, value in d.items():
        if key == "name":
            cfg.name = value
            continue
        section = _section(cfg, key, key)
        hints = typing.get_type_hints(type(section))
        for field_name, field_value in value.items():
            if field_name not in hints:
                raise UsageError(f"unknown config key {key}.{field_name}")
            setattr(section, field_name, _coerce(field_value, hints[field_name], f"{key}.{field_name}"))
    return finalize(cfg)
