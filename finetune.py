"""
finetune.py: fine-tune SAM on your own masks, on a CPU.

    python finetune.py --data DATA --config vit_b --checkpoint sam_vit_b_01ec64.pth --out OUT
    python finetune.py ... --resume        # continue OUT/ckpt.pt to --steps
    python finetune.py ... --eval-only     # score --checkpoint and OUT/ckpt.pt again

DATA is either a folder in SA-1B's layout, NAME.jpg (or .png) beside NAME.json whose
"annotations" hold COCO run-length "segmentation"s, or a COCO instances JSON file, its images
found by "file_name" beside it (run-length or polygon segmentations). Nothing in DATA is
written to. A fifth of the images (--val-fraction) is held out, chosen by file name; they are
scored with train_toy.py's protocol before and after training (OUT/metrics.json), and
OUT/ckpt.pt loads with minisam.build_sam(config, checkpoint="OUT/ckpt.pt").

By default the image encoder is frozen: each image is encoded once and its embedding cached
in OUT/embeddings/, and only the prompt encoder and mask decoder train, about 4M parameters
that cost tens of milliseconds a pass even at ViT-B's size. --train-encoder trains it all.
Lesson 10 (lessons/10_finetuning.md) explains it, with a run on a shifted toy domain.

Three parts:
  1. reading masks: COCO run lengths, polygons, the two layouts, and what is refused;
  2. the model's frame: images resized and padded as SamPredictor does, masks with them,
     and the cache of image embeddings;
  3. training with train_toy's loop and scoring with train_toy's evaluation.
Toy data to try it on: `python train_toy.py --export-toy DIR --images 200 [--shifted]`.
"""

import argparse
import dataclasses
import hashlib
import json
import time
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib.image
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.path import Path as Outline

import minisam
import train_toy
from minisam import CONFIGS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# train_toy's settings, which the toy model was trained with (8 images a step, 8 of their
# masks each, 3 decoder passes a mask), without its small steps: the model is trained already
SETTINGS = dataclasses.replace(train_toy.TrainSettings(), small_steps=0)
CLICKS = 5  # the held-out images are scored after 1..5 clicks
EVAL_TARGETS = 64  # held-out masks decoded together (whole images, so at least one image's)
SAVE_EVERY = 100  # steps between checkpoints, so an interrupted run can --resume
EXAMPLES = 3  # held-out images drawn before and after in OUT/examples.png

# -----------------------------------------------------------------------------
# 1. Reading masks
# COCO stores a mask as run lengths over the pixels in column-major order, the first run
# counting zeros; minisam.rle_to_mask decodes the plain list form. SA-1B and most COCO files
# store the list compressed into a string, and COCO's outlined objects are polygons.


def rle_counts(text: str) -> list:
    """COCO's compressed run lengths -> the list of ints. Each number is written in 5-bit
    groups, least significant first, one character ('0' + group) per group: bit 5 says
    another group follows, bit 4 of the last one is the sign. From the fourth number on, the
    string holds the difference from the number two before (a run of ones is most like the
    run of ones before it)."""
    counts, i = [], 0
    while i < len(text):
        value, shift, more = 0, 0, True
        while more:
            if i == len(text):
                raise ValueError("corrupt RLE: the string ends inside a number")
            group = ord(text[i]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"corrupt RLE: {text[i]!r} is not a run-length character")
            value |= (group & 0x1F) << shift
            more, i, shift = group & 0x20, i + 1, shift + 5
        if group & 0x10:  # negative: extend the sign
            value -= 1 << shift
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
    return counts


