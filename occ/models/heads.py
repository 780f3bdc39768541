"""Heads on the BEV feature: channel-to-height occupancy head and the Occ-BEV 3-D geometry decoder."""
from torch import nn

from occ.errors import UsageError


class OccHead(nn.Module):
    """Channel-to-height occupancy head (FlashOcc): Conv3x3 (bias) + ReLU, then per BEV cell
    Linear(hidden -> 2*hidden), Softplus, Linear(2*hidden -> Z * classes).
    (B, C, Y, X) -> logits (B, X, Y, Z, classes), indexed [x, y, z] like the GT."""

    def __init__(self, in_channels, hidden, num_z, num_classes):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.Softplus(), nn.Linear(2 * hidden, num_z * num_classes))
        self.num_z, self.num_classes = num_z, num_classes

    def feature(self, bev):
        """The per-cell feature the classifier (and a FlowHead) reads: (B, X, Y, hidden)."""
        return self.conv(bev).permute(0, 3, 2, 1)

    def classify(self, feature):
        return self.mlp(feature).view(*feature.shape[:3], self.num_z, self.num_classes)

    def forward(self, bev):
        return self.classify(self.feature(bev))


class FlowHead(nn.Module):
    """OpenOcc flow branch on the occupancy head's feature (`OccHead.feature`): per BEV cell
    Linear(hidden -> 2*hidden), ReLU, Linear(2*hidden -> Z * 2). (B, X, Y, hidden) -> flow
    (B, X, Y, Z, 2): vx, vy in m/s in the ego frame."""

    def __init__(self, hidden, num_z):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(inplace=True), nn.Linear(2 * hidden, num_z * 2))
        self.num_z = num_z

    def forward(self, feature):
        return self.mlp(feature).view(*feature.shape[:3], self.num_z, 2)


class GeometryDecoder(nn.Module):
    """Occ-BEV 3-D decoder (docs/architecture.md#occ-bev-pre-training-model):
    BEV (B, C*Z, Y, X) -> (B, C, Z, Y, X), Conv3d(C -> hidden) + BN3d + ReLU,
    Conv3d(hidden -> hidden) + BN3d + ReLU, per voxel Linear(hidden -> 2*hidden), Softplus,
    Linear(2*hidden -> 2). Output (B, X, Y, Z, 2) logits of free / occupied."""

    def __init__(self, in_channels, hidden, num_z):
        super().__init__()
        if in_channels % num_z:
            raise UsageError(f"the geometry decoder needs BEV channels divisible by {num_z} heights, got {in_channels}")
        self.num_z, self.channels_per_height = num_z, in_channels // num_z
        self.convs = nn.Sequential(
            nn.Conv3d(self.channels_per_height, hidden, 3, padding=1, bias=False), nn.BatchNorm3d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.Softplus(), nn.Linear(2 * hidden, 2))

    def forward(self, bev):
        B, _, Y, X = bev.shape
        x = self.convs(bev.view(B, self.channels_per_height, self.num_z, Y, X))  # (B, hidden, Z, Y, X)
        return self.mlp(x.permute(0, 4, 3, 2, 1))  # (B, X, Y, Z, 2)
