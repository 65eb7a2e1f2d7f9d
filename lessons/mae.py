"""
mae.py: masked-autoencoder pre-training (MAE: He et al., "Masked autoencoders are scalable
vision learners", CVPR 2022) of minisam's toy image encoder, as SAM's encoder starts from MAE.

    python lessons/mae.py                      # pre-train; writes lessons/mae_encoder.pt + .json
    python lessons/mae.py --figure             # lessons/figures/mae.png from the shipped files
    python lessons/mae.py --curves OUT1 OUT2   # lesson 13's curves from train_toy.py --out dirs
    python train_toy.py --init lessons/mae_encoder.pt   # SAM's training from the MAE encoder

MAE in one paragraph: hide a random 75% of an image's patches, encode the rest, and train a
small decoder to rebuild the hidden patches' pixels, each patch normalised to mean 0 and
variance 1 (the paper's "norm pix" target, which its Table 1 finds best); the loss counts the
hidden patches only. No labels: any image will do. Then the decoder is thrown away and the
encoder starts the real task.

How minisam's encoder is masked. MAE's ViT drops the hidden patches and runs on the visible
quarter only: a quarter of the tokens, so pre-training is about 4x cheaper. minisam's
`ImageEncoderViT` cannot drop tokens. Its windowed blocks cut the (g, g) grid into 8x8
windows, and a random quarter of a grid is no grid; its relative-position tables are sized
for a window (2*8-1 entries) or the whole grid, indexed by grid offsets; its neck is a 3x3
convolution over the grid. Running it on visible tokens only would mean a different encoder
for pre-training (global attention everywhere, positions looked up by token, no neck), which
is what ViTDet does with MAE's plain ViT before it adds windows. We mask as SimMIM does
(Xie et al., CVPR 2022, made for the windowed Swin for this very reason): each hidden patch's
embedding is replaced by one learned `mask_token` before the position embedding, and the
unchanged encoder runs on the whole grid, windows, relative positions and neck included.
The price: every step encodes all tokens (4x MAE's compute per image), and the encoder
spends capacity on mask tokens that SAM's training never shows it. The gain: the weights
pre-trained are exactly the weights SAM trains, the neck among them, with nothing to convert.
Because the encoder already writes a feature for every hidden position, the decoder can be
small: one global transformer `Block` on the neck's 64-d grid and a linear layer to each
patch's pixels (SimMIM finds a linear head enough; MAE's decoder must also place mask tokens).
"""

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so `python lessons/mae.py` finds minisam and train_toy
import minisam  # noqa: E402
import train_toy  # noqa: E402

CONFIG = minisam.CONFIGS["toy"]
MASK_RATIO = 0.75  # the paper's: a high ratio leaves a task that neighbours alone cannot solve
SHIPPED = Path(__file__).resolve().parent / "mae_encoder.pt"
FIGURES = Path(__file__).resolve().parent / "figures"
# the fixed images and masks on which the shipped JSON's final reconstruction loss is measured:
# training images (MAE never sees a held-out one), masked by a generator of this seed
CHECK_IMAGES, CHECK_SEED = 16, 1234


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B, g, g, patch*patch*3): each patch's pixels as one vector, the grid
    laid out as the encoder's tokens."""
    B, C, S, _ = images.shape
    g = S // patch
    x = images.reshape(B, C, g, patch, g, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, g, g, patch * patch * C)


