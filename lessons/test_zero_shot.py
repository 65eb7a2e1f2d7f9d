"""Tests of the toy worlds (train_toy.py, section 1) and of lessons/zero_shot.py: the worlds
keep the original one as it was, every world's masks are consistent, the section-7 scores
measure what they say, and lesson 11's tables are the JSON's numbers."""
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "lessons"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))  # minisam, train_toy, zero_shot

import minisam  # noqa: E402
import train_toy  # noqa: E402
import zero_shot  # noqa: E402
from train_toy import EVAL_SEEDS, HELD_OUT_WORLDS, SHAPES, TRAINING_WORLDS, WORLDS  # noqa: E402


def test_the_original_world_is_drawn_as_it_always_was():
    """The held-out images every number of the project is measured on (EVAL_SEEDS[0] here, by
    the digest it had before there were other worlds)."""
    image, masks = train_toy.make_sample(EVAL_SEEDS[0])
    digest = hashlib.sha256(image.tobytes() + masks.tobytes()).hexdigest()
    assert digest == "c78b464aae2168796f5af26e6bf01cb57c29e6318aa3202cfacf17b815222165"


def test_held_out_worlds_are_never_training_worlds():
    assert not {w.name for w in TRAINING_WORLDS} & {w.name for w in HELD_OUT_WORLDS}
    assert len(HELD_OUT_WORLDS) >= 8 and SHAPES in TRAINING_WORLDS
    assert len(WORLDS) == len(TRAINING_WORLDS) + len(HELD_OUT_WORLDS)  # names are unique


