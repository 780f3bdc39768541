"""Layer recipes shared by the model files (the necks, the fuser, the BEV encoders)."""
from torch import nn


def conv3x3_bn_relu(in_channels, out_channels, stride=1, eps=1e-5, momentum=0.1):
    """[Conv3x3 (padding 1, no bias), BatchNorm2d(eps, momentum), ReLU] as a list of layers, to splice
    into an nn.Sequential (or wrap in one for a stand-alone block). PyTorch's BN defaults unless told:
    SECOND uses eps 1e-3, momentum 0.01. (The LSS depth net's convs keep their bias and vary their
    kernel: `occ.models.view_transform.conv_bias_bn_relu`.)"""
    return [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum), nn.ReLU(inplace=True)]
