"""
make_figures.py: draw every figure of the lessons into lessons/figures/.

    python lessons/make_figures.py                      # all figures
    python lessons/make_figures.py --only losses        # one figure (repeat --only for more)
    python lessons/make_figures.py --checkpoint my.pt   # another toy checkpoint

One function per figure, registered with @figure under the name of the PNG it writes; to add
a figure, write a function `def name(path)` that saves one PNG to `path`, decorate it, and
main() picks it up. Every figure is deterministic (fixed seeds). Only the figures of a
*trained* model call trained_model(): it loads out/ckpt.pt (what `python train_toy.py`
writes), and makes it with the default training run first if it is missing.
"""

import argparse
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
import minisam  # noqa: E402
import train_toy  # noqa: E402

FIGURES_DIR = Path(__file__).resolve().parent / "figures"
DPI = 100
FIGURES = {}  # name -> function(path) drawing lessons/figures/<name>.png


def figure(fn):
    """Register a figure function; its name is the PNG's name."""
    FIGURES[fn.__name__] = fn
    return fn


def save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def overlay(ax, image, mask, colour=(1.0, 0.2, 0.2), alpha=0.6):
    """Show the image with `mask` tinted."""
    ax.imshow(image, interpolation="nearest")
    rgba = np.zeros((*mask.shape, 4))
    rgba[mask] = (*colour, alpha)
    ax.imshow(rgba, interpolation="nearest")


# -----------------------------------------------------------------------------
# A trained toy model, shared by every figure that needs one.

_MODEL = None
_MODEL_SOURCE = ""
CHECKPOINT = ROOT / "out" / "ckpt.pt"  # what `python train_toy.py` writes; --checkpoint overrides


def trained_model() -> minisam.Sam:
    """The toy model from CHECKPOINT; if there is none, `python train_toy.py`'s default run is
    made first (about 10 minutes on a 2-core CPU), so the figures show what readers get."""
    global _MODEL, _MODEL_SOURCE
    if _MODEL is None:
        if not CHECKPOINT.exists():
            print(f"  no {CHECKPOINT}: running train_toy.py's default training first")
            train_toy.main(["--out", str(CHECKPOINT.parent)])
        _MODEL = minisam.build_sam("toy", checkpoint=CHECKPOINT).eval()
        step = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["step"]
        _MODEL_SOURCE = f"{CHECKPOINT.name}, {step} training steps"
        print(f"  using {CHECKPOINT} ({step} steps)")
    return _MODEL


_TRAINING_FIGURES = None


def training_figures() -> Path:
    """The pictures train_toy.py draws at the end of a run (loss, gallery, mIoU against
    clicks, automatic masks), redrawn from CHECKPOINT into a temporary folder, once."""
    global _TRAINING_FIGURES
    if _TRAINING_FIGURES is None:
        model = trained_model()
        history = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["history"]
        _TRAINING_FIGURES = Path(tempfile.mkdtemp(prefix="minisam_figures_"))
        train_toy.make_figures(model, train_toy.evaluate(model), history, _TRAINING_FIGURES)
    return _TRAINING_FIGURES


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
    ys, xs = np.nonzero(masks[sub])
    click = (xs.mean(), ys.mean())  # the window's centre: inside all three masks
    fig, axes = plt.subplots(1, 4, figsize=(9.5, 2.8))
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("prompt\none click")
    colours = [(0.95, 0.3, 0.2), (0.2, 0.55, 1.0), (1.0, 0.85, 0.1)]
    for ax, k, name, colour in zip(axes[1:], chain, ("whole: the house", "part: the walls",
                                                    "subpart: the window"), colours):
        overlay(ax, image, masks[k], colour)
        ax.set_title(f"valid mask\n{name}")
    for ax in axes:
        ax.plot(*click, marker="*", markersize=15, color="lime", markeredgecolor="black")
        ax.axis("off")
    fig.suptitle("train_toy.make_world(4): one click, three valid answers", y=1.02)
    save(fig, path)


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
    one = bias[0, q[0] * g + q[1]].view(g, g)
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
    save(fig, path)


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
        im = ax.imshow(values, cmap="magma", extent=(0, 1, 1, 0))
        ax.plot(*point, "x", color="cyan", markersize=10, mew=2)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([0, 1])
        ax.set_yticks([0, 1])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("similarity of every position's encoding to the point x", y=1.02)
    save(fig, path)


# -----------------------------------------------------------------------------
# Lesson 03: two-way decoder


