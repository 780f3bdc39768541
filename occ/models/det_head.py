"""CenterPoint-style 3-D detection head on the BEV feature, as BEVDet-R50 uses it (one task, all
classes); targets, loss and decoding live in `occ.detection`."""
from torch import nn

from occ.detection import REGRESSION_OUTPUTS

HEATMAP_BIAS = -2.19  # sigmoid(-2.19) = 0.1: the initial score of every cell


class CenterHead(nn.Module):
    """Shared Conv3x3 (in -> hidden, no bias) + BN + ReLU, then per output a Conv3x3 (hidden ->
    hidden, no bias) + BN + ReLU and a Conv3x3 (hidden -> channels, bias):
    heatmap (num_classes, bias -2.19), reg (2: centre offset in cells), height (1: box-centre z),
    dim (3: log l, w, h), rot (2: sin, cos yaw), vel (2: vx, vy in m/s).
    (B, C, Y, X) -> {name: (B, channels, Y, X)}; the heatmap holds logits."""

    def __init__(self, in_channels, hidden, num_classes):
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        outputs = {"heatmap": num_classes, **REGRESSION_OUTPUTS}
        self.branches = nn.ModuleDict({
            name: nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                                nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 3, padding=1))
            for name, channels in outputs.items()})
        # as mmdet3d's SeparateHead: the heatmap branch keeps PyTorch's default init but for its
        # last bias; the regression branches' convs are Kaiming-initialised (fan out, zero bias)
        nn.init.constant_(self.branches["heatmap"][-1].bias, HEATMAP_BIAS)
        for name in REGRESSION_OUTPUTS:
            for module in self.branches[name].modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def forward(self, bev):
        x = self.shared(bev)
        return {name: branch(x) for name, branch in self.branches.items()}
