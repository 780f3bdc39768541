"""Plugin-free deployment (docs/deployment.md): the image-and-BEV part of an `OccNet` as a graph of
standard operators, for `torch.onnx.export`, and the inputs that graph takes.

BEV pooling, which the trained model runs with the compiled `bev_pool_v2` kernels, is written here
as gather, multiply and scatter-add (`occ.ops.bev_pool.bev_pool_v2_reference`: two Gathers, a Mul
and one ScatterND with reduction "add" in ONNX), so the exported graph needs no custom operator.
The pooling ranks are graph *inputs* computed from the camera geometry of each frame
(`pooling_ranks`), so any calibration and any frame works with the same graph.

Graph inputs, in this order (B = 1 at export, N cameras, P frustum points inside the grid):
    images       float32 (B, N, 3, H, W)  normalised images (data.color_order, ImageNet mean / std)
    ranks_depth  int32 (P,)              flat index of each frustum point into the depth distribution
    ranks_feat   int32 (P,)              flat index of its context feature
    ranks_bev    int32 (P,)              flat index of its BEV cell (b * Y * X + y * X + x)
    depth_maps   float32 (B, N, H, W)    fusion only: nearest LiDAR depth per pixel, 0 = none
    lidar_bev    float32 (B, C_l, Y, X)  fusion only: the sparse encoder's LiDAR BEV (run in PyTorch)
    ground_prior float32 (B, N, 1, H, W) with model.camera_ground_prior: each pixel's ground inverse
                                         depth (`occ.models.view_transform.ground_inverse_depth`)
Output:
    occ_logits   float32 (B, X, Y, Z, classes)
P is the one dynamic axis. The interval arrays of BEVPoolv2 are not inputs: a scatter-add needs
no intervals (they serve the kernel, which runs one thread per output cell).
"""
import warnings

import torch
from torch import nn

from occ.models.view_transform import GEOMETRY_KEYS, batch_ground_prior, mean_over_points
from occ.ops.bev_pool import bev_pool_v2_reference

RANK_NAMES = ("ranks_depth", "ranks_feat", "ranks_bev")
OUTPUT_NAMES = ("occ_logits",)
DEFAULT_OPSET = 20   # ScatterND with reduction "add" needs opset >= 16; torch's exporter writes 18+


class ExportableOccNet(nn.Module):
    """The part of a camera-only or fusion `OccNet` that ONNX can hold: image backbone, neck, depth
    net, BEV pooling (gather + scatter-add on given ranks), fuser (with the LiDAR BEV as an input),
    BEV encoder and occupancy head. Shares the weights of `model`."""

    def __init__(self, model):
        super().__init__()
        if not model.has_camera:
            raise ValueError("ONNX export needs a model with a camera branch (camera-only or fusion); "
                             "the LiDAR-only model is all sparse convolutions")
        if model.head_output != "occ_logits":
            raise ValueError("ONNX export needs an occupancy model, not the Occ-BEV geometry decoder")
        self.model = model

    @property
    def input_names(self):
        m = self.model
        return (("images",) + RANK_NAMES + (("depth_maps",) if m.view_transformer.use_lidar_depth else ())
                + (("lidar_bev",) if m.has_lidar else ()) + (("ground_prior",) if m.ground_prior else ()))

    def forward(self, images, ranks_depth, ranks_feat, ranks_bev, depth_maps=None, lidar_bev=None, ground_prior=None):
        """The graph's inputs by name (module docstring); call it with **graph_inputs(model, batch)."""
        m = self.model
        B = images.shape[0]
        extra = () if ground_prior is None else (ground_prior.flatten(0, 1),)
        img_feat = m.img_neck(m.img_backbone(images.flatten(0, 1), *extra))  # (B*N, C, H_f, W_f)
        depth, context = m.view_transformer.lift(img_feat, depth_maps, B)  # (B, N, D, H_f, W_f), (B, N, H_f, W_f, C)
        vt = m.view_transformer
        bev_shape = (B, vt.height_bins, *vt.bev_hw)
        # no intervals: the scatter-add sums every point of a cell without them
        cam_bev = bev_pool_v2_reference(depth, context, ranks_depth, ranks_feat, ranks_bev, None, None, bev_shape)
        if vt.pooling == "mean":
            cam_bev = mean_over_points(cam_bev, ranks_bev, bev_shape)
        cam_bev = cam_bev.flatten(1, 2)  # (B, C, Z, Y, X) -> (B, C * Z, Y, X)
        bev = m.fuser(cam_bev, lidar_bev) if m.has_lidar else cam_bev
        return m.head(m.bev_encoder(bev))  # (B, X, Y, Z, classes)


def pooling_ranks(model, batch):
    """ranks_depth, ranks_feat, ranks_bev (int32 (P,) each) of the frame's camera geometry
    (`cam2ego`, `intrinsics`, `post_rot`, `post_tran`, `bda` of the batch contract): the same
    sorted ranks the model's own BEV pooling uses (floor, out-of-grid points dropped)."""
    geometry = tuple(batch[key] for key in GEOMETRY_KEYS)
    return model.view_transformer.bev_ranks(geometry)[:3]


@torch.no_grad()
def graph_inputs(model, batch):
    """{input name: tensor} for the exported graph of `model` (in eval mode) on a collated batch;
    for the fusion model this runs the LiDAR branch (voxelisation + spconv) in PyTorch."""
    inputs = {"images": batch["images"]}
    inputs.update(zip(RANK_NAMES, pooling_ranks(model, batch)))
    if model.view_transformer.use_lidar_depth:
        inputs["depth_maps"] = batch["depth_maps"]
    if model.has_lidar:
        inputs["lidar_bev"] = model.lidar_branch(batch["points"])
    if model.ground_prior:
        inputs["ground_prior"] = batch_ground_prior(batch)
    return inputs


def export_onnx(model, batch, path, opset=DEFAULT_OPSET):
    """Write the `ExportableOccNet` of `model` (switched to eval mode) to `path` with
    torch.onnx.export (torch.export-based, needs onnxscript), tracing with the inputs of `batch`;
    the number of frustum points P stays dynamic. Returns the input names, in graph order."""
    model.eval()
    graph = ExportableOccNet(model).eval()
    inputs = graph_inputs(model, batch)
    names = graph.input_names
    points = torch.export.Dim("points", min=2)
    dynamic_shapes = {name: ({0: points} if name in RANK_NAMES else None) for name in names}
    with torch.no_grad(), warnings.catch_warnings():
        # the exporter notes that the three rank inputs share the axis "points": that is intended
        warnings.filterwarnings("ignore", message="# The axis name: points will not be used")
        torch.onnx.export(graph, (), str(path), kwargs=inputs, dynamo=True,
                          opset_version=opset, input_names=list(names), output_names=list(OUTPUT_NAMES),
                          dynamic_shapes=dynamic_shapes, external_data=False, verbose=False)
    return names


def logit_agreement(reference, candidate):
    """(max |reference - candidate|, fraction of voxels whose argmax class agrees) of two
    (..., classes) logit arrays or tensors."""
    reference, candidate = torch.as_tensor(reference), torch.as_tensor(candidate)
    max_abs = (reference - candidate).abs().max().item()
    agreement = (reference.argmax(-1) == candidate.argmax(-1)).float().mean().item()
    return max_abs, agreement
