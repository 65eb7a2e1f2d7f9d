"""Tests for minisam: parity with the reference package, checkpoints, and properties.

Run: python -m pytest -q (everything, as CI does), or python -m pytest -q -m "not slow" (the
tests that take seconds, not minutes, on a 2-core CPU). The sections follow minisam.py's; the
tests of train_toy.py, the lessons and finetune.py come last. The parity tests need the
reference `segment-anything==1.0` (requirements-test.txt) and skip with the reason where it
cannot be imported.
"""

import dataclasses
import functools
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import finetune
import minisam
from minisam import CONFIGS, Sam, SamConfig, build_sam, dice_loss, focal_loss, sam_loss

# Deterministic, no deadline: a CI run never fails by chance or by a slow machine.
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")
torch.set_num_threads(2)

# `-m "not slow"` leaves out the tests marked `@slow`. pytest registers a mark in pytest.ini or
# a conftest.py, and the repository keeps neither (its top level holds only the files its
# design names), so `slow` stays unregistered; this filter silences pytest's warning about
# that one mark, and a misspelt mark still warns.
warnings.filterwarnings("ignore", r"Unknown pytest\.mark\.slow\b", pytest.PytestUnknownMarkWarning)
slow = pytest.mark.slow

# A config whose 12x12 token grid is not a multiple of its 5x5 window, with an odd patch size,
# 3 decoder layers and 2 multimask outputs: everything the reference classes accept must work.
ODD = dataclasses.replace(
    CONFIGS["toy"], image_size=72, patch_size=6, window_size=5, encoder_depth=3,
    encoder_global_attn_indexes=(1,), encoder_num_heads=2, encoder_embed_dim=32,
    prompt_embed_dim=32, mask_in_chans=8, decoder_depth=3, decoder_num_heads=2,
    decoder_mlp_dim=64, num_multimask_outputs=2, iou_head_depth=2, iou_head_hidden_dim=24)
PARITY_CONFIGS = {"toy": CONFIGS["toy"], "odd": ODD}


def import_or_skip(name: str):
    """A test-only module (the reference, or the torchvision it brings), or a skip that says
    why it is absent. Any failure skips: a torchvision built for another torch raises
    RuntimeError, not ImportError, so pytest.importorskip would not do."""
    try:
        return importlib.import_module(name)
    except Exception as e:
        pytest.skip(f"{name} not importable ({type(e).__name__}: {e}); "
                    "install requirements-test.txt")


def reference_package():
    """The reference package segment-anything, or a skip that says why it is absent."""
    return import_or_skip("segment_anything")


def reference_sam(cfg: SamConfig):
    """The reference model with cfg's sizes, assembled from the classes of the reference
    package (load minisam's state_dict into it to compare), or a skip where it is absent."""
    modeling = reference_package().modeling
    g = cfg.image_embedding_size
    encoder = modeling.ImageEncoderViT(
        depth=cfg.encoder_depth, embed_dim=cfg.encoder_embed_dim, img_size=cfg.image_size,
        mlp_ratio=cfg.mlp_ratio, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=cfg.encoder_num_heads, patch_size=cfg.patch_size, qkv_bias=True,
        use_rel_pos=True, global_attn_indexes=cfg.encoder_global_attn_indexes,
        window_size=cfg.window_size, out_chans=cfg.prompt_embed_dim)
    prompt_encoder = modeling.PromptEncoder(
        embed_dim=cfg.prompt_embed_dim, image_embedding_size=(g, g),
        input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=cfg.mask_in_chans)
    decoder = modeling.MaskDecoder(
        num_multimask_outputs=cfg.num_multimask_outputs,
        transformer=modeling.TwoWayTransformer(
            depth=cfg.decoder_depth, embedding_dim=cfg.prompt_embed_dim,
            mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads),
        transformer_dim=cfg.prompt_embed_dim, iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim)
    return modeling.Sam(encoder, prompt_encoder, decoder, list(cfg.pixel_mean),
                        list(cfg.pixel_std)).eval()


def random_sam(cfg: SamConfig, seed: int = 0) -> Sam:
    """A minisam model whose every weight is random and O(1)-scaled, the zero-initialised
    relative positions and position embedding included, so that a parity check sees every
    path compute something."""
    torch.manual_seed(seed)
    model = Sam(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * (0.5 if p.dim() == 1 else p[0].numel() ** -0.5))
    return model


def twin_models(cfg: SamConfig, seed: int = 0):
    ours = random_sam(cfg, seed)
    theirs = reference_sam(cfg)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-4, what: str = ""):
    """fp32 agreement within `rel` of the output's scale; `what` names it in a failure."""
    assert ours.shape == theirs.shape, what
    scale = theirs.abs().max().item()
    assert scale > 0, f"{what}: a parity check on an all-zero output proves nothing"
    error = (ours - theirs).abs().max().item()
    assert error <= rel * scale, f"{what}: off by {error:.3g}, more than {rel} x {scale:.3g}"


def random_prompts(cfg: SamConfig, n: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    S = cfg.image_size
    coords = torch.rand(n, 3, 2, generator=g) * S
    labels = torch.randint(0, 2, (n, 3), generator=g)
    boxes = torch.sort(torch.rand(n, 2, 2, generator=g) * S, dim=1).values.reshape(n, 4)
    masks = torch.randn(n, 1, 4 * cfg.image_embedding_size, 4 * cfg.image_embedding_size,
                        generator=g)
    return {
        "points": dict(points=(coords, labels), boxes=None, masks=None),
        "negative_points": dict(points=(coords, torch.zeros_like(labels)), boxes=None, masks=None),
        "box": dict(points=None, boxes=boxes, masks=None),
        "points_and_box": dict(points=(coords, labels), boxes=boxes, masks=None),
        "box_and_mask": dict(points=None, boxes=boxes, masks=masks),
        "points_box_mask": dict(points=(coords, labels), boxes=boxes, masks=masks),
    }


# -----------------------------------------------------------------------------
# Presets (section 0): sizes and checkpoint keys


OFFICIAL_PARAMS = {"vit_b": 93_735_472, "vit_l": 312_342_832, "vit_h": 641_090_608}


@pytest.mark.parametrize("name", OFFICIAL_PARAMS)
def test_preset_parameter_counts(name):
    with torch.device("meta"):
        model = Sam(CONFIGS[name])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == OFFICIAL_PARAMS[name]
    assert count(model.prompt_encoder) == 6_220
    assert count(model.mask_decoder) == 4_058_340


def test_vit_b_state_dict_keys_are_the_official_ones():
    tsv = Path(__file__).resolve().parent.parent / "shared/reference/sam_vit_b_state_dict.tsv"
    if not tsv.exists():
        pytest.skip(f"{tsv} not found (it sits beside the repo in this project's workspace)")
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:] if line]
    official = {key: tuple(int(d) for d in shape.split("x")) for key, shape in rows}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in Sam(CONFIGS["vit_b"]).state_dict().items()}
    assert len(official) == 314
    assert ours == official


@slow
@pytest.mark.parametrize("name", OFFICIAL_PARAMS)
def test_preset_state_dict_equals_the_reference_builders(name):
    sa = reference_package()
    with torch.device("meta"):
        theirs = sa.sam_model_registry[name]()
        ours = Sam(CONFIGS[name])
    assert ({k: v.shape for k, v in ours.state_dict().items()}
            == {k: v.shape for k, v in theirs.state_dict().items()})


# -----------------------------------------------------------------------------
# Sections 1-3: the image encoder, the prompt encoder and the decoder against the reference,
# module by module


@pytest.mark.parametrize("cfg", PARITY_CONFIGS.values(), ids=PARITY_CONFIGS.keys())
@pytest.mark.parametrize("smallest_chunks", [False, pytest.param(True, marks=slow)],
                         ids=["default_chunks", "one_grid_row_per_chunk"])
def test_image_encoder_and_dense_pe_match_reference(cfg, smallest_chunks, monkeypatch):
    if smallest_chunks:  # attention: one row of queries of one head; MLP: one grid row
        monkeypatch.setattr(minisam, "LOGITS_CHUNK_BYTES", 1)
        monkeypatch.setattr(minisam, "MLP_CHUNK_BYTES", 1)
    ours, theirs = twin_models(cfg)
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size - 7) * 255  # needs padding on the right
    with torch.no_grad():
        assert_close(ours.preprocess(x), theirs.preprocess(x))
        assert_close(ours.image_encoder(ours.preprocess(x)),
                     theirs.image_encoder(theirs.preprocess(x)))
        assert_close(ours.prompt_encoder.get_dense_pe(), theirs.prompt_encoder.get_dense_pe())


@pytest.mark.parametrize("cfg", PARITY_CONFIGS.values(), ids=PARITY_CONFIGS.keys())
@pytest.mark.parametrize("multimask_output", [True, False])
def test_prompt_encoder_and_decoder_match_reference(cfg, multimask_output):
    ours, theirs = twin_models(cfg)
    x = torch.rand(1, 3, cfg.image_size, cfg.image_size) * 255
    with torch.no_grad():
        embedding = ours.image_encoder(ours.preprocess(x))
        for kind, prompt in random_prompts(cfg).items():
            sparse, dense = ours.prompt_encoder(**prompt)
            ref_sparse, ref_dense = theirs.prompt_encoder(**prompt)
            assert_close(sparse, ref_sparse, what=f"{kind}: sparse prompt")
            assert_close(dense, ref_dense, what=f"{kind}: dense prompt")
            out = ours.mask_decoder(
                image_embeddings=embedding, image_pe=ours.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                multimask_output=multimask_output)
            ref = theirs.mask_decoder(
                image_embeddings=embedding, image_pe=theirs.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=ref_sparse, dense_prompt_embeddings=ref_dense,
                multimask_output=multimask_output)
            expected_outputs = cfg.num_multimask_outputs if multimask_output else 1
            assert out[0].shape == (5, expected_outputs, *ours.prompt_encoder.mask_input_size)
            assert_close(out[0], ref[0], what=f"{kind}: masks")
            assert_close(out[1], ref[1], what=f"{kind}: predicted IoU")


def test_end_to_end_forward_and_postprocess_match_reference():
    ours, theirs = twin_models(ODD)
    g = torch.Generator().manual_seed(3)
    batch = [{"image": torch.rand(3, 72, 50, generator=g) * 255, "original_size": (101, 70),
              "point_coords": torch.tensor([[[10.0, 20.0], [30.0, 40.0]]]),
              "point_labels": torch.tensor([[1, 0]])},
             {"image": torch.rand(3, 60, 72, generator=g) * 255, "original_size": (60, 72),
              "boxes": torch.tensor([[5.0, 6.0, 50.0, 40.0]])}]
    for multimask_output in (True, False):
        out, ref = ours(batch, multimask_output), theirs(batch, multimask_output)
        for a, b in zip(out, ref):
            assert_close(a["low_res_logits"], b["low_res_logits"])
            assert_close(a["iou_predictions"], b["iou_predictions"])
            # binarised masks agree except where a logit sits within float error of 0
            assert (a["masks"] != b["masks"]).float().mean() < 1e-3


def test_decoder_accepts_one_embedding_per_prompt():
    """The training extension: N prompts on N images in one call equals N separate calls."""
    model = random_sam(CONFIGS["toy"])
    with torch.no_grad():
        embeddings = model.image_encoder(torch.randn(3, 3, 64, 64))
        sparse, dense = model.prompt_encoder(**random_prompts(model.config, n=3)["points"])
        kw = dict(image_pe=model.prompt_encoder.get_dense_pe(), multimask_output=True)
        batched = model.mask_decoder(image_embeddings=embeddings, sparse_prompt_embeddings=sparse,
                                     dense_prompt_embeddings=dense, **kw)
        for i in range(3):
            single = model.mask_decoder(image_embeddings=embeddings[i:i + 1],
                                        sparse_prompt_embeddings=sparse[i:i + 1],
                                        dense_prompt_embeddings=dense[i:i + 1], **kw)
            assert torch.allclose(batched[0][i], single[0][0], atol=1e-5)
            assert torch.allclose(batched[1][i], single[1][0], atol=1e-5)
        with pytest.raises(ValueError, match="image_embeddings has batch 2"):
            model.mask_decoder(image_embeddings=embeddings[:2], sparse_prompt_embeddings=sparse,
                               dense_prompt_embeddings=dense, **kw)


# -----------------------------------------------------------------------------
# Sections 1-3: properties of the image encoder, the prompt encoder and the decoder


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 7))
def test_window_partition_round_trips(h, w, window):
    x = torch.randn(2, h, w, 3)
    windows = minisam.window_partition(x, window)
    assert windows.shape[1:] == (window, window, 3)
    assert torch.equal(minisam.window_unpartition(windows, window, (h, w)), x)


coordinates = st.floats(-2000, 2000, allow_nan=False, width=32)


@pytest.fixture(scope="module")
def reference():
    """The reference package for property tests (a skip, with the reason, where it is absent)."""
    return reference_package()


@pytest.fixture(scope="module")
def torchvision_ops():
    """torchvision.ops, installed with the reference (a skip where it cannot be imported)."""
    return import_or_skip("torchvision.ops")


@given(points=st.lists(st.tuples(coordinates, coordinates), min_size=1, max_size=8),
       size=st.tuples(st.integers(1, 1024), st.integers(1, 1024)))
