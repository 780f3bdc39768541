"""occ: plain-PyTorch LiDAR-camera 3-D occupancy prediction (EFFOcc, FlashOcc, Occ-BEV)."""
