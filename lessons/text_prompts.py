"""
text_prompts.py: text prompts as the SAM paper explored them (section 7.5, appendix D.5).

    python lessons/text_prompts.py            # train the toy CLIP and the prompt head, evaluate
    python lessons/text_prompts.py --eval-only --seeds 1000000 1000064 --out /tmp/text

SAM was never trained on a single caption. For each training mask, the paper crops the image
around it, embeds the crop with CLIP's *image* encoder, and gives SAM that embedding as a
prompt. At inference it gives SAM CLIP's *text* embedding of a phrase instead, and that works
because CLIP put matching images and texts near each other. Here, on the toy world:
  1. captions from the generator's facts (`train_toy.make_world(..., captions=True)`), some
     colour x noun combinations held out from all training (`HELD_OUT_CAPTIONS`);
  2. a toy CLIP (`ToyClip`) trained contrastively on mask crops and their captions;
  3. the shipped toy SAM taught the crop embedding as one extra sparse prompt token
     (`PromptToken`), first in the interactive sequence and followed by corrective clicks,
     while it keeps practising clicks and boxes (`train_prompting`);
  4. evaluation with the caption's *text* embedding in its place (`evaluate_text`), and
     linear probes of what the image embedding knows of colour and noun (`linear_probe`).
The lesson is lessons/12_text_prompts.md.
"""

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# the lesson scripts live one level below the package's two modules
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minisam  # noqa: E402
import train_toy  # noqa: E402
from minisam import mask_iou, sam_loss  # noqa: E402
from train_toy import (EVAL_SEEDS, SHAPES, TRAIN_SEEDS, InteractiveTraining,  # noqa: E402
                       corrective_click, decode, interior_point, largest_error_click,
                       learning_rate, make_optimizer, optimisation_step)

HERE = Path(__file__).resolve().parent
TOY_CHECKPOINT = HERE / "toy_sam.pt"
WEIGHTS = HERE / "text_prompts.pt"
RESULTS = HERE / "text_prompts.json"
FIGURES = HERE / "figures"

# One of each colour, each with a different noun: never seen in training, by the toy CLIP or
# by SAM, so the text tower must compose the two words it knows apart.
HELD_OUT_CAPTIONS = ("red triangle", "green house roof", "blue snowman", "yellow ellipse",
                     "cyan target bullseye", "magenta rectangle", "white snowman button",
                     "black house window")
VOCABULARY = tuple(sorted(set(train_toy.COLOUR_NAMES.values()) | set(SHAPES.kinds)
                          | {n for kind in SHAPES.kinds for n in train_toy.PART_NOUNS.get(kind, ())}))
CLIP_DIM = 64  # the toy CLIP's embedding width (the paper's ViT-L/14 CLIP: 768)
CROP = 24  # a crop's side in pixels, as the image tower sees it


# -----------------------------------------------------------------------------
# 1. Captioned masks and their crops


def captioned_images(seeds, image_size: int):
    """The SHAPES images of `seeds` with every mask and its caption: images (B, 3, S, S)
    float 0..255, masks (K, S, S) bool, index (K,) the image of each mask, captions (K,)."""
    images, masks, index, captions = [], [], [], []
    for i, seed in enumerate(seeds):
        image, m, _, c = train_toy.make_world(seed, image_size, SHAPES, captions=True)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float())
        masks.append(torch.from_numpy(m))
        index += [i] * len(m)
        captions += c
    return torch.stack(images), torch.cat(masks), torch.tensor(index), captions


def shared_in_image(words, index: torch.Tensor) -> torch.Tensor:
    """(K,) bool: another mask of the same image (index (K,)) has the same words."""
    count = Counter(zip(index.tolist(), words))
    return torch.tensor([count[key] > 1 for key in zip(index.tolist(), words)])


