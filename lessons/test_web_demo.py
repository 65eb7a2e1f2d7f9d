"""Tests of lessons/web_demo.py: the exported decoder must answer as minisam's SamPredictor
does, first in ONNX Runtime from Python, then in a real browser (headless Chromium driven by
Selenium), where the page's own JavaScript turns a mouse click into the model's inputs.

The browser test needs Debian's chromium and chromium-driver, selenium, and lessons/web's
node_modules (npm ci). On a machine without them it is skipped, saying what is missing; in CI
(the CI variable set) it fails instead, so that it can never silently not run there.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "lessons")]
import minisam  # noqa: E402
import web_demo  # noqa: E402
from train_toy import EVAL_SEEDS, interior_point, make_sample  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TOLERANCE = 1e-4  # on logits and IoUs; the binary masks must be identical
NON_SQUARE = (48, 80)  # height, width of the image whose axes are scaled apart


def needed(what: str) -> None:
    """A missing requirement of a test: a failure in CI, a skip that says why elsewhere."""
    message = f"{what} is missing (see lessons/test_web_demo.py's docstring)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def sam():
    return minisam.build_sam("toy", checkpoint=web_demo.TOY_CHECKPOINT)


def toy_image(height: int, width: int) -> np.ndarray:
    """A held-out toy image with several nested parts, resized to (height, width)."""
    image = torch.from_numpy(make_sample(EVAL_SEEDS[3])[0]).permute(2, 0, 1)[None].float()
    image = F.interpolate(image, (height, width), mode="bilinear", antialias=True)
    return image[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def expected(predictor: minisam.SamPredictor, points, labels, box, mask_input):
    """What the exported model must return, from SamPredictor and the official ONNX model's
    rule: the prompt has P rows (the points, then a box's two corners or else one padding
    point); with P <= 2 (a single click, or a box alone) the best of the three multimask
    outputs by predicted IoU answers, otherwise the single-output mask.
    Returns mask logits (H, W), predicted IoU, low-res logits (4g, 4g)."""
    rows = len(points) + (2 if box is not None else 1)
    multimask = rows <= 2
    masks, ious, low_res = predictor.predict(
        point_coords=np.array(points) if points else None,
        point_labels=np.array(labels) if points else None,
        box=box, mask_input=mask_input, multimask_output=multimask, return_logits=True)
    k = int(ious.argmax()) if multimask else 0
    return masks[k], ious[k], low_res[k]


def assert_same_answer(answer, logits, iou, low_res=None):
    """answer: the page's or ONNX Runtime's (mask logits or 0/1 mask (H, W), IoU, low-res)."""
    mask, answer_iou = answer[0], answer[1]
    if mask.dtype != np.uint8:  # logits: compare them too, then threshold as the page does
        assert np.abs(mask - logits).max() <= TOLERANCE
        mask = mask > 0
    np.testing.assert_array_equal(mask.astype(bool), logits > 0)
    assert abs(answer_iou - iou) <= TOLERANCE
    if low_res is not None:
        assert np.abs(answer[2] - low_res).max() <= TOLERANCE


def test_choose_output_is_the_official_rule():
    """Outputs are token 0 (single mask) then the multimask tokens 1..3."""
    ious = torch.tensor([[0.9, 0.1, 0.7, 0.3]])
    for rows, index in [(1, 2), (2, 2), (3, 0), (7, 0)]:
        assert web_demo.choose_output(ious, torch.zeros(1, rows)).tolist() == [index]


def test_resized_size_is_resize_longest_side():
    """The traced size rule must round exactly as Python's, for every shape of image."""
    for side in (64, 1024):
        for h in [*range(1, 130), 479, 480, 481, 1500, 2250, 3000]:
            for w in (1, 7, 48, 64, 80, 333, 1000, 2250):
                ours = web_demo.resized_size(torch.tensor([h, w], dtype=torch.float), side)
                assert tuple(ours.tolist()) == minisam.ResizeLongestSide.get_preprocess_shape(
                    h, w, side), (h, w, side)


