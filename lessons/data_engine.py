"""
data_engine.py: SAM's data engine (paper section 4), run on the toy world.

    python lessons/data_engine.py --out lessons/figures/data_engine   # about 19 min, 1 thread
    python lessons/data_engine.py --out /tmp/give_up --give-up        # an annotator, no brush
    python lessons/data_engine.py --out /tmp/engine --quick           # the pipeline, in seconds

SA-1B was not labelled by hand. A model in the loop labelled it, in three stages:
  1. assisted-manual: people click, the model draws the mask, people correct it with more
     clicks and finish it with a brush and an eraser; the model is retrained on the new masks,
     so the next round costs less (34 s -> 14 s per mask over 6 retrainings);
  2. semi-automatic: the model pre-fills the masks it is confident about, people add the rest;
  3. fully automatic: a grid of point prompts labels 11M images with nobody in the loop.

Here the people are a simulated annotator that knows the toy world's ground truth. It clicks
where the model's mask is wrong and saves the model's mask once it reaches IoU >= 0.9. A mask
its clicks cannot finish within the click budget it finishes by hand, as the paper's
annotators did with their brush and eraser, and saves the true mask. With --give-up it has no
brush: it leaves those objects unlabelled, and every label is a mask the model drew.

The experiment ends by training one fresh model on the engine's labels and one on the hidden
ground truth of the same images, with the same budget, and comparing them on held-out images.

Every step count and image count is in `Budget`, so the experiment can be re-tuned in one place.
"""

import argparse
import copy
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# the lesson scripts live one level below the package's two modules
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minisam  # noqa: E402
import train_toy  # noqa: E402
from minisam import mask_iou  # noqa: E402
from train_toy import (EVAL_SEEDS, MATCH_IOU, TOY_AMG_SETTINGS, TRAIN_SEEDS,  # noqa: E402
                       decode, evaluate, interior_point, largest_error_click, make_sample,
                       precision_recall, stack_samples, step_generator, train)

# -----------------------------------------------------------------------------
# 0. The budget: every count of images and optimisation steps, in one place.
# A toy model needs a few hundred steps before it predicts anything but empty masks, so most
# of the steps go to the seed model and to the two final trainings, which start from scratch
# and spend their first steps at half the image size, as train_toy does; the retraining
# rounds in between are short fine-tunings of the current model at full size (the paper
# retrained from the current model as well, and grew it from ViT-B to ViT-H on the way).


@dataclasses.dataclass(frozen=True)
class Budget:
    seed_images: int = 40  # hand-labelled: the public datasets SAM started from
    stage1_rounds: int = 3
    stage1_images_per_round: int = 50
    stage2_images: int = 40
    stage3_images: int = 100  # the rest of the pool: labelled with no annotator
    seed_steps: int = 350  # the seed model, from scratch, on the seed set
    small_steps: int = 280  # the first steps of a model from scratch, at 32 px
    round_steps: int = 200  # each retraining: after every stage-1 round and after stage 2
    final_steps: int = 350  # each of the two fresh models of the final comparison
    eval_images: int = 32  # held-out images (from EVAL_SEEDS) for every mIoU
    click_budget: int = 10  # clicks before the annotator takes the brush (or gives up)
    accept_iou: float = 0.9  # ... and it saves the model's mask as soon as it is this good


# --quick: every stage runs, on a handful of images and steps; the numbers mean nothing
QUICK = Budget(seed_images=6, stage1_rounds=3, stage1_images_per_round=4, stage2_images=4,
               stage3_images=4, seed_steps=3, small_steps=2, round_steps=2, final_steps=3, eval_images=4,
               click_budget=3)

# The automatic masks of stages 2 and 3. The engine's models are far weaker than the shipped
# checkpoint, and their IoU heads rarely predict high, so thresholds tuned for the shipped
# checkpoint keep almost nothing; much looser ones label more but worse masks, from which the
# final model learns less
# (lessons/experiments.md, "Which automatic-mask thresholds for stages 2 and 3?").
# Stage 2's pre-filled masks are these proposals (the paper used a box detector trained on
# stage-1 masks; any source of confident masks plays the same part), each checked by the
# annotator: its IoU >= 0.9 is the strict part.
ENGINE_AMG_SETTINGS = dict(TOY_AMG_SETTINGS, pred_iou_thresh=0.5, stability_score_thresh=0.7)

