"""
make_figures.py: draw every figure of the README and the lessons into lessons/figures/.

    python lessons/make_figures.py                             # all figures, about a minute
    python lessons/make_figures.py --only hero                 # one figure (repeat --only)
    python lessons/make_figures.py --checkpoint out/ckpt.pt    # your own run's model instead

(`finetuning` runs lesson 10's fine-tune of the checkpoint first: minutes more, not seconds.)

One function per figure, registered under the name of the PNG it writes; to add a figure,
write a function `def name(path)` that saves one PNG to `path`, decorate it with @figure, and
main() picks it up (a figure of a trained model: `def name(path, checkpoints)`, decorated with
@trained_model_figure). Every figure is deterministic: fixed seeds, and images, clicks and
masks chosen by a rule written beside the code, never by how good the prediction looks.

The figures of a trained model draw the checkpoint main() hands them (`Checkpoints`): unless
--checkpoint says otherwise, the toy checkpoint that ships with minisam, lessons/toy_sam.pt,
on held-out images (train_toy.EVAL_SEEDS): the model that
`minisam.build_sam("toy", checkpoint="lessons/toy_sam.pt")` gives a reader.

How masks are drawn (a blue fill for a model's mask, a white line for the true one, green and
red marks for clicks, a yellow frame for a box, on the image in grey) is train_toy.py's, in
its section "Pictures": train_toy.py draws a run's pictures by the same rules.
"""

import argparse
import dataclasses
import functools
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so `python lessons/make_figures.py` finds minisam
import finetune  # noqa: E402
import minisam  # noqa: E402
import train_toy  # noqa: E402
from train_toy import (AMG_IMAGE, LEVELS, MATCH_IOU, draw_clicks, fill, iou,  # noqa: E402
                       legend, mask_panel, outline, prompt_panels, save_figure, scores, show,
                       three_level_objects)

FIGURES_DIR = Path(__file__).resolve().parent / "figures"
FIGURES = {}  # name -> function(path, checkpoints) drawing lessons/figures/<name>.png


def figure(fn):
    """Register a figure function fn(path), one that draws no trained model; its name is the
    PNG's name. main() hands every figure the checkpoints; this one leaves them."""
    FIGURES[fn.__name__] = lambda path, checkpoints: fn(path)
    return fn


def trained_model_figure(fn):
    """Register a figure function fn(path, checkpoints) that draws the trained model of
    `checkpoints`; its name is the PNG's name."""
    FIGURES[fn.__name__] = fn
    return fn


# -----------------------------------------------------------------------------
# The trained toy model (the shipped one unless --checkpoint), shared by the figures of a
# trained model

SHIPPED = Path(__file__).resolve().parent / "toy_sam.pt"


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """The toy checkpoints the figures of a trained model draw, as main() is given them."""
    trained: Path  # --checkpoint: every figure of a trained model (default: SHIPPED)
    default_run: Path | None  # --default-run: beside it in miou_vs_clicks and learning_curves


@functools.cache
def trained_model(path: Path) -> tuple[minisam.Sam, str]:
    """The toy model of a checkpoint, loaded once per path, and the label titles give it."""
    if not path.exists():
        raise FileNotFoundError(
            f"toy checkpoint {path} not found: the figures of a trained model are drawn from "
            "the checkpoint that ships with minisam, lessons/toy_sam.pt (restore it with "
            "`git checkout -- lessons/toy_sam.pt`), or from a train_toy.py checkpoint given "
            "with --checkpoint")
    model = minisam.build_sam("toy", checkpoint=path)
    step = torch.load(path, map_location="cpu", weights_only=True)["step"]
    print(f"  trained model: {path} ({step} steps)")
    return model, f"{path.name}, {step} training steps"


@trained_model_figure
def hero(path: Path, checkpoints: Checkpoints) -> None:
    """The README's first picture: one click -> three masks; a box; corrective clicks."""
    model, model_label = trained_model(checkpoints.trained)
    predictor = minisam.SamPredictor(model)
    seed, chain = three_level_objects()[0]
    panels = prompt_panels(predictor, seed, chain)
    fig, axes = plt.subplots(2, 4, figsize=(11, 6.6), layout="constrained")
    for ax, panel in zip(axes.flat, panels):
        mask_panel(ax, **panel)
    fig.suptitle(f"minisam's toy model ({model_label}) on a held-out image:\n"
                 "one click gives three masks; a box or more clicks say which one")
    legend(fig, "mask", "truth", "positive", "negative", "box")
    save_figure(fig, path)


@trained_model_figure
def one_click_three_masks(path: Path, checkpoints: Checkpoints) -> None:
    """Lesson 6's gallery: the hero's prompts on the next held-out images."""
    model, model_label = trained_model(checkpoints.trained)
    train_toy.draw_gallery(model, model_label, path)