def polygon_mask(polygons: list, h: int, w: int) -> np.ndarray:
    """COCO polygons [[x0, y0, x1, y1, ...], ...] in pixels (pixel (0, 0) spans 0..1) -> their
    union as an (h, w) bool mask, a pixel in where its centre is. pycocotools, which scans the
    outline at 5x resolution, differs only on pixels the outline crosses."""
    mask = np.zeros((h, w), bool)
    for polygon in polygons:
        if (not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2
                or not all(isinstance(v, (int, float)) for v in polygon)):
            raise ValueError("a polygon must be a list [x0, y0, x1, y1, ...] of 3 or more points")
        corners = np.array(polygon, dtype=float).reshape(-1, 2)
        # only the pixels of its bounding box can be inside
        (x0, y0), (x1, y1) = np.floor(corners.min(0)).astype(int), np.ceil(corners.max(0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
        inside = Outline(corners).contains_points(np.stack([xx.ravel(), yy.ravel()], 1))
        mask[y0:y1, x0:x1] |= inside.reshape(yy.shape)
    return mask


def decode_segmentation(segmentation, h: int, w: int) -> np.ndarray:
    """A COCO "segmentation" (run lengths, compressed or not, or polygons) -> (h, w) bool."""
    if isinstance(segmentation, list):
        return polygon_mask(segmentation, h, w)
    if not (isinstance(segmentation, dict) and {"size", "counts"} <= segmentation.keys()):
        raise ValueError("a segmentation must be COCO run lengths {'size': [h, w], 'counts': "
                         "...} or a list of polygons")
    if list(segmentation["size"]) != [h, w]:
        raise ValueError(f"its size {list(segmentation['size'])} (height, width) is not the "
                         f"image's [{h}, {w}]")
    counts = segmentation["counts"]
    counts = rle_counts(counts) if isinstance(counts, str) else counts
    if not (isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)):
        raise ValueError("corrupt RLE: counts must be a string or a list of ints >= 0")
    if sum(counts) != h * w:
        raise ValueError(f"corrupt RLE: its runs cover {sum(counts)} pixels, the image {h * w}")
    return minisam.rle_to_mask({"size": [h, w], "counts": counts})


@dataclasses.dataclass
class Entry:
    """One annotated image as the data lists it, before anything is decoded."""
    image: Path
    annotations_file: Path
    size: tuple  # (height, width) the JSON declares for the image, or None
    segmentations: list  # (label naming the annotation in errors, COCO segmentation)


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(value).__name__}")
    return value


def check_annotations(annotations, path: Path) -> list:
    if not isinstance(annotations, list) or not all(isinstance(a, dict) and "segmentation" in a
                                                    for a in annotations):
        raise ValueError(f"{path}: 'annotations' must be a list of objects with a 'segmentation'")
    return annotations


def declared_size(info: dict):
    return (info["height"], info["width"]) if {"height", "width"} <= info.keys() else None


def read_sa1b(folder: Path) -> list:
    """SA-1B's layout: every NAME.jpg (or .png) beside its NAME.json."""
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    jsons = {p.stem: p for p in folder.glob("*.json")}
    if not images:
        raise ValueError(f"{folder}: no .jpg or .png images in the folder (expected SA-1B's "
                         "layout, NAME.jpg beside NAME.json)")
    for image in images:
        if image.stem not in jsons:
            raise ValueError(f"{image}: no {image.stem}.json beside it (SA-1B's layout: "
                             "NAME.jpg beside NAME.json)")
    for stem in sorted(jsons.keys() - {image.stem for image in images}):
        raise ValueError(f"{jsons[stem]}: no image {stem}.jpg or {stem}.png beside it (a COCO "
                         "instances file is passed itself: --data FILE.json)")
    entries = []
    for image in images:
        path = jsons[image.stem]
        record = read_json(path)
        if "annotations" not in record:
            raise ValueError(f"{path}: no 'annotations' (expected SA-1B's per-image JSON)")
        annotations = check_annotations(record["annotations"], path)
        entries.append(Entry(image, path, declared_size(record.get("image", {})),
                             [(f"annotation {i}", a["segmentation"])
                              for i, a in enumerate(annotations)]))
    return entries


def read_coco(path: Path) -> list:
    """A COCO instances file: its images by "file_name" beside it, and their annotations."""
    coco = read_json(path)
    if not {"images", "annotations"} <= coco.keys():
        raise ValueError(f"{path}: a COCO instances file needs 'images' and 'annotations'")
    if not coco["images"]:
        raise ValueError(f"{path}: lists no images")
    by_image = defaultdict(list)
    for annotation in check_annotations(coco["annotations"], path):
        by_image[annotation.get("image_id")].append(annotation)
    entries = []
    for info in coco["images"]:
        if not (isinstance(info, dict) and {"id", "file_name"} <= info.keys()):
            raise ValueError(f"{path}: every one of 'images' needs an 'id' and a 'file_name'")
        image = path.parent / info["file_name"]
        if not image.is_file():
            raise ValueError(f"{path}: its image {info['file_name']!r} is not at {image}")
        entries.append(Entry(image, path, declared_size(info),
                             [(f"annotation id {a.get('id')}", a["segmentation"])
                              for a in by_image[info["id"]]]))
    return entries


