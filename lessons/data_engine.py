"""
data_engine.py: SAM's data engine (paper section 4), run on the toy world.

    python lessons/data_engine.py --out lessons/figures/data_engine   # about 10 min on 2 CPUs
    python lessons/data_engine.py --out /tmp/engine --quick           # the pipeline, in seconds
    python lessons/data_engine.py --out lessons/figures/data_engine_brush --brush  # the brush

SA-1B was not labelled by hand. A model in the loop labelled it, in three stages:
  1. assisted-manual: people click, the model draws the mask, people correct it with more
     clicks; the model is retrained on the new masks, so the next round needs fewer clicks
     (34 s -> 14 s per mask over 6 retrainings);
  2. semi-automatic: the model pre-fills the masks it is confident about, people add the rest;
  3. fully automatic: a grid of point prompts labels 11M images with nobody in the loop.

Here the people are a simulated annotator that knows the toy world's ground truth. It clicks
where the model's mask is wrong, accepts the mask at IoU >= 0.9 and gives up after a click
budget. What it accepts is the model's mask, not the ground truth: like SA-1B, the labels
are only as good as the model and the acceptance rule let them be. With --brush it does not
give up: like the paper's annotators with their brush and eraser, it finishes by hand the
masks its clicks cannot, and those labels are the ground truth.

The experiment ends by training one fresh model on the engine's labels and one on the hidden
ground truth of the same images, with the same budget, and comparing them on held-out images.

Every step count and image count is in `Budget`, so the experiment can be re-tuned in one place.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

# the lesson scripts live one level below the package's two modules
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minisam  # noqa: E402
import train_toy  # noqa: E402
from minisam import mask_iou  # noqa: E402
from train_toy import (EVAL_SEEDS, TOY_AMG_SETTINGS, TRAIN_SEEDS, InteractiveTraining,  # noqa: E402
                       decode, evaluate, interior_point, largest_error_click, learning_rate,
                       make_sample, stack_samples)

# -----------------------------------------------------------------------------
# 0. The budget: every count of images and optimisation steps, in one place.
# A toy model needs a few hundred steps before it predicts anything but empty masks, so most
# of the steps go to the seed model and to the two final trainings; the retraining rounds
# in between are short fine-tunings of the current model (the paper retrained from the
# current model as well, and grew it from ViT-B to ViT-H on the way).


@dataclasses.dataclass(frozen=True)
class Budget:
    seed_images: int = 40  # hand-labelled: the public datasets SAM started from
    stage1_rounds: int = 3
    stage1_images_per_round: int = 30
    stage2_images: int = 40
    stage3_images: int = 150  # the rest of the pool: labelled with no annotator
    seed_steps: int = 500  # the seed model, from scratch, on the seed set
    round_steps: int = 80  # each retraining: after every stage-1 round and after stage 2
    final_steps: int = 450  # each of the two fresh models of the final comparison
    eval_images: int = 32  # held-out images (from EVAL_SEEDS) for every mIoU
    click_budget: int = 10  # the annotator gives up on a mask after this many clicks
    accept_iou: float = 0.9  # ... and accepts it as soon as the model's mask is this good


# --quick: every stage runs, on a handful of images and steps; the numbers mean nothing
QUICK = Budget(seed_images=6, stage1_rounds=3, stage1_images_per_round=4, stage2_images=4,
               stage3_images=4, seed_steps=3, round_steps=2, final_steps=3, eval_images=4,
               click_budget=3)

# Stage 2's pre-filled masks are the ones the model is sure of: the toy's own confident and
# stable masks (the paper used a box detector trained on stage-1 masks; any source of
# confident masks plays the same part). The annotator's IoU >= 0.9 check is the strict part.
# Thresholds near the reference's (0.9) would pre-fill nothing: the toy IoU head stays
# below 0.52.
PREFILL_SETTINGS = TOY_AMG_SETTINGS
MATCH_IOU = 0.5  # stage 3: a generated mask is "right" if it overlaps a true mask this much

# -----------------------------------------------------------------------------
# 1. Training on a labelled set
# train_toy trains on an endless world; the engine has a finite list of (image, masks). The
# step itself is the same: InteractiveTraining, the paper's simulated annotation.


def _hyper_parameters():
    """train_toy's defaults (its argparse), so the two stay in step when they are retuned."""
    defaults = train_toy.parse_args([])
    return {k: getattr(defaults, k) for k in ("iters", "no_click_passes", "images_per_step",
                                              "targets_per_image", "lr", "warmup")}


