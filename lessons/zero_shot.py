"""
lessons/zero_shot.py: SAM's thesis in miniature (section 7), measured on the toy worlds.

    python lessons/zero_shot.py                  # tables, figures and JSON from the shipped models
    python lessons/zero_shot.py --specialists    # first train a specialist per held-out world

A foundation model is one trained on broad data that adapts to tasks and data it never saw
(Bommasani et al., 2021; the paper's section 1). SAM's claim is that promptable segmentation,
trained on SA-1B's 11M diverse images, transfers *zero-shot*: to new image distributions with
no training on them, and to new tasks by prompting alone. Section 7 tests it on 23 datasets
and four tasks; this script runs the same experiments on the toy worlds (train_toy.World):
models trained on TRAINING_WORLDS (or on SHAPES alone) are scored on HELD_OUT_WORLDS, none of
whose images they saw.

  7.1 single-point valid masks: box, one click (oracle and the IoU head's choice), clicks;
  7.2 edges: the automatic masks' probability maps through a Sobel filter, scored as ODS;
  7.3 object proposals: average recall of every valid mask at a few proposal budgets;
  7.4 instances: masks from a noisy detector's boxes, against the boxes themselves;
  and where the foundation model still fails (section 8).

Everything is written to lessons/figures/zero_shot/ (results.json and the figures); lesson 11
(lessons/11_zero_shot.md) reads its tables from results.json.
"""

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minisam  # noqa: E402
import train_toy  # noqa: E402
from train_toy import EVAL_SEEDS, HELD_OUT_WORLDS, TRAINING_WORLDS  # noqa: E402

LESSONS = Path(__file__).resolve().parent
OUT = LESSONS / "figures" / "zero_shot"
MODELS = {"foundation": LESSONS / "foundation_sam.pt", "one-world": LESSONS / "toy_sam.pt"}
POINT_IMAGES = 16  # held-out images per world for 7.1
TASK_IMAGES = 8  # held-out images per world for 7.2-7.4 (each runs a 16x16 grid of prompts)
CLICKS = 5
PROPOSAL_BUDGETS = (5, 10, 20)
EDGE_THRESHOLDS = np.linspace(0.02, 0.98, 49)


def load(name: str) -> minisam.Sam:
    return minisam.build_sam("toy", checkpoint=MODELS[name]).eval()


# -----------------------------------------------------------------------------
# 7.1 Single-point valid mask evaluation
# The paper's main zero-shot test: one click at the object's "centre" (the point farthest
# from its boundary), mIoU against the one true mask. A click is ambiguous (the paper's
# examples: a click on a person's shirt), so it reports the oracle (the best of the 3 masks)
# beside the mask the IoU head picks, and a human study for what no single truth can judge.
# train_toy.evaluate measures exactly this, per world.


def single_point(model: minisam.Sam, world) -> dict:
    m = train_toy.evaluate(model, EVAL_SEEDS[:POINT_IMAGES], max_clicks=CLICKS, world=world)
    return {"box": m["box_miou"], "oracle": m["one_click_oracle_miou"],
            "choice": m["one_click_miou"], "clicks": m["miou_by_clicks"],
            "targets": m["targets"]}


# -----------------------------------------------------------------------------
# Prompting a whole image with a grid of points (shared by 7.2 and 7.3)


@torch.no_grad()
def grid_masks(model: minisam.Sam, image: np.ndarray, points_per_side: int = 16):
    """A points_per_side^2 grid of foreground clicks, 3 masks each, near-duplicates removed by
    box NMS at IoU 0.7 as in D.2: returns logits (M, h, w) on the image and predicted IoUs (M,)."""
    predictor = minisam.SamPredictor(model)
    predictor.set_image(image)
    h, w = image.shape[:2]
    points = torch.from_numpy(minisam.build_point_grid(points_per_side) * (w, h)).float()
    logits, iou, _ = predictor.predict_torch(points[:, None], torch.ones(len(points), 1),
                                             multimask_output=True, return_logits=True)
    logits, iou = logits.flatten(0, 1), iou.flatten()
    keep = (logits > 0).flatten(1).any(1)
    logits, iou = logits[keep], iou[keep]
    kept = minisam.nms(minisam.batched_mask_to_box(logits > 0).float(), iou, 0.7)
    return logits[kept], iou[kept]