# -----------------------------------------------------------------------------
# 1. Training on a labelled set
# train_toy trains on an endless world; the engine has a finite list of (image, masks). The
# step itself is the same: InteractiveTraining, the paper's simulated annotation.


def downsized(labelled: list, size: int) -> list:
    """The labelled set at `size` px for the small steps: images by area averaging, a mask
    pixel kept where most of its area was inside. Masks that vanish are dropped (an image
    left with none, too)."""
    small = []
    for image, masks in labelled:
        image = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                              (size, size), mode="area")[0].permute(1, 2, 0)
        masks = F.interpolate(torch.from_numpy(masks)[:, None].float(), (size, size),
                              mode="area")[:, 0].numpy() > 0.5
        masks = masks[masks.any((1, 2))]
        if len(masks):
            small.append((image.round().to(torch.uint8).numpy(), masks))
    return small


def from_scratch(budget: Budget, steps: int, seed: int) -> train_toy.TrainSettings:
    """A fresh model's training: train_toy's settings, its first budget.small_steps at 32 px."""
    return dataclasses.replace(train_toy.TrainSettings(), steps=steps, seed=seed,
                               small_steps=budget.small_steps)


def retraining(steps: int, seed: int) -> train_toy.TrainSettings:
    """A round's fine-tuning of the current model: at full size, a short warmup."""
    return dataclasses.replace(train_toy.TrainSettings(), steps=steps, seed=seed, warmup=10,
                               small_steps=0)


def train_on_labels(model: minisam.Sam, labelled: list, settings: train_toy.TrainSettings,
                    log=print) -> minisam.Sam:
    """Fit `model` to `labelled`, a list of (image uint8 (H, W, 3), masks bool (K, H, W)) with
    K >= 1, with train_toy's loop, and return it (a new Sam when it was resized). Every step
    draws images_per_step images and targets_per_image masks of each, with replacement: the
    same call draws the same batches. The small steps train on the labels downsized."""
    sets = {model.config.image_size: labelled}
    if settings.small_steps:
        sets[settings.small_size] = downsized(labelled, settings.small_size)

    def batches(step, image_size):
        data, generator = sets[image_size], step_generator(settings.seed, step)
        picks = torch.randint(len(data), (settings.images_per_step,), generator=generator)
        return (*stack_samples([data[i] for i in picks.tolist()], settings.targets_per_image,
                               generator), generator)

    return train(model, batches, settings, history=[], log=log).eval()


def held_out_miou(model: minisam.Sam, images: int) -> dict:
    """The engine's single quality number, "miou": the mean of box-prompt mIoU and one-click
    mIoU (the IoU head's choice among 3 masks), on the first `images` held-out images."""
    with warnings.catch_warnings():  # an untrained IoU head is constant: its Pearson r is nan
        warnings.simplefilter("ignore")
        metrics = evaluate(model, seeds=EVAL_SEEDS[:images], max_clicks=1)
    return {"miou": (metrics["box_miou"] + metrics["one_click_miou"]) / 2,
            "box_miou": metrics["box_miou"], "one_click_miou": metrics["one_click_miou"]}


# -----------------------------------------------------------------------------
# 2. The simulated annotator (assisted-manual stage)
# It works like the paper's annotators with the browser tool: the image embedding is computed
# once, then every click costs one run of the light prompt encoder and decoder. First click
# in the middle of the object; the model answers with 3 masks and shows the one its IoU head
# likes best; then a click in the middle of the largest wrong region (foreground if the mask
# missed it, background if it spilled), with the previous logits fed back. This is
# train_toy.evaluate's interactive protocol with a stopping rule; what the clicks cannot
# finish, the brush and eraser do (or nobody, with --give-up).


@torch.no_grad()
def embed(model: minisam.Sam, images: list, chunk: int = 32) -> torch.Tensor:
    """The image embeddings of a list of uint8 (H, W, 3) images at the model's input size."""
    batch = torch.stack([torch.from_numpy(image).permute(2, 0, 1).float() for image in images])
    return torch.cat([model.image_encoder(model.preprocess(batch[i:i + chunk]))
                      for i in range(0, len(batch), chunk)])


