"""The numbers of the README and the lessons, tied to the JSON files they come from.

A number that a run wrote into lessons/toy_sam.json or lessons/figures/data_engine/*.json is
quoted from here, formatted as the text prints it: retrain, rerun, and the test names every
sentence that still quotes the old run. Numbers that no JSON holds but the code computes in
seconds (a perfect model's ideal head, parameter counts, the exercises' answers) are recomputed;
settings and constants (thresholds, loss weights, learning rates) are read from the code.
"""
import ast
import dataclasses
import inspect
import math
import json
import re
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # minisam, train_toy: as the other scripts of lessons/ do
if str(ROOT / "lessons") not in sys.path:
    sys.path.insert(0, str(ROOT / "lessons"))

import minisam  # noqa: E402
import train_toy  # noqa: E402

TOY = json.loads((ROOT / "lessons" / "toy_sam.json").read_text())
ENGINE = json.loads((ROOT / "lessons" / "figures" / "data_engine" / "data_engine.json").read_text())
GIVE_UP = json.loads((ROOT / "lessons" / "figures" / "data_engine" / "give_up.json").read_text())


def text(name: str) -> str:
    """A doc, with its lines joined: a quoted phrase may wrap anywhere."""
    path = ROOT / name if name == "README.md" else ROOT / "lessons" / name
    return " ".join(path.read_text().split())


def lesson(prefix: str) -> str:
    (path,) = (ROOT / "lessons").glob(f"{prefix}_*.md")
    return text(path.name)


def quoted(doc: str, *phrases: str) -> None:
    missing = [p for p in phrases if p not in doc]
    assert not missing, "not quoted as the JSON says:\n" + "\n".join(missing)


# -----------------------------------------------------------------------------
# The shipped toy model: lessons/toy_sam.json

METRICS, AMG = TOY["metrics"], TOY["automatic_masks"]


def test_readme_results_row_is_the_shipped_json():
    m = METRICS
    row = (f"| `lessons/toy_sam.pt` (shipped) | {m['box_miou']:.3f} | "
           f"{m['one_click_oracle_miou']:.3f} | {m['one_click_miou']:.3f} | "
           f"{m['miou_by_clicks'][4]:.3f} | {m['iou_head_pearson_r']:.3f} | "
           f"{m['train_minutes']:.1f} ")
    readme = text("README.md")
    quoted(readme, row,
           f"`train_toy.evaluate` on {m['targets']} targets in {len(train_toy.EVAL_SEEDS)} "
           "held-out images",
           f"trained for {m['steps']} steps in {len(TOY['runs'])} runs of `train_toy.py`")
    assert TOY["runs"][-1]["command"].split("--steps ")[1].split()[0] == str(m["steps"])


def test_readme_default_run_rows_are_their_metrics_jsons():
    """`python train_toy.py` at seeds 0 and 1, each the only job on the machine: the README's
    two rows (the metrics.json each command wrote) and lesson 13's minutes."""
    readme = text("README.md")
    for seed, label in ((0, "`python train_toy.py` (your run, seed 0)"),
                        (1, "`python train_toy.py --seed 1`")):
        m = json.loads((ROOT / "lessons" / "figures" / "default_run" / f"seed_{seed}.json")
                       .read_text())
        (run,) = m["runs"]
        assert run["command"].split(" --out ")[0] == label.strip("`").split(" (")[0].strip("`")
        assert run["threads"] == 2 and not run["code_changed_since_commit"]
        assert m["steps"] == train_toy.TrainSettings().steps
        quoted(readme, f"| {label} | {m['box_miou']:.3f} | {m['one_click_oracle_miou']:.3f} | "
                       f"{m['one_click_miou']:.3f} | {m['miou_by_clicks'][4]:.3f} | "
                       f"{m['iou_head_pearson_r']:.3f} | {m['train_minutes']:.1f} (2 threads, idle) |")
        if seed == 0:
            quoted(lesson("13"), f"the default run takes {m['train_minutes']:.1f} minutes on two "
                                 "threads of an idle machine")


def test_readme_automatic_mask_sentence_is_the_shipped_json():
    ref = AMG["with_reference_thresholds"]
    settings = AMG["settings"]
    assert {k: settings[k] for k in train_toy.TOY_AMG_SETTINGS} == train_toy.TOY_AMG_SETTINGS
    assert AMG["images"] == train_toy.AMG_EVAL_IMAGES
    quoted(text("README.md"),
           f"Its automatic masks on {AMG['images']} held-out images, matched at IoU >= "
           f"{AMG['match_iou']}",
           f"precision {AMG['precision']:.3f} and recall {AMG['recall']:.3f} with "
           f"`TOY_AMG_SETTINGS` ({AMG['masks_per_image']:.1f} masks per image), "
           f"{ref['precision']:.3f} and {ref['recall']:.3f} with the reference's thresholds "
           f"(predicted IoU {train_toy.REFERENCE_AMG_THRESHOLDS['pred_iou_thresh']}, stability "
           f"{train_toy.REFERENCE_AMG_THRESHOLDS['stability_score_thresh']})")


def test_readme_and_lesson_5_state_the_ideal_head_from_the_json():
    m = METRICS
    ambiguous = m["targets"] - m["unambiguous_targets"]
    quoted(text("README.md"),
           f"{ambiguous} of the {m['targets']} held-out clicks lie in more than one valid mask",
           f"mIoU {m['one_click_miou_ideal_head']:.3f} among the shipped model's, with r "
           f"{m['iou_head_pearson_r_ideal']:.3f}")
    quoted(lesson("05"),
           f"chooses {m['one_click_miou']:.3f} and reaches r {m['iou_head_pearson_r']:.3f}",
           f"the ideal head on the same masks {m['one_click_miou_ideal_head']:.3f} and r "
           f"{m['iou_head_pearson_r_ideal']:.3f}",
           f"on the {m['unambiguous_targets']} clicks that lie in one valid mask only, the real "
           f"head chooses {m['one_click_miou_unambiguous']:.3f} and reaches r "
           f"{m['iou_head_pearson_r_unambiguous']:.3f}")


def test_lesson_5_perfect_model_numbers_are_what_the_code_computes():
    """A perfect model (its three outputs the valid masks at the click) with the ideal head
    (`expected_iou`): the experiments log's block, recomputed (a few seconds)."""
    import numpy as np
    import torch

    chosen, rated, actual, ambiguous = [], [], [], 0
    for seed in train_toy.EVAL_SEEDS:
        masks = torch.from_numpy(train_toy.make_sample(seed)[1])
        clicks = train_toy.interior_point(masks)
        valid = train_toy.valid_at_clicks(masks, torch.zeros(len(masks), dtype=torch.long), clicks)
        ambiguous += int((valid.sum(1) > 1).sum())
        outputs = torch.stack([masks[(row.nonzero()[:, 0].tolist() * 3)[:3]] for row in valid])
        rated.append(train_toy.expected_iou(outputs, masks, valid))
        actual.append(minisam.mask_iou(outputs, masks[:, None]))
        chosen.append(actual[-1][torch.arange(len(masks)), rated[-1].argmax(1)])
    miou = torch.cat(chosen).mean().item()
    r = np.corrcoef(torch.cat(rated).flatten(), torch.cat(actual).flatten())[0, 1]
    assert ambiguous == METRICS["targets"] - METRICS["unambiguous_targets"]
    quoted(lesson("05"), f"chooses masks of mIoU {miou:.3f} and reaches r {r:.3f}",
           f"ambiguity does not cap r at {r:.3f} for every model")
    quoted(text("experiments.md"), f"chooses masks of mIoU {miou:.3f} and reaches r {r:.3f}")


