"""Official checkpoints -> ours (occ/official_weights.py, tools/convert_checkpoint.py) and the BGR
input switch (data.color_order).

The synthetic official state dicts are written here from the official key names listed in
docs/deployment.md (for Swin-B, mmdet's SwinTransformer names), independently of
the converter's map; their key counts and parameter totals are checked against the published
figures. Values are random; every converted tensor must equal its source after the documented
permutation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.swin_transformer import PatchMerging

from datasets import transforms
from datasets.build import dataset_from_config
from datasets.prepare_nuscenes import prepare
from occ import official_weights as ow
from occ.checkpoint import load_checkpoint, model_weights
from occ.config import apply_overrides, get_config
from occ.errors import UsageError
from occ.evaluation import build_model_from_checkpoint
from occ.models import build_model
from tools import convert_checkpoint

BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "relative_position_index")


# ------------------------------------------------------------------ official key names and shapes
def conv(name, out_c, in_c, k, bias=False):
    k = (k, k) if isinstance(k, int) else k
    return {f"{name}.weight": (out_c, in_c, *k), **({f"{name}.bias": (out_c,)} if bias else {})}


def bn(name, c):
    return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
            f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}


def linear(name, out_c, in_c, bias=True):
    return {f"{name}.weight": (out_c, in_c), **({f"{name}.bias": (out_c,)} if bias else {})}


def sparse(name, in_c, out_c, layout, kernel=(3, 3, 3)):
    shape = (out_c, *kernel, in_c) if layout == "spconv2" else (*kernel, in_c, out_c)
    return {f"{name}.weight": shape}


def resnet(name):
    """img_backbone: torchvision ResNet names, no fc (docs/deployment.md)."""
    with torch.device("meta"):
        net = getattr(torchvision.models, name)()
    return {f"img_backbone.{k}": tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith("fc.")}


def custom_fpn(in_channels, out_c):
    keys = {}
    for i, c in enumerate(in_channels):
        keys.update(conv(f"img_neck.lateral_convs.{i}.conv", out_c, c, 1, bias=True))
    keys.update(conv("img_neck.fpn_convs.0.conv", out_c, out_c, 3, bias=True))
    return keys


def lidar_depth_view_transformer(in_c, context):
    v = "img_view_transformer"
    return {**conv(f"{v}.lidar_input_net.0", 8, 1, 1, True), **bn(f"{v}.lidar_input_net.1", 8),
            **conv(f"{v}.lidar_input_net.3", 32, 8, 5, True), **bn(f"{v}.lidar_input_net.4", 32),
            **conv(f"{v}.lidar_input_net.6", 64, 32, 5, True), **bn(f"{v}.lidar_input_net.7", 64),
            **conv(f"{v}.depth_net.0", in_c, in_c + 64, 3, True), **bn(f"{v}.depth_net.1", in_c),
            **conv(f"{v}.depth_net.3", in_c, in_c, 3, True), **bn(f"{v}.depth_net.4", in_c),
            **conv(f"{v}.depth_net.6", 88 + context, in_c, 1, True)}


def sparse_encoder(layout):
    p, widths = "pts_middle_encoder", (16, 32, 64, 128)
    keys = {**sparse(f"{p}.conv_input.0", 5, 16, layout), **bn(f"{p}.conv_input.1", 16)}
    for s, c in enumerate(widths, start=1):
        for j in range(2):
            block = f"{p}.encoder_layers.encoder_layer{s}.{j}"
            keys.update({**sparse(f"{block}.conv1", c, c, layout), **bn(f"{block}.bn1", c),
                         **sparse(f"{block}.conv2", c, c, layout), **bn(f"{block}.bn2", c)})
        if s < 4:
            down = f"{p}.encoder_layers.encoder_layer{s}.2"
            keys.update({**sparse(f"{down}.0", c, widths[s], layout), **bn(f"{down}.1", widths[s])})
    keys.update({**sparse(f"{p}.conv_out.0", 128, 128, layout, kernel=(3, 1, 1)), **bn(f"{p}.conv_out.1", 128)})
    return keys


def second_and_head(cam_channels):
    keys = {**conv("occ_fuser.occ_enc.0", 256, cam_channels + 256, 3), **bn("occ_fuser.occ_enc.1", 256)}
    for i, (c_in, c) in enumerate(((256, 128), (128, 256))):
        for k in range(6):
            keys.update({**conv(f"pts_backbone.blocks.{i}.{3 * k}", c, c_in if k == 0 else c, 3),
                         **bn(f"pts_backbone.blocks.{i}.{3 * k + 1}", c)})
    keys.update({**conv("pts_neck.deblocks.0.0", 256, 128, 1), **bn("pts_neck.deblocks.0.1", 256),
                 "pts_neck.deblocks.1.0.weight": (256, 256, 2, 2), **bn("pts_neck.deblocks.1.1", 256)})
    return {**keys, **occ_head(512)}


def occ_head(in_c):
    return {**conv("occ_head.final_conv.conv", 256, in_c, 3, True), **linear("occ_head.predicter.0", 512, 256),
            **linear("occ_head.predicter.2", 16 * 18, 512)}


def resnet_bev_encoder(out_c):
    keys, width = {}, 64
    for i, c in enumerate((128, 256, 512)):
        for j in range(2):
            block = f"img_bev_encoder_backbone.layers.{i}.{j}"
            keys.update({**conv(f"{block}.conv1", c, width if j == 0 else c, 3), **bn(f"{block}.bn1", c),
                         **conv(f"{block}.conv2", c, c, 3), **bn(f"{block}.bn2", c)})
        keys.update(conv(f"img_bev_encoder_backbone.layers.{i}.0.downsample", c, width, 3, bias=True))
        width = c
    n = "img_bev_encoder_neck"
    keys.update({**conv(f"{n}.conv.0", 512, 640, 3), **bn(f"{n}.conv.1", 512), **conv(f"{n}.conv.3", 512, 512, 3),
                 **bn(f"{n}.conv.4", 512), **conv(f"{n}.up2.1", out_c, 512, 3), **bn(f"{n}.up2.2", out_c),
                 **conv(f"{n}.up2.4", out_c, out_c, 1, bias=True)})
    return keys


def swin_b():
    """mmdet SwinTransformer (embed 128, depths 2-2-18-2, heads 4-8-16-32, window 7, out_indices (2, 3))."""
    keys = {**conv("img_backbone.patch_embed.projection", 128, 3, 4, True),
            "img_backbone.patch_embed.norm.weight": (128,), "img_backbone.patch_embed.norm.bias": (128,)}
    for i, (depth, heads) in enumerate(zip((2, 2, 18, 2), (4, 8, 16, 32))):
        c = 128 * 2 ** i
        for j in range(depth):
            b = f"img_backbone.stages.{i}.blocks.{j}"
            keys.update({f"{b}.norm1.weight": (c,), f"{b}.norm1.bias": (c,), f"{b}.norm2.weight": (c,),
                         f"{b}.norm2.bias": (c,), f"{b}.attn.w_msa.relative_position_bias_table": (169, heads),
                         f"{b}.attn.w_msa.relative_position_index": (49, 49),
                         **linear(f"{b}.attn.w_msa.qkv", 3 * c, c), **linear(f"{b}.attn.w_msa.proj", c, c),
                         **linear(f"{b}.ffn.layers.0.0", 4 * c, c), **linear(f"{b}.ffn.layers.1", c, 4 * c)})
        if i < 3:
            d = f"img_backbone.stages.{i}.downsample"
            keys.update({f"{d}.norm.weight": (4 * c,), f"{d}.norm.bias": (4 * c,),
                         f"{d}.reduction.weight": (2 * c, 4 * c)})
    for i, c in ((2, 512), (3, 1024)):
        keys.update({f"img_backbone.norm{i}.weight": (c,), f"img_backbone.norm{i}.bias": (c,)})
    n = "img_neck"
    keys.update({**conv(f"{n}.conv.0", 512, 1536, 3), **bn(f"{n}.conv.1", 512), **conv(f"{n}.conv.3", 512, 512, 3),
                 **bn(f"{n}.conv.4", 512)})
    return keys


def official_keys(preset, layout="spconv2"):
    """{official key: shape} of the released model of `preset`."""
    if preset == "flashocc_r50":
        return {**resnet("resnet50"), **custom_fpn((1024, 2048), 256),
                **conv("img_view_transformer.depth_net", 152, 256, 1, True), **resnet_bev_encoder(256), **occ_head(256)}
    if preset == "distillocc_r50":
        return {**resnet("resnet50"), **custom_fpn((1024, 2048), 256),
                **conv("img_view_transformer.depth_net", 152, 256, 1, True), **resnet_bev_encoder(512), **occ_head(512)}
    lidar_and_bev = {**sparse_encoder(layout), **second_and_head(256 if preset == "effocc_fusion_swinb" else 64)}
    if preset == "effocc_fusion_r18":
        return {**resnet("resnet18"), **custom_fpn((128, 256, 512), 128), **lidar_depth_view_transformer(128, 64),
                **lidar_and_bev}
    if preset == "effocc_fusion_r50":
        return {**resnet("resnet50"), **custom_fpn((512, 1024, 2048), 128), **lidar_depth_view_transformer(128, 64),
                **lidar_and_bev}
    return {**swin_b(), **lidar_depth_view_transformer(512, 256), **lidar_and_bev}


def random_state(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in keys.items():
        if name.endswith(("num_batches_tracked", "relative_position_index")):
            state[name] = torch.randint(0, 1000, shape, generator=g)
        else:
            state[name] = torch.randn(shape, generator=g)
    return state


def model_shapes(preset):
    with torch.device("meta"):
        return {k: v.shape for k, v in build_model(get_config(preset)).state_dict().items()}


def merge_index(c):
    """Column p * C + c of torchvision's patch merging reads mmdet's column c * 4 + kh * 2 + kw,
    with p = 0, 1, 2, 3 at (kh, kw) = (0, 0), (1, 0), (0, 1), (1, 1)."""
    kh_kw = ((0, 0), (1, 0), (0, 1), (1, 1))
    return torch.tensor([ch * 4 + kh * 2 + kw for kh, kw in kh_kw for ch in range(c)])


def expected(name, tensor, our_shape):
    """The documented transformation of one official tensor (docs/deployment.md)."""
    if name.startswith("pts_middle_encoder.") and tensor.dim() == 5 and tuple(tensor.shape) != tuple(our_shape):
        return tensor.permute(4, 0, 1, 2, 3)
    if name.endswith("relative_position_index"):
        return tensor.flatten()
    if name.startswith("img_backbone.stages") and ".downsample." in name:
        return tensor[..., merge_index(tensor.shape[-1] // 4)]
    return tensor


# --------------------------------------------------------------------------------------- tests
def test_official_key_lists_match_the_published_counts():
    for preset, num_keys, num_params in (("effocc_fusion_r18", 387, 21_354_248), ("flashocc_r50", 430, 44_744_312)):
        keys = official_keys(preset)
        params = sum(int(np.prod(s)) for k, s in keys.items() if not k.endswith(BUFFERS))
        assert (len(keys), params) == (num_keys, num_params), preset


@pytest.mark.parametrize("preset,layout", [("effocc_fusion_r18", "spconv2"), ("effocc_fusion_r18", "spconv1"),
                                           ("effocc_fusion_r50", "spconv1"), ("effocc_fusion_swinb", "spconv2"),
                                           ("flashocc_r50", None), ("distillocc_r50", None)])
def test_every_official_key_converts_and_loads_strictly(preset, layout):
    official = random_state(official_keys(preset, layout or "spconv2"))
    shapes = model_shapes(preset)
    state, counts = ow.convert_state_dict(official, shapes, ow.module_map(get_config(preset)))
    with torch.device("meta"):
        build_model(get_config(preset)).load_state_dict(state, strict=True, assign=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(s) for k, s in shapes.items()}
    inverse = {}
    for name, tensor in official.items():
        ours = ow.official_to_ours(name, ow.module_map(get_config(preset)))
        inverse[ours] = name
        assert torch.equal(state[ours], expected(name, tensor, shapes[ours])), name
    assert len(inverse) == len(state) == len(official)
    if layout:
        assert counts[layout] == 21  # every sparse conv (input, 16 in blocks, 3 down, out) in the layout written


def test_cli_writes_a_checkpoint_evaluate_and_init_from_accept(tmp_path):
    official = random_state(official_keys("effocc_fusion_r18", "spconv1"))
    src = tmp_path / "effocc_r18_ema.pth"  # an EMA file of a DataParallel model
    torch.save({"epoch": 48, "updates": 1234, "state_dict": {f"module.{k}": v for k, v in official.items()}}, src)
    out = tmp_path / "converted" / "r18.pt"
    convert_checkpoint.main(["--src", str(src), "--config", "effocc_fusion_r18", "--out", str(out)])
    model, cfg = build_model_from_checkpoint(out, use_ema=True, device="cpu")
    assert cfg.data.color_order == "bgr" and cfg.name == "effocc_fusion_r18"
    weights = model.state_dict()
    assert torch.equal(weights["img_neck.laterals.2.weight"], official["img_neck.lateral_convs.2.conv.weight"])
    assert torch.equal(weights["lidar_branch.encoder.conv_out.0.weight"],
                       official["pts_middle_encoder.conv_out.0.weight"].permute(4, 0, 1, 2, 3))
    checkpoint = load_checkpoint(out)
    assert checkpoint["ema"]["updates"] == 1234 and checkpoint["epoch"] == 48
    assert model_weights(checkpoint, use_ema=False).keys() == weights.keys()  # what --init-from reads


def test_missing_unmapped_and_misshapen_keys_are_all_named():
    official = random_state(official_keys("flashocc_r50"))
    del official["occ_head.predicter.2.bias"]
    official["img_neck.fpn_convs.0.conv.weight"] = torch.zeros(256, 256, 1, 1)
    official["teacher.occ_head.predicter.0.weight"] = torch.zeros(3)
    with pytest.raises(ow.ConversionError) as error:
        ow.convert_state_dict(official, model_shapes("flashocc_r50"), ow.module_map(get_config("flashocc_r50")),
                              source="flashocc.pth")
    message = str(error.value)
    assert message.startswith("flashocc.pth: 3 key(s)")
    assert "missing: occ_head.predicter.2.bias" in message
    assert "shape mismatch: img_neck.fpn_convs.0.conv.weight (256, 256, 1, 1)" in message
    assert "unmapped: teacher.occ_head.predicter.0.weight" in message


def test_cli_refuses_and_writes_nothing(tmp_path):
    official = random_state(official_keys("effocc_fusion_r18"))
    official["pts_middle_encoder.conv_input.0.weight"] = torch.zeros(16, 3, 3, 3, 4)  # 4 point features, not 5
    src, out = tmp_path / "bad.pth", tmp_path / "out.pt"
    torch.save({"meta": {}, "state_dict": official, "optimizer": {}}, src)
    with pytest.raises(UsageError, match="pts_middle_encoder.conv_input.0.weight"):
        convert_checkpoint.main(["--src", str(src), "--config", "effocc_fusion_r18", "--out", str(out)])
    assert not out.exists()
    torch.save({"model": {}}, src)
    with pytest.raises(UsageError, match="not an mmcv checkpoint"):
        convert_checkpoint.main(["--src", str(src), "--config", "effocc_fusion_r18", "--out", str(out)])


def test_sparse_layout_is_read_off_the_shape():
    ours = (32, 3, 3, 3, 16)
    assert ow.sparse_layout((32, 3, 3, 3, 16), ours) == "spconv2"
    assert ow.sparse_layout((3, 3, 3, 16, 32), ours) == "spconv1"
    assert ow.sparse_layout((16, 3, 3, 3, 32), ours) is None
    assert ow.sparse_layout((3, 1, 1, 128, 128), (128, 3, 1, 1, 128)) == "spconv1"
    with pytest.raises(ow.ConversionError, match="both layouts"):
        ow.sparse_layout((3, 3, 3, 3, 3), (3, 3, 3, 3, 3))
    weight = torch.randn(3, 1, 1, 8, 4)  # (kz, ky, kx, in, out)
    converted = ow.spconv1_to_spconv2(weight)
    assert converted.shape == (4, 3, 1, 1, 8)
    assert converted[2, 1, 0, 0, 5] == weight[1, 0, 0, 5, 2]


def test_swin_patch_merging_computes_the_same_after_reordering():
    """mmdet's merging (nn.Unfold, LayerNorm, Linear) with the official tensors == torchvision's
    PatchMerging with the converted ones."""
    torch.manual_seed(0)
    C = 8
    norm_w, norm_b, reduction = torch.randn(4 * C), torch.randn(4 * C), torch.randn(2 * C, 4 * C)
    x = torch.randn(2, 6, 10, C)  # (B, H, W, C)
    unfolded = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, L, 4C)
    mmdet = F.linear(F.layer_norm(unfolded, (4 * C,), norm_w, norm_b), reduction)
    merging = PatchMerging(C)
    merging.load_state_dict({"norm.weight": ow.unfold_to_concat_order(norm_w),
                             "norm.bias": ow.unfold_to_concat_order(norm_b),
                             "reduction.weight": ow.unfold_to_concat_order(reduction)})
    with torch.no_grad():
        ours = merging(x).flatten(1, 2)
    torch.testing.assert_close(ours, mmdet, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- BGR input
def test_bgr_normalisation_swaps_channels_and_keeps_the_per_position_constants():
    image = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    rgb, bgr = transforms.normalize_image(image), transforms.normalize_image(image, "bgr")
    mean, std = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
    for position, source in enumerate((2, 1, 0)):  # mmcv imnormalize(to_rgb=True) of an RGB image
        normalised = (image[:, :, source] / 255.0 - mean[position]) / std[position]
        np.testing.assert_allclose(bgr[position], normalised, atol=1e-6)
    np.testing.assert_array_equal(bgr[1], rgb[1])
    with pytest.raises(ValueError, match="color_order"):
        transforms.normalize_image(image, "hsv")


def test_color_order_config_reaches_the_dataset(synthetic_root, tmp_path):
    info = prepare(synthetic_root, "v1.0-mini", out_dir=str(tmp_path))["mini_val"]
    cfg = get_config("flashocc_r50_tiny")
    rgb = dataset_from_config(cfg, synthetic_root, info, train=False, load_gt=False)[0]["images"]
    apply_overrides(cfg, ["data.color_order=bgr"])
    bgr = dataset_from_config(cfg, synthetic_root, info, train=False, load_gt=False)[0]["images"]
    mean, std = (torch.from_numpy(a).view(3, 1, 1) for a in (transforms.IMAGENET_MEAN, transforms.IMAGENET_STD))
    torch.testing.assert_close(bgr * std + mean, (rgb * std + mean).flip(1), atol=1e-5, rtol=0)  # the same pixels
    with pytest.raises(UsageError, match="data.color_order"):
        apply_overrides(cfg, ["data.color_order=hsv"])