# -----------------------------------------------------------------------------
# Lesson 00: promptable segmentation


@figure
def promptable_task(path: Path) -> None:
    """One click on a window: the window, the walls and the whole house are all valid."""
    # seed 4 holds a house (house -> walls -> window); drawn at 128 px to read better
    image, masks, parents = train_toy.make_world(4, image_size=128)
    # the deepest mask: one whose parent has a parent
    sub = next(k for k in range(len(masks)) if parents[k] >= 0 and parents[parents[k]] >= 0)
    chain = [parents[parents[sub]], parents[sub], sub]  # whole, part, subpart
    click = train_toy.interior_point(torch.from_numpy(masks[sub])[None]).numpy()
    fig, axes = plt.subplots(1, 4, figsize=(9.5, 2.8))
    mask_panel(axes[0], image, points=click, labels=[1], title="prompt\none click",
               colour=True)
    for ax, k, name in zip(axes[1:], chain, ("whole: the house", "part: the walls",
                                             "subpart: the window")):
        mask_panel(ax, image, truth=masks[k], points=click, labels=[1],
                   title=f"valid mask\n{name}")
        fill(ax, masks[k], colour=(1.0, 0.55, 0.0))  # orange: a true mask, not a prediction
    fig.suptitle("train_toy.make_world(4): one click, three valid answers", y=1.02)
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# Lesson 01: image encoder


def _attended(grid: int, window: int, query) -> np.ndarray:
    """Which cells of the zero-padded token map a query token attends to in a windowed block:
    1 for tokens, 0.5 for padding, 0 elsewhere. Found with the model's own window_partition
    and window_unpartition, run on a map of token ids (padding comes out as id 0)."""
    ids = torch.arange(1, grid * grid + 1, dtype=torch.float32).view(1, grid, grid, 1)
    windows = minisam.window_partition(ids, window)  # (windows, w, w, 1)
    qid = query[0] * grid + query[1] + 1
    mine = (windows == qid).flatten(1).any(1)  # which window holds the query
    seen = torch.where(windows > 0, 1.0, 0.5) * mine[:, None, None, None]
    padded = -(-grid // window) * window  # unpartition to the padded size keeps the padding
    return minisam.window_unpartition(seen, window, (padded, padded))[0, ..., 0].numpy()


def _draw_grid(ax, seen, grid, window, query, title):
    Hp = seen.shape[0]
    cmap = matplotlib.colors.ListedColormap(["#f2f2f2", "#bbbbbb", "#3b7dd8"])
    shown = np.where(seen == 1, 2, np.where(seen == 0.5, 1, 0))
    padding = np.zeros((Hp, Hp), bool)
    padding[grid:, :] = padding[:, grid:] = True
    shown = np.where(padding & (seen == 0), 1, shown)
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
    if window:
        for t in range(0, Hp + 1, window):  # window borders
            ax.axhline(t - 0.5, color="k", lw=0.8)
            ax.axvline(t - 0.5, color="k", lw=0.8)
    if Hp > grid:
        ax.axhline(grid - 0.5, color="crimson", lw=1.2, ls="--")
        ax.axvline(grid - 0.5, color="crimson", lw=1.2, ls="--")
    ax.plot(query[1], query[0], "s", color="orange", markersize=max(3, 90 / Hp),
            markeredgecolor="k")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


@figure
def window_attention(path: Path) -> None:
    """Which keys one query token sees: windowed vs global blocks, toy and full size; and the
    decomposed relative-position bias of one query."""
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.7))
    toy = minisam.CONFIGS["toy"]
    g, w = toy.image_embedding_size, toy.window_size  # 16, 8
    q = (5, 10)
    _draw_grid(axes[0], _attended(g, w, q), g, w, q,
               f"toy, windowed block\n{g}x{g} tokens, window {w}: sees {w * w}")
    everything = np.ones((g, g))
    _draw_grid(axes[1], everything, g, 0, q, f"toy, global block\nsees all {g * g}")
    big = minisam.CONFIGS["vit_b"]
    G, W = big.image_embedding_size, big.window_size  # 64, 14
    Q = (61, 33)
    _draw_grid(axes[2], _attended(G, W, Q), G, W, Q,
               f"1024 px: {G}x{G} tokens, window {W}\npadded to {-(-G // W) * W} (grey)")
    # relative position bias of one query: a function of the row offset plus one of the column
    # offset, each read from a 1-D table. Here the tables are made so that q . R[offset] is a
    # bump around offset 0 (as if learned to favour near tokens): the sum is a cross.
    torch.manual_seed(0)
    d = 8
    query = torch.randn(1, g * g, d)
    qi = q[0] * g + q[1]
    unit = query[0, qi] / query[0, qi].square().sum()  # q . unit = 1
    offsets = torch.arange(2 * g - 1) - (g - 1)  # table row i holds offset i - (g - 1)
    rel_h = torch.exp(-offsets.float() ** 2 / 8)[:, None] * unit  # narrow along rows
    rel_w = 0.6 * torch.exp(-offsets.float() ** 2 / 32)[:, None] * unit  # wider along columns
    bias = minisam.relative_position_bias(query, rel_h, rel_w, (g, g))  # (1, g*g, g*g)
    one = bias[0, q[0] * g + q[1]].view(g, g).numpy()
    im = axes[3].imshow(one, cmap="RdBu_r")
    axes[3].plot(q[1], q[0], "s", color="orange", markeredgecolor="k")
    axes[3].set_title("relative_position_bias of one query\n"
                      "(row term + column term)", fontsize=10)
    axes[3].set_xticks([])
    axes[3].set_yticks([])
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    handles = [matplotlib.patches.Patch(color="#3b7dd8", label="attended token"),
               matplotlib.patches.Patch(color="#bbbbbb", label="zero padding"),
               matplotlib.lines.Line2D([], [], marker="s", color="orange", ls="",
                                       markeredgecolor="k", label="query token")]
    fig.legend(handles=handles, loc="lower center", ncol=3, bbox_to_anchor=(0.4, -0.04))
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# Lesson 02: prompt encoder


