"""
train_toy.py: train minisam the way the paper trains SAM, on a procedural world of shapes.

    python train_toy.py                       # the toy model, from scratch, on a CPU
    python train_toy.py --eval-only           # evaluate out/ckpt.pt again
    python train_toy.py --export-toy DIR --images 200 [--shifted] [--worlds W]  # for finetune.py
    torchrun --standalone --nproc_per_node=2 train_toy.py  # data-parallel

Three parts, in the order of the paper's appendix A, and pictures:
  1. the toy worlds: images of objects made of parts and subparts, so that one click is
     genuinely ambiguous (whole, part or subpart), with every valid mask as a target, drawn
     in worlds of many kinds (the toy SA-1B, and held-out worlds to test transfer on);
  2. training as simulated interactive annotation: a first prompt, corrective clicks in the
     error region, the previous mask fed back, focal + dice + IoU losses; and the training
     loop (`train`, with `TrainSettings`) that finetune.py and the data engine use too;
  3. evaluation: box and single-click mIoU, mIoU against the number of clicks, and how well
     the IoU head ranks its own masks;
  4. pictures: how masks, clicks and boxes are drawn here and in every figure of the lessons.
"""

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import NamedTuple

import matplotlib
import matplotlib.image
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import patheffects
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

import minisam
from minisam import CONFIGS, SamConfig, mask_iou, sam_loss

TRAIN_SEEDS = range(0, 10**6)  # training images are drawn from these seeds
EVAL_SEEDS = range(10**6, 10**6 + 64)  # held-out images, never trained on
CURVE_IMAGES = 16  # the first held-out images, evaluated during training: the learning curve
EVAL_IMAGES_PER_BATCH = 8  # held-out images encoded and decoded together
# Automatic-mask thresholds for the shipped toy checkpoint (lessons/toy_sam.pt). The
# reference's defaults (IoU 0.88, stability 0.95) are for ViT-H on photographs; chosen for the
# toy on held-out images other than the ones its JSON scores them on
# (lessons/experiments.md, "Which automatic-mask thresholds suit the toy model?").
TOY_AMG_SETTINGS = dict(points_per_side=16, pred_iou_thresh=0.7, stability_score_thresh=0.85,
                        min_mask_region_area=8)
REFERENCE_AMG_THRESHOLDS = dict(pred_iou_thresh=0.88, stability_score_thresh=0.95)
AMG_EVAL_IMAGES = 16  # held-out images on which the automatic masks are scored

# -----------------------------------------------------------------------------
# 1. The toy worlds
# SAM's central difficulty is ambiguity: a click on a shirt may mean the shirt or the person.
# Here a click on a house's window may mean the window, the walls or the house; on a target
# board, any of three nested rings. Every level is a valid target, and `parents` records
# which mask lies inside which. Objects occlude each other (masks are what is visible),
# touch the border, and sit on a noisy, textured background.
#
# SAM's other claim is that a model trained on a large and diverse dataset (SA-1B: 11M
# photographs of every kind) transfers zero-shot to image distributions it never saw
# (section 7). So the world comes in kinds (`World`): each draws the same sort of scene, objects
# with parts on a background, but with its own shapes, palette, fills, crowding, sizes,
# camera or canvas. `TRAINING_WORLDS` are the toy SA-1B; `HELD_OUT_WORLDS`, each unlike every
# training world in some kind, are the toy "23 datasets", never trained on or chosen with
# (lessons/11_zero_shot.md). The original world is `SHAPES`, drawn exactly as it always was.


@dataclasses.dataclass(frozen=True)
class World:
    """How one world draws its images. The defaults are `SHAPES`, the original world."""
    name: str = "shapes"
    kinds: tuple = ("house", "target", "snowman", "ellipse", "rectangle", "triangle", "polygon")
    objects: tuple = (2, 5)  # objects per image, drawn from [low, high)
    size: tuple = (0.25, 0.55)  # an object's size, a fraction of the canvas's shorter side
    palette: str = "any"  # any, pastel, grey (low contrast), neon (on a dark background)
    fill: str = "flat"  # flat, gradient, checker, outline (a line drawing)
    clutter: int = 0  # unlabelled line segments drawn over the background
    noise: float = 6.0  # the pixel noise's standard deviation, in grey levels
    blur: float = 0.0  # a Gaussian blur's sigma, in pixels of a 64-px canvas
    haze: float = 0.0  # how far every pixel is pulled towards mid-grey (fog), 0..1
    canvas: tuple = (1.0, 1.0)  # (height, width), multiples of the model's input size


SHAPES = World()
TRAINING_WORLDS = (
    SHAPES,
    World("crowds", objects=(5, 9), size=(0.2, 0.4)),
    World("vehicles", kinds=("car", "tree", "house", "rectangle", "ellipse"), fill="gradient"),
    World("pastel", palette="pastel", size=(0.35, 0.7)),
    World("checkers", kinds=SHAPES.kinds + ("star", "cross"), fill="checker"),
    World("night", kinds=("star", "cross", "ring", "target", "polygon"), palette="neon"),
    World("grainy", noise=18.0),
)
HELD_OUT_WORLDS = (
    World("drawings", fill="outline"),  # line drawings: only outlines are drawn
    World("low-contrast", palette="grey"),  # grey objects a few grey levels from the ground
    World("wide", canvas=(0.75, 1.5)),  # a 48 x 96 canvas, shrunk into the model's frame
    World("faces", kinds=("face", "flower")),  # new shapes with new parts
    World("sticks", kinds=("stick", "corner")),  # thin objects
    World("tiny", objects=(8, 14), size=(0.12, 0.2)),  # many small objects
    World("fog", blur=1.5, haze=0.5, noise=3.0),  # blurred and washed out
    World("clutter", clutter=40),  # a background of unlabelled lines
    World("giants", objects=(1, 3), size=(0.8, 1.3)),  # huge objects, mostly off the canvas
)
WORLDS = {w.name: w for w in TRAINING_WORLDS + HELD_OUT_WORLDS}


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    c, s = math.cos(angle), math.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1


def _polygon(yy, xx, corners):
    """Inside a convex polygon: on the same side of every edge, whichever way it winds."""
    sides = np.stack([(x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) for (x0, y0), (x1, y1)
                      in zip(corners, np.roll(corners, -1, axis=0))])
    return (sides >= 0).all(0) | (sides <= 0).all(0)


