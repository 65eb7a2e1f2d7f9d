"""
web_demo.py: SAM in a web page, the way the paper's annotation tool ran it.

    (cd lessons/web && npm ci)                     # once: ONNX Runtime Web, pinned by the lock file
    python lessons/web_demo.py                     # the shipped toy model on a held-out toy image
    python lessons/web_demo.py --config vit_b --checkpoint sam_vit_b_01ec64.pth --image photo.jpg
    python lessons/web_demo.py --export-only DIR   # write the page's files to DIR, serve nothing
    python lessons/web_demo.py --port 0            # any free port; the URL is the first line out

On the page: click for a foreground point, shift-click (or right click) for a background point,
drag for a box, Escape to start again.

The paper's tool had to "run in real time on a CPU in a web browser" (section 3), and SAM's
split is what makes that possible (lesson 6): the image encoder, 90% of the model's weights
and nearly all of its arithmetic, runs once per image on a server; the image embedding (for
ViT-B 256 x 64 x 64 floats, 4 MiB) travels to the page once; then the prompt encoder and mask
decoder, about 4M parameters, answer every click inside the browser, with no server behind it.
This script plays the server: it exports the decoder to ONNX (export_decoder), runs the image
encoder once, writes the embedding, and serves lessons/web/, whose page runs the decoder with
ONNX Runtime Web (WebAssembly, one thread, so no special HTTP headers are needed).

The exported model has the official SAM ONNX model's interface (segment_anything/utils/onnx.py
in the reference repository), so pages written for the official model work with minisam's:

    image_embeddings (1, C, g, g)  the image encoder's output
    point_coords     (1, P, 2)     x, y already in the model's input frame (ResizeLongestSide)
    point_labels     (1, P)        1 foreground, 0 background, 2 and 3 a box's top-left and
                                   bottom-right corner, -1 the padding point that stands for
                                   "no box" (the decoder was trained to see one there)
    mask_input       (1, 1, 4g, 4g) low-res logits of an earlier answer, used if
    has_mask_input   (1,)          is 1 (0: mask_input is ignored)
    orig_im_size     (2,)          H, W of the original image
 -> masks            (1, 1, H, W)  logits on the original image (a pixel is in where > 0)
    iou_predictions  (1, 1)        the IoU the model predicts for that mask
    low_res_masks    (1, 1, 4g, 4g) its logits before upscaling: the next mask_input

All inputs are float32 and P may be any number. Like the official model exported for its web
demo (its notebook's return_single_mask=True), it answers with one mask, chosen by a rule on
the number of rows P of point_coords, padding and box corners included: with P <= 2 (one
click and its padding point, or a box alone) the prompt is ambiguous and the answer is the
best of the multimask outputs by predicted IoU; with more rows the single-output token 0
answers (choose_output).
"""

import argparse
import http.server
import json
import signal
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

# the lesson scripts live one level below the package's two modules
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minisam  # noqa: E402
from click_demo import TOY_CHECKPOINT, load_image  # noqa: E402
from train_toy import EVAL_SEEDS, make_sample  # noqa: E402

WEB = Path(__file__).resolve().parent / "web"  # the page, and node_modules after npm ci
INPUT_NAMES = ["image_embeddings", "point_coords", "point_labels", "mask_input",
               "has_mask_input", "orig_im_size"]
OUTPUT_NAMES = ["masks", "iou_predictions", "low_res_masks"]
OPSET = 17  # what the official export script uses; ONNX Runtime Web runs it


