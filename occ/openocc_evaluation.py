"""Scoring OpenOcc v2 occupancy and flow (docs/metrics.md#mave-and-occscore): the scorer that
`evaluate.py --benchmark openocc` (scoring/openocc.py) and the training validation both call.

A scored OpenOcc sample is a dict holding `sample_token`, `pred` (uint8 (200, 200, 16), OpenOcc
class order), `pred_flow` (float32 (200, 200, 16, 2), m/s) and the GT `semantics` and `flow` of the
same shapes (`occ.evaluation.predict` yields them for a model with a flow head).
"""
import math

from tqdm import tqdm

from occ import openocc
from occ.evaluation import predict
from occ.loop import evaluate_with_ema
from occ.metrics import RayIoUMetric, scene_lidar_origins
from occ.visualize import gt_vs_pred_flow_image

SUMMARY_KEYS = ("rayiou", "rayiou@1", "rayiou@2", "rayiou@4", "mave", "occ_score")


def score_openocc(samples, ray_origins, total=None, on_sample=None, progress=True):
    """RayIoU@1/2/4 and RayIoU (no camera mask: the rays' own visibility), mAVE and OccScore of
    scored OpenOcc samples; ray_origins {sample_token: (K, 3) LiDAR origins}. on_sample(index,
    sample) is called for each. Returns {"num_samples", "rayiou", "rayiou@1", "rayiou@2",
    "rayiou@4", "mave", "occ_score", "per_class": {name: {"rayiou@1", "rayiou@2", "rayiou@4",
    "ave"}}}; NaN where a class is absent from GT and prediction (AVE: static classes, or no
    true-positive ray at 2 m)."""
    rays = RayIoUMetric(class_names=openocc.CLASS_NAMES, dynamic_classes=openocc.DYNAMIC_CLASSES)
    count = 0
    for index, sample in enumerate(tqdm(samples, total=total, desc="evaluate", unit="sample", disable=not progress)):
        missing = [key for key in ("pred", "pred_flow", "semantics", "flow") if key not in sample]
        if missing:
            raise ValueError(f"sample {sample.get('sample_token')} lacks {missing} (OpenOcc scores occupancy and flow)")
        rays.update(sample["pred"], sample["semantics"], ray_origins[sample["sample_token"]],
                    sample["pred_flow"], sample["flow"])
        if on_sample is not None:
            on_sample(index, sample)
        count += 1
    result = rays.compute()
    metrics = {"num_samples": count, **{key: result[key] for key in SUMMARY_KEYS}, "per_class": {}}
    for c, name in enumerate(openocc.CLASS_NAMES[:openocc.FREE]):
        metrics["per_class"][name] = {f"rayiou@{t}": result[f"iou@{t}"][c] for t in ("1", "2", "4")}
        metrics["per_class"][name]["ave"] = result["ave"][c]
    return metrics


def make_openocc_validate(val_set, collate_fn):
    """validate(run, step) for occ.loop.fit on OpenOcc: the EMA weights on `val_set` (which loads
    its OpenOcc GT), scored by `score_openocc`; RayIoU, RayIoU@1/2/4, mAVE, OccScore, per-class
    AVE and a bird's-eye GT-vs-prediction flow picture of the first sample to TensorBoard."""
    origins = scene_lidar_origins(val_set.infos)

    def validate(run, step):
        first = {}

        def keep_first(index, sample):
            if index == 0:
                first.update(sample)

        def score(network):
            samples = predict(network, val_set, run.accelerator.device, collate_fn, run.cfg.data.batch_size)
            return score_openocc(samples, origins, total=len(val_set), on_sample=keep_first, progress=False)
        metrics = evaluate_with_ema(run, score)
        if metrics is None:
            return None
        for key, tag in (("rayiou", "RayIoU"), ("rayiou@1", "RayIoU@1"), ("rayiou@2", "RayIoU@2"),
                         ("rayiou@4", "RayIoU@4"), ("mave", "mAVE"), ("occ_score", "OccScore")):
            if not math.isnan(metrics[key]):
                run.writer.add_scalar(f"val/{tag}", metrics[key], step)
        for name in (openocc.CLASS_NAMES[c] for c in openocc.DYNAMIC_CLASSES):
            if not math.isnan(metrics["per_class"][name]["ave"]):
                run.writer.add_scalar(f"val_ave/{name}", metrics["per_class"][name]["ave"], step)
        picture = gt_vs_pred_flow_image(first["semantics"], first["flow"], first["pred"], first["pred_flow"])
        run.writer.add_image("val/bev_flow_gt_vs_pred", picture, step, dataformats="HWC")
        run.log(f"step {step}: val RayIoU {100 * metrics['rayiou']:.2f}, mAVE {metrics['mave']:.3f}, "
                f"OccScore {100 * metrics['occ_score']:.2f}")
        return metrics
    return validate