def _rectangle(yy, xx, y0, x0, y1, x1):
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def _bar(yy, xx, cy, cx, length, width, angle):
    """A rotated rectangle centred on (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)


def _object(rng, yy, xx, size, kinds=SHAPES.kinds):
    """One object: its kind and its masks, a list of (mask, parent index within the object
    or -1)."""
    cy, cx = rng.uniform(0, 1, size=2) * yy.shape  # may hang over the border
    kind = str(rng.choice(kinds))
    return kind, _parts(kind, rng, yy, xx, cy, cx, size)


def _parts(kind, rng, yy, xx, cy, cx, size):
    """The masks of one object of `kind`, in the order `PART_NOUNS` names them."""
    if kind == "house":
        w, h = size, size * rng.uniform(0.6, 0.9)
        walls = _rectangle(yy, xx, cy, cx - w / 2, cy + h, cx + w / 2)
        roof_h = size * rng.uniform(0.35, 0.6)
        roof = _polygon(yy, xx, np.array([[cx - 0.6 * w, cy], [cx + 0.6 * w, cy],
                                          [cx, cy - roof_h]]))
        ww = w * rng.uniform(0.3, 0.4)
        wx, wy = cx + rng.uniform(-0.25, 0.25) * w - ww / 2, cy + h * rng.uniform(0.2, 0.4)
        window = _rectangle(yy, xx, wy, wx, wy + ww, wx + ww)
        return [(walls | roof, -1), (walls, 0), (roof, 0), (window, 1)]
    if kind == "target":
        r = size * 0.6
        return [(_ellipse(yy, xx, cy, cx, r, r), -1), (_ellipse(yy, xx, cy, cx, 0.65 * r, 0.65 * r), 0),
                (_ellipse(yy, xx, cy, cx, 0.32 * r, 0.32 * r), 1)]
    if kind == "snowman":
        rb, rh = size * 0.45, size * rng.uniform(0.28, 0.35)
        body = _ellipse(yy, xx, cy, cx, rb, rb)
        head = _ellipse(yy, xx, cy - rb - 0.8 * rh, cx, rh, rh)
        rbutton = 0.3 * rb  # inside the body and apart; large enough to keep in 3 of 5 snowmen
        buttons = [(_ellipse(yy, xx, cy + dy * rb, cx, rbutton, rbutton), 1) for dy in (-0.45, 0.45)]
        return [(body | head, -1), (body, 0), (head, 0)] + buttons
    if kind == "ellipse":
        return [(_ellipse(yy, xx, cy, cx, size / 2, size * rng.uniform(0.25, 0.6),
                          rng.uniform(0, math.pi)), -1)]
    if kind == "rectangle":
        h = size * rng.uniform(0.4, 1.0)
        return [(_rectangle(yy, xx, cy - h / 2, cx - size / 2, cy + h / 2, cx + size / 2), -1)]
    if kind in ("triangle", "polygon"):
        n = 3 if kind == "triangle" else int(rng.integers(5, 8))
        # corners spread around the centre, so the shape is convex and contains it
        angles = rng.uniform(0, 2 * math.pi) + (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * math.pi / n
        radii = size * rng.uniform(0.35, 0.6, n)
        corners = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        return [(_polygon(yy, xx, corners), -1)]
    return _new_object(kind, rng, yy, xx, cy, cx, size)


def _new_object(kind, rng, yy, xx, cy, cx, size):
    """The shapes the original world does not draw (`_object`'s, for the other worlds)."""
    if kind == "star":  # concave: the union of the triangles from its centre to each point
        n, turn = int(rng.integers(5, 7)), rng.uniform(0, 2 * math.pi)
        angles = turn + np.arange(2 * n) * math.pi / n
        radii = np.where(np.arange(2 * n) % 2, 0.22, 0.55) * size
        tips = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        star = np.zeros(yy.shape, bool)
        for k in range(2 * n):
            star |= _polygon(yy, xx, np.array([[cx, cy], tips[k], tips[(k + 1) % (2 * n)]]))
        return [(star, -1)]
    if kind == "cross":
        angle, width = rng.uniform(0, math.pi / 2), size * rng.uniform(0.25, 0.4)
        return [(_bar(yy, xx, cy, cx, size, width, angle)
                 | _bar(yy, xx, cy, cx, size, width, angle + math.pi / 2), -1)]
    if kind == "ring":  # what lies behind shows through the hole
        r = size * 0.55
        return [(_ellipse(yy, xx, cy, cx, r, r) & ~_ellipse(yy, xx, cy, cx, 0.55 * r, 0.55 * r), -1)]
    if kind == "car":  # body, cabin and two wheels, each wheel with a hubcap
        w, h, r = size, size * 0.32, size * 0.17
        wheels = [_ellipse(yy, xx, cy + h, cx + side * 0.3 * w, r, r) for side in (-1, 1)]
        body = _rectangle(yy, xx, cy, cx - w / 2, cy + h, cx + w / 2) & ~(wheels[0] | wheels[1])
        cabin = _polygon(yy, xx, np.array([[cx - 0.3 * w, cy], [cx + 0.3 * w, cy],
                                           [cx + 0.15 * w, cy - 0.28 * w], [cx - 0.2 * w, cy - 0.28 * w]]))
        hubs = [_ellipse(yy, xx, cy + h, cx + side * 0.3 * w, 0.5 * r, 0.5 * r) for side in (-1, 1)]
        return ([(body | cabin | wheels[0] | wheels[1], -1), (body, 0), (cabin, 0),
                 (wheels[0], 0), (wheels[1], 0), (hubs[0], 3), (hubs[1], 4)])
    if kind == "tree":  # a trunk and a crown, the crown with fruit
        crown_r = size * rng.uniform(0.35, 0.45)
        trunk = _rectangle(yy, xx, cy, cx - 0.08 * size, cy + 0.55 * size, cx + 0.08 * size)
        crown = _ellipse(yy, xx, cy - 0.1 * size, cx, crown_r, crown_r * 1.1)
        fruit = [(_ellipse(yy, xx, cy - 0.1 * size + dy * crown_r, cx + dx * crown_r,
                           0.22 * crown_r, 0.22 * crown_r), 2)
                 for dx, dy in rng.uniform(-0.45, 0.45, (2, 2))]
        return [(trunk | crown, -1), (trunk & ~crown, 0), (crown, 0)] + fruit
    if kind == "face":  # a head with two eyes (each with a pupil) and a mouth
        r = size * 0.5
        eyes = [_ellipse(yy, xx, cy - 0.25 * r, cx + side * 0.38 * r, 0.22 * r, 0.22 * r)
                for side in (-1, 1)]
        pupils = [_ellipse(yy, xx, cy - 0.25 * r, cx + side * 0.38 * r, 0.1 * r, 0.1 * r)
                  for side in (-1, 1)]
        mouth = _ellipse(yy, xx, cy + 0.45 * r, cx, 0.12 * r, 0.45 * r)
        return [(_ellipse(yy, xx, cy, cx, r, r), -1), (eyes[0], 0), (eyes[1], 0), (mouth, 0),
                (pupils[0], 1), (pupils[1], 2)]
    if kind == "flower":  # petals around a heart
        n, turn, r = int(rng.integers(5, 7)), rng.uniform(0, 2 * math.pi), size * 0.5
        petals = [_ellipse(yy, xx, cy + 0.6 * r * math.sin(a), cx + 0.6 * r * math.cos(a),
                           0.2 * r, 0.42 * r, a) for a in turn + np.arange(n) * 2 * math.pi / n]
        heart = _ellipse(yy, xx, cy, cx, 0.3 * r, 0.3 * r)
        petals = [p & ~heart for p in petals]
        return [(np.any(petals, axis=0) | heart, -1), (heart, 0)] + [(p, 0) for p in petals]
    if kind == "stick":
        return [(_bar(yy, xx, cy, cx, size, size * rng.uniform(0.08, 0.14), rng.uniform(0, math.pi)), -1)]
    if kind == "corner":  # two sticks meeting at a right angle, one object
        angle, width = rng.uniform(0, 2 * math.pi), size * rng.uniform(0.08, 0.14)
        arms = [_bar(yy, xx, cy + 0.35 * size * math.sin(a), cx + 0.35 * size * math.cos(a),
                     0.8 * size, width, a) for a in (angle, angle + math.pi / 2)]
        return [(arms[0] | arms[1], -1)]
    raise ValueError(f"unknown kind of object {kind!r}")


# Captions from the generator's facts (lessons/12_text_prompts.md): a colour word and the
# object's noun, then the part's noun for a part or subpart ("red house window"). PART_NOUNS
# names the masks `_parts` returns after the whole, in order; the last noun names any further
# ones (a flower's petals). A colour is named by the nearest corner of the RGB cube, i.e.
# each channel is on (>= 128) or off.
PART_NOUNS = {"house": ("walls", "roof", "window"), "target": ("ring", "bullseye"),
              "snowman": ("body", "head", "button"), "tree": ("trunk", "crown", "fruit"),
              "car": ("body", "cabin", "wheel", "wheel", "hubcap"),
              "face": ("eye", "eye", "mouth", "pupil"), "flower": ("heart", "petal")}
COLOUR_NAMES = {(0, 0, 0): "black", (1, 0, 0): "red", (0, 1, 0): "green", (1, 1, 0): "yellow",
                (0, 0, 1): "blue", (1, 0, 1): "magenta", (0, 1, 1): "cyan", (1, 1, 1): "white"}


def _caption(kind: str, part: int, colour) -> str:
    """The caption of mask number `part` of an object of `kind` (0: the whole), in `colour`."""
    words = [COLOUR_NAMES[tuple(int(c >= 128) for c in colour)], kind]
    if part > 0:
        nouns = PART_NOUNS[kind]
        words.append(nouns[min(part, len(nouns)) - 1])
    return " ".join(words)


# Each palette: a background colour, an object colour, and how far apart (summed over RGB) an
# object's colour must be from the background and from the other colours of its object.
PALETTES = {
    "any": (lambda rng: rng.integers(0, 256, 3), lambda rng: rng.integers(0, 256, 3), 150),
    "pastel": (lambda rng: rng.integers(150, 256, 3), lambda rng: rng.integers(130, 256, 3), 90),
    "grey": (lambda rng: rng.integers(60, 196, 1).repeat(3),
             lambda rng: rng.integers(40, 216, 1).repeat(3), 45),
    "neon": (lambda rng: rng.integers(0, 40, 3),
             lambda rng: np.where(np.arange(3) == rng.integers(3), 255, rng.integers(0, 160, 3)), 150),
}


def _contrasting(rng, against, palette="any"):
    """A random colour of the palette far (in RGB) from every colour in `against`."""
    _, draw_colour, distance = PALETTES[palette]
    while True:
        colour = draw_colour(rng)
        if all(np.abs(colour - a).sum() > distance for a in against):
            return colour


def _paint(image, mask, colour, world, rng, ground):
    """Draw one region in the world's fill. `ground` is the background alone: a line drawing
    shows it inside its outlines."""
    if world.fill == "flat":
        image[mask] = colour
        return
    H, W = mask.shape
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    angle = rng.uniform(0, 2 * math.pi)
    along = (xx * math.cos(angle) + yy * math.sin(angle)) / max(H, W)  # about -1..1.5
    if world.fill == "gradient":  # the colour, shaded from dark to light across the canvas
        image[mask] = (colour * (0.55 + 0.6 * (along[mask, None] - along.min()) / np.ptp(along))).clip(0, 255)
    elif world.fill == "checker":  # the colour and a darker shade of it, in squares
        period = rng.uniform(3, 6) * H / 64
        dark = ((yy // period + xx // period) % 2 == 1)[mask]
        image[mask] = np.where(dark[:, None], 0.55 * colour, colour)
    elif world.fill == "outline":
        padded = np.pad(mask, 1)
        inside = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        image[mask] = ground[mask]
        image[mask & ~inside] = colour
    else:
        raise ValueError(f"unknown fill {world.fill!r}")


def _blur(image, sigma):
    """A separable Gaussian blur of (H, W, 3), edges extended."""
    radius = int(3 * sigma + 1)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in range(3)],
                        mode="edge")
        image = sum(w * np.take(padded, np.arange(k, k + image.shape[axis]), axis=axis)
                    for k, w in enumerate(kernel))
    return image


def make_world(seed: int, image_size: int = None, world: World = SHAPES, captions: bool = False):
    """The image, every valid mask, and the containment: returns (image uint8 (H, W, 3),
    masks bool (K, H, W), parents int (K,)), parents[k] = index of the smallest mask that
    contains mask k, or -1 for a whole object. H = W = image_size except on a world whose
    canvas is not square. With `captions`, also each mask's caption (K strings, `_caption`),
    its colour the one most of its visible pixels were painted; the same random draws."""
    S = image_size or CONFIGS["toy"].image_size
    H, W = round(S * world.canvas[0]), round(S * world.canvas[1])
    # the original world keeps its original random numbers; every other draws its own
    rng = np.random.default_rng(seed if world == SHAPES else [seed, zlib.crc32(world.name.encode())])
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    # background: a colour, a smooth random texture and pixel noise
    background = PALETTES[world.palette][0](rng)
    texture = F.interpolate(torch.from_numpy(rng.normal(0, 30, (1, 3, 4, 4))), (H, W),
                            mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    image = background + texture
    for _ in range(world.clutter):  # lines as thin as the sticks, in the palette's colours
        line = _bar(yy, xx, *rng.uniform(0, 1, 2) * (H, W), min(H, W) * rng.uniform(0.1, 0.4),
                    rng.uniform(1, 2.5) * S / 64, rng.uniform(0, math.pi))
        image[line] = _contrasting(rng, [background], world.palette)
    ground = image.copy()
    masks, parents, colours, names = [], [], [], []
    # which mask painted each pixel last: a whole under its parts shows their colours, not its own
    painted = np.zeros((H, W), int)
    for _ in range(rng.integers(*world.objects)):
        kind, parts = _object(rng, yy, xx, min(H, W) * rng.uniform(*world.size), world.kinds)
        offset = len(masks)
        for part, (mask, parent) in enumerate(parts):  # the whole first, then its parts over it
            colour = _contrasting(rng, [background] + colours[offset:], world.palette)
            _paint(image, mask, colour, world, rng, ground)
            painted[mask] = len(masks)
            names.append((kind, part))
            masks.append(mask)
            parents.append(offset + parent if parent >= 0 else -1)
            colours.append(colour)
        # what this object covers is no longer visible in the objects behind it
        for k in range(offset):
            masks[k] = masks[k] & ~parts[0][0]
    if world.blur:
        image = _blur(image, world.blur * S / 64)
    image = (1 - world.haze) * image + world.haze * 128
    image = image + rng.normal(0, world.noise, image.shape)
    masks, parents = np.array(masks).reshape(-1, H, W), np.array(parents, dtype=int)
    # drop what occlusion and the border left too small to be a target: under 1/128 of the
    # image, i.e. two of the toy encoder's 4x4 patches, which its 16x16 embedding grid can
    # hardly place (lessons/experiments.md, "How small may a target be?"). A part is never larger
    # than its whole, so a kept part always keeps its parent.
    keep = masks.sum((1, 2)) >= H * W // 128
    new_index = np.cumsum(keep) - 1
    parents = np.where(parents[keep] >= 0, new_index[parents[keep]], -1)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if not captions:
        return image, masks[keep], parents
    shown = [colours[np.bincount(painted[mask]).argmax()] for mask in masks[keep]]
    return image, masks[keep], parents, [_caption(*names[k], colour) for k, colour
                                         in zip(np.flatnonzero(keep), shown)]


def make_sample(seed: int, image_size: int = None, world: World = SHAPES):
    """(image uint8 (h, w, 3), masks bool (K, S, S)): one toy image and all its valid targets,
    in the model's frame: an image whose canvas is not S x S is resized as SamPredictor
    resizes it (longest side S; Sam.preprocess pads it), its masks resized and padded alike."""
    S = image_size or CONFIGS["toy"].image_size
    image, masks, _ = make_world(seed, S, world)
    if image.shape[:2] == (S, S):
        return image, masks
    resize = minisam.ResizeLongestSide(S)
    framed = resize.apply_image_torch(torch.from_numpy(masks)[:, None].float())[:, 0] >= 0.5
    framed = F.pad(framed, (0, S - framed.shape[2], 0, S - framed.shape[1])).numpy()
    keep = framed.any((1, 2))  # a sliver may vanish in the resize
    return resize.apply_image(image), framed[keep]


# The toy world in SA-1B's layout, for finetune.py (lessons/10_finetuning.md): make_world's
# images written as SA-1B stores photographs: NAME.png beside
# NAME.json with one run-length "segmentation" per valid mask (wholes, parts, subparts).
# `shifted` draws the same worlds in a style the toy model never saw: every region, the
# background included, striped.


def shifted_style(image: np.ndarray, masks: np.ndarray, seed: int) -> np.ndarray:
    """The same world drawn another way: every region (the part of a mask outside the masks
    within it, or the background) striped in its own mean colour and that colour's
    complement, at its own angle and period, with the world's pixel noise. The masks, and
    so the answers, are unchanged; flat colours, the toy model's cue, are gone."""
    rng = np.random.default_rng([seed, 1])  # another stream than make_world's
    S = image.shape[0]
    region = np.full((S, S), -1)  # -1: background; else the smallest mask holding the pixel
    for k in np.argsort(-masks.sum((1, 2)), kind="stable"):
        region[masks[k]] = k
    yy, xx = np.mgrid[0:S, 0:S] + 0.5
    out = np.empty((S, S, 3))
    for k in np.unique(region):
        inside = region == k
        angle, period = rng.uniform(0, math.pi), rng.uniform(3, 7)  # period in pixels
        light = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period) > 0
        colour = image[inside].mean(0)
        out[inside] = np.where(light[inside, None], colour, 255 - colour)
    out += rng.normal(0, 6, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


EXPORT_SEEDS = range(2 * 10**6, 3 * 10**6)  # worlds neither trained nor scored on


def export_toy(folder: Path, images: int, shifted: bool, worlds: tuple = (SHAPES,)) -> None:
    """Write `images` toy images (EXPORT_SEEDS) to `folder` in SA-1B's layout, the i-th drawn
    in worlds[i % len(worlds)]."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(EXPORT_SEEDS[:images]):
        image, masks, _ = make_world(seed, world=worlds[i % len(worlds)])
        if shifted:
            image = shifted_style(image, masks, seed)
        name = f"toy_{seed}"
        matplotlib.image.imsave(folder / f"{name}.png", image)
        boxes = minisam.batched_mask_to_box(torch.from_numpy(masks)).tolist()
        rles = minisam.mask_to_rle(torch.from_numpy(masks))
        annotations = [{"id": k, "segmentation": rle, "area": minisam.area_from_rle(rle),
                        "bbox": minisam.box_xyxy_to_xywh(box)}
                       for k, (rle, box) in enumerate(zip(rles, boxes))]
        record = {"image": {"image_id": seed, "file_name": f"{name}.png",
                            "height": image.shape[0], "width": image.shape[1]},
                  "annotations": annotations}
        (folder / f"{name}.json").write_text(json.dumps(record))
    print(f"wrote {images} images and their masks to {folder}/")


# -----------------------------------------------------------------------------
# 2. Training as simulated interactive annotation (appendix A, "Training algorithm")
# For every target mask, the model is prompted like an annotator would: a first foreground
# click or a (noisy) box, then clicks where the prediction is wrong, each time with the
# previous prediction fed back as a mask prompt. The image embedding is computed once and
# shared by all iterations and all targets. All targets of all images go through one
# decoder call per iteration (the decoder takes one embedding per prompt row).


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How a model is trained: the defaults of `python train_toy.py`, which finetune.py and
    the data engine (lessons/data_engine.py) start from and change where they differ."""
    steps: int = 1600  # optimisation steps in all
    seed: int = 0  # draws every batch and every simulated click
    lr: float = 2e-3  # AdamW's learning rate after the warmup
    warmup: int = 100  # steps of linear warmup
    # 3 = the first prompt + 2 corrective clicks. The paper's 11 passes (8 clicks, 2 passes
    # without a new click) cost 3.5 times as much per step; in a 10-minute budget, more steps
    # of fewer passes do better (lessons/experiments.md, "How many decoder passes per target?").
    iters: int = 3  # decoder passes per target
    no_click_passes: int = 0  # how many of those passes add no click (the paper: 2)
    images_per_step: int = 8
    targets_per_image: int = 8  # masks of each image, drawn with replacement
    small_steps: int = 1280  # the first steps, on images rendered at small_size px (0: none)
    small_size: int = 32

    def image_size(self, step: int, full_size: int) -> int:
        """The size the model trains at on `step`: progressive resizing, below."""
        return self.small_size if step < self.small_steps else full_size


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The random numbers of one step (its batch and its clicks), a pure function of (seed,
    step, rank): a resumed run draws exactly what the uninterrupted run drew, and each
    data-parallel rank draws its own."""
    return torch.Generator().manual_seed(hash((seed, step, rank)) % 2**62)


def random_tensor(sampler, shape, generator: torch.Generator, device) -> torch.Tensor:
    """torch.rand or torch.randn from the CPU generator, moved to `device`: a run draws the
    same numbers on every device."""
    return sampler(shape, generator=generator, device=generator.device).to(device)


def sample_in(region: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One pixel chosen uniformly inside each (N, H, W) bool region -> (N, 2) as (x, y).
    An empty region gives an arbitrary pixel (callers only use that when they must)."""
    scores = random_tensor(torch.rand, region.shape, generator, region.device) * region  # 0 outside
    flat = scores.flatten(1).argmax(1)
    w = region.shape[-1]
    return torch.stack([flat % w, flat // w], dim=1).float()


def noisy_box(masks: torch.Tensor, generator: torch.Generator, max_noise: float) -> torch.Tensor:
    """The tight box of each (N, H, W) mask with noise on every coordinate: std 10% of the
    box side, at most max_noise pixels (the paper: 20 px at 1024)."""
    box = minisam.batched_mask_to_box(masks).float()  # (N, 4) x0 y0 x1 y1
    side = (box[:, 2:] - box[:, :2] + 1).repeat(1, 2)
    noise = random_tensor(torch.randn, box.shape, generator, box.device) * 0.1 * side
    return box + noise.clamp(-max_noise, max_noise)


def corrective_click(prediction: torch.Tensor, target: torch.Tensor, generator: torch.Generator):
    """The next click of a simulated annotator: uniform in the error region, foreground where
    the model missed the target (false negative), background where it spilled over (false
    positive). Returns (N, 2) points and (N,) labels."""
    false_negative, false_positive = target & ~prediction, prediction & ~target
    error = false_negative | false_positive
    # a perfect prediction still gets a click, a harmless one inside the target
    region = torch.where(error.flatten(1).any(1)[:, None, None], error, target)
    points = sample_in(region, generator)
    rows = torch.arange(len(points), device=points.device)
    label = false_negative[rows, points[:, 1].long(), points[:, 0].long()] | ~error.flatten(1).any(1)
    return points, label.long()


class InteractiveTraining(torch.nn.Module):
    """One training step's forward pass: SAM's simulated annotation on a batch of images and
    targets, returning the loss. A module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: minisam.Sam, iterations: int, no_click_passes: int):
        super().__init__()
        if not 0 <= no_click_passes <= min(2, iterations - 1):
            raise ValueError(f"no_click_passes must be 0, 1 or 2 and leave the first pass, got "
                             f"{no_click_passes} with {iterations} iterations")
        self.model, self.iterations, self.no_click_passes = model, iterations, no_click_passes

    def _decode(self, embeddings, points, labels, boxes, mask_prompt, multimask):
        model = self.model
        sparse, dense = model.prompt_encoder(points=(points, labels), boxes=boxes, masks=mask_prompt)
        return model.mask_decoder(image_embeddings=embeddings,
                                  image_pe=model.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=multimask)

    def forward(self, images: torch.Tensor, targets: torch.Tensor, image_index: torch.Tensor,
                generator: torch.Generator):
        """images (B, 3, S, S) 0..255; targets (N, S, S) bool; image_index (N,) which image
        each target is in. Returns (loss, parts averaged over iterations)."""
        embeddings = self.model.image_encoder(self.model.preprocess(images))
        return self.from_embeddings(embeddings[image_index], targets, generator)

    def from_embeddings(self, embeddings: torch.Tensor, targets: torch.Tensor,
                        generator: torch.Generator):
        """The same from image embeddings (N, C, g, g), one per target, computed elsewhere:
        finetune.py's frozen encoder computes them once per image and caches them."""
        model, S = self.model, targets.shape[-1]
        low = model.prompt_encoder.mask_input_size[0]
        scale = S / low  # input pixels per low-res pixel
        # the loss is taken at the decoder's own resolution: no upsampling in the loop
        low_targets = F.interpolate(targets[:, None].float(), (low, low), mode="area")[:, 0] > 0.5
        N, device = len(targets), targets.device
        use_box = random_tensor(torch.rand, (N,), generator, device) < 0.5
        # the paper's two passes without a new click: one at the end, one at a random position
        # between (drawn whatever no_click_passes is, so the rest of the batch's draws stay put)
        no_click = [self.iterations - 1, int(torch.randint(1, max(2, self.iterations - 1), (1,),
                                                           generator=generator,
                                                           device=generator.device))]
        no_click = set(no_click[:self.no_click_passes])
        points = (sample_in(low_targets, generator) + 0.5) * scale - 0.5  # (N, 2) input pixels
        points, labels = points[:, None], torch.ones(N, 1, dtype=torch.long, device=device)
        boxes = noisy_box(targets, generator, max_noise=20 * S / 1024)
        mask_prompt = prediction = None  # no previous prediction before the first pass
        total, logs = 0.0, []
        for it in range(self.iterations):
            if it > 0 and it not in no_click:
                click, label = corrective_click(prediction, low_targets, generator)
                points = torch.cat([points, ((click + 0.5) * scale - 0.5)[:, None]], dim=1)
                labels = torch.cat([labels, label[:, None]], dim=1)
            logits = torch.zeros(N, 1, low, low, device=device)
            iou_pred = torch.zeros(N, 1, device=device)
            outputs = []
            # rows prompted with a box and rows prompted with clicks only take separate calls:
            # their token counts differ
            for rows in (use_box.nonzero()[:, 0], (~use_box).nonzero()[:, 0]):
                if len(rows) == 0:
                    continue
                box_rows = bool(use_box[rows[0]])
                # box rows never had the first click: their clicks start at column 1
                first = 1 if box_rows else 0
                multimask = it == 0 and not box_rows  # one click is ambiguous
                out = self._decode(embeddings[rows], points[rows, first:], labels[rows, first:],
                                   boxes[rows] if box_rows else None,
                                   None if mask_prompt is None else mask_prompt[rows], multimask)
                loss, parts = sam_loss(out[0], out[1], low_targets[rows])
                total = total + loss * len(rows) / N
                logs.append((parts, len(rows)))
                # carry forward the output the IoU head likes best, as at inference
                best = out[1].argmax(1)
                picked = out[0][torch.arange(len(rows), device=device), best]
                outputs.append((rows, picked, out[1].amax(1)))
            for rows, best_logits, best_iou in outputs:
                logits = logits.index_put((rows,), best_logits[:, None].detach())
                iou_pred = iou_pred.index_put((rows,), best_iou[:, None].detach())
            mask_prompt, prediction = logits, logits[:, 0] > 0
        parts = {k: sum(p[k].item() * n for p, n in logs) / (N * self.iterations)
                 for k in ("focal", "dice", "iou_mse")}
        return total / self.iterations, parts


def training_batch(step: int, seed: int, rank: int, images_per_step: int,
                   targets_per_image: int, image_size: int, worlds: tuple = (SHAPES,),
                   images: int = None):
    """The images and targets of one step, and the generator that goes on to draw its clicks
    (`step_generator`). Each image comes from one of `worlds`, drawn uniformly. With
    `images`, the data set is that many fixed images instead, the i-th TRAIN_SEEDS[i] drawn in
    worlds[i % len(worlds)]: the data ablation of lessons/zero_shot.py."""
    generator = step_generator(seed, step, rank)
    if images is None:
        image_seeds = torch.randint(len(TRAIN_SEEDS), (images_per_step,), generator=generator)
        chosen = (torch.randint(len(worlds), (images_per_step,), generator=generator).tolist()
                  if len(worlds) > 1 else [0] * images_per_step)
    else:
        image_seeds = torch.randint(images, (images_per_step,), generator=generator)
        chosen = (image_seeds % len(worlds)).tolist()
    samples = [make_sample(TRAIN_SEEDS[s], image_size, worlds[w])
               for s, w in zip(image_seeds.tolist(), chosen)]
    return (*stack_samples(samples, targets_per_image, generator), generator)


def stack_samples(samples: list, targets_per_image: int, generator: torch.Generator):
    """A list of (image uint8 (H, W, 3), masks bool (K, H, W)) -> one training batch: images
    (B, 3, H, W) float, targets_per_image masks of each drawn with replacement as targets
    (N, H, W), and image_index (N,), which image each target is in. An image without targets
    (its objects all hung over the border: possible, though none in 40,000 seeds) is left out."""
    images, targets, index = [], [], []
    for i, (image, masks) in enumerate([sample for sample in samples if len(sample[1])]):
        chosen = torch.randint(len(masks), (targets_per_image,), generator=generator)
        images.append(pad_to_square(image, masks.shape[-1]))
        targets.append(torch.from_numpy(masks)[chosen])
        index += [i] * targets_per_image
    return torch.stack(images), torch.cat(targets), torch.tensor(index)


def pad_to_square(image: np.ndarray, S: int) -> torch.Tensor:
    """uint8 (h, w, 3) with h, w <= S -> float (3, S, S), padded at the bottom and right with
    the pixel mean, which Sam.preprocess normalises to the 0 it pads with itself."""
    picture = torch.from_numpy(image).permute(2, 0, 1).float()
    if picture.shape[1:] == (S, S):
        return picture
    mean = torch.tensor(SamConfig.pixel_mean)[:, None, None]
    return F.pad(picture - mean, (0, S - picture.shape[2], 0, S - picture.shape[1])) + mean


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup, then step decay x0.1 at 85% and at 26/27 of training. The paper's first
    decay comes at 2/3, but it starts from a pre-trained encoder; from scratch, the toy model
    spends its first few hundred steps on a plateau, and a decay at 2/3 of a short run
    leaves it too few steps at full rate
    (lessons/experiments.md, "Do the optimiser's settings matter?")."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.1 ** ((step >= total * 0.85) + (step >= total * 26 / 27))


# Progressive resizing (Tan and Le, EfficientNetV2, 2021; fast.ai's DAWNBench runs): the first
# steps see the same world rendered at half the size. A 32-px image is an 8x8 token grid, a
# quarter of the encoder's tokens and of the decoder's pixels, so a step costs about half as
# much, and what the model learns there (what a click, a box, an edge means) carries over.
# Only two kinds of weights depend on the grid's size, and both are resized when it changes.


def resize_sam(model: minisam.Sam, image_size: int) -> minisam.Sam:
    """The same weights in a Sam for another input size. The absolute position embedding
    (1, g, g, C) is resized bicubically, as ViTDet does; the global blocks' relative-position
    tables (2g-1, d) linearly, as the reference does for a table that does not fit its grid.
    Windowed blocks keep their tables: a window is counted in tokens, not pixels."""
    resized = minisam.Sam(dataclasses.replace(model.config, image_size=image_size))
    shapes = {name: p.shape for name, p in resized.state_dict().items()}
    state = {}
    for name, value in model.state_dict().items():
        if value.shape != shapes[name] and name.endswith("pos_embed"):
            value = F.interpolate(value.permute(0, 3, 1, 2), shapes[name][1:3], mode="bicubic",
                                  align_corners=False).permute(0, 2, 3, 1)
        elif value.shape != shapes[name]:  # rel_pos_h / rel_pos_w of a global block
            value = F.interpolate(value.T[None], shapes[name][0], mode="linear",
                                  align_corners=False)[0].T
        state[name] = value
    resized.load_state_dict(state)
    return resized.to(model.device).train(model.training)


def make_optimizer(model: minisam.Sam, lr: float, carried: dict = None):
    """AdamW; `carried` is an optimizer state_dict to continue from. When the model was
    resized, Adam's moments carry over for every weight whose shape stayed, and the resized
    ones start afresh."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.1)
    if carried is not None:
        shapes = [p.shape for p in model.parameters()]
        carried = {**carried, "state": {i: s for i, s in carried["state"].items()
                                        if s["exp_avg"].shape == shapes[i]}}
        optimizer.load_state_dict(carried)
    return optimizer


def optimisation_step(optimizer, loss: torch.Tensor, step: int, ckpt_path: Path = None) -> None:
    """Backpropagate `loss` and take one optimizer step, or stop the run cleanly if the loss
    is not finite: one NaN gradient would spread into every weight, and from there into the
    next checkpoint (`ckpt_path`, for runs that save one), overwriting the last good one."""
    if not torch.isfinite(loss):
        message = f"step {step + 1}: the loss is {loss.item()}; stopping."
        if ckpt_path is not None:
            message += (f" The last good checkpoint is {ckpt_path}" if ckpt_path.exists()
                        else " No checkpoint was saved before it")
        raise SystemExit(message)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# -----------------------------------------------------------------------------
# The training loop, one for the toy world (main, below), for your own masks (finetune.py)
# and for the data engine's labels. They differ only in where a step's batch comes from:
# `batches(step, image_size)` returns (inputs, targets, image_index, generator), the inputs
# of `training` (images, or finetune.py's cached embeddings) and the step's generator
# (`step_generator`), which goes on to draw the simulated clicks.


def at_size(model: minisam.Sam, image_size: int) -> minisam.Sam:
    """`model` if it takes images of image_size px, else its weights resized (`resize_sam`)."""
    return model if model.config.image_size == image_size else resize_sam(model, image_size)


def training_module(model: minisam.Sam, settings: TrainSettings, training):
    """training(model, ...), an InteractiveTraining, wrapped for data-parallel training when
    torchrun started several processes."""
    trainer = training(model, settings.iters, settings.no_click_passes)
    if torch.distributed.is_initialized():
        trainer = torch.nn.parallel.DistributedDataParallel(
            trainer, device_ids=[model.device] if model.device.type == "cuda" else None,
            find_unused_parameters=True)
    return trainer


def train(model: minisam.Sam, batches, settings: TrainSettings, history: list,
          optimizer_state: dict = None, full_size: int = None, after_step=None,
          training=InteractiveTraining, checkpoint: Path = None,
          log=functools.partial(print, flush=True)) -> minisam.Sam:
    """Train `model` from the step `history` ends at to settings.steps, appending each step's
    losses and training minutes to `history`, and return it at `full_size` px (default: its
    size now). The steps before settings.small_steps run at settings.small_size px; AdamW
    continues from `optimizer_state` if given. after_step(model, optimizer) runs after every
    step (checkpoints, the learning curve), its time left out of the minutes. `checkpoint`
    is the file a run saves, which a non-finite loss's message names."""
    full_size = full_size or model.config.image_size
    step = history[-1]["step"] if history else 0
    model = at_size(model, settings.image_size(step, full_size))
    optimizer = make_optimizer(model, settings.lr, optimizer_state)
    trainer = training_module(model, settings, training)
    processes = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    minutes_before, first_step = history[-1]["minutes"] if history else 0.0, step
    start, last_log = time.time(), 0.0
    model.train()
    while step < settings.steps:
        size = settings.image_size(step, full_size)
        if model.config.image_size != size:  # the small steps are over: grow
            model = resize_sam(model, size)
            optimizer = make_optimizer(model, settings.lr, optimizer.state_dict())
            trainer = training_module(model, settings, training)
        inputs, targets, index, generator = batches(step, size)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings.steps, settings.lr, settings.warmup)
        loss, parts = trainer(inputs.to(model.device), targets.to(model.device),
                              index.to(model.device), generator)
        optimisation_step(optimizer, loss, step, checkpoint)
        step += 1
        history.append({"step": step, "loss": loss.item(), **parts,
                        "minutes": minutes_before + (time.time() - start) / 60})
        paused = time.time()
        if after_step is not None:
            after_step(model, optimizer)
            model.train()  # after_step may have evaluated it
        start += time.time() - paused
        if time.time() - last_log > 10 or step == settings.steps:
            last_log = time.time()
            rate = (step - first_step) / (last_log - start)  # steps per second
            log(f"step {step}/{settings.steps} ({size} px)  loss {loss.item():.4f}  (20 x focal "
                f"{20 * parts['focal']:.4f}, dice {parts['dice']:.4f}, iou mse "
                f"{parts['iou_mse']:.4f})  {rate * settings.images_per_step * processes:.1f} "
                f"img/s  eta {(settings.steps - step) / rate / 60:.1f} min")
    return at_size(model, full_size)


def provenance(argv: list) -> dict:
    """What a checkpoint's JSON says about how it was trained: the command, the code's commit
    (and whether train_toy.py or minisam.py differed from it), the thread count and machine."""
    here = Path(__file__).resolve().parent

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except OSError:  # no git on this machine
            return None

    return {"command": shlex.join(["python", "train_toy.py", *argv]),
            "commit": git("rev-parse", "HEAD"),
            "code_changed_since_commit": bool(git("status", "--porcelain", "train_toy.py",
                                                  "minisam.py")),
            "threads": torch.get_num_threads(),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()}, "
                       f"torch {torch.__version__}"}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file beside the target, then rename: a run killed at any instant
    leaves either the old complete checkpoint or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# -----------------------------------------------------------------------------
# 3. Evaluation (section 7.1 conventions)
# Single-click: the click at the point farthest from the mask boundary; "oracle" scores the
# best of the 3 masks, otherwise the IoU head chooses. Interactive: each next click at the
# interior of the largest error region, the previous logits fed back.


def interior_point(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 2) (x, y) of the pixel farthest (chessboard distance) from the
    mask's boundary, the first in raster order if several are ((0, 0) for an empty mask).
    The distances come from the classic two-pass transform (Rosenfeld and Pfaltz, 1966): a
    pass down the rows takes each pixel's distance from its neighbours above and to its left,
    a pass up from those below and to its right. Each row is one vectorised step, so the work
    does not grow with the mask's depth (hundreds of pixels at 1024 px)."""
    N, H, W = masks.shape
    # outside the image counts as background: pad one ring of it
    distance = F.pad(masks.float(), (1, 1, 1, 1)) * (H + W)  # (N, H+2, W+2); H + W = "far"
    x = torch.arange(W + 2, dtype=torch.float, device=masks.device)

    def along_row(row, step):
        """min over the pixels k before x in the row of row[k] + |x - k| (after, if step < 0)."""
        if step < 0:
            return along_row(row.flip(-1), 1).flip(-1)
        return torch.cummin(row - x, dim=-1).values + x

    for rows, step in ((range(1, H + 1), 1), (range(H, 0, -1), -1)):
        for y in rows:
            previous = distance[:, y - step]  # (N, W+2): the row the pass comes from
            # minus the nearest of the 3 pixels above (below) each pixel, diagonals included
            near = F.max_pool1d(-previous[:, None], 3, stride=1, padding=1)[:, 0]
            row = torch.minimum(distance[:, y], 1 - near)
            distance[:, y] = along_row(row, step)
    flat = distance[:, 1:-1, 1:-1].flatten(1).argmax(1)  # argmax: the first maximum
    return torch.stack([flat % W, flat // W], dim=1).float()


def largest_error_click(prediction: torch.Tensor, target: torch.Tensor):
    """The evaluation's next click: the interior of the largest connected error region."""
    false_negative = target & ~prediction
    regions = []
    for error in (prediction ^ target).numpy():
        labels = minisam.connected_components(error)
        ids, sizes = np.unique(labels[labels > 0], return_counts=True)
        regions.append(labels == ids[sizes.argmax()] if len(ids) else error)
    regions = torch.from_numpy(np.stack(regions))
    points = interior_point(regions)
    rows = torch.arange(len(points))
    label = false_negative[rows, points[:, 1].long(), points[:, 0].long()]
    return points, label.long()


def valid_at_clicks(targets: torch.Tensor, image_index: torch.Tensor, clicks: torch.Tensor):
    """targets (N, H, W) bool, image_index (N,), clicks (N, 2) (x, y), one per target ->
    (N, N) bool: [n, j] = target j is in the same image as target n and contains its click,
    so it is a right answer to that click too (a part's click lies in its whole)."""
    x, y = clicks.long().unbind(1)
    return targets[:, y, x].T & (image_index[:, None] == image_index[None])


def expected_iou(masks: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor):
    """masks (N, M, H, W) the outputs for each target's click, targets (N, H, W), valid (N, N)
    from `valid_at_clicks` -> (N, M): each output's IoU averaged over the masks its click may
    have meant, at the odds the training teaches (a target drawn uniformly, its click uniformly
    inside it: odds 1 / area). This is what the IoU head's squared error makes it predict at
    best, here computed from the hidden truth (lesson 5, "What the IoU head can know")."""
    expected = torch.empty(masks.shape[:2], device=masks.device)
    # one click at a time: every (click, mask) pair at once would hold N x M x k masks of
    # the full input size (lessons/experiments.md, "How much memory does ViT-B training take?")
    for n, meant in enumerate(valid):  # meant (N,): the masks target n's click may mean
        odds = 1.0 / targets[meant].flatten(1).sum(1)  # (k,)
        ious = mask_iou(masks[n][:, None], targets[meant][None])  # (M, k)
        expected[n] = (ious * odds).sum(1) / odds.sum()
    return expected


def decode(model: minisam.Sam, embeddings, points=None, labels=None, boxes=None,
           mask_prompt=None, multimask=False):
    """One decoder call for N prompt rows at the model's input size, each row with its own
    image embedding (N, C, g, g): returns masks (N, M, S, S) bool, IoU predictions (N, M)
    and low-res logits (N, M, 4g, 4g), the mask prompt of a next click. Prompts may live on
    the CPU, where the clicks are simulated; the outputs come back there."""
    S = model.config.image_size
    points, labels, boxes, mask_prompt = (None if x is None else x.to(embeddings.device)
                                          for x in (points, labels, boxes, mask_prompt))
    sparse, dense = model.prompt_encoder(
        points=None if points is None else (points, labels), boxes=boxes, masks=mask_prompt)
    low_res, iou = model.mask_decoder(embeddings, model.prompt_encoder.get_dense_pe(), sparse,
                                      dense, multimask)
    masks = model.postprocess_masks(low_res, (S, S), (S, S)) > model.mask_threshold
    return masks.cpu(), iou.cpu(), low_res.cpu()


class TargetScores(NamedTuple):
    """How the model did on every one of N held-out targets (`score_targets`)."""
    box_iou: torch.Tensor  # (N,) the mask of the target's tight box
    iou_pred: torch.Tensor  # (N, 3) the IoU head's predictions for the 1-click masks
    actual: torch.Tensor  # (N, 3) their true IoUs
    by_clicks: torch.Tensor  # (N, max_clicks) IoU after 1..max_clicks clicks
    ambiguous: torch.Tensor  # (N,) the first click lies in another valid mask too
    expected: torch.Tensor  # (N, 3) the 1-click masks' expected IoUs, the head's best answer


@torch.no_grad()
def evaluate(model: minisam.Sam, seeds=None, max_clicks: int = 9, world: World = SHAPES) -> dict:
    """Held-out metrics on the images `seeds` (default EVAL_SEEDS) of `world`, scored in the
    model's frame (`make_sample`). They are evaluated EVAL_IMAGES_PER_BATCH at a time, which
    bounds the memory of decoding every target at once at 1024 px."""
    seeds = EVAL_SEEDS if seeds is None else seeds
    model.eval()
    B = EVAL_IMAGES_PER_BATCH
    return held_out_metrics([score_images(model, seeds[i:i + B], max_clicks, world)
                             for i in range(0, len(seeds), B)])


def held_out_metrics(batches: list) -> dict:
    """`evaluate`'s metrics from the TargetScores of batches of images."""
    box_iou, iou_pred, actual, by_clicks, ambiguous, expected = (torch.cat(t)
                                                                  for t in zip(*batches))

    def pearson(prediction, subset=slice(None)):
        return float(np.corrcoef(prediction[subset].flatten().numpy(),
                                 actual[subset].flatten().numpy())[0, 1])

    rows = torch.arange(len(actual))
    metrics = {"targets": len(box_iou), "box_miou": box_iou.mean().item(),
               "one_click_oracle_miou": actual.amax(1).mean().item(),
               "one_click_miou": by_clicks[:, 0].mean().item(),
               "miou_by_clicks": by_clicks.mean(0).tolist(),
               "iou_head_pearson_r": pearson(iou_pred),
               # the same two scores for a head that predicted the expected IoU exactly, what
               # its squared error trains it towards, given these masks and the ambiguity
               "one_click_miou_ideal_head": actual[rows, expected.argmax(1)].mean().item(),
               "iou_head_pearson_r_ideal": pearson(expected),
               "unambiguous_targets": int((~ambiguous).sum())}
    # the IoU head's two scores where one click has only one right answer (lesson 5, "What
    # the IoU head can know"); elsewhere they also measure the click's ambiguity
    if (~ambiguous).sum() > 1:
        metrics["one_click_miou_unambiguous"] = by_clicks[~ambiguous, 0].mean().item()
        metrics["iou_head_pearson_r_unambiguous"] = pearson(iou_pred, ~ambiguous)
    return metrics


def score_images(model: minisam.Sam, seeds, max_clicks: int, world: World = SHAPES):
    """`score_targets` on every target of the toy images `seeds` of `world`."""
    S = model.config.image_size
    images, targets, index = [], [], []
    for i, seed in enumerate(seeds):
        image, masks = make_sample(seed, S, world)
        # padded one by one: a canvas that is not square is smaller than S x S
        images.append(model.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float()
                                       .to(model.device)))
        targets.append(torch.from_numpy(masks))
        index += [i] * len(masks)
    embeddings = model.image_encoder(torch.cat(images))
    return score_targets(model, embeddings, torch.cat(targets), torch.tensor(index), max_clicks)


def score_targets(model: minisam.Sam, embeddings: torch.Tensor, targets: torch.Tensor,
                  index: torch.Tensor, max_clicks: int) -> TargetScores:
    """embeddings (B, C, g, g) of B images, targets (N, S, S) bool at the model's input size,
    index (N,) the image of each: the TargetScores of every target."""
    embeddings = embeddings[index.to(embeddings.device)]  # (N, C, g, g)

    box = minisam.batched_mask_to_box(targets).float()
    masks, _, _ = decode(model, embeddings, boxes=box)
    box_iou = mask_iou(masks[:, 0], targets)

    click = interior_point(targets)
    points, labels = click[:, None], torch.ones(len(targets), 1, dtype=torch.long)
    masks, iou_pred, low_res = decode(model, embeddings, points, labels, multimask=True)
    actual = mask_iou(masks, targets[:, None])  # (N, 3)
    valid = valid_at_clicks(targets, index, click)
    ambiguous, expected = valid.sum(1) > 1, expected_iou(masks, targets, valid)
    chosen = iou_pred.argmax(1)
    rows = torch.arange(len(targets))

    # interactive: the first click's chosen mask, then corrective clicks with the mask fed back
    prediction, mask_prompt = masks[rows, chosen], low_res[rows, chosen][:, None]
    by_clicks = [actual[rows, chosen]]
    for _ in range(max_clicks - 1):
        click, label = largest_error_click(prediction, targets)
        points = torch.cat([points, click[:, None]], dim=1)
        labels = torch.cat([labels, label[:, None]], dim=1)
        masks, _, mask_prompt = decode(model, embeddings, points, labels, mask_prompt=mask_prompt)
        prediction = masks[:, 0]
        by_clicks.append(mask_iou(prediction, targets))
    return TargetScores(box_iou, iou_pred, actual, torch.stack(by_clicks, dim=1), ambiguous,
                        expected)


MATCH_IOU = 0.5  # an automatic mask "finds" a true mask when their IoU is at least this


def precision_recall(generated: list, truths: list, match_iou: float = MATCH_IOU) -> dict:
    """generated, truths: per image, bool masks (R, H, W) and (K, H, W). Precision: the fraction
    of generated masks that overlap some true mask at IoU >= match_iou. Recall: the fraction of
    true masks (wholes, parts and subparts alike) that some generated mask overlaps so."""
    hits = total = found = asked = 0
    for masks, truth in zip(generated, truths):
        total, asked = total + len(masks), asked + len(truth)
        if len(masks) and len(truth):
            ious = mask_iou(torch.from_numpy(masks)[:, None], torch.from_numpy(truth)[None])
            hits += int((ious.amax(1) >= match_iou).sum())
            found += int((ious.amax(0) >= match_iou).sum())
    return {"masks_per_image": total / max(len(generated), 1),
            "precision": hits / max(total, 1), "recall": found / max(asked, 1)}


def automatic_mask_scores(model: minisam.Sam, seeds, **settings) -> dict:
    """Segment everything on the held-out images `seeds` with SamAutomaticMaskGenerator(model,
    **settings) and score the masks against all the valid ones: `precision_recall`."""
    generator = minisam.SamAutomaticMaskGenerator(model, **settings)
    generated, truths = [], []
    for seed in seeds:
        image, masks = make_sample(seed, model.config.image_size)
        records = generator.generate(image)
        generated.append(np.array([r["segmentation"] for r in records], dtype=bool).reshape(
            -1, *masks.shape[1:]))
        truths.append(masks)
    return precision_recall(generated, truths)


# -----------------------------------------------------------------------------
# 4. Pictures
# How masks are drawn, here and in every figure of the README and the lessons
# (lessons/make_figures.py draws them with these functions). The toy world paints its objects
# in random RGB colours, so no colour is safe on top of them; wherever a mask is shown, the
# image is shown in grey, and
#   - a model's mask is a blue fill,
#   - the true mask is a white line edged in black,
#   - a foreground click is a green plus, a background click a red cross, both edged in black,
#   - a box prompt is a yellow frame edged in black.
# A panel with a predicted mask prints the IoU the model predicts for it and its true IoU.


def pyplot():
    """matplotlib.pyplot, drawing into files only (no display needed), imported when a
    picture is first drawn."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


FIGURE_DPI = 100


def save_figure(fig, path: Path) -> None:
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
    pyplot().close(fig)


PREDICTED = (0.1, 0.4, 1.0)  # blue fill: a model's mask
BOX = "#ffd92f"  # yellow frame: a box prompt
EDGED = [patheffects.withStroke(linewidth=3.4, foreground="black")]  # a black edge under a line
# a click: a marker edged in black, green plus for foreground (label 1), red cross for background
CLICKS = {label: dict(marker=marker, color=colour, ls="", markeredgecolor="black", markeredgewidth=1.3)
          for label, marker, colour in ((1, "P", "#3cf03c"), (0, "X", "#ff3c3c"))}
FILL_ALPHA = 0.6  # the opacity of a mask's fill
AUTOMATIC_ALPHA = 0.75  # and of the automatic masks', each in its own colour, one over another
GREYS = (-106, 319)  # the luminances drawn black and white: the image's greys span 0.25 to 0.85


def grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) luminance: the toy world without its colours."""
    return image @ np.array([0.299, 0.587, 0.114])


def show(ax, image: np.ndarray, colour: bool = False) -> None:
    if colour:
        ax.imshow(image, interpolation="nearest")
    else:  # in mid greys (0.25 to 0.85), so that white and black lines stand out on it
        ax.imshow(grey(image), cmap="gray", vmin=GREYS[0], vmax=GREYS[1], interpolation="nearest")
    ax.axis("off")


def fill(ax, mask: np.ndarray, colour=PREDICTED, alpha: float = FILL_ALPHA) -> None:
    rgba = np.zeros((*mask.shape, 4))
    rgba[mask] = (*colour, alpha)
    ax.imshow(rgba, interpolation="nearest")


def outline(ax, mask: np.ndarray, linestyle: str = "-") -> None:
    """The true mask: a white line on a black edge, along the pixel borders of `mask`."""
    if mask.any() and not mask.all():
        lines = ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=1.4,
                           linestyles=linestyle)
        lines.set_path_effects(EDGED)


def draw_clicks(ax, points, labels, size: float = 10) -> None:
    for (x, y), label in zip(np.asarray(points).tolist(), np.asarray(labels).tolist()):
        ax.plot(x, y, markersize=size, **CLICKS[int(label)])


def draw_box(ax, box) -> None:
    """box: x0, y0, x1, y1 in inclusive pixel indices, framed around those pixels."""
    x0, y0, x1, y1 = np.asarray(box, dtype=float).tolist()
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                           edgecolor=BOX, linewidth=1.6, path_effects=EDGED, zorder=3))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return minisam.mask_iou(torch.from_numpy(a), torch.from_numpy(b)).item()