def test_lesson_0_box_number_is_the_json():
    quoted(lesson("00"), f"the single output scores mIoU {METRICS['box_miou']:.3f}")


def test_lesson_7_names_the_json_images_and_the_thresholds():
    doc = lesson("07")
    quoted(doc, f"The title scores {AMG['images']} held-out images",
           f"below the {train_toy.TOY_AMG_SETTINGS['pred_iou_thresh']} of `TOY_AMG_SETTINGS`",
           f"stability {train_toy.TOY_AMG_SETTINGS['stability_score_thresh']}")


# -----------------------------------------------------------------------------
# The data engine: lessons/figures/data_engine/data_engine.json


def test_lesson_8_prose_quotes_the_data_engine_json():
    """The table is tied in test_minisam.py; this ties the prose around it."""
    import data_engine

    doc = lesson("08")
    b = ENGINE["budget"]
    rounds = ENGINE["stage1"]["rounds"]
    images = (b["seed_images"] + b["stage1_rounds"] * b["stage1_images_per_round"]
              + b["stage2_images"] + b["stage3_images"])
    quoted(doc,
           f"{b['seed_images']} images with all their true masks",
           f"{b['stage1_rounds']} rounds of {b['stage1_images_per_round']} pool images",
           f"{b['round_steps']} steps on all labels so far",
           f"on {b['stage2_images']} images, automatic masks within IoU {b['accept_iou']}",
           f"labels the last {b['stage3_images']} images",
           f"the same {images} images",
           f"on {b['eval_images']} held-out images",
           f"after **{b['click_budget']} clicks**",
           f"predicted IoU {data_engine.ENGINE_AMG_SETTINGS['pred_iou_thresh']}, stability "
           f"{data_engine.ENGINE_AMG_SETTINGS['stability_score_thresh']}",
           f"{ENGINE['wall_minutes']:.1f} minutes on a core of its own, and "
           f"{GIVE_UP['wall_minutes']:.1f} with the other core busy",
           # the labelling model after each retraining, stage 1's last included
           f"{ENGINE['stage1']['after_retraining']['miou']:.3f} after stage 1's last retraining",
           f"{ENGINE['stage2']['after_retraining']['miou']:.3f} after stage 2's",
           # the masks-per-image figure, round by round
           ", ".join(f"{r['masks_per_image']:.2f}" for r in rounds)
           + f" masks per image in the three rounds (the table's "
           f"{ENGINE['stage1']['masks_per_image']:.2f} is their mean)",
           f"{ENGINE['stage2']['prefilled_fraction']:.0%} of them pre-filled",
           # pseudo-labelling with the seed model
           f"it keeps {ENGINE['stage3']['pseudo_labelling_with_seed_model']['masks_per_image']:.2f}"
           f" per image (recall "
           f"{ENGINE['stage3']['pseudo_labelling_with_seed_model']['recall']:.2f})")
    quoted(text("experiments.md"),
           f"`ENGINE_AMG_SETTINGS`: predicted IoU {data_engine.ENGINE_AMG_SETTINGS['pred_iou_thresh']}"
           f" and stability {data_engine.ENGINE_AMG_SETTINGS['stability_score_thresh']}",
           f"`ENGINE_AMG_SETTINGS` are IoU {data_engine.ENGINE_AMG_SETTINGS['pred_iou_thresh']} and "
           f"stability {data_engine.ENGINE_AMG_SETTINGS['stability_score_thresh']}")
    accepted = [r["accepted_fraction"] for r in rounds]
    quoted(doc, f"one mask in {round(1 / max(accepted))} to {round(1 / min(accepted))}")


# -----------------------------------------------------------------------------
# Lesson 10: lessons/figures/finetuning/*.json, each the metrics.json finetune.py wrote


def finetuned(name: str) -> dict:
    return json.loads((ROOT / "lessons" / "figures" / "finetuning" / f"{name}.json").read_text())


def test_lesson_10_table_and_exercise_quote_the_finetuning_jsons():
    doc = lesson("10")
    rows = (("drawings", "drawings"), ("sticks", "sticks"), ("giants", "giants"),
            ("drawings_frozen", "drawings, `--freeze-encoder`"))
    for name, label in rows:
        run = finetuned(name)
        before, after = run["before"], run["after"]
        assert run["steps"] == 300 and run["train_encoder"] == (name != "drawings_frozen")
        quoted(doc, f"| {label} | {before['box_miou']:.3f} | {after['box_miou']:.3f} "
                    f"(+{after['box_miou'] - before['box_miou']:.3f}) | "
                    f"{before['iou_head_pearson_r']:.3f} -> {after['iou_head_pearson_r']:.3f} | "
                    f"{run['minutes']:.1f} |")
    runs = [finetuned(name) for name in ("sticks_100", "sticks", "sticks_600")]
    assert [r["steps"] for r in runs] == [100, 300, 600]
    box = [f"{r['after']['box_miou']:.3f}" for r in runs]
    r = [f"{run['after']['iou_head_pearson_r']:.3f}" for run in runs]
    quoted(doc, f"box mIoU {box[0]} after 100 steps, {box[1]} after 300 (the table), {box[2]} "
                f"after 600", f"r goes {r[0]}, {r[1]}, {r[2]}, from "
                f"{runs[0]['before']['iou_head_pearson_r']:.3f} before")
    specialists = json.loads((ROOT / "lessons" / "figures" / "zero_shot" / "specialists.json")
                             .read_text())["worlds"]
    quoted(doc, "reach " + ", ".join(f"{specialists[w]['box']:.3f}" for w in ("drawings", "sticks"))
           + f" and {specialists['giants']['box']:.3f} on its held-out images")


# -----------------------------------------------------------------------------
# Numbers the code computes: parameter counts