def unpatchify(patches: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of patchify: (B, g, g, patch*patch*3) -> (B, 3, S, S)."""
    B, g, _, _ = patches.shape
    x = patches.reshape(B, g, g, patch, patch, 3).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, 3, g * patch, g * patch)


def random_masking(batch: int, grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(batch, grid, grid) bool, True = hidden: exactly round(ratio * grid^2) patches of each
    image, chosen uniformly (MAE's "random sampling": the smallest noise values are kept)."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    tokens = grid * grid
    noise = torch.rand(batch, tokens, generator=generator)
    rank = noise.argsort(1).argsort(1)  # each token's place in its image's order
    return (rank >= tokens - round(ratio * tokens)).reshape(batch, grid, grid)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) RGB on 0..255 -> the encoder's input, normalised as Sam.preprocess does."""
    mean = torch.tensor(CONFIG.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(CONFIG.pixel_std).view(1, 3, 1, 1)
    return (images - mean) / std


class MaskedAutoencoder(nn.Module):
    """minisam's ImageEncoderViT, masked SimMIM-style (the module docstring says why), and
    MAE's small decoder, which is thrown away after pre-training."""

    def __init__(self, config: minisam.SamConfig = CONFIG):
        super().__init__()
        self.patch = config.patch_size
        g, dim = config.image_embedding_size, config.prompt_embed_dim
        self.encoder = minisam.ImageEncoderViT(config)
        # one learned vector stands in for every hidden patch (MAE initialises it N(0, 0.02))
        self.mask_token = nn.Parameter(torch.randn(config.encoder_embed_dim) * 0.02)
        self.decoder = minisam.Block(dim, num_heads=2, mlp_ratio=4.0, window=0, grid=g)
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, self.patch * self.patch * 3)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) normalised, mask (B, g, g) bool, True = hidden -> the image embedding
        (B, 64, g, g). ImageEncoderViT.forward's own steps, with the hidden patches' embeddings
        swapped for the mask token before positions are added (so a mask token knows where
        it is)."""
        enc = self.encoder
        tokens = enc.patch_embed(x)  # (B, g, g, C)
        tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + enc.pos_embed
        for block in enc.blocks:
            tokens = block(tokens)
        return enc.neck(tokens.permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-> predicted normalised pixels of every patch, (B, g, g, patch*patch*3)."""
        features = self.encode(x, mask).permute(0, 2, 3, 1)  # (B, g, g, 64)
        return self.decoder_pred(self.decoder_norm(self.decoder(features)))


def patch_targets(x: torch.Tensor, patch: int) -> torch.Tensor:
    """MAE's "norm pix" targets: each patch's pixels minus their mean, over their standard
    deviation (over all 3 channels), (B, g, g, patch*patch*3). Local contrast, not colour."""
    target = patchify(x, patch)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    return (target - mean) / (var + 1e-6) ** 0.5


def mae_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over the hidden patches only: prediction and
    target (B, g, g, D), mask (B, g, g) bool. Visible patches are copied, not learned."""
    if mask.shape != prediction.shape[:3] or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool of shape {tuple(prediction.shape[:3])}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    per_patch = ((prediction - target) ** 2).mean(-1)  # (B, g, g)
    return (per_patch * mask).sum() / mask.sum()


def training_images(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, S, S) RGB 0..255: training seeds (never train_toy.EVAL_SEEDS) of the toy
    SA-1B's worlds (never HELD_OUT_WORLDS), both drawn uniformly."""
    seeds = torch.randint(len(train_toy.TRAIN_SEEDS), (count,), generator=generator).tolist()
    worlds = torch.randint(len(train_toy.TRAINING_WORLDS), (count,), generator=generator).tolist()
    samples = [train_toy.make_sample(train_toy.TRAIN_SEEDS[s], CONFIG.image_size,
                                     train_toy.TRAINING_WORLDS[w])[0]
               for s, w in zip(seeds, worlds)]
    return torch.from_numpy(np.stack(samples)).permute(0, 3, 1, 2).float()