@torch.no_grad()
def click_until_accepted(model: minisam.Sam, images: list, truths: list, click_budget: int,
                         accept_iou: float):
    """Every true mask of every image, clicked as above until the model's mask reaches
    accept_iou or click_budget clicks are spent. All masks of all images go through the
    decoder together, one row each (no mask depends on another: the model does not change
    within an image). truths: list of bool (K_i, H, W). Returns, over the N = sum K_i masks,
    the model's last masks bool (N, H, W), the clicks spent int (N,), accepted bool (N,)."""
    targets = torch.cat([torch.from_numpy(t) for t in truths])
    index = torch.repeat_interleave(torch.arange(len(images)),
                                    torch.tensor([len(t) for t in truths]))
    embeddings = embed(model, images)[index]
    N = len(targets)
    rows = torch.arange(N)
    points = interior_point(targets)[:, None]  # (N, 1, 2): the first click
    labels = torch.ones(N, 1, dtype=torch.long)
    masks, iou_pred, low_res = decode(model, embeddings, points, labels, multimask=True)
    chosen = iou_pred.argmax(1)
    prediction, mask_prompt = masks[rows, chosen], low_res[rows, chosen][:, None]
    clicks = torch.ones(N, dtype=torch.long)
    done = mask_iou(prediction, targets) >= accept_iou
    for click in range(2, click_budget + 1):
        active = (~done).nonzero()[:, 0]
        if len(active) == 0:
            break
        # every mask still open gets its next click; the finished ones get a padding point
        # (label -1, ignored by the prompt encoder) only to keep the tensor rectangular
        new_point = torch.zeros(N, 2)
        new_label = torch.full((N,), -1, dtype=torch.long)
        new_point[active], new_label[active] = largest_error_click(prediction[active],
                                                                   targets[active])
        points = torch.cat([points, new_point[:, None]], dim=1)
        labels = torch.cat([labels, new_label[:, None]], dim=1)
        masks, _, low = decode(model, embeddings[active], points[active], labels[active],
                               mask_prompt=mask_prompt[active])
        prediction[active], mask_prompt[active] = masks[:, 0], low
        clicks[active] = click
        done[active] = mask_iou(masks[:, 0], targets[active]) >= accept_iou
    return prediction.numpy(), clicks.numpy(), done.numpy()


def annotate(model: minisam.Sam, images: list, truths: list, click_budget: int,
             accept_iou: float, give_up: bool = False) -> list:
    """The annotator labels every true mask of every image: images list of uint8 (H, W, 3),
    truths list of bool (K_i, H, W). Returns, per image, a dict: "masks" bool (A, H, W), the
    saved labels; and per true mask, (K_i,) each: "clicks" spent, "accepted" (the model's mask
    was saved), "brush" (pixels the brush and eraser changed: where the model's last mask and
    the truth differ; 0 for an accepted mask).
    The paper's annotator (the default) saves the model's mask once its clicks make it good
    enough, and finishes by hand the masks they cannot: those follow the accepted masks in
    "masks", as the true masks. give_up: no brush; the masks the clicks cannot finish are
    left unlabelled."""
    model.eval()
    results = [{"masks": np.zeros((0, *image.shape[:2]), bool), "clicks": np.zeros(0, int),
                "accepted": np.zeros(0, bool), "brush": np.zeros(0, int)} for image in images]
    if sum(len(t) for t in truths) == 0:
        return results
    drawn, clicks, accepted = click_until_accepted(model, images, truths, click_budget,
                                                   accept_iou)
    start = 0
    for result, truth in zip(results, truths):
        rows = slice(start, start + len(truth))
        start += len(truth)
        result.update(masks=drawn[rows][accepted[rows]], clicks=clicks[rows],
                      accepted=accepted[rows], brush=np.zeros(len(truth), int))
        if not give_up:
            brushed = ~accepted[rows]
            result["masks"] = np.concatenate([result["masks"], truth[brushed]])
            result["brush"][brushed] = (drawn[rows][brushed] ^ truth[brushed]).sum((1, 2))
    return results


def annotation_cost(results: list) -> dict:
    """The annotation time of `annotate`'s results. Clicks per accepted mask count every click,
    including those spent on masks given up or brushed: the clicks it takes to get one mask
    out of the model, as the paper's 34 s -> 14 s is time per mask; with and without the brush
    alike. The brush's work is counted apart, per mask saved."""
    clicks = sum(int(r["clicks"].sum()) for r in results)
    accepted = sum(int(r["accepted"].sum()) for r in results)
    asked = sum(len(r["accepted"]) for r in results)
    saved = sum(len(r["masks"]) for r in results)
    return {"clicks_per_mask": clicks / max(accepted, 1), "masks": accepted,
            "masks_per_image": accepted / max(len(results), 1),
            "accepted_fraction": accepted / max(asked, 1), "brushed_masks": saved - accepted,
            "brush_pixels_per_mask": sum(int(r["brush"].sum()) for r in results) / max(saved, 1)}