def read_data(data: Path) -> list:
    if data.is_dir():
        return read_sa1b(data)
    if data.is_file() and data.suffix.lower() == ".json":
        return read_coco(data)
    raise ValueError(f"--data {data}: expected a folder in SA-1B's layout or a COCO .json file")


def read_image(path: Path) -> np.ndarray:
    """Any image matplotlib reads (PNG itself, JPEG through Pillow) -> uint8 RGB (H, W, 3)."""
    try:
        image = matplotlib.image.imread(path)
    except Exception as e:  # Pillow and matplotlib raise many types for a broken file
        raise ValueError(f"{path}: not a readable image: {type(e).__name__}: {e}") from None
    if image.dtype.kind == "f":  # PNGs come back as floats in 0..1
        image = (image * 255).round().astype(np.uint8)
    if image.ndim == 2:  # grey
        image = np.stack([image] * 3, axis=-1)
    return np.array(image[..., :3])  # without the alpha channel; a copy, writable


# -----------------------------------------------------------------------------
# 2. The model's frame and the embedding cache
# The model sees every image as SamPredictor shows it: the longest side resized to
# image_size, then zero-padded at the bottom and right into an S x S square. Each mask goes
# through the same resize (as a 0/1 image, kept where it is at least half in) and the same
# padding, so it lies on its object in the frame the decoder predicts in.


@dataclasses.dataclass
class Sample:
    image: Path
    masks: list  # each mask in the model's S x S frame, as COCO run lengths (mask_to_rle)
    embedding: Path = None  # its image embedding (C, g, g), cached in OUT/embeddings/


def model_frame(image: np.ndarray, S: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (h, w, 3), longest side S: the predictor's resize."""
    return minisam.ResizeLongestSide(S).apply_image(image)


def mask_in_model_frame(mask: np.ndarray, S: int) -> torch.Tensor:
    """(H, W) bool -> (S, S) bool: resized as the image is, then padded as the model pads."""
    resized = minisam.ResizeLongestSide(S).apply_image_torch(
        torch.from_numpy(mask)[None, None].float())[0, 0] >= 0.5
    return F.pad(resized, (0, S - resized.shape[1], 0, S - resized.shape[0]))


def load_sample(entry: Entry, S: int):
    """Read one image and its masks, refuse what does not fit, and move the masks into the
    model's frame. A mask without pixels (in the data or once resized) is left out with a
    warning; so is an image left without masks (None)."""
    image = read_image(entry.image)
    H, W = image.shape[:2]
    if entry.size is not None and tuple(entry.size) != (H, W):
        raise ValueError(f"{entry.annotations_file}: gives {entry.image.name} the size "
                         f"{list(entry.size)} (height, width), but the image is [{H}, {W}]")
    masks, empty = [], []
    for label, segmentation in entry.segmentations:
        try:
            mask = decode_segmentation(segmentation, H, W)
        except ValueError as e:
            raise ValueError(f"{entry.annotations_file}: {label} of {entry.image.name}: {e}") from None
        mask = mask_in_model_frame(mask, S)
        if mask.any():
            masks.append(minisam.mask_to_rle(mask[None])[0])
        else:
            empty.append(label)
    if empty:
        warnings.warn(f"{entry.annotations_file}: left out {len(empty)} mask(s) of "
                      f"{entry.image.name} with no pixels at the model's input size "
                      f"({', '.join(empty)})", stacklevel=2)
    if not masks:
        warnings.warn(f"{entry.image}: no masks; left out", stacklevel=2)
        return None
    return Sample(entry.image, masks)


def targets_of(sample: Sample, chosen) -> torch.Tensor:
    """Masks `chosen` (indices) of a sample -> (len(chosen), S, S) bool."""
    return torch.from_numpy(np.stack([minisam.rle_to_mask(sample.masks[k]) for k in chosen]))


def split(entries: list, fraction: float):
    """(train, held out): the round(fraction * n) images whose file names hash lowest are held
    out, so the split depends on the names alone, not on their order, the seed or the run."""
    def digest(entry):
        return hashlib.sha1(entry.image.name.encode()).hexdigest()
    ordered = sorted(entries, key=digest)
    held_out = max(1, round(fraction * len(entries)))
    return ordered[held_out:], ordered[:held_out]


def encode(model: minisam.Sam, images: list) -> torch.Tensor:
    """uint8 (h, w, 3) images in the model's frame -> image embeddings (B, C, g, g). Each is
    normalised and padded alone (their sizes differ), then one encoder call takes them all."""
    x = [model.preprocess(torch.from_numpy(image).to(model.device).permute(2, 0, 1)[None].float())
         for image in images]
    return model.image_encoder(torch.cat(x))


def encoder_digest(model: minisam.Sam) -> bytes:
    """A fingerprint of the image encoder's weights: a cached embedding is only reused by
    the encoder that made it."""
    digest = hashlib.sha1(repr(model.config).encode())
    for name, tensor in model.image_encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy())
    return digest.digest()