def test_fourier_features_equal_the_reference_anywhere(reference, points, size):
    """Clicks far outside the image (the predictor refuses them, predict_torch does not) and
    non-square images: the same encoding as the reference's PositionEmbeddingRandom."""
    pe = minisam.FourierPositionalEncoding(32)
    ref = reference.modeling.prompt_encoder.PositionEmbeddingRandom(32)
    ref.positional_encoding_gaussian_matrix.copy_(pe.positional_encoding_gaussian_matrix)
    coords = torch.tensor(points, dtype=torch.float32)[None]  # (1, P, 2) as (x, y)
    ours, theirs = pe(coords, size), ref.forward_with_coords(coords, size)
    assert ours.shape == (1, len(points), 64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@given(st.lists(st.tuples(st.floats(0, 64), st.floats(0, 48)), min_size=1, max_size=8),
       st.integers(2, 16))
def test_fourier_features_depend_on_the_position_relative_to_the_image(points, k):
    """A click's encoding is a function of where it lies as a fraction of the image: the same
    click in an image k times larger, at k times the coordinates, is encoded alike."""
    pe = minisam.FourierPositionalEncoding(32)
    coords = torch.tensor(points, dtype=torch.float32)[None]
    torch.testing.assert_close(pe(coords, (48, 64)), pe(coords * k, (48 * k, 64 * k)),
                               rtol=0, atol=1e-4)


def test_dense_pe_is_made_once_and_follows_the_loaded_matrix():
    model = Sam(CONFIGS["toy"])
    first = model.prompt_encoder.get_dense_pe()
    assert model.prompt_encoder.get_dense_pe() is first  # not recomputed per click
    model.load_state_dict(random_sam(CONFIGS["toy"], seed=1).state_dict())  # in place
    after_load = model.prompt_encoder.get_dense_pe()
    fresh = model.prompt_encoder.pe_layer.dense(model.prompt_encoder.image_embedding_size)[None]
    assert not torch.equal(after_load, first) and torch.equal(after_load, fresh)
    assert model.double().prompt_encoder.get_dense_pe().dtype == torch.float64
    assert not any("dense_pe" in key for key in model.state_dict())  # not in checkpoints


PERMUTE_MODEL = random_sam(CONFIGS["toy"], seed=4)


PERMUTE_EMBEDDING = PERMUTE_MODEL.image_encoder(torch.randn(1, 3, 64, 64)).detach()


@slow
@given(st.integers(2, 6).flatmap(lambda n: st.tuples(
    st.lists(st.tuples(st.floats(0, 63), st.floats(0, 63)), min_size=n, max_size=n),
    st.lists(st.integers(0, 1), min_size=n, max_size=n),
    st.permutations(range(n)), st.booleans())))
def test_permuting_point_prompts_leaves_decoder_outputs_unchanged(case):
    points, labels, order, with_box = case
    coords = torch.tensor(points)[None]
    labels = torch.tensor(labels)[None]
    box = torch.tensor([[4.0, 5.0, 40.0, 50.0]]) if with_box else None
    model = PERMUTE_MODEL
    outputs = []
    with torch.no_grad():
        for perm in (list(range(len(order))), list(order)):
            sparse, dense = model.prompt_encoder(points=(coords[:, perm], labels[:, perm]),
                                                 boxes=box, masks=None)
            outputs.append(model.mask_decoder(PERMUTE_EMBEDDING, model.prompt_encoder.get_dense_pe(),
                                              sparse, dense, True))
    # tokens carry no order: attention is a sum over them
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-4)
    assert torch.allclose(outputs[0][1], outputs[1][1], atol=1e-5)


# -----------------------------------------------------------------------------
# The whole model: checkpoints in the official format and ours, and the errors that explain
# a mismatch


def test_official_format_checkpoint_loads_and_reproduces_reference(tmp_path):
    source, theirs = twin_models(ODD, seed=5)
    path = tmp_path / "sam_odd.pth"
    torch.save(source.state_dict(), path)  # what the official .pth files are: a raw state dict
    loaded = build_sam(ODD, checkpoint=path)
    assert not loaded.training
    x = torch.rand(1, 3, 72, 72) * 255
    prompt = random_prompts(ODD)["points_and_box"]
    with torch.no_grad():
        embedding = loaded.image_encoder(loaded.preprocess(x))
        assert_close(embedding, theirs.image_encoder(theirs.preprocess(x)))
        sparse, dense = loaded.prompt_encoder(**prompt)
        out = loaded.mask_decoder(embedding, loaded.prompt_encoder.get_dense_pe(), sparse, dense,
                                  True)
        ref = theirs.mask_decoder(embedding, theirs.prompt_encoder.get_dense_pe(),
                                  *theirs.prompt_encoder(**prompt), True)
    assert_close(out[0], ref[0])


def test_training_checkpoint_loads(tmp_path):
    source = random_sam(CONFIGS["toy"], seed=2)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "config": dataclasses.asdict(source.config),
                "step": 7}, path)
    loaded = build_sam("toy", checkpoint=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(ValueError, match="different config.*window_size"):
        build_sam(dataclasses.replace(CONFIGS["toy"], window_size=4), checkpoint=path)
    torch.save({"model": source.state_dict(), "config": {"widht": 3}}, path)
    with pytest.raises(ValueError, match="unreadable config.*widht"):
        build_sam("toy", checkpoint=path)


def test_mismatched_checkpoint_names_the_problem_and_the_preset_it_fits(tmp_path):
    path = tmp_path / "toy.pth"
    torch.save(random_sam(CONFIGS["toy"]).state_dict(), path)
    with pytest.raises(ValueError) as err:
        build_sam(ODD, checkpoint=path)
    message = str(err.value)
    assert "mis-shaped tensors" in message and "image_encoder.pos_embed" in message
    assert "missing keys" in message  # ODD has a third decoder layer the toy lacks
    assert "fits the preset 'toy'" in message

    truncated = random_sam(CONFIGS["toy"]).state_dict()
    del truncated["mask_decoder.iou_token.weight"]
    truncated["extra.weight"] = torch.zeros(1)
    torch.save(truncated, path)
    with pytest.raises(ValueError, match="1 missing keys.*iou_token.*1 unexpected keys.*extra"):
        build_sam("toy", checkpoint=path)


def test_bad_config_and_unreadable_checkpoint_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="'vit_x' is not a preset.*vit_b"):
        build_sam("vit_x")
    with pytest.raises(TypeError, match="config must be a preset name or a SamConfig"):
        build_sam(42)
    junk = tmp_path / "notes.txt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        build_sam("toy", checkpoint=junk)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        build_sam("toy", checkpoint=listing)


ABSENT_DEVICES = [kind for kind, present in (("cuda", torch.cuda.is_available()),
                                             ("mps", torch.backends.mps.is_available()))
                  if not present]


def test_a_device_the_machine_lacks_is_named_before_any_checkpoint_is_read(tmp_path):
    never_read = tmp_path / "absent.pth"  # a missing file: reading it would fail otherwise
    with pytest.raises(ValueError, match="device 'gpu9' is not a device name"):
        build_sam("toy", checkpoint=never_read, device="gpu9")
    with pytest.raises(TypeError, match="device must be a name"):
        build_sam("toy", device=2.5)
    for kind in ABSENT_DEVICES:
        with pytest.raises(ValueError, match=f"this machine has no {kind} device"):
            build_sam("toy", checkpoint=never_read, device=kind)
    if "cuda" in ABSENT_DEVICES:  # an index names a GPU: never quietly the CPU
        with pytest.raises(ValueError, match="'cuda:0': this machine has no cuda device"):
            build_sam("toy", device=0)
    assert build_sam("toy", device=torch.device("cpu")).device.type == "cpu"


def test_build_sam_leaves_the_model_where_it_was_built_unless_given_a_device(tmp_path):
    with torch.device("meta"):  # the usual way to count a large model's parameters
        model = build_sam("vit_b")
    assert all(p.is_meta for p in model.parameters()) and model.device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS["vit_b"]
    assert not model.training
    with torch.device("meta"), pytest.raises(ValueError, match="device 'gpu9'"):
        build_sam("vit_b", checkpoint=tmp_path / "absent.pth", device="gpu9")  # checked first
    assert all(p.device.type == "cpu" for p in build_sam("toy").parameters())
    moved = build_sam("toy", device="meta")  # a given device moves the model
    assert all(p.is_meta for p in moved.parameters()) and moved.device.type == "meta"


# -----------------------------------------------------------------------------
# Section 4: the losses


logit_maps = st.integers(0, 2**31 - 1).map(
    lambda seed: torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 6)


@given(logits=logit_maps, fill=st.floats(0.05, 0.95))
def test_focal_loss_equals_torchvision(torchvision_ops, logits, fill):
    """The usual focal loss (alpha 0.25, gamma 2): torchvision's, averaged over pixels."""
    targets = (torch.rand(logits.shape, generator=torch.Generator().manual_seed(0)) < fill).float()
    expected = torchvision_ops.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0,
                                                  reduction="none").mean((-2, -1))
    torch.testing.assert_close(focal_loss(logits, targets), expected)


@given(logit_maps, st.floats(0.05, 0.95))
def test_focal_and_dice_ranges(logits, fill):
    targets = (torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)) < fill).float()
    assert (focal_loss(logits, targets) >= 0).all()
    dice = dice_loss(logits, targets)
    assert ((dice >= 0) & (dice <= 1)).all()
    perfect = targets * 200 - 100  # logits of +-100: sigmoid is exactly 0 or 1 in fp32
    assert torch.equal(dice_loss(perfect, targets), torch.zeros(3))
    assert focal_loss(perfect, targets).max() < 1e-30
    # wrong at every pixel: no overlap, |p| + |t| = all 64 pixels, so only the smoothing is left
    assert torch.allclose(dice_loss(-perfect, targets), torch.full((3,), 1 - 1 / 65))


@given(logit_maps, logit_maps, st.integers(0, 2))
def test_only_the_lowest_loss_output_gets_mask_gradient(noise, targets_seed_logits, winner):
    target = targets_seed_logits[0] > 0  # (8, 8)
    # three outputs; the `winner` one is the target plus small noise, the others are noise
    logits = noise.clone()
    logits[winner] = (target.float() * 16 - 8) + 0.1 * noise[winner]
    logits = logits[None].requires_grad_(True)  # (1, 3, 8, 8)
    iou_pred = torch.full((1, 3), 0.5, requires_grad=True)
    loss, parts = sam_loss(logits, iou_pred, target[None])
    loss.backward()
    assert parts["best"].tolist() == [winner]
    for output in range(3):
        has_grad = logits.grad[0, output].abs().sum() > 0
        assert has_grad == (output == winner)
    assert (iou_pred.grad != 0).all()  # the IoU head learns about every output
    assert loss.item() >= parts["iou_mse"].item() >= 0


def test_sam_loss_iou_target_is_the_actual_iou():
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :2] = True  # 8 pixels
    logits = torch.full((1, 2, 4, 4), -5.0)
    logits[0, 0, :1] = 5.0  # 4 of the 8: IoU 0.5
    logits[0, 1, :2] = 5.0  # exact: IoU 1
    loss, parts = sam_loss(logits, torch.tensor([[0.5, 1.0]]), target)
    assert parts["iou_mse"].item() == 0.0
    assert parts["best"].tolist() == [1]
    assert np.isclose(loss.item(), 20 * parts["focal"].item() + parts["dice"].item())


# -----------------------------------------------------------------------------
# Section 5: the predictor against the reference SamPredictor


def twin_predictors(image: np.ndarray, cfg: SamConfig = CONFIGS["toy"], seed: int = 0):
    ours, theirs = twin_models(cfg, seed)
    predictors = minisam.SamPredictor(ours), reference_package().SamPredictor(theirs)
    for predictor in predictors:
        predictor.set_image(image)
    return predictors


def toy_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random image with some structure, uint8 (h, w, 3)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 12, 12, generator=g) * 255
    smooth = F_interpolate(coarse, (h, w))
    return smooth[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def F_interpolate(x, size):
    return torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False)


PREDICT_CASES = {
    "points": dict(point_coords=np.array([[20.0, 15.0], [40.0, 30.0]]), point_labels=np.array([1, 0])),
    "box": dict(box=np.array([5.0, 8.0, 50.0, 40.0])),
    "points_and_box": dict(point_coords=np.array([[30.0, 20.0]]), point_labels=np.array([1]),
                           box=np.array([5.0, 8.0, 50.0, 40.0])),
}


@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("case", PREDICT_CASES)
def test_predictor_matches_reference_exactly_without_resizing(case, multimask_output):
    image = toy_photo(48, 64)  # longest side == image_size: no resampling on either side
    ours, theirs = twin_predictors(image)
    assert_close(ours.get_image_embedding(), theirs.get_image_embedding())
    out = ours.predict(**PREDICT_CASES[case], multimask_output=multimask_output)
    ref = theirs.predict(**PREDICT_CASES[case], multimask_output=multimask_output)
    masks, iou, low_res = (torch.as_tensor(x) for x in out)
    assert masks.shape == (3 if multimask_output else 1, 48, 64) and masks.dtype == torch.bool
    assert_close(low_res, torch.as_tensor(ref[2]))
    assert_close(iou, torch.as_tensor(ref[1]))
    assert (masks != torch.as_tensor(ref[0])).float().mean() < 1e-3
    # refining with the previous low-res logits as the mask prompt
    refined = ours.predict(**PREDICT_CASES[case], mask_input=low_res[:1].numpy(),
                           multimask_output=multimask_output, return_logits=True)
    ref_refined = theirs.predict(**PREDICT_CASES[case], mask_input=ref[2][:1],
                                 multimask_output=multimask_output, return_logits=True)
    assert_close(torch.as_tensor(refined[0]), torch.as_tensor(ref_refined[0]))