@pytest.mark.parametrize("height, width", [(64, 64), NON_SQUARE])
def test_exported_decoder_answers_as_the_predictor(sam, tmp_path, height, width):
    """ONNX Runtime on the exported toy decoder against SamPredictor: 1, 2 and 3 clicks, a box
    alone, a box with a click, a click refined by a mask prompt; square and non-square."""
    try:
        import onnxruntime
    except ImportError:
        needed("onnxruntime (pip install -r requirements-test.txt)")
    session = onnxruntime.InferenceSession(str(web_demo.export_decoder(sam, tmp_path / "d.onnx")))
    predictor = minisam.SamPredictor(sam)
    predictor.set_image(toy_image(height, width))
    H, W = height, width
    fg, fg2, bg = [0.45 * W, 0.3 * H], [0.7 * W, 0.6 * H], [0.1 * W, 0.9 * H]
    box = np.array([0.2 * W, 0.15 * H, 0.8 * W, 0.7 * H])
    previous = expected(predictor, [fg], [1], None, None)[2][None]  # (1, 4g, 4g)
    prompts = [([fg], [1], None, None), ([fg, bg], [1, 0], None, None),
               ([fg, bg, fg2], [1, 0, 1], None, None), ([], [], box, None),
               ([fg], [1], box, None), ([fg, bg], [1, 0], None, previous)]
    for prompt in prompts:
        masks, ious, low_res = session.run(None, web_demo.onnx_inputs(predictor, *prompt))
        assert masks.shape == (1, 1, H, W) and ious.shape == (1, 1)
        assert_same_answer((masks[0, 0], ious[0, 0], low_res[0, 0]),
                           *expected(predictor, *prompt))