@figure
def fourier_features(path: Path) -> None:
    """How alike the encodings of two positions are: raw coordinates vs random Fourier
    features of three frequency scales (SAM uses std 1)."""
    torch.manual_seed(0)
    pe = minisam.FourierPositionalEncoding(128)
    base = pe.positional_encoding_gaussian_matrix.clone()
    n = 64
    point = torch.tensor([0.3, 0.65])  # (x, y) in [0, 1]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
    # raw coordinates, centred to [-1, 1] as SAM centres them: the dot product with the
    # point is a plane, largest at a corner, not at the point
    ys, xs = torch.meshgrid((torch.arange(n) + 0.5) / n, (torch.arange(n) + 0.5) / n,
                            indexing="ij")
    raw = (2 * xs - 1) * (2 * point[0] - 1) + (2 * ys - 1) * (2 * point[1] - 1)
    panels = [("raw (x, y): dot product", raw)]
    for scale in (0.25, 1.0, 4.0):
        pe.positional_encoding_gaussian_matrix.copy_(base * scale)
        dense = pe.dense((n, n))  # (256, n, n)
        sim = torch.einsum("chw,c->hw", dense, pe.encode(point)) / 128  # cosine similarity
        label = "SAM: " if scale == 1 else ""
        panels.append((f"{label}Fourier features, std {scale:g}\ncosine similarity", sim))
    for ax, (title, values) in zip(axes, panels):
        im = ax.imshow(values.numpy(), cmap="magma", extent=(0, 1, 1, 0))
        ax.plot(*point, "x", color="cyan", markersize=10, mew=2)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([0, 1])
        ax.set_yticks([0, 1])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("similarity of every position's encoding to the point x", y=1.02)
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# Lesson 03: two-way decoder


def attention_probabilities(module: minisam.Attention, q, k) -> torch.Tensor:
    """Recompute the softmax weights of an Attention module from its own projections:
    (N, Tq, C), (N, Tk, C) -> (N, heads, Tq, Tk)."""
    def heads(x):
        return x.unflatten(-1, (module.num_heads, -1)).transpose(1, 2)

    q, k = heads(module.q_proj(q)), heads(module.k_proj(k))
    return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)