def test_predictor_close_to_reference_when_resizing():
    """Images that need resizing: our antialiased bilinear and PIL's resampling round some
    pixels to neighbouring grey levels (measured: at most 1 level, ~0.1 on average), which
    moves the logits by a few 1e-4 of their scale and flips almost no mask pixel."""
    for (h, w), resized_shape in (((150, 97), (64, 41)), ((40, 30), (64, 48))):  # down and up
        image = toy_photo(h, w, seed=2)
        ours, theirs = twin_predictors(image)
        resized = ours.transform.apply_image(image).astype(int)
        ref_resized = theirs.transform.apply_image(image).astype(int)
        assert resized.shape == ref_resized.shape == (*resized_shape, 3)
        assert np.abs(resized - ref_resized).max() <= 1
        assert np.abs(resized - ref_resized).mean() < 0.3
        out = ours.predict(**PREDICT_CASES["points_and_box"])
        ref = theirs.predict(**PREDICT_CASES["points_and_box"])
        assert out[0].shape == ref[0].shape == (3, h, w)
        # measured: 1.7e-4 and 2.7e-4 of the logits' scale, 1e-6 and 1e-5 in predicted IoU
        assert_close(torch.as_tensor(out[2]), torch.as_tensor(ref[2]), rel=1e-3, what="logits")
        assert_close(torch.as_tensor(out[1]), torch.as_tensor(ref[1]), what="predicted IoU")
        assert (out[0] != ref[0]).mean() < 1e-3


@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(8, 1024),
       st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=5))
def test_coordinate_transform_round_trips(h, w, long_side, unit_points):
    transform = minisam.ResizeLongestSide(long_side)
    new_h, new_w = transform.get_preprocess_shape(h, w, long_side)
    assert max(new_h, new_w) == long_side
    points = np.array(unit_points) * (w, h)
    moved = transform.apply_coords(points, (h, w))
    assert np.allclose(moved / (new_w / w, new_h / h), points)  # exact inverse of the scaling
    assert (moved >= 0).all() and (moved <= (new_w, new_h)).all()  # in-image stays in-image
    torch_moved = transform.apply_coords_torch(torch.tensor(points), (h, w))
    assert np.allclose(torch_moved.numpy(), moved, rtol=1e-6)
    boxes = np.concatenate([points, points + 1], axis=1)
    assert np.allclose(transform.apply_boxes(boxes, (h, w)).reshape(-1, 2, 2),
                       transform.apply_coords(boxes.reshape(-1, 2, 2), (h, w)))


# -----------------------------------------------------------------------------
# Section 6: the automatic mask generator against the reference's, on a shared stub model,
# and the properties of its parts


class ClickEcho(torch.nn.Module):
    """A stand-in prompt encoder: the 'sparse prompt' is the click itself, (N, 1, 2)."""

    def forward(self, points, boxes, masks):
        return points[0].float(), None

    def get_dense_pe(self):
        return None


class DiscDecoder(torch.nn.Module):
    """A stand-in decoder whose 3 masks are discs of radius 5, 10 and 18 input pixels around
    the click, roughened by the image embedding so that some masks have holes and islands.
    Random weights only give blobs the size of the image; this gives many local, overlapping
    masks, so every stage of the generator (IoU and stability filters, NMS, crop edges,
    cross-crop NMS, small regions) has work to do. Predicted IoU varies with position."""

    def __init__(self, image_size: int, low_res: int):
        super().__init__()
        self.image_size, self.low_res = image_size, low_res

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings,
                dense_prompt_embeddings, multimask_output):
        xy = sparse_prompt_embeddings[:, 0]  # (N, 2) in input pixels
        centres = (torch.arange(self.low_res) + 0.5) * self.image_size / self.low_res
        dist = ((centres[None, None, :] - xy[:, 0, None, None]) ** 2
                + (centres[None, :, None] - xy[:, 1, None, None]) ** 2).sqrt()  # (N, h, w)
        texture = F_interpolate(image_embeddings.mean(1, keepdim=True), self.low_res)[:, 0]
        texture = (texture - texture.mean()) / texture.std()  # moves edges by ~2 pixels
        radii = torch.tensor([12.0, 5.0, 10.0, 18.0])
        logits = 10 * (radii[None, :, None, None] - dist[:, None]) + 20 * texture[:, None]
        iou = 0.8 + 0.15 * torch.cos(xy[:, :1] / 5 + torch.arange(4.0)[None])
        outputs = slice(1, None) if multimask_output else slice(0, 1)
        return logits[:, outputs], iou[:, outputs]


def disc_sam() -> Sam:
    model = random_sam(CONFIGS["toy"], seed=7)
    model.prompt_encoder = ClickEcho()
    model.mask_decoder = DiscDecoder(64, 64)
    return model


AMG_SETTINGS = {
    "defaults": {},
    "crops_and_small_regions": dict(points_per_side=12, crop_n_layers=1,
                                    min_mask_region_area=12, stability_score_thresh=0.8),
    "two_crop_layers": dict(points_per_side=16, crop_n_layers=2, crop_n_points_downscale_factor=2,
                            min_mask_region_area=25, pred_iou_thresh=0.7, box_nms_thresh=0.5),
}


@slow
@pytest.mark.parametrize("setting", AMG_SETTINGS)
def test_automatic_masks_equal_reference(setting, monkeypatch):
    sa = reference_package()
    pytest.importorskip("cv2", reason="the reference's small-region removal needs OpenCV")
    # Crops are resized on the way in; the reference resizes with PIL, we without it. Both
    # use our resize here, so that this test compares the pipelines and nothing else (the
    # resampling difference is measured in test_predictor_close_to_reference_when_resizing).
    monkeypatch.setattr(sa.utils.transforms.ResizeLongestSide, "apply_image",
                        lambda self, im: minisam.ResizeLongestSide(self.target_length)
                        .apply_image(im))
    model = disc_sam()
    image = toy_photo(90, 120, seed=3)
    ours = minisam.SamAutomaticMaskGenerator(model, **AMG_SETTINGS[setting]).generate(image)
    ref = sa.SamAutomaticMaskGenerator(model, **AMG_SETTINGS[setting]).generate(image)
    assert len(ours) == len(ref) >= 50
    for a, b in zip(ours, ref):  # in the same order, too
        assert np.array_equal(a["segmentation"], b["segmentation"])
        assert (a["area"], a["bbox"], a["crop_box"]) == (b["area"], b["bbox"], b["crop_box"])
        assert a["point_coords"][0] == pytest.approx(b["point_coords"][0])
        assert (a["predicted_iou"], a["stability_score"]) == (b["predicted_iou"],
                                                              b["stability_score"])


def masks_of_shape(shape):
    """Random boolean grids of one shape, sparse to dense."""
    return st.tuples(st.floats(0, 1), st.integers(0, 2**31 - 1)).map(
        lambda a: np.random.default_rng(a[1]).random(shape) < a[0])


def small_masks(max_side: int = 9):
    """Random boolean (H, W) grids of a random shape."""
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side)).flatmap(masks_of_shape)


def mask_batches(max_side: int = 9, max_size: int = 4, min_size: int = 1):
    """Lists of min_size..max_size random masks that share one random shape: a batch."""
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side)).flatmap(
        lambda shape: st.lists(masks_of_shape(shape), min_size=min_size, max_size=max_size))


@given(mask_batches())
def test_rle_round_trip(masks):
    batch = torch.from_numpy(np.stack(masks))
    for mask, rle in zip(masks, minisam.mask_to_rle(batch)):
        assert np.array_equal(minisam.rle_to_mask(rle), mask)
        assert sum(rle["counts"]) == mask.size and minisam.area_from_rle(rle) == mask.sum()
        assert all(c > 0 for c in rle["counts"][1:])  # only the leading zeros run may be empty


# pycocotools' decode warns on every call under numpy 2; nothing here can change that
PYCOCOTOOLS_NUMPY2_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")


@given(masks=mask_batches())
@PYCOCOTOOLS_NUMPY2_WARNING
def test_rle_equals_the_reference_and_decodes_with_pycocotools(reference, masks):
    mask_utils = pytest.importorskip("pycocotools.mask")
    batch = torch.from_numpy(np.stack(masks))
    ours = minisam.mask_to_rle(batch)
    assert ours == reference.utils.amg.mask_to_rle_pytorch(batch)
    for mask, rle in zip(masks, ours):
        coco = mask_utils.frPyObjects(rle, *rle["size"])
        assert np.array_equal(mask_utils.decode(coco).astype(bool), mask)


boxes_and_scores = st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.lists(st.tuples(*[st.integers(0, 30)] * 4), min_size=n, max_size=n),
    st.lists(st.floats(0, 1), min_size=n, max_size=n, unique=True), st.floats(0.1, 0.9)))


@given(case=boxes_and_scores)
def test_nms_equals_torchvision(torchvision_ops, case):
    corners, scores, threshold = case
    boxes = torch.tensor([[min(a, c), min(b, d), max(a, c) + 1, max(b, d) + 1]
                          for a, b, c, d in corners], dtype=torch.float)
    scores = torch.tensor(scores)
    assert torch.equal(minisam.nms(boxes, scores, threshold),
                       torchvision_ops.nms(boxes, scores, threshold))


@given(boxes_and_scores)
def test_nms_properties(case):
    corners, scores, threshold = case
    boxes = torch.tensor([[min(a, c), min(b, d), max(a, c) + 1, max(b, d) + 1]
                          for a, b, c, d in corners], dtype=torch.float)
    scores = torch.tensor(scores)
    keep = minisam.nms(boxes, scores, threshold)
    assert len(set(keep.tolist())) == len(keep) <= len(boxes)
    assert keep[0] == scores.argmax()  # the best box always survives
    assert (scores[keep][:-1] >= scores[keep][1:]).all()  # best first
    iou = minisam.box_iou(boxes[keep], boxes[keep]) - torch.eye(len(keep))  # ignore self
    assert (iou <= threshold).all()
    again = minisam.nms(boxes[keep], scores[keep], threshold)
    assert torch.equal(keep[again], keep)  # idempotent
    # every dropped box overlaps a better kept one
    dropped = sorted(set(range(len(boxes))) - set(keep.tolist()))
    for i in dropped:
        better = keep[scores[keep] > scores[i]]
        assert (minisam.box_iou(boxes[i:i + 1], boxes[better]) > threshold).any()


@given(logits=logit_maps, threshold=st.floats(-2, 2), offset=st.floats(0, 3))
def test_stability_score_equals_the_reference(reference, logits, threshold, offset):
    expected = reference.utils.amg.calculate_stability_score(logits, threshold, offset)
    torch.testing.assert_close(minisam.calculate_stability_score(logits, threshold, offset),
                               expected, rtol=0, atol=0, equal_nan=True)


@given(logit_maps, st.floats(0, 3), st.floats(0, 3))
def test_stability_score_is_an_iou_that_falls_with_the_offset(logits, offset, extra):
    score = minisam.calculate_stability_score(logits, 0.0, offset)
    wider = minisam.calculate_stability_score(logits, 0.0, offset + extra)
    defined = ~score.isnan() & ~wider.isnan()
    assert ((score[defined] >= 0) & (score[defined] <= 1)).all()
    assert (wider[defined] <= score[defined] + 1e-7).all()


@given(mask_batches(12, 3))
def test_mask_box_is_the_tightest_box(masks):
    boxes = minisam.batched_mask_to_box(torch.from_numpy(np.stack(masks)))
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist()):
        if not mask.any():
            assert (x0, y0, x1, y1) == (0, 0, 0, 0)
            continue
        ys, xs = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max(), ys.max())


def flood_fill_labels(mask: np.ndarray) -> np.ndarray:
    """Brute force: number 8-connected components by depth-first search in raster order."""
    labels = np.zeros(mask.shape, dtype=int)
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        labels[start] = 1 + start[0] * mask.shape[1] + start[1]
        stack = [start]
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if (0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx]
                            and not labels[ny, nx]):
                        labels[ny, nx] = labels[start]
                        stack.append((ny, nx))
    return labels


@given(small_masks(10))
def test_connected_components_equal_a_flood_fill(mask):
    assert np.array_equal(minisam.connected_components(mask), flood_fill_labels(mask))


def test_connected_components_of_toy_error_regions_equal_a_flood_fill():
    # what one toy mask gets wrong about another: rings, slivers, pieces touching at corners
    _, masks, _ = train_toy.make_world(1)
    errors = (masks[:, None] ^ masks[None]).reshape(-1, *masks.shape[1:])
    assert len(errors) >= 12
    for error in errors[:12]:
        assert np.array_equal(minisam.connected_components(error), flood_fill_labels(error))


