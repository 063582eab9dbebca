"""Deformable DETR's encoder: ``deformable_detr_encoder`` reproduces transformers' ``DeformableDetrModel`` input
projections, sine position + level embeddings and ``DeformableDetrEncoder`` weight for weight (through
``fpn_zoo.convert.from_module``), and behaves like every fpn_zoo neck.

Parity is measured on the model's own forward (its backbone replaced by a stub returning our maps), odd and
non-square map sizes, offsets reaching past the borders, in float64 (<= 1e-10) and float32 (<= 1e-5 relative to
the output's scale: each output is LayerNormed, O(1), after a few dozen float32 roundings per layer).
"""
from __future__ import annotations

import pytest
import torch

import fpn_zoo
from _outside_peers import deformable_detr_encoder_outputs, deformable_detr_model, max_abs
from fpn_zoo import FeatureSpec
from fpn_zoo.convert import from_module
from fpn_zoo.layers.sampling import tap_dot_products, weighted_row_sums
from fpn_zoo.necks import deformable_detr_encoder as encoder_module
from fpn_zoo.necks.deformable_detr_encoder import multi_scale_deformable_attention, sine_position_embedding

SIZES = [(13, 19), (7, 10), (4, 5)]  # odd and non-square: the extra level is 2 x 3
CHANNELS = [16, 24, 32]


def maps(dtype=torch.float64, sizes=SIZES):
    torch.manual_seed(1)
    return [torch.randn(2, c, h, w, dtype=dtype) for c, (h, w) in zip(CHANNELS, sizes)]


def test_float64_parity_with_transformers_model():
    model = deformable_detr_model()
    neck = from_module(model)
    assert len(neck.layers) == 2 and len(neck.extra_proj) == 1 and not neck.training
    with torch.no_grad():
        outs = neck(maps())
    expected = deformable_detr_encoder_outputs(model, maps())
    assert max(max_abs(outs, expected)) <= 1e-10
    assert all(e.abs().max() > 0.5 for e in expected)
    assert [o.shape[1] for o in outs] == neck.feature_info.channels() == [32] * 4
    assert neck.feature_info.reduction() == [8, 16, 32, 64]


def test_float32_parity_two_extra_levels_gelu():
    model = deformable_detr_model(torch.float32, levels=5, activation_function="gelu")
    neck = from_module(model)
    assert len(neck.extra_proj) == 2
    with torch.no_grad():
        outs = neck(maps(torch.float32))
    expected = deformable_detr_encoder_outputs(model, maps(torch.float32))
    assert len(outs) == len(expected) == 5
    for out, ref in zip(outs, expected):
        assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def _attention_by_definition(value, shapes, locations, weights):
    """``sum_{l,k} A_{mlqk} V_m^l(location)`` one (level, point) term at a time, in float64: the definition
    written out, sharing no code with the module (bilinear reads by ``grid_sample``, zeros outside)."""
    batch, _, heads, head_dim = value.shape
    queries, points = locations.shape[1], locations.shape[4]
    out = torch.zeros(batch, heads, head_dim, queries, dtype=torch.float64)
    start = 0
    for level, (h, w) in enumerate(shapes):
        v = value[:, start:start + h * w].double().permute(0, 2, 3, 1).reshape(batch * heads, head_dim, h, w)
        start += h * w
        for k in range(points):
            grid = 2 * locations[:, :, :, level, k].double().transpose(1, 2).reshape(batch * heads, queries, 1, 2) - 1
            read = torch.nn.functional.grid_sample(v, grid, align_corners=False)[..., 0]
            weight = weights[:, :, :, level, k].double().permute(0, 2, 1)[:, :, None]  # (batch, heads, 1, queries)
            out += read.view(batch, heads, head_dim, queries) * weight
    return out.permute(0, 3, 1, 2).reshape(batch, queries, heads * head_dim)


def _attention_inputs(dtype, queries=11, points=4, requires_grad=False):
    torch.manual_seed(0)
    shapes = [(5, 7), (3, 4), (1, 2)]
    batch, heads, head_dim = 2, 2, 3
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(batch, tokens, heads, head_dim, dtype=dtype)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, dtype=dtype) * 1.4 - 0.2  # some outside
    weights = torch.rand(batch, queries, heads, len(shapes), points, dtype=dtype).softmax(-1)
    return shapes, [t.requires_grad_(requires_grad) for t in (value, locations, weights)]


ATTENTION_FORMS = {"bilinear taps (eager)": multi_scale_deformable_attention,
                   "grid_sample (traced)": encoder_module._attention_by_grid_sample}