def mask_panel(ax, image, mask=None, truth=None, points=(), labels=(), box=None, title="",
               colour=False) -> None:
    """One panel: the image (grey unless `colour`), a predicted mask, the true mask, prompts."""
    show(ax, image, colour)
    if mask is not None:
        fill(ax, mask)
    if truth is not None:
        outline(ax, truth)
    if box is not None:
        draw_box(ax, box)
    draw_clicks(ax, points, labels)
    ax.set_title(title, fontsize=9)


def scores(predicted: float, mask: np.ndarray, truth: np.ndarray) -> str:
    return f"predicted IoU {predicted:.2f}, true {iou(mask, truth):.2f}"


def legend(fig, *items) -> None:
    """A legend under a figure made with layout="constrained", for the given items of the
    drawing rules."""
    handles = {
        "mask": Patch(facecolor=(*PREDICTED, FILL_ALPHA), edgecolor="none", label="predicted mask"),
        "truth": Line2D([], [], color="white", lw=1.4, path_effects=EDGED, label="true mask"),
        "box": Line2D([], [], color=BOX, lw=1.6, path_effects=EDGED, label="box prompt"),
        "positive": Line2D([], [], markersize=9, label="foreground click", **CLICKS[1]),
        "negative": Line2D([], [], markersize=9, label="background click", **CLICKS[0])}
    fig.legend(handles=[handles[i] for i in items], loc="outside lower center",
               ncol=len(items), facecolor="#d9d9d9", fontsize=9)


