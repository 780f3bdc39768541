"""The fuser of the fusion model: camera BEV + LiDAR BEV -> one BEV feature (ConvFuser)."""
import torch
from torch import nn

from .layers import conv3x3_bn_relu


class ConvFuser(nn.Module):
    """concat [camera BEV, LiDAR BEV] -> Conv3x3 (no bias) + BN + ReLU."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.fuse = nn.Sequential(*conv3x3_bn_relu(in_channels, out_channels))
        self.out_channels = out_channels

    def forward(self, cam_bev, lidar_bev):
        return self.fuse(torch.cat([cam_bev, lidar_bev], dim=1))
