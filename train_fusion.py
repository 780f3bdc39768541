"""Train an occupancy model (EFFOcc fusion, FlashOcc camera-only, LiDAR-only) on Occ3D-nuScenes.

    accelerate launch train_fusion.py --config effocc_fusion_r18 --data-root data/nuscenes --work-dir work_dirs/r18
    python train_fusion.py --config effocc_fusion_tiny --data-root data/synthetic --work-dir work_dirs/tiny \
        --max-minutes 10 --set train.lr=1e-3
    python train_fusion.py ... --resume            # continue from the latest checkpoint in --work-dir

The data root holds the info files of datasets/prepare_nuscenes.py (occ_infos_<split>.pkl) and the
Occ3D ground truth. Reads top to bottom: parse, build, loop, save.
"""
import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

import torch
from accelerate.utils import set_seed
from tqdm import tqdm

from datasets.build import dataset_from_config
from datasets.nuscenes_occ import collate, load_occ_gt
from occ import occ3d
from occ.checkpoint import load_checkpoint, load_partial, model_weights
from occ.config import apply_overrides, get_config
from occ.data import select_scenes
from occ.loop import fit, setup_run
from occ.errors import UsageError
from occ.evaluation import make_occupancy_validate
from occ.losses import class_weights_from_frequencies, count_class_voxels, four_losses, masked_cross_entropy
from occ.models import build_model

LOSSES = ("ce", "four")   # the values of train.loss this script implements


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    cli.add_training_args(parser)
    parser.add_argument("--init-from", metavar="CKPT", help="initialise matching weights from a checkpoint "
                                                            "(e.g. Occ-BEV pre-training) and report the rest")
    parser.add_argument("--init-prefixes", nargs="*", help="only load these key prefixes with --init-from")
    parser.add_argument("--scenes-fraction", type=float, default=1.0,
                        help="train on this fraction of the training scenes (seeded sample, docs/training.md#label-efficiency)")
    args = parser.parse_args(argv)
    cli.check_training_args(args)
    return args


def build_config(args):
    cfg = get_config(args.config)
    apply_overrides(cfg, args.set)
    if cfg.model.head != "occ":
        raise UsageError(f"--config {args.config} is a '{cfg.model.head}' model; train it with its own script")
    if cfg.train.loss not in LOSSES:
        raise UsageError(f"train.loss={cfg.train.loss!r} is not implemented by train_fusion.py: use one of {LOSSES}")
    return cfg


def class_frequencies(dataset):
    """Per-class voxel counts inside the camera mask over the training GT (for the four-loss CE)."""
    counts = torch.zeros(occ3d.NUM_CLASSES, dtype=torch.int64)
    for info in tqdm(dataset.infos, desc="class frequencies", unit="sample"):
        gt = load_occ_gt(dataset.gt_path(info))
        counts += count_class_voxels(torch.from_numpy(gt["semantics"]), torch.from_numpy(gt["mask_camera"]))
    return counts


def make_loss_fn(cfg, class_weights=None):
    """loss_fn(model, batch) -> dict of named losses (docs/training.md#losses)."""
    def loss_fn(model, batch):
        logits = model(batch)["occ_logits"]
        if cfg.train.loss == "four":
            return four_losses(logits, batch["semantics"], batch["mask_camera"], class_weights)
        return {"loss_ce": masked_cross_entropy(logits, batch["semantics"], batch["mask_camera"])}
    return loss_fn


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    train_split, train_info = cli.info_file(args, "train")
    train_set = dataset_from_config(cfg, args.data_root, train_info, train=True,
                                    skip_bad_samples=args.skip_bad_samples)
    select_scenes(train_set, args.scenes_fraction)
    val_set = None
    if not args.no_val:
        val_set = dataset_from_config(cfg, args.data_root, cli.info_file(args, "val")[1], train=False)

    set_seed(cfg.train.seed)  # seeded initial weights (and the same on every process)
    model = build_model(cfg)
    if args.init_from:
        checkpoint = load_checkpoint(args.init_from)
        weights = model_weights(checkpoint, use_ema=checkpoint.get("ema") is not None, path=args.init_from)
        print(f"--init-from {args.init_from}:\n{load_partial(model, weights, args.init_prefixes).summary()}")
    class_weights = class_weights_from_frequencies(class_frequencies(train_set)) if cfg.train.loss == "four" else None

    settings = cli.run_settings(args, "scenes_fraction", "init_from", "init_prefixes")
    run = setup_run(cfg, model, train_set, collate, **cli.setup_options(args, settings, __file__, argv))
    run.log(f"{cfg.name}: {len(train_set)} training samples ({train_split}, scenes fraction "
            f"{args.scenes_fraction}), {len(val_set) if val_set else 0} validation samples, "
            f"{run.accelerator.num_processes} process(es)")
    validate = make_occupancy_validate(val_set, collate) if val_set else None
    return fit(run, make_loss_fn(cfg, class_weights), validate, **cli.fit_options(args))


if __name__ == "__main__":
    cli.run_main(main)