def choose_output(iou_predictions: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """The official ONNX model's choice among the decoder's M + 1 outputs, as a (1,) index:
    with at most 2 prompt rows (one click and its padding, or a box alone) the best of the
    multimask outputs 1..M by predicted IoU, otherwise the single-output token 0.
    iou_predictions (1, M + 1); point_labels (1, P). The row count is summed from the labels
    rather than read from their shape, so the traced graph keeps it for every P."""
    rows = torch.ones_like(point_labels).sum(1)  # (1,): P, as a number in the graph
    best_multimask = iou_predictions[:, 1:].argmax(1) + 1  # (1,)
    return torch.where(rows > 2, torch.zeros_like(best_multimask), best_multimask)


def resized_size(orig_im_size: torch.Tensor, long_side: int) -> torch.Tensor:
    """ResizeLongestSide.get_preprocess_shape on a (2,) tensor (H, W), so that the traced
    graph computes it for any image size: the same float64 arithmetic and rounding, hence
    the same pixels. Returns (2,) int64 (h, w), the image's size in the model's input."""
    size = orig_im_size.double()
    scale = long_side / size.max()
    return (size * scale + 0.5).floor().clamp(min=1).long()


class OnnxDecoder(nn.Module):
    """minisam's prompt encoder, mask decoder and mask postprocessing behind the official ONNX
    interface (module docstring). Everything is minisam's own modules; what is added only
    turns the interface's numbers into their arguments without Python branches, which a
    traced graph could not keep."""

    def __init__(self, sam: minisam.Sam):
        super().__init__()
        self.sam = sam

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input,
                orig_im_size):
        encoder = self.sam.prompt_encoder
        # points, padding and box corners are all rows of point_coords: (1, P, C)
        sparse = encoder._embed_points(point_coords, point_labels, pad=False)
        # the mask prompt or the "no mask" vector, weighted by has_mask_input (0 or 1) rather
        # than chosen by an if: (1, C, g, g)
        masked = encoder(points=None, boxes=None, masks=mask_input)[1]
        unmasked = encoder(points=None, boxes=None, masks=None)[1]
        dense = has_mask_input * masked + (1 - has_mask_input) * unmasked
        # the dense positional encoding made in the graph from the (2, C/2) Gaussian matrix,
        # not read from the prompt encoder's cached buffer: the exporter would fold the buffer
        # into one (1, g*g, C) constant per attention that reads it (ViT-B: three of 4 MiB)
        image_pe = encoder.pe_layer.dense(encoder.image_embedding_size)[None]  # (1, C, g, g)
        masks, iou_predictions = self.sam.mask_decoder.predict_masks(
            image_embeddings, image_pe, sparse, dense)  # (1, M+1, 4g, 4g), (1, M+1)
        choice = choose_output(iou_predictions, point_labels)
        low_res_masks = masks.index_select(1, choice)  # (1, 1, 4g, 4g)
        upscaled = self.sam.postprocess_masks(
            low_res_masks, resized_size(orig_im_size, self.sam.image_encoder.img_size),
            orig_im_size.long())  # (1, 1, H, W)
        return upscaled, iou_predictions.index_select(1, choice), low_res_masks


def export_decoder(sam: minisam.Sam, path) -> Path:
    """Write sam's prompt encoder and mask decoder to `path` as an ONNX model with the official
    interface (module docstring); the number of points P is left free. Returns the path."""
    if not isinstance(sam, minisam.Sam):
        raise TypeError(f"sam must be a minisam.Sam (build_sam makes one), got "
                        f"{type(sam).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"path {str(path)!r}: no folder {str(path.parent)!r}")
    cfg = sam.config
    g = cfg.image_embedding_size
    example = (torch.zeros(1, cfg.prompt_embed_dim, g, g),
               torch.tensor([[[10.0, 10.0], [0.0, 0.0]]]),  # a click and its padding point
               torch.tensor([[1.0, -1.0]]),
               torch.zeros(1, 1, 4 * g, 4 * g),
               torch.ones(1),
               torch.tensor([cfg.image_size * 0.75, cfg.image_size]))  # any size will do
    was_training = sam.training
    sam.eval()
    with warnings.catch_warnings():
        # The legacy (TorchScript) exporter warns that it is deprecated, and its tracer warns
        # wherever a size is read from orig_im_size; yet the graph keeps computing those sizes
        # (the tests export at one image size and run at others). It is used because it needs
        # no package beyond torch and onnx.
        warnings.simplefilter("ignore")
        torch.onnx.export(OnnxDecoder(sam), example, str(path), dynamo=False, opset_version=OPSET,
                          input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                          dynamic_axes={"point_coords": {1: "num_points"},
                                        "point_labels": {1: "num_points"}})
    sam.train(was_training)
    return path


def export_page_data(sam: minisam.Sam, image: np.ndarray, folder) -> dict:
    """Everything the page loads besides itself, written to `folder`: decoder.onnx, the image
    (image.png), its embedding (embedding.npy, float32 (1, C, g, g)) and demo.json (the model's
    input side, which the page's coordinate scaling needs). Returns demo.json's contents."""
    from PIL import Image  # matplotlib's own image library, so always there

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r}: no such folder")
    export_decoder(sam, folder / "decoder.onnx")
    predictor = minisam.SamPredictor(sam)
    predictor.set_image(image)  # the one run of the image encoder
    np.save(folder / "embedding.npy", predictor.get_image_embedding().cpu().numpy())
    Image.fromarray(image).save(folder / "image.png")
    info = {"input_side": sam.image_encoder.img_size, "height": image.shape[0],
            "width": image.shape[1]}
    (folder / "demo.json").write_text(json.dumps(info))
    return info


