"""Score predictions on a split: Occ3D-nuScenes by default (mIoU in the camera mask, geometry IoU,
RayIoU); --benchmark NAME scores another benchmark with the module scoring/NAME.py (its own options:
python evaluate.py --benchmark NAME --help).

    python evaluate.py --ckpt CKPT --data-root ROOT [--split val] [--no-ema] [--save-pred DIR] [--out metrics.json]
    python evaluate.py --pred-dir DIR --data-root ROOT [--split val] [--out metrics.json]
    add --vis-dir DIR to draw the first --vis-samples samples (bird's-eye GT vs prediction, 3-D view)

The samples are the records of ROOT/occ_infos_<split>.pkl (datasets/prepare_nuscenes.py; --info
to read another file; the default split is val, or mini_val when only that one exists), the
ground truth ROOT/gts/<scene_name>/<token>/labels.npz. With --ckpt the model is rebuilt from the
config stored in the checkpoint, loaded with its EMA weights (--no-ema: the raw ones) and run on
the split in test mode (no augmentation, nearest sweeps); --save-pred writes its predictions in
the Occ3D submission format, one <sample_token>.npz per sample holding `semantics`, a uint8
(200, 200, 16) array. With --pred-dir such a folder is scored (the key `semantics`, or the single
array of the file); every sample of the split must be there.
Metrics are defined in occ/metrics.py (docs/metrics.md); the run is deterministic.
"""
import importlib
import os
import sys

import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

from datasets.build import dataset_from_config
from datasets.nuscenes_occ import collate, load_occ_gt
from occ import occ3d
from occ.errors import UsageError
from occ.evaluation import MASKS, predict, score_occupancy
from occ.metrics import format_table, scene_lidar_origins
from occ.visualize import gt_vs_pred_image, save_png, voxel_render
from scoring.common import (check_scored_folder, checkpoint_model, finish, label_grid, read_semantics,
                            save_prediction, split_infos)


BENCHMARKS = ("occ3d", "detection", "waymo", "openocc", "openoccupancy")  # the first one is this file's; the others are scoring/<name>.py


def split_benchmark(argv):
    """(benchmark name, the other arguments) of a command line: --benchmark NAME may stand anywhere."""
    argv = list(sys.argv[1:] if argv is None else argv)
    benchmark = BENCHMARKS[0]
    for index, arg in enumerate(argv):
        if arg == "--benchmark" or arg.startswith("--benchmark="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[index + 1] if index + 1 < len(argv) else "")
            del argv[index:index + (1 if "=" in arg else 2)]
            benchmark = value
            break
    if benchmark not in BENCHMARKS:
        raise UsageError(f"--benchmark {benchmark!r} is not one of {BENCHMARKS}")
    return benchmark, argv


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    parser.add_argument("--benchmark", choices=BENCHMARKS, default=BENCHMARKS[0],
                        help="the benchmark to score (default occ3d; the others have their own options)")
    cli.add_scoring_args(parser, "checkpoint written by a training script", "--pred-dir",
                         "folder of Occ3D-format <sample_token>.npz predictions",
                         "dataset root holding the info files and gts/")
    parser.add_argument("--mask", choices=sorted(MASKS), default="camera",
                        help="voxels scored by mIoU: mask_camera (Occ3D), mask_lidar, or all")
    parser.add_argument("--no-rayiou", action="store_true", help="skip RayIoU (the slow part)")
    parser.add_argument("--vis-dir", help="write PNG pictures of the first --vis-samples samples here")
    parser.add_argument("--vis-samples", type=int, default=4)
    parser.add_argument("--save-pred", help="--ckpt: write the predictions to this folder (submission format)")
    args = parser.parse_args(argv)
    cli.check_scoring_args(parser, args, ckpt_only=("no_ema", "save_pred"), folders=("save_pred", "vis_dir"))
    return args