# -----------------------------------------------------------------------------
# 3. Automatic masks: pre-filling (stage 2) and labelling with no one (stage 3)


def automatic_masks(model: minisam.Sam, image: np.ndarray, settings: dict) -> np.ndarray:
    """SamAutomaticMaskGenerator's masks of one image, bool (R, H, W), most confident first."""
    records = minisam.SamAutomaticMaskGenerator(model, **settings).generate(image)
    records.sort(key=lambda r: -r["predicted_iou"])
    if not records:
        return np.zeros((0, *image.shape[:2]), bool)
    return np.stack([r["segmentation"] for r in records])


def prefill(model: minisam.Sam, image: np.ndarray, truth: np.ndarray, accept_iou: float):
    """Stage 2 on one image: the model proposes its confident masks; the annotator keeps a
    proposal if it is as good as a mask it would have accepted (IoU >= accept_iou with a true
    mask not yet covered) and deletes the rest. Returns (kept masks, bool (K,) which true
    masks they cover)."""
    proposals = automatic_masks(model, image, ENGINE_AMG_SETTINGS)
    covered = np.zeros(len(truth), bool)
    kept = []
    if len(proposals) and len(truth):
        # (R, K): every proposal against every true mask
        ious = mask_iou(torch.from_numpy(proposals)[:, None], torch.from_numpy(truth)[None]).numpy()
        for r in range(len(proposals)):  # most confident first
            candidates = np.where(~covered & (ious[r] >= accept_iou))[0]
            if len(candidates):
                covered[candidates[ious[r, candidates].argmax()]] = True
                kept.append(proposals[r])
    kept = np.stack(kept) if kept else np.zeros((0, *image.shape[:2]), bool)
    return kept, covered


# -----------------------------------------------------------------------------
# 4. The engine


def engine_world(budget: Budget, seed: int) -> list:
    """The images of a run, as (image, true masks): a hand-labelled seed set, then the pool
    the engine labels stage by stage, in the order the stages take it (stage 1's rounds,
    stage 2, stage 3)."""
    pool = budget.stage1_rounds * budget.stage1_images_per_round + budget.stage2_images \
        + budget.stage3_images
    first = seed * 100_000
    return [make_sample(TRAIN_SEEDS[first + i]) for i in range(budget.seed_images + pool)]


