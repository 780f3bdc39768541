"""bench/gpu_check.py (docs/gpu.md): its quick CPU form passes with a row for each check family; a
failing check makes it exit non-zero with FAIL in the table while the other checks still run. And
the mixed-precision behaviour it relies on, checked on the CPU: under bfloat16 / float16 autocast
the LiDAR branch runs in float32 (spconv has no CPU half kernels), the losses come out in float32,
and metrics accept bfloat16 tensors."""
import json
import math

import numpy as np
import pytest
import torch

from bench import gpu_check
from occ.config import apply_overrides, get_config
from occ.losses import distill_losses, four_losses, lovasz_softmax_loss, occupancy_focal_loss
from occ.metrics import to_numpy
from occ.models import build_model
from occ.models.example_inputs import example_batch
from occ.models.view_transform import LSSViewTransformer
from occ.ops import bev_pool_v2_reference


def rows_by_name(table):
    return {row["name"]: row for row in table["rows"]}


@pytest.mark.slow
def test_quick_cpu_form_passes_with_a_row_for_each_check_family(synthetic_root, tmp_path, capsys):
    out = tmp_path / "table.json"
    status = gpu_check.main(["--device", "cpu", "--quick", "--world", synthetic_root, "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    table = json.loads(out.read_text())
    assert table["ok"] and table["mode"] == "quick"
    statuses = {row["status"] for row in table["rows"]}
    assert statuses <= {"PASS", "SKIP"}, printed
    passed_families = {row["family"] for row in table["rows"] if row["status"] == "PASS"}
    assert set(gpu_check.FAMILIES) <= passed_families, printed
    train = next(row for row in table["rows"] if row["family"] == "train" and row["status"] == "PASS")
    assert train["data"]["last_step"] == 4 and train["data"]["checkpoint"] == "step_00000004.pt"
    assert all(math.isfinite(train["data"][key]) for key in ("miou", "geometry_iou", "rayiou"))
    # one summary table, last: a header line per column and a RESULT line
    assert printed.rstrip().splitlines()[-1].startswith("RESULT: PASS")
    assert printed.count("gpu_check summary") == 1


def test_a_failing_check_exits_non_zero_with_fail_in_the_table_and_the_others_still_run(tmp_path, capsys,
                                                                                      monkeypatch):
    def wrong_reference(*args, **kwargs):   # a reference that disagrees with the kernel
        return bev_pool_v2_reference(*args, **kwargs) + 1.0

    def broken(*args, **kwargs):            # a check that raises
        raise RuntimeError("injected failure")

    monkeypatch.setattr(gpu_check, "bev_pool_v2_reference", wrong_reference)
    monkeypatch.setattr(gpu_check, "dynamic_voxelize", broken)
    out = tmp_path / "table.json"
    status = gpu_check.main(["--device", "cpu", "--quick", "--checks", "kernels", "bev_pool", "--out", str(out),
                             "--keep", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    assert status == 1
    table = json.loads(out.read_text())
    assert not table["ok"]
    rows = rows_by_name(table)
    forward = next(row for name, row in rows.items() if name.startswith("bev_pool_v2 forward"))
    assert forward["status"] == "FAIL" and forward["data"]["max_abs_diff"] > 0.5
    dynamic = next(row for name, row in rows.items() if name.startswith("dynamic_voxelize"))
    assert dynamic["status"] == "FAIL" and "injected failure" in dynamic["figures"]
    assert "injected failure" in dynamic["error"] and "Traceback" not in dynamic["error"].splitlines()[-1]
    # the checks after and beside the failures ran and passed
    for prefix in ("bev_pool_v2 backward", "voxelize, max", "bev_pool_v2 vs index_add"):
        assert all(row["status"] == "PASS" for name, row in rows.items() if name.startswith(prefix)), prefix
    assert {row["family"] for row in table["rows"]} == {"kernels", "bev_pool"}
    summary = printed[printed.index("gpu_check summary"):]
    assert "FAIL" in summary and summary.rstrip().splitlines()[-1].startswith("RESULT: FAIL (")
    assert "injected failure" in printed   # the traceback tail is printed as it happens


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lidar_branch_runs_in_float32_under_cpu_autocast(dtype):
    cfg = get_config("effocc_lidar_tiny")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    points = example_batch(cfg, num_points=3000)["points"]
    with torch.no_grad():
        expected = model.lidar_branch(points)
        with torch.autocast("cpu", dtype=dtype):
            got = model.lidar_branch(points)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_fusion_model_trains_under_bf16_autocast_with_float32_losses():
    """Forward (images, BEV pooling, LiDAR, BEV encoder, head) and every loss under CPU bfloat16
    autocast: float32 finite losses, finite gradients on every trained parameter."""
    cfg = get_config("effocc_fusion_r18_tiny")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = example_batch(cfg, num_points=3000)
    generator = torch.Generator().manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        logits = out["occ_logits"]
        labels = torch.randint(0, 18, logits.shape[:-1], generator=generator)
        mask = torch.rand(logits.shape[:-1], generator=generator) < 0.02
        losses = four_losses(logits, labels, mask, torch.ones(18))
        teacher_logits, teacher_bev = logits.detach().float() + 0.1, out["bev_feat"].detach().float() + 0.1
        losses.update({f"distill_{name}": value for name, value in distill_losses(
            out["bev_feat"], logits, teacher_bev, teacher_logits, labels, mask, torch.tensor([True])).items()})
        losses["focal"] = occupancy_focal_loss(logits[..., :2], labels < 11)
        losses["lovasz_empty_mask"] = lovasz_softmax_loss(logits, labels, torch.zeros_like(mask))
    assert logits.dtype == torch.bfloat16   # autocast really was on
    for name, value in losses.items():
        assert value.dtype == torch.float32 and value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_metrics_accept_bfloat16_tensors():
    values = torch.tensor([0.5, 1.25, -2.0], dtype=torch.bfloat16)
    array = to_numpy(values)
    assert array.dtype == np.float32 and array.tolist() == [0.5, 1.25, -2.0]


def test_cached_bev_ranks_are_dropped_when_the_module_moves():
    """The eval-mode rank cache is no buffer: .to() / .cuda() / .cpu() drop it (it would hold memory
    on the old device), and the next call recomputes it where the module now is."""
    vt = LSSViewTransformer(in_channels=8, context_channels=4, image_size=(64, 176), downsample=8,
                            depth_bins=(1.0, 45.0, 0.5), pc_range=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4),
                            bev_voxel=0.4, use_lidar_depth=False).eval()
    batch = example_batch(apply_overrides(get_config("flashocc_r50_tiny"), ["data.image_size=(64, 176)"]))
    img_feat = torch.randn(6, 8, 8, 22, generator=torch.Generator().manual_seed(0))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    with torch.no_grad():
        first, _ = vt(img_feat, batch)
        for device in devices:
            assert vt._rank_cache is not None
            vt.to(device)
            assert vt._rank_cache is None
            moved_batch = {k: [p.to(device) for p in v] if k == "points" else v.to(device) for k, v in batch.items()}
            again, _ = vt(img_feat.to(device), moved_batch)
            assert all(r.device.type == device.type for r in vt._rank_cache[1])
            torch.testing.assert_close(again.cpu(), first)
