"""BEV pooling (docs/architecture.md#bev-pooling): the compiled CPU/CUDA kernels against the plain-PyTorch reference and an
independent loop, gradients (gradcheck in float64), input validation, and the reference fallback."""
import os
import warnings

import numpy as np
import pytest
import torch

from occ.ops import bev_pool_prepare, bev_pool_v2, bev_pool_v2_reference
from occ.ops import extension

requires_kernels = pytest.mark.skipif(extension._C is None, reason="occ._C is not built (test_extension_is_built says why)")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def make_case(B, N, D, H, W, C, bev_shape, coord_max, seed, dtype=torch.float32, device="cpu"):
    """Random depth/feat and the ranks of random voxel coordinates in [-1, coord_max) per axis
    (so some points fall outside the grid). Returns depth, feat, ranks (5 tensors), bev_shape."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.stack([torch.randint(-1, m, (B, N, D, H, W), generator=generator) for m in coord_max], dim=-1)
    ranks = [r.to(device) for r in bev_pool_prepare(coords, bev_shape)]
    depth = torch.rand(B, N, D, H, W, generator=generator, dtype=dtype).to(device)
    feat = torch.randn(B, N, H, W, C, generator=generator, dtype=dtype).to(device)
    return depth, feat, ranks, bev_shape


# (B, N, D, H, W, C, bev_shape (B, Z, Y, X), coordinate range per axis x, y, z)
CASES = {
    "batch2_crowded_cells": (2, 3, 8, 4, 5, 16, (2, 2, 4, 4), (5, 5, 3)),
    "single_point_intervals": (1, 2, 4, 3, 3, 8, (1, 8, 32, 32), (33, 33, 9)),
    "one_z_bin_odd_channels": (3, 2, 6, 3, 7, 5, (3, 1, 6, 6), (7, 7, 2)),
}


def test_extension_is_built():
    if os.environ.get("OCC_NO_EXT") == "1":
        pytest.skip("OCC_NO_EXT=1: running without the compiled extension on purpose")
    from occ import _C  # raises ImportError when `make extension` did not build it
    assert callable(_C.bev_pool_forward) and callable(_C.voxelize)


def test_prepare_and_reference_match_a_plain_loop():
    depth, feat, ranks, bev_shape = make_case(*CASES["batch2_crowded_cells"], seed=0, dtype=torch.float64)
    B, N, D, H, W = depth.shape
    generator = torch.Generator().manual_seed(0)  # the same coordinates as make_case drew
    coords = torch.stack([torch.randint(-1, m, (B, N, D, H, W), generator=generator) for m in (5, 5, 3)], dim=-1)
    _, Z, Y, X = bev_shape
    expected = np.zeros((B, feat.shape[-1], Z, Y, X))
    for b, n, d, h, w in np.ndindex(B, N, D, H, W):
        x, y, z = coords[b, n, d, h, w].tolist()
        if 0 <= x < X and 0 <= y < Y and 0 <= z < Z:
            expected[b, :, z, y, x] += depth[b, n, d, h, w].item() * feat[b, n, h, w].numpy()
    np.testing.assert_allclose(bev_pool_v2_reference(depth, feat, *ranks, bev_shape).numpy(), expected, atol=1e-12)
    interval_lengths = ranks[4]
    assert int(interval_lengths.sum()) == ranks[0].numel() and (interval_lengths > 0).all()


@requires_kernels
@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_forward_and_backward_match_reference(name):
    depth, feat, ranks, bev_shape = make_case(*CASES[name], seed=1)
    if name == "single_point_intervals":
        assert (ranks[4] == 1).sum() > ranks[4].numel() // 2
    num_cells = int(np.prod(bev_shape))
    assert 0 < ranks[3].numel() < num_cells  # both filled and empty cells
    outputs, grads = [], []
    for op in (bev_pool_v2, bev_pool_v2_reference):
        d, f = depth.clone().requires_grad_(), feat.clone().requires_grad_()
        out = op(d, f, *ranks, bev_shape)
        out_grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        out.backward(out_grad)
        outputs.append(out.detach())
        grads.append((d.grad, f.grad))
    assert outputs[0].shape == (bev_shape[0], feat.shape[-1], *bev_shape[1:])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)


@requires_kernels
def test_nothing_in_range_gives_zeros_and_zero_grads():
    depth, feat, ranks, bev_shape = make_case(2, 2, 3, 2, 2, 4, (2, 1, 3, 3), (1, 1, 1), seed=3)
    coords_out_of_grid = torch.full((2, 2, 3, 2, 2, 3), -1)
    ranks = bev_pool_prepare(coords_out_of_grid, bev_shape)
    assert ranks[0].numel() == 0
    depth.requires_grad_()
    out = bev_pool_v2(depth, feat, *ranks, bev_shape)
    assert out.shape == (2, 4, 1, 3, 3) and not out.any()
    out.sum().backward()
    assert depth.grad is not None and not depth.grad.any()


@requires_kernels
def test_gradcheck_float64_compiled_and_reference():
    depth, feat, ranks, bev_shape = make_case(2, 2, 4, 2, 3, 3, (2, 2, 3, 3), (4, 4, 3), seed=4, dtype=torch.float64)
    inputs = (depth.requires_grad_(), feat.requires_grad_())
    assert torch.autograd.gradcheck(lambda d, f: bev_pool_v2(d, f, *ranks, bev_shape), inputs)
    assert torch.autograd.gradcheck(lambda d, f: bev_pool_v2_reference(d, f, *ranks, bev_shape), inputs)


@requires_kernels
def test_half_inputs_are_pooled_in_float32():
    depth, feat, ranks, bev_shape = make_case(*CASES["batch2_crowded_cells"], seed=5)
    out = bev_pool_v2(depth.half(), feat.half(), *ranks, bev_shape)
    expected = bev_pool_v2_reference(depth.half().float(), feat.half().float(), *ranks, bev_shape)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@requires_kernels
@requires_cuda
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_forward_and_backward_match_reference(name):
    depth, feat, ranks, bev_shape = make_case(*CASES[name], seed=6, dtype=torch.float64)
    results = []
    for device in ("cuda", "cpu"):
        d, f = depth.to(device).requires_grad_(), feat.to(device).requires_grad_()
        op = bev_pool_v2 if device == "cuda" else bev_pool_v2_reference
        out = op(d, f, *[r.to(device) for r in ranks], bev_shape)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape).to(device))
        results.append([t.detach().cpu() for t in (out, d.grad, f.grad)])
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    d, f = depth.cuda().requires_grad_(), feat.cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: bev_pool_v2(a, b, *[r.cuda() for r in ranks], bev_shape), (d, f))


def _bad_inputs():
    """(argument named in the error, a function that corrupts the keyword arguments)."""
    def with_(**changes):
        return lambda kwargs: {**kwargs, **{k: (v(kwargs) if callable(v) else v) for k, v in changes.items()}}
    return {
        "depth dtype": ("depth", with_(depth=lambda a: a["depth"].long())),
        "depth shape": ("depth", with_(depth=lambda a: a["depth"][0])),
        "feat shape": ("feat", with_(feat=lambda a: a["feat"][..., :3, :])),
        "feat dtype": ("feat", with_(feat=lambda a: a["feat"].double())),
        "ranks_bev dtype": ("ranks_bev", with_(ranks_bev=lambda a: a["ranks_bev"].long())),
        "ranks_feat length": ("ranks_feat", with_(ranks_feat=lambda a: a["ranks_feat"][:-1])),
        "interval_lengths length": ("interval_lengths", with_(interval_lengths=lambda a: a["interval_lengths"][:-1])),
        "ranks_depth out of bounds": ("ranks_depth", with_(ranks_depth=lambda a: a["ranks_depth"] + a["depth"].numel())),
        "ranks_feat negative": ("ranks_feat", with_(ranks_feat=lambda a: a["ranks_feat"] - 10**6)),
        "ranks_bev out of bounds": ("ranks_bev", with_(ranks_bev=lambda a: a["ranks_bev"] + 10**6)),
        "intervals not tiling": ("interval_starts", with_(interval_starts=lambda a: a["interval_starts"] + 1)),
        "ranks_bev unsorted": ("ranks_bev", with_(ranks_bev=lambda a: a["ranks_bev"].flip(0))),
        "bev_shape batch": ("bev_shape", with_(bev_shape=(3, 2, 4, 4))),
        "ranks_depth not a tensor": ("ranks_depth", with_(ranks_depth=lambda a: a["ranks_depth"].tolist())),
    }


@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_bad_input_raises_value_error_naming_the_argument(case):
    depth, feat, ranks, bev_shape = make_case(*CASES["batch2_crowded_cells"], seed=7)
    names = ("ranks_depth", "ranks_feat", "ranks_bev", "interval_starts", "interval_lengths")
    kwargs = dict(depth=depth, feat=feat, **dict(zip(names, ranks)), bev_shape=bev_shape)
    argument, corrupt = _bad_inputs()[case]
    with pytest.raises(ValueError, match=argument):
        bev_pool_v2(**corrupt(kwargs))


@requires_cuda
def test_tensors_on_different_devices_raise_value_error():
    depth, feat, ranks, bev_shape = make_case(*CASES["batch2_crowded_cells"], seed=8)
    with pytest.raises(ValueError, match="feat"):
        bev_pool_v2(depth, feat.cuda(), *ranks, bev_shape)
    with pytest.raises(ValueError, match="ranks_bev"):
        bev_pool_v2(depth.cuda(), feat.cuda(), ranks[0].cuda(), ranks[1].cuda(), ranks[2], ranks[3].cuda(),
                    ranks[4].cuda(), bev_shape)


def test_without_kernels_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(extension, "_C", None)
    monkeypatch.setattr(extension, "_IMPORT_ERROR", ImportError("not built"))
    monkeypatch.setattr(extension, "_warned", set())
    depth, feat, ranks, bev_shape = make_case(*CASES["batch2_crowded_cells"], seed=9)
    with pytest.warns(RuntimeWarning, match="make extension"):
        out = bev_pool_v2(depth, feat, *ranks, bev_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        again = bev_pool_v2(depth, feat, *ranks, bev_shape)
    expected = bev_pool_v2_reference(depth, feat, *ranks, bev_shape)
    assert torch.equal(out, expected) and torch.equal(again, expected)
