"""
Tests of lessons/data_engine.py (the data engine in miniature).
They sit beside the script; pytest collects them from the repository root, and
`python -m pytest -q lessons/test_data_engine.py` runs them alone.
"""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the root's modules, as the lesson scripts find them
import data_engine  # noqa: E402
import minisam  # noqa: E402
import train_toy  # noqa: E402
from minisam import CONFIGS, Sam  # noqa: E402
from test_minisam import disc_sam, toy_photo  # noqa: E402  (the tests of minisam.py)

# -----------------------------------------------------------------------------
# The data engine in miniature (lessons/data_engine.py)


def fraction(x):
    return isinstance(x, float) and 0 <= x <= 1


@pytest.mark.slow
def test_data_engine_quick_run_writes_the_promised_json_and_figures(tmp_path):
    threads = torch.get_num_threads()
    data_engine.main(["--out", str(tmp_path), "--quick", "--threads", "1"])
    assert torch.get_num_threads() == threads  # main gives the caller's thread count back
    results = json.loads((tmp_path / "data_engine.json").read_text())
    for name in ("clicks_per_mask.png", "masks_per_image.png", "final_comparison.png",
                 "labels.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert results["brush"] is True and results["quick"] is True  # the paper's annotator
    budget = data_engine.QUICK
    assert results["budget"] == {k: getattr(budget, k) for k in results["budget"]}
    objects = [len(masks) for _, masks in data_engine.engine_world(budget, seed=0)]
    rounds = results["stage1"]["rounds"]
    assert len(rounds) == budget.stage1_rounds
    start = budget.seed_images
    for r in rounds:
        asked = sum(objects[start:start + budget.stage1_images_per_round])
        start += budget.stage1_images_per_round
        assert isinstance(r["masks"], int) and fraction(r["miou"]) and r["clicks_per_mask"] >= 0
        assert r["masks_per_image"] == pytest.approx(r["masks"] / budget.stage1_images_per_round)
        assert r["accepted_fraction"] == pytest.approx(r["masks"] / asked)
        # every object is labelled: accepted from the model's clicks, or brushed
        assert r["masks"] + r["brushed_masks"] == asked
        assert (r["brush_pixels_per_mask"] > 0) == (r["brushed_masks"] > 0)
    assert results["stage1"]["masks_per_image"] == pytest.approx(
        sum(r["masks"] for r in rounds) / (budget.stage1_rounds * budget.stage1_images_per_round))
    stage2 = results["stage2"]
    drawn = stage2["prefilled_masks"] + stage2["clicked_masks"]
    assert drawn + stage2["brushed_masks"] == sum(objects[start:start + budget.stage2_images])
    assert stage2["masks_per_image"] == pytest.approx(drawn / budget.stage2_images)
    assert stage2["prefilled_fraction"] == pytest.approx(stage2["prefilled_masks"] / max(drawn, 1))
    assert stage2["clicks_per_mask"] >= 0 and stage2["brush_pixels_per_mask"] >= 0
    for key in ("precision", "recall"):
        assert fraction(results["stage3"][key])
        assert fraction(results["stage3"]["pseudo_labelling_with_seed_model"][key])
    final = results["final"]
    assert fraction(final["miou_engine"]) and fraction(final["miou_ground_truth"])
    assert final["ratio"] == pytest.approx(final["miou_engine"] / final["miou_ground_truth"])
    # the ground-truth model trains on every true mask of every image the engine saw; the
    # engine's on as many for the seed set and stages 1 and 2, then stage 3's masks
    assert final["ground_truth_masks"] == sum(objects)
    assert final["engine_masks"] == sum(objects[:-budget.stage3_images]) + round(
        results["stage3"]["masks_per_image"] * budget.stage3_images)


def quoted(run: dict) -> list:
    """The cells of lesson 8's table for one data_engine.json, row by row."""
    rounds, stage2, final = run["stage1"]["rounds"], run["stage2"], run["final"]

    def per_round(key, form, last=None):
        return ", ".join(form.format(r[key]) for r in rounds) + (
            "" if last is None else "; " + form.format(last))

    brushed = (per_round("brush_pixels_per_mask", "{:.0f}", stage2["brush_pixels_per_mask"])
               if run["brush"] else "none")
    return [per_round("miou", "{:.3f}", stage2["after_retraining"]["miou"]),
            per_round("accepted_fraction", "{:.0%}"),
            per_round("clicks_per_mask", "{:.0f}", stage2["clicks_per_mask"]),
            brushed,
            f"{run['stage1']['masks_per_image']:.2f}; {stage2['masks_per_image']:.2f} "
            f"({stage2['prefilled_fraction']:.0%})",
            f"{run['stage3']['masks_per_image']:.1f}, {run['stage3']['precision']:.2f}, "
            f"{run['stage3']['recall']:.2f}",
            f"{final['miou_engine']:.3f} / {final['miou_ground_truth']:.3f} "
            f"({final['ratio']:.1%})"]


def test_lesson_8_quotes_the_shipped_data_engine_runs():
    """Lesson 8's two columns are lessons/figures/data_engine/data_engine.json, the run that
    drew its figures, and give_up.json beside it: the lesson and the runs cannot drift apart."""
    folder = ROOT / "lessons/figures/data_engine"
    run = json.loads((folder / "data_engine.json").read_text())
    give_up = json.loads((folder / "give_up.json").read_text())
    lesson = (ROOT / "lessons" / "08_data_engine.md").read_text()
    budget = dataclasses.asdict(data_engine.Budget())
    assert run["brush"] and run["budget"] == budget  # the default command's run
    assert not give_up["brush"] and give_up["budget"] == budget  # the same with --give-up
    for paper, without_brush in zip(quoted(run), quoted(give_up)):
        assert f"| {paper} | {without_brush} |" in lesson, (paper, without_brush)


@pytest.mark.slow
def test_data_engine_training_stops_on_a_non_finite_loss_before_the_weights_take_it():
    torch.manual_seed(0)
    model = Sam(dataclasses.replace(CONFIGS["toy"], image_size=32))
    labelled = [train_toy.make_sample(seed, 32) for seed in (1, 2)]
    with torch.no_grad():
        model.mask_decoder.iou_token.weight[0, 0] = float("nan")  # every loss is NaN from step 1
    before = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(SystemExit, match="step 1: the loss is nan; stopping.$"):
        data_engine.train_on_labels(model, labelled, data_engine.retraining(3, seed=0),
                                    log=lambda *a: None)
    assert all(torch.allclose(p, before[name], rtol=0, atol=0, equal_nan=True)
               for name, p in model.named_parameters())  # no step was taken


@pytest.mark.slow
def test_data_engine_annotator_accepts_only_good_masks_and_counts_clicks():
    """The disc stub (disc_sam) draws roughened discs around the first click, and one of
    radius 12 from the second click on: at accept_iou 0.6 it gets a radius-12 disc at once, a
    radius-10 one after a correction, and never a large or small disc or a bar."""
    model = disc_sam().eval()
    images = [toy_photo(64, 64, seed=3)] * 2
    yy, xx = np.mgrid[0:64, 0:64] + 0.5

    def disc(cy, cx, r):
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2

    bar = (yy > 30) & (yy < 33) & (xx > 5) & (xx < 60)
    first = np.array([disc(44, 20, 5), disc(40, 44, 10), bar, disc(20, 20, 12)])
    second = np.array([disc(32, 32, 18), disc(20, 20, 12)])
    drawn, clicks, accepted = data_engine.click_until_accepted(
        model, images, [first, second], click_budget=3, accept_iou=0.6)
    assert clicks.tolist() == [3, 2, 3, 1, 3, 1]  # the unfinished ones spent the whole budget
    assert accepted.tolist() == [False, True, False, True, False, True]
    truth = torch.from_numpy(np.concatenate([first, second]))
    ious = minisam.mask_iou(torch.from_numpy(drawn), truth)
    assert ((ious >= 0.6) == torch.from_numpy(accepted)).all()

    # the paper's annotator (the default): the model's masks where the clicks finished them,
    # then the true masks it brushed; the brush's work is where the last mask was wrong
    one, two = data_engine.annotate(model, images, [first, second], click_budget=3,
                                    accept_iou=0.6)
    assert one["clicks"].tolist() == [3, 2, 3, 1] and two["clicks"].tolist() == [3, 1]
    assert one["accepted"].tolist() == [False, True, False, True]
    assert np.array_equal(one["masks"], np.stack([drawn[1], drawn[3], first[0], first[2]]))
    assert np.array_equal(two["masks"], np.stack([drawn[5], second[0]]))
    painted = (drawn ^ truth.numpy()).sum((1, 2))
    assert (painted[~accepted] > 0).all()
    assert one["brush"].tolist() == [painted[0], 0, painted[2], 0]
    assert two["brush"].tolist() == [painted[4], 0]
    assert data_engine.annotation_cost([one, two]) == {
        "clicks_per_mask": 13 / 3, "masks": 3, "masks_per_image": 1.5,
        "accepted_fraction": 3 / 6, "brushed_masks": 3,
        "brush_pixels_per_mask": painted[~accepted].sum() / 6}

    # the annotator without a brush spends the same clicks and keeps only the model's masks
    one, two = data_engine.annotate(model, images, [first, second], click_budget=3,
                                    accept_iou=0.6, give_up=True)
    assert one["clicks"].tolist() == [3, 2, 3, 1] and two["clicks"].tolist() == [3, 1]
    assert np.array_equal(one["masks"], drawn[[1, 3]])
    assert np.array_equal(two["masks"], drawn[5:])
    assert one["brush"].tolist() == [0] * 4 and two["brush"].tolist() == [0] * 2
    assert data_engine.annotation_cost([one, two]) == {
        "clicks_per_mask": 13 / 3, "masks": 3, "masks_per_image": 1.5,
        "accepted_fraction": 3 / 6, "brushed_masks": 0, "brush_pixels_per_mask": 0.0}

    # with a budget of one click, every mask costs exactly the first click and the
    # radius-10 disc needs the brush too; an image with nothing to label costs nothing
    once, empty = data_engine.annotate(model, images, [first, first[:0]], click_budget=1,
                                       accept_iou=0.6)
    assert once["clicks"].tolist() == [1] * 4
    assert once["accepted"].tolist() == [False, False, False, True]
    assert np.array_equal(once["masks"], np.stack([drawn[3], first[0], first[1], first[2]]))
    assert empty["masks"].shape == (0, 64, 64) and empty["clicks"].shape == (0,)
    assert data_engine.annotation_cost([empty]) == {
        "clicks_per_mask": 0.0, "masks": 0, "masks_per_image": 0.0, "accepted_fraction": 0.0,
        "brushed_masks": 0, "brush_pixels_per_mask": 0.0}


@pytest.mark.parametrize("argv", [["--quick"], ["--out", "x", "--seed-steps", "0"],
                                  ["--out", "x", "--accept-iou", "1.5"],
                                  ["--out", "x", "--threads", "0"],
                                  ["--out", "x", "--rounds", "3"],
                                  ["--out", "x", "--brush"]])  # the brush is no longer a flag
def test_data_engine_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as e:
        data_engine.parse_args(argv)
    assert e.value.code == 2


@pytest.mark.slow
def test_data_engine_gives_up_only_when_asked(tmp_path):
    assert not data_engine.parse_args(["--out", "x"]).give_up
    assert data_engine.parse_args(["--out", "x", "--give-up"]).give_up
    results = data_engine.main(["--out", str(tmp_path), "--quick", "--give-up", "--threads", "1",
                                "--stage1-rounds", "1", "--stage2-images", "1", "--stage3-images",
                                "1", "--eval-images", "1"])
    assert results["brush"] is False
    assert json.loads((tmp_path / "data_engine.json").read_text())["brush"] is False
    rounds, stage2 = results["stage1"]["rounds"], results["stage2"]
    for cost in (*rounds, stage2):
        assert cost["brushed_masks"] == 0 and cost["brush_pixels_per_mask"] == 0
    # the engine's labels: the seed set's, and only the masks the model drew after that
    seed_set = data_engine.engine_world(data_engine.QUICK, seed=0)[:data_engine.QUICK.seed_images]
    assert results["final"]["engine_masks"] == sum(len(m) for _, m in seed_set) + rounds[0][
        "masks"] + stage2["prefilled_masks"] + stage2["clicked_masks"] + round(
        results["stage3"]["masks_per_image"])


@pytest.mark.slow
def test_data_engine_trains_its_small_steps_on_the_labels_downsized():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 200
    block, speck = np.zeros((2, 64, 64), bool)
    block[10:20, 30:40] = True  # 10 x 10 px: 5 x 5 px at half the size
    speck[50, 50] = True  # a quarter of a pixel at half the size: it vanishes
    small = data_engine.downsized([(image, np.stack([block, speck])), (image, speck[None])], 32)
    assert len(small) == 1  # the image left without a mask is dropped
    small_image, masks = small[0]
    assert small_image.dtype == np.uint8 and small_image.shape == (32, 32, 3)
    assert (small_image[:, :16] == 0).all() and (small_image[:, 16:] == 200).all()
    assert masks.shape == (1, 32, 32) and masks.sum() == 25 and masks[0, 5:10, 15:20].all()
    # a training from scratch ends at full size, whatever size its first steps ran at
    model = minisam.Sam(minisam.CONFIGS["toy"])
    trained = data_engine.train_on_labels(model, [(image, np.stack([block]))],
                                          data_engine.from_scratch(data_engine.Budget(), 2, 0),
                                          log=lambda _: None)
    assert trained.config == model.config and not trained.training