def run(budget: Budget, seed: int = 0, log=print, give_up: bool = False) -> tuple:
    """The whole experiment (give_up: the annotator without a brush, see `annotate`). Returns
    (results dict, dict of models by name, examples: one labelled image per stage, a list of
    (title, image, true masks, saved masks, bool which of them the brush finished))."""
    started = time.time()

    def say(text):
        log(f"[{(time.time() - started) / 60:5.1f} min] {text}")

    world = engine_world(budget, seed)
    seed_set, pool = world[:budget.seed_images], world[budget.seed_images:]
    results = {"budget": dataclasses.asdict(budget), "brush": not give_up,
               # the seed model's; the retrainings change steps, seed, warmup and small_steps
               "hyper_parameters": dataclasses.asdict(from_scratch(budget, budget.seed_steps,
                                                                   seed)),
               "miou_definition": "mean of held-out box-prompt mIoU and one-click mIoU (IoU "
                                  f"head's choice of 3), on EVAL_SEEDS[:{budget.eval_images}]",
               "clicks_per_mask_definition": "all clicks spent (including on masks given up "
                                             "after the click budget, or brushed) / masks "
                                             "accepted",
               "brush_pixels_per_mask_definition": "pixels the brush and eraser changed / "
                                                   "masks saved"}
    examples = []

    def example(title, image, truth, masks, brushed=None):
        brushed = np.zeros(len(masks), bool) if brushed is None else brushed
        examples.append((title, image, truth, masks, brushed))

    say(f"seed model: {budget.seed_steps} steps on {len(seed_set)} hand-labelled images")
    torch.manual_seed(seed)
    model = minisam.Sam(minisam.CONFIGS["toy"])
    labelled = list(seed_set)  # everything labelled so far: (image, masks)
    model = train_on_labels(model, labelled, from_scratch(budget, budget.seed_steps, seed), log)
    seed_model = copy.deepcopy(model)
    results["seed_model"] = held_out_miou(model, budget.eval_images)

    def brushed_flags(annotated):  # which of an image's saved masks were brushed: the last ones
        return np.arange(len(annotated["masks"])) >= annotated["accepted"].sum()

    # Stage 1, assisted-manual: annotate a batch of pool images, retrain on all labels, repeat
    rounds, stage1_results, cursor = [], [], 0
    for r in range(budget.stage1_rounds):
        quality = held_out_miou(model, budget.eval_images)  # the model the annotator uses
        batch = pool[cursor:cursor + budget.stage1_images_per_round]
        cursor += len(batch)
        annotated = annotate(model, [im for im, _ in batch], [t for _, t in batch],
                             budget.click_budget, budget.accept_iou, give_up)
        stage1_results += annotated
        labelled += [(im, a["masks"]) for (im, _), a in zip(batch, annotated) if len(a["masks"])]
        if r in (0, budget.stage1_rounds - 1):
            example(f"stage 1, round {r + 1}", *batch[0], annotated[0]["masks"],
                    brushed_flags(annotated[0]))
        rounds.append({**annotation_cost(annotated), **quality})
        say(f"stage 1 round {r + 1}: held-out miou {quality['miou']:.3f}, "
            f"{rounds[-1]['clicks_per_mask']:.2f} clicks and "
            f"{rounds[-1]['brush_pixels_per_mask']:.1f} brushed pixels per mask, "
            f"{rounds[-1]['masks_per_image']:.2f} masks/image, "
            f"{rounds[-1]['accepted_fraction']:.0%} of masks accepted; retraining "
            f"{budget.round_steps} steps on {len(labelled)} images")
        model = train_on_labels(model, labelled, retraining(budget.round_steps, seed + 1 + r), log)
    results["stage1"] = {"rounds": rounds,
                         "masks_per_image": annotation_cost(stage1_results)["masks_per_image"],
                         "after_retraining": held_out_miou(model, budget.eval_images)}

    # Stage 2, semi-automatic: confident masks pre-filled, the annotator labels the rest
    batch = pool[cursor:cursor + budget.stage2_images]
    cursor += len(batch)
    prefilled, rest = [], []
    for image, truth in batch:
        kept, covered = prefill(model, image, truth, budget.accept_iou)
        prefilled.append(kept)
        rest.append(truth[~covered])  # what the annotator still has to label
    annotated = annotate(model, [im for im, _ in batch], rest, budget.click_budget,
                         budget.accept_iou, give_up)
    cost = annotation_cost(annotated)
    n_prefilled, n_clicked = sum(len(k) for k in prefilled), cost["masks"]
    n_masks = n_prefilled + n_clicked  # the masks the model drew, pre-filled or clicked
    n_saved = n_masks + cost["brushed_masks"]
    # annotation_cost's two ratios, with the pre-filled masks (no click, no brush) counted in
    clicks = sum(int(a["clicks"].sum()) for a in annotated)
    brushed_pixels = sum(int(a["brush"].sum()) for a in annotated)
    results["stage2"] = {
        "prefilled_fraction": n_prefilled / max(n_masks, 1),
        "masks_per_image": n_masks / max(len(batch), 1),
        "clicks_per_mask": clicks / max(n_masks, 1),
        "prefilled_masks": n_prefilled, "clicked_masks": n_clicked,
        "brushed_masks": cost["brushed_masks"],
        "brush_pixels_per_mask": brushed_pixels / max(n_saved, 1)}
    for (image, _), kept, a in zip(batch, prefilled, annotated):
        masks = np.concatenate([kept, a["masks"]])
        if len(masks):
            labelled.append((image, masks))
    if batch:
        example("stage 2", *batch[0], np.concatenate([prefilled[0], annotated[0]["masks"]]),
                np.concatenate([np.zeros(len(prefilled[0]), bool), brushed_flags(annotated[0])]))
    say(f"stage 2: {results['stage2']['prefilled_fraction']:.0%} of masks pre-filled, "
        f"{results['stage2']['masks_per_image']:.2f} masks/image; retraining "
        f"{budget.round_steps} steps on {len(labelled)} images")
    model = train_on_labels(model, labelled, retraining(budget.round_steps, seed + 100), log)
    results["stage2"]["after_retraining"] = held_out_miou(model, budget.eval_images)

    # Stage 3, fully automatic: the generator labels the rest of the pool, nobody checks.
    # Beside it, what plain pseudo-labelling would have produced on the same images: the seed
    # model (trained once on the hand labels) labelling once.
    batch = pool[cursor:]
    generated = [automatic_masks(model, image, ENGINE_AMG_SETTINGS) for image, _ in batch]
    pseudo = [automatic_masks(seed_model, image, ENGINE_AMG_SETTINGS) for image, _ in batch]
    truths = [truth for _, truth in batch]
    results["stage3"] = {**precision_recall(generated, truths, MATCH_IOU), "match_iou": MATCH_IOU,
                         "pseudo_labelling_with_seed_model":
                             precision_recall(pseudo, truths, MATCH_IOU)}
    labelled += [(image, masks) for (image, _), masks in zip(batch, generated) if len(masks)]
    if batch:
        example("stage 3", *batch[0], generated[0])
    say(f"stage 3: {results['stage3']['masks_per_image']:.2f} masks/image, precision "
        f"{results['stage3']['precision']:.2f}, recall {results['stage3']['recall']:.2f} "
        f"(seed model: {results['stage3']['pseudo_labelling_with_seed_model']})")

    # The comparison: two fresh models, same initial weights, same steps and batches, one on
    # the engine's labels and one on the hidden ground truth of every image the engine saw
    # (an image the engine left unlabelled still counts for the ground-truth model: those
    # are the masks the engine missed)
    truth_set = [(image, truth) for image, truth in world if len(truth)]
    finals = {}
    for name, data in (("engine", labelled), ("ground_truth", truth_set)):
        say(f"final: a fresh model, {budget.final_steps} steps on the {name} labels "
            f"({len(data)} images, {sum(len(m) for _, m in data)} masks)")
        torch.manual_seed(seed + 7)
        fresh = minisam.Sam(minisam.CONFIGS["toy"])
        finals[name] = train_on_labels(fresh, data, from_scratch(budget, budget.final_steps,
                                                                 seed + 200), log)
    engine_q = held_out_miou(finals["engine"], budget.eval_images)
    truth_q = held_out_miou(finals["ground_truth"], budget.eval_images)
    results["final"] = {
        "miou_engine": engine_q["miou"], "miou_ground_truth": truth_q["miou"],
        "ratio": engine_q["miou"] / max(truth_q["miou"], 1e-9),
        "engine": engine_q, "ground_truth": truth_q,
        "engine_masks": sum(len(m) for _, m in labelled),
        "ground_truth_masks": sum(len(m) for _, m in truth_set)}
    results["wall_minutes"] = (time.time() - started) / 60
    say(f"final: engine {engine_q['miou']:.3f} vs ground truth {truth_q['miou']:.3f} "
        f"({results['final']['ratio']:.0%})")
    return results, {"seed": seed_model, "engine_loop": model, **finals}, examples