@pytest.mark.parametrize("world", TRAINING_WORLDS + HELD_OUT_WORLDS, ids=lambda w: w.name)
def test_every_world_draws_consistent_masks(world):
    """Deterministic per seed; other worlds' images differ from the original's; every part
    lies inside its parent; masks are big enough to be targets; a canvas that is not square
    arrives in the model's frame, its padding empty."""
    for seed in range(6):
        image, masks, parents = train_toy.make_world(seed, 64, world)
        again, masks_again, _ = train_toy.make_world(seed, 64, world)
        assert np.array_equal(image, again) and np.array_equal(masks, masks_again)
        H, W = round(64 * world.canvas[0]), round(64 * world.canvas[1])
        assert image.shape == (H, W, 3) and image.dtype == np.uint8 and masks.shape[1:] == (H, W)
        assert (masks.sum((1, 2)) >= H * W // 128).all()
        for k, parent in enumerate(parents):
            assert parent < k and (parent < 0 or not (masks[k] & ~masks[parent]).any())
        framed, framed_masks = train_toy.make_sample(seed, 64, world)
        h, w = framed.shape[:2]
        assert max(h, w) == 64 and framed_masks.shape[1:] == (64, 64)
        assert not framed_masks[:, h:].any() and not framed_masks[:, :, w:].any()
    if world != SHAPES:
        assert not np.array_equal(train_toy.make_world(0, 64, world)[0], train_toy.make_world(0)[0])


def test_training_batches_draw_from_every_world_and_pad_a_wide_canvas():
    worlds = (SHAPES, WORLDS["wide"])
    images, targets, index, _ = train_toy.training_batch(0, 0, 0, 16, 2, 64, worlds)
    assert images.shape == (16, 3, 64, 64) and targets.shape == (32, 64, 64)
    # a wide image is 32 x 64 in the frame; below it, the pixel mean (zero once normalised)
    mean = torch.tensor(minisam.SamConfig.pixel_mean)[:, None, None]
    padded = [i for i in range(16) if torch.allclose(images[i, :, 40:], mean.expand(3, 24, 64))]
    assert 0 < len(padded) < 16
    assert not targets[torch.isin(index, torch.tensor(padded)), 40:].any()


def test_worlds_flag_names_the_worlds_and_refuses_unknown_ones(capsys):
    assert train_toy.parse_args(["--worlds", "training"]).worlds == TRAINING_WORLDS
    assert train_toy.parse_args(["--worlds", "fog,shapes"]).worlds == (WORLDS["fog"], SHAPES)
    with pytest.raises(SystemExit):
        train_toy.parse_args(["--worlds", "shapes,mars"])
    assert "no world named mars" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# The scores of lessons/zero_shot.py


def square(y0, x0, side, size=16):
    mask = np.zeros((size, size), bool)
    mask[y0:y0 + side, x0:x0 + side] = True
    return mask


def test_ods_is_one_for_the_true_edges_and_falls_with_misplaced_ones():
    truth = zero_shot.boundary(square(4, 4, 8))
    perfect = zero_shot.ods([torch.from_numpy(truth).float()], [truth])
    assert perfect["ods"] == pytest.approx(1.0)
    # moved 3 pixels down and right, the outline meets the truth at two crossings only (the
    # tolerance is one pixel)
    moved = np.roll(truth, (3, 3), axis=(0, 1))
    assert zero_shot.ods([torch.from_numpy(moved).float()], [truth])["ods"] < 0.25
    # one pixel off still matches
    assert zero_shot.ods([torch.from_numpy(np.roll(truth, 1, axis=0)).float()], [truth])["ods"] > 0.9


def test_thinning_keeps_the_ridge_of_a_blurred_edge():
    step = torch.zeros(1, 12, 12)
    step[0, :, 6:] = 1.0
    magnitude, direction = zero_shot.sobel(step)
    thin = zero_shot.thin(magnitude, direction)[0]
    assert (magnitude[0] > 0).sum(1).eq(2).all()  # Sobel marks two columns per row
    assert (thin > 0).sum(1).le(2).all() and (thin[:, 5:7] > 0).any(1).all()


def test_average_recall_counts_each_true_mask_at_every_iou_threshold():
    truths = np.stack([square(0, 0, 8), square(8, 8, 8)])
    assert zero_shot.average_recall(truths[::-1].copy(), truths) == pytest.approx(1.0)
    assert zero_shot.average_recall(truths[:1], truths) == pytest.approx(0.5)
    # IoU 0.75 with the first square: found at thresholds 0.5..0.75, six of ten
    assert zero_shot.average_recall(square(0, 0, 8)[None] & (np.arange(16) < 6)[None, None],
                                    truths[:1]) == pytest.approx(0.6)
    assert zero_shot.average_recall(np.zeros((0, 16, 16), bool), truths) == 0.0


def test_wholes_are_the_masks_no_other_contains():
    _, masks, parents = train_toy.make_world(4)  # the house of lesson 0
    assert np.array_equal(zero_shot.wholes(masks), parents == -1)


def test_colour_regions_find_flat_regions_largest_first():
    image = np.zeros((16, 16, 3), np.uint8)
    image[2:6, 2:6] = 255
    image[8:15, 8:15] = (255, 0, 0)
    regions = zero_shot.colour_regions(image)
    assert [r.sum() for r in regions] == [256 - 16 - 49, 49, 16]


# -----------------------------------------------------------------------------
# Lesson 11 and its JSON

RESULTS = ROOT / "lessons" / "figures" / "zero_shot" / "results.json"


@pytest.mark.slow
def test_results_json_is_what_the_shipped_models_score():
    """One world's single-point row of each model, recomputed (the full run is the script's)."""
    results = json.loads(RESULTS.read_text())
    for name in zero_shot.MODELS:
        row = zero_shot.single_point(zero_shot.load(name), WORLDS["fog"])
        recorded = results["single_point"][name]["fog"]
        assert row["targets"] == recorded["targets"]
        for key in ("box", "oracle", "choice"):
            assert row[key] == pytest.approx(recorded[key], abs=1e-4), (name, key)


def test_lesson_11_tables_are_the_json_numbers():
    """Every row of lesson 11's zero-shot table: the JSON's numbers, to the digits printed."""
    results = json.loads(RESULTS.read_text())
    lesson = (ROOT / "lessons" / "11_zero_shot.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in lesson.splitlines()
            if line.startswith("| ") and "---" not in line}
    for world in HELD_OUT_WORLDS:
        expected = [results["single_point"][m][world.name]["box"]
                    for m in ("foundation", "one-world", "specialist")
                    if world.name in results["single_point"].get(m, {})]
        printed = [float(x) for x in re.findall(r"\d\.\d{3}", rows[world.name])]
        assert printed[:len(expected)] == [round(v, 3) for v in expected], world.name


FOUNDATION = ROOT / "lessons" / "foundation_sam.pt"


@pytest.mark.slow
def test_the_foundation_checkpoint_scores_what_its_json_says():
    """lessons/foundation_sam.pt and its JSON cannot drift apart: the held-out evaluation in
    the original world, recomputed (the tolerance: another CPU's summation order)."""
    record = json.loads(FOUNDATION.with_suffix(".json").read_text())
    assert record["worlds"] == [w.name for w in TRAINING_WORLDS]
    assert record["metrics"]["steps"] == torch.load(FOUNDATION, weights_only=True)["step"]
    metrics = train_toy.evaluate(minisam.build_sam("toy", checkpoint=FOUNDATION))
    for key, value in record["metrics"].items():
        if key not in ("steps", "train_minutes"):
            assert metrics[key] == pytest.approx(value, abs=1e-4), key


def test_lesson_11_means_and_the_readme_are_the_json():
    """The means table of lesson 11 and the README's zero-shot paragraph quote results.json
    and lessons/foundation_sam.json."""
    results = json.loads(RESULTS.read_text())
    lesson = (ROOT / "lessons" / "11_zero_shot.md").read_text()
    for model in ("foundation", "one-world", "specialist"):
        m = results["means"][model]
        row = f"| {model} | " + " | ".join(f"{m[k]:.3f}" for k in ("box", "oracle", "choice",
                                                                  "after_5_clicks")) + " |"
        assert row in lesson, row
    readme = " ".join((ROOT / "README.md").read_text().split())
    record = json.loads(FOUNDATION.with_suffix(".json").read_text())
    assert f"box {record['metrics']['box_miou']:.3f} on the original world" in readme
    means = {m: f"{results['means'][m]['box']:.3f}" for m in ("foundation", "one-world", "specialist")}
    assert (f"mean box mIoU: foundation {means['foundation']}, one-world {means['one-world']}, "
            f"a specialist per world (300 steps on its own images) {means['specialist']}") in readme
    one_world = json.loads((ROOT / "lessons" / "toy_sam.json").read_text())["metrics"]["box_miou"]
    assert (f"box {record['metrics']['box_miou']:.3f} on the original world's 64 held-out images, "
            f"against the one-world model's {one_world:.3f}") in " ".join(lesson.split())
