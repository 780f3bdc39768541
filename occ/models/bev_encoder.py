"""BEV encoders: SECOND + SECONDFPN (EFFOcc) and CustomResNet + FPN_LSS (FlashOcc; FPN_LSS is in
`occ.models.necks`). Each maps the (fused) BEV feature (B, C_in, Y, X) to the one the head reads."""
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from .layers import conv3x3_bn_relu
from .necks import FPNLSS


class SecondBEVEncoder(nn.Module):
    """SECOND (two stages: stride 1 then 2, each a strided Conv3x3 and `layers` more Conv3x3) and
    SECONDFPN (Conv1x1 on stage A, ConvTranspose k2 s2 on stage B, each +BN+ReLU; concat).
    BN eps 1e-3, momentum 0.01. (B, C_in, Y, X) -> (B, sum(fpn_channels), Y, X)."""

    def __init__(self, in_channels, channels, layers, fpn_channels):
        super().__init__()
        bn = dict(eps=1e-3, momentum=0.01)
        stage_a = conv3x3_bn_relu(in_channels, channels[0], **bn)
        for _ in range(layers[0]):
            stage_a += conv3x3_bn_relu(channels[0], channels[0], **bn)
        stage_b = conv3x3_bn_relu(channels[0], channels[1], stride=2, **bn)
        for _ in range(layers[1]):
            stage_b += conv3x3_bn_relu(channels[1], channels[1], **bn)
        self.stage_a, self.stage_b = nn.Sequential(*stage_a), nn.Sequential(*stage_b)
        self.lateral_a = nn.Sequential(nn.Conv2d(channels[0], fpn_channels[0], 1, bias=False),
                                       nn.BatchNorm2d(fpn_channels[0], **bn), nn.ReLU(inplace=True))
        self.up_b = nn.Sequential(nn.ConvTranspose2d(channels[1], fpn_channels[1], 2, stride=2, bias=False),
                                  nn.BatchNorm2d(fpn_channels[1], **bn), nn.ReLU(inplace=True))
        self.out_channels = sum(fpn_channels)

    def forward(self, x):
        a = self.stage_a(x)
        b = self.stage_b(a)
        return torch.cat([self.lateral_a(a), self.up_b(b)], dim=1)


class ResNetBEVEncoder(nn.Module):
    """CustomResNet (3 stages of `blocks` BasicBlocks, stride 2 each; the first block of a stage
    downsamples its identity with a strided Conv3x3) and FPN_LSS (stage-3 map x4 upsampled, concat
    with stage 1, 2 x Conv3x3 -> mid, x2 upsample, Conv3x3 + Conv1x1 -> out).
    (B, C_in, Y, X) -> (B, out_channels, Y, X)."""

    def __init__(self, in_channels, channels, blocks, mid_channels, out_channels):
        super().__init__()
        stages, width = [], in_channels
        for c in channels:
            layers = [BasicBlock(width, c, stride=2, downsample=nn.Conv2d(width, c, 3, 2, 1))]
            layers += [BasicBlock(c, c) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            width = c
        self.stages = nn.ModuleList(stages)
        self.neck = FPNLSS(channels[0] + channels[2], mid_channels, out_channels, scale_factor=4, extra_upsample=2)
        self.out_channels = out_channels

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return self.neck(feats[0], feats[2])