def train_on_labels(model: minisam.Sam, labelled: list, steps: int, seed: int,
                    warmup: int = None, log=print) -> list:
    """Fit `model` to `labelled`, a list of (image uint8 (H, W, 3), masks bool (K, H, W)) with
    K >= 1, for `steps` AdamW steps. Every step draws images_per_step images and
    targets_per_image masks of each, with replacement, from a generator seeded by (seed, step):
    the same call draws the same batches. Returns the loss of every step."""
    hp = _hyper_parameters()
    warmup = hp["warmup"] if warmup is None else warmup
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], betas=(0.9, 0.999),
                                  weight_decay=0.1)
    trainer = InteractiveTraining(model, hp["iters"], hp["no_click_passes"])
    model.train()
    losses, start = [], time.time()
    for step in range(steps):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        picks = torch.randint(len(labelled), (hp["images_per_step"],), generator=generator)
        images, targets, index = stack_samples([labelled[i] for i in picks.tolist()],
                                               hp["targets_per_image"], generator)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, hp["lr"], warmup)
        loss, _ = trainer(images, targets, index, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            log(f"    step {step + 1}/{steps}  loss {np.mean(losses[-100:]):.3f}  "
                f"{(step + 1) / (time.time() - start):.2f} steps/s")
    model.eval()
    return losses


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
# train_toy.evaluate's interactive protocol, with a stopping rule added.


@torch.no_grad()
def embed(model: minisam.Sam, images: list, chunk: int = 32) -> torch.Tensor:
    """The image embeddings of a list of uint8 (H, W, 3) images at the model's input size."""
    batch = torch.stack([torch.from_numpy(image).permute(2, 0, 1).float() for image in images])
    return torch.cat([model.image_encoder(model.preprocess(batch[i:i + chunk]))
                      for i in range(0, len(batch), chunk)])


@torch.no_grad()
def annotate(model: minisam.Sam, images: list, truths: list, click_budget: int,
             accept_iou: float, brush: bool = False) -> list:
    """The annotator labels every true mask of every image, one object at a time.
    images: list of uint8 (H, W, 3); truths: list of bool (K_i, H, W), what the annotator
    means to label. Returns, per image, a dict: "masks" bool (A, H, W), the accepted masks as
    the model drew them; "clicks" int (K_i,), clicks spent on each true mask (click_budget
    where it gave up); "accepted" bool (K_i,).
    brush: instead of giving up, the annotator finishes each mask its clicks left below
    accept_iou by hand, as the paper's could with its brush and eraser tools; those true
    masks follow the accepted ones in "masks" (then K_i of them). Clicks are counted alike.
    All masks of all images go through the decoder together, one row each."""
    model.eval()
    counts = [len(t) for t in truths]
    if sum(counts) == 0:
        return [{"masks": np.zeros((0, *image.shape[:2]), bool), "clicks": np.zeros(0, int),
                 "accepted": np.zeros(0, bool)} for image in images]
    targets = torch.cat([torch.from_numpy(t) for t in truths])
    index = torch.repeat_interleave(torch.arange(len(images)), torch.tensor(counts))
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
    results, start = [], 0
    for count in counts:
        accepted = done[start:start + count].numpy()
        masks = prediction[start:start + count].numpy()[accepted]
        if brush:
            masks = np.concatenate([masks, targets[start:start + count].numpy()[~accepted]])
        results.append({"masks": masks, "clicks": clicks[start:start + count].numpy(),
                        "accepted": accepted})
        start += count
    return results


def annotation_cost(results: list) -> dict:
    """Clicks per accepted mask count every click, including those spent on masks the
    annotator gave up on: it is annotation time per mask, as the paper's 34 s -> 14 s is."""
    clicks = sum(int(r["clicks"].sum()) for r in results)
    accepted = sum(int(r["accepted"].sum()) for r in results)
    asked = sum(len(r["accepted"]) for r in results)
    return {"clicks_per_mask": clicks / max(accepted, 1), "masks": accepted,
            "masks_per_image": accepted / max(len(results), 1),
            "accepted_fraction": accepted / max(asked, 1)}


# -----------------------------------------------------------------------------
# 3. Automatic masks: pre-filling (stage 2) and labelling with no one (stage 3)


def automatic_masks(model: minisam.Sam, image: np.ndarray, settings: dict) -> np.ndarray:
    """SamAutomaticMaskGenerator's masks of one image, bool (R, H, W), most confident first."""
    records = minisam.SamAutomaticMaskGenerator(model, **settings).generate(image)
    records.sort(key=lambda r: -r["predicted_iou"])
    if not records:
        return np.zeros((0, *image.shape[:2]), bool)
    return np.stack([r["segmentation"] for r in records])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """IoU of every mask of a (R, H, W) with every mask of b (K, H, W) -> (R, K)."""
    return mask_iou(torch.from_numpy(a)[:, None], torch.from_numpy(b)[None])


def prefill(model: minisam.Sam, image: np.ndarray, truth: np.ndarray, accept_iou: float):
    """Stage 2 on one image: the model proposes its confident masks; the annotator keeps a
    proposal if it is as good as a mask it would have accepted (IoU >= accept_iou with a true
    mask not yet covered) and deletes the rest. Returns (kept masks, bool (K,) which true
    masks they cover)."""
    proposals = automatic_masks(model, image, PREFILL_SETTINGS)
    covered = np.zeros(len(truth), bool)
    kept = []
    if len(proposals) and len(truth):
        ious = iou_matrix(proposals, truth).numpy()
        for r in range(len(proposals)):  # most confident first
            candidates = np.where(~covered & (ious[r] >= accept_iou))[0]
            if len(candidates):
                covered[candidates[ious[r, candidates].argmax()]] = True
                kept.append(proposals[r])
    kept = np.stack(kept) if kept else np.zeros((0, *image.shape[:2]), bool)
    return kept, covered


def precision_recall(generated: list, truths: list, match_iou: float) -> dict:
    """Precision: the fraction of generated masks that overlap some true mask at IoU >=
    match_iou. Recall: the fraction of true masks that some generated mask overlaps so."""
    hits = total = found = asked = 0
    for masks, truth in zip(generated, truths):
        total, asked = total + len(masks), asked + len(truth)
        if len(masks) and len(truth):
            ious = iou_matrix(masks, truth)
            hits += int((ious.amax(1) >= match_iou).sum())
            found += int((ious.amax(0) >= match_iou).sum())
    return {"masks_per_image": total / max(len(generated), 1),
            "precision": hits / max(total, 1), "recall": found / max(asked, 1)}


# -----------------------------------------------------------------------------
# 4. The engine


def run(budget: Budget, seed: int = 0, log=print, brush: bool = False) -> tuple:
    """The whole experiment (brush: the annotator finishes by hand what its clicks could not,
    see `annotate`). Returns (results dict, dict of models by name)."""
    started = time.time()

    def say(text):
        log(f"[{(time.time() - started) / 60:5.1f} min] {text}")

    # images: a hand-labelled seed set, then a pool the engine labels stage by stage
    first = seed * 100_000
    n_pool = budget.stage1_rounds * budget.stage1_images_per_round + budget.stage2_images \
        + budget.stage3_images
    world = [make_sample(TRAIN_SEEDS[first + i]) for i in range(budget.seed_images + n_pool)]
    seed_set, pool = world[:budget.seed_images], world[budget.seed_images:]
    results = {"budget": dataclasses.asdict(budget), "brush": brush,
               "hyper_parameters": _hyper_parameters(),
               "miou_definition": "mean of held-out box-prompt mIoU and one-click mIoU (IoU "
                                  f"head's choice of 3), on EVAL_SEEDS[:{budget.eval_images}]",
               "clicks_per_mask_definition": "all clicks spent (including on masks given up "
                                             "after the click budget) / masks accepted"}

    say(f"seed model: {budget.seed_steps} steps on {len(seed_set)} hand-labelled images")
    torch.manual_seed(seed)
    model = minisam.Sam(minisam.CONFIGS["toy"])
    labelled = list(seed_set)  # everything labelled so far: (image, masks)
    train_on_labels(model, labelled, budget.seed_steps, seed=seed, log=log)
    seed_model = minisam.Sam(minisam.CONFIGS["toy"])
    seed_model.load_state_dict(model.state_dict())
    seed_model.eval()
    results["seed_model"] = held_out_miou(model, budget.eval_images)

    # Stage 1, assisted-manual: annotate a batch of pool images, retrain on all labels, repeat
    rounds, stage1_results, cursor = [], [], 0
    for r in range(budget.stage1_rounds):
        quality = held_out_miou(model, budget.eval_images)  # the model the annotator uses
        batch = pool[cursor:cursor + budget.stage1_images_per_round]
        cursor += len(batch)
        annotated = annotate(model, [im for im, _ in batch], [t for _, t in batch],
                             budget.click_budget, budget.accept_iou, brush)
        stage1_results += annotated
        labelled += [(im, a["masks"]) for (im, _), a in zip(batch, annotated) if len(a["masks"])]
        rounds.append({**annotation_cost(annotated), **quality})
        say(f"stage 1 round {r + 1}: held-out miou {quality['miou']:.3f}, "
            f"{rounds[-1]['clicks_per_mask']:.2f} clicks/mask, "
            f"{rounds[-1]['masks_per_image']:.2f} masks/image, "
            f"{rounds[-1]['accepted_fraction']:.0%} of masks accepted; retraining "
            f"{budget.round_steps} steps on {len(labelled)} images")
        train_on_labels(model, labelled, budget.round_steps, seed=seed + 1 + r, warmup=10, log=log)
    results["stage1"] = {"rounds": rounds,
                         "masks_per_image": annotation_cost(stage1_results)["masks_per_image"],
                         "after_retraining": held_out_miou(model, budget.eval_images)}

    # Stage 2, semi-automatic: confident masks pre-filled, the annotator clicks the rest
    batch = pool[cursor:cursor + budget.stage2_images]
    cursor += len(batch)
    prefilled, rest = [], []
    for image, truth in batch:
        kept, covered = prefill(model, image, truth, budget.accept_iou)
        prefilled.append(kept)
        rest.append(truth[~covered])  # what the annotator still has to click
    annotated = annotate(model, [im for im, _ in batch], rest, budget.click_budget,
                         budget.accept_iou, brush)
    n_prefilled = sum(len(k) for k in prefilled)
    n_clicked = sum(int(a["accepted"].sum()) for a in annotated)
    clicks = sum(int(a["clicks"].sum()) for a in annotated)
    results["stage2"] = {
        "prefilled_fraction": n_prefilled / max(n_prefilled + n_clicked, 1),
        "masks_per_image": (n_prefilled + n_clicked) / max(len(batch), 1),
        "clicks_per_mask": clicks / max(n_prefilled + n_clicked, 1),
        "prefilled_masks": n_prefilled, "clicked_masks": n_clicked}
    for (image, _), kept, a in zip(batch, prefilled, annotated):
        masks = np.concatenate([kept, a["masks"]])
        if len(masks):
            labelled.append((image, masks))
    say(f"stage 2: {results['stage2']['prefilled_fraction']:.0%} of masks pre-filled, "
        f"{results['stage2']['masks_per_image']:.2f} masks/image; retraining "
        f"{budget.round_steps} steps on {len(labelled)} images")
    train_on_labels(model, labelled, budget.round_steps, seed=seed + 100, warmup=10, log=log)
    results["stage2"]["after_retraining"] = held_out_miou(model, budget.eval_images)

    # Stage 3, fully automatic: the generator labels the rest of the pool, nobody checks.
    # Beside it, what plain pseudo-labelling would have produced on the same images: the seed
    # model (trained once on the hand labels) labelling once.
    batch = pool[cursor:]
    generated = [automatic_masks(model, image, TOY_AMG_SETTINGS) for image, _ in batch]
    pseudo = [automatic_masks(seed_model, image, TOY_AMG_SETTINGS) for image, _ in batch]
    truths = [truth for _, truth in batch]
    results["stage3"] = {**precision_recall(generated, truths, MATCH_IOU), "match_iou": MATCH_IOU,
                         "pseudo_labelling_with_seed_model":
                             precision_recall(pseudo, truths, MATCH_IOU)}
    labelled += [(image, masks) for (image, _), masks in zip(batch, generated) if len(masks)]
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
        train_on_labels(fresh, data, budget.final_steps, seed=seed + 200, log=log)
        finals[name] = fresh
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
    return results, {"seed": seed_model, "engine_loop": model, **finals}


# -----------------------------------------------------------------------------
# 5. Pictures


def make_figures(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = results["stage1"]["rounds"]
    x = np.arange(1, len(rounds) + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(x, [r["clicks_per_mask"] for r in rounds], marker="o", label="clicks per mask")
    ax.set(xlabel="stage-1 round (model retrained after each)", ylabel="clicks per accepted mask",
           xticks=x, ylim=(0, None), title="Assisted-manual: annotation cost per mask")
    twin = ax.twinx()
    twin.plot(x, [r["miou"] for r in rounds], marker="s", color="tab:green",
              label="held-out mIoU of the model used")
    twin.set(ylabel="held-out mIoU", ylim=(0, 1))
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "clicks_per_mask.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    names = [f"stage 1\nround {i}" for i in x] + ["stage 2", "stage 3"]
    values = [r["masks_per_image"] for r in rounds] + [results["stage2"]["masks_per_image"],
                                                       results["stage3"]["masks_per_image"]]
    colours = ["tab:blue"] * len(rounds) + ["tab:orange", "tab:red"]
    ax.bar(names, values, color=colours)
    prefilled = results["stage2"]["prefilled_fraction"] * results["stage2"]["masks_per_image"]
    ax.bar(["stage 2"], [prefilled], color="tab:olive", label="of which pre-filled")
    ax.set(ylabel="masks per image", title="Masks per image, stage by stage")
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
    p.add_argument("--out", type=Path, required=True, help="directory for data_engine.json and figures")
    p.add_argument("--quick", action="store_true",
                   help="a few images and steps: exercises the pipeline, numbers meaningless")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--brush", action="store_true",
                   help="the annotator finishes by hand every mask its clicks cannot (the "
                        "paper's brush and eraser) instead of giving up on it")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch CPU threads")
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
        elif field.name in ("stage2_images", "stage3_images"):
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
        results, _ = run(args.budget, seed=args.seed, brush=args.brush)
    finally:  # main may run inside another program (the tests): leave its threads alone
        torch.set_num_threads(threads)
    results["quick"] = args.quick
    (args.out / "data_engine.json").write_text(json.dumps(results, indent=2))
    make_figures(results, args.out)
    print(f"wrote {args.out / 'data_engine.json'} and figures in {args.out}/")
    return results


if __name__ == "__main__":
    main()