@pytest.mark.parametrize("form", ATTENTION_FORMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deformable_attention_is_its_definition(dtype, form):
    """Both forms equal the definition: to 1e-12 in float64; in float32 within the rounding of a sum of its
    4 * levels * points bilinear taps, (4 * L * K + 8) eps times the sum of their sizes (the same computation
    on |value| and |weights|)."""
    shapes, (value, locations, weights) = _attention_inputs(dtype)
    got = ATTENTION_FORMS[form](value, shapes, locations, weights)
    expected = _attention_by_definition(value, shapes, locations, weights)
    assert got.shape == (value.shape[0], locations.shape[1], value.shape[2] * value.shape[3]) and got.dtype == dtype
    if dtype == torch.float64:
        assert (got - expected).abs().max() <= 1e-12
    else:
        size = _attention_by_definition(value.abs(), shapes, locations, weights)
        bound = (4 * len(shapes) * locations.shape[4] + 8) * torch.finfo(torch.float32).eps * size
        assert ((got.double() - expected).abs() <= bound).all()
    assert expected.abs().max() > 0.1


def test_deformable_attention_gradients_are_grid_samples():
    """The taps' own backward (rows sorted, then summed per row) gives the gradients autograd gives through
    ``grid_sample``, for the values, the sampling locations and the attention weights (float64, 1e-12),
    with points outside the maps and points on pixel centres (where a bilinear weight is exactly 0 or 1)."""
    shapes, (value, locations, weights) = _attention_inputs(torch.float64, queries=13, requires_grad=True)
    with torch.no_grad():  # some points exactly on pixel centres: x W - 0.5 an integer
        locations[0, :3, :, 0, 0] = torch.tensor([[0.5 / 7, 0.5 / 5], [3.5 / 7, 2.5 / 5], [6.5 / 7, 4.5 / 5]])[:, None]
    grad_out = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3], dtype=torch.float64)
    grads = []
    for form in ATTENTION_FORMS.values():
        out = form(value, shapes, locations, weights)
        grads.append(torch.autograd.grad(out, (value, locations, weights), grad_out))
    for ours, reference in zip(*grads):
        assert reference.abs().max() > 0.1
        assert (ours - reference).abs().max() <= 1e-12 * reference.abs().max()


def test_weighted_row_sums_gradcheck_with_repeated_rows():
    """The custom backward against finite differences, where many taps read the same row (as the taps of
    points outside a map all read row 0) and some rows are read by none."""
    torch.manual_seed(0)
    table = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([[0, 0, 2, 5], [2, 2, 2, 0], [5, 0, 1, 1]])
    weights = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, w: weighted_row_sums(t, rows, w), (table, weights))