@torch.no_grad()
def cache_embeddings(model: minisam.Sam, samples: list, cache: Path) -> None:
    """Set every sample's embedding: the file under `cache` named by (encoder, image file),
    encoded now only if no run has encoded it before. For ViT-B this is the slow part of a
    run, seconds an image on a CPU; every later step and every later run reads the file."""
    model.eval()
    cache.mkdir(parents=True, exist_ok=True)
    encoder, S = encoder_digest(model), model.config.image_size
    for sample in samples:
        key = hashlib.sha1(encoder + sample.image.read_bytes()).hexdigest()
        sample.embedding = cache / f"{key}.pt"
    missing = [s for s in samples if not s.embedding.exists()]
    start = time.time()
    for i, sample in enumerate(missing):
        embedding = encode(model, [model_frame(read_image(sample.image), S)])[0].cpu()
        train_toy.save_checkpoint(sample.embedding, embedding)  # complete, or not there
        if time.time() - start > 10 or i + 1 == len(missing):
            print(f"  encoded {i + 1}/{len(missing)} images", flush=True)
            start = time.time()


def load_embeddings(samples: list, device) -> torch.Tensor:
    return torch.stack([torch.load(s.embedding, weights_only=True) for s in samples]).to(device)


# -----------------------------------------------------------------------------
# 3. Training and scoring
# A step is train_toy's (`train_toy.train`): SETTINGS.images_per_step images drawn from the
# training images, targets_per_image of each one's masks drawn with replacement, each target
# prompted as an annotator would (InteractiveTraining). The draws are a pure function of
# (seed, step), so a resumed run takes exactly the steps the uninterrupted one would have.


def sample_batch(step: int, samples: list, settings: train_toy.TrainSettings):
    """The images of one step (indices into samples), its targets (N, S, S) bool, which
    image each target is in (N,), and the generator that goes on to draw the step's prompts."""
    generator = train_toy.step_generator(settings.seed, step)
    chosen = torch.randint(len(samples), (settings.images_per_step,), generator=generator).tolist()
    targets = [targets_of(samples[i], torch.randint(len(samples[i].masks),
                                                    (settings.targets_per_image,),
                                                    generator=generator).tolist())
               for i in chosen]
    index = torch.arange(len(chosen)).repeat_interleave(settings.targets_per_image)
    return chosen, torch.cat(targets), index, generator


class CachedEmbeddingTraining(train_toy.InteractiveTraining):
    """InteractiveTraining of a frozen image encoder, whose embeddings were cached: its
    inputs are the images' embeddings (B, C, g, g), not the images."""

    def forward(self, embeddings, targets, image_index, generator):
        return self.from_embeddings(embeddings[image_index], targets, generator)