@trained_model_figure
def decoder_attention(path: Path, checkpoints: Checkpoints) -> None:
    """Where the decoder's two kinds of cross-attention look after one click in the window of
    the README's figure: each pixel's weight on the click's token (image-to-token), and each
    multimask token's weights on the pixels (token-to-image), layer by layer; then the masks
    the tokens become."""
    model, model_label = trained_model(checkpoints.trained)
    seed, chain = three_level_objects()[0]
    image, masks, _ = train_toy.make_world(seed)
    levels = masks[list(chain)]
    click = train_toy.interior_point(torch.from_numpy(levels[2])[None]).numpy()  # (1, 2)

    transformer = model.mask_decoder.transformer
    modules = {f"layer {i} image-to-token": layer.cross_attn_image_to_token
               for i, layer in enumerate(transformer.layers)}
    modules.update({f"layer {i} token-to-image": layer.cross_attn_token_to_image
                    for i, layer in enumerate(transformer.layers)})
    modules["final token-to-image"] = transformer.final_attn_token_to_image
    weights = {}  # name -> (Tq, Tk), the mean over heads
    hooks = [module.register_forward_hook(
        lambda module, inputs, output, name=name: weights.__setitem__(
            name, attention_probabilities(module, inputs[0], inputs[1]).mean(1)[0]))
        for name, module in modules.items()]
    predictor = minisam.SamPredictor(model)
    predictor.set_image(image)
    out, predicted, _ = predictor.predict(click, np.array([1]))
    for hook in hooks:
        hook.remove()

    g = model.config.image_embedding_size
    # tokens: [IoU, mask 0, mask 1, mask 2, mask 3, the click, padding]; the pixels in raster
    # order. Multimask token m (1..3) is token 1 + m; the click is token 5.
    click_token = 1 + model.mask_decoder.num_mask_tokens
    # how far each cell of the g x g map is from the click, in cells
    centres = (torch.arange(g) + 0.5) * image.shape[0] / g
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    cells = torch.stack([xx.flatten(), yy.flatten()], dim=1)  # (g*g, 2) as (x, y)
    distance = torch.cdist(torch.from_numpy(click).float(), cells)[0] * g / image.shape[0]
    near, far = distance < 1.5, distance > 5  # the 3x3 pixels around the click; the rest
    extent = (-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5)  # the g x g map on the image
    layers = len(transformer.layers)
    fig, axes = plt.subplots(layers + 3, 3, figsize=(8.6, 2.8 * (layers + 3)),
                             layout="constrained")

    def heat(ax, values, vmax, title):
        show(ax, image)
        shown = ax.imshow(values.view(g, g).numpy(), cmap="inferno", vmin=0, vmax=vmax,
                          alpha=0.8, extent=extent, interpolation="nearest")
        draw_clicks(ax, click, [1], size=8)
        ax.set_title(title, fontsize=9)
        return shown

    mask_panel(axes[0, 0], image, points=click, labels=[1], colour=True,
               title=f"held-out image {seed}: one click")
    for ax, i in zip(axes[0, 1:], range(layers)):
        on_click = weights[f"layer {i} image-to-token"][:, click_token]  # (g*g,)
        shown = heat(ax, on_click, 1.0, f"layer {i} image-to-token\npixels on the click: "
                                        f"{on_click[near].mean():.2f} near, "
                                        f"{on_click[far].mean():.2f} far")
    fig.colorbar(shown, ax=axes[0], fraction=0.05, label="attention weight")
    names = [f"layer {i} token-to-image" for i in range(layers)] + ["final token-to-image"]
    for row, name in zip(axes[1:], names):
        # a token's weights over the g*g pixels sum to 1; shown relative to spreading evenly
        maps = [weights[name][1 + m] * g * g for m in (1, 2, 3)]
        vmax = max(m.max().item() for m in maps)
        for m, (ax, values) in enumerate(zip(row, maps)):
            share = values[near].sum() / (g * g)  # of the token's attention, near the click
            shown = heat(ax, values, vmax, f"{name}\nmask token {m + 1}: {share:.0%} near "
                                           "the click")
        fig.colorbar(shown, ax=row, fraction=0.05, label="weight x pixels (1: even)")
    for m, ax in enumerate(axes[-1]):
        match = max(range(3), key=lambda j: iou(out[m], levels[j]))
        mask_panel(ax, image, out[m], levels[match], click, [1],
                   title=f"mask {m + 1}, nearest the {LEVELS[match]}\n"
                         f"{scores(predicted[m], out[m], levels[match])}")
    fig.suptitle(f"the decoder's cross-attention after one click ({model_label}, mean "
                 f"over heads)\nnear: the {int(near.sum())} cells of the {g}x{g} map within "
                 f"1.5 cells of the click ({near.float().mean():.0%} of them); far: over 5 away")
    legend(fig, "mask", "truth", "positive")
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# Lesson 04: losses