def test_lessons_1_and_9_parameter_counts_are_the_models():
    import torch

    with torch.device("meta"):
        vit_h = minisam.Sam(minisam.CONFIGS["vit_h"])
    encoder = vit_h.image_encoder
    count = lambda named: sum(p.numel() for _, p in named)  # noqa: E731
    total = count(encoder.named_parameters())
    blocks = count(encoder.blocks.named_parameters())
    position = encoder.pos_embed.numel()
    neck = count(encoder.neck.named_parameters())
    relative = count((n, p) for n, p in encoder.blocks.named_parameters() if "rel_pos" in n)
    quoted(lesson("01"),
           f"{total / 1e6:.1f}M of {count(vit_h.named_parameters()) / 1e6:.1f}M for ViT-H",
           f"its 32 blocks hold {blocks / 1e6:.1f}M",
           f"its 64x64 position table ({position / 1e6:.1f}M)",
           f"the neck ({neck / 1e6:.1f}M)",
           f"relative position tables ({relative / 1e6:.1f}M)")


# -----------------------------------------------------------------------------
# The README's Speed table: lessons/bench.json, written by `python bench.py --json`


def test_readme_speed_table_is_the_bench_json():
    bench = json.loads((ROOT / "lessons" / "bench.json").read_text())
    rows = {r["row"]: r for r in bench["rows"]}
    seconds, ms = (lambda t: f"{t:.2f} s"), (lambda t: f"{t * 1000:.1f} ms")
    readme = text("README.md")
    quoted(readme, f"an idle 2-core x86-64 CPU, {bench['threads']} threads, torch "
                   f"{bench['torch'].split('+')[0]}")
    assert bench["machine"] == "x86_64" and not bench["quick"]
    for label, row, unit in (
            ("ViT-B image encoder, 1024 px, fp32", "ViT-B encoder 1024px fp32", seconds),
            ("one click, prompt encoder + decoder, ViT-B",
             "one click, prompt encoder + decoder (ViT-B)", ms),
            ("`SamPredictor.predict` per click after `set_image`, ViT-B",
             "SamPredictor.predict per click (ViT-B, 1024x768 image)", ms),
            ("`SamPredictor.predict` per click after `set_image`, toy",
             "SamPredictor.predict per click (toy, 1024x768 image)", ms),
            ("automatic masks, toy model, 32x32 grid", "automatic masks, toy model, 32x32 grid",
             seconds)):
        ours, reference = rows[row]["minisam"], rows[row]["reference"]
        quoted(readme, f"| {label} | {unit(ours)} | {unit(reference)} | {ours / reference:.2f} |")
    (training,) = [r for name, r in rows.items() if name.startswith("toy training, images/s")]
    quoted(readme, f"| toy training, the default step at 64 px | {training['minisam']:.1f} images/s |")
    quoted(text("experiments.md"), f"`python bench.py` measures {training['minisam']:.1f} today")


# -----------------------------------------------------------------------------
# Measured once, quoted twice: the copies must agree


def test_lesson_6_speed_table_is_the_readmes():
    readme, doc = text("README.md"), lesson("06")
    for model, where in (("ViT-B", "`SamPredictor.predict` per click after `set_image`, ViT-B"),
                         ("toy", "`SamPredictor.predict` per click after `set_image`, toy")):
        row = [cell.strip() for cell in readme.split(f"| {where} | ")[1].split("|")[:2]]
        assert f"| {row[0]} | {row[1]} |" in doc, (model, row)


@pytest.mark.parametrize("name", ["README.md", "experiments.md", "00", "01", "03", "05", "06",
                                  "07", "08", "09", "10"])
def test_no_history_in_the_current_text(name):
    doc = text(name) if name.endswith(".md") else lesson(name)
    for phrase in ("the machine where this lesson was written", "the CPU this project ran on",
                   "this machine has none", "at commit "):
        assert phrase not in doc, (name, phrase)


# -----------------------------------------------------------------------------
# Lesson 0: the house's ambiguity and the exercises' answers, recomputed


def house_ious():
    """Lesson 0's block: the house of held-out figure 4, its whole / part / subpart IoUs."""
    image, masks, parents = train_toy.make_world(4)
    sub = next(k for k in range(len(masks)) if parents[k] >= 0 and parents[parents[k]] >= 0)
    chain = [parents[parents[sub]], parents[sub], sub]
    nested = torch.from_numpy(masks[chain])
    return minisam.mask_iou(nested[:, None], nested[None])


def test_lesson_0_house_ious_and_the_cost_of_hedging():
    """The IoUs the prose reads off the block's matrix, and exercise 2's row minima."""
    iou = house_ious()
    doc = lesson("00")
    quoted(doc, f"overlap well (IoU {iou[0, 1]:.2f}), but the window scores {iou[0, 2]:.2f} "
                f"against the house and {iou[1, 2]:.2f} against the walls")
    worst = torch.where(torch.eye(3, dtype=torch.bool), 1.0, iou).amin(1)  # against the others
    quoted(doc, f"The minimum of each row of the matrix is {worst[0]:.2f} (house), "
                f"{worst[1]:.2f} (walls) and {worst[2]:.2f} (window)")
    assert worst.argmax() == 1 and worst.max() < 0.5  # "the walls are the safest ... below 0.5"


def test_lesson_0_unambiguous_click_of_exercise_1():
    """Seed 0's object without parts, its interior point, and the masks containing it."""
    _, masks, parents = train_toy.make_world(0)
    plain = [k for k in range(len(masks)) if parents[k] < 0 and k not in parents]
    (k,) = plain
    x, y = train_toy.interior_point(torch.from_numpy(masks[k])[None])[0].long().tolist()
    assert [j for j in range(len(masks)) if masks[j][y, x]] == [k]
    quoted(lesson("00"), f"Seed 0, mask {k} (parents {parents[k]}, nobody's parent): the click "
                         f"at its `interior_point` ({x}, {y}) lies in mask {k} only")


