"""Plugin-free ONNX export (occ/deploy.py, tools/export_onnx.py), run in onnxruntime and compared
with PyTorch (which pools with the compiled bev_pool_v2 kernels)."""
import onnx
import onnxruntime
import pytest
import torch

from datasets.build import dataset_from_config
from datasets.nuscenes_occ import collate
from datasets.prepare_nuscenes import prepare
from occ import deploy
from occ.checkpoint import save_checkpoint
from occ.config import get_config
from occ.errors import UsageError
from occ.models import build_model
from occ.models.example_inputs import example_batch
from tools import export_onnx


def random_checkpoint(folder, preset):
    torch.manual_seed(0)
    cfg = get_config(preset)
    state = build_model(cfg).state_dict()
    path = folder / f"{preset}.pt"
    save_checkpoint(path, model=state, ema={"updates": 0, "model": state}, step=0, epoch=0, config=cfg)
    return path


def onnx_logits(path, inputs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0]


def test_camera_model_exports_with_standard_ops_and_matches_pytorch(tmp_path, synthetic_root):
    cfg = get_config("flashocc_r50_tiny")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = tmp_path / "flashocc.onnx"
    assert deploy.export_onnx(model, example_batch(cfg), out) == ("images", "ranks_depth", "ranks_feat", "ranks_bev")
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}  # no custom operator
    assert "ScatterND" in {node.op_type for node in graph.graph.node}
    assert [i.name for i in graph.graph.input] == ["images", "ranks_depth", "ranks_feat", "ranks_bev"]
    assert [o.name for o in graph.graph.output] == ["occ_logits"]

    # a synthetic frame: its own calibration and ranks, not those the export traced
    info = prepare(synthetic_root, "v1.0-mini", out_dir=str(tmp_path))["mini_val"]
    batch = collate([dataset_from_config(cfg, synthetic_root, info, train=False, load_gt=False)[0]])
    with torch.no_grad():
        reference = model(batch)["occ_logits"]
    inputs = deploy.graph_inputs(model, batch)
    assert inputs["ranks_bev"].numel() != deploy.graph_inputs(model, example_batch(cfg))["ranks_bev"].numel()
    logits = onnx_logits(out, inputs)
    max_abs, agreement = deploy.logit_agreement(reference, logits)
    assert logits.shape == (1, 200, 200, 16, 18)
    assert max_abs < 1e-3 and agreement >= 0.999


@pytest.mark.slow
def test_cli_exports_a_checkpoint_and_verifies_it_on_validation_samples(tmp_path, synthetic_root, capsys):
    ckpt = random_checkpoint(tmp_path, "flashocc_r50_tiny")
    info_dir = tmp_path / "infos"
    prepare(synthetic_root, "v1.0-mini", out_dir=str(info_dir))
    out = tmp_path / "flashocc.onnx"
    export_onnx.main(["--ckpt", str(ckpt), "--out", str(out), "--data-root", synthetic_root,
                      "--info-dir", str(info_dir), "--split", "mini_val", "--samples", "2"])
    printed = capsys.readouterr().out
    assert "2 samples of mini_val: max |ONNX - PyTorch|" in printed
    assert printed.count("argmax agreement 100.0000 %") == 3  # two samples and the total


@pytest.mark.slow
def test_fusion_model_exports_with_the_lidar_bev_as_an_input(tmp_path):
    cfg = get_config("effocc_fusion_r18_tiny")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = tmp_path / "fusion.onnx"
    names = deploy.export_onnx(model, example_batch(cfg, num_points=5000, seed=1), out)
    assert names == ("images", "ranks_depth", "ranks_feat", "ranks_bev", "depth_maps", "lidar_bev")
    batch = example_batch(cfg, num_points=8000, seed=2)
    batch["cam2ego"][:, :, :3, 3] += torch.tensor([0.3, -0.2, 0.1])  # another calibration
    with torch.no_grad():
        reference = model(batch)["occ_logits"]
    max_abs, agreement = deploy.logit_agreement(reference, onnx_logits(out, deploy.graph_inputs(model, batch)))
    assert max_abs < 1e-3 and agreement >= 0.999


def test_lidar_only_checkpoint_is_refused(tmp_path):
    ckpt = random_checkpoint(tmp_path, "effocc_lidar_tiny")
    with pytest.raises(UsageError, match="not a camera-only or fusion"):
        export_onnx.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "lidar.onnx")])


def test_a_ground_prior_model_exports_with_the_prior_as_its_last_input(tmp_path):
    cfg = get_config("flashocc_r50_tiny")
    cfg.model.camera_ground_prior = True
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.img_backbone.conv1_extra.weight, std=0.05)  # not the zeros of a new model
    out = tmp_path / "prior.onnx"
    names = deploy.export_onnx(model, example_batch(cfg), out)
    assert names == ("images", "ranks_depth", "ranks_feat", "ranks_bev", "ground_prior")
    assert [i.name for i in onnx.load(str(out)).graph.input] == list(names)
    batch = example_batch(cfg)
    batch["cam2ego"][:, :, 2, 3] += 0.2  # cameras 20 cm higher: another prior than the traced one
    with torch.no_grad():
        reference = model(batch)["occ_logits"]
    inputs = deploy.graph_inputs(model, batch)
    assert inputs["ground_prior"].shape == (1, 6, 1, *cfg.data.image_size)
    max_abs, agreement = deploy.logit_agreement(reference, onnx_logits(out, inputs))
    assert max_abs < 1e-3 and agreement >= 0.999
