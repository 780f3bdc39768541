"""Occupancy models. `build_model(cfg)` builds the network a `Config` describes (see occnet.py).

occnet.py          OccNet (the assembled network) and build_model
image_backbone.py  ResNet / Swin image trunks, load_pretrained
necks.py           image necks (CustomFPN, FPN_LSS) and FPN_LSS
view_transform.py  LSS view transformer (camera features -> camera BEV), LiDAR-depth depth net
lidar.py           LiDAR branch: voxelisation + spconv sparse encoder -> LiDAR BEV
fuser.py           ConvFuser (camera BEV + LiDAR BEV)
bev_encoder.py     BEV encoders: SECOND + SECONDFPN, CustomResNet + FPN_LSS
heads.py           occupancy head, Occ-BEV geometry decoder
layers.py          Conv3x3 + BN + ReLU recipe shared by the files above
example_inputs.py  random batches for tests and benchmarks
"""
from occ.models.occnet import OccNet, build_model

__all__ = ["OccNet", "build_model"]
