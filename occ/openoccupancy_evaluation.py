"""Scoring OpenOccupancy (nuScenes-Occupancy, docs/metrics.md#openoccupancy-sc-iou-and-ssc-miou): the
scorer that `evaluate.py --benchmark openoccupancy` (scoring/openoccupancy.py) and the training
validation both call.

A scored OpenOccupancy sample is a dict holding `sample_token`, `pred` (uint8 (512, 512, 40),
[x, y, z] in the key frame's LiDAR frame, 0 empty, 1..16) and its GT `semantics` (the same shape,
255 = ignored). A model whose output grid is coarser is scored after trilinear upsampling of its
logits to 512 x 512 x 40, then argmax (`predict_openoccupancy`).
"""
import math

import torch
from tqdm import tqdm

from occ import openocc
from occ.data import move_batch
from occ.loop import evaluate_with_ema
from occ.metrics import SSCMetric, upsample_logits

SEMANTIC_NAMES = openocc.OPENOCCUPANCY_CLASS_NAMES[1:]  # the 16 classes SSC mIoU averages


def logits_to_prediction(logits):
    """Occupancy logits (B, X, Y, Z, 17) -> uint8 labels (B, 512, 512, 40): argmax, after trilinear
    upsampling of the logits when the model's grid is not the OpenOccupancy grid."""
    if tuple(logits.shape[1:4]) != openocc.OPENOCCUPANCY_GRID_SHAPE:
        logits = upsample_logits(logits.permute(0, 4, 1, 2, 3).float())       # (B, 17, 512, 512, 40)
        return logits.argmax(1).to(torch.uint8)
    return logits.argmax(-1).to(torch.uint8)


@torch.no_grad()
def predict_openoccupancy(model, dataset, device, collate_fn, batch_size=1, num_workers=0):
    """Yields one scored-sample dict per sample of `dataset` (an OpenOccupancy dataset), in order;
    `semantics` is present when the dataset loads its GT."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_fn, pin_memory=torch.device(device).type == "cuda")
    for batch in loader:
        preds = logits_to_prediction(model(move_batch(batch, device))["occ_logits"]).cpu().numpy()
        for index, pred in enumerate(preds):
            sample = {"sample_token": batch["sample_token"][index], "pred": pred}
            if "semantics" in batch:
                sample["semantics"] = batch["semantics"][index].numpy()
            yield sample


def score_openoccupancy(samples, total=None, on_sample=None, progress=True):
    """SC IoU and SSC mIoU of scored OpenOccupancy samples, from one confusion matrix over all of
    them (255 ignored). on_sample(index, sample) is called for each. Returns {"num_samples",
    "sc_iou", "ssc_miou", "per_class": {name: iou}} over the 16 semantic classes; NaN where a class
    is absent from both GT and prediction (SSC mIoU skips it)."""
    metric = SSCMetric()
    count = 0
    for index, sample in enumerate(tqdm(samples, total=total, desc="evaluate", unit="sample", disable=not progress)):
        for key in ("pred", "semantics"):
            if sample.get(key) is None or tuple(sample[key].shape) != openocc.OPENOCCUPANCY_GRID_SHAPE:
                raise ValueError(f"sample {sample.get('sample_token')}: '{key}' must be a "
                                 f"{openocc.OPENOCCUPANCY_GRID_SHAPE} grid")
        metric.update(sample["pred"], sample["semantics"])
        if on_sample is not None:
            on_sample(index, sample)
        count += 1
    result = metric.compute()
    return {"num_samples": count, "sc_iou": result["sc_iou"], "ssc_miou": result["ssc_miou"],
            "per_class": dict(zip(SEMANTIC_NAMES, result["iou"]))}


def make_openoccupancy_validate(val_set, collate_fn):
    """validate(run, step) for occ.loop.fit on OpenOccupancy: the EMA weights on `val_set` (which
    loads its GT), scored by `score_openoccupancy`; SC IoU, SSC mIoU and per-class IoU to TensorBoard."""
    def validate(run, step):
        def score(network):
            samples = predict_openoccupancy(network, val_set, run.accelerator.device, collate_fn,
                                            run.cfg.data.batch_size)
            return score_openoccupancy(samples, total=len(val_set), progress=False)
        metrics = evaluate_with_ema(run, score)
        if metrics is None:
            return None
        run.writer.add_scalar("val/SC_IoU", metrics["sc_iou"], step)
        run.writer.add_scalar("val/SSC_mIoU", metrics["ssc_miou"], step)
        for name, iou in metrics["per_class"].items():
            if not math.isnan(iou):
                run.writer.add_scalar(f"val_iou/{name}", iou, step)
        run.log(f"step {step}: val SC IoU {100 * metrics['sc_iou']:.2f}, SSC mIoU {100 * metrics['ssc_miou']:.2f}")
        return metrics
    return validate
