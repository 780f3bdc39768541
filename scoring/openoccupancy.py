"""Score OpenOccupancy (nuScenes-Occupancy) predictions on a split: SC IoU (empty vs non-empty) and
SSC mIoU (classes 1..16) from one confusion matrix over the split, GT label 255 ignored, no
visibility mask (docs/metrics.md#openoccupancy-sc-iou-and-ssc-miou).

    python evaluate.py --benchmark openoccupancy --ckpt CKPT --data-root ROOT [--split val] [--out metrics.json]
    python evaluate.py --benchmark openoccupancy --pred-dir DIR --data-root ROOT [--split val] [--out metrics.json]

The samples are the records of ROOT/occ_infos_<split>.pkl (--info for another file; default split
val, or mini_val when only that one exists); the GT of a sample is
ROOT/nuScenes-Occupancy/scene_<scene_token>/occupancy/<lidar_token>.npy. With --ckpt the model is
rebuilt from the checkpoint's config (an OpenOccupancy preset, data.benchmark "openoccupancy") with
its EMA weights (--no-ema: the raw ones) and run in test mode; a model with a coarser output grid
is scored after trilinear upsampling of its logits to 512 x 512 x 40. A --pred-dir holds one
<sample_token>.npz per sample with `semantics`, a uint8 (512, 512, 40) array indexed [x, y, z] in
the key frame's LiDAR frame (0 empty, 1..16 the classes). --out writes the metrics as JSON (keys
sc_iou, ssc_miou, per_class, ...).
"""
import os

import cli
from datasets.build import dataset_from_config
from datasets.nuscenes_occ import collate
from datasets.openoccupancy import NUM_CLASSES, gt_path, load_openoccupancy_gt
from occ import openocc
from occ.errors import UsageError
from occ.metrics import format_table
from occ.openoccupancy_evaluation import SEMANTIC_NAMES, predict_openoccupancy, score_openoccupancy
from scoring.common import check_scored_folder, checkpoint_model, finish, label_grid, read_semantics, split_infos


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    cli.add_scoring_args(parser, "checkpoint of an OpenOccupancy model (train_fusion.py)", "--pred-dir",
                         "folder of <sample_token>.npz predictions (512 x 512 x 40 `semantics`)",
                         "dataset root holding the info files and nuScenes-Occupancy/")
    args = parser.parse_args(argv)
    cli.check_scoring_args(parser, args)
    return args


def load_prediction(path):
    """An OpenOccupancy prediction file -> uint8 (512, 512, 40) indexed [x, y, z] in the LiDAR frame;
    FileNotFoundError when missing, DataError naming the file for unreadable files, a wrong shape,
    non-integer or out-of-range labels."""
    return label_grid(path, read_semantics(path), openocc.OPENOCCUPANCY_GRID_SHAPE, NUM_CLASSES - 1,
                      "0 empty, 1..16")


def folder_samples(pred_dir, infos, data_root):
    """Scored-sample dicts of a prediction folder and the GT files, in info order."""
    for info in infos:
        semantics = load_openoccupancy_gt(gt_path(data_root, info["scene_token"], info["lidar_token"]))
        pred = load_prediction(os.path.join(pred_dir, f"{info['token']}.npz"))
        yield {"sample_token": info["token"], "pred": pred, "semantics": semantics}


def model_samples(args, path):
    """Scored-sample dicts of the checkpoint's model on the split."""
    model, cfg = checkpoint_model(args, "openoccupancy")
    if cfg.model.num_classes != NUM_CLASSES:
        raise UsageError(f"checkpoint {args.ckpt} is a {cfg.name} model with {cfg.model.num_classes} classes, "
                         f"not {NUM_CLASSES} (OpenOccupancy's)")
    dataset = dataset_from_config(cfg, args.data_root, path, train=False, load_gt=True)
    return predict_openoccupancy(model, dataset, args.device, collate, args.batch_size, args.num_workers)


def report(metrics):
    """The per-class table and the summary lines, as text."""
    table = format_table(SEMANTIC_NAMES, {"IoU": [metrics["per_class"][n] for n in SEMANTIC_NAMES]},
                         {"IoU": metrics["ssc_miou"]})
    return (f"{table}\nSC IoU: {100 * metrics['sc_iou']:.2f}\n"
            f"SSC mIoU: {100 * metrics['ssc_miou']:.2f} (mean over the classes present in GT or prediction)")


def main(argv=None):
    args = parse_args(argv)
    split, path, infos = split_infos(args)
    if args.pred_dir:
        check_scored_folder(args.pred_dir, infos, path)
        samples = folder_samples(args.pred_dir, infos, args.data_root)
    else:
        samples = model_samples(args, path)
    metrics = score_openoccupancy(samples, total=len(infos))
    metrics.update(benchmark="openoccupancy", split=split, info_file=path, source=args.pred_dir or args.ckpt)
    return finish(args, metrics, report(metrics))


if __name__ == "__main__":
    cli.run_main(main)