@pytest.mark.slow
@torch.no_grad()
def test_lesson_0_exercises_on_the_shipped_model():
    """Exercise 1: the three outputs on every plain object's interior click; exercise 3: a
    tight box through the single output and through the best-scored of three."""
    model = minisam.build_sam("toy", checkpoint=ROOT / "lessons" / "toy_sam.pt").eval()
    plain_ious, single, best_scored, images = [], [], [], 0
    for start in range(0, len(train_toy.EVAL_SEEDS), train_toy.EVAL_IMAGES_PER_BATCH):
        worlds = [train_toy.make_world(seed)
                  for seed in train_toy.EVAL_SEEDS[start:start + train_toy.EVAL_IMAGES_PER_BATCH]]
        pixels = torch.stack([torch.from_numpy(w[0]).permute(2, 0, 1).float() for w in worlds])
        embeddings = model.image_encoder(model.preprocess(pixels))
        index = torch.cat([torch.full((len(w[1]),), i) for i, w in enumerate(worlds)])
        targets = torch.from_numpy(np.concatenate([w[1] for w in worlds]))
        plain = torch.tensor([p[k] < 0 and k not in p for _, _, p in worlds for k in range(len(p))])
        clicks = train_toy.interior_point(targets)[:, None]
        masks, _, _ = train_toy.decode(model, embeddings[index], clicks,
                                       torch.ones(len(targets), 1, dtype=torch.long),
                                       multimask=True)
        plain_ious.append(minisam.mask_iou(masks, targets[:, None])[plain])
        boxes = minisam.batched_mask_to_box(targets).float()
        masks, _, _ = train_toy.decode(model, embeddings[index], boxes=boxes)
        single.append(minisam.mask_iou(masks[:, 0], targets))
        masks, predicted, _ = train_toy.decode(model, embeddings[index], boxes=boxes,
                                               multimask=True)
        rows = torch.arange(len(targets))
        best_scored.append(minisam.mask_iou(masks[rows, predicted.argmax(1)], targets))
        images += len(worlds)
    plain_ious, single = torch.cat(plain_ious), torch.cat(single)
    outputs = ", ".join(f"{v:.3f}" for v in plain_ious.mean(0)[:2])
    quoted(lesson("00"),
           f"clicked so on the {len(plain_ious)} plain objects of the {images} held-out images, "
           f"scores mean IoU {outputs} and {plain_ious.mean(0)[2]:.3f} with its three outputs",
           f"With tight boxes on the {METRICS['targets']} held-out toy targets, the single output "
           f"scores mIoU {single.mean():.3f}, the best-scored of three outputs "
           f"{torch.cat(best_scored).mean():.3f}")
    assert len(single) == METRICS["targets"]


# -----------------------------------------------------------------------------
# Lesson 4: the loss's settings, read from minisam.py, and the exercises' answers recomputed


def test_lesson_4_quotes_the_losses_settings():
    """focal_loss's gamma and alpha, and sam_loss's weights, measured on one prompt: loss =
    w_focal * focal + w_dice * dice + w_iou * MSE of the chosen output."""
    defaults = inspect.signature(minisam.focal_loss).parameters
    gamma, alpha = defaults["gamma"].default, defaults["alpha"].default
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(1, 1, 8, 8, generator=g), torch.rand(1, 8, 8, generator=g) > 0.5
    parts = [minisam.sam_loss(logits, torch.full((1, 1), p), target)[1] for p in (0.0, 0.5)]
    losses = [minisam.sam_loss(logits, torch.full((1, 1), p), target)[0] for p in (0.0, 0.5)]
    iou_weight = (losses[1] - losses[0]) / (parts[1]["iou_mse"] - parts[0]["iou_mse"])
    focal, dice = minisam.focal_loss(logits, target[:, None].float())[0, 0], parts[0]["dice"]
    focal_weight = (losses[0] - dice - iou_weight * parts[0]["iou_mse"]) / focal
    w, one = round(focal_weight.item(), 3), round(iou_weight.item(), 3)
    assert w == int(w) and one == 1  # whole numbers, quoted as such
    smoothing = re.search(r"\(2 \* \(p \* t\)\.sum\(-1\) \+ (\d+)\) / \(p\.sum\(-1\) \+ "
                          r"t\.sum\(-1\) \+ (\d+)\)", inspect.getsource(minisam.dice_loss)).groups()
    (plus,) = set(smoothing)  # the same in both
    nothing = torch.full((1, 4, 4), -100.0)
    assert minisam.dice_loss(nothing, torch.zeros(1, 4, 4)).item() == 0  # "a perfect 0"
    threshold = minisam.Sam(minisam.CONFIGS["toy"]).mask_threshold
    doc = lesson("04")
    quoted(doc, f"**focal loss + dice loss, weighted {w:.0f}:1**",
           f"with +{plus} in numerator and denominator",
           f"the thresholded mask (logit > {threshold:g})",
           f"gamma = {gamma:g}, alpha = {alpha:g} for foreground pixels",
           f"p_t = 0.9 now weighs (0.1)^{gamma:g} = {0.1 ** gamma:.0%} of its BCE",
           f"{w:.0f}:1 weighting", f"A weight of {w:.0f} brings focal's",
           f"with MSE, weight {one:.0f}", f"`sam_loss` instead computes {w:.0f} x focal + dice")


def test_lesson_4_small_object_numbers():
    """A 50-pixel object missed in a 1024x1024 image: its share of the pixels, and dice."""
    side = minisam.CONFIGS["vit_h"].image_size
    target = torch.zeros(side, side)
    target.view(-1)[:50] = 1
    dice = minisam.dice_loss(torch.full((side, side), -20.0), target).item()
    quoted(lesson("04"), f"50-pixel object entirely in a {side}x{side} image",
           f"(the object is {50 / side**2:.3%} of the pixels), but a dice loss of {dice:.0f}.")


def figure_code(name: str) -> str:
    """The source of one figure function of lessons/make_figures.py, read without importing."""
    source = (ROOT / "lessons" / "make_figures.py").read_text()
    (node,) = [n for n in ast.parse(source).body if getattr(n, "name", None) == name]
    return ast.get_source_segment(source, node)


LOSSES_FIGURE = figure_code("losses")
PANEL_C = ast.literal_eval(re.search(r"width, centre, halfs = (.*)", LOSSES_FIGURE).group(1))
PANEL_C_STEPS = int(re.search(r"for _ in range\((\d+)\):", LOSSES_FIGURE).group(1))