def test_the_page_segments_as_the_predictor(tmp_path):
    """Headless Chromium loads the page for a non-square toy image (48 x 80, so each axis is
    scaled apart), clicks on an object, shift-clicks the background, then starts again with
    a dragged box; after each, the page's mask equals SamPredictor's for the same prompts."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
    except ImportError:
        needed("selenium (pip install -r requirements-test.txt)")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        needed(f"{CHROMIUM} or {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    if not (web_demo.WEB / "node_modules" / "onnxruntime-web").is_dir():
        needed("lessons/web/node_modules ((cd lessons/web && npm ci))")

    from PIL import Image
    H, W = NON_SQUARE
    image = toy_image(H, W)
    Image.fromarray(image).save(tmp_path / "toy.png")
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "lessons" / "web_demo.py"), "--image", str(tmp_path / "toy.png"),
         "--port", "0"], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1200,1000"):
        options.add_argument(argument)
    browser = None
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), f"web_demo.py printed {url!r}, not its URL"
        browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        browser.get(url)
        deadline = time.monotonic() + 60
        while not browser.execute_script("return window.minisam.ready || window.minisam.error"):
            assert time.monotonic() < deadline, "the page did not load its decoder in 60 s"
            time.sleep(0.1)
        assert browser.execute_script("return window.minisam.error || null") is None
        marks = browser.find_element(By.ID, "marks")
        zoom = marks.size["width"] / W  # screen pixels per image pixel, a whole number here

        def at(x, y):
            """Selenium's offset (from the canvas's centre) of image pixel (x, y)'s centre."""
            return (round((x + 0.5) * zoom - marks.size["width"] / 2),
                    round((y + 0.5) * zoom - marks.size["height"] / 2))

        def answer(count):
            """The page's answer once it has answered `count` prompts in all."""
            script = ("const l = window.minisam.last; return l && {...l, mask: "
                      "Array.from(l.mask)}")
            deadline = time.monotonic() + 10
            while (browser.execute_script("return window.minisam.answers || 0") < count):
                assert time.monotonic() < deadline, "the page did not answer within 10 s"
                time.sleep(0.02)
            last = browser.execute_script(script)
            assert (last["width"], last["height"]) == (W, H)
            return last, np.array(last["mask"], dtype=np.uint8).reshape(H, W)

        predictor = minisam.SamPredictor(minisam.build_sam("toy", web_demo.TOY_CHECKPOINT))
        predictor.set_image(image)
        truths = F.interpolate(torch.from_numpy(make_sample(EVAL_SEEDS[3])[1])[None].float(),
                               (H, W))[0] > 0.5  # the world's masks at the page's size
        x, y = interior_point(truths[truths.sum((1, 2)).argmin()][None])[0].int().tolist()
        ActionChains(browser).move_to_element_with_offset(marks, *at(x, y)).click().perform()
        last, mask = answer(1)
        assert last["clicks"] == [{"x": x, "y": y, "label": 1}]
        logits, iou, low_res = expected(predictor, [[x, y]], [1], None, None)
        assert mask.any() and mask[y, x]  # an object, not nothing
        assert_same_answer((mask, last["iou"]), logits, iou)

        bx, by = np.argwhere(~mask.astype(bool))[len(mask) // 2][::-1].tolist()  # outside
        (ActionChains(browser).key_down(Keys.SHIFT).move_to_element_with_offset(marks, *at(bx, by))
         .click().key_up(Keys.SHIFT).perform())
        last, mask = answer(2)
        assert last["clicks"][1] == {"x": bx, "y": by, "label": 0}
        assert_same_answer((mask, last["iou"]), *expected(
            predictor, [[x, y], [bx, by]], [1, 0], None, low_res[None])[:2])

        ActionChains(browser).send_keys(Keys.ESCAPE).perform()
        box = [W // 5, H // 6, 4 * W // 5, 3 * H // 4]
        (ActionChains(browser).move_to_element_with_offset(marks, *at(*box[:2])).click_and_hold()
         .move_to_element_with_offset(marks, *at(*box[2:])).release().perform())
        last, mask = answer(3)
        assert last["clicks"] == [] and last["box"] == box
        assert_same_answer((mask, last["iou"]),
                           *expected(predictor, [], [], np.array(box), None)[:2])
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=10)


def test_export_refuses_what_it_cannot_export(sam, tmp_path):
    with pytest.raises(TypeError, match="sam must be a minisam.Sam"):
        web_demo.export_decoder(sam.mask_decoder, tmp_path / "decoder.onnx")
    with pytest.raises(ValueError, match="no folder"):
        web_demo.export_decoder(sam, tmp_path / "missing" / "decoder.onnx")


# -----------------------------------------------------------------------------
# Lesson 14's numbers: recomputed here, read from the code, or quoted from where they were measured

LESSON = " ".join((ROOT / "lessons" / "14_web_demo.md").read_text().split())


WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def quoted(*phrases: str) -> None:
    missing = [p for p in phrases if p not in LESSON]
    assert not missing, "not quoted as the code says:\n" + "\n".join(missing)


def table_row(path: Path, first_cell: str) -> list:
    """The cells after `first_cell` of a markdown table row in `path`."""
    (line,) = [l for l in path.read_text().splitlines() if l.startswith(f"| {first_cell} |")]
    return [cell.strip() for cell in line.split("|")[2:-1]]


@pytest.mark.slow
def test_lesson_14_decoder_file_sizes(sam, tmp_path):
    """decoder.onnx as export_decoder writes it, and after --quantize, for the shipped toy
    model and ViT-B's shapes (random weights: the size depends on shapes only)."""
    pytest.importorskip("onnxruntime")
    sizes = {}
    for name, model in (("toy", sam), ("vit_b", minisam.build_sam("vit_b"))):
        path = web_demo.export_decoder(model, tmp_path / f"{name}.onnx")
        full = path.stat().st_size / 2**20
        web_demo.quantize(path)
        sizes[name] = full, path.stat().st_size / 2**20
    (toy, toy_int8), (vit_b, vit_b_int8) = sizes["toy"], sizes["vit_b"]
    quoted(f"| decoder.onnx, float32, sent once | {toy:.2f} MiB | {vit_b:.1f} MiB |",
           f"| decoder.onnx, int8 weights (`--quantize`) | {toy_int8:.2f} MiB | "
           f"{vit_b_int8:.1f} MiB |",
           f"Int8 weights shrink ViT-B's file {vit_b / vit_b_int8:.1f} times")


def test_lesson_14_sizes_versions_and_quoted_timings():
    """Embedding sizes from the configs, the pinned ONNX Runtime Web and its thread count,
    the timings quoted from lesson 6 and the README, and the prose read off the table."""
    cells = []
    for name in ("toy", "vit_b"):
        cfg = minisam.CONFIGS[name]
        C, g = cfg.prompt_embed_dim, cfg.image_embedding_size
        size = C * g * g * 4  # float32
        cells.append(f"{C} x {g} x {g}: " + (f"{size // 2**10} KiB" if size < 2**20
                                                else f"{size // 2**20} MiB"))
    quoted(f"| image embedding (float32), sent once per image | {cells[0]} | {cells[1]} |")
    lesson_6 = ROOT / "lessons" / "06_predictor_and_real_time.md"
    toy_encoder = table_row(lesson_6, "toy checkpoint, 64x64")[0]
    vit_b_encoder = table_row(lesson_6, "ViT-B, random weights, 1024x1024")[0]
    readme = table_row(ROOT / "README.md",
                       "`SamPredictor.predict` per click after `set_image`, toy")
    quoted(f"| encoder, {toy_encoder} (lesson 6) | encoder, {vit_b_encoder} (lesson 6) |",
           f'`predict` in torch: {readme[0]} (README, "Speed")')
    lock = json.loads((web_demo.WEB / "package-lock.json").read_text())
    threads = re.search(r"ort\.env\.wasm\.numThreads = (\d+);",
                        (web_demo.WEB / "demo.js").read_text()).group(1)
    version = lock["packages"]["node_modules/onnxruntime-web"]["version"]
    quoted(f"ONNX Runtime Web {version} on {WORDS[int(threads)]} WebAssembly thread")
    toy, vit_b = table_row(ROOT / "lessons" / "14_web_demo.md", "toy"), table_row(
        ROOT / "lessons" / "14_web_demo.md", "ViT-B")
    ms = lambda cell: float(cell.split(" ms")[0])  # noqa: E731 (the median, before its range)
    in_python = re.search(r"ONNX Runtime in Python, 1 thread: (\d+) ms", vit_b[2]).group(1)
    g = minisam.CONFIGS["vit_b"].image_embedding_size
    quoted(f"The toy decoder answers in {ms(toy[0]):.0f} ms",
           f"ViT-B's decoder takes about {round(ms(vit_b[0]), -1):.0f} ms, "
           f"{WORDS[round(ms(vit_b[0]) / 50)]} times the paper's ~50 ms",
           f"The same ONNX file runs in {in_python} ms in native ONNX Runtime",
           f"save only {1 - ms(vit_b[1]) / ms(vit_b[0]):.0%} of its time",
           f"({g * g} image tokens through attention")


def test_lesson_14_exercise_1_one_scale_for_both_axes(sam):
    """The non-square image of the browser test clicked where that test clicks, with the page's
    per-axis scales and with one scale for both: how far the click moves, and the IoU."""
    H, W = NON_SQUARE
    side = sam.image_encoder.img_size
    h, w = minisam.ResizeLongestSide.get_preprocess_shape(H, W, side)
    scale = side / max(H, W)
    predictor = minisam.SamPredictor(sam)
    predictor.set_image(toy_image(H, W))
    truths = F.interpolate(torch.from_numpy(make_sample(EVAL_SEEDS[3])[1])[None].float(),
                           (H, W))[0] > 0.5
    click = interior_point(truths[truths.sum((1, 2)).argmin()][None])[0].numpy()

    def best_iou(coords):
        with torch.no_grad():
            ious = predictor.predict_torch(torch.tensor(coords, dtype=torch.float)[None, None],
                                           torch.ones(1, 1, dtype=torch.int))[1]
        return ious.max().item()

    difference = abs(best_iou(click * [w / W, h / H]) - best_iou(click * scale))
    assert np.allclose(click * [w / W, h / H],
                       predictor.transform.apply_coords(click[None], (H, W))[0])
    quoted(f"on the {H} x {W} image the page's IoU differs from Python's by about "
           f"{difference:.0e}".replace("e-0", "e-"),
           f"({H} x {scale:g} = {H * scale:g} becomes {h})",
           f"scaled by {h}/{H} = {h / H:.3f} vertically and {w / W:g} horizontally",
           f"up to {H * scale - h:.1f} pixel of the model's frame")
