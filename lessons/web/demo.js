// demo.js: the browser half of lessons/web_demo.py (its docstring explains the whole).
// It loads the exported decoder, the image and the image's embedding once, then answers each
// click, shift-click or drag by one run of the prompt encoder and mask decoder, here in the
// browser, with ONNX Runtime Web on a single WebAssembly thread.
"use strict";

// What tests read: `ready` says the decoder is loaded and warm, `last` is the last answer and
// `answers` counts them.
window.minisam = { ready: false, last: null, answers: 0 };

// ONNX Runtime's WebAssembly comes from the package served beside this page (no CDN). One
// thread: more would need SharedArrayBuffer, which browsers give only to pages served with
// cross-origin isolation headers, and the toy decoder is fast enough without.
ort.env.wasm.wasmPaths = "/node_modules/onnxruntime-web/dist/";
ort.env.wasm.numThreads = 1;

const DRAG = 5;  // screen pixels a press must move before it is a box rather than a click
const DISPLAY = 512;  // the image is shown about this many screen pixels on its long side
const view = document.getElementById("view");  // image and mask, at the image's pixels
const marks = document.getElementById("marks");  // clicks and box, at the screen's pixels
const status = document.getElementById("status");

// minisam.ResizeLongestSide.get_preprocess_shape. JavaScript's numbers are float64 like
// Python's floats, so the same operations round the same way, pixel for pixel.
function resizedSize(h, w, longSide) {
  const scale = longSide / Math.max(h, w);
  return [Math.max(1, Math.floor(h * scale + 0.5)), Math.max(1, Math.floor(w * scale + 0.5))];
}