def attention_probabilities(module: minisam.Attention, q, k) -> torch.Tensor:
    """Recompute the softmax weights of an Attention module from its own projections:
    (N, Tq, C), (N, Tk, C) -> (N, heads, Tq, Tk)."""
    def heads(x):
        return x.unflatten(-1, (module.num_heads, -1)).transpose(1, 2)

    q, k = heads(module.q_proj(q)), heads(module.k_proj(k))
    return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)


@figure
def decoder_attention(path: Path) -> None:
    """Where the three multimask tokens look in every token-to-image attention of a trained
    toy model, after one click on a window; and the masks they become."""
    model = trained_model()
    image, masks, parents = train_toy.make_world(4)  # the house of lesson 00, at 64 px
    sub = next(k for k in range(len(masks)) if parents[k] >= 0 and parents[parents[k]] >= 0)
    ys, xs = np.nonzero(masks[sub])
    click = np.array([[xs.mean(), ys.mean()]])

    transformer = model.mask_decoder.transformer
    modules = [layer.cross_attn_token_to_image for layer in transformer.layers]
    modules.append(transformer.final_attn_token_to_image)
    names = [f"layer {i} token-to-image" for i in range(len(transformer.layers))]
    names.append("final token-to-image")
    captured = {}
    hooks = [m.register_forward_hook(
        lambda mod, inputs, out, i=i: captured.__setitem__(i, attention_probabilities(
            mod, inputs[0], inputs[1]).mean(1)[0]))  # average heads: (T, g*g)
        for i, m in enumerate(modules)]
    predictor = minisam.SamPredictor(model)
    predictor.set_image(image)
    out_masks, ious, _ = predictor.predict(click, np.array([1]))
    for h in hooks:
        h.remove()

    g = model.config.image_embedding_size
    fig, axes = plt.subplots(len(modules) + 1, 4, figsize=(10, 2.6 * (len(modules) + 1)))
    for row, (i, name) in enumerate(zip(range(len(modules)), names)):
        axes[row, 0].imshow(image, interpolation="nearest")
        axes[row, 0].plot(*click[0], "*", color="lime", markersize=12, markeredgecolor="k")
        axes[row, 0].set_title(name, fontsize=9)
        for col in range(3):
            # tokens are [IoU, mask 0, mask 1, mask 2, mask 3, prompt...]: multimask token
            # m (m = 1..3) is row 1 + m
            attn = captured[i][2 + col].view(g, g).numpy()
            axes[row, col + 1].imshow(image, alpha=0.35, interpolation="nearest")
            axes[row, col + 1].imshow(attn, cmap="inferno", alpha=0.75, interpolation="nearest",
                                      extent=(-0.5, image.shape[1] - 0.5,
                                              image.shape[0] - 0.5, -0.5))
            axes[row, col + 1].plot(*click[0], "*", color="lime", markersize=8,
                                    markeredgecolor="k")
            axes[row, col + 1].set_title(f"mask token {col + 1}", fontsize=9)
    last = axes[-1]
    last[0].imshow(image, interpolation="nearest")
    last[0].plot(*click[0], "*", color="lime", markersize=12, markeredgecolor="k")
    last[0].set_title("output masks", fontsize=9)
    for col in range(3):
        overlay(last[col + 1], image, out_masks[col], (1.0, 0.85, 0.1))
        last[col + 1].set_title(f"mask {col + 1}, predicted IoU {ious[col]:.2f}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    title = ("token-to-image attention of the multimask tokens (mean over heads)\n"
             f"toy model: {_MODEL_SOURCE}")
    if not out_masks.any():
        # a model stopped early predicts empty masks (train_toy's first few hundred steps)
        title += " - its masks are still empty: run `python train_toy.py` and redraw"
    fig.suptitle(title, y=1.0)
    fig.tight_layout()
    save(fig, path)


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
    save(fig, path)


# -----------------------------------------------------------------------------
# Lessons 05-07: training, the predictor, automatic masks (the trained toy model)


def _copy_training_figure(name: str, path: Path) -> None:
    shutil.copyfile(training_figures() / name, path)