def train_model(model: minisam.Sam, train: list, state: dict, args) -> list:
    """Train `model` in place to --steps with train_toy's loop, from `state` (OUT/ckpt.pt) if
    resumed, saving OUT/ckpt.pt every SAVE_EVERY steps and at the end. Returns the history
    of the steps."""
    S, ckpt_path = model.config.image_size, args.out / "ckpt.pt"
    settings = dataclasses.replace(SETTINGS, steps=args.steps, lr=args.lr, seed=args.seed,
                                   warmup=max(1, args.steps // 10))
    history = state["history"] if state else []
    args.out.mkdir(parents=True, exist_ok=True)
    model.image_encoder.requires_grad_(args.train_encoder)

    def batches(step, image_size):
        chosen, targets, index, generator = sample_batch(step, train, settings)
        if args.train_encoder:  # the encoder runs, with gradients, on every step's images
            images = torch.stack([train_toy.pad_to_square(model_frame(read_image(
                train[i].image), S), S) for i in chosen])
        else:  # the frozen encoder ran once per image, before training
            images = load_embeddings([train[i] for i in chosen], model.device)
        return images, targets, index, generator

    def after_step(model, optimizer):
        step = history[-1]["step"]
        if step % SAVE_EVERY == 0 or step == args.steps:
            train_toy.save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "config": dataclasses.asdict(model.config),
                "step": step, "seed": args.seed, "train_encoder": args.train_encoder,
                "history": history, "optimizer": optimizer.state_dict()})

    train_toy.train(model, batches, settings, history, state and state["optimizer"],
                    after_step=after_step, checkpoint=ckpt_path,
                    training=(train_toy.InteractiveTraining if args.train_encoder
                              else CachedEmbeddingTraining))
    return history


@torch.no_grad()
def evaluate(model: minisam.Sam, samples: list) -> dict:
    """train_toy's held-out metrics on these images (box mIoU, 1-click mIoU, mIoU after 1..
    CLICKS clicks, ...), scored in the model's S x S frame, and the training loss on every
    one of their masks with fixed prompts."""
    model.eval()
    trainer = train_toy.InteractiveTraining(model, SETTINGS.iters, SETTINGS.no_click_passes)
    batches, loss, groups = [], 0.0, [[]]
    for sample in samples:  # whole images, about EVAL_TARGETS masks a group
        if sum(len(s.masks) for s in groups[-1]) >= EVAL_TARGETS:
            groups.append([])
        groups[-1].append(sample)
    for i, group in enumerate(groups):
        embeddings = load_embeddings(group, model.device)
        targets = torch.cat([targets_of(s, range(len(s.masks))) for s in group])
        index = torch.cat([torch.full((len(s.masks),), j) for j, s in enumerate(group)])
        batches.append(train_toy.score_targets(model, embeddings, targets, index, CLICKS))
        generator = torch.Generator().manual_seed(i)
        loss += trainer.from_embeddings(embeddings[index.to(model.device)],
                                        targets.to(model.device), generator)[0].item() * len(targets)
    metrics = train_toy.held_out_metrics(batches)
    metrics["loss"] = loss / metrics["targets"]
    return metrics