// A .npy file (version 1, little-endian float32, as numpy.save writes the embedding) as an
// ort.Tensor. The header is a Python dict literal; numpy pads it so the data is aligned.
function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const headerLength = bytes[8] | (bytes[9] << 8);
  const header = new TextDecoder().decode(bytes.subarray(10, 10 + headerLength));
  if (bytes[6] !== 1 || !header.includes("'<f4'") || header.includes("'fortran_order': True")) {
    throw new Error(`embedding.npy: expected a version 1 float32 C-order file, got ${header}`);
  }
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(",")
    .filter((s) => s.trim() !== "").map(Number);
  return new ort.Tensor("float32", new Float32Array(buffer, 10 + headerLength), shape);
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`could not load ${url}`));
    image.src = url;
  });
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function main() {
  const info = await (await fetch("/data/demo.json")).json();
  const [session, embedding, image] = await Promise.all([
    ort.InferenceSession.create("/data/decoder.onnx", { executionProviders: ["wasm"] }),
    fetch("/data/embedding.npy").then((r) => r.arrayBuffer()).then(parseNpy),
    loadImage("/data/image.png"),
  ]);
  const H = image.naturalHeight, W = image.naturalWidth;
  // prompts go to the model's input frame per axis, after rounding, as apply_coords does
  const [h, w] = resizedSize(H, W, info.input_side);
  const scaleX = w / W, scaleY = h / H;
  const lowRes = 4 * embedding.dims[2];  // the decoder's mask side, 4g

  // A small image is enlarged by a whole factor (each pixel a square), a large one shrunk.
  const zoom = Math.max(H, W) < DISPLAY ? Math.floor(DISPLAY / Math.max(H, W))
    : DISPLAY / Math.max(H, W);
  view.width = W; view.height = H;
  marks.width = Math.round(W * zoom); marks.height = Math.round(H * zoom);
  view.style.width = `${marks.width}px`; view.style.height = `${marks.height}px`;
  const context = view.getContext("2d");
  context.drawImage(image, 0, 0);
  const original = context.getImageData(0, 0, W, H);  // redrawn under every new mask

  let clicks = [];  // {x, y, label} in image pixels: 1 foreground, 0 background
  let box = null;  // [x0, y0, x1, y1] in image pixels
  let previous = null;  // the last answer's low-res logits (4g * 4g), the next mask prompt
  const times = [];  // ms of each decode after the warm-up

  // One run of the exported model: the official interface (web_demo.py's docstring).
  async function decode(clicks, box, previous) {
    const rows = clicks.map((c) => [c.x * scaleX, c.y * scaleY, c.label]);
    if (box) {  // the corners as two more points, labels 2 and 3
      rows.push([box[0] * scaleX, box[1] * scaleY, 2], [box[2] * scaleX, box[3] * scaleY, 3]);
    } else {  // no box: the padding point the decoder was trained to see in its place
      rows.push([0, 0, -1]);
    }
    const feeds = {
      image_embeddings: embedding,
      point_coords: new ort.Tensor("float32", Float32Array.from(rows.flatMap((r) => [r[0], r[1]])),
        [1, rows.length, 2]),
      point_labels: new ort.Tensor("float32", Float32Array.from(rows.map((r) => r[2])),
        [1, rows.length]),
      mask_input: new ort.Tensor("float32", previous || new Float32Array(lowRes * lowRes),
        [1, 1, lowRes, lowRes]),
      has_mask_input: new ort.Tensor("float32", Float32Array.of(previous ? 1 : 0), [1]),
      orig_im_size: new ort.Tensor("float32", Float32Array.of(H, W), [2]),
    };
    const start = performance.now();
    const out = await session.run(feeds);
    const ms = performance.now() - start;
    return { logits: out.masks.data, iou: out.iou_predictions.data[0],
             lowRes: out.low_res_masks.data, ms };
  }

  function draw(mask) {
    const picture = new ImageData(new Uint8ClampedArray(original.data), W, H);
    for (let i = 0; i < W * H; i++) {  // the mask in blue over the image
      if (mask && mask[i]) {
        picture.data[4 * i] = 0.45 * picture.data[4 * i] + 0.55 * 30;
        picture.data[4 * i + 1] = 0.45 * picture.data[4 * i + 1] + 0.55 * 144;
        picture.data[4 * i + 2] = 0.45 * picture.data[4 * i + 2] + 0.55 * 255;
      }
    }
    context.putImageData(picture, 0, 0);
    const pen = marks.getContext("2d");
    pen.clearRect(0, 0, marks.width, marks.height);
    const centre = (v) => (v + 0.5) * zoom;  // a pixel index names the pixel's centre
    if (box) {
      pen.lineWidth = 2; pen.strokeStyle = "white";
      pen.strokeRect(centre(box[0]), centre(box[1]), (box[2] - box[0]) * zoom,
        (box[3] - box[1]) * zoom);
    }
    for (const c of clicks) {
      pen.beginPath(); pen.arc(centre(c.x), centre(c.y), 6, 0, 2 * Math.PI);
      pen.fillStyle = c.label === 1 ? "lime" : "red"; pen.fill();
      pen.lineWidth = 1.5; pen.strokeStyle = "black"; pen.stroke();
    }
  }

  async function answer() {
    const result = await decode(clicks, box, previous);
    previous = result.lowRes;
    times.push(result.ms);
    const mask = new Uint8Array(W * H);
    for (let i = 0; i < W * H; i++) mask[i] = result.logits[i] > 0 ? 1 : 0;
    draw(mask);
    window.minisam.last = { clicks: clicks.map((c) => ({ ...c })), box: box && [...box],
                            mask, width: W, height: H, iou: result.iou, ms: result.ms };
    window.minisam.answers += 1;
    status.textContent = `predicted IoU ${result.iou.toFixed(3)}; decode ${result.ms.toFixed(1)}`
      + ` ms (median of ${times.length}: ${median(times).toFixed(1)} ms)`;
  }

  function clear() {
    clicks = []; box = null; previous = null;
    draw(null);
    status.textContent = "cleared";
  }

  // image pixel under a mouse event (CSS pixels on the marks canvas)
  const pixel = (event) => [Math.min(W - 1, Math.max(0, Math.floor(event.offsetX / zoom))),
                            Math.min(H - 1, Math.max(0, Math.floor(event.offsetY / zoom)))];
  let press = null;
  marks.addEventListener("contextmenu", (event) => event.preventDefault());
  marks.addEventListener("mousedown", (event) => { press = event; });
  marks.addEventListener("mouseup", (event) => {
    if (!press) return;
    const [x0, y0] = pixel(press), [x1, y1] = pixel(event);
    const dragged = Math.hypot(event.offsetX - press.offsetX, event.offsetY - press.offsetY) > DRAG;
    const background = press.shiftKey || press.button === 2;
    press = null;
    if (dragged) {
      box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
    } else {
      clicks.push({ x: x0, y: y0, label: background ? 0 : 1 });
    }
    answer();
  });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") clear(); });

  // The first run pays for ONNX Runtime's one-time set-up; it is timed apart and not shown.
  const warmUp = await decode([{ x: W / 2, y: H / 2, label: 1 }], null, null);
  draw(null);
  status.textContent = `ready: ${W}x${H} image, embedding ${embedding.dims.join("x")}; first `
    + `decode (warm-up) ${warmUp.ms.toFixed(1)} ms`;
  window.minisam.ready = true;
}

main().catch((error) => {
  status.textContent = `error: ${error.message}`;
  window.minisam.error = String(error);
});
