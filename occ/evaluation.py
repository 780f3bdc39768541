"""Running an occupancy model over a dataset split and scoring it (shared by evaluate.py and the
training scripts' validation)."""
import torch

from datasets.build import move_batch
from datasets.nuscenes_occ import collate, load_occ_gt
from occ.checkpoint import load_checkpoint, model_weights
from occ.config import config_from_dict
from occ.metrics import OccupancyMetric
from occ.models import build_model


def build_model_from_checkpoint(path, use_ema, device):
    """(model in eval mode, config) from a training checkpoint."""
    checkpoint = load_checkpoint(path)
    if not checkpoint.get("config"):
        raise ValueError(f"checkpoint {path} stores no config: cannot rebuild its model")
    cfg = config_from_dict(checkpoint["config"])
    if cfg.model.head != "occ":
        raise ValueError(f"checkpoint {path} is a '{cfg.model.head}' model ({cfg.name}), not an occupancy model")
    model = build_model(cfg)
    state = model_weights(checkpoint, use_ema, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path} does not match the model its config describes: {error}") from error
    return model.to(device).eval(), cfg


@torch.no_grad()
def predict(model, dataset, device, batch_size=1, num_workers=0):
    """Yields (info, prediction uint8 (200, 200, 16)) for every sample of `dataset`, in order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate)
    infos = iter(dataset.infos)
    for batch in loader:
        logits = model(move_batch(batch, device))["occ_logits"]       # (B, 200, 200, 16, 18)
        for pred in logits.argmax(-1).to(torch.uint8).cpu().numpy():
            yield next(infos), pred


def occupancy_scores(predictions, dataset):
    """Occ3D mIoU / geometry IoU (camera mask) of (info, prediction) pairs against the dataset's GT.
    Returns (metrics dict of OccupancyMetric.compute, (gt, pred, mask_camera) of the first sample)."""
    metric, example = OccupancyMetric(), None
    for info, pred in predictions:
        gt = load_occ_gt(dataset.gt_path(info))
        metric.update(pred, gt["semantics"], gt["mask_camera"])
        if example is None:
            example = (gt["semantics"], pred, gt["mask_camera"])
    return metric.compute(), example