# -----------------------------------------------------------------------------
# 5. Pictures


def make_figures(results: dict, examples: list, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rounds = results["stage1"]["rounds"]
    x = np.arange(1, len(rounds) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), layout="constrained")
    for ax, key, label, colour in zip(
            axes, ("clicks_per_mask", "brush_pixels_per_mask", "miou"),
            ("clicks per accepted mask", "brushed pixels per saved mask",
             "the labeller's held-out mIoU"), ("tab:blue", "tab:purple", "tab:green")):
        ax.plot(x, [r[key] for r in rounds], marker="o", color=colour)
        ax.set(xlabel="stage-1 round", xticks=x, title=label,
               ylim=(0, 1 if key == "miou" else None))
    fig.suptitle("Assisted-manual: each round uses the model retrained after the one before")
    fig.savefig(out / "clicks_per_mask.png", dpi=120)
    plt.close(fig)

    # one image per stage: the truth beside the labels the engine saved (grey image, white
    # outlines for the truth, fills for the labels: the toy world paints in every colour)
    BRUSHED = (0.85, 0.1, 0.85)  # magenta fill: a mask finished with the brush
    fig, axes = plt.subplots(2, len(examples), figsize=(2.3 * len(examples), 5.2),
                             squeeze=False, layout="constrained")
    for column, (title, image, truth, masks, brushed) in zip(axes.T, examples):
        train_toy.show(column[0], image)
        for mask in truth:
            train_toy.outline(column[0], mask)
        column[0].set_title(f"{title}\n{len(truth)} true masks", fontsize=9)
        train_toy.show(column[1], image)
        for mask, by_hand in zip(masks, brushed):
            train_toy.fill(column[1], mask, BRUSHED if by_hand else train_toy.PREDICTED,
                           alpha=0.35)
        column[1].set_title(f"labels saved: {len(masks)}", fontsize=9)
    fig.legend(handles=[Patch(facecolor=(*train_toy.PREDICTED, 0.5),
                              label="drawn by the model"),
                        Patch(facecolor=(*BRUSHED, 0.5), label="finished with the brush")],
               loc="outside lower center", ncol=2, fontsize=8, facecolor="#d9d9d9")
    fig.savefig(out / "labels.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    names = [f"stage 1\nround {i}" for i in x] + ["stage 2", "stage 3"]
    values = [r["masks_per_image"] for r in rounds] + [results["stage2"]["masks_per_image"],
                                                       results["stage3"]["masks_per_image"]]
    colours = ["tab:blue"] * len(rounds) + ["tab:orange", "tab:red"]
    ax.bar(names, values, color=colours)
    prefilled = results["stage2"]["prefilled_fraction"] * results["stage2"]["masks_per_image"]
    ax.bar(["stage 2"], [prefilled], color="tab:olive", label="of which pre-filled")
    ax.set(ylabel="masks per image", title="Masks the model drew, per image")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "masks_per_image.png", dpi=120)
    plt.close(fig)

    final = results["final"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    keys = ("box_miou", "one_click_miou", "miou")
    width = 0.38
    for k, (name, colour) in enumerate((("engine", "tab:red"), ("ground_truth", "tab:gray"))):
        heights = [final[name][key] for key in keys]
        bars = ax.bar(np.arange(3) + (k - 0.5) * width, heights, width, color=colour,
                      label=f"trained on {name.replace('_', ' ')} labels")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set(xticks=np.arange(3), xticklabels=["box", "one click", "miou (mean)"], ylim=(0, 1),
           ylabel="held-out mIoU", title="Fresh models, same budget, different labels")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "final_comparison.png", dpi=120)
    plt.close(fig)


