"""Train an occupancy model (EFFOcc fusion, FlashOcc camera-only, LiDAR-only) on Occ3D-nuScenes,
OpenOcc (occupancy + flow), OpenOccupancy or Occ3D-Waymo (data.benchmark, set by the preset), or a
CenterPoint camera 3-D detector (model.head = "detection").

    accelerate launch train_fusion.py --config effocc_fusion_r18 --data-root data/nuscenes --work-dir work_dirs/r18
    python train_fusion.py --config effocc_fusion_tiny --data-root data/synthetic --work-dir work_dirs/tiny \
        --max-minutes 10 --set train.lr=1e-3
    python train_fusion.py ... --resume            # continue from the latest checkpoint in --work-dir
    python train_fusion.py ... --labelled round1.json   # active learning: the frames / voxels of a selection file
    python train_fusion.py --config occbev_det_r50 ... --init-from PRETRAIN_CKPT   # 3-D detection (head "detection")
    python train_fusion.py --config effocc_waymo_fusion_r18 --data-root data/waymo ... --frames-every 5  # 20 % frames

The data root holds the info files of datasets/prepare_nuscenes.py (or prepare_waymo.py) and the
ground truth of the preset's benchmark (docs/data.md). Reads top to bottom: parse, build, loop, save.
"""
import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

import torch
from accelerate.utils import set_seed

from datasets.build import dataset_from_config
from datasets.labelled import LabelledFrames, class_frequencies
from datasets.nuscenes_occ import collate
from occ import waymo
from occ.active import load_selection, selection_sha256
from occ.checkpoint import load_checkpoint, load_partial, model_weights
from occ.config import apply_overrides, get_config
from occ.data import select_frames, select_scenes
from occ.detection import DetectionGrid, detection_loss
from occ.loop import fit, setup_run
from occ.errors import UsageError
from occ.evaluation import make_occupancy_validate
from occ.flow import flow_loss
from occ.losses import (camera_depth_loss, class_weights_from_frequencies, four_losses,
                        masked_cross_entropy, ohem_cross_entropy)
from occ.openocc_evaluation import make_openocc_validate
from occ.openoccupancy_evaluation import make_openoccupancy_validate
from occ.ssc_losses import openoccupancy_losses
from occ.models import build_model
from scoring.detection import make_detection_validate

LOSSES = ("ce", "four", "centerpoint", "ohem")   # the values of train.loss this script implements


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    cli.add_training_args(parser)
    parser.add_argument("--init-from", metavar="CKPT", help="initialise matching weights from a checkpoint "
                                                            "(e.g. Occ-BEV pre-training) and report the rest")
    parser.add_argument("--init-prefixes", nargs="*", help="only load these key prefixes with --init-from")
    parser.add_argument("--scenes-fraction", type=float, default=1.0,
                        help="train on this fraction of the training scenes (seeded sample, docs/training.md#label-efficiency)")
    parser.add_argument("--frames-every", type=int, default=1, metavar="N",
                        help="train on every N-th frame of each scene (Occ3D-Waymo's 20 %% setting: 5)")
    parser.add_argument("--labelled", metavar="FILE",
                        help="train only on what this selection file of active_select.py labels: its frames "
                             "fully, its voxel-labelled frames on their selected voxels (docs/training.md#active-learning)")
    args = parser.parse_args(argv)
    cli.check_training_args(args)
    if args.labelled and args.scenes_fraction != 1.0:
        raise UsageError("--labelled and --scenes-fraction exclude each other; write the scene fraction into the "
                         "selection file (active_select.py --strategy random --scenes-fraction F)")
    return args


def build_config(args):
    cfg = get_config(args.config)
    apply_overrides(cfg, args.set)
    if cfg.model.head not in ("occ", "detection"):
        raise UsageError(f"--config {args.config} is a '{cfg.model.head}' model; train it with its own script")
    if (cfg.model.head == "detection") != (cfg.train.loss == "centerpoint"):
        raise UsageError(f"the loss follows the head: model.head = 'detection' trains with train.loss = "
                         f"'centerpoint' and no other head does (got '{cfg.model.head}' with {cfg.train.loss!r})")
    if cfg.model.head == "detection" and args.labelled:
        raise UsageError("--labelled selects occupancy voxels; a detection model cannot train on it")
    if cfg.train.loss not in LOSSES:
        raise UsageError(f"train.loss={cfg.train.loss!r} is not implemented by train_fusion.py: use one of {LOSSES}")
    if cfg.data.benchmark == "openocc" and cfg.train.loss != "ce":
        raise UsageError(f"data.benchmark = 'openocc' trains with train.loss = 'ce' (the four losses use the Occ3D "
                         f"classes), got {cfg.train.loss!r}")
    if cfg.data.benchmark == "waymo" and cfg.train.loss not in ("ohem", "ce"):
        raise UsageError(f"data.benchmark = 'waymo' trains with train.loss = 'ohem' or 'ce', "
                         f"got {cfg.train.loss!r}")
    if cfg.data.benchmark == "openoccupancy" and (cfg.train.loss != "four" or args.labelled):
        raise UsageError(f"data.benchmark = 'openoccupancy' trains with train.loss = 'four' and without --labelled "
                         f"(got {cfg.train.loss!r})")
    if cfg.train.loss == "ohem" and cfg.data.benchmark != "waymo":
        raise UsageError("train.loss = 'ohem' uses the Occ3D-Waymo class weights: set data.benchmark = 'waymo'")
    return cfg