@given(small_masks(10), st.integers(1, 12), st.sampled_from(["holes", "islands"]))
def test_remove_small_regions_equals_reference(mask, area, mode):
    amg = reference_package().utils.amg
    pytest.importorskip("cv2", reason="the reference's small-region removal needs OpenCV")
    ours, changed = minisam.remove_small_regions(mask, area, mode)
    theirs, ref_changed = amg.remove_small_regions(mask, area, mode)
    assert changed == ref_changed
    assert np.array_equal(ours, theirs)


@PYCOCOTOOLS_NUMPY2_WARNING
@pytest.mark.parametrize("output_mode", ["uncompressed_rle", "coco_rle"])
def test_rle_output_modes_decode_to_the_binary_masks(output_mode):
    mask_utils = pytest.importorskip("pycocotools.mask")
    model, image = disc_sam(), toy_photo(50, 70, seed=4)
    binary = minisam.SamAutomaticMaskGenerator(model, points_per_side=8).generate(image)
    encoded = minisam.SamAutomaticMaskGenerator(model, points_per_side=8,
                                                output_mode=output_mode).generate(image)
    assert len(binary) == len(encoded) > 0
    for b, e in zip(binary, encoded):
        rle = e["segmentation"]
        if output_mode == "uncompressed_rle":
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        assert np.array_equal(mask_utils.decode(rle).astype(bool), b["segmentation"])
        assert e["area"] == b["segmentation"].sum()


# -----------------------------------------------------------------------------
# Section 7: memory and speed, the encoder in pieces


# 7 (image, head) pairs on a 5 x 3 grid: the logits take 4 x 15 x 15 bytes per pair. 360
# bytes: two grid rows of one pair per piece (5 rows do not split evenly); 2700 bytes: all rows
# of 3 pairs (7 pairs do not split evenly); 1: one row of one pair.
@pytest.mark.parametrize("logits_bytes", [1, 360, 2700])
def test_attention_in_pieces_equals_attention_in_one_piece(logits_bytes, monkeypatch):
    torch.manual_seed(0)
    attention = minisam.EncoderAttention(dim=4, num_heads=1, grid=5)
    with torch.no_grad():
        attention.rel_pos_h.normal_()
        attention.rel_pos_w.normal_()
    x = torch.randn(7, 5, 3, 4)
    assert len(minisam.attention_pieces(7, 5, 3, 4)) == 1
    whole = attention(x)
    monkeypatch.setattr(minisam, "LOGITS_CHUNK_BYTES", logits_bytes)
    covered = torch.zeros(7, 15, dtype=torch.int)
    for heads, tokens in minisam.attention_pieces(7, 5, 3, 4):
        covered[heads, tokens] += 1
    assert (covered == 1).all(), "every query of every pair is in exactly one piece"
    assert_close(attention(x), whole, rel=1e-6, what=f"pieces of {logits_bytes} bytes")


@pytest.mark.parametrize("mlp_bytes", [1, None], ids=["one_row_per_piece", "one_piece"])
def test_the_mlp_in_pieces_is_one_call(mlp_bytes, monkeypatch):
    """Forward and gradients; one piece (every toy input) is the very same arithmetic as one
    call, to the bit, so the pieces changed no trained toy number."""
    if mlp_bytes:
        monkeypatch.setattr(minisam, "MLP_CHUNK_BYTES", mlp_bytes)
    block = random_sam(CONFIGS["toy"]).image_encoder.blocks[1]  # a global block

    def one_call(x):
        x = x + block.attn(block.norm1(x))
        return x + block.mlp(block.norm2(x))

    x = torch.randn(2, 6, 4, CONFIGS["toy"].encoder_embed_dim)
    upstream = torch.randn(x.shape)
    results = []
    for run in (block, one_call):
        block.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_(True)
        y = run(leaf)
        (y * upstream).sum().backward()
        results.append([y, leaf.grad, *(p.grad for p in block.parameters())])
    for pieces, whole in zip(*results):
        if mlp_bytes:
            assert_close(pieces, whole, rel=1e-5)
        else:
            assert torch.equal(pieces, whole)


# -----------------------------------------------------------------------------
# Section 8: checking the inputs. Every wrong input gets a ValueError/TypeError that names the
# argument; every valid input gets masks of the image's size.


TOY_MODEL = random_sam(CONFIGS["toy"], seed=11)


def rejects(call, *names):
    """`call` must fail with a ValueError/TypeError whose message names one of `names`."""
    with pytest.raises((ValueError, TypeError)) as err:
        call()
    assert any(name in str(err.value) for name in names), str(err.value)


any_array = st.tuples(
    st.lists(st.integers(0, 5), min_size=0, max_size=4),
    st.sampled_from([np.uint8, np.float32, np.float64, np.int64, bool]),
    st.sampled_from([0.0, np.nan, np.inf, -3.0, 300.0])).map(
    lambda a: np.full(a[0], a[2]).astype(a[1]) if a[2] == a[2] and np.isfinite(a[2])
    or np.dtype(a[1]).kind == "f" else np.zeros(a[0], dtype=a[1]))


# and valid images, so that the tests below see both sides of the contract
any_image = st.one_of(any_array, st.tuples(st.integers(1, 40), st.integers(1, 40)).map(
    lambda hw: toy_photo(*hw)))


@slow
@given(any_image)
def test_set_image_accepts_only_uint8_rgb(image):
    predictor = minisam.SamPredictor(TOY_MODEL)
    valid = (image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
             and min(image.shape[:2]) >= 1)
    if valid:
        predictor.set_image(image)
        assert predictor.original_size == image.shape[:2]
    else:
        rejects(lambda: predictor.set_image(image), "image")
        assert not predictor.is_image_set


def test_set_image_messages_suggest_the_fix():
    predictor = minisam.SamPredictor(TOY_MODEL)
    cases = {"np.dstack": np.zeros((8, 8), np.uint8),
             "astype(np.uint8)": np.zeros((8, 8, 3), np.float32),
             "img[..., :3]": np.zeros((8, 8, 4), np.uint8),
             "transpose(1, 2, 0)": np.zeros((3, 8, 8), np.uint8),
             "np.asarray": [[[0, 0, 0]]],
             "at least 1x1": np.zeros((0, 5, 3), np.uint8)}
    for hint, image in cases.items():
        rejects(lambda: predictor.set_image(image), hint)
    rejects(lambda: predictor.set_image(np.zeros((4, 4, 3), np.uint8), "RGBA"), "image_format")


prompt_values = st.one_of(
    st.none(), st.just("text"), st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(-5, 80), max_size=5),
    st.lists(st.lists(st.one_of(st.floats(-5, 80), st.sampled_from([np.nan, np.inf])),
                      min_size=1, max_size=3), max_size=4))


VALID_PROMPT = dict(point_coords=[[10.0, 10.0]], point_labels=[1], box=[5.0, 5.0, 30.0, 30.0],
                    mask_input=np.zeros((1, 64, 64), np.float32))


@slow
@given(st.sampled_from(sorted(VALID_PROMPT)), prompt_values)
def test_predict_names_the_malformed_argument(name, value):
    """One argument of a valid prompt replaced by anything: either a ValueError/TypeError
    that names that argument, or (the value was valid too) masks of the image's size."""
    predictor = minisam.SamPredictor(TOY_MODEL)
    predictor.set_image(np.zeros((48, 64, 3), np.uint8))
    try:
        masks, iou, low_res = predictor.predict(**{**VALID_PROMPT, name: value})
    except (ValueError, TypeError) as e:
        assert name in str(e), str(e)
        return
    assert masks.shape[1:] == (48, 64) and iou.shape == masks.shape[:1]


def test_set_torch_image_names_the_expected_shape():
    predictor = minisam.SamPredictor(TOY_MODEL)
    for shape in ((3, 64, 64), (1, 1, 64, 64), (1, 3, 32, 32), (2, 3, 64, 64)):
        rejects(lambda: predictor.set_torch_image(torch.zeros(shape), (64, 64)),
                "transformed_image must be (1, 3, h, w) with max(h, w) == 64")
        assert not predictor.is_image_set
    predictor.set_torch_image(torch.zeros(1, 3, 48, 64), (96, 128))
    assert predictor.is_image_set and predictor.original_size == (96, 128)


def test_predict_contract_messages():
    predictor = minisam.SamPredictor(TOY_MODEL)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    predictor.set_image(np.zeros((48, 64, 3), np.uint8))
    one = np.array([[10.0, 10.0]])
    rejects(lambda: predictor.predict(point_coords=one), "given together")
    rejects(lambda: predictor.predict(point_coords=one, point_labels=np.array([1, 0])),
            "2 labels for the 1 points of point_coords")
    rejects(lambda: predictor.predict(point_coords=one, point_labels=np.array([2])), "0 (background)")
    rejects(lambda: predictor.predict(point_coords=np.array([[70.0, 10.0]]), point_labels=[1]),
            "0 <= x <= 64")
    rejects(lambda: predictor.predict(point_coords=np.array([[np.nan, 1]]), point_labels=[1]),
            "finite")
    rejects(lambda: predictor.predict(box=np.array([30, 5, 10, 20])), "x0 <= x1")
    rejects(lambda: predictor.predict(box=np.array([1, 2, 3])), "box must have shape")
    rejects(lambda: predictor.predict(mask_input=np.zeros((1, 32, 32))), "(1, 64, 64)")


@slow
@given(st.integers(1, 700), st.integers(1, 700), st.integers(0, 2**31 - 1),
       st.integers(1, 3), st.booleans())
@settings(max_examples=15)
def test_valid_images_and_prompts_always_give_masks_of_the_image_size(h, w, seed, n, with_box):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    predictor = minisam.SamPredictor(TOY_MODEL)
    predictor.set_image(image)
    coords = rng.random((n, 2)) * (w, h)
    labels = rng.integers(0, 2, n)
    corners = np.sort(rng.random((2, 2)) * (w, h), axis=0)  # rows: top-left, bottom-right
    box = corners.reshape(-1) if with_box else None
    masks, iou, low_res = predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                            multimask_output=n == 1)
    assert masks.shape == (3 if n == 1 else 1, h, w) and masks.dtype == bool
    assert np.isfinite(iou).all() and low_res.shape[1:] == (64, 64)


@slow
@pytest.mark.parametrize("shape", [(1, 1), (1, 3000), (3000, 2), (2000, 1500)])
def test_extreme_image_sizes_work(shape):
    predictor = minisam.SamPredictor(TOY_MODEL)
    predictor.set_image(np.full((*shape, 3), 200, np.uint8))
    h, w = shape
    masks, _, _ = predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=[1],
                                    box=np.array([0, 0, w, h]))
    assert masks.shape == (3, h, w)


@pytest.mark.parametrize("kwargs, names", [
    (dict(points_per_side=None), "points_per_side"),
    (dict(point_grids=[build_grid := minisam.build_point_grid(4)]), "exactly one"),
    (dict(points_per_side=0), "points_per_side"),
    (dict(points_per_side=2.5), "points_per_side"),
    (dict(pred_iou_thresh=1.5), "pred_iou_thresh"),
    (dict(stability_score_thresh=-0.1), "stability_score_thresh"),
    (dict(stability_score_offset=float("nan")), "stability_score_offset"),
    (dict(box_nms_thresh="high"), "box_nms_thresh"),
    (dict(points_per_batch=0), "points_per_batch"),
    (dict(crop_n_layers=-1), "crop_n_layers"),
    (dict(output_mode="png"), "output_mode"),
    (dict(points_per_side=None, point_grids=[build_grid, build_grid]), "one grid per crop layer"),
    (dict(points_per_side=None, point_grids=[build_grid * 3]), "[0, 1]"),
    (dict(points_per_side=None, point_grids=5), "point_grids must be a list"),
    (dict(points_per_side=None, point_grids=[np.zeros((0, 2))]), "at least one point"),
    (dict(points_per_side=True), "points_per_side"),
    (dict(pred_iou_thresh=True), "pred_iou_thresh"),
    (dict(points_per_side=2, crop_n_layers=1, crop_n_points_downscale_factor=4),
     "leaves no points"),
])
def test_generator_rejects_bad_settings(kwargs, names):
    rejects(lambda: minisam.SamAutomaticMaskGenerator(TOY_MODEL, **kwargs), names)


# small integers only: crop_n_layers=k means 4^k crops, which is valid and very slow
generator_values = st.one_of(st.none(), st.booleans(), st.text(max_size=3),
                             st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True))


@slow
@given(st.sampled_from(["points_per_side", "points_per_batch", "pred_iou_thresh",
                        "stability_score_thresh", "stability_score_offset", "box_nms_thresh",
                        "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio",
                        "crop_n_points_downscale_factor", "min_mask_region_area", "output_mode"]),
       generator_values)
def test_generator_settings_fuzzed(name, value):
    try:
        generator = minisam.SamAutomaticMaskGenerator(disc_sam(), **{name: value})
    except (ValueError, TypeError) as e:
        assert name in str(e), str(e)
        return
    # accepted: it must then work on an image
    for record in generator.generate(np.zeros((20, 30, 3), np.uint8)):
        assert record["segmentation"].shape == (20, 30) or generator.output_mode != "binary_mask"


@slow
@given(any_image)
def test_generate_accepts_only_uint8_rgb(image):
    generator = minisam.SamAutomaticMaskGenerator(disc_sam(), points_per_side=2)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3 and min(image.shape[:2]):
        assert all(r["segmentation"].shape == image.shape[:2] for r in generator.generate(image))
    else:
        rejects(lambda: generator.generate(image), "image")