# -----------------------------------------------------------------------------
# The command


def parse_args(argv=None):
    defaults = Budget()
    p = argparse.ArgumentParser(description="SAM's three-stage data engine on the toy world.")
    p.add_argument("--out", type=Path, required=True,
                   help="directory for data_engine.json and figures")
    p.add_argument("--quick", action="store_true",
                   help="a few images and steps: exercises the pipeline, numbers meaningless")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--give-up", action="store_true",
                   help="an annotator without the paper's brush and eraser: it gives up on the "
                        "masks its clicks cannot finish")
    # One thread by default: at the toy's size a second thread makes the engine no faster
    # (lessons/experiments.md, "How long does the default take?"), and the numbers of a run
    # depend on its thread count, so the default gives the same run on every machine
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    for field in dataclasses.fields(Budget):  # every budget entry can be overridden
        p.add_argument("--" + field.name.replace("_", "-"), type=field.type, default=None,
                       help=f"default {getattr(defaults, field.name)}")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    base = QUICK if args.quick else defaults
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Budget)
                 if getattr(args, f.name) is not None}
    args.budget = dataclasses.replace(base, **overrides)
    for field in dataclasses.fields(Budget):
        value = getattr(args.budget, field.name)
        flag = "--" + field.name.replace("_", "-")
        if field.name == "accept_iou":
            if not 0 < value <= 1:
                p.error(f"{flag} must be in (0, 1], got {value}")
        elif field.name in ("stage2_images", "stage3_images", "small_steps"):
            if value < 0:
                p.error(f"{flag} must be >= 0, got {value}")
        elif value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    # Tiny weights and activations can turn subnormal, and subnormal float arithmetic is
    # dozens of times slower on x86 CPUs; flushing them to zero costs nothing in accuracy
    torch.set_flush_denormal(True)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        results, _, examples = run(args.budget, seed=args.seed, give_up=args.give_up)
    finally:  # main may run inside another program (the tests): leave its threads and its
        torch.set_num_threads(threads)  # floating-point mode (the default) as they were
        torch.set_flush_denormal(False)
    results["quick"] = args.quick
    (args.out / "data_engine.json").write_text(json.dumps(results, indent=2))
    make_figures(results, examples, args.out)
    print(f"wrote {args.out / 'data_engine.json'} and figures in {args.out}/")
    return results


if __name__ == "__main__":
    main()