def make_loss_fn(cfg, class_weights=None):
    """loss_fn(model, batch) -> dict of named losses (docs/training.md#losses), over the voxels of
    mask_camera, and of the batch's `label_mask` when it has one (--labelled); plus the depth loss of
    a camera model trained with depth supervision (model.depth_loss_weight > 0). OpenOcc
    (data.benchmark "openocc"): CE over every voxel, plus the L1 flow loss of a flow head. A detection
    model (model.head "detection"): the CenterPoint heatmap and box losses."""
    grid = DetectionGrid.from_model_config(cfg.model)

    def occupancy_loss(outputs, batch):
        logits = outputs["occ_logits"]
        if cfg.data.benchmark == "openoccupancy":  # the four losses, published class weights, 255 ignored, no mask
            return openoccupancy_losses(logits, batch["semantics"])
        # OpenOcc: every voxel (its metric has no camera mask); Occ3D: mask_camera
        visible = torch.ones_like(batch["mask_camera"]) if cfg.data.benchmark == "openocc" else batch["mask_camera"]
        mask = visible & batch["label_mask"] if "label_mask" in batch else visible
        if cfg.train.loss == "ohem":  # Occ3D-Waymo, the published class weights
            weights = torch.tensor(waymo.CLASS_WEIGHTS)
            return {"loss_ohem": ohem_cross_entropy(logits, batch["semantics"], mask, weights)}
        if cfg.train.loss == "four":
            return four_losses(logits, batch["semantics"], mask, class_weights)
        return {"loss_ce": masked_cross_entropy(logits, batch["semantics"], mask)}

    def loss_fn(model, batch):
        outputs = model(batch)
        if cfg.model.head == "detection":  # CenterPoint loss on the info files' boxes (occ/detection.py)
            return {**detection_loss(outputs["det_preds"], batch["gt_boxes"], batch["gt_labels"], grid),
                    **camera_depth_loss(outputs, batch, cfg.model)}
        losses = {**occupancy_loss(outputs, batch), **camera_depth_loss(outputs, batch, cfg.model)}
        if cfg.model.flow_head:
            losses.update(flow_loss(outputs, batch, cfg.train))
        return losses
    return loss_fn


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    train_split, train_info = cli.info_file(args, "train")
    train_set = dataset_from_config(cfg, args.data_root, train_info, train=True,
                                    skip_bad_samples=args.skip_bad_samples)
    select_scenes(train_set, args.scenes_fraction)
    select_frames(train_set, args.frames_every)
    selection = None
    if args.labelled:
        selection = load_selection(args.labelled, known_tokens={info["token"] for info in train_set.infos})
        train_set = LabelledFrames(train_set, selection)
    val_set = None
    if not args.no_val:
        val_set = dataset_from_config(cfg, args.data_root, cli.info_file(args, "val")[1], train=False)

    set_seed(cfg.train.seed)  # seeded initial weights (and the same on every process)
    model = build_model(cfg)
    if args.init_from:
        checkpoint = load_checkpoint(args.init_from)
        weights = model_weights(checkpoint, use_ema=checkpoint.get("ema") is not None, path=args.init_from)
        print(f"--init-from {args.init_from}:\n{load_partial(model, weights, args.init_prefixes).summary()}")
    class_weights = None
    if cfg.train.loss == "four" and cfg.data.benchmark != "openoccupancy":  # OpenOccupancy: published weights
        class_weights = class_weights_from_frequencies(class_frequencies(train_set, selection))

    settings = cli.run_settings(args, "scenes_fraction", "init_from", "init_prefixes", "labelled", "frames_every")
    if selection is not None:   # the file's content, so that --resume notices a file rewritten in place
        settings["labelled_sha256"] = selection_sha256(args.labelled)
    run = setup_run(cfg, model, train_set, collate, **cli.setup_options(args, settings, __file__, argv))
    run.log(f"{cfg.name}: {len(train_set)} training samples ({train_split}, scenes fraction "
            f"{args.scenes_fraction}), {len(val_set) if val_set else 0} validation samples, "
            f"{run.accelerator.num_processes} process(es)")
    if selection is not None:
        run.log(f"--labelled {args.labelled}: {len(selection.frames)} fully labelled frames, {len(selection.voxels)} "
                f"frames with {selection.num_voxels()} selected voxels")
    validate = None
    if val_set and cfg.model.head == "detection":
        validate = make_detection_validate(val_set, args.data_root, collate)
    elif val_set and cfg.data.benchmark == "openocc":
        validate = make_openocc_validate(val_set, collate)  # RayIoU, mAVE, OccScore
    elif val_set and cfg.data.benchmark == "openoccupancy":
        validate = make_openoccupancy_validate(val_set, collate)  # SC IoU, SSC mIoU
    elif val_set and cfg.data.benchmark == "waymo":
        validate = make_occupancy_validate(val_set, collate, waymo.CLASS_NAMES, waymo.PALETTE)
    elif val_set:
        validate = make_occupancy_validate(val_set, collate)
    return fit(run, make_loss_fn(cfg, class_weights), validate, **cli.fit_options(args))


if __name__ == "__main__":
    cli.run_main(main)
