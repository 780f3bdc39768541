"""A procedural driving world written as a nuScenes-format dataset (see datasets/make_synthetic.py).

Modules, one job each:
  catalog.py    facts reused from real nuScenes: Occ3D class indices (the class list itself is
                occ.occ3d), the category -> class mapping, category/attribute/sensor tokens,
                calibration, mean object sizes, the v1.0-mini scene names
  world.py      one scene: road layout, static stuff, agents and their constant-velocity motion
  raycast.py    vectorised ray / yaw-only-box and ray / ground-plane intersection
  lidar.py      the 32-beam LIDAR_TOP scan
  camera.py     the 6 camera images (shaded, textured)
  occupancy.py  Occ3D semantics and masks, OpenOcc flow, OpenOccupancy rows
  generate.py   per-key-frame tasks (process pool) and the nuScenes table writer
  waymo.py      the same world through a Waymo-like rig, written in the Occ3D-Waymo layout
  preview.py    the preview picture (cameras with LiDAR, bird's-eye GT)
"""