def boundary(mask: np.ndarray) -> np.ndarray:
    """The pixels of a bool (..., H, W) mask with a 4-neighbour outside it."""
    padded = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
    inside = (padded[..., :-2, 1:-1] & padded[..., 2:, 1:-1] & padded[..., 1:-1, :-2]
              & padded[..., 1:-1, 2:])
    return mask & ~inside


# -----------------------------------------------------------------------------
# 7.2 Zero-shot edge detection
# SAM was never trained for edges. The paper prompts it with a 16x16 grid, keeps the masks NMS
# leaves, runs a Sobel filter over each mask's unthresholded probability map and thins the
# result with edge NMS; the strongest response over all masks is the edge map. Scored as the
# ODS F-measure: precision and recall of edge pixels (within a pixel of a true one), at the
# one threshold best for the whole dataset. The truth: the outline of every valid mask.
# The baseline is the Sobel filter on the image itself.

SOBEL = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])


def sobel(maps: torch.Tensor) -> tuple:
    """(N, H, W) -> gradient magnitude and direction (N, H, W), replicated edges."""
    x = F.pad(maps[:, None], (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(x, SOBEL[None, None])[:, 0]
    gy = F.conv2d(x, SOBEL.T[None, None])[:, 0]
    return torch.hypot(gx, gy), torch.atan2(gy, gx)


def thin(magnitude: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Edge NMS (Canny's thinning): keep a pixel only where it is no weaker than its two
    neighbours across the edge, the gradient's direction rounded to one of 4 axes."""
    axis = (torch.round(direction / (math.pi / 4)) % 4).long()  # 0: x, 1: diagonal, 2: y, 3
    steps = [(0, 1), (1, 1), (1, 0), (1, -1)]  # (dy, dx) across the edge for each axis
    padded = F.pad(magnitude, (1, 1, 1, 1))
    H, W = magnitude.shape[-2:]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for a, (dy, dx) in enumerate(steps):
        ahead = padded[..., 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
        behind = padded[..., 1 - dy:1 - dy + H, 1 - dx:1 - dx + W]
        keep |= (axis == a) & (magnitude >= ahead) & (magnitude >= behind)
    return magnitude * keep


def sam_edges(logits: torch.Tensor) -> torch.Tensor:
    """The edge map (H, W) in 0..1 from the grid's masks' logits (M, H, W)."""
    magnitude, direction = sobel(torch.sigmoid(logits))
    strongest = magnitude.argmax(0, keepdim=True)
    edge = thin(magnitude.gather(0, strongest)[0], direction.gather(0, strongest)[0])
    return edge / (4 * math.sqrt(2))  # a Sobel magnitude on a 0..1 map is at most 4 sqrt 2


def image_edges(image: np.ndarray) -> torch.Tensor:
    """The baseline: Sobel on the image's grey levels, thinned, in 0..1."""
    grey = torch.from_numpy(image).float().mean(-1)[None] / 255
    magnitude, direction = sobel(grey)
    return thin(magnitude, direction)[0] / (4 * math.sqrt(2))


def near(mask: torch.Tensor) -> torch.Tensor:
    """Pixels within one pixel (8-neighbourhood) of the mask: the matching tolerance."""
    return F.max_pool2d(mask[None].float(), 3, stride=1, padding=1)[0] > 0


def ods(edge_maps: list, truths: list) -> dict:
    """Precision, recall and F at each threshold, summed over the images, and the best F
    (optimal dataset scale)."""
    counts = np.zeros((len(EDGE_THRESHOLDS), 4))  # matched predicted, predicted, found, true
    for edge, truth in zip(edge_maps, truths):
        truth = torch.from_numpy(truth)
        for i, t in enumerate(EDGE_THRESHOLDS):
            predicted = edge > t
            counts[i] += [(predicted & near(truth)).sum(), predicted.sum(),
                          (truth & near(predicted)).sum(), truth.sum()]
    precision = counts[:, 0] / np.maximum(counts[:, 1], 1)
    recall = counts[:, 2] / np.maximum(counts[:, 3], 1)
    f = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    best = int(f.argmax())
    return {"ods": float(f[best]), "threshold": float(EDGE_THRESHOLDS[best]),
            "precision": float(precision[best]), "recall": float(recall[best])}


# -----------------------------------------------------------------------------
# 7.3 Zero-shot object proposals
# Proposals are ranked masks; average recall (AR) is the recall of the true masks at IoU
# 0.5, 0.55, ..., 0.95, averaged, using the top k proposals. The paper's budget is 1000 on
# LVIS; a toy image holds a handful of masks, so the budgets here are 5, 10 and 20. Every
# valid mask counts: wholes, parts and subparts. SAM's proposals are the grid's masks ranked
# by predicted IoU; the baseline's are the image's flat-coloured regions (connected
# components of its colours quantised to 4 levels a channel), largest first.


def average_recall(proposals: np.ndarray, truths: np.ndarray) -> float:
    """proposals (R, H, W) in rank order, truths (K, H, W) -> AR over IoU 0.5:0.95."""
    if len(proposals) == 0:
        return 0.0
    best = minisam.mask_iou(torch.from_numpy(proposals)[:, None],
                            torch.from_numpy(truths)[None]).amax(0).numpy()  # (K,)
    return float(np.mean([(best >= t).mean() for t in np.arange(50, 100, 5) / 100]))


def sam_proposals(logits: torch.Tensor, iou: torch.Tensor) -> np.ndarray:
    """The grid's masks (M, H, W) as proposals, the highest predicted IoU first."""
    return (logits[iou.argsort(descending=True)] > 0).numpy()


def colour_regions(image: np.ndarray) -> np.ndarray:
    """The baseline: connected regions of one quantised colour, largest first."""
    quantised = (image // 64).astype(int) @ np.array([16, 4, 1])
    regions = []
    for colour in np.unique(quantised):
        labels = minisam.connected_components(quantised == colour)
        regions += [labels == k for k in np.unique(labels[labels > 0])]
    regions.sort(key=lambda r: -r.sum())
    return np.array(regions, dtype=bool).reshape(-1, *image.shape[:2])


# -----------------------------------------------------------------------------
# 7.4 Zero-shot instance segmentation
# The paper feeds a detector's boxes (ViTDet's, on COCO and LVIS) to SAM as prompts. The toy
# detector: every whole object's true box, jittered as a decent detector errs (each side off
# by a Gaussian 10% of the box's size); the baseline fills the box itself as the mask.


def wholes(masks: np.ndarray) -> np.ndarray:
    """The masks no other mask of the image contains: the whole objects."""
    inside = [(masks[k][None] & ~masks).reshape(len(masks), -1).any(1) for k in range(len(masks))]
    return np.array([all(inside[k][j] or j == k for j in range(len(masks)))
                     for k in range(len(masks))], dtype=bool)


def detector_boxes(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    box = minisam.batched_mask_to_box(torch.from_numpy(masks)).numpy().astype(float)
    side = np.tile(box[:, 2:] - box[:, :2] + 1, 2)
    return box + rng.normal(0, 0.1, box.shape) * side


@torch.no_grad()
def instances(model: minisam.Sam, image: np.ndarray, objects: np.ndarray, boxes: np.ndarray):
    """mIoU terms (N,) of the model's masks from `boxes`, and of the boxes filled."""
    predictor = minisam.SamPredictor(model)
    predictor.set_image(image)
    masks, _, _ = predictor.predict_torch(None, None, boxes=torch.from_numpy(boxes).float(),
                                          multimask_output=False)
    truth = torch.from_numpy(objects[:, :image.shape[0], :image.shape[1]])
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]] + 0.5
    filled = torch.from_numpy(np.stack([(xx >= x0) & (xx <= x1 + 1) & (yy >= y0) & (yy <= y1 + 1)
                                        for x0, y0, x1, y1 in boxes]))
    return minisam.mask_iou(masks[:, 0], truth), minisam.mask_iou(filled, truth)


def tasks(model: minisam.Sam, world) -> dict:
    """7.2-7.4 on TASK_IMAGES held-out images of one world, with the baselines."""
    rng = np.random.default_rng(0)
    edges, baseline_edges, truths, ar, ar_baseline, sam_iou, box_iou = [], [], [], [], [], [], []
    for seed in EVAL_SEEDS[:TASK_IMAGES]:
        image, masks = train_toy.make_sample(seed, model.config.image_size, world)
        h, w = image.shape[:2]
        logits, iou = grid_masks(model, image)  # one grid serves 7.2 and 7.3
        edges.append(sam_edges(logits))
        baseline_edges.append(image_edges(image))
        truths.append(boundary(masks[:, :h, :w]).any(0))
        proposals, regions = sam_proposals(logits, iou), colour_regions(image)
        visible = masks[:, :h, :w]
        ar.append([average_recall(proposals[:k], visible) for k in PROPOSAL_BUDGETS])
        ar_baseline.append([average_recall(regions[:k], visible) for k in PROPOSAL_BUDGETS])
        objects = masks[wholes(masks)]
        ours, boxes = instances(model, image, objects, detector_boxes(objects, rng))
        sam_iou += ours.tolist()
        box_iou += boxes.tolist()
    return {"edges": ods(edges, truths), "edges_image_sobel": ods(baseline_edges, truths),
            "proposals_ar": dict(zip(map(str, PROPOSAL_BUDGETS), np.mean(ar, 0).tolist())),
            "proposals_ar_colour_regions": dict(zip(map(str, PROPOSAL_BUDGETS),
                                                    np.mean(ar_baseline, 0).tolist())),
            "instances_miou": float(np.mean(sam_iou)), "instances_box_miou": float(np.mean(box_iou)),
            "instances": len(sam_iou)}


# -----------------------------------------------------------------------------
# Specialists and the data ablation: short runs of train_toy.py from the one-world model
# The in-domain baseline (the paper's RITM, trained on each dataset's own kind of data): the
# one-world model trained SHORT_RUN steps on the held-out world's own images (whole model,
# images from TRAIN_SEEDS, never the EVAL_SEEDS scored here). The data ablation (section 7.6,
# figure 13) trains the same way on 1, 2, 4 and all 7 training worlds at a fixed number of
# images, and on all of them with more and fewer images. Slow (about 5 minutes a run on one
# core), so run on request; the scores are kept in specialists.json and ablation.json.

SHORT_RUN = 300  # steps
ABLATION_IMAGES = 1200  # the fixed data set of the worlds sweep; the images sweep varies it
WORLD_COUNTS = (1, 2, 4, len(TRAINING_WORLDS))
IMAGE_COUNTS = (140, ABLATION_IMAGES, None)  # None: a new image every draw (2400 draws)


SHORT_SETTINGS = train_toy.TrainSettings(steps=SHORT_RUN, lr=1e-3, warmup=30, small_steps=0)


def short_run(worlds: tuple, images: int = None) -> minisam.Sam:
    """The one-world model trained SHORT_RUN steps on `worlds` by train_toy's loop (`images`:
    a fixed data set of that many, as `train_toy.py --train-images`)."""
    settings = SHORT_SETTINGS

    def batches(step, size):
        return train_toy.training_batch(step, settings.seed, 0, settings.images_per_step,
                                        settings.targets_per_image, size, worlds, images)

    return train_toy.train(load("one-world"), batches, settings, history=[]).eval()


def train_specialists() -> dict:
    scores = {}
    for world in HELD_OUT_WORLDS:
        start = time.time()
        model = short_run((world,))
        scores[world.name] = {**single_point(model, world), "train_minutes": (time.time() - start) / 60}
        print(f"specialist {world.name}: box {scores[world.name]['box']:.3f}", flush=True)
    return {"steps": SHORT_RUN, "settings": dataclasses.asdict(SHORT_SETTINGS),
            "threads": torch.get_num_threads(), "worlds": scores}


def held_out_means(model: minisam.Sam) -> dict:
    rows = {w.name: single_point(model, w) for w in HELD_OUT_WORLDS}
    return {"box": mean(rows, "box"), "oracle": mean(rows, "oracle"), "worlds": rows}


def data_ablation() -> dict:
    runs = {"steps": SHORT_RUN, "settings": dataclasses.asdict(SHORT_SETTINGS), "worlds": {},
            "images": {}}
    for count in WORLD_COUNTS:
        runs["worlds"][count] = held_out_means(short_run(TRAINING_WORLDS[:count], ABLATION_IMAGES))
        print(f"{count} worlds: held-out box {runs['worlds'][count]['box']:.3f}", flush=True)
    for images in IMAGE_COUNTS:
        runs["images"][str(images)] = (runs["worlds"][len(TRAINING_WORLDS)] if images == ABLATION_IMAGES
                                       else held_out_means(short_run(TRAINING_WORLDS, images)))
        print(f"{images} images: held-out box {runs['images'][str(images)]['box']:.3f}", flush=True)
    return runs


# -----------------------------------------------------------------------------
# Figures


def draw_worlds(path: Path) -> None:
    """Three images of every world, with their masks' outlines."""
    pyplot = train_toy.pyplot()
    worlds = [(w, "training") for w in TRAINING_WORLDS] + [(w, "held out") for w in HELD_OUT_WORLDS]
    fig, axes = pyplot.subplots(4, 8, figsize=(16, 8.6))  # two images of each of 16 worlds
    for i, (world, split) in enumerate(worlds):
        for j, seed in enumerate(EVAL_SEEDS[20:22]):
            ax = axes.flat[2 * i + j]
            ax.axis("off")
            image, masks = train_toy.make_sample(seed, 64, world)
            h, w = image.shape[:2]
            ax.imshow(image)
            edge = boundary(masks[:, :h, :w]).any(0)
            ax.imshow(np.ma.masked_where(~edge, edge), cmap="gray_r", vmin=0, vmax=1,
                      interpolation="none")
            ax.set_xlim(-0.5, 63.5), ax.set_ylim(63.5, -0.5)
            if j == 0:
                ax.set_title(f"{world.name} ({split})", fontsize=10, loc="left",
                             color="tab:blue" if split == "training" else "tab:red")
    fig.suptitle("The toy worlds: 7 training worlds (the toy SA-1B, blue) and 9 held-out "
                 "ones (red); black: the true masks' outlines", fontsize=12)
    train_toy.save_figure(fig, path)


def draw_clicks(results: dict, path: Path) -> None:
    """Figure 9's panels: mIoU against clicks on each held-out world, each model."""
    pyplot = train_toy.pyplot()
    fig, axes = pyplot.subplots(1, len(HELD_OUT_WORLDS), figsize=(2.1 * len(HELD_OUT_WORLDS), 2.6),
                                sharey=True)
    for ax, world in zip(axes, HELD_OUT_WORLDS):
        for name, style in (("foundation", "o-"), ("one-world", "s--"), ("specialist", "^:")):
            row = results["single_point"].get(name, {}).get(world.name)
            if row:
                ax.plot(range(1, CLICKS + 1), row["clicks"][:CLICKS], style, label=name, ms=3)
        ax.set_title(world.name, fontsize=9)
        ax.set_xticks(range(1, CLICKS + 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU")
    axes[len(axes) // 2].set_xlabel("clicks")
    axes[-1].legend(fontsize=7)
    train_toy.save_figure(fig, path)


def draw_ablation(runs: dict, path: Path) -> None:
    """Figure 13's question: zero-shot mIoU on the held-out worlds against the number of
    training worlds (fixed images) and against the number of images (all worlds)."""
    pyplot = train_toy.pyplot()
    fig, (by_worlds, by_images) = pyplot.subplots(1, 2, figsize=(8, 3), sharey=True)
    for ax, kind, label in ((by_worlds, "worlds", f"training worlds ({ABLATION_IMAGES} images)"),
                            (by_images, "images", f"images ({len(TRAINING_WORLDS)} worlds)")):
        names = list(runs[kind])
        for key, style in (("box", "o-"), ("oracle", "s--")):
            ax.plot(range(len(names)), [runs[kind][n][key] for n in names], style, label=key)
        ax.set_xticks(range(len(names)), [n if n != "None" else "fresh" for n in names])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    by_worlds.set_ylabel("held-out mIoU (zero-shot)")
    by_worlds.legend()
    fig.suptitle(f"The data ablation: {runs['steps']} steps from the one-world model", fontsize=10)
    train_toy.save_figure(fig, path)


def draw_failures(model: minisam.Sam, path: Path, per_world: int = 1) -> None:
    """The foundation model's worst box prompt on each held-out world: the truth's outline
    (white) beside the predicted mask (magenta, a colour the palettes of the worlds avoid
    only by chance, so the outline is drawn over it)."""
    pyplot = train_toy.pyplot()
    fig, axes = pyplot.subplots(2, len(HELD_OUT_WORLDS), figsize=(2 * len(HELD_OUT_WORLDS), 4.3))
    for column, world in enumerate(HELD_OUT_WORLDS):
        worst = (2.0, None)
        for seed in EVAL_SEEDS[:TASK_IMAGES]:
            image, masks = train_toy.make_sample(seed, model.config.image_size, world)
            predictor = minisam.SamPredictor(model)
            predictor.set_image(image)
            h, w = image.shape[:2]
            boxes = minisam.batched_mask_to_box(torch.from_numpy(masks)).float()
            predicted, _, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
            ious = minisam.mask_iou(predicted[:, 0], torch.from_numpy(masks[:, :h, :w]))
            k = int(ious.argmin())
            if ious[k] < worst[0]:
                worst = (float(ious[k]), (image, masks[k, :h, :w], predicted[k, 0].numpy(), boxes[k]))
        iou, (image, truth, mask, box) = worst
        for row, shown in enumerate((truth, mask)):
            ax = axes[row, column]
            ax.imshow(image)
            overlay = np.zeros((*shown.shape, 4))
            overlay[shown] = (1, 0, 1, 0.55) if row else (1, 1, 1, 0.55)
            ax.imshow(overlay, interpolation="none")
            x0, y0, x1, y1 = box.tolist()
            ax.add_patch(pyplot.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1,
                                          fill=False, color="yellow", lw=1))
            ax.axis("off")
            ax.set_title(f"{world.name}: truth" if row == 0 else f"prediction, IoU {iou:.2f}",
                         fontsize=8)
    fig.suptitle("Where the foundation model fails: its worst box prompt on each held-out "
                 "world (white: truth; magenta: prediction; yellow: the box)", fontsize=10)
    train_toy.save_figure(fig, path)


# -----------------------------------------------------------------------------
# The command


def mean(rows: dict, key: str) -> float:
    return float(np.mean([row[key] for row in rows.values()]))


def run(specialists: bool, ablation: bool) -> dict:
    start = time.time()
    OUT.mkdir(parents=True, exist_ok=True)
    if specialists:
        (OUT / "specialists.json").write_text(json.dumps(train_specialists(), indent=2))
    if ablation:
        (OUT / "ablation.json").write_text(json.dumps(data_ablation(), indent=2))
    results = {"point_images": POINT_IMAGES, "task_images": TASK_IMAGES, "clicks": CLICKS,
               "single_point": {}, "tasks": {}, "today's_world": {}}
    for name in MODELS:
        model = load(name)
        results["single_point"][name] = {w.name: single_point(model, w) for w in HELD_OUT_WORLDS}
        results["tasks"][name] = {w.name: tasks(model, w) for w in HELD_OUT_WORLDS}
        results["today's_world"][name] = single_point(model, train_toy.SHAPES)
        print(f"{name}: held-out box {mean(results['single_point'][name], 'box'):.3f}  "
              f"({(time.time() - start) / 60:.1f} min)", flush=True)
    if (OUT / "specialists.json").exists():
        specialist = json.loads((OUT / "specialists.json").read_text())
        results["single_point"]["specialist"] = specialist["worlds"]
        results["specialist_steps"] = specialist["steps"]
    if (OUT / "ablation.json").exists():
        ablation_runs = json.loads((OUT / "ablation.json").read_text())
        results["ablation"] = {kind: {n: {k: r[k] for k in ("box", "oracle")} for n, r in rows.items()}
                               for kind, rows in ablation_runs.items() if kind in ("worlds", "images")}
    results["means"] = {name: {key: mean(rows, key) for key in ("box", "oracle", "choice")}
                        | {"after_5_clicks": float(np.mean([r["clicks"][4] for r in rows.values()]))}
                        for name, rows in results["single_point"].items()}
    results["minutes"] = (time.time() - start) / 60  # the measurements; the figures follow
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    draw_worlds(OUT / "worlds.png")
    draw_clicks(results, OUT / "clicks.png")
    draw_failures(load("foundation"), OUT / "failures.png")
    if "ablation" in results:
        draw_ablation(json.loads((OUT / "ablation.json").read_text()), OUT / "ablation.png")
    print(f"wrote {OUT}/results.json and figures in {results['minutes']:.1f} minutes")
    return results


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="SAM's zero-shot experiments (section 7) on the toy worlds.")
    p.add_argument("--specialists", action="store_true",
                   help=f"first train a specialist per held-out world ({SHORT_RUN} steps each)")
    p.add_argument("--ablation", action="store_true",
                   help=f"first run the data ablation ({len(WORLD_COUNTS) + len(IMAGE_COUNTS) - 1} "
                        f"runs of {SHORT_RUN} steps)")
    args = p.parse_args(argv)
    return run(args.specialists, args.ablation)


if __name__ == "__main__":
    main()
