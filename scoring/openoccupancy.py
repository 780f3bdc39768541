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

import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

import torch

from datasets.build import dataset_from_config, default_split, info_path
from datasets.nuscenes_occ import collate, load_infos
from datasets.openoccupancy import NUM_CLASSES, gt_path, load_openoccupancy_gt
from evaluate import check_prediction_folder, checkpoint_model, label_grid, read_semantics, write_metrics
from occ import openocc
from occ.errors import UsageError
from occ.metrics import format_table
from occ.openoccupancy_evaluation import SEMANTIC_NAMES, predict_openoccupancy, score_openoccupancy


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint of an OpenOccupancy model (train_fusion.py)")
    source.add_argument("--pred-dir", help="folder of <sample_token>.npz predictions (512 x 512 x 40 `semantics`)")
    parser.add_argument("--data-root", required=True,
                        help="dataset root holding the info files and nuScenes-Occupancy/")
    parser.add_argument("--split", help="info file split (default: val, or mini_val when only it exists)")
    parser.add_argument("--info", help="info file (default: DATA_ROOT/occ_infos_<split>.pkl)")
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--no-ema", action="store_true", help="--ckpt: use the raw weights, not the EMA ones")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args(argv)
    if args.pred_dir and args.no_ema:
        parser.error("--no-ema only applies to --ckpt")
    if args.out and os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a folder; give the path of the JSON file to write")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
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
    model, cfg = checkpoint_model(args)
    if cfg.data.benchmark != "openoccupancy" or cfg.model.num_classes != NUM_CLASSES:
        raise UsageError(f"checkpoint {args.ckpt} is a {cfg.name} model (data.benchmark {cfg.data.benchmark!r}, "
                         f"{cfg.model.num_classes} classes), not an OpenOccupancy one")
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
    split = args.split or default_split(args.data_root, "val")
    path = args.info or info_path(args.data_root, split)
    infos = load_infos(path)
    if args.pred_dir:
        extra = check_prediction_folder(args.pred_dir, infos)
        if extra:
            print(f"note: {extra} prediction files in {args.pred_dir} are not samples of {path}; not scored")
        samples = folder_samples(args.pred_dir, infos, args.data_root)
    else:
        samples = model_samples(args, path)
    metrics = score_openoccupancy(samples, total=len(infos))
    metrics.update(benchmark="openoccupancy", split=split, info_file=path, source=args.pred_dir or args.ckpt)
    print(report(metrics))
    if args.out:
        write_metrics(args.out, metrics)
    return metrics


if __name__ == "__main__":
    cli.run_main(main)