def curve_points(history: list) -> list:
    """The entries of a run's history that carry held-out scores (every --curve-every steps):
    its learning curve."""
    return [h for h in history if "box_miou" in h]


# Images for the figures of a trained model: the held-out objects with all three levels
# (whole -> part -> subpart), where one click is ambiguous three ways. Among the first
# CHOICE_IMAGES held-out images, the one whose subpart is largest opens the README (a small
# window would be hard to see), the next ones fill lesson 6's gallery. A rule on the world
# alone: the model's predictions play no part in the choice.
CHOICE_IMAGES = 16


def three_level_objects() -> list:
    """[(seed, (whole, part, subpart) mask indices)], one per held-out image that has such an
    object (its largest subpart), largest subpart first."""
    found = []
    for seed in EVAL_SEEDS[:CHOICE_IMAGES]:
        _, masks, parents = make_world(seed)
        chains = [(parents[parents[k]], parents[k], k) for k in range(len(masks))
                  if parents[k] >= 0 and parents[parents[k]] >= 0]
        if chains:
            chain = max(chains, key=lambda c: masks[c[2]].sum())
            found.append((masks[chain[2]].sum(), seed, chain))
    return [(seed, chain) for _, seed, chain in sorted(found, key=lambda f: -f[0])]


LEVELS = ("whole", "part", "subpart")


