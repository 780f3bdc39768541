"""Running an occupancy model over a dataset and scoring it: the one scorer that evaluate.py and
the training scripts' validation both call.

A scored sample is a dict holding `sample_token`, `pred` (uint8 (200, 200, 16), [x, y, z]) and its
ground truth `semantics`, `mask_camera`, `mask_lidar` (numpy arrays of the same shape); for OpenOcc
also `pred_flow` and the GT `flow` (float32 (200, 200, 16, 2), occ.openocc_evaluation). `predict`
yields such dicts from a model and a dataset that loads its ground truth; evaluate.py builds them
from a folder of saved predictions and the GT files.
"""
import math

import torch
from tqdm import tqdm

from occ import occ3d
from occ.checkpoint import CheckpointError, load_checkpoint, model_weights
from occ.config import config_from_dict
from occ.data import move_batch
from occ.loop import evaluate_with_ema
from occ.metrics import OccupancyMetric, RayIoUMetric
from occ.models import build_model
from occ.visualize import gt_vs_pred_image

GT_KEYS = ("semantics", "mask_camera", "mask_lidar", "flow")  # flow: OpenOcc GT only
MASKS = {"camera": "mask_camera", "lidar": "mask_lidar", "none": None}   # the voxels mIoU counts


HEAD_NAMES = {"occ": "an occupancy model", "detection": "a detection model"}   # model.head -> words


def build_model_from_checkpoint(path, use_ema, device, head="occ"):
    """(model in eval mode on `device`, config) from a training checkpoint whose model has the
    given `head` (model.head: "occ" or "detection"); CheckpointError naming the file otherwise."""
    checkpoint = load_checkpoint(path)
    if not checkpoint.get("config"):
        raise CheckpointError(f"checkpoint {path} stores no config: cannot rebuild its model")
    cfg = config_from_dict(checkpoint["config"])
    if cfg.model.head != head:
        raise CheckpointError(f"checkpoint {path} is a '{cfg.model.head}' model ({cfg.name}), not {HEAD_NAMES[head]}")
    model = build_model(cfg)
    state = model_weights(checkpoint, use_ema, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not match the model its config describes: {error}") from error
    return model.to(device).eval(), cfg


@torch.no_grad()
def predict(model, dataset, device, collate_fn, batch_size=1, num_workers=0):
    """Yields one scored-sample dict (module docstring) per sample of `dataset`, in order; the GT
    entries are present when the dataset loads its ground truth."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_fn, pin_memory=torch.device(device).type == "cuda")
    for batch in loader:
        outputs = model(move_batch(batch, device))
        preds = outputs["occ_logits"].argmax(-1).to(torch.uint8).cpu().numpy()  # logits (B, X, Y, Z, classes)
        flows = outputs["flow"].float().cpu().numpy() if "flow" in outputs else None  # (B, X, Y, Z, 2)
        for index, pred in enumerate(preds):
            sample = {"sample_token": batch["sample_token"][index], "pred": pred}
            if flows is not None:
                sample["pred_flow"] = flows[index]
            for key in GT_KEYS:
                if key in batch:
                    sample[key] = batch[key][index].numpy()
            yield sample


def score_occupancy(samples, mask="camera", ray_origins=None, total=None, on_sample=None, progress=True,
                    class_names=occ3d.CLASS_NAMES):
    """Occ3D mIoU and geometry IoU (over the voxels of `mask`: camera, lidar or none), and RayIoU
    when `ray_origins` ({sample_token: (K, 3) LiDAR origins}) is given, of scored-sample dicts.
    class_names: the benchmark's classes, free last (occ.waymo.CLASS_NAMES for Occ3D-Waymo).
    on_sample(index, sample) is called for each (pictures, saving predictions).
    Returns {"num_samples", "mask", "miou", "geometry_iou", "per_class": {name: {"iou"[, "rayiou@1",
    "rayiou@2", "rayiou@4"]}}[, "rayiou", "rayiou@1", "rayiou@2", "rayiou@4"]}; IoUs are NaN where a
    class is absent from both GT and prediction."""
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {sorted(MASKS)}, got {mask!r}")
    occupancy = OccupancyMetric(class_names)
    rays = RayIoUMetric() if ray_origins is not None else None
    count = 0
    for index, sample in enumerate(tqdm(samples, total=total, desc="evaluate", unit="sample", disable=not progress)):
        missing = [key for key in ("pred", "semantics") + ((MASKS[mask],) if MASKS[mask] else ()) if key not in sample]
        if missing:
            raise ValueError(f"sample {sample.get('sample_token')} lacks {missing} (load its ground truth)")
        occupancy.update(sample["pred"], sample["semantics"], sample[MASKS[mask]] if MASKS[mask] else None)
        if rays is not None:
            rays.update(sample["pred"], sample["semantics"], ray_origins[sample["sample_token"]])
        if on_sample is not None:
            on_sample(index, sample)
        count += 1
    result = occupancy.compute()
    metrics = {"num_samples": count, "mask": mask, "miou": result["miou"], "geometry_iou": result["geometry_iou"],
               "per_class": {name: {"iou": iou} for name, iou in zip(class_names, result["iou"])}}
    if rays is not None:
        ray_result = rays.compute()
        for key in ("rayiou", "rayiou@1", "rayiou@2", "rayiou@4"):
            metrics[key] = ray_result[key]
        for threshold in ("1", "2", "4"):
            for name, iou in zip(occ3d.CLASS_NAMES, ray_result[f"iou@{threshold}"]):
                metrics["per_class"][name][f"rayiou@{threshold}"] = iou
    return metrics


def make_occupancy_validate(val_set, collate_fn, class_names=occ3d.CLASS_NAMES, palette=occ3d.PALETTE):
    """validate(run, step) for occ.loop.fit: the EMA weights on `val_set` (which loads its GT),
    scored by `score_occupancy` (camera mask, no RayIoU; `class_names` free last); mIoU, geometry
    IoU, per-class IoU and a bird's-eye GT-vs-prediction picture of the first sample (in `palette`,
    with the legend of `class_names`) to TensorBoard."""
    def validate(run, step):
        first = {}

        def keep_first(index, sample):
            if index == 0:
                first.update(sample)

        def score(network):
            samples = predict(network, val_set, run.accelerator.device, collate_fn, run.cfg.data.batch_size)
            return score_occupancy(samples, total=len(val_set), on_sample=keep_first, progress=False,
                                   class_names=class_names)
        metrics = evaluate_with_ema(run, score)
        if metrics is None:
            return None
        run.writer.add_scalar("val/mIoU", metrics["miou"], step)
        run.writer.add_scalar("val/geometry_IoU", metrics["geometry_iou"], step)
        for name in class_names[:-1]:
            iou = metrics["per_class"][name]["iou"]
            if not math.isnan(iou):
                run.writer.add_scalar(f"val_iou/{name}", iou, step)
        picture = gt_vs_pred_image(first["semantics"], first["pred"], first["mask_camera"], class_names, palette)
        run.writer.add_image("val/bev_gt_vs_pred", picture, step, dataformats="HWC")
        run.log(f"step {step}: val mIoU {100 * metrics['miou']:.2f}, geometry IoU {100 * metrics['geometry_iou']:.2f}")
        return metrics
    return validate