@torch.no_grad()
def examples(model: minisam.Sam, samples: list) -> list:
    """For the picture: on each sample's middle mask, the mask a box prompt gives and the
    one of a single click (at train_toy.interior_point) that the IoU head picks, each with
    its true and predicted IoU."""
    model.eval()
    answers = []
    for sample in samples:
        target = targets_of(sample, [len(sample.masks) // 2])  # (1, S, S)
        embedding = load_embeddings([sample], model.device)
        box_mask, box_iou, _ = train_toy.decode(model, embedding,
                                                boxes=minisam.batched_mask_to_box(target).float())
        click = train_toy.interior_point(target)[:, None]  # (1, 1, 2)
        masks, ious, _ = train_toy.decode(model, embedding, click, torch.ones(1, 1, dtype=torch.long),
                                          multimask=True)
        best = ious[0].argmax()
        answers.append({"box": (box_mask[0, 0], box_iou[0, 0].item()),
                        "click": (masks[0, best], ious[0, best].item())})
    return answers


def draw_examples(args, metrics: dict, samples: list, before: list, after: list) -> None:
    """OUT/examples.png: each held-out sample in a row, the mask `examples` asks for, then
    the box's and the click's answers before and after, drawn by train_toy's rules (its
    "Pictures"), under the run's box mIoU before and after."""
    plt, S = train_toy.pyplot(), CONFIGS[args.config].image_size
    fig, axes = plt.subplots(len(samples), 5, figsize=(13, 2.9 * len(samples) + 1.2),
                             squeeze=False, layout="constrained")
    for row, sample, old, new in zip(axes, samples, before, after):
        image = model_frame(read_image(sample.image), S)
        truth = targets_of(sample, [len(sample.masks) // 2])  # (1, S, S)
        box = minisam.batched_mask_to_box(truth)[0].numpy()
        click = train_toy.interior_point(truth).numpy()  # (1, 2): where examples() clicks
        truth = truth[0].numpy()
        train_toy.mask_panel(row[0], image, truth=truth, colour=True,
                             title=f"held-out {sample.image.name}\nthe mask to find")
        for ax, (prompt, when, answers) in zip(row[1:], [(p, w, a) for p in ("box", "click")
                                                         for w, a in (("before", old),
                                                                      ("after", new))]):
            mask, predicted = answers[prompt]
            mask = mask.numpy()
            train_toy.mask_panel(ax, image, mask, truth,
                                 *((click, [1]) if prompt == "click" else ()),
                                 box=box if prompt == "box" else None,
                                 title=f"{when}, {'a box' if prompt == 'box' else 'one click'}\n"
                                       f"{train_toy.scores(predicted, mask, truth)}")
    fig.suptitle(f"{args.checkpoint or 'random weights'} on held-out images, before and after "
                 f"{metrics['steps']} steps of `finetune.py` ("
                 f"{'the whole model' if args.train_encoder else 'decoder only'})\nbox mIoU on "
                 f"all {metrics['held_out_images']} held-out images: "
                 f"{metrics['before']['box_miou']:.3f} before, "
                 f"{metrics['after']['box_miou']:.3f} after")
    train_toy.legend(fig, "mask", "truth", "positive", "box")
    train_toy.save_figure(fig, args.out / "examples.png")


ROWS = [("box_miou", "box mIoU"), ("one_click_miou", "1-click mIoU (IoU head picks)"),
        ("one_click_oracle_miou", "1-click mIoU (best of 3)"),
        *((f"clicks_{k}", f"mIoU after {k} clicks") for k in range(2, CLICKS + 1)),
        ("iou_head_pearson_r", "IoU head Pearson r"), ("loss", "held-out loss")]


def table(metrics: dict) -> str:
    """The before/after table printed at the end of a run."""
    columns = [c for c in ("before", "after") if c in metrics]

    def value(key, column):
        m = metrics[column]
        return m["miou_by_clicks"][int(key[7:]) - 1] if key.startswith("clicks_") else m[key]

    lines = [f"held out: {metrics['held_out_images']} images, {metrics['before']['targets']} "
             "masks", f"  {'':<32}" + "".join(f"{c:>9}" for c in columns)
             + ("   change" if len(columns) == 2 else "")]
    for key, name in ROWS:
        values = [value(key, c) for c in columns]
        lines.append(f"  {name:<32}" + "".join(f"{v:9.3f}" for v in values)
                     + (f"{values[1] - values[0]:+9.3f}" if len(values) == 2 else ""))
    return "\n".join(lines)


# Whether the image encoder trains too. A frozen encoder keeps what its pre-training learnt and
# costs only decoder passes, the one choice for ViT-B/L/H on a CPU (lesson 10). A small one
# (the toy's 0.5M weights) trains in minutes, and on a domain far from its training it is the
# encoder's features that must change (lessons/experiments.md, "Does fine-tuning the encoder
# help on a new world?").
SMALL_ENCODER = 10**7


def encoder_weights(config) -> int:
    with torch.device("meta"):  # counted without allocating them
        return sum(p.numel() for p in minisam.Sam(config).image_encoder.parameters())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Fine-tune SAM on your own masks (SA-1B folder or "
                                            "COCO instances JSON).")
    p.add_argument("--data", type=Path, help="a folder in SA-1B's layout or a COCO .json file")
    p.add_argument("--config", choices=sorted(CONFIGS), default="vit_b")
    p.add_argument("--checkpoint", type=Path,
                   help="the weights to start from (default: random, i.e. from scratch)")
    p.add_argument("--out", type=Path, default=Path("out/finetune"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="the part of the images held out, chosen by file name")
    encoder = p.add_mutually_exclusive_group()
    encoder.add_argument("--train-encoder", action="store_true", default=None,
                         help="train the whole model (the default for an image encoder of at "
                              f"most {SMALL_ENCODER:,} weights, such as the toy's)")
    encoder.add_argument("--freeze-encoder", dest="train_encoder", action="store_false",
                         help="train the prompt encoder and mask decoder only (the default for "
                              "ViT-B/L/H)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt to --steps")
    p.add_argument("--eval-only", action="store_true",
                   help="score --checkpoint and, if there is one, OUT/ckpt.pt; no training")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda...")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.data is None:
        p.error("--data is required")
    if args.train_encoder is None:
        args.train_encoder = encoder_weights(CONFIGS[args.config]) <= SMALL_ENCODER
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if not 0 < args.val_fraction <= 1:
        p.error(f"--val-fraction must be in (0, 1], got {args.val_fraction}")
    if args.device != "auto":
        try:
            minisam.check_device(args.device)
        except ValueError as e:
            p.error(f"--device: {e}")
    if args.data is not None and args.out.resolve().is_relative_to(args.data.resolve()):
        p.error(f"--out {args.out} lies inside --data {args.data}; nothing is written there")
    return args


def read_samples(args, S: int) -> tuple:
    """The training and held-out samples of --data, in the model's frame."""
    train_entries, val_entries = split(read_data(args.data), args.val_fraction)
    if not train_entries and not args.eval_only:
        raise ValueError(f"{args.data}: {len(val_entries)} image(s) are all held out; none is "
                         "left to train on")
    # the held-out images are read first: an error in them shows up before any training
    val = [s for s in (load_sample(e, S) for e in val_entries) if s is not None]
    train = [s for s in (load_sample(e, S) for e in train_entries) if s is not None]
    if not val or not (train or args.eval_only):
        raise ValueError(f"{args.data}: no masks left to {'score' if not val else 'train on'}")
    return train, val


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    device = train_toy.pick_device(args.device)
    config = CONFIGS[args.config]
    S = config.image_size
    cache, ckpt_path = args.out / "embeddings", args.out / "ckpt.pt"
    state = None  # OUT/ckpt.pt, if resumed or scored again
    if args.resume or (args.eval_only and ckpt_path.exists()):
        if not ckpt_path.exists():
            raise SystemExit(f"no checkpoint at {ckpt_path} to resume")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        for key in ("seed", "train_encoder"):  # the seed draws every batch
            if args.resume and state[key] != getattr(args, key):
                raise SystemExit(f"{ckpt_path} was trained with {key} {state[key]}; resuming "
                                 f"with {getattr(args, key)} would not continue that run")
    try:  # bad data ends the command with the reader's message, naming the file
        train, val = read_samples(args, S)
    except ValueError as e:
        raise SystemExit(f"finetune.py: {e}") from None
    print(f"{args.data}: {len(train)} training and {len(val)} held-out images, "
          f"{sum(len(s.masks) for s in train)} and {sum(len(s.masks) for s in val)} masks")

    if args.checkpoint is None:
        print("no --checkpoint: starting from random weights")
    torch.manual_seed(args.seed)  # those random weights
    base = minisam.build_sam(config, checkpoint=args.checkpoint, device=device)
    print(f"held-out images through {args.config}'s image encoder (cached in {cache})")
    cache_embeddings(base, val, cache)
    metrics = {"data": str(args.data), "config": args.config, "checkpoint": str(args.checkpoint),
               "train_encoder": args.train_encoder, "train_images": len(train),
               "held_out_images": len(val), "before": evaluate(base, val)}
    shown = val[:EXAMPLES]
    before = examples(base, shown)  # base is trained in place below

    # the model to train (or, with --eval-only, to score): OUT/ckpt.pt if there is one, else base
    history, model = [], None if args.eval_only else base
    if state is not None:
        model = minisam.build_sam(config, checkpoint=ckpt_path, device=device)
        history = state["history"]
    if not args.eval_only:
        if not args.train_encoder:
            print("training images through the image encoder, once")
            cache_embeddings(model, train, cache)
        history = train_model(model, train, state, args)
    if model is not None:
        cache_embeddings(model, val, cache)  # already there, unless the encoder trained
        metrics["after"] = evaluate(model, val)
        metrics.update(steps=history[-1]["step"] if history else 0,
                       train_minutes=history[-1]["minutes"] if history else 0.0)
        draw_examples(args, metrics, shown, before, examples(model, shown))
    metrics["minutes"] = (time.time() - start) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(table(metrics))
    print(f"{metrics['minutes']:.1f} minutes in all; wrote {args.out / 'metrics.json'}"
          + (f" and {args.out / 'examples.png'}" if "after" in metrics else ""))


if __name__ == "__main__":
    main()