def prompt_panels(predictor: minisam.SamPredictor, seed: int, chain) -> list:
    """The prompts of the README's first figure on one held-out image, as a list of 8
    mask_panel arguments: the image with one click in the subpart (at its interior point,
    the evaluation's first click); the click's three masks, largest first, each beside the
    level it matches best; a box on the part (its tight box); and the evaluation's
    interactive protocol for the part: a click at its interior point, the IoU head's choice
    of the three masks, then two corrective clicks (`largest_error_click`), each fed the
    previous low-res logits."""
    image, masks, _ = make_world(seed)
    levels = masks[list(chain)]  # (3, H, W): whole, part, subpart
    predictor.set_image(image)

    def interior(mask):
        return interior_point(torch.from_numpy(mask)[None]).numpy()  # (1, 2) x, y

    click, positive = interior(levels[2]), np.array([1])
    panels = [dict(points=click, labels=positive, colour=True,
                   title=f"held-out image {seed}\none click")]
    out, predicted, _ = predictor.predict(click, positive)
    for k in np.argsort(-out.sum((1, 2)), kind="stable"):
        match = max(range(3), key=lambda j: iou(out[k], levels[j]))
        panels.append(dict(mask=out[k], truth=levels[match], points=click, labels=positive,
                           title=f"mask {len(panels)}: nearest the {LEVELS[match]}\n"
                                 f"{scores(predicted[k], out[k], levels[match])}"))

    part = levels[1]
    box = minisam.batched_mask_to_box(torch.from_numpy(part)).numpy()
    mask, predicted, _ = predictor.predict(box=box, multimask_output=False)
    panels.append(dict(mask=mask[0], truth=part, box=box,
                       title=f"a box on the part\n{scores(predicted[0], mask[0], part)}"))

    points, labels = interior(part), [1]
    out, predicted, low_res = predictor.predict(points, np.array(labels))
    best = predicted.argmax()  # the IoU head's choice
    mask, predicted, low_res = out[best], predicted[best], low_res[best][None]
    for n in range(1, 4):
        if n > 1:
            new, label = largest_error_click(torch.from_numpy(mask)[None],
                                                       torch.from_numpy(part)[None])
            points, labels = np.concatenate([points, new.numpy()]), labels + [int(label)]
            out, predicted, low_res = predictor.predict(points, np.array(labels),
                                                        mask_input=low_res,
                                                        multimask_output=False)
            mask, predicted = out[0], predicted[0]
        what = "the IoU head's choice" if n == 1 else "a corrective click"
        panels.append(dict(mask=mask, truth=part, points=points, labels=labels,
                           title=f"part, {n} click{'s' * (n > 1)}: {what}\n"
                                 f"{scores(predicted, mask, part)}"))
    return [dict(image=image, **p) for p in panels]