@figure
def simulated_annotation(path: Path) -> None:
    """A held-out target through five passes of the training loop's simulated annotator:
    a first click, two corrective clicks, then the two passes with no new click that
    `--no-click-passes 2` adds (both at the end here), each pass fed the previous logits."""
    model = trained_model()
    image, masks, parents = train_toy.make_world(train_toy.EVAL_SEEDS[1])
    target = torch.from_numpy(masks[np.argmax(parents >= 0)])[None]  # a part: ambiguous
    generator = torch.Generator().manual_seed(0)
    predictor = minisam.SamPredictor(model)
    predictor.set_image(image)
    points, labels = train_toy.sample_in(target, generator), torch.ones(1, dtype=torch.long)
    low_res = None
    fig, axes = plt.subplots(1, 5, figsize=(12, 2.9))
    for it, ax in enumerate(axes):
        if it in (1, 2):
            click, label = train_toy.corrective_click(prediction, target, generator)
            points, labels = torch.cat([points, click]), torch.cat([labels, label])
        out, iou, logits = predictor.predict(points.numpy(), labels.numpy(), multimask_output=it == 0,
                                             mask_input=None if low_res is None else low_res[None])
        best = iou.argmax()  # carried forward, as in training
        low_res, prediction = logits[best], torch.from_numpy(out[best])[None]
        overlay(ax, image, out[best], (1.0, 0.85, 0.1))
        ax.contour(target[0].numpy(), levels=[0.5], colors="white", linewidths=1)
        for (x, y), fg in zip(points.tolist(), labels.tolist()):
            ax.plot(x, y, "o", color="lime" if fg else "red", markeredgecolor="k", markersize=7)
        actual = minisam.mask_iou(prediction, target).item()
        kind = "first click" if it == 0 else "corrective click" if it in (1, 2) else "no new click"
        ax.set_title(f"pass {it + 1}: {kind}\nIoU {actual:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle("one held-out target (white outline) through the training loop's passes",
                 y=1.04)
    save(fig, path)


@figure
def miou_vs_clicks(path: Path) -> None:
    """Held-out mIoU against the number of clicks, as train_toy.py draws it."""
    _copy_training_figure("miou_vs_clicks.png", path)


@figure
def one_click_three_masks(path: Path) -> None:
    """train_toy.py's gallery: one click, three masks and their predicted IoUs; a box; two
    corrective clicks."""
    _copy_training_figure("gallery.png", path)


@figure
def stability_score(path: Path) -> None:
    """One click's three masks, each thresholded at -1, 0 and +1 (in logits): the stability
    score is the IoU of the outer two."""
    model = trained_model()
    image, masks, parents = train_toy.make_world(train_toy.EVAL_SEEDS[1])
    ys, xs = np.nonzero(masks[np.argmax(parents >= 0)])
    click = np.array([[xs.mean(), ys.mean()]])
    predictor = minisam.SamPredictor(model)
    predictor.set_image(image)
    logits, iou, _ = predictor.predict(click, np.array([1]), return_logits=True)
    scores = minisam.calculate_stability_score(torch.from_numpy(logits), model.mask_threshold, 1.0)
    fig, axes = plt.subplots(3, 4, figsize=(9, 7))
    for row, k in zip(axes, range(3)):
        row[0].imshow(logits[k], cmap="RdBu_r", vmin=-8, vmax=8)
        row[0].set_title(f"mask {k + 1} logits\npredicted IoU {iou[k]:.2f}", fontsize=9)
        for ax, offset in zip(row[1:], (-1.0, 0.0, 1.0)):
            overlay(ax, image, logits[k] > offset, (1.0, 0.85, 0.1))
            ax.set_title(f"logit > {offset:+.0f}", fontsize=9)
        row[3].set_title(f"logit > +1: stability {scores[k]:.2f}", fontsize=9)
        for ax in row:
            ax.plot(*click[0], "*", color="lime", markersize=10, markeredgecolor="k")
            ax.axis("off")
    fig.suptitle("stability score = IoU(mask at logit > +1, mask at logit > -1)")
    fig.tight_layout()
    save(fig, path)


@figure
def automatic_masks(path: Path) -> None:
    """train_toy.py's automatic masks on a held-out image, with TOY_AMG_SETTINGS."""
    _copy_training_figure("automask.png", path)


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
    save(fig, path)


# -----------------------------------------------------------------------------


def main(argv=None) -> None:
    global CHECKPOINT
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(FIGURES), metavar="NAME",
                        help=f"draw only this figure (repeatable); one of {sorted(FIGURES)}")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"toy checkpoint for the figures of a trained model "
                             f"(default: {CHECKPOINT.relative_to(ROOT)}, else a quick training)")
    args = parser.parse_args(argv)
    if args.checkpoint is not None:
        CHECKPOINT = args.checkpoint
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for name in args.only or FIGURES:
        t = time.time()
        FIGURES[name](FIGURES_DIR / f"{name}.png")
        print(f"{name}.png  {time.time() - t:.1f} s")
    print(f"all done in {time.time() - start:.1f} s -> {FIGURES_DIR}")


if __name__ == "__main__":
    main()