def test_tap_dot_products_is_its_definition_on_unsorted_repeated_rows():
    """The weights' gradient (a sampled matmul on a CSR pattern that repeats and does not sort its columns)
    against the plain gather-and-dot, in float64, also with more taps per row than the table has rows; no rows
    gives an empty result, not an error."""
    torch.manual_seed(0)
    grad, table = torch.randn(40, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    rows = torch.randint(0, 9, (40, 7))
    rows[:, :3] = rows[:, :1]  # the same row three times in a row of taps
    expected = (grad[:, None, :] * table[rows]).sum(-1)
    for index in (rows, rows.int()):
        assert (tap_dot_products(grad, table, index) - expected).abs().max() <= 1e-12 * expected.abs().max()
    assert tap_dot_products(grad[:0], table, rows[:0]).shape == (0, 7)
    few = rows % 3  # more taps per row (7) than table rows (3): more taps than a (40, 3) sparse tensor can hold
    expected = (grad[:, None, :] * table[few]).sum(-1)
    for index in (few, few.int()):
        assert (tap_dot_products(grad, table[:3], index) - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_position_embedding_is_transformers_sine_embedding():
    pytest.importorskip("transformers")
    from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrSinePositionEmbedding

    peer = DeformableDetrSinePositionEmbedding(16, normalize=True)(torch.Size([1, 3, 5, 7]), "cpu", torch.float64)
    ours = sine_position_embedding(5, 7, 32, 10000.0, -0.5, torch.float64)
    assert (ours - peer.flatten(2)[0].T).abs().max() <= 1e-12


def test_the_registered_variant_is_transformers_default_configuration():
    transformers = pytest.importorskip("transformers")
    from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrEncoder

    config = transformers.DeformableDetrConfig()
    torch.manual_seed(0)
    peer = DeformableDetrEncoder(config)
    ours = fpn_zoo.create_neck("deformable_detr_encoder", FeatureSpec((512, 1024, 2048), (8, 16, 32)))
    theirs = {f"layers.{k}": v.shape for k, v in peer.layers.state_dict().items()}
    ours_layers = {k: v.shape for k, v in ours.state_dict().items() if k.startswith("layers.")}
    assert len(ours_layers) == len(theirs) and sorted(ours_layers.values()) == sorted(theirs.values())
    assert ours.level_embed.shape == (config.num_feature_levels, config.d_model)
    dino = fpn_zoo.neck_cfg("dino_encoder").args
    assert (dino["ffn_channels"], dino["temperature"], dino["position_offset"], dino["num_layers"]) == (2048, 20, 0, 6)


@pytest.mark.parametrize("overrides, message", [
    (dict(position_embedding_type="learned"), r"config\.position_embedding_type"),
    (dict(activation_function="mish"), r"config\.activation_function"),
])
def test_unsupported_configurations_name_the_attribute(overrides, message):
    with pytest.raises(ValueError, match=message):
        from_module(deformable_detr_model(torch.float32, **overrides))


def test_the_features_hint_sets_strides_and_must_match_the_channels():
    model = deformable_detr_model(torch.float32)
    assert from_module(model, features=FeatureSpec((16, 24, 32), (4, 8, 16))).feature_info.reduction() == [4, 8, 16, 32]
    with pytest.raises(ValueError, match="features have channels"):
        from_module(model, features=[16, 24, 48])


def test_one_vit_level_nhwc_odd_sizes_feature_info_and_gradients():
    spec = FeatureSpec((24,), (16,), "NHWC")
    neck = fpn_zoo.create_neck("dino_encoder", spec, out_channels=32, num_heads=4, num_points=2, num_layers=1,
                               ffn_channels=16, extra_levels=2, norm_kwargs={"num_groups": 8})
    torch.manual_seed(0)
    outs = neck([torch.randn(2, 5, 7, 24)])
    assert [tuple(o.shape[1:]) for o in outs] == [(32, 5, 7), (32, 3, 4), (32, 2, 2)]
    assert neck.feature_info.reduction() == [16, 32, 64]
    # the outputs are LayerNormed, so their channel means are constant: weigh them at random
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    assert all(p.grad is not None for p in neck.parameters())
    # positions reach the output through the offset / weight projections only, zero-initialised (Deformable
    # DETR's init): the level embedding's first gradient is zero, every other one is not
    assert [n for n, p in neck.named_parameters() if not p.grad.abs().sum() > 0] == ["level_embed"]


def test_no_layers_is_the_projection_only():
    neck = fpn_zoo.create_neck("deformable_detr_encoder", [8, 16], out_channels=32, num_layers=0)
    assert neck.level_embed is None and not list(neck.layers)
    outs = neck([torch.randn(1, 8, 6, 6), torch.randn(1, 16, 3, 3)])
    assert [tuple(o.shape[1:]) for o in outs] == [(32, 6, 6), (32, 3, 3), (32, 2, 2)]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(out_channels=30), ValueError, "multiple of 4"),
    (dict(num_heads=3), ValueError, "num_heads"),
    (dict(out_channels=48), ValueError, "norm's groups"),
    (dict(num_points=0), ValueError, "num_points"),
    (dict(num_layers=1.0), TypeError, "num_layers"),
    (dict(extra_levels=-1), ValueError, "extra_levels"),
    (dict(temperature=0), ValueError, "temperature"),
    (dict(ffn_act=None), ValueError, "ffn_act"),
])
def test_bad_knobs_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        fpn_zoo.create_neck("deformable_detr_encoder", [8, 16, 32], **kwargs)


def test_torch_export_with_dynamic_batch_and_sizes():
    """The default export check (the generic one in tests/test_export.py, 4 levels, is sweep-only): one backbone
    level and one extra, dynamic batch and sizes, checked at another batch and an odd size. In float64: the
    exported graph samples through ``grid_sample``, eager through ``embedding_bag`` (the same math)."""
    torch.manual_seed(0)
    neck = fpn_zoo.create_neck("deformable_detr_encoder", FeatureSpec((8,), (16,)), out_channels=32, num_heads=4,
                               num_points=2, num_layers=1, ffn_channels=16, norm_kwargs={"num_groups": 8}).eval()
    with torch.no_grad():  # offsets that depend on the query
        neck.layers[0].self_attn.sampling_offsets.weight.normal_(0, 0.5)
    neck.double()
    dims = [{0: torch.export.Dim("batch", min=1, max=64), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}]
    program = torch.export.export(neck, ([torch.randn(2, 8, 6, 8, dtype=torch.float64)],), dynamic_shapes=(dims,))
    other = [torch.randn(3, 8, 9, 5, dtype=torch.float64)]
    with torch.no_grad():
        for got, expected in zip(program.module()(other), neck(other), strict=True):
            assert got.shape == expected.shape
            assert (got - expected).abs().max().item() <= 1e-10 * expected.abs().max().item()