def draw_gallery(model: minisam.Sam, label: str, path: Path) -> None:
    """Lesson 6's gallery (gallery.png of a run): the README's first figure's prompts
    (`prompt_panels`) on the next held-out images."""
    plt = pyplot()
    predictor = minisam.SamPredictor(model)
    rows = three_level_objects()[1:4]
    fig, axes = plt.subplots(len(rows), 6, figsize=(15, 2.9 * len(rows) + 0.8),
                             squeeze=False, layout="constrained")
    for row, (seed, chain) in zip(axes, rows):
        panels = prompt_panels(predictor, seed, chain)
        for ax, panel in zip(row, panels[:5] + panels[-1:]):  # the last: after 3 clicks
            mask_panel(ax, **panel)
    fig.suptitle(f"held-out images, toy model {label}: one click -> three masks; a box "
                 "on the part; the part after three clicks")
    legend(fig, "mask", "truth", "positive", "negative", "box")
    save_figure(fig, path)


AMG_IMAGE = 1  # the held-out image the figures show: EVAL_SEEDS[1] has four objects, one of
# three levels; precision and recall are scored on AMG_EVAL_IMAGES held-out images


def draw_automatic_masks(model: minisam.Sam, label: str, path: Path) -> None:
    """The automatic masks of one held-out image beside its true masks, and the precision
    and recall at IoU >= MATCH_IOU on AMG_EVAL_IMAGES held-out images."""
    plt = pyplot()
    seeds = EVAL_SEEDS[:AMG_EVAL_IMAGES]
    overall = automatic_mask_scores(model, seeds, **TOY_AMG_SETTINGS)
    image, truths = make_sample(EVAL_SEEDS[AMG_IMAGE])
    records = minisam.SamAutomaticMaskGenerator(model, **TOY_AMG_SETTINGS).generate(image)
    found = np.array([r["segmentation"] for r in records], bool).reshape(-1, *image.shape[:2])
    predicted = [r["predicted_iou"] for r in records]
    here = precision_recall([found], [truths])
    ious = minisam.mask_iou(torch.from_numpy(found)[:, None], torch.from_numpy(truths)[None])
    ious = ious.numpy().reshape(len(found), len(truths))  # (automatic, true)

    # below: every true mask, largest first, with the automatic mask nearest it; then all the
    # automatic masks that are near no true mask (the false positives)
    order = np.argsort(-truths.sum((1, 2)), kind="stable")
    panels = []
    for n, j in enumerate(order):
        r = ious[:, j].argmax() if len(found) else None
        if r is None:
            title = "missed"
        elif ious[r, j] >= MATCH_IOU:
            title = f"found\npredicted IoU {predicted[r]:.2f}, true {ious[r, j]:.2f}"
        else:
            title = f"missed\n(nearest automatic: IoU {ious[r, j]:.2f})"
        panels.append((None if r is None else found[r], truths[j], f"true mask {n + 1}: {title}"))
    wrong = [r for r in range(len(found)) if ious[r].max(initial=0) < MATCH_IOU]
    columns = 6
    rows = -(-(len(panels) + 1) // columns)  # and one panel for the wrong automatic masks
    fig = plt.figure(figsize=(2.1 * columns, 4.3 + 2.3 * rows), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(4.1, 2.3 * rows))
    axes = top.subplots(1, 3)
    show(axes[0], image, colour=True)
    axes[0].set_title(f"held-out image {EVAL_SEEDS[AMG_IMAGE]}", fontsize=10)
    palette = plt.get_cmap("tab10")

    def fills(ax, rows):
        """Automatic masks in colours of their own (the image is grey): large first."""
        show(ax, image)
        for n, r in enumerate(sorted(rows, key=lambda r: -found[r].sum())):
            fill(ax, found[r], colour=palette(n % 10)[:3], alpha=AUTOMATIC_ALPHA)

    fills(axes[1], range(len(found)))
    axes[1].set_title(f"{len(found)} automatic masks\nprecision {here['precision']:.2f}, "
                      f"recall {here['recall']:.2f}", fontsize=10)
    show(axes[2], image)
    for j in order:
        outline(axes[2], truths[j])
    axes[2].set_title(f"{len(truths)} true masks\n(wholes, parts, subparts)", fontsize=10)
    settings = ", ".join(f"{k}={v}" for k, v in TOY_AMG_SETTINGS.items())
    top.suptitle(f"automatic masks of {label}, TOY_AMG_SETTINGS ({settings})"
                 f"\non {len(seeds)} held-out images: {overall['masks_per_image']:.1f} masks "
                 f"per image, precision {overall['precision']:.2f}, recall "
                 f"{overall['recall']:.2f} (right: IoU >= {MATCH_IOU:g} with some true mask)")
    axes = bottom.subplots(rows, columns, squeeze=False).flat
    for ax, (mask, truth, title) in zip(axes, panels):
        mask_panel(ax, image, mask, truth, title=title)
    fills(axes[len(panels)], wrong)
    axes[len(panels)].set_title(f"{len(wrong)} automatic mask{'s' * (len(wrong) != 1)}\n"
                                "matching no true mask", fontsize=9)
    for ax in axes[len(panels) + 1:]:
        ax.axis("off")
    legend(fig, "mask", "truth")
    save_figure(fig, path)


def draw_pictures(model: minisam.Sam, metrics: dict, history: list, out: Path) -> None:
    """This run's curves (loss.png, miou_vs_clicks.png), and its model drawn exactly as the
    README and the lessons draw the shipped one (lessons/make_figures.py): three held-out
    images prompted with one click, a box and corrective clicks (gallery.png), and the
    automatic masks of one beside its true masks (automask.png)."""
    plt = pyplot()
    fig, (ax, curve) = plt.subplots(1, 2, figsize=(11, 3.5))
    steps = [h["step"] for h in history]
    for key in ("loss", "focal", "dice", "iou_mse"):
        values = [h[key] * (20 if key == "focal" else 1) for h in history]
        ax.plot(steps, values, label="20 x focal" if key == "focal" else key)
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="Loss")
    ax.legend()
    points = curve_points(history)
    for key in ("box_miou", "one_click_oracle_miou"):
        curve.plot([h["minutes"] for h in points], [h[key] for h in points], marker="o",
                   label=key.replace("_", " "))
    curve.set(xlabel="training minutes", ylabel=f"held-out mIoU ({CURVE_IMAGES} images)",
              ylim=(0, 1), title="Learning curve")
    curve.grid(alpha=0.3)
    curve.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    clicks = range(1, len(metrics["miou_by_clicks"]) + 1)
    ax.plot(clicks, metrics["miou_by_clicks"], marker="o")
    ax.set(xlabel="clicks", ylabel="held-out mIoU", ylim=(0, 1), title="mIoU vs clicks")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "miou_vs_clicks.png", dpi=120)
    plt.close(fig)

    label = f"{out.name}/ckpt.pt, {history[-1]['step'] if history else 0} training steps"
    draw_gallery(model.eval(), label, out / "gallery.png")
    draw_automatic_masks(model, label, out / "automask.png")


