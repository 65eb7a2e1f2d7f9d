"""
bench.py: how fast is minisam, measured against the reference implementation and against
what this machine can do at all.

    python bench.py            # full table, a few minutes on a 2-core CPU
    python bench.py --quick    # fewer repeats, about a minute
    python bench.py --json lessons/bench.json   # and write the table (the README's Speed rows)

Each row runs minisam and the reference (`segment-anything`, from requirements-test.txt) on
the same random weights and inputs, alternating between them, and reports the median of the
repeats after a warm-up. Without the reference installed the ratio column stays empty.
"""

import argparse
import importlib
import json
import platform
import resource
import statistics
import time
from functools import partial

import numpy as np
import torch

from minisam import CONFIGS, Sam, SamAutomaticMaskGenerator, SamPredictor
from train_toy import EVAL_SEEDS, InteractiveTraining, TrainSettings, make_sample, training_batch


def reference_twin(model: Sam, segment_anything):
    """The reference model with `model`'s sizes and weights, assembled from the classes of
    the reference package (the module `segment_anything`), or None without it."""
    if segment_anything is None:
        return None
    cfg, modeling = model.config, segment_anything.modeling
    encoder = modeling.ImageEncoderViT(
        depth=cfg.encoder_depth, embed_dim=cfg.encoder_embed_dim, img_size=cfg.image_size,
        mlp_ratio=cfg.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=cfg.encoder_num_heads, patch_size=cfg.patch_size, qkv_bias=True,
        use_rel_pos=True, global_attn_indexes=cfg.encoder_global_attn_indexes,
        window_size=cfg.window_size, out_chans=cfg.prompt_embed_dim)
    g = cfg.image_embedding_size
    prompt_encoder = modeling.PromptEncoder(
        embed_dim=cfg.prompt_embed_dim, image_embedding_size=(g, g),
        input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=cfg.mask_in_chans)
    transformer = modeling.TwoWayTransformer(
        depth=cfg.decoder_depth, embedding_dim=cfg.prompt_embed_dim,
        mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads)
    decoder = modeling.MaskDecoder(
        num_multimask_outputs=cfg.num_multimask_outputs, transformer=transformer,
        transformer_dim=cfg.prompt_embed_dim, iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim)
    theirs = modeling.Sam(encoder, prompt_encoder, decoder, list(cfg.pixel_mean),
                          list(cfg.pixel_std))
    theirs.load_state_dict(model.state_dict())
    return theirs.eval()


