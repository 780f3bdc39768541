"""Random inputs that follow the data-pipeline contract (`example_batch`, `example_points`), for
shape checks in the tests and for the benchmarks; not used in training."""
import torch


def example_batch(cfg, batch_size=1, num_points=30000, seed=0, device="cpu"):
    """A random batch that follows the data-pipeline contract, for shape checks and benchmarks.

    Six cameras 1.5 m above the ego origin look outward at yaw 0, +-55, +-110 and 180 degrees, with a
    1600 x 900 source image (focal 1266 px) resized and bottom-cropped to `data.image_size`; the BEV
    augmentation is the identity. Points lie on surfaces like a LiDAR scan's (`example_points`);
    ~5 % of the depth-map pixels hold a depth in [1, 45).
    """
    g = torch.Generator().manual_seed(seed)
    H, W = cfg.data.image_size
    B, N = batch_size, 6
    scale = W / 1600.0
    intrinsics = torch.tensor([[1266.0, 0.0, 800.0], [0.0, 1266.0, 450.0], [0.0, 0.0, 1.0]])
    post_rot = torch.diag(torch.tensor([scale, scale, 1.0]))
    post_tran = torch.tensor([0.0, H - 900.0 * scale, 0.0])  # bottom crop
    cam2ego = []
    for yaw in torch.deg2rad(torch.tensor([0.0, -55.0, 55.0, 180.0, -110.0, 110.0])):
        forward = torch.stack([yaw.cos(), yaw.sin(), torch.tensor(0.0)])
        right = torch.stack([yaw.sin(), -yaw.cos(), torch.tensor(0.0)])
        down = torch.tensor([0.0, 0.0, -1.0])
        T = torch.eye(4)
        T[:3, :3] = torch.stack([right, down, forward], dim=1)  # columns: camera x, y, z axes in ego
        T[:3, 3] = torch.tensor([0.0, 0.0, 1.5])
        cam2ego.append(T)
    points = [example_points(num_points, g) for _ in range(B)]
    has_depth = torch.rand(B, N, H, W, generator=g) < 0.05
    depth_maps = torch.where(has_depth, 1.0 + 44.0 * torch.rand(B, N, H, W, generator=g), torch.zeros(()))
    batch = {
        "images": torch.randn(B, N, 3, H, W, generator=g),
        "cam2ego": torch.stack(cam2ego).expand(B, N, 4, 4).contiguous(),
        "intrinsics": intrinsics.expand(B, N, 3, 3).contiguous(),
        "post_rot": post_rot.expand(B, N, 3, 3).contiguous(),
        "post_tran": post_tran.expand(B, N, 3).contiguous(),
        "bda": torch.eye(4).expand(B, 4, 4).contiguous(),
        "points": points,
        "depth_maps": depth_maps,
    }
    return {k: [p.to(device) for p in v] if k == "points" else v.to(device) for k, v in batch.items()}


def example_points(num_points, generator):
    """(P, 5) points shaped like a LiDAR scan: 70 % on the ground (z = -1.6 m, denser near the ego),
    30 % on the walls of 12 vertical cylinders (radius 0.5-3 m, 4 m tall) within 40 m."""
    g = generator
    num_ground = int(0.7 * num_points)
    radius = 2.0 + 38.0 * torch.rand(num_ground, generator=g) ** 2
    angle = 2 * torch.pi * torch.rand(num_ground, generator=g)
    ground = torch.stack([radius * angle.cos(), radius * angle.sin(),
                          -1.6 + 0.05 * torch.randn(num_ground, generator=g)], dim=1)
    num_wall = num_points - num_ground
    centres = (torch.rand(12, 2, generator=g) - 0.5) * 70.0
    radii = 0.5 + 2.5 * torch.rand(12, generator=g)
    which = torch.randint(0, 12, (num_wall,), generator=g)
    angle = 2 * torch.pi * torch.rand(num_wall, generator=g)
    wall = torch.stack([centres[which, 0] + radii[which] * angle.cos(), centres[which, 1] + radii[which] * angle.sin(),
                        -1.6 + 4.0 * torch.rand(num_wall, generator=g)], dim=1)
    xyz = torch.cat([ground, wall])
    return torch.cat([xyz, torch.rand(num_points, 1, generator=g), 0.5 * torch.rand(num_points, 1, generator=g)], dim=1)
