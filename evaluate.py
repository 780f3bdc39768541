"""Score occupancy predictions on an Occ3D-format split: mIoU (camera mask), geometry IoU, RayIoU.

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
Metrics are defined in occ/metrics.py (SPEC section 8); the run is deterministic.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from datasets.build import dataset_from_config, default_split, info_path
from datasets.nuscenes_occ import GRID_SHAPE, load_infos, load_occ_gt
from occ.checkpoint import CheckpointError
from occ.evaluation import build_model_from_checkpoint, predict
from occ.metrics import OCC3D_CLASS_NAMES, OCC3D_FREE, OccupancyMetric, RayIoUMetric, format_table, scene_lidar_origins
from occ.visualize import gt_vs_pred_image, save_png, voxel_render

MASKS = {"camera": "mask_camera", "lidar": "mask_lidar", "none": None}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint written by a training script")
    source.add_argument("--pred-dir", help="folder of Occ3D-format <sample_token>.npz predictions")
    parser.add_argument("--data-root", required=True, help="dataset root holding the info files and gts/")
    parser.add_argument("--split", help="info file split (default: val, or mini_val when only it exists)")
    parser.add_argument("--info", help="info file (default: DATA_ROOT/occ_infos_<split>.pkl)")
    parser.add_argument("--mask", choices=sorted(MASKS), default="camera",
                        help="voxels scored by mIoU: mask_camera (Occ3D), mask_lidar, or all")
    parser.add_argument("--no-rayiou", action="store_true", help="skip RayIoU (the slow part)")
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--vis-dir", help="write PNG pictures of the first --vis-samples samples here")
    parser.add_argument("--vis-samples", type=int, default=4)
    parser.add_argument("--no-ema", action="store_true", help="--ckpt: use the raw weights, not the EMA ones")
    parser.add_argument("--save-pred", help="--ckpt: write the predictions to this folder (submission format)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args(argv)
    if args.pred_dir and (args.no_ema or args.save_pred):
        parser.error("--no-ema and --save-pred only apply to --ckpt")
    return args


# ------------------------------------------------------------------------------- predictions
def load_prediction(path):
    """An Occ3D submission file -> uint8 (200, 200, 16); clear errors naming the file."""
    try:
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"unreadable prediction {path}: {error}") from error
    if "semantics" in arrays:
        pred = arrays["semantics"]
    elif len(arrays) == 1:
        pred = next(iter(arrays.values()))
    else:
        raise ValueError(f"prediction {path} holds {sorted(arrays)}: expected 'semantics' or a single array")
    if pred.shape != GRID_SHAPE:
        raise ValueError(f"prediction {path} has shape {pred.shape}, expected {GRID_SHAPE}")
    if not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"prediction {path} has dtype {pred.dtype}, expected integer labels (uint8)")
    if pred.min() < 0 or pred.max() > OCC3D_FREE:
        raise ValueError(f"prediction {path} holds labels outside [0, {OCC3D_FREE}]: "
                         f"min {pred.min()}, max {pred.max()}")
    return pred.astype(np.uint8)


def save_prediction(folder, token, pred):
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, f"{token}.npz"), semantics=np.asarray(pred, dtype=np.uint8))


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


def folder_predictions(pred_dir, infos):
    """Yields (info, prediction) in info order."""
    for info in infos:
        yield info, load_prediction(os.path.join(pred_dir, f"{info['token']}.npz"))


# ----------------------------------------------------------------------------------- scoring
def draw_sample(vis_dir, token, gt, pred):
    """<token>_bev.png (GT vs prediction, camera-hidden columns greyed) and <token>_3d.png (prediction)."""
    save_png(gt_vs_pred_image(gt["semantics"], pred, gt["mask_camera"]), os.path.join(vis_dir, f"{token}_bev.png"))
    save_png(voxel_render(pred), os.path.join(vis_dir, f"{token}_3d.png"))


def score(predictions, infos, data_root, mask="camera", rayiou=True, occ_gt_dir="gts", save_pred=None,
          vis_dir=None, vis_samples=0):
    """predictions: iterable of (info, uint8 (200, 200, 16)) covering `infos`. Returns the metrics
    dict (see `report`), NaN where a class is absent from both GT and prediction."""
    occupancy = OccupancyMetric()
    rays = RayIoUMetric() if rayiou else None
    origins = scene_lidar_origins(infos) if rayiou else None
    for index, (info, pred) in enumerate(tqdm(predictions, total=len(infos), desc="evaluate", unit="sample")):
        gt = load_occ_gt(os.path.join(data_root, occ_gt_dir, info["scene_name"], info["token"], "labels.npz"))
        if vis_dir and index < vis_samples:
            draw_sample(vis_dir, info["token"], gt, pred)
        occupancy.update(pred, gt["semantics"], gt[MASKS[mask]] if MASKS[mask] else None)
        if rays is not None:
            rays.update(pred, gt["semantics"], origins[info["token"]])
        if save_pred:
            save_prediction(save_pred, info["token"], pred)
    result = occupancy.compute()
    metrics = {"num_samples": len(infos), "mask": mask, "miou": result["miou"],
               "geometry_iou": result["geometry_iou"],
               "per_class": {name: {"iou": iou} for name, iou in zip(OCC3D_CLASS_NAMES, result["iou"])}}
    if rays is not None:
        ray_result = rays.compute()
        for key in ("rayiou", "rayiou@1", "rayiou@2", "rayiou@4"):
            metrics[key] = ray_result[key]
        for threshold in ("1", "2", "4"):
            for name, iou in zip(OCC3D_CLASS_NAMES, ray_result[f"iou@{threshold}"]):
                metrics["per_class"][name][f"rayiou@{threshold}"] = iou
    return metrics


def report(metrics):
    """The per-class table and the summary lines, as text."""
    names = OCC3D_CLASS_NAMES[:OCC3D_FREE]
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


def main(argv=None):
    args = parse_args(argv)
    split = args.split or default_split(args.data_root, "val")
    path = args.info or info_path(args.data_root, split)
    infos = load_infos(path)
    if not infos:
        raise ValueError(f"info file {path} holds no samples")
    occ_gt_dir = "gts"
    if args.pred_dir:
        extra = check_prediction_folder(args.pred_dir, infos)
        if extra:
            print(f"note: {extra} prediction files in {args.pred_dir} are not samples of {path}; not scored")
        predictions = folder_predictions(args.pred_dir, infos)
    else:
        torch.manual_seed(0)
        model, cfg = build_model_from_checkpoint(args.ckpt, not args.no_ema, args.device)
        print(f"model {cfg.name} from {args.ckpt} ({'raw' if args.no_ema else 'EMA'} weights) on {args.device}")
        occ_gt_dir = cfg.data.occ_gt_dir
        predictions = predict(model, dataset_from_config(cfg, args.data_root, path, train=False, load_gt=False), args.device, args.batch_size,
                              args.num_workers)
    metrics = score(predictions, infos, args.data_root, args.mask, not args.no_rayiou, occ_gt_dir, args.save_pred,
                    args.vis_dir, args.vis_samples)
    metrics["split"], metrics["info_file"] = split, path
    metrics["source"] = args.pred_dir or args.ckpt
    print(report(metrics))
    if args.save_pred:
        print(f"predictions written to {args.save_pred}")
    if args.vis_dir:
        print(f"pictures of {min(args.vis_samples, len(infos))} samples written to {args.vis_dir}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(json_safe(metrics), f, indent=2)
        print(f"metrics written to {args.out}")
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, CheckpointError) as error:
        sys.exit(f"error: {error}")