def mae_step(model: MaskedAutoencoder, images: torch.Tensor, generator: torch.Generator):
    """The loss of one batch of images (B, 3, S, S) 0..255, each with its own random mask."""
    x = normalise(images)
    mask = random_masking(len(x), x.shape[-1] // model.patch, MASK_RATIO, generator)
    return mae_loss(model(x, mask), patch_targets(x, model.patch), mask)


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """MAE's schedule: linear warmup, then a half-cosine down to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def pretrain(steps: int, batch: int, lr: float, seed: int, log=print):
    """MAE pre-training: returns the model and the loss curve, every 25 steps the mean loss
    since the last point, wall and CPU minutes (on a shared machine the two differ: CPU
    minutes are this process's own work) and the machine's load."""
    torch.manual_seed(seed)
    model = MaskedAutoencoder()
    # MAE's AdamW: betas (0.9, 0.95), weight decay 0.05
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    curve, start, start_cpu, window = [], time.time(), time.process_time(), []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=max(1, steps // 20))
        loss = mae_step(model, training_images(batch, generator), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        if (step + 1) % 25 == 0 or step + 1 == steps:  # the curve: the mean of the last steps
            curve.append({"step": step + 1, "minutes": round((time.time() - start) / 60, 3),
                          "cpu_minutes": round((time.process_time() - start_cpu) / 60, 3),
                          "loss": round(float(np.mean(window)), 4),
                          "load_average": round(os.getloadavg()[0], 2)})
            window = []
            log(f"step {step + 1}/{steps}  loss {curve[-1]['loss']:.4f}  "
                f"{curve[-1]['minutes']:.1f} min  load {curve[-1]['load_average']}")
    return model, curve


# -----------------------------------------------------------------------------
# The shipped files. The encoder, what train_toy.py --init loads, is the image encoder's state
# dict alone; the decoder and mask token (only the figure and the check below use them) go
# beside it. Both in half precision: 524k encoder weights are 2.1 MB in float32, over the
# 2 MB budget; a starting point loses nothing at three significant digits.


def save(model: MaskedAutoencoder, path: Path) -> None:
    """Write the encoder to `path` and the rest to `path` with "encoder" -> "decoder"."""
    half = {k: v.half() for k, v in model.state_dict().items()}
    torch.save({k[len("encoder."):]: v for k, v in half.items() if k.startswith("encoder.")}, path)
    torch.save({k: v for k, v in half.items() if not k.startswith("encoder.")},
               decoder_path(path))


def decoder_path(path: Path) -> Path:
    return path.with_name(path.name.replace("encoder", "decoder"))


def load(path: Path = SHIPPED) -> MaskedAutoencoder:
    """The MaskedAutoencoder of the files `save` wrote, in float32 and eval mode."""
    model = MaskedAutoencoder()
    model.encoder.load_state_dict(torch.load(path, weights_only=True))
    missing, unexpected = model.load_state_dict(torch.load(decoder_path(path), weights_only=True),
                                                strict=False)
    if unexpected or any(not k.startswith("encoder.") for k in missing):
        raise ValueError(f"{decoder_path(path)} does not hold MaskedAutoencoder's decoder")
    return model.eval()


@torch.no_grad()
def check_loss(model: MaskedAutoencoder) -> float:
    """The reconstruction loss on the fixed CHECK_IMAGES training images and masks: what the
    JSON records for the shipped files and the tests recompute."""
    generator = torch.Generator().manual_seed(CHECK_SEED)
    return mae_step(model.eval(), training_images(CHECK_IMAGES, generator), generator).item()


# -----------------------------------------------------------------------------
# What the encoder knows: segmentation by feature similarity, no training at all. For each
# target of a held-out image, the click at its interior (train_toy.interior_point), and the
# mask = every patch whose feature's cosine similarity to the clicked patch's exceeds a
# threshold. The threshold is chosen on training images, the mIoU reported on held-out ones.

THRESHOLDS = np.round(np.arange(0.3, 1.0, 0.05), 2).tolist()


@torch.no_grad()
def similarity_ious(features_of, seeds) -> torch.Tensor:
    """features_of: (1, 3, S, S) normalised image -> (1, D, g, g) features. Returns the IoU of
    every target of the toy images `seeds` at every threshold, (targets, len(THRESHOLDS))."""
    ious = []
    for seed in seeds:
        image, masks = train_toy.make_sample(seed)
        x = normalise(torch.from_numpy(image).permute(2, 0, 1)[None].float())
        features = F.normalize(features_of(x)[0], dim=0)  # (D, g, g), unit vectors
        targets = torch.from_numpy(masks)
        up = targets.shape[-1] // features.shape[-1]  # pixels per feature
        clicks = (train_toy.interior_point(targets) // up).long()  # (K, 2) x, y in the grid
        similarity = torch.einsum("dk,dhw->khw", features[:, clicks[:, 1], clicks[:, 0]], features)
        per_threshold = []
        for t in THRESHOLDS:
            predicted = (similarity > t).repeat_interleave(up, 1).repeat_interleave(up, 2)
            per_threshold.append(minisam.mask_iou(predicted, targets))  # (K,)
        ious.append(torch.stack(per_threshold, dim=1))  # (K, thresholds)
    return torch.cat(ious)


def similarity_probe(features_of, images: int = 16) -> dict:
    """The threshold with the best mIoU on `images` training images (SHAPES, as the held-out
    ones), and the held-out mIoU at it on train_toy's first `images` held-out images."""
    best = int(similarity_ious(features_of, train_toy.TRAIN_SEEDS[:images]).mean(0).argmax())
    held_out = similarity_ious(features_of, train_toy.EVAL_SEEDS[:images])[:, best]
    return {"threshold": THRESHOLDS[best], "held_out_miou": round(held_out.mean().item(), 3)}


def probes(model: MaskedAutoencoder) -> dict:
    """similarity_probe of the MAE encoder's image embedding, of a random encoder's (the
    start of `train_toy.py --init scratch`), and of the raw pixels of each patch."""
    torch.manual_seed(0)
    random_encoder = minisam.ImageEncoderViT(CONFIG).eval()
    return {"mae_encoder": similarity_probe(model.encoder),
            "random_encoder": similarity_probe(random_encoder),
            "pixels": similarity_probe(
                lambda x: patchify(x, CONFIG.patch_size).permute(0, 3, 1, 2))}



# -----------------------------------------------------------------------------
# Figures


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, images: torch.Tensor, generator: torch.Generator):
    """images (B, 3, S, S) 0..255 -> (masked inputs, reconstructions) as RGB 0..255, hidden
    patches grey in the first. The model predicts each hidden patch's normalised pixels, not
    its mean and contrast, so, as MAE's own figures of a norm-pix model do, those two come
    from the true patch; the visible patches are the image's own."""
    x = normalise(images)
    mask = random_masking(len(x), x.shape[-1] // model.patch, MASK_RATIO, generator)
    truth = patchify(x, model.patch)  # (B, g, g, D)
    mean, std = truth.mean(-1, keepdim=True), (truth.var(-1, keepdim=True) + 1e-6) ** 0.5
    predicted = model.eval()(x, mask) * std + mean
    hidden = mask[..., None]
    rebuilt = unpatchify(torch.where(hidden, predicted, truth), model.patch)
    masked = unpatchify(torch.where(hidden, normalise(torch.full_like(images, 128.0)).mean()
                                    .expand_as(truth), truth), model.patch)
    pixel_std = torch.tensor(CONFIG.pixel_std).view(1, 3, 1, 1)
    pixel_mean = torch.tensor(CONFIG.pixel_mean).view(1, 3, 1, 1)
    return [(t * pixel_std + pixel_mean).clamp(0, 255) for t in (masked, rebuilt)]


def draw_reconstructions(model: MaskedAutoencoder, path: Path, columns: int = 5) -> None:
    """Held-out images (MAE never saw them), 75% of their patches hidden: the masked input,
    MAE's reconstruction and the truth, one column per image."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = train_toy.EVAL_SEEDS[:columns]
    images = torch.from_numpy(np.stack([train_toy.make_sample(s)[0] for s in seeds]))
    images = images.permute(0, 3, 1, 2).float()
    masked, rebuilt = reconstruct(model, images, torch.Generator().manual_seed(CHECK_SEED))
    fig, axes = plt.subplots(3, columns, figsize=(2 * columns, 6.3))
    for row, (name, batch) in enumerate((("masked (75%)", masked), ("MAE", rebuilt),
                                         ("truth", images))):
        for col in range(columns):
            axes[row, col].imshow(batch[col].permute(1, 2, 0).numpy().astype(np.uint8))
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        axes[row, 0].set_ylabel(name)
    fig.suptitle("MAE on held-out toy images: hidden patches rebuilt from the visible quarter")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


CURVES = FIGURES / "mae_curves.json"  # the train_toy runs of the lesson's table and figure
CURVES_FIGURE = FIGURES / "mae_curves.png"
FINAL_KEYS = ("box_miou", "one_click_oracle_miou", "one_click_miou", "iou_head_pearson_r")


def summarise_run(out: Path) -> dict:
    """What the lesson needs of one train_toy.py run in directory `out`, finished or not: its
    command, seed, machine and threads and its learning curve so far (OUT/ckpt.pt, saved
    every --save-every steps), and once it has finished its final held-out scores
    (OUT/metrics.json; "final" is None before)."""
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)
    run, finished = ckpt["runs"][0], (out / "metrics.json").is_file()
    final = None
    if finished:
        metrics = json.loads((out / "metrics.json").read_text())
        final = {**{k: round(metrics[k], 3) for k in FINAL_KEYS},
                 "five_clicks_miou": round(metrics["miou_by_clicks"][4], 3)}
    return {"start": "MAE" if "--init" in run["command"] else "scratch", "seed": ckpt["seed"],
            **{k: run[k] for k in ("command", "commit", "threads", "machine")},
            "steps_done": ckpt["step"], "train_minutes": round(ckpt["history"][-1]["minutes"], 2),
            "final": final,
            "learning_curve": [{k: round(point[k], 3) for k in
                                ("step", "minutes", "box_miou", "one_click_oracle_miou")}
                               for point in train_toy.curve_points(ckpt["history"])]}


def draw_curves(runs: list, path: Path) -> None:
    """Held-out box and 1-click oracle mIoU against training steps, from scratch and from MAE.
    Steps, not minutes: the runs shared a busy machine, so their minutes are not comparable."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, key in zip(axes, ("box_miou", "one_click_oracle_miou")):
        for run in runs:
            curve = run["learning_curve"]
            ax.plot([c["step"] for c in curve], [c[key] for c in curve],
                    color="C1" if run["start"] == "MAE" else "C0",
                    linestyle=("-", "--", ":")[run["seed"] % 3], marker="o", markersize=3,
                    label=f"{run['start']}, seed {run['seed']}")
        ax.set(xlabel="training step (the default run: 1600)", title=key.replace("_", " "),
               ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out mIoU (16 images)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")

def provenance(argv: list) -> dict:
    """How the run was made, as train_toy.provenance records it, with the command of this
    script and the machine's load: a busy machine's minutes are not an idle machine's."""
    record = train_toy.provenance(argv)
    here = Path(__file__).resolve().parent
    record["command"] = shlex.join(["python", "lessons/mae.py", *argv])
    record["code_changed_since_commit"] = bool(subprocess.run(
        ["git", "status", "--porcelain", "mae.py"], cwd=here, capture_output=True,
        text=True).stdout.strip()) or record["code_changed_since_commit"]
    record["python"] = platform.python_version()
    return record


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description="MAE pre-training of minisam's toy image encoder.")
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--batch", type=int, default=16, help="images per step")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=SHIPPED, help="the encoder's file")
    p.add_argument("--figure", action="store_true",
                   help="draw lessons/figures/mae.png from the encoder at --out, no training")
    p.add_argument("--curves", type=Path, nargs="+", metavar="OUT",
                   help="no training: summarise these train_toy.py --out directories (finished or "
                        "not) into lessons/figures/mae_curves.json and draw mae_curves.png")
    args = p.parse_args(argv)
    for name in ("steps", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.figure:
        draw_reconstructions(load(args.out), FIGURES / "mae.png")
        return
    if args.curves:
        missing = [str(d) for d in args.curves if not (d / "ckpt.pt").is_file()]
        if missing:
            p.error(f"--curves: no ckpt.pt in {', '.join(missing)}")
        runs = [summarise_run(d) for d in args.curves]
        CURVES.write_text(json.dumps(runs, indent=2))
        draw_curves(runs, CURVES_FIGURE)
        return
    record = provenance(argv)
    record["load_average_at_start"] = os.getloadavg()
    model, curve = pretrain(args.steps, args.batch, args.lr, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save(model, args.out)
    shipped = load(args.out)
    record.update({
        "minutes": curve[-1]["minutes"], "cpu_minutes": curve[-1]["cpu_minutes"],
        "steps": args.steps, "images_per_step": args.batch,
        "lr": args.lr, "seed": args.seed, "mask_ratio": MASK_RATIO,
        "images_seen": args.steps * args.batch,
        "busy": max(c["load_average"] for c in curve) > os.cpu_count(),
        "loss_curve": curve,
        "check_loss": {"images": CHECK_IMAGES, "seed": CHECK_SEED,
                       "loss": round(check_loss(shipped), 4)},
        "similarity_probe": probes(shipped)})
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}, {decoder_path(args.out)} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
