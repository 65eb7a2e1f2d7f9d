"""The numbers of the README and the lessons, tied to the JSON files they come from.

A number that a run wrote into lessons/toy_sam.json or lessons/figures/data_engine/*.json is
quoted from here, formatted as the text prints it: retrain, rerun, and the test names every
sentence that still quotes the old run. Numbers that no JSON holds but the code computes in
seconds (a perfect model's ideal head, parameter counts) are recomputed.
"""
import json
import sys
from pathlib import Path

import pytest

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
    quoted(lesson("05"), f"chooses masks of mIoU {miou:.3f} and reaches r {r:.3f}")
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
