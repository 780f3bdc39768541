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
import json
import math
import os
import sys

import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

import numpy as np
import torch

from datasets.build import dataset_from_config, default_split, info_path
from datasets.nuscenes_occ import collate, load_infos, load_occ_gt, read_npz
from occ import occ3d
from occ.errors import DataError, UsageError
from occ.evaluation import MASKS, build_model_from_checkpoint, predict, score_occupancy
from occ.metrics import format_table, scene_lidar_origins
from occ.visualize import gt_vs_pred_image, save_png, voxel_render


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
def label_grid(path, array, shape, max_label, what):
    """Check a predicted label grid read from `path`: shape, integer dtype, labels in [0, max_label]
    (`what` describes them in the error); returns it as uint8. DataError naming the file otherwise."""
    if array.shape != shape:
        raise DataError(f"prediction {path} has shape {array.shape}, expected {shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"prediction {path} has dtype {array.dtype}, expected integer labels (uint8)")
    if array.min() < 0 or array.max() > max_label:
        raise DataError(f"prediction {path} holds labels outside [0, {max_label}] ({what}): "
                        f"min {array.min()}, max {array.max()}")
    return array.astype(np.uint8)


def read_semantics(path):
    """The `semantics` array of a prediction file (or its single array); FileNotFoundError when the
    file is missing, DataError naming it when it is empty, truncated, corrupt or holds other arrays."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prediction not found: {path}")
    arrays = read_npz(path, "prediction")  # BadZipFile, EOFError, zlib.error... -> DataError
    if "semantics" in arrays:
        return arrays["semantics"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise DataError(f"prediction {path} holds {sorted(arrays)}: expected 'semantics' or a single array")


def load_prediction(path):
    """An Occ3D submission file -> uint8 (200, 200, 16) (read_semantics, label_grid)."""
    return label_grid(path, read_semantics(path), occ3d.GRID_SHAPE, occ3d.FREE, f"Occ3D classes, free = {occ3d.FREE}")


def save_prediction(folder, token, pred):
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, f"{token}.npz"), semantics=np.asarray(pred, dtype=np.uint8))


def split_infos(args):
    """(split, info file, its records) of a scorer's --split / --info (default split: val, or
    mini_val when only that one exists); UsageError for an info file without samples."""
    split = args.split or default_split(args.data_root, "val")
    path = args.info or info_path(args.data_root, split)
    infos = load_infos(path)
    if not infos:
        raise UsageError(f"info file {path} holds no samples")
    return split, path, infos


def check_prediction_folder(pred_dir, infos):
    """Raises naming the samples of the split that have no <token>.npz in pred_dir; returns the
    number of files there that are not part of the split."""
    if not os.path.isdir(pred_dir):
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    present = {name[:-len(".npz")] for name in os.listdir(pred_dir) if name.endswith(".npz")}
    tokens = [info["token"] for info in infos]
    missing = [token for token in tokens if token not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"prediction folder {pred_dir} lacks {len(missing)} of the {len(tokens)} samples "
                                f"of the split: {shown} (expected <sample_token>.npz for each)")
    return len(present - set(tokens))


def check_scored_folder(pred_dir, infos, info_file):
    """check_prediction_folder for a scorer: raises for missing samples, says on stdout how many
    files of pred_dir are not samples of `info_file` (they are not scored)."""
    extra = check_prediction_folder(pred_dir, infos)
    if extra:
        print(f"note: {extra} prediction files in {pred_dir} are not samples of {info_file}; not scored")


def folder_samples(pred_dir, infos, data_root, gt_dir=occ3d.GT_DIR):
    """Scored-sample dicts (occ.evaluation) of a prediction folder and the GT files, in info order."""
    for info in infos:
        gt = load_occ_gt(occ3d.gt_path(data_root, info["scene_name"], info["token"], gt_dir))
        pred = load_prediction(os.path.join(pred_dir, f"{info['token']}.npz"))
        yield {"sample_token": info["token"], "pred": pred, **gt}


def checkpoint_model(args):
    """(model, cfg) of --ckpt on --device, EMA weights unless --no-ema, seeded; says which on stdout.
    Every benchmark's scorer loads its checkpoint through here, then checks cfg.data.benchmark."""
    torch.manual_seed(0)
    model, cfg = build_model_from_checkpoint(args.ckpt, not args.no_ema, args.device)
    print(f"model {cfg.name} from {args.ckpt} ({'raw' if args.no_ema else 'EMA'} weights) on {args.device}")
    return model, cfg


def model_samples(args, path):
    """Scored-sample dicts of the checkpoint's model on the split (its GT read by the dataset)."""
    model, cfg = checkpoint_model(args)
    if cfg.data.benchmark != "occ3d":
        raise UsageError(f"checkpoint {args.ckpt} ({cfg.name}) was trained for data.benchmark = "
                         f"{cfg.data.benchmark!r}: score it with --benchmark {cfg.data.benchmark}")
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


def json_safe(value):
    """NaN -> None recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_metrics(path, metrics):
    """The metrics as JSON (NaN -> null) at `path`, its folder made when missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(json_safe(metrics), f, indent=2)
    print(f"metrics written to {path}")


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
    print(report(metrics))
    if args.save_pred:
        print(f"predictions written to {args.save_pred}")
    if args.vis_dir:
        print(f"pictures of {min(args.vis_samples, len(infos))} samples written to {args.vis_dir}")
    if args.out:
        write_metrics(args.out, metrics)
    return metrics


if __name__ == "__main__":
    cli.run_main(main)