@given(st.one_of(st.text(max_size=6).filter(lambda name: name not in CONFIGS), st.integers(),
                 st.none(), st.floats()))
def test_build_sam_fuzzed_config(config):
    rejects(lambda: build_sam(config), "config")


def test_coco_rle_without_pycocotools_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(minisam.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        minisam.SamAutomaticMaskGenerator(TOY_MODEL, output_mode="coco_rle")


def test_generator_rejects_bad_images_and_takes_odd_valid_ones():
    generator = minisam.SamAutomaticMaskGenerator(disc_sam(), points_per_side=4)
    rejects(lambda: generator.generate(np.zeros((10, 10), np.uint8)), "image")
    for shape in ((1, 1, 3), (1, 300, 3), (97, 13, 3)):
        for record in generator.generate(np.full(shape, 128, np.uint8)):
            assert record["segmentation"].shape == shape[:2]


# -----------------------------------------------------------------------------
# Comments that point to the experiments log; bench.py on its own


def test_every_pointer_to_the_experiments_log_names_one_of_its_headings():
    """A comment or lesson says why in a clause and points to the measurement behind it as
    lessons/experiments.md, then the heading in double quotes; the heading must exist,
    however the pointer's text is wrapped over comment lines."""
    root = Path(__file__).resolve().parent
    log = root / "lessons" / "experiments.md"
    headings = set(re.findall(r"^#+ (.+?)\s*$", log.read_text(), flags=re.M))
    lessons = root / "lessons"
    files = [*root.glob("*.py"), *lessons.glob("*.py"), *lessons.glob("*.md")]
    pointers = []
    for path in files:
        for quoted in re.findall(r'experiments\.md, "([^"]+)"', path.read_text()):
            pointers.append((path.name, re.sub(r"\s*\n\s*(#\s*)?", " ", quoted)))
    assert len(pointers) >= 5, "the pattern no longer finds the pointers"
    wrong = [f"{name}: {heading!r}" for name, heading in pointers if heading not in headings]
    assert not wrong, "pointers to no heading of lessons/experiments.md:\n" + "\n".join(wrong)


@slow
def test_bench_does_not_import_the_tests():
    check = "import sys, bench; assert 'test_minisam' not in sys.modules, 'bench imports the tests'"
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True)


# -----------------------------------------------------------------------------
# train_toy.py: the world, the simulated annotator, and the training loop


import train_toy  # noqa: E402  (importing must not start training: it is a test in itself)


@given(st.integers(0, 10**6), st.sampled_from([32, 64, 96]))
@settings(max_examples=20)
def test_world_is_deterministic_and_parts_lie_inside_their_wholes(seed, size):
    image, masks, parents = train_toy.make_world(seed, size)
    again, masks_again, _ = train_toy.make_world(seed, size)
    assert np.array_equal(image, again) and np.array_equal(masks, masks_again)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert masks.dtype == bool and masks.shape[1:] == (size, size) and len(masks) >= 1
    assert masks.reshape(len(masks), -1).any(1).all()  # no empty target
    for k, parent in enumerate(parents):
        if parent >= 0:
            assert parent != k and not (masks[k] & ~masks[parent]).any()
    sample_image, sample_masks = train_toy.make_sample(seed, size)
    assert np.array_equal(sample_image, image) and np.array_equal(sample_masks, masks)


def test_world_has_ambiguity_at_three_levels():
    depths = []
    for seed in range(50):
        _, _, parents = train_toy.make_world(seed)
        for k in range(len(parents)):
            depth, p = 0, parents[k]
            while p >= 0:
                depth, p = depth + 1, parents[p]
            depths.append(depth)
    assert {0, 1, 2} <= set(depths)  # wholes, parts and subparts all occur


def test_a_batch_leaves_out_an_image_without_targets():
    image, masks = train_toy.make_sample(1)
    empty = (np.zeros_like(image), masks[:0])
    images, targets, index = train_toy.stack_samples([empty, (image, masks), empty], 3,
                                                     torch.Generator().manual_seed(0))
    assert images.shape[0] == 1
    assert torch.equal(images[0], torch.from_numpy(image).permute(2, 0, 1).float())
    assert targets.shape == (3, *masks.shape[1:]) and index.tolist() == [0, 0, 0]
    assert all(any(np.array_equal(t, m) for m in masks) for t in targets.numpy())


@given(mask_batches(12, 2, min_size=2).filter(lambda ms: ms[1].any()), st.booleans(),
       st.integers(0, 1000))
def test_corrective_clicks_follow_the_error(pair, perfect, seed):
    prediction, target = pair
    if perfect:
        prediction = target.copy()
    pred, tgt = torch.from_numpy(prediction)[None], torch.from_numpy(target)[None]
    points, labels = train_toy.corrective_click(pred, tgt, torch.Generator().manual_seed(seed))
    x, y = points[0].long().tolist()
    if (prediction != target).any():
        assert prediction[y, x] != target[y, x]  # inside the error region
        assert labels[0] == int(target[y, x])  # false negative -> foreground click
    else:
        assert target[y, x] and labels[0] == 1


@given(small_masks(12), st.integers(0, 1000))
def test_first_click_lies_in_the_target_and_box_noise_is_bounded(mask, seed):
    if not mask.any():
        return
    target = torch.from_numpy(mask)[None]
    generator = torch.Generator().manual_seed(seed)
    x, y = train_toy.sample_in(target, generator)[0].long().tolist()
    assert mask[y, x]
    tight = minisam.batched_mask_to_box(target).float()
    noisy = train_toy.noisy_box(target, generator, max_noise=1.5)
    assert (noisy - tight).abs().max() <= 1.5 + 1e-6


@slow
@pytest.mark.parametrize("iterations, no_click_passes", [(3, 0), (5, 2), (5, 1), (11, 2)])
def test_every_pass_but_the_first_and_the_no_click_ones_adds_a_click(iterations, no_click_passes,
                                                                     monkeypatch):
    clicks, corrective_click = [], train_toy.corrective_click

    def counted(prediction, target, generator):
        points, labels = corrective_click(prediction, target, generator)
        clicks.append(len(points))
        return points, labels

    monkeypatch.setattr(train_toy, "corrective_click", counted)
    torch.manual_seed(0)
    trainer = train_toy.InteractiveTraining(Sam(CONFIGS["toy"]), iterations, no_click_passes)
    images, targets, index, generator = train_toy.training_batch(0, 0, 0, 2, 2, 64)
    trainer(images, targets, index, generator)
    assert clicks == [len(targets)] * (iterations - 1 - no_click_passes)


def test_interior_point_is_farthest_from_the_boundary():
    mask = torch.zeros(1, 9, 12, dtype=torch.bool)
    mask[0, 1:8, 1:4] = True  # a thin bar: depth 2 at most
    mask[0, 1:8, 5:12] = True  # a 7x7 square: its centre (8, 4) is 4 deep
    assert train_toy.interior_point(mask)[0].tolist() == [8.0, 4.0]


def nested_squares():
    """Image 0: a 10x10 whole and a 5x5 part in it, both clicked at the part's middle; image 1:
    the same whole, and a strip along the top edge clicked outside the whole."""
    whole = torch.zeros(12, 12, dtype=torch.bool)
    whole[1:11, 1:11] = True
    part = torch.zeros_like(whole)
    part[3:8, 3:8] = True
    strip = torch.zeros_like(whole)
    strip[0:2, 0:12] = True  # overlaps the whole, but not at either click
    targets, index = torch.stack([whole, part, whole, strip]), torch.tensor([0, 0, 1, 1])
    clicks = torch.tensor([[5.0, 5.0], [5.0, 5.0], [5.0, 5.0], [6.0, 0.0]])  # (x, y)
    return targets, index, clicks


def test_a_click_is_valid_for_every_mask_of_its_image_that_contains_it():
    targets, index, clicks = nested_squares()
    valid = train_toy.valid_at_clicks(targets, index, clicks)
    # the whole's and the part's clicks lie in both; image 1's whole also contains that
    # point, but belongs to another image; the strip's click (6, 0) is outside image 1's whole
    assert valid.int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


def test_expected_iou_weighs_the_masks_a_click_may_mean_by_one_over_area():
    targets, index, clicks = nested_squares()
    whole, part, _, strip = targets
    empty = torch.zeros_like(whole)
    masks = torch.stack([torch.stack([whole, part, empty]), torch.stack([part, whole, empty]),
                         torch.stack([whole, strip, empty]), torch.stack([strip, whole, empty])])
    expected = train_toy.expected_iou(masks, targets, train_toy.valid_at_clicks(targets, index,
                                                                                clicks))
    # the part's click means the part (area 25) with odds 1/25 and the whole (100) with 1/100;
    # the part as output: (1 * 1/25 + 0.25 * 1/100) / (1/25 + 1/100) = 0.85
    assert expected[1].tolist() == pytest.approx([0.85, 0.4, 0.0])
    assert expected[0].tolist() == pytest.approx([0.4, 0.85, 0.0])
    # a click with one right answer: the expected IoU is the actual one
    for n in (2, 3):
        assert torch.allclose(expected[n], minisam.mask_iou(masks[n], targets[n][None]))


@slow
def test_held_out_parts_have_ambiguous_clicks():
    """On the toy world: the click of any mask with a parent lies in that parent too."""
    for seed in list(train_toy.EVAL_SEEDS)[:8]:
        _, masks, parents = train_toy.make_world(seed)
        masks = torch.from_numpy(masks)
        valid = train_toy.valid_at_clicks(masks, torch.zeros(len(masks), dtype=torch.long),
                                          train_toy.interior_point(masks))
        assert all(valid[k, parent] for k, parent in enumerate(parents) if parent >= 0)