def mask_crops(images, masks, index, generator=None):
    """Appendix D.5's crops: the mask's box expanded by a factor drawn from 1..2, made square,
    its pixels outside the mask zeroed with probability 0.5. images (B, 3, S, S) 0..255, masks
    (N, S, S), index (N,) -> (N, 3, CROP, CROP) in about -1..1. Without a generator, the
    evaluation's fixed crop: factor 1.5, the surroundings kept."""
    if masks.dtype != torch.bool or masks.ndim != 3:
        raise TypeError(f"masks must be bool (N, S, S), got {masks.dtype} {tuple(masks.shape)}")
    if len(index) != len(masks):
        raise ValueError(f"index must hold one image per mask: {len(index)} for {len(masks)} masks")
    N, S = len(masks), masks.shape[-1]
    box = minisam.batched_mask_to_box(masks).float()  # (N, 4) x0 y0 x1 y1, inclusive
    centre = (box[:, :2] + box[:, 2:] + 1) / 2  # (N, 2) x, y in pixels
    side = (box[:, 2:] - box[:, :2] + 1).amax(1)  # (N,) the box's longer side: a square crop
    if generator is None:
        factor, zeroed = torch.full((N,), 1.5), torch.zeros(N, dtype=torch.bool)
    else:
        factor = 1 + torch.rand(N, generator=generator)
        zeroed = torch.rand(N, generator=generator) < 0.5
    pixels = images[index] / 127.5 - 1  # (N, 3, S, S)
    pixels = torch.where(zeroed[:, None, None, None] & ~masks[:, None], torch.zeros(()), pixels)
    # an affine grid maps the crop's -1..1 onto the square around the centre, in the image's
    # -1..1 coordinates; outside the image reads zeros, like a crop over the border
    half = factor * side / S  # (N,) half the crop's side in those coordinates
    theta = torch.zeros(N, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = half
    theta[:, :, 2] = centre / S * 2 - 1
    grid = F.affine_grid(theta, (N, 3, CROP, CROP), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def word_ids(captions):
    """Captions -> (N, L) word indices into VOCABULARY, padded with -1 (L: the most words)."""
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, not one string")
    for c in captions:
        if not c.split():
            raise ValueError(f"captions holds an empty caption: {c!r}")
        unknown = [w for w in c.split() if w not in VOCABULARY]
        if unknown:
            raise ValueError(f"caption {c!r}: the toy CLIP knows no {unknown[0]!r}; its words are "
                             + " ".join(VOCABULARY))
    ids = [[VOCABULARY.index(w) for w in c.split()] for c in captions]
    longest = max(map(len, ids))
    return torch.tensor([w + [-1] * (longest - len(w)) for w in ids])


# -----------------------------------------------------------------------------
# 2. A toy CLIP (Radford et al., 2021)
# Two towers map an image and a text into the same unit sphere; training pulls each crop's
# embedding towards its own caption's and pushes it from the other captions in the batch.
# The text tower is a bag of words: a sum of word vectors, then an MLP. It cannot read order,
# but a toy caption's words come from three disjoint lists (colour, object, part), so order
# carries nothing here; and a sum composes, so a held-out "red triangle" lands where "red" and
# "triangle" point even though the pair was never seen.


class ToyClip(nn.Module):
    def __init__(self):
        super().__init__()
        # 24 -> 12 -> 6 -> 3: the crop's layout survives to the flatten, so the tower can see
        # what sits in the middle (the mask) and what around it (its whole)
        self.image_tower = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(64 * 9, 128), nn.GELU(), nn.Linear(128, CLIP_DIM))
        self.words = nn.Embedding(len(VOCABULARY), 64)
        self.text_tower = nn.Sequential(nn.GELU(), nn.Linear(64, 128), nn.GELU(),
                                        nn.Linear(128, CLIP_DIM))
        # CLIP's learned temperature, as the log of the logits' scale; starts at 1 / 0.07
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_images(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, CROP, CROP) -> (N, CLIP_DIM), unit length."""
        return F.normalize(self.image_tower(crops), dim=-1)

    def embed_texts(self, captions) -> torch.Tensor:
        """N captions -> (N, CLIP_DIM), unit length."""
        ids = word_ids(captions)
        bag = (self.words(ids.clamp(min=0)) * (ids >= 0)[..., None]).sum(1)  # (N, 64)
        return F.normalize(self.text_tower(bag), dim=-1)


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, captions, logit_scale):
    """Symmetric InfoNCE over a batch of N matched (image, text) pairs, (N, D) each. A batch
    of toy masks often holds the same caption twice ("black house window"); pushing those
    apart would teach the towers to separate what is identical, so every pair whose captions
    are equal counts as a positive: each row's loss is -log of the softmax mass on all its
    positives."""
    if len(image_emb) != len(text_emb) or len(captions) != len(image_emb):
        raise ValueError(f"image_emb, text_emb and captions must be as long, got "
                         f"{len(image_emb)}, {len(text_emb)}, {len(captions)}")
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T  # (N, N)
    codes = {c: i for i, c in enumerate(sorted(set(captions)))}
    code = torch.tensor([codes[c] for c in captions])
    positive = code[:, None] == code[None]  # (N, N), symmetric
    loss = 0.0
    for scores in (logits, logits.T):  # image -> text, then text -> image
        own = scores.masked_fill(~positive, -math.inf).logsumexp(1)  # the mass on the positives
        loss = loss + (scores.logsumexp(1) - own).mean()
    return loss / 2


# -----------------------------------------------------------------------------
# 3. The embedding as a sparse prompt token
# The paper's text prompt is sparse, like points and boxes: one token among the prompt tokens.
# A point's token is its position's Fourier features plus a learned type embedding
# (foreground or background); this one is a learned projection of the CLIP embedding plus its
# own learned type embedding. It goes first, before the clicks that correct it.


class PromptToken(nn.Module):
    def __init__(self, clip_dim: int, embed_dim: int):
        super().__init__()
        self.projection = nn.Linear(clip_dim, embed_dim)
        self.type_embedding = nn.Parameter(torch.randn(embed_dim))  # as the points' N(0, 1)

    def forward(self, clip_emb: torch.Tensor) -> torch.Tensor:
        """(N, clip_dim) unit vectors -> (N, 1, embed_dim), one token per prompt row. A unit
        vector's entries are about 1 / sqrt(clip_dim); times sqrt(clip_dim) they are about 1,
        as a click's Fourier features are, so that from the first step the projection is not
        drowned by the type embedding (norm about sqrt(embed_dim))."""
        scaled = clip_emb * clip_emb.shape[-1] ** 0.5
        return (self.projection(scaled) + self.type_embedding)[:, None]


def decode_with_token(model: minisam.Sam, token: PromptToken, embeddings, clip_emb,
                      points=None, labels=None, mask_prompt=None):
    """One decoder call for N rows, each prompted with its CLIP embedding (N, CLIP_DIM) first,
    then any clicks (N, P, 2) and the previous low-res logits (N, 1, 4g, 4g). The embedding
    alone is one prompt, and as ambiguous as one click (the decoder cannot tell which of two
    snowmen is the blue one, lesson below): three masks, as for a click (section 3, "Resolving
    ambiguity"); with clicks after it, one. Returns low-res logits (N, M, 4g, 4g) and the IoU
    predictions (N, M), M = 3 or 1."""
    N = len(clip_emb)
    sparse, dense = model.prompt_encoder(points=None if points is None else (points, labels),
                                         boxes=None, masks=mask_prompt)
    sparse = torch.cat([token(clip_emb), sparse.expand(N, -1, -1)], dim=1)
    return model.mask_decoder(embeddings, model.prompt_encoder.get_dense_pe(), sparse,
                              dense.expand(N, -1, -1, -1), multimask_output=points is None)


def head_choice(logits: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """(N, M, h, w) logits and (N, M) predicted IoUs -> (N, 1, h, w): the output the IoU head
    rates highest, which is what the next click corrects and feeds back as the mask prompt."""
    return logits[torch.arange(len(logits)), iou.argmax(1)][:, None]


class CaptionPredictor:
    """A caption, and clicks after it, on the image a SamPredictor has embedded, with the
    shipped text weights (the click demo's key `t`). Their encoder is the shipped toy SAM's,
    frozen in training, so a predictor of that model holds the embedding they read."""

    def __init__(self, path: Path = WEIGHTS):
        self.model, self.token, self.clip, _, _ = load(path)

    @torch.no_grad()
    def predict(self, predictor: minisam.SamPredictor, caption: str, point_coords=None,
                point_labels=None, mask_input=None):
        """caption: words of VOCABULARY; the rest as SamPredictor.predict takes them. Returns
        masks (M, H, W) bool, their predicted IoUs (M,) and low-res logits (M, h, w), numpy:
        M = 3 for the caption alone, 1 with clicks."""
        if predictor.model.config != self.model.config:
            raise ValueError("predictor must hold the toy model whose encoder the text weights "
                             "read (lessons/toy_sam.pt)")
        embedding = predictor.get_image_embedding()  # (1, C, g, g); says if no image is set
        coords, labels, _, mask = minisam._checked_prompts(
            point_coords, point_labels, None, mask_input, predictor.original_size,
            self.model.prompt_encoder.mask_input_size)
        if coords is not None:
            coords = predictor.transform.apply_coords(coords, predictor.original_size)
            coords = torch.as_tensor(coords, dtype=torch.float)[None]
            labels = torch.as_tensor(labels, dtype=torch.long)[None]
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.float)[None]
        logits, iou = decode_with_token(self.model, self.token, embedding,
                                        self.clip.embed_texts([caption]), coords, labels, mask)
        masks = self.model.postprocess_masks(logits, predictor.input_size, predictor.original_size)
        return (masks[0] > self.model.mask_threshold).numpy(), iou[0].numpy(), logits[0].numpy()


# -----------------------------------------------------------------------------
# 4. Training: the toy CLIP, then SAM with crop embeddings as prompts


def train_clip(clip: ToyClip, images, masks, index, captions, steps: int, batch: int,
               generator: torch.Generator, lr: float = 2e-3) -> list:
    """Contrastive training on random crops of the masks; returns the loss every 50 steps."""
    optimizer = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.1)
    curve = []
    for step in range(steps):
        rows = torch.randint(len(masks), (batch,), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=50)
        chosen = [captions[r] for r in rows.tolist()]
        loss = info_nce(clip.embed_images(mask_crops(images, masks[rows], index[rows], generator)),
                        clip.embed_texts(chosen), chosen, clip.logit_scale)
        optimisation_step(optimizer, loss, step)
        if step % 50 == 0 or step == steps - 1:
            curve.append((step, loss.item()))
    return curve


def prompted_loss(model, token, clip, embeddings, images, masks, index, generator, clicks: int):
    """D.5's interactive sequence for N masks: the crop's CLIP image embedding as the first
    prompt, then `clicks` corrective clicks, each with the previous logits fed back, as
    train_toy's simulated annotator does. embeddings (B, C, g, g) and images (B, 3, S, S) of
    the images that index (N,) points into; returns the loss averaged over the passes."""
    low = model.prompt_encoder.mask_input_size[0]
    scale = masks.shape[-1] / low
    targets = F.interpolate(masks[:, None].float(), (low, low), mode="area")[:, 0] > 0.5
    with torch.no_grad():
        clip_emb = clip.embed_images(mask_crops(images, masks, index, generator))
    points = labels = mask_prompt = None
    total = 0.0
    for it in range(clicks + 1):
        if it > 0:
            click, label = corrective_click(mask_prompt[:, 0] > 0, targets, generator)
            click = ((click + 0.5) * scale - 0.5)[:, None]  # (N, 1, 2) input pixels
            points = click if points is None else torch.cat([points, click], 1)
            labels = label[:, None] if labels is None else torch.cat([labels, label[:, None]], 1)
        logits, iou = decode_with_token(model, token, embeddings[index], clip_emb, points, labels,
                                        mask_prompt)
        loss, _ = sam_loss(logits, iou, targets)  # the first pass: the best of three learns
        total = total + loss
        mask_prompt = head_choice(logits, iou).detach()
    return total / (clicks + 1)


def train_prompting(model, token, clip, data, steps: int, generator, lr: float = 2e-3,
                    text_rows: int = 128, replay_rows: int = 64, replay_iterations: int = 3) -> list:
    """Train the prompt token and fine-tune the mask decoder on D.5's sequence. The image
    encoder stays frozen (its embeddings, `data["embeddings"]` (M, C, g, g), are computed once)
    and so does the prompt encoder, so points and boxes keep their meaning. Each step also
    replays train_toy's click-and-box training on other masks, so those skills are practised,
    not forgotten. data also holds images (M, 3, S, S), masks (K, S, S), index (K,) and
    promptable (K,) bool: the masks whose caption is unique in their image and not held out.
    Returns (step, prompted loss, replay loss) every 50 steps."""
    model.image_encoder.requires_grad_(False)
    model.prompt_encoder.requires_grad_(False)
    optimizer = make_optimizer(nn.ModuleList([model.mask_decoder, token]), lr)
    replay = InteractiveTraining(model, replay_iterations, no_click_passes=1)
    embeddings, images, masks, index, promptable = (
        data[k] for k in ("embeddings", "images", "masks", "index", "promptable"))
    prompted = promptable.nonzero()[:, 0]
    curve = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=20)
        rows = prompted[torch.randint(len(prompted), (text_rows,), generator=generator)]
        text = prompted_loss(model, token, clip, embeddings, images, masks[rows], index[rows],
                             generator, clicks=1)
        rows = torch.randint(len(masks), (replay_rows,), generator=generator)
        clicks, _ = replay.from_embeddings(embeddings[index[rows]], masks[rows], generator)
        optimisation_step(optimizer, text + clicks, step)
        if step % 50 == 0 or step == steps - 1:
            curve.append((step, text.item(), clicks.item()))
    return curve


# -----------------------------------------------------------------------------
# 5. Evaluation, on held-out images, of the masks whose caption is unique in their image


def upsample(model, logits):
    """Low-res logits (N, 1, 4g, 4g) -> masks (N, S, S) bool at the input size."""
    S = model.config.image_size
    return model.postprocess_masks(logits, (S, S), (S, S))[:, 0] > model.mask_threshold


@torch.no_grad()
def evaluate_text(model, token, clip, seeds, image_mean, text_mean, shipped=None):
    """Every row of the lesson's table on the SHAPES images `seeds`; `shipped` (a Sam), if
    given, is scored on clicks and boxes beside `model` (forgetting). Returns (metrics, what
    the figures draw)."""
    model.eval()
    S = model.config.image_size
    images, masks, index, captions = captioned_images(seeds, S)

    colour, noun = [c.split()[0] for c in captions], [" ".join(c.split()[1:]) for c in captions]
    # the colour word alone, or the nouns alone, would name another mask too
    both = shared_in_image(colour, index) & shared_in_image(noun, index)
    noun_enough = ~shared_in_image(noun, index)  # no other mask of its image has its nouns
    unique = ~shared_in_image(captions, index)
    masks, index = masks[unique], index[unique]
    both, noun_enough = both[unique], noun_enough[unique]
    captions, colour, noun = ([x for x, u in zip(words, unique.tolist()) if u]
                              for words in (captions, colour, noun))
    embeddings = model.image_encoder(model.preprocess(images))[index]  # (N, C, g, g)

    def score(clip_emb):
        """IoUs of the caption alone (the head's choice of three, and the best of them), then
        after one click at the largest error's interior."""
        three, iou = decode_with_token(model, token, embeddings, clip_emb)
        logits = head_choice(three, iou)
        first = upsample(model, logits)
        oracle = torch.stack([mask_iou(upsample(model, three[:, [k]]), masks)
                              for k in range(three.shape[1])], 1).amax(1)
        click, label = largest_error_click(first, masks)
        logits, _ = decode_with_token(model, token, embeddings, clip_emb, click[:, None],
                                      label[:, None], logits)
        after = upsample(model, logits)
        return (mask_iou(first, masks), oracle, mask_iou(after, masks),
                dict(first=first, after_click=after, click=click, click_label=label))

    text_emb = clip.embed_texts(captions)
    image_emb = clip.embed_images(mask_crops(images, masks, index))
    shuffle = torch.randperm(len(captions), generator=torch.Generator().manual_seed(0))
    text_alone, text_oracle, text_click, drawn = score(text_emb)
    centred = F.normalize(text_emb - text_mean + image_mean, dim=-1)
    rows = {"text_alone": text_alone, "text_alone_oracle": text_oracle,
            "text_plus_click": text_click,
            "image_embedding": score(image_emb)[0], "shuffled": score(text_emb[shuffle])[0],
            "colour_alone": score(clip.embed_texts(colour))[0],
            "noun_alone": score(clip.embed_texts(noun))[0],
            "text_centred": score(centred)[0]}

    # one click alone, at the target's interior, the three masks of the fine-tuned decoder
    point = interior_point(masks)[:, None]
    three, iou_pred, _ = decode(model, embeddings, point, torch.ones(len(masks), 1, dtype=torch.long),
                                multimask=True)
    actual = mask_iou(three, masks[:, None])  # (N, 3)
    rows["click_alone_choice"] = actual[torch.arange(len(masks)), iou_pred.argmax(1)]
    rows["click_alone_oracle"] = actual.amax(1)

    held = torch.tensor([c in HELD_OUT_CAPTIONS for c in captions])
    metrics = {k: v.mean().item() for k, v in rows.items()}
    metrics.update({"targets": len(masks), "images": len(seeds),
                    "both_words_needed_targets": int(both.sum()),
                    "noun_enough_targets": int(noun_enough.sum()),
                    "held_out_targets": int(held.sum())})
    for name, subset in (("both_words_needed", both), ("noun_enough", noun_enough),
                         ("held_out", held)):
        if subset.any():
            metrics[f"text_alone_{name}"] = text_alone[subset].mean().item()
            metrics[f"text_plus_click_{name}"] = text_click[subset].mean().item()
    # the modality gap (Liang et al., 2022): the two clouds sit apart on the sphere
    metrics["gap_between_means"] = (image_emb.mean(0) - text_emb.mean(0)).norm().item()
    metrics["matched_cosine"] = (image_emb * text_emb).sum(1).mean().item()
    metrics["unmatched_cosine"] = (image_emb @ text_emb.T).fill_diagonal_(0).sum().item() / (
        len(masks) * (len(masks) - 1))
    # clicks and boxes on every target of the images, before and after (train_toy's scores)
    for name, sam in (("after", model), ("before", shipped)):
        if sam is not None:
            scores = train_toy.evaluate(sam, seeds, max_clicks=1)
            metrics[f"box_{name}"] = scores["box_miou"]
            metrics[f"one_click_choice_{name}"] = scores["one_click_miou"]
            metrics[f"one_click_oracle_{name}"] = scores["one_click_oracle_miou"]
    pictures = dict(images=images, masks=masks, index=index, captions=captions, **drawn,
                    text_alone=text_alone, text_plus_click=text_click, image_emb=image_emb,
                    text_emb=text_emb)
    return metrics, pictures


@torch.no_grad()
def patch_words(model, seeds):
    """Each patch's image-embedding vector (P, C) and, as (P,) indices into VOCABULARY, the
    colour word and the object's noun (P, 2) of the smallest mask covering most of the patch;
    patches covered by no mask are left out."""
    images, masks, index, captions = captioned_images(seeds, model.config.image_size)
    embeddings = model.image_encoder(model.preprocess(images))  # (B, C, g, g)
    g = embeddings.shape[-1]
    covered = F.adaptive_avg_pool2d(masks[:, None].float(), g)[:, 0] > 0.5  # (K, g, g)
    label = torch.full((len(images), g, g, 2), -1)
    for k in masks.flatten(1).sum(1).argsort(descending=True).tolist():  # the smallest last
        label[index[k]][covered[k]] = torch.tensor([VOCABULARY.index(w)
                                                    for w in captions[k].split()[:2]])
    keep = label[..., 0].flatten() >= 0
    return embeddings.permute(0, 2, 3, 1).flatten(0, 2)[keep], label.flatten(0, 2)[keep]


def probed_encoders(shipped: minisam.Sam):
    """The encoders whose embeddings the lesson probes: random weights (the start of training
    from scratch, seed 0), lesson 13's MAE encoder, and the shipped toy SAM's (the one the text
    prompt reads)."""
    torch.manual_seed(0)
    random = minisam.build_sam("toy").eval()
    mae = minisam.build_sam("toy").eval()
    mae.image_encoder.load_state_dict(torch.load(HERE / "mae_encoder.pt", weights_only=True))
    return (("random", random), ("mae", mae), ("shipped", shipped))


def linear_probe(model, train_seeds=TRAIN_SEEDS[:300], test_seeds=EVAL_SEEDS[:32],
                 steps: int = 500) -> dict:
    """What the image embedding says about a patch's colour and its noun: for each, a linear
    classifier fitted on `train_seeds`, its accuracy on `test_seeds` beside always guessing the
    commonest word there. The embeddings are computed once for both."""
    x, words = patch_words(model, train_seeds)
    x_test, words_test = patch_words(model, test_seeds)
    probes = {}
    for name, y, y_test in zip(("colour", "noun"), words.T, words_test.T):
        torch.manual_seed(0)
        probe = nn.Linear(x.shape[1], len(VOCABULARY))
        optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = F.cross_entropy(probe(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = (probe(x_test).argmax(1) == y_test).float().mean().item()
        probes[name] = {"accuracy": accuracy,
                        "commonest": (y_test == y_test.mode().values).float().mean().item()}
    return probes


# -----------------------------------------------------------------------------
# 6. Pictures


def draw_examples(pictures: dict, path: Path) -> None:
    """The paper's figure 12, measured: caption -> mask, with hits, a miss, and misses that one
    click fixes. Drawn by train_toy's rules: under the colour image, the grey one with the
    truth outlined white and the prediction filled blue."""
    plt = train_toy.pyplot()
    iou, fixed = pictures["text_alone"], pictures["text_plus_click"]
    hits = iou.argsort(descending=True)[:3].tolist()
    misses = ((iou < 0.5) & (fixed < 0.5)).nonzero()[:, 0][:1].tolist()
    repaired = ((iou < 0.5) & (fixed >= 0.85)).nonzero()[:, 0][:2].tolist()
    chosen = [(k, "best") for k in hits] + [(k, "miss") for k in misses] + \
             [(k, "miss, then 1 click") for k in repaired]
    fig, axes = plt.subplots(2, len(chosen), figsize=(2.1 * len(chosen), 4.6), squeeze=False)
    for col, (k, kind) in enumerate(chosen):
        image = pictures["images"][pictures["index"][k]].permute(1, 2, 0).numpy().astype(np.uint8)
        train_toy.show(axes[0, col], image, colour=True)
        axes[0, col].set_title(f'"{pictures["captions"][k]}"\n{kind}', fontsize=8)
        train_toy.show(axes[1, col], image)
        clicked = kind.endswith("click")
        shown = pictures["after_click" if clicked else "first"][k]
        train_toy.fill(axes[1, col], shown.numpy())
        train_toy.outline(axes[1, col], pictures["masks"][k].numpy())
        title = f"text: IoU {iou[k]:.2f}"
        if clicked:
            x, y = pictures["click"][k].tolist()
            label = int(pictures["click_label"][k])
            axes[1, col].plot(x, y, markersize=10, **train_toy.CLICKS[label])
            title += f"\n+ click: {fixed[k]:.2f}"
        axes[1, col].set_title(title, fontsize=8)
    fig.suptitle("Caption -> mask: the truth outlined white, the prediction filled blue", fontsize=9)
    train_toy.save_figure(fig, path)


def draw_modality_gap(pictures: dict, path: Path) -> None:
    """Both clouds of embeddings projected on their two principal axes, matched pairs joined."""
    plt = train_toy.pyplot()
    image_emb, text_emb = pictures["image_emb"], pictures["text_emb"]
    both = torch.cat([image_emb, text_emb])
    _, _, v = torch.pca_lowrank(both, q=2, center=True)
    flat = ((both - both.mean(0)) @ v).numpy()  # (2N, 2)
    n = len(image_emb)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for a, b in zip(flat[:n][:60], flat[n:][:60]):
        ax.plot([a[0], b[0]], [a[1], b[1]], color="0.8", lw=0.6, zorder=0)
    ax.scatter(*flat[:n].T, s=8, color="tab:orange", label="mask crops (image tower)")
    ax.scatter(*flat[n:].T, s=8, color="tab:blue", label="captions (text tower)")
    for cloud, colour in ((flat[:n], "tab:orange"), (flat[n:], "tab:blue")):
        ax.scatter(*cloud.mean(0), s=120, marker="X", color=colour, edgecolor="black")
    ax.set_title("The modality gap: two clouds, means marked X", fontsize=10)
    ax.legend(fontsize=8)
    train_toy.save_figure(fig, path)


# -----------------------------------------------------------------------------
# The command


def save(model, token, clip, image_mean, text_mean, path: Path = WEIGHTS) -> None:
    """The text run's mask decoder (the encoders are the shipped model's), the prompt token,
    the toy CLIP and the two clouds' means (for the centring row)."""
    torch.save({"mask_decoder": model.mask_decoder.state_dict(), "token": token.state_dict(),
                "clip": clip.state_dict(), "image_mean": image_mean, "text_mean": text_mean}, path)


def load(path: Path = WEIGHTS):
    """What `save` wrote, on the shipped toy SAM: (model, token, clip, image_mean, text_mean)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = minisam.build_sam("toy", checkpoint=TOY_CHECKPOINT)
    model.mask_decoder.load_state_dict(state["mask_decoder"])
    token, clip = PromptToken(CLIP_DIM, model.config.prompt_embed_dim), ToyClip()
    token.load_state_dict(state["token"])
    clip.load_state_dict(state["clip"])
    return model.eval(), token.eval(), clip.eval(), state["image_mean"], state["text_mean"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-only", action="store_true", help="score the shipped weights")
    p.add_argument("--seeds", type=int, nargs=2, metavar=("A", "B"),
                   default=(EVAL_SEEDS[0], EVAL_SEEDS[-1] + 1), help="evaluate seeds A..B-1")
    p.add_argument("--out", type=Path, default=None,
                   help="--eval-only: write OUT/metrics.json (default: print only); training: "
                        "write the weights, JSON and figures to OUT, not over the shipped ones")
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--clip-steps", type=int, default=600)
    p.add_argument("--sam-steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.seeds[1] <= args.seeds[0]:
        raise SystemExit(f"--seeds A B needs A < B, got {args.seeds}")
    return args


def main(argv=None):
    args = parse_args(argv)
    seeds = range(*args.seeds)
    if args.eval_only:
        model, token, clip, image_mean, text_mean = load()
        shipped = minisam.build_sam("toy", checkpoint=TOY_CHECKPOINT)
        metrics, _ = evaluate_text(model, token, clip, seeds, image_mean, text_mean, shipped)
        print(json.dumps(metrics, indent=1))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        return metrics

    # wall minutes on a shared machine mostly measure the other jobs; the process's CPU time
    # is what this run itself cost
    start, cpu_start = time.time(), time.process_time()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = minisam.build_sam("toy", checkpoint=TOY_CHECKPOINT)
    S = model.config.image_size
    images, masks, index, captions = captioned_images(TRAIN_SEEDS[:args.train_images], S)
    with torch.no_grad():  # the frozen encoder: each training image embedded once
        embeddings = torch.cat([model.image_encoder(model.preprocess(images[i:i + 64]))
                                for i in range(0, len(images), 64)])
    seen = torch.tensor([c not in HELD_OUT_CAPTIONS for c in captions])
    clip = ToyClip()
    clip_curve = train_clip(clip, images, masks[seen], index[seen],
                            [c for c, s in zip(captions, seen.tolist()) if s], args.clip_steps,
                            batch=256, generator=generator)
    clip.eval().requires_grad_(False)
    clip_minutes = (time.time() - start) / 60
    print(f"toy CLIP: {clip_minutes:.1f} min, loss {clip_curve[0][1]:.2f} -> {clip_curve[-1][1]:.2f}")
    with torch.no_grad():  # the two clouds' means on the training masks, for the centring row
        image_mean = clip.embed_images(mask_crops(images, masks[seen], index[seen])).mean(0)
        text_mean = clip.embed_texts([c for c, s in zip(captions, seen.tolist()) if s]).mean(0)

    token = PromptToken(CLIP_DIM, model.config.prompt_embed_dim)
    model.train()
    data = dict(embeddings=embeddings, images=images, masks=masks, index=index,
                promptable=seen & ~shared_in_image(captions, index))
    sam_curve = train_prompting(model, token, clip, data, args.sam_steps, generator)
    train_minutes = (time.time() - start) / 60
    cpu_minutes = (time.process_time() - cpu_start) / 60
    print(f"prompting: {train_minutes:.1f} min in all, {cpu_minutes:.1f} min of CPU")
    weights = WEIGHTS if args.out is None else args.out / WEIGHTS.name
    weights.parent.mkdir(parents=True, exist_ok=True)
    save(model, token, clip, image_mean, text_mean, weights)

    record = {"command": " ".join(["python", "lessons/text_prompts.py", *(argv or sys.argv[1:])]),
              "train_minutes": train_minutes, "clip_minutes": clip_minutes,
              "train_cpu_minutes": cpu_minutes,
              "threads": torch.get_num_threads(), "cores": os.cpu_count(),
              "held_out_captions": list(HELD_OUT_CAPTIONS), "clip_curve": clip_curve,
              "sam_curve": sam_curve}
    return write_results(*load(weights), seeds, record, weights.parent)


def write_results(model, token, clip, image_mean, text_mean, seeds, record: dict, out: Path) -> dict:
    """Evaluate on `seeds` and on the first 4 held-out images (what the test re-scores), draw
    the figures, and write the JSON (`record`, how the weights were trained, with the metrics):
    into lessons/ and lessons/figures/ for the shipped weights, else into `out`."""
    figures, results = (FIGURES, RESULTS) if out == HERE else (out, out / RESULTS.name)
    shipped = minisam.build_sam("toy", checkpoint=TOY_CHECKPOINT)
    metrics, pictures = evaluate_text(model, token, clip, seeds, image_mean, text_mean, shipped)
    first, _ = evaluate_text(model, token, clip, EVAL_SEEDS[:4], image_mean, text_mean, shipped)
    record["linear_probes"] = {name: linear_probe(sam) for name, sam in probed_encoders(shipped)}
    figures.mkdir(exist_ok=True)
    draw_examples(pictures, figures / "text_prompts.png")
    draw_modality_gap(pictures, figures / "modality_gap.png")
    results.write_text(json.dumps({**record, "metrics": metrics, "metrics_first_4_images": first},
                                  indent=1) + "\n")
    print(json.dumps(metrics, indent=1))
    return metrics


if __name__ == "__main__":
    main()