def half_widths(init, combine="min", focal_weight=20.0, dice_weight=1.0, width=PANEL_C[0]):
    """Panel (c) of the `losses` figure (lessons/make_figures.py), with the minimum over outputs
    replaced by `combine` and the 20:1 weights by others: each output a soft interval of
    learnable half-width around a click, trained by Adam on random nested targets."""
    centre, halfs = width / 2, PANEL_C[2]
    x = torch.arange(width) + 0.5
    targets = torch.stack([(x - centre).abs() < h for h in halfs])[:, None]
    torch.manual_seed(0)
    r = torch.tensor(init, requires_grad=True)
    optimiser = torch.optim.Adam([r], lr=0.3)
    for _ in range(PANEL_C_STEPS):
        pick = torch.randint(3, (16,))
        logits = (1.5 * (r[:, None] - (x - centre).abs()))[None, :, None, :].expand(16, -1, -1, -1)
        t = targets[pick].float()[:, None].expand_as(logits)
        if combine == "sam_loss":  # the figure's own call
            loss = minisam.sam_loss(logits, torch.zeros(16, len(init)), targets[pick])[0]
        else:
            per_output = (focal_weight * minisam.focal_loss(logits, t)
                          + dice_weight * minisam.dice_loss(logits, t))
            loss = (per_output.min(1).values if combine == "min" else per_output.mean(1)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return r.detach()


def test_lesson_4_exercise_1_mean_instead_of_min():
    """Three outputs trained through the mean of their losses, against the figure's min."""
    mean = half_widths([14.0, 15.0, 16.0], "mean")
    one, minimum = half_widths([15.0], "sam_loss"), half_widths([14.0, 15.0, 16.0], "sam_loss")
    f = lambda r: ", ".join(f"{v:.2f}" for v in r[:-1]) + f" and {r[-1]:.2f}"  # noqa: E731
    whole, part, subpart = (f"{h:g}" for h in PANEL_C[2])
    best = ", ".join(f"{v:.2f}" for v in minimum)
    quoted(lesson("04"), f"half-widths {f(mean)} after {PANEL_C_STEPS} steps (one output: "
                         f"{one[0]:.2f}; with the minimum: {best}), none near the whole "
                         f"({whole}), the part ({part}) or the subpart ({subpart})")


@pytest.mark.slow
def test_lesson_4_exercise_2_other_weights():
    """1:1 and 20:0 instead of 20:1, on the figure's 64-pixel line and on one 1024 wide."""
    start = [14.0, 15.0, 16.0]
    assert torch.equal(half_widths(start, "sam_loss"), half_widths(start))  # the same minimum
    f = lambda r: ", ".join(f"{v:.1f}" for v in r)  # noqa: E731
    even, focal_only = half_widths(start, dice_weight=1.0, focal_weight=1.0), half_widths(
        start, dice_weight=0.0)
    wide_even = half_widths(start, focal_weight=1.0, width=1024)
    wide_focal = half_widths(start, dice_weight=0.0, width=1024)
    assert f(half_widths(start, focal_weight=1.0, dice_weight=0.0, width=1024)) == f(wide_focal)
    assert f(focal_only) == f(wide_focal)
    subpart = 2 * PANEL_C[2][2] / 1024
    quoted(lesson("04"), f"1:1 ends at half-widths {f(even)} ({f(wide_even)} on an image 1024 "
                         f"pixels wide, the subpart {subpart:.1%} of it) and 20:0 at "
                         f"{f(focal_only)} on both")


def test_lesson_4_exercise_3_iou_head_trained_on_the_best_output_only():
    """Three fixed masks for a 12x12 target, their predicted IoUs trained 300 SGD steps, by
    sam_loss (every output) or by the chosen output's squared error alone."""
    target = torch.zeros(1, 16, 16, dtype=torch.bool)
    target[0, 2:14, 2:14] = True
    masks = torch.zeros(1, 3, 16, 16, dtype=torch.bool)
    masks[0, 0, 3:13, 3:13] = masks[0, 1, 6:10, 6:10] = True  # 10x10 and 4x4 inside; empty
    logits = masks.float() * 20 - 10
    actual = minisam.mask_iou(masks, target[:, None])[0]
    start = torch.tensor([[0.5, 0.8, 0.9]])
    heads = {}
    for every in (True, False):
        head = start.clone().requires_grad_()
        optimiser = torch.optim.SGD([head], lr=0.1)
        for _ in range(300):
            loss, parts = minisam.sam_loss(logits, head, target)
            if not every:
                best = parts["best"][0]
                loss = (head[0, best] - actual[best]) ** 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        heads[every] = head.detach()[0]
    assert torch.equal(heads[False][1:], start[0, 1:])  # never the best: never trained
    assert heads[False].argmax() == 2  # so the predictor picks the empty mask
    untouched = ", ".join(f"{v:g}" for v in start[0, 1:])
    quoted(lesson("04"), f"A 12x12 target; outputs: a 10x10 square in it (IoU {actual[0]:.2f}), a 4x4 square "
                         f"({actual[1]:.2f}), an empty mask ({actual[2]:.0f}); the head starts "
                         f"at {start[0, 0]:g}, {untouched}",
           f"best-only MSE gives {heads[False][0]:.2f}, {untouched} after 300 steps",
           "supervising all gives " + ", ".join(f"{v:.2f}" for v in heads[True]))


@torch.no_grad()
def test_lesson_4_focal_and_dice_on_the_first_training_batch():
    """The two losses' scales: step 0's batch of the default run, random and shipped model."""
    settings = train_toy.TrainSettings()
    measured = []
    torch.manual_seed(0)
    for model in (minisam.Sam(minisam.CONFIGS["toy"]),
                  minisam.build_sam("toy", checkpoint=ROOT / "lessons" / "toy_sam.pt")):
        batch = train_toy.training_batch(0, settings.seed, 0, settings.images_per_step,
                                         settings.targets_per_image, model.config.image_size)
        trainer = train_toy.InteractiveTraining(model, settings.iters, settings.no_click_passes)
        measured.append(trainer(*batch)[1])
    (random, shipped) = measured
    quoted(lesson("04"), f"focal {random['focal']:.2f} and dice {random['dice']:.2f} for a random "
                         f"toy model, {shipped['focal']:.1g} and {shipped['dice']:.2g} for the "
                         "shipped one")


# -----------------------------------------------------------------------------
# Lesson 5: the training settings, read from train_toy.py; the exercises' answers recomputed

WORDS = {1: "once", 2: "twice", 3: "three", 4: "four", 5: "five", 6: "six"}


def test_lesson_5_quotes_the_default_run_settings():
    """TrainSettings' defaults, make_optimizer's AdamW and learning_rate's step decays."""
    s, toy = train_toy.TrainSettings(), minisam.CONFIGS["toy"]
    group = train_toy.make_optimizer(minisam.Sam(toy), s.lr).param_groups[0]
    total = 5400  # a multiple of 27 and of 20, so both decays land on whole steps
    rates = [train_toy.learning_rate(k, total, 1.0, s.warmup) for k in range(total)]
    decays = [k for k in range(s.warmup + 1, total) if rates[k] < rates[k - 1]]
    (factor,) = {round(rates[k - 1] / rates[k]) for k in decays}
    assert len(decays) == 2 and rates[s.warmup - 1] == 1.0
    small_grid, grid = s.small_size // toy.patch_size, toy.image_size // toy.patch_size
    assert (small_grid / grid) ** 2 == 0.25  # "a quarter"
    lr = f"{s.lr:.0e}".replace("e-0", "e-")
    quoted(lesson("05"),
           f"The toy's default is {s.iters} passes (a first prompt and "
           f"{s.iters - 1 - s.no_click_passes} corrective clicks, `--iters {s.iters} "
           f"--no-click-passes {s.no_click_passes}`)",
           f"AdamW (betas {group['betas'][0]:g}, {group['betas'][1]:g}, weight decay "
           f"{group['weight_decay']:g}), learning rate {lr} after {s.warmup} warmup steps, "
           f"divided by {factor} at {decays[0] / total:.0%} and at "
           f"{Fraction(decays[1], total)} of training",
           f"The default run is {s.steps} steps of {s.images_per_step} images x "
           f"{s.targets_per_image} targets x {s.iters} passes",
           f"the first {s.small_steps / s.steps:.0%} of the steps see the world rendered at "
           f"{s.small_size} px, an {small_grid}x{small_grid} token grid, a quarter",
           f"the rest see it at {toy.image_size} px",
           f"Both climb slowly at {s.small_size} px (each point scores the model resized to "
           f"{toy.image_size} px)", f"steps of the switch to {toy.image_size} px",
           f"Each point scores the first {train_toy.CURVE_IMAGES} held-out images "
           f"(`CURVE_IMAGES`), so the curves end near, not at, the README's numbers on all "
           f"{len(train_toy.EVAL_SEEDS)}",
           f"The shipped run was resumed {WORDS[len(TOY['runs']) - 1]} times")


def test_lesson_5_quotes_the_box_noise():
    """noisy_box's standard deviation, measured, and the cap InteractiveTraining gives it."""
    masks = torch.zeros(5000, 64, 64, dtype=torch.bool)
    masks[:, 10:50, 10:50] = True  # a box side of 40 pixels: the cap of 20 px is not reached
    noise = train_toy.noisy_box(masks, torch.Generator().manual_seed(0), max_noise=1e9)
    share = (noise - minisam.batched_mask_to_box(masks)).std() / 40
    cap, side = re.search(r"max_noise=(\d+) \* S / (\d+)",
                          inspect.getsource(train_toy.InteractiveTraining)).groups()
    quoted(lesson("05"), f"(standard deviation {share:.0%} of the box side, at most {cap} pixels "
                         f"at {side} px; `noisy_box` scales that to the toy's "
                         f"{minisam.CONFIGS['toy'].image_size})")


def test_lesson_5_exercise_2_next_click_rules():
    """A 14x14 target predicted one pixel short all round, plus a 5x5 spill elsewhere."""
    target = torch.zeros(1, 32, 32, dtype=torch.bool)
    target[0, 2:16, 2:16] = True
    prediction = torch.zeros_like(target)
    prediction[0, 3:15, 3:15] = prediction[0, 22:27, 22:27] = True
    ring, spill = target & ~prediction, prediction & ~target
    click, label = train_toy.largest_error_click(prediction, target)
    x, y = click[0].long().tolist()
    first = ring[0].nonzero()[0].tolist()  # raster order: (y, x)
    assert ring[0, y, x] and [y, x] == first and label.item() == 1  # foreground
    paper = train_toy.interior_point(prediction ^ target)[0].long()  # the whole error region
    px, py = paper.tolist()
    assert spill[0, py, px] and not target[0, py, px]  # background
    centre = spill[0].nonzero().float().mean(0)
    assert [py, px] == centre.long().tolist()
    outside = (~spill[0]).nonzero()
    depth = (outside - torch.tensor([py, px])).abs().amax(1).min().item()  # chessboard
    diagonal = np.eye(2, dtype=bool)  # two pixels meeting at a corner: one piece
    assert len(np.unique(minisam.connected_components(diagonal))) == 2  # background and one
    quoted(lesson("05"), "keeps the largest 8-connected piece of the",
           "compare it with `largest_error_click` on a 14x14 target predicted one pixel short all "
           "round, plus a 5x5 spill elsewhere",
           f"The ring of misses ({int(ring.sum())} pixels) is the largest piece",
           f"the centre of the {int(spill.sum())}-pixel spill (background), {depth} pixels from "
           "its boundary")


def test_lesson_5_exercise_3_position_tables():
    """resize_sam from the small size to the full one: which tables change, and their rows."""
    s, toy = train_toy.TrainSettings(), minisam.CONFIGS["toy"]
    small = minisam.Sam(dataclasses.replace(toy, image_size=s.small_size))
    grown = train_toy.resize_sam(small, toy.image_size)
    rows = lambda model, block: model.image_encoder.blocks[block].attn.rel_pos_h.shape[0]  # noqa
    glob = toy.encoder_global_attn_indexes[0]
    windowed = next(i for i in range(toy.encoder_depth) if i not in toy.encoder_global_attn_indexes)
    g_small, g = s.small_size // toy.patch_size, toy.image_size // toy.patch_size
    assert (rows(small, glob), rows(grown, glob)) == (2 * g_small - 1, 2 * g - 1)
    assert rows(small, windowed) == rows(grown, windowed) == 2 * toy.window_size - 1
    quoted(lesson("05"), f"a global block's S is the grid ({g_small}, then {g}: "
                         f"{rows(small, glob)} rows, then {rows(grown, glob)}), a windowed "
                         f"block's the window, {toy.window_size} tokens at both sizes")


def test_lesson_5_quotes_the_experiments_log():
    """Measured once in the log (training runs, no JSON), quoted in the lesson: the copies agree."""
    log, doc = text("experiments.md"), lesson("05")
    worse = re.search(r"\(`--iters 3 --no-click-passes 2`, (\d+) steps, on an earlier world\) "
                      r"scored box \S+ but got \*worse\* with every click \((\S+) after 1, (\S+) "
                      r"after 9\)", log)
    steps, one, nine = worse.groups()
    quoted(doc, f"(measured on an earlier world, {steps} steps: mIoU {one} after 1 click, {nine} "
                "after 9)")
    (sooner,) = re.findall(r"the plateau ends (\S+) steps sooner", log)
    quoted(doc, f"{sooner} steps sooner")


# -----------------------------------------------------------------------------
# Lesson 7: the generator's defaults and the toy's settings, read from the code


def test_lesson_7_quotes_the_generators_defaults():
    """SamAutomaticMaskGenerator's defaults (the reference's), and what follows from them."""
    default = {name: p.default for name, p in
               inspect.signature(minisam.SamAutomaticMaskGenerator.__init__).parameters.items()}
    side, outputs = default["points_per_side"], minisam.CONFIGS["vit_h"].num_multimask_outputs
    offset = default["stability_score_offset"]
    low, high = torch.sigmoid(torch.tensor([-offset, offset])).tolist()
    reference = train_toy.REFERENCE_AMG_THRESHOLDS
    assert reference == {k: default[k] for k in reference}
    _, layers = minisam.generate_crop_boxes((64, 64), 3, default["crop_overlap_ratio"])
    assert [layers.count(i) for i in range(4)] == [(2**i) ** 2 for i in range(4)]
    threshold = minisam.Sam(minisam.CONFIGS["toy"]).mask_threshold
    diagonal = np.eye(2, dtype=bool)  # two pixels meeting at a corner: one piece
    assert len(np.unique(minisam.connected_components(diagonal))) == 2  # background and one
    doc = lesson("07")
    quoted(doc, f"(`build_point_grid`: {side} x {side} cell centres by default)",
           f"threshold the same logits at {threshold:g} - delta and at {threshold:g} + delta",
           "built on our 8-connected `connected_components`",
           f"{side * side * outputs} candidate masks per image",
           f"`points_per_batch` ({default['points_per_batch']})",
           f"`pred_iou_thresh` ({default['pred_iou_thresh']})",
           f"`stability_score_offset`, {offset})",
           f"compares the mask at p > {low:.2f} with the mask at p > {high:.2f}",
           f"`stability_score_thresh` ({default['stability_score_thresh']})",
           f"`box_iou` above {default['box_nms_thresh']}",
           "into 2^i x 2^i overlapping crops",
           f"The reference's thresholds ({reference['pred_iou_thresh']}, "
           f"{reference['stability_score_thresh']})",
           f"that match a true mask (IoU >= {train_toy.MATCH_IOU})",
           f"A mask counts as right at IoU >= {train_toy.MATCH_IOU} with some true mask",
           f"about one grid point per ({minisam.CONFIGS['toy'].image_size} / points_per_side)^2")


@torch.no_grad()
def test_lesson_7_stability_figures_left_mask():
    """The `stability_score` figure's most stable right mask: its predicted IoU, below the
    toy's threshold (the figure's choice, recomputed)."""
    model = minisam.build_sam("toy", checkpoint=ROOT / "lessons" / "toy_sam.pt")
    generator = minisam.SamAutomaticMaskGenerator(model, **train_toy.TOY_AMG_SETTINGS)
    image, truths = train_toy.make_sample(train_toy.EVAL_SEEDS[train_toy.AMG_IMAGE])
    predictor = generator.predictor
    predictor.set_image(image)
    points = generator.point_grids[0] * np.array(image.shape[1::-1])
    coords = torch.from_numpy(predictor.transform.apply_coords(points, image.shape[:2]))
    logits, predicted, _ = predictor.predict_torch(
        coords.float()[:, None], torch.ones(len(points), 1, dtype=torch.int), return_logits=True)
    logits, predicted = logits.flatten(0, 1), predicted.flatten()
    stability = minisam.calculate_stability_score(logits, model.mask_threshold,
                                                  generator.stability_score_offset)
    masks = logits > model.mask_threshold
    large = masks.flatten(1).sum(1) >= image.shape[0] * image.shape[1] // 128
    right = (minisam.mask_iou(masks[:, None], torch.from_numpy(truths)[None]).amax(1)
             >= train_toy.MATCH_IOU)
    assert (large & right).any()
    left = torch.where(large & right, stability, -torch.inf).argmax()
    assert stability[left] >= generator.stability_score_thresh > 0  # it passes the test
    assert predicted[left] < generator.pred_iou_thresh  # and is dropped at step 2
    quoted(lesson("07"), f"its predicted IoU, {predicted[left]:.2f}, is below the "
                         f"{generator.pred_iou_thresh} of `TOY_AMG_SETTINGS`")


# -----------------------------------------------------------------------------
# Lesson 2: the prompt encoder's sizes, read from a full-size model; the exercises recomputed


def test_lesson_2_quotes_the_full_size_prompt_encoder():
    """Widths, the Gaussian matrix, the learned embeddings and the mask path of ViT-H's
    prompt encoder, and the bandwidths of the `fourier_features` figure."""
    cfg = minisam.CONFIGS["vit_h"]
    encoder = minisam.PromptEncoder(cfg)
    dim = cfg.prompt_embed_dim
    two, feats = encoder.pe_layer.positional_encoding_gaussian_matrix.shape
    std = minisam.FourierPositionalEncoding(10**5).positional_encoding_gaussian_matrix.std()
    convs = [m for m in encoder.mask_downscaling if isinstance(m, torch.nn.Conv2d)]
    strides = [c.stride[0] for c in convs]
    mask_side, grid = encoder.mask_input_size[0], cfg.image_embedding_size
    assert mask_side // grid == math.prod(strides) and strides.count(2) == 2
    offset = float(re.search(r"coords = coords \+ ([0-9.]+)",
                             inspect.getsource(minisam.PromptEncoder._embed_points)).group(1))
    tokens = encoder._embed_points(torch.tensor([[[10.0, 10.0]]]), torch.tensor([[1]]), pad=True)
    centre = encoder.pe_layer(torch.tensor([[10.0 + offset] * 2]), encoder.input_image_size)
    assert torch.equal(tokens[0, 0], centre[0] + encoder.point_embeddings[1].weight[0])
    assert torch.equal(tokens[0, 1], encoder.not_a_point_embed.weight[0])  # the padding, label -1
    scales = ast.literal_eval(re.search(r"for scale in (\(.*\)):",
                                        figure_code("fourier_features")).group(1))
    doc = lesson("02")
    quoted(doc, f"vectors of its width ({dim})", f"one {dim}-d vector per point or corner",
           f"becomes a {dim}-channel map",
           f"matrix B of shape ({two}, {feats}), std {std:.0f}: {feats} projections",
           f"for those {feats} angles a: a {2 * feats}-d vector",
           f"(squared norm {feats})", f"divided by {feats} is a cosine",
           f"std {scales[0]:g} is too blurry", f"std {scales[2]:g} is so sharp",
           f"std {scales[1]:g} is SAM's choice at {cfg.image_size} px",
           f"`point_embeddings` ({len(encoder.point_embeddings)} of them",
           f"Coordinates get +{offset:g} first", "one extra token (label -1)",
           f"A **mask** prompt arrives at {mask_side // grid}x the embedding's resolution "
           f"({mask_side}x{mask_side} at full size",
           f"shrinks it {math.prod(strides)}x with two stride-2 convolutions",
           f"lifts it to {convs[-1].out_channels} channels with a {convs[-1].kernel_size[0]}x"
           f"{convs[-1].kernel_size[0]} conv", f"every cell of the {grid}x{grid}")


def test_lesson_2_exercise_1_bandwidth():
    """Cosine similarity of a full-size encoding with itself moved by one patch and by ten,
    over seeds and along x or y; then with the Gaussian matrix times 10."""
    cfg = minisam.CONFIGS["vit_h"]
    side, patch, seeds = cfg.image_size, cfg.patch_size, range(5)

    def similarities(pixels, scale):
        found = []
        for seed in seeds:
            torch.manual_seed(seed)
            pe = minisam.PromptEncoder(cfg).pe_layer
            feats = pe.positional_encoding_gaussian_matrix.shape[1]
            pe.positional_encoding_gaussian_matrix *= scale
            for move in ([pixels / side, 0.0], [0.0, pixels / side]):
                e = pe.encode(torch.tensor([[0.5, 0.5], [0.5 + move[0], 0.5 + move[1]]]))
                found.append((e[0] @ e[1] / feats).item())
        return min(found), max(found)

    near, far = similarities(patch, 1), similarities(10 * patch, 1)
    sharp_near, sharp_far = similarities(patch, 10), similarities(10 * patch, 10)
    span = lambda pair: f"{pair[0]:.2f} to {pair[1]:.2f}"  # noqa: E731
    quoted(lesson("02"), f"(std 1, {cfg.prompt_embed_dim // 2} frequencies, {side} px)",
           f"moved by {patch} px (one patch) and by {10 * patch} px",
           f"Measured over {len(seeds)} seeds, moving along x or y: std 1 gives {span(near)} at "
           f"{patch} px and {span(far)} at {10 * patch} px; times 10, {span(sharp_near)} at "
           f"{patch} px and {span(sharp_far)} at {10 * patch} px")


def test_lesson_2_exercise_3_the_padding_token():
    """The random toy decoder of the lesson's block and the shipped one, clicked at the README's
    point on its held-out image: the prompt tokens permuted, and the padding token dropped."""
    image = train_toy.make_sample(train_toy.EVAL_SEEDS[0])[0]
    readme_click = re.search(r"point_coords=np\.array\(\[\[(\d+), (\d+)\]\]\)", text("README.md"))
    click = [int(v) for v in readme_click.groups()]
    torch.manual_seed(0)
    found = {}
    for name, sam in (("random", minisam.Sam(minisam.CONFIGS["toy"]).eval()),
                      ("shipped", minisam.build_sam("toy", ROOT / "lessons" / "toy_sam.pt"))):
        predictor = minisam.SamPredictor(sam)
        predictor.set_image(image)
        pe, decoder = sam.prompt_encoder, sam.mask_decoder
        point = torch.tensor([[click]], dtype=torch.float)
        box = torch.tensor([[8.0, 12.0, 40.0, 50.0]])
        with torch.no_grad():
            def decode(tokens):
                return decoder(predictor.features, pe.get_dense_pe(), tokens,
                               pe(points=None, boxes=None, masks=None)[1], True)[0]

            sparse = pe(points=(point, torch.tensor([[1]])), boxes=None, masks=None)[0]
            with_box = pe(points=(point, torch.tensor([[1]])), boxes=box, masks=None)[0]
            logits = decode(sparse)
            order = max((logits - decode(sparse.flip(1))).abs().max(),
                        (decode(with_box) - decode(with_box[:, [1, 0, 2]])).abs().max())
            dropped = decode(sparse[:, :1])
        found[name] = (order, (logits - dropped).abs().max(), logits.std(),
                       ((logits > 0) != (dropped > 0)).float().mean())
    order, moved, std, flipped = found["random"]
    quoted(lesson("02"), f"moves the logits by about {order:.0e}".replace("e-0", "e-"),
           f"clicked at ({click[0]}, {click[1]}) on the README's held-out image, dropping the "
           f"padding moves the random decoder's logits by up to {moved:.3f} (their std is "
           f"{std:.3f}; {flipped:.1%} of pixels change sign) and the shipped toy model's by up to "
           f"{found['shipped'][1]:.1f}")


def test_every_lessons_pytest_command_selects_the_lesson():
    """`-k NAME` in a lesson's header must match that lesson's file (test_minisam.py's ids)."""
    for path in sorted((ROOT / "lessons").glob("[0-9][0-9]_*.md")):
        header = " ".join(path.read_text().split())
        for selector in re.findall(r"test_minisam\.py -k (\S+?)`", header):
            assert selector in path.name, (path.name, selector)


def fit_mlp(inputs: torch.Tensor, target: torch.Tensor, steps: int, lr: float, hidden: int):
    """Exercise 2's MLP (two hidden ReLU layers), fitted full-batch from seed 0: its mask."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(inputs.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, 1))
    optimiser = torch.optim.Adam(mlp.parameters(), lr)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(mlp(inputs)[:, 0],
                                                                    target.flatten().float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return (mlp(inputs)[:, 0] > 0).view(target.shape)


@pytest.mark.slow
def test_lesson_2_exercise_2_raw_coordinates_against_fourier_features():
    """Thin concentric rings fitted from raw centred (x, y) and from `encode` of them (the
    toy's frequencies); one ring alone from raw (x, y)."""
    steps, lr, hidden, width, every, side = 2000, 1e-3, 128, 2, 6, 64
    yy, xx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    radius = ((yy - side / 2) ** 2 + (xx - side / 2) ** 2).sqrt()
    rings, ring = radius % every < width, (radius >= 18) & (radius <= 21)
    unit = torch.stack([xx, yy], -1).reshape(-1, 2) / side  # in [0, 1], as `encode` takes them
    torch.manual_seed(0)
    pe = minisam.Sam(minisam.CONFIGS["toy"]).prompt_encoder.pe_layer
    raw = fit_mlp(2 * unit - 1, rings, steps, lr, hidden)
    fourier = fit_mlp(pe.encode(unit), rings, steps, lr, hidden)
    one_ring = fit_mlp(2 * unit - 1, ring, steps, lr, hidden)
    assert f"{minisam.mask_iou(one_ring, ring):.2f}" == "1.00"  # "draw it exactly too"
    # the raw fit's exact IoU depends on the summation order (threads, CPU) over 2000 steps:
    # 0.13 to 0.19 seen over seeds and thread counts, so the lesson states a bound
    bound = float(re.search(r"raw \(x, y\) stay under IoU (\S+) with", lesson("02")).group(1))
    assert minisam.mask_iou(raw, rings) < bound
    quoted(lesson("02"), f"{side}x{side} binary image of thin concentric rings",
           f"(rings {width} px wide every {every} px, {int(rings.sum())} pixels; two hidden "
           f"layers of {hidden}, Adam at {lr:.0e}".replace("e-0", "e-")
           + f", {steps} full-batch steps, seed 0)",
           f"`encode` (the toy's {pe.positional_encoding_gaussian_matrix.shape[1]} frequencies) "
           f"draws them exactly (IoU {minisam.mask_iou(fourier, rings):.2f})")


def test_lesson_5_describes_the_simulated_annotation_figure():
    """The figure's passes, as make_figures.py draws them: panels, corrective clicks, the rest."""
    code = figure_code("simulated_annotation")
    passes = int(re.search(r"plt\.subplots\(1, (\d+)", code).group(1))
    corrective = ast.literal_eval(re.search(r"if it in (\(.*\)):", code).group(1))
    assert len(corrective) == 2  # "both"
    quoted(lesson("05"), f"The shipped model through {WORDS[passes]} passes on one held-out target",
           "both corrective clicks land on missed pixels",
           f"the {['no', 'one', 'two'][passes - 1 - len(corrective)]} passes without a new click")


@torch.no_grad()
def test_lesson_0_hero_clicks_masks_nearest_each_level():
    """The README's first figure (`prompt_panels`): which level each of the click's masks is
    nearest."""
    model = minisam.build_sam("toy", checkpoint=ROOT / "lessons" / "toy_sam.pt")
    seed, chain = train_toy.three_level_objects()[0]
    panels = train_toy.prompt_panels(minisam.SamPredictor(model), seed, chain)
    nearest = [p["title"].split("nearest the ")[1].split("\n")[0] for p in panels[1:4]]
    count = {n: ["none", "one", "two", "three"][nearest.count(n)] for n in train_toy.LEVELS}
    quoted(lesson("00"), f"the README's hero click gets {count['subpart']} near the subpart and "
                         f"{count['whole']} near the whole")