# -----------------------------------------------------------------------------
# The command


DEFAULTS = TrainSettings()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train minisam on the toy-shapes world.")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="total optimisation steps")
    p.add_argument("--out", type=Path, default=Path("out"))
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt to --steps")
    p.add_argument("--save-every", type=int, default=200, metavar="N")
    p.add_argument("--config", choices=sorted(CONFIGS), default="toy")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda...")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--eval-only", action="store_true", help="evaluate OUT/ckpt.pt and draw")
    p.add_argument("--curve-every", type=int, default=100, metavar="N",
                   help="held-out box and 1-click mIoU every N steps (the learning curve)")
    p.add_argument("--iters", type=int, default=DEFAULTS.iters,
                   help="decoder passes per target (the paper: 11 = 1 + 8 clicks + 2 without)")
    p.add_argument("--no-click-passes", type=int, default=DEFAULTS.no_click_passes,
                   choices=(0, 1, 2), help="how many of those passes add no click (the paper: 2)")
    p.add_argument("--images-per-step", type=int, default=DEFAULTS.images_per_step)
    p.add_argument("--targets-per-image", type=int, default=DEFAULTS.targets_per_image)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
    p.add_argument("--warmup", type=int, default=DEFAULTS.warmup)
    p.add_argument("--small-steps", type=int, default=DEFAULTS.small_steps, metavar="N",
                   help="the first N steps see images rendered at --small-size (progressive "
                        "resizing; 0: none); a resumed run keeps them where they were")
    p.add_argument("--small-size", type=int, default=DEFAULTS.small_size, metavar="PX")
    p.add_argument("--worlds", default="shapes",
                   help="the worlds to train on (or, with --export-toy, to export): "
                        "comma-separated names of train_toy.WORLDS, or 'training' for all of "
                        "TRAINING_WORLDS (the toy SA-1B)")
    p.add_argument("--train-images", type=int, metavar="N",
                   help="train on N fixed images, spread evenly over --worlds (default: a new "
                        "image every draw)")
    p.add_argument("--init", type=Path, metavar="PATH",
                   help="start from the weights of this checkpoint (a fresh optimizer and "
                        "schedule) instead of random ones; an image encoder's state dict alone "
                        "(lessons/mae_encoder.pt) starts the encoder only")
    p.add_argument("--export-toy", type=Path, metavar="DIR",
                   help="write --images toy worlds in SA-1B's layout to DIR (finetune.py's "
                        "data), and stop")
    p.add_argument("--images", type=int, default=200, help="with --export-toy: how many")
    p.add_argument("--shifted", action="store_true",
                   help="with --export-toy: in the shifted style (striped regions)")
    p.add_argument("--save-model", type=Path, metavar="PATH",
                   help="also save the model alone (no optimizer) to PATH, loadable with "
                        "build_sam, and its provenance and held-out metrics to PATH.json")
    args = p.parse_args(argv)
    for name in ("steps", "save_every", "curve_every", "iters", "images_per_step", "targets_per_image",
                 "warmup", "images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.small_steps < args.steps:
        p.error(f"--small-steps {args.small_steps} must be at least 0 and below --steps "
                f"{args.steps}: a run ends at full size")
    patch = CONFIGS[args.config].patch_size
    if not 0 < args.small_size <= CONFIGS[args.config].image_size or args.small_size % patch:
        p.error(f"--small-size must be a multiple of the patch size {patch} up to the image "
                f"size {CONFIGS[args.config].image_size}, got {args.small_size}")
    if args.no_click_passes > args.iters - 1:
        p.error(f"--no-click-passes {args.no_click_passes} leaves no first prompt in --iters "
                f"{args.iters}")
    if args.device != "auto":
        try:
            minisam.check_device(args.device)
        except ValueError as e:
            p.error(f"--device: {e}")
    names = ([w.name for w in TRAINING_WORLDS] if args.worlds == "training"
             else args.worlds.split(","))
    unknown = [n for n in names if n not in WORLDS]
    if unknown:
        p.error(f"--worlds: no world named {', '.join(unknown)}; the worlds are "
                f"{', '.join(WORLDS)} (or 'training')")
    args.worlds = tuple(WORLDS[n] for n in names)
    if args.train_images is not None and args.train_images < len(args.worlds):
        p.error(f"--train-images must be at least the number of worlds, {len(args.worlds)}, "
                f"got {args.train_images}")
    if args.init is not None and not args.init.is_file():
        p.error(f"--init: no checkpoint at {args.init}")
    args.settings = TrainSettings(**{f.name: getattr(args, f.name)
                                     for f in dataclasses.fields(TrainSettings)})
    return args


def save_model(path: Path, state: dict, metrics: dict) -> None:
    """The shipped form of a trained model: its weights and learning curve, without the
    optimizer's moments and the per-step losses (most of the file; both stay in
    OUT/ckpt.pt), and beside it a JSON of how it was made and what it scores,
    automatic masks included: with TOY_AMG_SETTINGS and with the reference's thresholds."""
    model = minisam.build_sam(SamConfig(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in state["config"].items()}))
    model.load_state_dict(state["model"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {**state, "history": curve_points(state["history"])})
    seeds = EVAL_SEEDS[:AMG_EVAL_IMAGES]
    record = {"runs": state["runs"], "seed": state["seed"], "worlds": state["worlds"],
              "metrics": {k: v for k, v in metrics.items() if k != "learning_curve"},
              "automatic_masks": {
                  "images": len(seeds), "match_iou": MATCH_IOU, "settings": TOY_AMG_SETTINGS,
                  **automatic_mask_scores(model, seeds, **TOY_AMG_SETTINGS),
                  "with_reference_thresholds": automatic_mask_scores(
                      model, seeds, **{**TOY_AMG_SETTINGS, **REFERENCE_AMG_THRESHOLDS})}}
    path.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(f"wrote {path} and {path.with_suffix('.json')}")


def initial_model(config: SamConfig, path: Path, seed: int) -> minisam.Sam:
    """--init's model: a whole Sam's checkpoint (what build_sam loads), or an image encoder's
    state dict alone (lessons/mae.py's MAE encoder, as SAM starts), loaded into a Sam whose
    prompt encoder and decoder are random from `seed`, the very weights a run from scratch
    starts them with."""
    try:  # mapped, not read: only the keys are looked at before build_sam reads a whole Sam
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a readable file: build_sam below says so in its own words
        state = None
    if not (isinstance(state, dict) and "patch_embed.proj.weight" in state):
        return minisam.build_sam(config, checkpoint=path)
    torch.manual_seed(seed)  # as main does before a Sam from scratch
    model = minisam.Sam(config)
    try:
        model.image_encoder.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"--init {path}: an image encoder's state dict that does not fit "
                         f"this config's encoder: {e}") from None
    return model


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def start_processes(device: str):
    """This process's device, its rank, and how many processes train: one, unless torchrun
    started several for data-parallel training (each with its own GPU, if there are GPUs)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device)
    if world > 1:
        if device.type == "cuda":  # one GPU per process, as torchrun numbers them
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def load_run(args, config: SamConfig):
    """(model, state) of OUT/ckpt.pt, to resume or to evaluate. A run resumes only with the
    seed, the worlds and the data set it was trained with: they pick every batch."""
    path = args.out / "ckpt.pt"
    if not path.exists():
        raise SystemExit(f"no checkpoint at {path} to {'resume' if args.resume else 'evaluate'}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean the same here
        raise SystemExit(f"{path} is not a readable checkpoint: {type(e).__name__}: {e}")
    # a checkpoint saved during the small steps holds the model at the small size
    saved = dataclasses.replace(config, image_size=state["config"]["image_size"])
    model = minisam.build_sam(saved, checkpoint=path)  # checks the file fits config
    # (a checkpoint without "worlds" saw SHAPES, without "train_images" a new image a draw)
    for key, value, before in (("seed", args.seed, None),
                               ("worlds", [w.name for w in args.worlds], ["shapes"]),
                               ("train_images", args.train_images, None)):
        if args.resume and state.get(key, before) != value:
            raise SystemExit(f"{path} was trained with --{key} {state.get(key, before)}; "
                             f"resuming with --{key} {value} would draw other batches")
    if args.resume and saved == config and state["step"] < args.small_steps:
        raise SystemExit(f"{path} is at full size at step {state['step']}, within --small-steps "
                         f"{args.small_steps}: resume with the --small-steps it was trained with")
    return model, state


def new_model(args, config: SamConfig) -> minisam.Sam:
    """The weights a run starts from: --init's, or random ones drawn from --seed."""
    if args.init is not None:  # trained weights, on this run's schedule
        return initial_model(config, args.init, args.seed)
    torch.manual_seed(args.seed)
    return minisam.Sam(dataclasses.replace(
        config, image_size=args.settings.image_size(0, config.image_size)))