def median_times(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median wall time of each function; the functions alternate so that any drift in the
    machine's speed (turbo, other processes) hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """The machine's practical ceiling: one large square matmul, 2 n^3 FLOPs."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = median_times({"mm": lambda: a @ b}, repeats)["mm"]
    return 2 * n**3 / seconds / 1e9


def encoder_flops(cfg) -> float:
    """Multiply-adds x 2 of the image encoder, counted from the architecture (linear layers,
    attention logits and weighted sums, relative-position terms, patch embedding, neck)."""
    g, C, w = cfg.image_embedding_size, cfg.encoder_embed_dim, cfg.window_size
    tokens = g * g
    hidden = int(C * cfg.mlp_ratio)
    linear = tokens * (3 * C * C + C * C + 2 * C * hidden)  # qkv, proj, MLP
    flops = 0
    for i in range(cfg.encoder_depth):
        side = g if i in cfg.encoder_global_attn_indexes else w
        padded = tokens if side == g else (-(-g // w) * w) ** 2
        keys = side * side
        # q.k and attn.v over every query, plus q.R_h and q.R_w for every key row/column
        attention = padded * keys * C * 2 + padded * 2 * side * C
        flops += 2 * (linear + attention)
    patch = tokens * 3 * cfg.patch_size**2 * C
    neck = tokens * (C * cfg.prompt_embed_dim + 9 * cfg.prompt_embed_dim**2)
    return flops + 2 * (patch + neck)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows to this JSON file")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    try:  # the reference, from requirements-test.txt
        sa = importlib.import_module("segment_anything")
    except Exception:  # a torchvision built for another torch raises RuntimeError, not ImportError
        sa = None
    torch.manual_seed(0)
    rows = []  # (what, minisam, reference, unit)

    def row(what, ours, ref=None, unit="s"):
        rows.append((what, ours, ref, unit))
        ratio = f"{ours / ref:.2f}" if ref else ""
        print(f"{what:<46} {ours:>10.4g} {'' if ref is None else f'{ref:10.4g}':>10} "
              f"{ratio:>6} {unit}", flush=True)

    machine = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "quick": args.quick}
    print(f"minisam bench, {machine['date']}, {machine['machine']}, {machine['threads']} "
          f"threads, torch {machine['torch']}")
    print(f"{'row':<46} {'minisam':>10} {'reference':>10} {'ratio':>6} unit")
    peak32, peak16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    row("matmul 1024^3 fp32", peak32, unit="GFLOP/s")
    row("matmul 1024^3 bf16", peak16, unit="GFLOP/s")
    # a CPU without bf16 instructions (AVX-512 BF16 or AMX) emulates them, far slower than
    # fp32: a ViT-B encoder in bf16 would then take hours, and tell nothing
    bf16 = peak16 > peak32
    if not bf16:
        print("  (no fast bf16 matmul on this CPU: the bf16 rows are skipped)")

    # toy training throughput: the default step of `python train_toy.py`
    settings = TrainSettings()
    model = Sam(CONFIGS["toy"])
    trainer = InteractiveTraining(model, settings.iters, settings.no_click_passes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step(step=[0]):
        images, targets, index, generator = training_batch(
            step[0], 0, 0, settings.images_per_step, settings.targets_per_image, 64)
        loss, _ = trainer(images, targets, index, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step[0] += 1

    t = median_times({"step": train_step}, 3 if args.quick else 10)["step"]
    per_image = settings.targets_per_image * settings.iters  # decoder passes per image
    per_step = (f"{settings.images_per_step} x {settings.targets_per_image} targets x "
                f"{settings.iters} passes")
    row(f"toy training, images/s ({per_step})", settings.images_per_step / t, unit="images/s")
    row("toy training, decoder passes/s", settings.images_per_step * per_image / t,
        unit="passes/s")
    # measured first, so that the process's peak memory is the training's
    row("toy training, peak resident memory", resource.getrusage(resource.RUSAGE_SELF)
        .ru_maxrss / 2**20, unit="GiB")

    # ViT-B image encoder at 1024x1024, fp32 and bf16
    cfg = CONFIGS["vit_b"]
    ours = Sam(cfg).eval()  # PyTorch's random weights: the speed does not depend on them
    theirs = reference_twin(ours, sa)
    x = torch.randn(1, 3, 1024, 1024)

    @torch.no_grad()
    def encode(model, bf16=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.image_encoder(x)

    fns = {"fp32": lambda: encode(ours)}
    if bf16:
        fns["bf16"] = lambda: encode(ours, bf16=True)
    if theirs is not None:
        fns["ref"] = lambda: encode(theirs)
    t = median_times(fns, repeats, warmup=0 if args.quick else 1)
    flops = encoder_flops(cfg)
    row("ViT-B encoder 1024px fp32", t["fp32"], t.get("ref"))
    row("  fp32 achieved / matmul peak", flops / t["fp32"] / 1e9 / peak32, unit="fraction")
    full = ours.prompt_encoder, ours.mask_decoder
    click = (torch.tensor([[[500.0, 375.0]]]), torch.tensor([[1]]))
    with torch.no_grad():
        embedding32 = encode(ours)
    if bf16:
        row("ViT-B encoder 1024px bf16 (autocast)", t["bf16"], t.get("ref"))
        row("  bf16 achieved / matmul peak", flops / t["bf16"] / 1e9 / peak16, unit="fraction")
        with torch.no_grad():
            embedding16 = encode(ours, bf16=True).float()
            masks = [full[1](e, full[0].get_dense_pe(), *full[0](click, None, None), True)[0] > 0
                     for e in (embedding32, embedding16)]
        row("  bf16 masks agreeing with fp32", (masks[0] == masks[1]).float().mean().item(),
            unit="fraction of pixels")

    # one click through prompt encoder + decoder at full size (256-d, 64x64 embedding)
    def one_click(model):
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(points=click, boxes=None, masks=None)
            return model.mask_decoder(embedding32, model.prompt_encoder.get_dense_pe(), sparse,
                                      dense, True)

    fns = {"ours": lambda: one_click(ours)}
    if theirs is not None:
        fns["ref"] = lambda: one_click(theirs)
    t = median_times(fns, 10 if args.quick else 30, warmup=3)
    row("one click, prompt encoder + decoder (ViT-B)", t["ours"], t.get("ref"))

    # SamPredictor.predict per click after set_image (the annotation tool's loop)
    image = (torch.rand(1024, 768, 3) * 255).to(torch.uint8).numpy()
    toy = Sam(CONFIGS["toy"]).eval()
    toy_ref = reference_twin(toy, sa)
    for name, model, ref_model in (("ViT-B", ours, theirs), ("toy", toy, toy_ref)):
        predictors = {"ours": SamPredictor(model)}
        if ref_model is not None:
            predictors["ref"] = sa.SamPredictor(ref_model)
        for predictor in predictors.values():
            predictor.set_image(image)
        fns = {k: (lambda p=p: p.predict(point_coords=np.array([[400, 300]]),
                                         point_labels=np.array([1])))
               for k, p in predictors.items()}
        t = median_times(fns, 10 if args.quick else 30, warmup=3)
        row(f"SamPredictor.predict per click ({name}, 1024x768 image)", t["ours"], t.get("ref"))

    # automatic masks on a toy image with the toy model and a 32x32 grid
    toy_image, _ = make_sample(EVAL_SEEDS[0])
    fns = {"ours": lambda: SamAutomaticMaskGenerator(toy, pred_iou_thresh=0,
                                                     stability_score_thresh=0).generate(toy_image)}
    if toy_ref is not None:
        fns["ref"] = lambda: sa.SamAutomaticMaskGenerator(
            toy_ref, pred_iou_thresh=0, stability_score_thresh=0).generate(toy_image)
    t = median_times(fns, 1 if args.quick else 3)
    row("automatic masks, toy model, 32x32 grid", t["ours"], t.get("ref"))
    if args.json:
        table = [dict(row=what, minisam=ours, reference=ref, unit=unit)
                 for what, ours, ref, unit in rows]
        with open(args.json, "w") as f:
            json.dump({**machine, "rows": table}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