def onnx_inputs(predictor: minisam.SamPredictor, points, labels, box=None,
                mask_input=None) -> dict:
    """The exported model's inputs (numpy) for prompts in the original image's pixels (as
    SamPredictor.predict takes them) on predictor's image, built as the page builds them:
    coordinates moved into the model's frame by ResizeLongestSide, labels 2 and 3 for a box's
    corners, the padding point (0, 0) with label -1 when there is no box; mask_input (1, 4g,
    4g) is a low_res_masks row of an earlier answer."""
    corners = [] if box is None else [box[:2], box[2:]]
    coords = predictor.transform.apply_coords(
        np.array([*points, *corners], dtype=np.float64).reshape(-1, 2), predictor.original_size)
    row_labels = [*labels, 2, 3] if box is not None else [*labels, -1]
    if box is None:
        coords = np.concatenate([coords, [[0.0, 0.0]]])
    low = predictor.model.prompt_encoder.mask_input_size
    return {"image_embeddings": predictor.get_image_embedding().cpu().numpy(),
            "point_coords": coords[None].astype(np.float32),
            "point_labels": np.array([row_labels], dtype=np.float32),
            "mask_input": (np.zeros((1, 1, *low)) if mask_input is None
                           else mask_input[None]).astype(np.float32),
            "has_mask_input": np.array([mask_input is not None], dtype=np.float32),
            "orig_im_size": np.array(predictor.original_size, dtype=np.float32)}


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves lessons/web/ at / and the exported files at /data/. ONNX Runtime Web loads its
    WebAssembly and the module that starts it with fetch and import(), which insist on
    the right MIME types, so those are stated rather than left to the system's tables."""
    extensions_map = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".json": "application/json",
                      ".png": "image/png", "": "application/octet-stream"}
    data_folder: Path  # set on the subclass made by serve()

    def translate_path(self, path: str) -> str:
        if path.startswith("/data/"):
            return str(self.data_folder / Path(path.split("?")[0]).name)
        return super().translate_path(path)

    def log_message(self, format, *args) -> None:
        pass  # one line per file fetched would bury the URL and the summary


def serve(folder: Path, port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server on localhost for the page and `folder`'s files (port 0: any free one)."""
    handler = type("Handler", (PageHandler,), {"data_folder": Path(folder)})
    return http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), lambda *a: handler(*a, directory=str(WEB)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="SAM in a web page: the decoder runs in the browser.")
    p.add_argument("--image", type=Path, help="a PNG or JPEG (default: a held-out toy image)")
    p.add_argument("--config", default="toy", choices=list(minisam.CONFIGS))
    p.add_argument("--checkpoint", type=Path, help="the model's weights: an official SAM .pth "
                   "or a train_toy.py checkpoint (default for toy: lessons/toy_sam.pt; other "
                   "configs without one get random weights, good for timing only)")
    p.add_argument("--quantize", action="store_true", help="run the decoder with int8 weights "
                   "(onnxruntime's dynamic quantisation, as the official notebook offers)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--export-only", type=Path, metavar="DIR",
                      help="write decoder.onnx, embedding.npy, image.png and demo.json to DIR "
                      "and serve nothing")
    mode.add_argument("--port", type=int, default=8000, help="the port to serve on (0: any "
                      "free port); the page's URL is the first line printed")
    return p.parse_args(argv)


def quantize(path: Path) -> None:
    """Replace the ONNX model at `path` by its dynamically quantised version: weights of the
    matmuls stored as uint8, activations quantised on the fly (the official notebook's call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    full = path.with_name("decoder_fp32.onnx")
    path.rename(full)
    quantize_dynamic(full, path, per_channel=False, reduce_range=False,
                     weight_type=QuantType.QUInt8)
    full.unlink()


def prepare(args, folder: Path) -> str:
    """Build the model, export the page's files to `folder`; returns a line saying what."""
    checkpoint = args.checkpoint or (TOY_CHECKPOINT if args.config == "toy" else None)
    try:
        image = (make_sample(EVAL_SEEDS[3])[0] if args.image is None  # several nested parts
                 else load_image(args.image))
        export_page_data(minisam.build_sam(args.config, checkpoint=checkpoint), image, folder)
    except (ValueError, TypeError) as e:
        sys.exit(f"web_demo.py: {e}")
    if args.quantize:
        quantize(folder / "decoder.onnx")
    sizes = ", ".join(f"{name} {(folder / name).stat().st_size / 2**20:.2f} MiB"
                      for name in ("decoder.onnx", "embedding.npy", "image.png"))
    return (f"{args.config} ({checkpoint or 'random weights'}), image {image.shape[1]}x"
            f"{image.shape[0]}: {sizes}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.export_only is not None:
        args.export_only.mkdir(parents=True, exist_ok=True)
        print(f"wrote {args.export_only}: {prepare(args, args.export_only)}")
        return
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        sys.exit(f"web_demo.py: {WEB / 'node_modules'} has no onnxruntime-web: run "
                 "(cd lessons/web && npm ci) first")
    # served from a folder that goes when the server stops, by Ctrl-C or by a kill
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="minisam_web_") as folder:
        summary = prepare(args, Path(folder))
        server = serve(Path(folder), args.port)
        print(f"http://127.0.0.1:{server.server_address[1]}/", flush=True)
        print(f"{summary}; Ctrl-C stops", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