@given(mask_batches(12, 4))
def test_interior_point_survives_the_most_erosions(masks):
    """The definition, by brute force: erode every mask with a 3x3 square (outside the image
    counts as background) until nothing is left; the point is the first pixel, in raster
    order, of those that survived the most rounds."""
    masks = torch.from_numpy(np.stack(masks))
    depth, current = torch.zeros(masks.shape), masks.float()[:, None]
    while current.any():
        depth += current[:, 0]
        current = -F.max_pool2d(-F.pad(current, (1, 1, 1, 1)), 3, stride=1)
    flat = depth.flatten(1).argmax(1)
    expected = torch.stack([flat % masks.shape[-1], flat // masks.shape[-1]], dim=1).float()
    assert torch.equal(train_toy.interior_point(masks), expected)


@pytest.mark.parametrize("seed", range(3))
def test_a_fresh_decoder_already_looks_up_positions(seed):
    """The decoder's attention starts with k_proj = q_proj (Attention.__init__): before any
    training, the pixels around a click give the click's token more attention than pixels
    far away do. With independent random projections the two are equal (ratio ~1.0)."""
    torch.manual_seed(seed)
    model = Sam(CONFIGS["toy"]).eval()
    S, g = model.config.image_size, model.config.image_embedding_size
    image, _ = train_toy.make_sample(train_toy.EVAL_SEEDS[seed])
    clicks = torch.rand(16, 1, 2, generator=torch.Generator().manual_seed(seed)) * S
    attention = model.mask_decoder.transformer.layers[0].cross_attn_image_to_token
    seen = {}
    hook = attention.register_forward_pre_hook(lambda _, args: seen.update(args=args))
    with torch.no_grad():
        embedding = model.image_encoder(model.preprocess(
            torch.from_numpy(image).permute(2, 0, 1)[None].float()))
        train_toy.decode(model, embedding.expand(16, -1, -1, -1), clicks,
                         torch.ones(16, 1, dtype=torch.long))
        hook.remove()
        pixels, tokens, _ = seen["args"]  # queries (16, g*g, C), keys (16, T, C)
        weights = lessons_module("make_figures").attention_probabilities(
            attention, pixels, tokens).mean(1)  # (16, g*g, T), averaged over heads
    on_click = weights[..., 1 + model.mask_decoder.num_mask_tokens]  # (16, g*g)
    centres = (torch.arange(g) + 0.5) * S / g
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    cells = torch.stack([xx.flatten(), yy.flatten()], dim=1)  # (g*g, 2) as (x, y)
    distance = torch.cdist(clicks[:, 0], cells) / (S / g)  # (16, g*g) in cells
    near, far = on_click[distance < 1.5].mean(), on_click[distance > 5].mean()
    assert near > 1.3 * far


def train(out, *flags):
    train_toy.main(["--out", str(out), "--images-per-step", "2", "--targets-per-image", "3",
                    "--iters", "3", "--warmup", "2", "--lr", "3e-3", "--small-steps", "1",
                    *flags])
    return torch.load(out / "ckpt.pt", weights_only=True)


@pytest.fixture
def tiny_evaluation(monkeypatch):
    # a few held-out images keep the end-of-run evaluation and figures fast in tests; undone
    # after each test, so later tests (the lessons) see every held-out image
    # (six: the gallery needs held-out objects of three levels, which the first six hold)
    monkeypatch.setattr(train_toy, "EVAL_SEEDS", range(10**6, 10**6 + 6))
    monkeypatch.setattr(train_toy, "AMG_EVAL_IMAGES", 2)


@slow
def test_a_few_steps_lower_the_loss_and_leave_everything_promised(tmp_path, tiny_evaluation):
    state = train(tmp_path, "--steps", "12", "--save-every", "5")
    losses = [h["loss"] for h in state["history"]]
    assert state["step"] == 12 and len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["box_miou"] <= 1 and len(metrics["miou_by_clicks"]) == 9
    for figure in ("loss.png", "gallery.png", "miou_vs_clicks.png", "automask.png"):
        assert (tmp_path / figure).stat().st_size > 0
    model = build_sam("toy", checkpoint=tmp_path / "ckpt.pt")  # our checkpoint format loads
    assert torch.equal(model.state_dict()["mask_decoder.iou_token.weight"],
                       state["model"]["mask_decoder.iou_token.weight"])


@slow
def test_evaluation_in_batches_of_images_equals_one_batch(monkeypatch):
    """evaluate() encodes and decodes a few images at a time (at 1024 px, all held-out masks at
    once would not fit in memory); its metrics are over all targets, whatever the batches."""
    torch.manual_seed(0)
    model = Sam(CONFIGS["toy"])
    seeds = range(10**6, 10**6 + 5)  # 30 targets, unevenly spread over the images
    results = []
    for images_per_batch in (2, 5):  # batches of 2, 2 and 1 images, then one of 5
        monkeypatch.setattr(train_toy, "EVAL_IMAGES_PER_BATCH", images_per_batch)
        results.append(train_toy.evaluate(model, seeds))
    batched, whole = results
    assert batched["box_miou"] > 0 and batched["targets"] == whole["targets"] == 30
    for key in ("box_miou", "one_click_oracle_miou", "one_click_miou", "iou_head_pearson_r",
                "one_click_miou_unambiguous", "iou_head_pearson_r_unambiguous",
                "one_click_miou_ideal_head", "iou_head_pearson_r_ideal"):
        assert batched[key] == pytest.approx(whole[key], abs=1e-6)
    assert batched["unambiguous_targets"] == whole["unambiguous_targets"]
    assert batched["miou_by_clicks"] == pytest.approx(whole["miou_by_clicks"], abs=1e-6)


@slow
def test_run_killed_at_any_instant_resumes_to_the_uninterrupted_result(tmp_path, tiny_evaluation):
    """SIGKILL a training process at an arbitrary moment while it checkpoints every step: the
    checkpoint on disk is always complete (written to a temporary file, then renamed), and
    resuming from it reproduces the uninterrupted run exactly."""
    flags = ["--steps", "40", "--save-every", "1", "--images-per-step", "2",
             "--targets-per-image", "3", "--iters", "3", "--warmup", "2", "--lr", "3e-3",
             "--small-steps", "32"]
    killed = tmp_path / "killed"
    # the same thread count as this process, whatever the environment says: another count
    # sums in another order, and the runs would differ in the last bits
    stderr = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe would stall the child
    with stderr.open("w") as err:  # the child keeps its own copy of the file
        process = subprocess.Popen(
            [sys.executable, "train_toy.py", "--out", str(killed), *flags],
            cwd=Path(__file__).parent, stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    deadline = time.time() + 600  # a generous bound for a busy machine; it takes ~2 s idle
    while not (killed / "ckpt.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, f"training exited ({process.returncode}) before it was " \
                                   f"killed: {stderr.read_text()[-2000:]}"
    time.sleep(0.37)  # a few steps more, mid-write or between writes
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = torch.load(killed / "ckpt.pt", weights_only=True)  # complete, or this raises
    assert 1 <= state["step"] < 40, "the run should have been killed before it finished"
    resumed = train(killed, "--steps", "40", "--save-every", "40", "--small-steps", "32",
                    "--resume")
    straight = train(tmp_path / "straight", "--steps", "40", "--save-every", "40",
                     "--small-steps", "32")
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key


@slow
def test_resuming_with_another_seed_or_more_small_steps_is_refused(tmp_path, tiny_evaluation):
    train(tmp_path, "--steps", "2")
    with pytest.raises(SystemExit, match="trained with --seed 0; resuming with --seed 1"):
        train(tmp_path, "--steps", "3", "--resume", "--seed", "1")
    with pytest.raises(SystemExit, match="at full size at step 2, within --small-steps 3"):
        train(tmp_path, "--steps", "4", "--resume", "--small-steps", "3")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 2  # untouched


def test_resize_sam_resizes_positions_as_vitdet_and_the_reference_do():
    """Progressive resizing trains at 32 px, then 64 px, with the same weights: the absolute
    position embedding is resized bicubically, and each global block's relative-position
    tables exactly as the reference resizes a table that does not fit its grid (get_rel_pos).
    Windowed blocks and every other weight are untouched; the round trip to the same size is
    the identity."""
    torch.manual_seed(0)
    model = Sam(CONFIGS["toy"])
    for p in model.parameters():  # the zero-initialised tables would compare trivially
        torch.nn.init.normal_(p)
    small = train_toy.resize_sam(model, 32)
    assert small.config.image_size == 32 and small.config.image_embedding_size == 8
    big, little = model.state_dict(), small.state_dict()
    get_rel_pos = reference_package().modeling.image_encoder.get_rel_pos
    offsets = torch.arange(8)[:, None] - torch.arange(8)[None] + 7  # (8, 8): h - h' shifted
    resized = []
    for name, value in big.items():
        if "rel_pos" in name and value.shape[0] == 2 * 16 - 1:  # a global block's table
            # the reference gathers the resized table at every (query, key) offset
            assert torch.equal(little[name][offsets], get_rel_pos(8, 8, value))
            resized.append(name)
        elif name.endswith("pos_embed"):
            expected = F.interpolate(value.permute(0, 3, 1, 2), (8, 8), mode="bicubic",
                                     align_corners=False).permute(0, 2, 3, 1)
            assert torch.equal(little[name], expected)
        else:
            assert torch.equal(little[name], value), name
    assert len(resized) == 2 * len(CONFIGS["toy"].encoder_global_attn_indexes)
    same = train_toy.resize_sam(model, 64).state_dict()
    assert all(torch.equal(same[k], v) for k, v in big.items())
    with torch.no_grad():  # and the small model runs on the small images
        out = small.image_encoder(small.preprocess(torch.rand(2, 3, 32, 32) * 255))
    assert out.shape == (2, CONFIGS["toy"].prompt_embed_dim, 8, 8)


def test_growing_the_model_carries_adams_moments_where_shapes_stay():
    torch.manual_seed(0)
    small = Sam(dataclasses.replace(CONFIGS["toy"], image_size=32))
    optimizer = train_toy.make_optimizer(small, 1e-3)
    small.image_encoder.pos_embed.sum().backward()
    small.mask_decoder.iou_token.weight.sum().backward()
    optimizer.step()
    big = train_toy.resize_sam(small, 64)
    grown = train_toy.make_optimizer(big, 1e-3, optimizer.state_dict())
    assert torch.equal(grown.state[big.mask_decoder.iou_token.weight]["exp_avg"],
                       optimizer.state[small.mask_decoder.iou_token.weight]["exp_avg"])
    assert big.image_encoder.pos_embed not in grown.state  # resized: its moments start afresh
    big.image_encoder.pos_embed.sum().backward()
    grown.step()  # and Adam starts them without complaint


@slow
def test_a_checkpoint_of_the_small_steps_evaluates_at_full_size(tmp_path, tiny_evaluation):
    """--small-steps 3 of 6 steps: the checkpoint at step 2 holds the 32-px model;
    --eval-only grows it and scores the full-size held-out images."""
    state = train(tmp_path, "--steps", "6", "--small-steps", "3", "--save-every", "2")
    assert state["config"]["image_size"] == 64 and state["step"] == 6
    small = train(tmp_path / "small", "--steps", "2", "--small-steps", "1")
    assert small["config"]["image_size"] == 64  # the run ended: it grew before its end
    interrupted = tmp_path / "interrupted"
    train(interrupted, "--steps", "6", "--small-steps", "3", "--save-every", "1")
    (interrupted / "metrics.json").unlink()
    checkpoint = torch.load(interrupted / "ckpt.pt", weights_only=True)
    first = dict(checkpoint, step=2, history=checkpoint["history"][:2])
    # a checkpoint as the run wrote it at step 2, still at 32 px
    model = train_toy.resize_sam(build_sam("toy", checkpoint=interrupted / "ckpt.pt"), 32)
    torch.save({**first, "model": model.state_dict(),
                "config": dataclasses.asdict(model.config)}, interrupted / "ckpt.pt")
    train_toy.main(["--out", str(interrupted), "--eval-only"])
    metrics = json.loads((interrupted / "metrics.json").read_text())
    assert metrics["steps"] == 2 and 0 <= metrics["box_miou"] <= 1


@slow
def test_save_model_writes_a_loadable_model_and_the_json_of_its_claims(tmp_path,
                                                                        tiny_evaluation,
                                                                        monkeypatch):
    monkeypatch.setattr(train_toy, "AMG_EVAL_IMAGES", 2)
    train(tmp_path, "--steps", "4", "--save-model", str(tmp_path / "shipped" / "toy.pt"))
    model = build_sam("toy", checkpoint=tmp_path / "shipped" / "toy.pt")
    saved = torch.load(tmp_path / "shipped" / "toy.pt", weights_only=True)
    assert "optimizer" not in saved and saved["step"] == 4
    # the learning curve's points only, the per-step losses stay in the run's own checkpoint
    trained = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert saved["history"] == [h for h in trained["history"] if "box_miou" in h] != []
    record = json.loads((tmp_path / "shipped" / "toy.json").read_text())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert record["metrics"] == {k: v for k, v in metrics.items()
                                 if k not in ("learning_curve", "runs")}
    assert metrics["runs"] == record["runs"]  # metrics.json says how it was made, too
    run, = record["runs"]
    assert run["command"].startswith("python train_toy.py --out ") and run["from_step"] == 0
    assert run["threads"] == torch.get_num_threads()
    amg = record["automatic_masks"]
    assert amg["settings"] == train_toy.TOY_AMG_SETTINGS and amg["images"] == 2
    again = train_toy.automatic_mask_scores(model, train_toy.EVAL_SEEDS[:2],
                                            **train_toy.TOY_AMG_SETTINGS)
    assert {k: amg[k] for k in again} == again


SHIPPED = Path(__file__).parent / "lessons" / "toy_sam.pt"


@slow
def test_the_shipped_toy_checkpoint_scores_what_its_json_says():
    """lessons/toy_sam.pt and the claims beside it cannot drift apart: the held-out evaluation
    and the automatic masks' scores are recomputed and compared with lessons/toy_sam.json.
    The tolerance covers another CPU's summation order, which may flip a pixel whose logit is
    within rounding of the threshold (one pixel of one mask moves a mean IoU by ~3e-5)."""
    model = build_sam("toy", checkpoint=SHIPPED)
    record = json.loads(SHIPPED.with_suffix(".json").read_text())
    metrics = train_toy.evaluate(model)
    assert record["metrics"]["steps"] == torch.load(SHIPPED, weights_only=True)["step"]
    for key, value in record["metrics"].items():
        if key not in ("steps", "train_minutes"):
            assert metrics[key] == pytest.approx(value, abs=1e-4), key
    amg = record["automatic_masks"]
    assert amg["settings"] == train_toy.TOY_AMG_SETTINGS  # the code's settings are the scored ones
    seeds = train_toy.EVAL_SEEDS[:amg["images"]]
    for settings, scored in ((amg["settings"], amg),
                             ({**amg["settings"], **train_toy.REFERENCE_AMG_THRESHOLDS},
                              amg["with_reference_thresholds"])):
        again = train_toy.automatic_mask_scores(model, seeds, **settings)
        assert again == pytest.approx({k: scored[k] for k in again}, abs=1e-4)


def test_precision_recall_counts_matches_both_ways():
    square = np.zeros((1, 8, 8), bool)
    square[0, :4, :4] = True
    half = np.zeros((1, 8, 8), bool)
    half[0, :4, :2] = True  # IoU 0.5 with the square: a match at the threshold
    other = np.zeros((1, 8, 8), bool)
    other[0, 6:, 6:] = True
    scores = train_toy.precision_recall([np.concatenate([half, other]), np.zeros((0, 8, 8), bool)],
                                        [square, np.concatenate([square, other])])
    # 1 of 2 generated masks matches; 1 of 3 true masks is found; 2 masks over 2 images
    assert scores == {"masks_per_image": 1.0, "precision": 0.5, "recall": 1 / 3}


def test_interactive_training_rejects_a_schedule_without_a_first_prompt():
    model = Sam(CONFIGS["toy"])
    for iterations, no_click_passes in ((1, 1), (3, 3), (5, -1)):
        rejects(lambda: train_toy.InteractiveTraining(model, iterations, no_click_passes),
                "no_click_passes")


@slow
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_batch = train_toy.training_batch

    def batch_that_breaks(step, *args):  # the 5th step's images are NaN
        images, targets, index, generator = real_batch(step, *args)
        return images * (float("nan") if step == 4 else 1.0), targets, index, generator

    monkeypatch.setattr(train_toy, "training_batch", batch_that_breaks)
    with pytest.raises(SystemExit, match="step 5: the loss is nan.*last good checkpoint"):
        train(tmp_path, "--steps", "10", "--save-every", "2")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 4


@slow
def test_data_parallel_run_on_two_cpu_processes(tmp_path):
    """torchrun with 2 processes: DistributedDataParallel over gloo, rank 0 alone writes."""
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "train_toy.py", "--out", str(out), "--steps", "3", "--images-per-step", "1",
         "--targets-per-image", "2", "--iters", "2", "--warmup", "1", "--small-steps", "2",
         "--device", "cpu"],
        cwd=Path(__file__).parent, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("held-out evaluation") == 1  # only rank 0 evaluates and writes
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 3
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".png") == ["ckpt.pt", "metrics.json"]


@slow
def test_training_and_evaluation_make_their_tensors_where_their_inputs_are():
    """On a GPU, a tensor made without `device=` lands on the CPU and the step fails. There is
    no GPU here, so meta stands in for the CPU as the default device: a tensor made without
    `device=` lands on meta, and meeting the real inputs fails just the same."""
    model = Sam(ODD)
    trainer = train_toy.InteractiveTraining(model, 4, 1)  # first prompt, 2 clicks, 1 without
    images, targets, index, _ = train_toy.training_batch(0, 0, 0, 2, 3, ODD.image_size)
    boxes, valid = minisam.batched_mask_to_box(targets[:2]).float(), torch.eye(2, dtype=bool)
    expected = trainer(images, targets, index, torch.Generator().manual_seed(5))[0]
    with torch.device("meta"):
        loss, _ = trainer(images, targets, index, torch.Generator().manual_seed(5))
        loss.backward()
        embeddings = model.image_encoder(model.preprocess(images))
        masks, iou, low_res = train_toy.decode(model, embeddings, boxes=boxes)
        clicks = train_toy.interior_point(targets)
        ideal = train_toy.expected_iou(masks, targets[:2], valid)
    assert torch.equal(loss.detach(), expected.detach())  # and the same draws as ever
    assert all(x.device.type == "cpu" for x in (masks, iou, low_res, clicks, ideal))


@slow
def test_predictor_and_generator_make_their_tensors_where_their_inputs_are():
    """The same stand-in for a GPU as in the test above, for inference: a click with a box and
    a mask prompt, and the automatic masks with crops, NMS and small-region clean-up."""
    model, image = random_sam(CONFIGS["toy"]), toy_photo(90, 120, seed=3)
    generator = minisam.SamAutomaticMaskGenerator(
        model, points_per_side=8, pred_iou_thresh=0, stability_score_thresh=0, crop_n_layers=1,
        min_mask_region_area=10)
    predictor = minisam.SamPredictor(model)

    def infer():
        predictor.set_image(image)
        _, _, low_res = predictor.predict(np.array([[40, 30]]), np.array([1]))
        answer = predictor.predict(np.array([[40, 30], [80, 60]]), np.array([1, 0]),
                                   box=np.array([10, 5, 100, 80]), mask_input=low_res[:1])
        return answer, generator.generate(image)

    expected_answer, expected_records = infer()
    with torch.device("meta"):
        answer, records = infer()
    assert len(expected_records) > 3  # crops and NMS had something to do
    assert all(np.array_equal(a, b) for a, b in zip(answer, expected_answer))
    assert str(records) == str(expected_records)

def test_bad_flags_are_argparse_errors(capsys):
    for flags in (["--steps", "0"], ["--config", "vit_x"], ["--lr", "-1"], ["--device", "gpu9"],
                  ["--steps", "ten"], ["--no-click-passes", "3"],
                  ["--iters", "2", "--no-click-passes", "2"], ["--small-steps", "-1"],
                  ["--steps", "100"],
                  *(["--device", kind] for kind in ABSENT_DEVICES)):
        with pytest.raises(SystemExit) as err:
            train_toy.parse_args(flags)
        assert err.value.code == 2
        assert "error" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# Lessons: every Python block runs, every code name exists, every picture is made by code

ROOT = Path(__file__).resolve().parent
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.md"))
DOCS = [*LESSONS, ROOT / "lessons" / "experiments.md", ROOT / "README.md"]
CODE_FILES = [ROOT / "minisam.py", ROOT / "train_toy.py", ROOT / "bench.py", ROOT / "finetune.py",
              *sorted((ROOT / "lessons").glob("*.py"))]


def lessons_module(name: str):
    """A script of lessons/ (make_figures, data_engine), imported as the lessons import it."""
    if str(ROOT / "lessons") not in sys.path:
        sys.path.insert(0, str(ROOT / "lessons"))
    return importlib.import_module(name)


def python_blocks(markdown: str) -> list:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_every_lesson_is_numbered_and_has_a_python_block_and_a_figure():
    assert len(LESSONS) >= 10
    for lesson in LESSONS:
        text = lesson.read_text()
        assert re.match(r"\d\d_", lesson.name), lesson.name
        assert python_blocks(text), f"{lesson.name} has no python block"
        assert "![" in text, f"{lesson.name} shows no figure"


@slow
@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.name)
def test_lesson_code_runs(lesson, monkeypatch):
    """The blocks of one lesson run in order, in one namespace, from the repo root."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "lessons"))
    namespace = {"__name__": f"lesson_{lesson.stem}"}
    for i, block in enumerate(python_blocks(lesson.read_text())):
        code = compile(block, f"{lesson.name}, python block {i + 1}", "exec")
        exec(code, namespace)


def test_lessons_and_readme_name_only_code_that_exists():
    """A backticked name (`evaluate`, `Sam.postprocess_masks`, `predict_torch()`) must still
    be in the code: a renamed function cannot leave a lesson pointing at nothing."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", "".join(p.read_text() for p in CODE_FILES)))
    missing = []
    for doc in DOCS:
        for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)(?:\(\))?`", doc.read_text()):
            if re.search(r"\.(py|md|png|json|pt|pth|txt)$", name):
                continue  # a file name, checked by the picture test or not code at all
            missing += [f"{doc.name}: `{name}`" for part in name.split(".") if part not in words]
    assert not missing, "names that no code defines:\n" + "\n".join(missing)


@slow
def test_every_picture_exists_and_is_drawn_by_code():
    figures = lessons_module("make_figures").FIGURES
    drawn_elsewhere = "".join((ROOT / "lessons" / name).read_text()
                              for name in ("data_engine.py", "text_prompts.py", "mae.py",
                                           "zero_shot.py"))
    for doc in DOCS:
        for link in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", doc.read_text()):
            path = doc.parent / link
            assert path.exists(), f"{doc.name} shows {link}, which is not in the repo"
            assert path.stem in figures or f'"{path.name}"' in drawn_elsewhere, \
                f"{doc.name} shows {link}, which no figure code draws"



# -----------------------------------------------------------------------------
# Fine-tuning on your own masks (finetune.py)


def export(folder: Path, images: int, shifted: bool = False) -> Path:
    train_toy.main(["--export-toy", str(folder), "--images", str(images)]
                   + (["--shifted"] if shifted else []))
    return folder


def read_all(data: Path, S: int = 64) -> list:
    return [finetune.load_sample(entry, S) for entry in finetune.read_data(data)]


def frame_masks(sample) -> np.ndarray:
    return finetune.targets_of(sample, range(len(sample.masks))).numpy()


def test_compressed_rle_of_long_runs_decodes_as_pycocotools():
    """Runs of tens of thousands of pixels take several 5-bit groups, and their differences
    from the run two before are negative as often as positive."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    mask = np.zeros((480, 640), bool)
    mask[10:400, 30:600] = True
    mask[200:210, 100:500] = False
    mask[479, 639] = True
    text = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    assert np.array_equal(finetune.decode_segmentation({"size": [480, 640], "counts": text},
                                                       480, 640), mask)


def distance_to_outline(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """(P, 2) points, (K, 2) polygon corners -> (P,) distance to the nearest edge."""
    a, b = corners, np.roll(corners, -1, axis=0)  # (K, 2) each edge a -> b
    t = np.clip(((points[:, None] - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1), 0, 1)
    return np.linalg.norm(points[:, None] - (a + t[..., None] * (b - a)), axis=-1).min(1)


@given(st.integers(3, 10), st.integers(0, 2**31 - 1))
@PYCOCOTOOLS_NUMPY2_WARNING
def test_polygons_fill_as_pycocotools_except_on_the_outline(corners, seed):
    """A pixel is in where its centre is; pycocotools scans the outline at 5x and rounds, so
    the two may differ on a pixel the outline crosses (centre within half a pixel), no other."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(seed)
    h, w = 37, 51
    polygons = [rng.uniform(-5, 56, (corners, 2)), rng.uniform(0, 40, (3, 2))]
    ours = finetune.decode_segmentation([p.ravel().tolist() for p in polygons], h, w)
    theirs = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
        [p.ravel().tolist() for p in polygons], h, w))).astype(bool)
    ys, xs = np.nonzero(ours != theirs)
    centres = np.stack([xs, ys], 1) + 0.5
    near = np.min([distance_to_outline(centres, p) for p in polygons], axis=0)
    assert (near <= 0.5).all(), centres[near > 0.5]
    assert ours.sum() > 0.9 * theirs.sum()  # and they do fill the same area


@PYCOCOTOOLS_NUMPY2_WARNING
def test_sa1b_folder_and_coco_json_give_the_same_masks(tmp_path):
    """The toy export (SA-1B layout, plain run lengths) and a COCO instances file over the
    same images (compressed run lengths, and a polygon) read to the same masks, which are
    the toy world's."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    sa1b = export(tmp_path / "sa1b", 3)
    coco_dir = tmp_path / "coco"
    coco_dir.mkdir()
    images, annotations = [], []
    for i, seed in enumerate(train_toy.EXPORT_SEEDS[:3]):
        shutil.copy(sa1b / f"toy_{seed}.png", coco_dir / f"image{i}.png")
        images.append({"id": 10 + i, "file_name": f"image{i}.png", "height": 64, "width": 64})
        for mask in train_toy.make_world(seed)[1]:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({"id": len(annotations), "image_id": 10 + i, "iscrowd": 0,
                                "segmentation": {"size": rle["size"],
                                                 "counts": rle["counts"].decode()}})
    # a rectangle as a polygon, corners on pixel corners: pixels 5..19 by 8..29
    annotations.append({"id": 99, "image_id": 12, "segmentation": [[5, 8, 20, 8, 20, 30, 5, 30]]})
    (coco_dir / "instances.json").write_text(json.dumps({"images": images,
                                                         "annotations": annotations}))
    from_sa1b, from_coco = read_all(sa1b), read_all(coco_dir / "instances.json")
    rectangle = np.zeros((64, 64), bool)
    rectangle[8:30, 5:20] = True
    assert np.array_equal(frame_masks(from_coco[2])[-1], rectangle)
    from_coco[2].masks.pop()
    for a, b, seed in zip(from_sa1b, from_coco, train_toy.EXPORT_SEEDS):
        assert np.array_equal(frame_masks(a), train_toy.make_world(seed)[1])
        assert np.array_equal(frame_masks(a), frame_masks(b))


def test_any_image_enters_the_frame_the_predictor_uses(tmp_path):
    """A JPEG of any aspect: its cached embedding is the one SamPredictor computes, and its
    mask lands where the predictor maps the mask's box, with nothing in the padding."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 50, 3)).astype(np.uint8)
    matplotlib.image.imsave(data / "wide.jpg", image)
    mask = np.zeros((30, 50), bool)
    mask[6:24, 10:40] = True
    rle = minisam.mask_to_rle(torch.from_numpy(mask)[None])[0]
    (data / "wide.json").write_text(json.dumps({"annotations": [{"segmentation": rle}]}))
    model = minisam.Sam(CONFIGS["toy"]).eval()
    (sample,) = read_all(data, model.config.image_size)
    finetune.cache_embeddings(model, [sample], tmp_path / "cache")
    predictor = minisam.SamPredictor(model)
    predictor.set_image(finetune.read_image(data / "wide.jpg"))
    assert torch.equal(torch.load(sample.embedding, weights_only=True), predictor.features[0])
    frame = frame_masks(sample)[0]
    h, w = predictor.input_size  # 38 x 64: the padding is the rows below
    assert (h, w) == (38, 64) and not frame[h:].any()
    box = predictor.transform.apply_boxes(np.array([10, 6, 40, 24]), (30, 50))[0]
    assert minisam.batched_mask_to_box(torch.from_numpy(frame)).tolist() == pytest.approx(
        [box[0], box[1], box[2] - 1, box[3] - 1], abs=1)


def write_sa1b(folder: Path, name: str, annotations: list, size=(8, 8), image_size=None):
    """One SA-1B pair: a grey NAME.png of `size` and NAME.json with `annotations`."""
    folder.mkdir(exist_ok=True)
    matplotlib.image.imsave(folder / f"{name}.png", np.full((*size, 3), 128, np.uint8))
    image = {} if image_size is None else {"height": image_size[0], "width": image_size[1]}
    (folder / f"{name}.json").write_text(json.dumps({"image": image, "annotations": annotations}))


def rle_annotation(counts, size=(8, 8)):
    return {"segmentation": {"size": list(size), "counts": counts}}


def coco_file(folder: Path, coco: dict) -> Path:
    (folder / "in.json").write_text(json.dumps(coco))
    return folder / "in.json"


def test_bad_data_is_a_value_error_naming_the_file(tmp_path):
    square = [4, 4] * 8  # 8x8: 4 out, 4 in in every column
    cases = []

    def case(name, build, *words):
        folder = tmp_path / name
        folder.mkdir()
        data = build(folder)
        data = data if isinstance(data, Path) else folder
        cases.append((data, words))

    case("empty", lambda d: None, "empty", "no .jpg or .png")
    case("no_json", lambda d: matplotlib.image.imsave(d / "a.png", np.zeros((4, 4, 3))), "a.png",
         "a.json")
    case("no_image", lambda d: write_sa1b(d, "a", []) or (d / "b.json").write_text("{}"), "b.json")
    case("not_json", lambda d: write_sa1b(d, "c", []) or (d / "c.json").write_text("{oops"),
         "c.json")
    case("no_annotations", lambda d: write_sa1b(d, "d", []) or (d / "d.json").write_text("{}"),
         "d.json", "annotations")
    case("rle_size", lambda d: write_sa1b(d, "e", [rle_annotation([64], (8, 9))]), "e.json",
         "[8, 9]")
    case("image_size", lambda d: write_sa1b(d, "f", [], image_size=(8, 9)), "f.json", "[8, 9]")
    case("bad_character", lambda d: write_sa1b(d, "g", [rle_annotation("0~")]), "g.json",
         "corrupt RLE")
    case("truncated", lambda d: write_sa1b(d, "h", [rle_annotation("0P")]), "h.json",
         "corrupt RLE")  # 'P' = 32: another group should follow
    case("short_runs", lambda d: write_sa1b(d, "i", [rle_annotation(square[:-1])]), "i.json",
         "corrupt RLE")
    case("negative_run", lambda d: write_sa1b(d, "j", [rle_annotation([-1, 65])]), "j.json",
         "corrupt RLE")
    case("neither", lambda d: write_sa1b(d, "k", [{"segmentation": {"counts": square}}]),
         "k.json", "segmentation")
    case("polygon", lambda d: write_sa1b(d, "l", [{"segmentation": [[1, 2, 3]]}]), "l.json",
         "polygon")
    case("broken_image", lambda d: write_sa1b(d, "m", []) or (d / "m.png").write_bytes(b"no"),
         "m.png")
    case("coco_missing_image", lambda d: coco_file(
        d, {"images": [{"id": 1, "file_name": "gone.jpg"}], "annotations": []}), "gone.jpg")
    case("coco_without_images", lambda d: coco_file(d, {"annotations": []}), "in.json")
    for data, words in cases:
        rejects(lambda: read_all(data), *words)
    write_sa1b(tmp_path / "good", "n", [rle_annotation(square)])
    assert len(read_all(tmp_path / "good")[0].masks) == 1  # the cases' shared part is sound


def test_a_mask_without_pixels_is_left_out_with_a_warning(tmp_path):
    write_sa1b(tmp_path, "a", [rle_annotation([64]), rle_annotation([4, 4] * 8)])
    with pytest.warns(UserWarning, match=r"a\.json.*annotation 0"):
        (sample,) = read_all(tmp_path)
    assert len(sample.masks) == 1
    write_sa1b(tmp_path, "a", [rle_annotation([64])])
    with pytest.warns(UserWarning, match="no masks"), pytest.warns(UserWarning,
                                                                  match="annotation 0"):
        assert read_all(tmp_path) == [None]  # its only mask left out, then the image


def test_the_held_out_split_goes_by_file_name():
    entries = [finetune.Entry(Path(f"x/img{i}.jpg"), Path("x.json"), None, []) for i in range(50)]
    train, held_out = finetune.split(entries, 0.2)
    shuffled_train, shuffled_held_out = finetune.split(entries[::-1], 0.2)
    assert len(held_out) == 10 and held_out == shuffled_held_out
    assert set(e.image for e in train) == set(e.image for e in shuffled_train)
    assert {e.image for e in train} | {e.image for e in held_out} == {e.image for e in entries}
    # hashed names: the held-out images come from both halves of the sorted names
    assert 0 < sum(int(e.image.stem[3:]) < 25 for e in held_out) < 10


def test_export_toy_writes_the_toy_world_and_its_shifted_style(tmp_path):
    normal, shifted = export(tmp_path / "normal", 2), export(tmp_path / "shifted", 2, True)
    assert not set(train_toy.EXPORT_SEEDS) & (set(train_toy.EVAL_SEEDS) | set(train_toy.TRAIN_SEEDS))
    for a, b, seed in zip(read_all(normal), read_all(shifted), train_toy.EXPORT_SEEDS):
        image, masks, _ = train_toy.make_world(seed)
        assert np.array_equal(finetune.read_image(a.image), image)
        assert np.array_equal(frame_masks(a), masks) and np.array_equal(frame_masks(b), masks)
        assert np.abs(finetune.read_image(b.image).astype(int) - image).mean() > 40


def bad_flags():
    return [["--steps", "0"], ["--val-fraction", "0"], ["--val-fraction", "1.5"],
            ["--config", "vit_x"], ["--lr", "0"], ["--device", "gpu9"]]


def test_finetune_bad_flags_are_argparse_errors(tmp_path, capsys):
    for flags in [*(["--data", str(tmp_path)] + f for f in bad_flags()), [],
                  ["--data", str(tmp_path), "--out", str(tmp_path / "out")]]:
        with pytest.raises(SystemExit) as err:
            finetune.parse_args(flags)
        assert err.value.code == 2
        assert "error" in capsys.readouterr().err


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def few_targets():
    """Steps of 2 images (16 masks), not 8: the same code, a quarter of the time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune, "SETTINGS",
                      dataclasses.replace(finetune.SETTINGS, images_per_step=2))
        yield


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return export(tmp_path_factory.mktemp("finetune") / "data", 10, shifted=True)


def run(data: Path, out: Path, *flags):
    finetune.main(["--data", str(data), "--config", "toy", "--out", str(out), "--steps", "6",
                   *flags])
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def six_steps(toy_data, few_targets, tmp_path_factory):
    """A run of 6 steps from random weights (seed 0), the encoder frozen, and the data as it
    was before."""
    before = snapshot(toy_data)
    out = tmp_path_factory.mktemp("six_steps")
    return run(toy_data, out, "--freeze-encoder"), out, before


@slow
def test_training_lowers_the_held_out_loss_and_writes_a_checkpoint_build_sam_loads(toy_data,
                                                                                   six_steps):
    metrics, out, data_before = six_steps
    assert metrics["train_images"] == 8 and metrics["held_out_images"] == 2
    assert metrics["after"]["loss"] < metrics["before"]["loss"]
    for key in ("box_miou", "one_click_miou", "one_click_oracle_miou"):
        assert 0 <= metrics["after"][key] <= 1
    assert len(metrics["after"]["miou_by_clicks"]) == finetune.CLICKS
    model = minisam.build_sam("toy", checkpoint=out / "ckpt.pt")
    torch.manual_seed(0)  # the run's random start
    start = minisam.Sam(CONFIGS["toy"]).state_dict()
    for name, value in model.named_parameters():  # the frozen encoder did not move
        assert torch.equal(value, start[name]) == name.startswith("image_encoder."), name
    assert snapshot(toy_data) == data_before  # nothing in DATA was written
    assert len(list((out / "embeddings").iterdir())) == 10  # one per image
    assert (out / "examples.png").stat().st_size > 0


@slow
def test_resume_continues_the_same_run_and_eval_only_scores_it_again(toy_data, six_steps,
                                                                     tmp_path, monkeypatch):
    whole, out, _ = six_steps
    with pytest.raises(SystemExit, match="seed"):
        run(toy_data, out, "--resume", "--seed", "1", "--freeze-encoder")
    finetune.main(["--data", str(toy_data), "--config", "toy", "--out", str(tmp_path),
                   "--steps", "3", "--freeze-encoder"])
    resumed = run(toy_data, tmp_path, "--resume", "--freeze-encoder")
    a, b = (torch.load(path / "ckpt.pt", weights_only=True) for path in (out, tmp_path))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert resumed["after"] == whole["after"]

    def no_encoder(*args):
        raise AssertionError("the image encoder ran, but every embedding was cached")

    monkeypatch.setattr(finetune, "encode", no_encoder)
    again = run(toy_data, out, "--eval-only")
    assert (again["before"], again["after"]) == (whole["before"], whole["after"])


@slow
def test_non_finite_loss_stops_a_fine_tune_before_it_reaches_the_checkpoint(toy_data, few_targets,
                                                                            tmp_path, monkeypatch):
    real_batch, real_embeddings, at = finetune.sample_batch, finetune.load_embeddings, {}

    def batch(step, samples, settings):  # remembers the step: the 3rd step's embeddings are NaN
        at["step"] = step
        return real_batch(step, samples, settings)

    def embeddings(samples, device):
        return real_embeddings(samples, device) * (float("nan") if at.get("step") == 2 else 1.0)

    monkeypatch.setattr(finetune, "sample_batch", batch)
    monkeypatch.setattr(finetune, "load_embeddings", embeddings)
    monkeypatch.setattr(finetune, "SAVE_EVERY", 2)
    with pytest.raises(SystemExit, match="step 3: the loss is nan.*last good checkpoint"):
        run(toy_data, tmp_path, "--freeze-encoder")  # the path through cached embeddings
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 2


def test_the_encoder_trains_by_default_only_where_it_is_small():
    """The toy's 0.5M-weight encoder trains by default, ViT-B's 90M stay frozen; either flag
    overrides the rule."""
    def train_encoder(*flags):
        return finetune.parse_args(["--data", "DATA", *flags]).train_encoder
    assert train_encoder("--config", "toy") and not train_encoder("--config", "vit_b")
    assert not train_encoder("--config", "toy", "--freeze-encoder")
    assert train_encoder("--config", "vit_b", "--train-encoder")


@slow
def test_train_encoder_trains_the_whole_model(toy_data, few_targets, tmp_path):
    run(toy_data, tmp_path, "--train-encoder", "--steps", "2")
    torch.manual_seed(0)
    start = minisam.Sam(CONFIGS["toy"]).state_dict()
    trained = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    assert not torch.equal(trained["image_encoder.patch_embed.proj.weight"],
                           start["image_encoder.patch_embed.proj.weight"])
    # the held-out images were encoded again by the trained encoder, the training ones never
    assert len(list((tmp_path / "embeddings").iterdir())) == 2 * 2


@given(st.one_of(mask_batches(max_side=40), st.lists(masks_of_shape((300, 200)), min_size=1,
                                                     max_size=2)))
@PYCOCOTOOLS_NUMPY2_WARNING
def test_compressed_rle_decodes_as_pycocotools_encodes(masks):
    """Every mask pycocotools compresses, empty and full ones too, reads back to its runs
    (the ones minisam.mask_to_rle counts) and to itself."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    for mask in masks:
        coco = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        text = coco["counts"].decode()
        runs = minisam.mask_to_rle(torch.from_numpy(mask)[None])[0]["counts"]
        assert finetune.rle_counts(text) == runs
        assert np.array_equal(finetune.decode_segmentation({"size": coco["size"], "counts": text},
                                                           *mask.shape), mask)


@slow
def test_finetune_reads_vit_b_from_a_raw_state_dict_of_the_official_shapes(tmp_path,
                                                                           monkeypatch):
    """Lesson 10's ViT-B path, as far as a machine without the official weights can take it:
    random weights of the official shapes saved as a raw state dict (sam_vit_b_01ec64.pth's
    format), two small JPEGs of other aspects whose masks go to 1024 px with them, one
    training step of the decoder, and an OUT/ckpt.pt that build_sam("vit_b") loads."""
    monkeypatch.setattr(finetune, "SETTINGS", dataclasses.replace(  # one image, two masks:
        finetune.SETTINGS, images_per_step=1, targets_per_image=2))  # the same code
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in (("wide", (40, 60)), ("tall", (50, 30))):
        matplotlib.image.imsave(data / f"{name}.jpg", rng.integers(0, 256, (h, w, 3), np.uint8))
        masks = np.zeros((2, h, w), bool)
        masks[0, 5:h - 5, 5:w // 2] = True
        masks[1, h // 2:, w // 3:] = True
        rles = minisam.mask_to_rle(torch.from_numpy(masks))
        annotations = [{"segmentation": rle} for rle in rles]
        (data / f"{name}.json").write_text(json.dumps({"annotations": annotations}))
    torch.manual_seed(0)
    start = minisam.Sam(CONFIGS["vit_b"]).state_dict()
    torch.save(start, tmp_path / "sam_vit_b_random.pth")
    finetune.main(["--data", str(data), "--config", "vit_b", "--checkpoint",
                   str(tmp_path / "sam_vit_b_random.pth"), "--out", str(out), "--steps", "1",
                   "--val-fraction", "0.5"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["train_images"], metrics["held_out_images"], metrics["steps"]) == (1, 1, 1)
    assert metrics["before"]["targets"] == metrics["after"]["targets"] == 2
    embeddings = sorted((out / "embeddings").iterdir())
    assert len(embeddings) == 2  # one per image, in ViT-B's shape
    assert torch.load(embeddings[0], weights_only=True).shape == (256, 64, 64)
    trained = minisam.build_sam("vit_b", checkpoint=out / "ckpt.pt").state_dict()
    for name in ("image_encoder.patch_embed.proj.weight", "mask_decoder.iou_prediction_head."
                 "layers.0.weight"):
        assert torch.equal(trained[name], start[name]) == name.startswith("image_encoder."), name