@figure
def losses(path: Path) -> None:
    """Left: per-pixel loss against the probability given to the right answer. Middle: the
    loss of missing an object entirely, against its size. Right: why the minimum over three
    outputs lets them specialise."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    # (a) one pixel, as a function of its logit: the model's own focal_loss on a 1x1 "mask"
    logits = torch.linspace(-7, 7, 281)[:, None, None]
    ax = axes[0]
    for target, style in ((1.0, "-"), (0.0, "--")):
        t = torch.full_like(logits, target)
        p_true = (torch.sigmoid(logits) if target else 1 - torch.sigmoid(logits)).flatten()
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").flatten()
        name = "foreground" if target else "background"
        if target:  # BCE is the same curve for both kinds of pixel
            ax.plot(p_true, bce, color="tab:blue", label="BCE (either pixel)")
        ax.plot(p_true, minisam.focal_loss(logits, t), style, color="tab:red",
                label=f"focal, {name} pixel")
    ax.set(xlabel="probability given to the right answer", ylabel="per-pixel loss (log)",
           yscale="log", ylim=(1e-6, 10), title="(a) focal loss mutes pixels already right")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    # (b) predict "nothing" (logit -4 everywhere) for a square object of growing size in a
    # 64x64 image. Per-pixel means shrink with the object; dice does not.
    ax = axes[1]
    sides = torch.arange(1, 49)
    empty = torch.full((len(sides), 64, 64), -4.0)
    target = torch.zeros(len(sides), 64, 64)
    for i, s in enumerate(sides.tolist()):
        target[i, :s, :s] = 1
    area = sides.float() ** 2 / 64**2
    ax.plot(area, 20 * minisam.focal_loss(empty, target), color="tab:red", label="20 x focal")
    ax.plot(area, F.binary_cross_entropy_with_logits(empty, target, reduction="none")
            .mean((-2, -1)), color="tab:blue", label="BCE")
    ax.plot(area, minisam.dice_loss(empty, target), color="tab:green", label="dice")
    ax.set(xscale="log", yscale="log", xlabel="object area / image area",
           ylabel="loss of an empty prediction (log)",
           title="(b) missing a small object: only dice objects")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    # (b) three nested 1-D targets for the same click; each output is a soft interval around
    # the click with a learnable half-width. Trained with sam_loss on random targets, three
    # outputs (min over outputs) settle on the three answers; one output hedges between them.
    width, centre, halfs = 64, 32.0, (26.0, 14.0, 4.0)
    x = torch.arange(width) + 0.5
    targets = torch.stack([(x - centre).abs() < h for h in halfs])[:, None]  # (3, 1, W)
    ax = axes[2]
    for init, colour, label in (([14.0, 15.0, 16.0], None, "3 outputs, min over outputs"),
                                ([15.0], "k", "1 output")):
        torch.manual_seed(0)
        r = torch.tensor(init, requires_grad=True)
        optimiser = torch.optim.Adam([r], lr=0.3)
        history = []
        for _ in range(200):
            pick = torch.randint(3, (16,))
            mask_logits = (1.5 * (r[:, None] - (x - centre).abs()))[None, :, None, :]
            loss, _ = minisam.sam_loss(mask_logits.expand(16, -1, -1, -1),
                                       torch.zeros(16, len(init)), targets[pick])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            history.append(r.detach().clone())
        history = torch.stack(history)
        for j in range(len(init)):
            ax.plot(history[:, j], color=colour or f"C{j}", lw=2,
                    label=label if j == 0 else None, ls="-" if colour is None else ":")
    for h, name in zip(halfs, ("whole", "part", "subpart")):
        ax.axhline(h, color="grey", lw=0.8, ls="--")
        ax.text(201, h, name, va="center", fontsize=8)
    ax.set(xlabel="training step", ylabel="half-width of the output mask",
           title="(c) min over outputs: each output takes one mask")
    ax.legend(fontsize=8, loc=(0.45, 0.6))
    fig.tight_layout()
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# Lesson 05: training as simulated annotation


@trained_model_figure
def simulated_annotation(path: Path, checkpoints: Checkpoints) -> None:
    """A held-out target through five passes of the training loop's simulated annotator:
    a first click, two corrective clicks, then the two passes with no new click that
    `--no-click-passes 2` adds (both at the end here), each pass fed the previous logits."""
    model, model_label = trained_model(checkpoints.trained)
    seed, (_, part, _) = three_level_objects()[0]  # the part of the README's figure
    image, masks, _ = train_toy.make_world(seed)
    part = masks[part]
    target = torch.from_numpy(part)[None]
    generator = torch.Generator().manual_seed(0)
    predictor = minisam.SamPredictor(model)
    predictor.set_image(image)
    points, labels = train_toy.sample_in(target, generator), torch.ones(1, dtype=torch.long)
    low_res = None
    fig, axes = plt.subplots(1, 5, figsize=(12.5, 3.4), layout="constrained")
    for it, ax in enumerate(axes):
        if it in (1, 2):
            click, label = train_toy.corrective_click(prediction, target, generator)
            points, labels = torch.cat([points, click]), torch.cat([labels, label])
        out, predicted, logits = predictor.predict(
            points.numpy(), labels.numpy(), multimask_output=it == 0,
            mask_input=None if low_res is None else low_res[None])
        best = predicted.argmax()  # carried forward, as in training
        low_res, prediction = logits[best], torch.from_numpy(out[best])[None]
        kind = "first click" if it == 0 else "corrective click" if it in (1, 2) else "no new click"
        mask_panel(ax, image, out[best], part, points, labels,
                   title=f"pass {it + 1}: {kind}\n{scores(predicted[best], out[best], part)}")
    fig.suptitle(f"one held-out target through the training loop's passes ({model_label})")
    legend(fig, "mask", "truth", "positive", "negative")
    save_figure(fig, path)


@trained_model_figure
def miou_vs_clicks(path: Path, checkpoints: Checkpoints) -> None:
    """Held-out mIoU against the number of clicks (`evaluate`'s protocol), with the box
    prompt's mIoU for comparison: the shipped model, and a default run's if given."""
    model, label = trained_model(checkpoints.trained)
    runs = [(model, f"shipped: {label}")]
    if checkpoints.default_run is not None:
        model, label = trained_model(checkpoints.default_run)
        runs.append((model, f"default `python train_toy.py`: {label}"))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for (model, label), colour in zip(runs, ("C0", "C1")):
        metrics = train_toy.evaluate(model)
        clicks = range(1, len(metrics["miou_by_clicks"]) + 1)
        ax.plot(clicks, metrics["miou_by_clicks"], marker="o", color=colour, label=label)
        ax.axhline(metrics["box_miou"], color=colour, ls="--", lw=1,
                   label=f"one box: {metrics['box_miou']:.3f}")
    ax.set(xlabel="clicks (the first one's mask chosen by the IoU head)",
           ylabel=f"mIoU, {metrics['targets']} held-out masks", ylim=(0, 1),
           title="held-out mIoU against the number of clicks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


@trained_model_figure
def learning_curves(path: Path, checkpoints: Checkpoints) -> None:
    """Held-out box and 1-click oracle mIoU against training minutes, as `train_toy.py` records
    them in its checkpoint's history (CURVE_IMAGES held-out images at 64 px): the shipped model,
    and a default run's if given. The jump is the switch from 32 px to 64 px."""
    runs = [(checkpoints.trained, "shipped", "C0")]
    if checkpoints.default_run is not None:
        runs.append((checkpoints.default_run, "default `python train_toy.py`", "C1"))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for checkpoint, label, colour in runs:
        history = train_toy.curve_points(torch.load(checkpoint, map_location="cpu",
                                                    weights_only=True)["history"])
        minutes = [h["minutes"] for h in history]
        ax.plot(minutes, [h["box_miou"] for h in history], color=colour, marker=".",
                label=f"{label}: box")
        ax.plot(minutes, [h["one_click_oracle_miou"] for h in history], color=colour, ls="--",
                label=f"{label}: 1 click, best of 3")
    ax.set(xscale="log", xlabel="training minutes (log scale)", ylim=(0, 1),
           ylabel=f"held-out mIoU ({train_toy.CURVE_IMAGES} images)", title="learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# Lesson 07: automatic masks. The generator's settings are train_toy.TOY_AMG_SETTINGS, read
# when a figure is drawn (they are chosen for the shipped checkpoint); the rest, like the
# stability offset, are the generator's defaults.

def toy_generator(model: minisam.Sam) -> minisam.SamAutomaticMaskGenerator:
    return minisam.SamAutomaticMaskGenerator(model, **train_toy.TOY_AMG_SETTINGS)


@trained_model_figure
def stability_score(path: Path, checkpoints: Checkpoints) -> None:
    """A stable and an unstable mask of the automatic generator's grid, side by side: their
    logits with the two thresholds of the stability score, and the masks at those two
    thresholds with the true mask."""
    model, model_label = trained_model(checkpoints.trained)
    generator = toy_generator(model)
    threshold = generator.predictor.model.mask_threshold
    offset = generator.stability_score_offset
    image, truths = train_toy.make_sample(train_toy.EVAL_SEEDS[AMG_IMAGE])
    predictor = generator.predictor
    predictor.set_image(image)
    # every candidate of the grid, as the generator makes them: one foreground click per
    # grid point, three masks per click
    points = generator.point_grids[0] * np.array(image.shape[1::-1])  # (P, 2) x, y in pixels
    coords = torch.from_numpy(predictor.transform.apply_coords(points, image.shape[:2]))
    logits, predicted, _ = predictor.predict_torch(
        coords.float()[:, None], torch.ones(len(points), 1, dtype=torch.int), return_logits=True)
    points = np.repeat(points, logits.shape[1], axis=0)
    logits, predicted = logits.flatten(0, 1), predicted.flatten()  # (3P, H, W), (3P,)
    stability = minisam.calculate_stability_score(logits, threshold, offset)
    # the two shown: among the masks of a real object (IoU >= MATCH_IOU with a true mask;
    # if there is none, among all) at least as large as the toy world's smallest target
    # (1/128 of the image), the most stable and the least stable
    masks = logits > threshold
    large = masks.flatten(1).sum(1) >= image.shape[0] * image.shape[1] // 128
    right = minisam.mask_iou(masks[:, None], torch.from_numpy(truths)[None]).amax(1) >= MATCH_IOU
    candidate = large & right if (large & right).any() else large
    chosen = [torch.where(candidate, stability, -math.inf).argmax(),
              torch.where(candidate, stability, math.inf).argmin()]

    limit = 8.0  # logits beyond +-8 are saturated in the colour scale
    fig, axes = plt.subplots(2, 2, figsize=(8.5, 9), layout="constrained")
    for column, k in zip(axes.T, chosen):
        kept = stability[k] >= generator.stability_score_thresh
        values = logits[k].numpy()
        heat = column[0].imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit,
                                interpolation="nearest")
        for level, style in ((threshold - offset, "--"), (threshold + offset, "-")):
            if values.min() < level < values.max():
                column[0].contour(values, levels=[level], colors="black", linewidths=1.3,
                                  linestyles=style)
        draw_clicks(column[0], points[k][None], [1])
        column[0].set_title(f"{'kept' if kept else 'removed'}: stability "
                            f"{stability[k]:.2f} {'>=' if kept else '<'} "
                            f"{generator.stability_score_thresh:g}\nlogits, lines at "
                            f"{threshold - offset:+g} (dashed) and {threshold + offset:+g}",
                            fontsize=9)
        column[0].axis("off")
        outer, inner = values > threshold - offset, values > threshold + offset
        mask = values > threshold
        truth = truths[max(range(len(truths)), key=lambda j: iou(mask, truths[j]))]
        show(column[1], image)
        fill(column[1], outer & ~inner, alpha=0.3)
        fill(column[1], inner, alpha=0.75)
        outline(column[1], truth)
        draw_clicks(column[1], points[k][None], [1])
        column[1].set_title(f"inside {threshold + offset:+g}: {inner.sum()} px (dark), "
                            f"inside {threshold - offset:+g}: {outer.sum()} px\n"
                            f"mask at {threshold:g}: {scores(predicted[k], mask, truth)}",
                            fontsize=9)
    bar = fig.colorbar(heat, ax=axes[0].tolist(), fraction=0.04, extend="both",
                       label="mask logit")
    for level, style in ((threshold - offset, "--"), (threshold + offset, "-")):
        bar.ax.axhline(level, color="black", lw=1.5, ls=style)
    fig.suptitle(f"the stability score: IoU of the masks at logit > {threshold + offset:+g} "
                 f"and > {threshold - offset:+g}\n({model_label}, held-out image "
                 f"{train_toy.EVAL_SEEDS[AMG_IMAGE]}, two candidates of the generator's grid)")
    legend(fig, "mask", "truth", "positive")
    save_figure(fig, path)


@trained_model_figure
def automatic_masks(path: Path, checkpoints: Checkpoints) -> None:
    """The automatic masks of one held-out image beside its true masks, and the precision
    and recall at IoU >= MATCH_IOU on train_toy.AMG_EVAL_IMAGES held-out images."""
    model, model_label = trained_model(checkpoints.trained)
    train_toy.draw_automatic_masks(model, model_label, path)


# -----------------------------------------------------------------------------
# Lesson 09: scaling up


def parameter_counts() -> dict:
    """{preset: (image encoder, prompt encoder, mask decoder)}, counted on the meta device:
    shapes only, no memory, so even vit_h costs nothing to 'build'."""
    counts = {}
    for name, config in minisam.CONFIGS.items():
        with torch.device("meta"):
            model = minisam.Sam(config)
        counts[name] = tuple(sum(p.numel() for p in part.parameters()) for part in
                             (model.image_encoder, model.prompt_encoder, model.mask_decoder))
    return counts


@figure
def parameter_counts_by_preset(path: Path) -> None:
    counts = parameter_counts()
    names = list(counts)
    parts = ("image encoder", "prompt encoder", "mask decoder")
    fig, ax = plt.subplots(figsize=(9, 4.2))
    x = np.arange(len(names))
    for j, part in enumerate(parts):
        values = [counts[n][j] for n in names]
        bars = ax.bar(x + (j - 1) * 0.27, values, 0.27, label=part, color=f"C{j}")
        for bar, v in zip(bars, values):
            text = f"{v / 1e6:.1f}M" if v >= 1e6 else f"{v / 1e3:.1f}k"
            ax.text(bar.get_x() + bar.get_width() / 2, v * 1.15, text, ha="center", fontsize=8)
    ax.set_xticks(x, [f"{n}\n{sum(counts[n]):,} total" for n in names])
    ax.set_yscale("log")
    ax.set_ylim(1e3, 3e9)
    ax.set_ylabel("parameters (log scale)")
    ax.set_title("Parameters per preset: the image encoder is nearly all of SAM")
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# Lesson 10: fine-tuning on your own masks

FINETUNE_IMAGES = 200  # the shifted toy images lesson 10 exports and fine-tunes on


@trained_model_figure
def finetuning(path: Path, checkpoints: Checkpoints) -> None:
    """Lesson 10's run, redone: FINETUNE_IMAGES toy worlds exported in the shifted style,
    the checkpoint fine-tuned on them with finetune.py's defaults (decoder only), and the
    picture that run draws (OUT/examples.png): the first three held-out images in the
    split's order, on the mask finetune.py's examples take (the middle one), the truth and
    a box and a click before and after."""
    with tempfile.TemporaryDirectory() as scratch:
        data, out = Path(scratch) / "shifted", Path(scratch) / "out"
        train_toy.export_toy(data, FINETUNE_IMAGES, shifted=True)
        trained_model(checkpoints.trained)  # loads it, printing which one is fine-tuned
        finetune.main(["--data", str(data), "--config", "toy",
                       "--checkpoint", str(checkpoints.trained), "--out", str(out)])
        shutil.copyfile(out / "examples.png", path)


# -----------------------------------------------------------------------------
# Lesson 14: SAM in a web page


@trained_model_figure
def exported_decoder(path: Path, checkpoints: Checkpoints) -> None:
    """Lesson 14: the answers of the decoder exported for the page (web_demo.export_decoder,
    run by ONNX Runtime as the page runs it) to a click, a second click and a box, on the
    page's default image, each outlined with SamPredictor's mask for the same prompts."""
    import onnxruntime
    import web_demo

    model, model_label = trained_model(checkpoints.trained)
    image = train_toy.make_sample(train_toy.EVAL_SEEDS[3])[0]  # the page's default image
    predictor = minisam.SamPredictor(model)
    predictor.set_image(image)
    with tempfile.TemporaryDirectory() as scratch:
        session = onnxruntime.InferenceSession(
            str(web_demo.export_decoder(model, Path(scratch) / "decoder.onnx")))
    first, second, box = [30, 20], [12, 50], np.array([8, 10, 56, 44])
    previous = None
    prompts = [([first], [1], None, "one click: the best of 3 masks"),
               ([first, second], [1, 0], None, "a background click: the single mask"),
               ([], [], box, "a box alone: the best of 3 masks")]
    fig, axes = plt.subplots(1, 3, figsize=(10, 4), layout="constrained")
    for ax, (points, labels, box_prompt, title) in zip(axes, prompts):
        masks, ious, low_res = session.run(None, web_demo.onnx_inputs(
            predictor, points, labels, box_prompt, previous if points[1:] else None))
        rows = len(points) + (2 if box_prompt is not None else 1)  # the official rule's count
        reference, reference_ious, _ = predictor.predict(
            np.array(points) if points else None, np.array(labels) if points else None,
            box_prompt, previous if points[1:] else None, multimask_output=rows <= 2)
        k = int(reference_ious.argmax()) if rows <= 2 else 0
        mask_panel(ax, image, masks[0, 0] > 0, reference[k], points, labels, box_prompt,
                   f"{title}\npredicted IoU {ious[0, 0]:.3f} (torch {reference_ious[k]:.3f})",
                   colour=True)
        previous = low_res[0]  # the page's mask prompt for its next click
    fig.suptitle(f"the exported decoder in ONNX Runtime, toy model ({model_label}); the "
                 "white line is SamPredictor's mask for the same prompts")
    legend(fig, "mask", "positive", "negative", "box")
    save_figure(fig, path)


# -----------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(FIGURES), metavar="NAME",
                        help=f"draw only this figure (repeatable); one of {sorted(FIGURES)}")
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED,
                        help="toy checkpoint for the figures of a trained model (default: "
                             f"the shipped {SHIPPED.relative_to(ROOT)})")
    parser.add_argument("--default-run", type=Path, default=None, metavar="CKPT",
                        help="a checkpoint of the default `python train_toy.py` run, drawn "
                             "beside the shipped model in miou_vs_clicks and learning_curves")
    args = parser.parse_args(argv)
    checkpoints = Checkpoints(args.checkpoint, args.default_run)
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for name in args.only or FIGURES:
        t = time.time()
        try:
            FIGURES[name](FIGURES_DIR / f"{name}.png", checkpoints)
        except FileNotFoundError as e:  # the checkpoint: say so, without a traceback
            raise SystemExit(f"make_figures.py: {e}")
        print(f"{name}.png  {time.time() - t:.1f} s")
    print(f"all done in {time.time() - start:.1f} s -> {FIGURES_DIR}")


if __name__ == "__main__":
    main()