# ------------------------------------------------------------------------------- predictions
def load_prediction(path):
    """An Occ3D submission file -> uint8 (200, 200, 16) (read_semantics, label_grid)."""
    return label_grid(path, read_semantics(path), occ3d.GRID_SHAPE, occ3d.FREE, f"Occ3D classes, free = {occ3d.FREE}")


def folder_samples(pred_dir, infos, data_root, gt_dir=occ3d.GT_DIR):
    """Scored-sample dicts (occ.evaluation) of a prediction folder and the GT files, in info order."""
    for info in infos:
        gt = load_occ_gt(occ3d.gt_path(data_root, info["scene_name"], info["token"], gt_dir))
        pred = load_prediction(os.path.join(pred_dir, f"{info['token']}.npz"))
        yield {"sample_token": info["token"], "pred": pred, **gt}


def model_samples(args, path):
    """Scored-sample dicts of the checkpoint's model on the split (its GT read by the dataset)."""
    model, cfg = checkpoint_model(args, "occ3d")
    dataset = dataset_from_config(cfg, args.data_root, path, train=False, load_gt=True)
    return predict(model, dataset, args.device, collate, args.batch_size, args.num_workers)


def sample_writer(args):
    """on_sample(index, sample) of occ.evaluation.score_occupancy: pictures of the first
    --vis-samples samples, predictions to --save-pred."""
    def on_sample(index, sample):
        token, pred = sample["sample_token"], sample["pred"]
        if args.vis_dir and index < args.vis_samples:
            os.makedirs(args.vis_dir, exist_ok=True)
            picture = gt_vs_pred_image(sample["semantics"], pred, sample["mask_camera"])
            save_png(picture, os.path.join(args.vis_dir, f"{token}_bev.png"))
            save_png(voxel_render(pred), os.path.join(args.vis_dir, f"{token}_3d.png"))
        if args.save_pred:
            save_prediction(args.save_pred, token, pred)
    return on_sample


def report(metrics):
    """The per-class table and the summary lines, as text."""
    names = occ3d.CLASS_NAMES[:occ3d.FREE]
    columns = {"IoU": [metrics["per_class"][n]["iou"] for n in names]}
    means = {"IoU": metrics["miou"]}
    if "rayiou" in metrics:
        for threshold in ("1", "2", "4"):
            columns[f"Ray@{threshold}"] = [metrics["per_class"][n][f"rayiou@{threshold}"] for n in names]
            means[f"Ray@{threshold}"] = metrics[f"rayiou@{threshold}"]
    lines = [format_table(names, columns, means),
             f"mIoU ({metrics['mask']} mask): {100 * metrics['miou']:.2f}",
             f"geometry IoU: {100 * metrics['geometry_iou']:.2f}"]
    if "rayiou" in metrics:
        lines.append(f"RayIoU: {100 * metrics['rayiou']:.2f}  (@1 m {100 * metrics['rayiou@1']:.2f}, "
                     f"@2 m {100 * metrics['rayiou@2']:.2f}, @4 m {100 * metrics['rayiou@4']:.2f})")
    return "\n".join(lines)


def main(argv=None):
    benchmark, argv = split_benchmark(argv)
    if benchmark != "occ3d":
        return importlib.import_module(f"scoring.{benchmark}").main(argv)
    args = parse_args(argv)
    split, path, infos = split_infos(args)
    if args.pred_dir:
        check_scored_folder(args.pred_dir, infos, path)
        samples = folder_samples(args.pred_dir, infos, args.data_root)
    else:
        samples = model_samples(args, path)
    origins = None if args.no_rayiou else scene_lidar_origins(infos)
    metrics = score_occupancy(samples, args.mask, origins, total=len(infos), on_sample=sample_writer(args))
    metrics["split"], metrics["info_file"] = split, path
    metrics["source"] = args.pred_dir or args.ckpt
    return finish(args, metrics, report(metrics))


if __name__ == "__main__":
    cli.run_main(main)