def run_state(model: minisam.Sam, args, history: list, runs: list) -> dict:
    """OUT/ckpt.pt without the optimizer: the model, how it was trained, and its history."""
    return {"model": model.state_dict(), "config": dataclasses.asdict(model.config),
            "step": history[-1]["step"] if history else 0, "seed": args.seed,
            "worlds": [w.name for w in args.worlds], "train_images": args.train_images,
            "history": history, "runs": runs}


def final_metrics(model: minisam.Sam, history: list) -> dict:
    """`evaluate` on every held-out image, with the run's minutes, steps and learning curve;
    printed as a table."""
    metrics = evaluate(model)
    metrics["train_minutes"] = history[-1]["minutes"] if history else 0.0
    metrics["steps"] = history[-1]["step"] if history else 0
    metrics["learning_curve"] = [{k: h[k] for k in ("step", "minutes", "box_miou",
                                                    "one_click_oracle_miou")}
                                 for h in curve_points(history)]
    print(f"\nheld-out evaluation ({metrics['targets']} targets on {len(EVAL_SEEDS)} images)")
    for key in ("box_miou", "one_click_oracle_miou", "one_click_miou", "iou_head_pearson_r",
                "one_click_miou_ideal_head", "iou_head_pearson_r_ideal",
                "one_click_miou_unambiguous", "iou_head_pearson_r_unambiguous"):
        print(f"  {key:<30} {metrics.get(key, float('nan')):.3f}")
    print(f"  (unambiguous: the {metrics['unambiguous_targets']} targets whose click lies "
          "in no other valid mask)")
    print(f"  {'mIoU after 1..9 clicks':<30} "
          + " ".join(f"{v:.3f}" for v in metrics["miou_by_clicks"]))
    return metrics


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.export_toy is not None:
        return export_toy(args.export_toy, args.images, args.shifted, args.worlds)
    device, rank, world = start_processes(args.device)
    config, ckpt_path, settings = CONFIGS[args.config], args.out / "ckpt.pt", args.settings
    model, state = (load_run(args, config) if args.resume or args.eval_only
                    else (new_model(args, config), None))
    history, runs = (state["history"], state.get("runs", [])) if state else ([], [])
    step = state["step"] if state else 0
    args.out.mkdir(parents=True, exist_ok=True)
    if step < settings.steps and not args.eval_only:
        runs.append({**provenance(argv), "from_step": step})

        def after_step(model, optimizer):
            """The learning curve every --curve-every steps, a checkpoint every --save-every."""
            step = history[-1]["step"]
            if rank == 0 and (step % args.curve_every == 0 or step == settings.steps):
                # always on the full-size held-out images, so the whole curve is comparable
                quick = evaluate(at_size(model, config.image_size), EVAL_SEEDS[:CURVE_IMAGES],
                                 max_clicks=1)
                history[-1].update({k: quick[k] for k in ("box_miou", "one_click_oracle_miou")})
            if rank == 0 and (step % args.save_every == 0 or step == settings.steps):
                save_checkpoint(ckpt_path, {**run_state(model, args, history, runs),
                                            "optimizer": optimizer.state_dict()})

        def batches(step, image_size):
            return training_batch(step, settings.seed, rank, settings.images_per_step,
                                  settings.targets_per_image, image_size, args.worlds,
                                  args.train_images)

        model = train(model.to(device), batches, settings, history, state and state["optimizer"],
                      config.image_size, after_step, checkpoint=ckpt_path,
                      log=functools.partial(print, flush=True) if rank == 0 else lambda line: None)
    if rank == 0:
        model = at_size(model.to(device), config.image_size)
        metrics = final_metrics(model, history)
        # the runs' commands, commit and threads say how the numbers were made
        (args.out / "metrics.json").write_text(json.dumps({**metrics, "runs": runs}, indent=2))
        draw_pictures(model, metrics, history, args.out)
        print(f"wrote {ckpt_path}, {args.out / 'metrics.json'} and figures in {args.out}/")
        if args.save_model:
            save_model(args.save_model, run_state(model, args, history, runs), metrics)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
