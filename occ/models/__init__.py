"""Occupancy models. `build_model(cfg)` builds the network a `Config` describes."""
from .bev import ConvFuser, ResNetBEVEncoder, SecondBEVEncoder
from .heads import GeometryDecoder, OccHead
from .image import build_image_backbone, build_image_neck, load_pretrained, stage_stride
from .lidar import LidarBranch
from .occnet import OccNet, example_batch
from .view_transform import LSSViewTransformer


def occ_grid_shape(model_cfg):
    """(X, Y, Z) cells of the output grid, e.g. (200, 200, 16)."""
    r, v = model_cfg.point_cloud_range, model_cfg.occ_voxel_size
    return tuple(round((r[i + 3] - r[i]) / v) for i in range(3))


def build_camera_branch(cfg):
    m = cfg.model
    if stage_stride(m.backbone_stages[0]) != m.downsample:
        raise ValueError(f"model.downsample = {m.downsample} but the first of model.backbone_stages "
                         f"{m.backbone_stages} has stride {stage_stride(m.backbone_stages[0])}")
    backbone = build_image_backbone(m.backbone, m.backbone_stages)
    if m.pretrained_path:
        load_pretrained(backbone, m.pretrained_path)
    neck = build_image_neck(m.img_neck, backbone.out_channels, m.img_neck_channels)
    view_transformer = LSSViewTransformer(neck.out_channels, m.context_channels, cfg.data.image_size, m.downsample,
                                          m.depth_bins, m.point_cloud_range, m.occ_voxel_size,
                                          use_lidar_depth=m.modality == "fusion" and m.use_lidar_depth)
    return backbone, neck, view_transformer


def build_model(cfg):
    """Config -> OccNet (ImageNet weights only from a local `model.pretrained_path`)."""
    m = cfg.model
    X, Y, Z = occ_grid_shape(m)
    img_backbone = img_neck = view_transformer = lidar_branch = fuser = None
    if m.modality in ("fusion", "camera"):
        img_backbone, img_neck, view_transformer = build_camera_branch(cfg)
        bev_channels = view_transformer.out_channels
    if m.modality in ("fusion", "lidar"):
        lidar_branch = LidarBranch(m.voxel_size, m.point_cloud_range, m.max_points_per_voxel, m.max_voxels,
                                   m.sparse_channels, m.sparse_blocks, m.sparse_down_strides, bev_hw=(Y, X))
        bev_channels = lidar_branch.out_channels
    if m.modality == "fusion":
        fuser = ConvFuser(view_transformer.out_channels + lidar_branch.out_channels, m.fuser_channels)
        bev_channels = fuser.out_channels
    if m.bev_encoder == "second":
        bev_encoder = SecondBEVEncoder(bev_channels, m.second_channels, m.second_layers, m.secondfpn_channels)
    else:
        bev_encoder = ResNetBEVEncoder(bev_channels, m.bev_resnet_channels, m.bev_resnet_blocks,
                                       m.bev_neck_mid_channels, m.bev_neck_channels)
    if m.head == "occ":
        head, head_output = OccHead(bev_encoder.out_channels, m.head_hidden, Z, m.num_classes), "occ_logits"
    else:
        head, head_output = GeometryDecoder(bev_encoder.out_channels, m.head_hidden, Z), "geo_logits"
    return OccNet(bev_encoder, head, head_output, img_backbone, img_neck, view_transformer, lidar_branch, fuser)


__all__ = ["build_model", "example_batch", "occ_grid_shape", "OccNet", "OccHead", "GeometryDecoder", "LidarBranch",
           "LSSViewTransformer", "ConvFuser", "SecondBEVEncoder", "ResNetBEVEncoder", "load_pretrained"]
