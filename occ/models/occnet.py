"""The assembled occupancy network (OccNet: camera branch and / or LiDAR branch -> (fuser) -> BEV encoder
-> head) and `build_model`, which builds it from a `Config`."""
from torch import nn

from occ.errors import UsageError

from occ.detection import CLASS_NAMES

from .bev_encoder import ResNetBEVEncoder, SecondBEVEncoder
from .det_head import CenterHead
from .fuser import ConvFuser
from .heads import FlowHead, GeometryDecoder, OccHead
from .image_backbone import build_image_backbone, load_pretrained, stage_stride, trunk_outputs
from .lidar import LidarBranch
from .necks import build_image_neck
from .view_transform import LSSViewTransformer


class OccNet(nn.Module):
    """EFFOcc fusion, FlashOcc camera-only, LiDAR-only and the Occ-BEV pre-training model.

    forward(batch) -> dict with
      occ_logits (B, X, Y, Z, classes) for the occupancy head, det_preds ({name: (B, C, Y, X)},
      occ.models.det_head.CenterHead) for the detection head, or geo_logits (B, X, Y, Z, 2) for the
      geometry decoder; flow (B, X, Y, Z, 2) m/s with model.flow_head (OpenOcc);
      bev_feat (B, C, Y, X), the BEV encoder output the head reads (distillation);
      cam_bev (B, C_cam, Y, X) and depth (B, N, D, H_f, W_f) with a camera branch;
      lidar_bev (B, C_lidar, Y, X) with a LiDAR branch.
    The camera-only model reads images and geometry only; the LiDAR-only model reads points only.
    """

    def __init__(self, bev_encoder, head, head_output, img_backbone=None, img_neck=None, view_transformer=None,
                 lidar_branch=None, fuser=None, flow_head=None):
        super().__init__()
        self.flow_head = flow_head  # OpenOcc: flow (B, X, Y, Z, 2) from the occupancy head's feature
        self.img_backbone, self.img_neck, self.view_transformer = img_backbone, img_neck, view_transformer
        self.lidar_branch, self.fuser = lidar_branch, fuser
        self.bev_encoder, self.head = bev_encoder, head
        self.head_output = head_output  # "occ_logits" or "geo_logits"

    @property
    def has_camera(self):
        return self.img_backbone is not None

    @property
    def has_lidar(self):
        return self.lidar_branch is not None

    @property
    def ground_prior(self):
        """The image trunk also reads each pixel's ground inverse depth (model.camera_ground_prior)."""
        return getattr(self.img_backbone, "conv1_extra", None) is not None

    def image_features(self, batch):
        """batch['images'] (B, N, 3, H, W) -> image features (B*N, C, H_f, W_f); with
        model.camera_ground_prior the trunk also reads each pixel's ground inverse depth."""
        images = batch["images"]
        if images.dim() != 5:
            raise ValueError(f"batch['images'] must be (B, N, 3, H, W), got {tuple(images.shape)}")
        return self.img_neck(trunk_outputs(self.img_backbone, batch))

    def forward(self, batch):
        out = {}
        if self.has_camera:
            out["cam_bev"], out["depth"] = self.view_transformer(self.image_features(batch), batch)
        if self.has_lidar:
            out["lidar_bev"] = self.lidar_branch(batch["points"])
        if self.has_camera and self.has_lidar:
            bev = self.fuser(out["cam_bev"], out["lidar_bev"])
        else:
            bev = out["cam_bev"] if self.has_camera else out["lidar_bev"]
        out["bev_feat"] = self.bev_encoder(bev)
        if self.flow_head is None:
            out[self.head_output] = self.head(out["bev_feat"])
        else:
            feature = self.head.feature(out["bev_feat"])  # (B, X, Y, hidden)
            out[self.head_output], out["flow"] = self.head.classify(feature), self.flow_head(feature)
        return out


def occ_grid_shape(model_cfg):
    """(X, Y, Z) cells of the output grid, e.g. (200, 200, 16)."""
    r, v = model_cfg.point_cloud_range, model_cfg.occ_voxel_size
    return tuple(round((r[i + 3] - r[i]) / v) for i in range(3))


def build_camera_branch(cfg):
    m = cfg.model
    if stage_stride(m.backbone_stages[0]) != m.downsample:
        raise UsageError(f"model.downsample = {m.downsample} but the first of model.backbone_stages "
                         f"{m.backbone_stages} has stride {stage_stride(m.backbone_stages[0])}")
    backbone = build_image_backbone(m.backbone, m.backbone_stages, extra_in_channels=int(m.camera_ground_prior))
    if m.pretrained_path:
        load_pretrained(backbone, m.pretrained_path)
    neck = build_image_neck(m.img_neck, backbone.out_channels, m.img_neck_channels)
    view_transformer = LSSViewTransformer(neck.out_channels, m.context_channels, cfg.data.image_size, m.downsample,
                                          m.depth_bins, m.point_cloud_range, m.occ_voxel_size,
                                          use_lidar_depth=m.modality == "fusion" and m.use_lidar_depth,
                                          height_bins=m.camera_height_bins, pooling=m.camera_bev_pooling,
                                          depth_convs=m.camera_depth_convs)
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
    elif m.head == "detection":
        if m.num_classes != len(CLASS_NAMES):
            raise UsageError(f"model.head = 'detection' predicts the {len(CLASS_NAMES)} nuScenes detection classes, "
                             f"model.num_classes = {m.num_classes}")
        head, head_output = CenterHead(bev_encoder.out_channels, m.head_hidden, m.num_classes), "det_preds"
    else:
        head, head_output = GeometryDecoder(bev_encoder.out_channels, m.head_hidden, Z), "geo_logits"
    if m.flow_head and m.head != "occ":
        raise UsageError(f"model.flow_head needs the occupancy head (model.head = 'occ'), not '{m.head}'")
    flow_head = FlowHead(m.head_hidden, Z) if m.flow_head else None
    return OccNet(bev_encoder, head, head_output, img_backbone, img_neck, view_transformer, lidar_branch, fuser,
                  flow_head)
