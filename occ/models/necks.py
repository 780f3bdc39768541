"""Necks: the image necks (CustomFPN, FPN_LSS over two backbone levels) and FPN_LSS itself, which the
CustomResNet BEV encoder (`occ.models.bev_encoder`) also uses as its BEV neck."""
import torch
import torch.nn.functional as F
from torch import nn

from occ.errors import UsageError

from .layers import conv3x3_bn_relu


class CustomFPN(nn.Module):
    """1x1 laterals (bias, no norm) to `out_channels`, top-down nearest upsample-add, and one 3x3
    output conv on the finest level only."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.out_channels = out_channels

    def forward(self, feats):
        x = self.laterals[-1](feats[-1])
        for lateral, feat in zip(self.laterals[-2::-1], feats[-2::-1]):
            x = lateral(feat) + F.interpolate(x, size=feat.shape[-2:], mode="nearest")
        return self.out_conv(x)


class FPNLSS(nn.Module):
    """Two-level neck of LSS / BEVDet: upsample the coarse map by `scale_factor`, concat with the fine
    map, 2 x (Conv3x3+BN+ReLU) -> mid_channels; with `extra_upsample` > 1 also upsample again,
    Conv3x3+BN+ReLU -> out_channels and a final Conv1x1 (bias). Without it mid must equal out."""

    def __init__(self, in_channels, mid_channels, out_channels, scale_factor, extra_upsample):
        super().__init__()
        if extra_upsample == 1 and mid_channels != out_channels:
            raise UsageError(f"FPNLSS without extra upsampling needs mid_channels == out_channels, "
                             f"got {mid_channels} and {out_channels}")
        self.scale_factor, self.extra_upsample = scale_factor, extra_upsample
        # each Conv3x3+BN+ReLU is its own Sequential (checkpoint keys fuse.0.0.weight, up.0.1.weight, ...)
        self.fuse = nn.Sequential(nn.Sequential(*conv3x3_bn_relu(in_channels, mid_channels)),
                                  nn.Sequential(*conv3x3_bn_relu(mid_channels, mid_channels)))
        self.up = None
        if extra_upsample > 1:
            self.up = nn.Sequential(nn.Sequential(*conv3x3_bn_relu(mid_channels, out_channels)),
                                    nn.Conv2d(out_channels, out_channels, 1))
        self.out_channels = out_channels

    def forward(self, fine, coarse):
        coarse = F.interpolate(coarse, scale_factor=self.scale_factor, mode="bilinear", align_corners=True)
        x = self.fuse(torch.cat([fine, coarse], dim=1))
        if self.up is not None:
            x = F.interpolate(x, scale_factor=self.extra_upsample, mode="bilinear", align_corners=True)
            x = self.up(x)
        return x


def build_image_neck(kind, in_channels, out_channels):
    """CustomFPN over all levels, or FPN_LSS over the last two (stride ratio 2)."""
    if kind == "custom_fpn":
        return CustomFPN(in_channels, out_channels)
    if kind == "fpn_lss":
        return ImageFPNLSS(in_channels, out_channels)
    raise UsageError(f"model.img_neck = {kind!r} is not one of ('custom_fpn', 'fpn_lss')")


class ImageFPNLSS(nn.Module):
    """FPN_LSS as an image neck: the last two backbone levels -> one map at the finer stride."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        if len(in_channels) != 2:
            raise UsageError(f"the fpn_lss image neck takes two backbone stages, got {len(in_channels)}")
        self.neck = FPNLSS(sum(in_channels), out_channels, out_channels, scale_factor=2, extra_upsample=1)
        self.out_channels = out_channels

    def forward(self, feats):
        return self.neck(feats[0], feats[1])
