"""Running an occupancy model over a dataset split and scoring it (shared by evaluate.py and the
training scripts' validation)."""
import torch

from datasets.build import move_batch
from datasets.nuscenes_occ import collate, load_occ_gt
from occ.metrics import OccupancyMetric


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
