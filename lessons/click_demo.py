"""
click_demo.py: click on an image and watch SAM's masks follow, in real time.

    python lessons/click_demo.py                          # held-out toy images, lessons/toy_sam.pt
    python lessons/click_demo.py --image photo.jpg --config vit_b --checkpoint sam_vit_b_01ec64.pth
    python lessons/click_demo.py --save session.png       # no window: a scripted click, saved
    python lessons/click_demo.py --benchmark              # time the encoder and the clicks
    python lessons/click_demo.py --benchmark --config vit_b   # ViT-B shapes, random weights

In the window:
    left click   a foreground point (green plus)   right click   a background point (red cross)
    drag         a box (yellow)                    a             the automatic masks
    n            the next toy image                escape        clear the prompts
    t            type a caption ("blue snowman"), enter to prompt with it (the toy model only:
                 lesson 12's text prompts; clicks after it correct it, a box drops it)

The image is shown in grey and a mask in blue, as in every figure (train_toy.py, "4. Pictures").

This is SAM's design at work (paper section 3, "Efficiency"; lesson 6): the heavy image
encoder runs once, when an image is shown, and every click runs only the light prompt encoder
and mask decoder, then redraws. A single click is ambiguous, so it gets three masks (subpart,
part, whole; lesson 0), each with the IoU the model predicts for it. A second point or a box
removes the ambiguity: then the single-output head answers, fed the logits of the previous
best mask as a mask prompt, the way the paper's annotation tool refined a mask click by click.
On the toy world the true IoU (against the closest of the world's valid masks) is shown too.
"""

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import torch
from matplotlib.artist import Artist
from matplotlib.backend_bases import FigureManagerBase, KeyEvent, MouseButton, MouseEvent
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# the lesson scripts live one level below the package's two modules
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minisam  # noqa: E402
from train_toy import (AUTOMATIC_ALPHA, BOX, CLICKS, EDGED, EVAL_SEEDS, FILL_ALPHA,  # noqa: E402
                       GREYS, PREDICTED, TOY_AMG_SETTINGS, grey, interior_point, make_sample)

TOY_CHECKPOINT = Path(__file__).resolve().parent / "toy_sam.pt"
FIGSIZE = (13, 4.6)  # inches: the prompt panel and three mask panels side by side
# A panel of the window is about 310 screen pixels wide, so an image is shown with at most
# this many pixels a side (every 4th pixel of a 1024 px image, every pixel of a 64 px one):
# drawing a 1024 px image at full size would cost several times what the decoder
# does, and a picture a little smaller than its panel loses no row or column on screen.
DISPLAY_SIDE = 300
DRAG = 5  # screen pixels a press must move before it is a box rather than a click
# The demo draws as every figure of the project does, by the rules of train_toy.py's section
# "4. Pictures" and with its colours: the image in grey (the toy world's random colours leave
# no colour safe on top of them), a model's mask a blue fill (PREDICTED), a foreground click a
# green plus and a background click a red cross (CLICKS), a box prompt a yellow frame (BOX),
# all edged in black (EDGED). The demo shows no true mask, so nothing is outlined in white.


# -----------------------------------------------------------------------------
# Reading an image, and drawing masks over it


def load_image(path) -> np.ndarray:
    """A PNG or JPEG file as the uint8 (H, W, 3) RGB array SamPredictor takes, or a
    ValueError that names the file. Grey images are repeated into three channels and an alpha
    channel is dropped. The file is only read."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {str(path)!r}: no such file")
    try:
        image = matplotlib.image.imread(path)  # Pillow underneath: PNG, JPEG and the rest
    except Exception as e:  # Pillow's errors come in many types; all mean the same here
        raise ValueError(f"image {str(path)!r} is not a readable image (PNG or JPEG): "
                         f"{type(e).__name__}: {e}") from None
    if image.dtype != np.uint8:  # PNGs come back as floats in [0, 1], whatever their depth
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.dstack([image] * 3)
    return image[..., :3].copy()  # Pillow's arrays are read-only; torch wants to own one


def greyed(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> the (h, w, 3) uint8 grey picture train_toy.show draws of it: its
    luminance (train_toy.grey) in mid greys, through the same colour map."""
    low, high = GREYS
    return matplotlib.colormaps["gray"]((grey(image) - low) / (high - low), bytes=True)[..., :3]


def tinted(picture: np.ndarray, colour, alpha: float) -> np.ndarray:
    """uint8 `picture` under `colour` (RGB in [0, 1]) of opacity `alpha`, as train_toy.fill
    lays it over the image."""
    return ((1 - alpha) * picture + alpha * 255 * np.asarray(colour)).round().astype(np.uint8)


class ScreenPicture(Artist):
    """An opaque uint8 RGBA picture drawn in its axes the way imshow(interpolation="none")
    draws it: every screen pixel shows the picture pixel under its centre. imshow's general
    path (resampling, masked arrays, colour mapping) takes about 9 ms per panel on every
    click; this is one gather of 32-bit pixels and a copy, under 1 ms.

    rgba: (h, w, 4), written in place by its Panel; it spans `extent` = (width, height) data
    units (image pixels) from (-0.5, -0.5), the frame imshow's `extent` would give it."""

    def __init__(self, ax, rgba: np.ndarray, extent: tuple):
        super().__init__()
        self.rgba, self.extent = rgba, extent
        ax.add_artist(self)

    def draw(self, renderer) -> None:
        if not self.get_visible():
            return
        (left, bottom), (right, top) = self.axes.bbox.get_points()  # the axes, screen pixels
        # the centres of the screen pixels whose centres lie in the axes
        x = np.arange(math.ceil(left - 0.5), math.floor(right - 0.5) + 1) + 0.5
        y = np.arange(math.ceil(bottom - 0.5), math.floor(top - 0.5) + 1) + 0.5
        to_data = self.axes.transData.inverted()
        columns = to_data.transform(np.column_stack([x, np.full_like(x, y[0])]))[:, 0]
        rows = to_data.transform(np.column_stack([np.full_like(y, x[0]), y]))[:, 1]
        h, w = self.rgba.shape[:2]
        j = np.floor((columns + 0.5) / self.extent[0] * w).astype(int)  # picture column
        i = np.floor((rows + 0.5) / self.extent[1] * h).astype(int)  # picture row, bottom up
        inside_j, inside_i = (j >= 0) & (j < w), (i >= 0) & (i < h)  # a zoom may show less
        if not inside_j.any() or not inside_i.any():
            return
        pixels = self.rgba.view(np.uint32)[..., 0]  # (h, w): a pixel's 4 bytes as one number
        screen = pixels.take(i[inside_i], 0).take(j[inside_j], 1)  # (rows, columns), bottom up
        gc = renderer.new_gc()
        # the renderer puts the array's first row at the bottom, at (x, y) in screen pixels
        renderer.draw_image(gc, x[inside_j][0] - 0.5, y[inside_i][0] - 0.5,
                            screen.view(np.uint8).reshape(*screen.shape, 4))
        gc.restore()


class Panel:
    """One axes of the figure: a fixed title, and what changes with the prompts: the picture
    (the image with the masks painted in), the clicks, the box and a note under the picture.
    Those are `animated`: a full draw of the figure leaves them out, and ClickDemo draws them
    itself on every frame."""

    def __init__(self, ax, image: np.ndarray, title: str):
        H, W = image.shape[:2]
        # The picture has at most DISPLAY_SIDE pixels a side: every `step`-th pixel of a large
        # image, every pixel of a small one.
        self.step = max(1, math.ceil(max(H, W) / DISPLAY_SIDE))
        self.shown = greyed(self.resize(image))  # (h, w, 3)
        self.masked = tinted(self.shown, PREDICTED, FILL_ALPHA)  # all of it under a model's mask
        # the picture is opaque uint8 RGBA, the form the renderer copies as it is
        self.rgba = np.full((*self.shown.shape[:2], 4), 255, np.uint8)
        self.rgba[..., :3] = self.shown
        ax.clear()
        ax.set_title(title, fontsize=10)
        # a shown pixel covers `step` image pixels a side: the axes keep the image's pixel frame
        h, w = np.array(self.shown.shape[:2]) * self.step
        self.picture = ScreenPicture(ax, self.rgba, extent=(w, h))
        self.positives, = ax.plot([], [], markersize=10, **CLICKS[1])
        self.negatives, = ax.plot([], [], markersize=10, **CLICKS[0])
        self.box = ax.add_patch(Rectangle((0, 0), 0, 0, fill=False, edgecolor=BOX,
                                          linewidth=1.6, path_effects=EDGED, visible=False))
        self.note = ax.text(0.5, -0.03, "", transform=ax.transAxes, ha="center", va="top",
                            fontsize=10)
        self.artists = [self.picture, self.positives, self.negatives, self.box, self.note]
        for artist in self.artists:
            artist.set_animated(True)
        ax.set(xlim=(-0.5, W - 0.5), ylim=(H - 0.5, -0.5), aspect="equal")
        ax.set_axis_off()
        self.ax = ax

    def resize(self, array: np.ndarray) -> np.ndarray:
        """An (H, W, ...) image or mask at the picture's size."""
        return array[::self.step, ::self.step]

    def show_masks(self, masks: list, fills: list = None) -> None:
        """Full-size (H, W) bool masks on the grey image: a model's masks in blue (PREDICTED),
        or, given `fills` (RGB in [0, 1]), each in its own colour, one over the other."""
        shown = [self.resize(m) for m in masks]
        rgb = self.rgba[..., :3]  # a view: writing it writes the picture
        np.copyto(rgb, self.shown)
        if fills is not None:
            for mask, colour in zip(shown, fills):
                rgb[mask] = tinted(rgb[mask], colour, AUTOMATIC_ALPHA)
        elif shown:
            np.copyto(rgb, self.masked, where=np.logical_or.reduce(shown)[..., None])

    def show_prompts(self, points: list, labels: list, box) -> None:
        for line, label in ((self.positives, 1), (self.negatives, 0)):
            line.set_data([x for (x, _), l in zip(points, labels) if l == label],
                          [y for (_, y), l in zip(points, labels) if l == label])
        self.show_box(box)

    def show_box(self, box) -> None:
        if box is not None:
            x0, y0, x1, y1 = box
            self.box.set_bounds(x0, y0, x1 - x0, y1 - y0)
        self.box.set_visible(box is not None)


# -----------------------------------------------------------------------------
# The demo: state, the handlers that change it, and drawing it fast


class ClickDemo:
    """Promptable segmentation of one image at a time, on any matplotlib figure: a window, or
    an Agg canvas for the tests, --save and --benchmark (`send_click` and `send_key` feed
    those the same events a mouse and keyboard would).

    predictor: a SamPredictor; image: uint8 (H, W, 3); truth: (K, H, W) bool valid masks, to
    print each mask's true IoU, or None; automatic: a SamAutomaticMaskGenerator for the key
    `a`, or None; next_sample: a function returning the next (image, truth) for the key `n`,
    or None; captions: a text_prompts.CaptionPredictor for the key `t`, or None. The first
    panel shows the prompts and the best mask, the other three each mask.
    `timings` holds the seconds of the last encoder run, decoder run and drawing."""

    def __init__(self, predictor: minisam.SamPredictor, image: np.ndarray, fig: Figure,
                 truth: np.ndarray = None, automatic=None, next_sample=None, captions=None):
        self.predictor, self.fig = predictor, fig
        self.automatic, self.next_sample, self.captions = automatic, next_sample, captions
        self.typing = None  # the caption being typed, or None
        self.axes = list(fig.subplots(1, 4))
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.13, top=0.8, wspace=0.04)
        # the encoder's time changes once per image, the click's on every frame
        self.encoder_text = fig.text(0.01, 0.97, "", va="top", fontsize=10)
        self.status = fig.text(0.99, 0.97, "", ha="right", va="top", fontsize=10, animated=True)
        keys = ["left click: foreground point (green plus)", "right click: background point "
                "(red cross)", "drag: box", "a: automatic masks" if automatic else None,
                "n: next image" if next_sample else None,
                "t: type a caption" if captions else None, "escape: clear"]
        fig.text(0.5, 0.02, "   |   ".join(k for k in keys if k), ha="center", fontsize=9)
        for name, handler in (("draw_event", self.on_draw),
                              ("button_press_event", self.on_press),
                              ("motion_notify_event", self.on_motion),
                              ("button_release_event", self.on_release),
                              ("key_press_event", self.on_key)):
            fig.canvas.mpl_connect(name, handler)
        self.pressed = None  # the button press of a click or drag in progress
        self.set_image(image, truth)

    def set_image(self, image: np.ndarray, truth: np.ndarray = None) -> None:
        """Run the image encoder (the once-per-image cost) and start with no prompt."""
        start = time.perf_counter()
        self.predictor.set_image(image)  # checks the image, too
        self.timings = {"encoder": time.perf_counter() - start}
        self.image = image
        self.truth = truth if truth is not None and len(truth) else None  # K > 0 valid masks
        if self.truth is not None:  # for true_ious, once per image: (K, H*W)
            self.truth_flat = torch.from_numpy(truth).flatten(1).float()
        self.encoder_text.set_text(f"image encoder {self.timings['encoder'] * 1000:.0f} ms, "
                                   f"once per image ({image.shape[1]}x{image.shape[0]} px)")
        iou = "predicted IoU" + (", true IoU" if self.truth is not None else "")
        titles = ["your prompts and the best mask"] + [f"mask {k}\n{iou}" for k in (1, 2, 3)]
        self.panels = [Panel(ax, image, title) for ax, title in zip(self.axes, titles)]
        self.background = None  # new panels: the next frame is a full draw
        self.clear()

    def clear(self) -> None:
        self.points, self.labels, self.box = [], [], None  # (x, y) pixels, 1 or 0, x0 y0 x1 y1
        self.caption = None  # the caption prompting the masks, or None
        self.masks = self.ious = self.low_res = None  # the decoder's last answer
        self.records = None  # the automatic masks, while they are shown
        self.redraw()

    # --- what a prompt does

    def add_point(self, x: float, y: float, label: int) -> None:
        self.points.append((x, y))
        self.labels.append(label)
        self.predict()

    def set_box(self, box) -> None:
        self.box = box
        self.caption = None  # the text model learnt clicks after a caption, not boxes
        self.predict()

    def set_caption(self, caption: str) -> None:
        """Prompt with a caption alone; clicks after it correct its mask."""
        self.points, self.labels, self.box, self.low_res = [], [], None, None
        self.caption = caption
        try:
            self.predict()
        except ValueError as e:  # a word the toy CLIP does not know
            print(f"click_demo.py: {e}")
            self.clear()
            self.status.set_text(str(e).split(";")[0])
            self.draw()

    def predict(self) -> None:
        """One round of the prompt encoder and decoder on the stored image embedding."""
        ambiguous = self.box is None and len(self.points) == 1 and self.caption is None
        points = np.array(self.points) if self.points else None
        labels = np.array(self.labels) if self.points else None
        mask_input = None if self.low_res is None else self.low_res[None]
        start = time.perf_counter()
        if self.caption is not None:  # lesson 12's model: three masks for the caption alone
            self.masks, self.ious, low_res = self.captions.predict(
                self.predictor, self.caption, points, labels, mask_input)
        else:
            self.masks, self.ious, low_res = self.predictor.predict(
                point_coords=points, point_labels=labels,
                box=None if self.box is None else np.array(self.box),
                mask_input=mask_input, multimask_output=ambiguous)
        self.timings["decoder"] = time.perf_counter() - start
        self.low_res = low_res[self.ious.argmax()]  # the best mask refines the next prompt
        self.records = None
        self.redraw()

    def show_automatic(self) -> None:
        """The automatic mask generator on the image (it encodes the image again itself)."""
        self.points, self.labels, self.box = [], [], None
        self.masks = self.ious = self.low_res = None
        self.status.set_text("automatic masks: running the generator (a grid of clicks)")
        self.draw()  # seconds on a CPU, so say so first
        start = time.perf_counter()
        self.records = self.automatic.generate(self.image)
        self.timings["automatic"] = time.perf_counter() - start
        self.redraw()

    def true_ious(self) -> np.ndarray:
        """Each mask's IoU with the closest of the world's valid masks: (C,). The
        intersections of all pairs are one matrix product, (C, H*W) by (H*W, K): at 1024 px
        that is much faster than comparing (C, K, H, W) pixels."""
        masks = torch.from_numpy(self.masks).flatten(1).float()  # (C, H*W)
        intersection = masks @ self.truth_flat.T  # (C, K)
        union = masks.sum(1)[:, None] + self.truth_flat.sum(1)[None] - intersection
        return (intersection / union.clamp(min=1)).max(1).values.numpy()

    # --- drawing the state

    def redraw(self) -> None:
        """Put the state on the panels: the prompts on all four; the best mask on the first
        and each mask on its own (or the automatic masks on the first); then draw."""
        prompt, *mask_panels = self.panels
        t = self.timings
        for panel in self.panels:
            panel.show_prompts(self.points, self.labels, self.box)
            panel.note.set_text("")
        if self.records is not None:
            by_area = sorted(self.records, key=lambda r: -r["area"])  # the small on top
            colours = [matplotlib.colormaps["tab10"](k % 10)[:3] for k in range(len(by_area))]
            shown = [[r["segmentation"] for r in by_area], [], [], []]
            self.status.set_text(f"{len(self.records)} automatic masks in {t['automatic']:.2f} s")
        elif self.masks is None:
            shown = [[], [], [], []]
            self.status.set_text("click on a picture")
        else:
            best = self.ious.argmax()
            shown = [[self.masks[best]]] + [[m] for m in self.masks] + [[]] * (3 - len(self.masks))
            true = self.true_ious() if self.truth is not None else None
            for k, panel in enumerate(mask_panels[:len(self.masks)]):
                panel.note.set_text(f"{self.ious[k]:.2f}" + ("" if true is None else
                                                              f", {true[k]:.2f}")
                                    + (" (the only mask)" if len(self.masks) == 1 else ""))
                panel.note.set_fontweight("bold" if k == best else "normal")
            # the prompt encoder's share of "decoder" is tiny; this frame's drawing is not
            # over yet, so the last frame's is shown
            said = "" if self.caption is None else f'"{self.caption}" + clicks: '
            self.status.set_text(f"{said}decoder {t['decoder'] * 1000:.1f} ms, drawing "
                                 f"{t['drawing'] * 1000:.0f} ms (last frame)")
        for k, (panel, masks) in enumerate(zip(self.panels, shown)):
            panel.show_masks(masks, colours if self.records is not None and k == 0 else None)
        self.draw()

    def draw(self) -> None:
        """Draw the new frame now, not when the window is next idle, so that the drawing is
        part of the measured round trip. The same split as the model's: what never changes
        with the prompts (layout, titles, the help line) is drawn once per image and kept as
        a background, like the image embedding; each frame only puts the background back,
        draws the changing artists over it and copies the result to the screen (blitting).
        Text is what matplotlib draws slowest after pictures, which is why the changing text
        is short; the pictures are small (DISPLAY_SIDE) and drawn by ScreenPicture."""
        canvas = self.fig.canvas
        start = time.perf_counter()
        if self.background is None:  # a new image, or a backend that cannot blit
            canvas.draw()  # on_draw draws the changing artists
        else:
            canvas.restore_region(self.background)
            self._draw_animated(canvas.get_renderer())
            canvas.blit(self.fig.bbox)
        self.timings["drawing"] = time.perf_counter() - start

    def _draw_animated(self, renderer) -> None:
        for artist in [self.status, *(a for panel in self.panels for a in panel.artists)]:
            artist.draw(renderer)

    def on_draw(self, event) -> None:
        """A full draw (the first, a new image, a resize, a zoom) leaves the animated artists
        out: keep what it drew as the background, then draw them."""
        canvas = self.fig.canvas
        if canvas.is_saving():  # matplotlib draws a saved file's axes in full by itself
            return
        if canvas.supports_blit:
            self.background = canvas.copy_from_bbox(self.fig.bbox)
        self._draw_animated(event.renderer)

    # --- the event handlers

    def _image_xy(self, event, ax) -> tuple:
        """A mouse event's position in `ax`'s image pixels, clipped to the image (a drag may
        end outside the axes, where event.xdata is None)."""
        x, y = ax.transData.inverted().transform((event.x, event.y))
        H, W = self.image.shape[:2]
        return float(np.clip(x, 0, W - 1)), float(np.clip(y, 0, H - 1))

    def on_press(self, event) -> None:
        toolbar = self.fig.canvas.toolbar  # zooming or panning: the clicks are not prompts
        if (event.inaxes in self.axes and event.button in (MouseButton.LEFT, MouseButton.RIGHT)
                and not (toolbar is not None and toolbar.mode)):
            self.pressed = event

    def _dragged(self, event) -> bool:
        return math.hypot(event.x - self.pressed.x, event.y - self.pressed.y) > DRAG

    def _drag_box(self, event) -> list:
        (x0, y0), (x1, y1) = (self._image_xy(e, self.pressed.inaxes) for e in (self.pressed, event))
        return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]

    def on_motion(self, event) -> None:
        """While the left button drags, the box follows the mouse."""
        if self.pressed is not None and self.pressed.button == MouseButton.LEFT \
                and self._dragged(event):
            for panel in self.panels:
                panel.show_box(self._drag_box(event))
            self.draw()

    def on_release(self, event) -> None:
        if self.pressed is None:
            return
        if self.pressed.button == MouseButton.LEFT and self._dragged(event):
            box = self._drag_box(event)
            self.pressed = None
            self.set_box(box)
        else:
            x, y = self._image_xy(self.pressed, self.pressed.inaxes)
            label = int(self.pressed.button == MouseButton.LEFT)
            self.pressed = None
            self.add_point(x, y, label)

    def on_key(self, event) -> None:
        if self.typing is not None:
            self.type_key(event.key)
        elif event.key == "t" and self.captions is not None:
            self.typing = ""
            self.show_typing()
        elif event.key == "a" and self.automatic is not None:
            self.show_automatic()
        elif event.key == "n" and self.next_sample is not None:
            self.set_image(*self.next_sample())
        elif event.key == "escape":
            self.clear()

    def type_key(self, key: str) -> None:
        """While a caption is typed: a letter or space adds to it, backspace takes one back,
        enter prompts with it, escape gives it up."""
        if key == "enter":
            caption, self.typing = self.typing.strip(), None
            if caption:
                self.set_caption(caption)
            else:
                self.redraw()
        elif key == "escape":
            self.typing = None
            self.redraw()
        elif key == "backspace":
            self.typing = self.typing[:-1]
            self.show_typing()
        elif key == " " or (len(key) == 1 and key.isalpha()):
            self.typing += key.lower()
            self.show_typing()

    def show_typing(self) -> None:
        self.status.set_text(f"caption: {self.typing}_   (enter: prompt with it, escape: cancel)")
        self.draw()


def send_click(demo: ClickDemo, x: float, y: float, button=MouseButton.LEFT, to=None) -> None:
    """Press at image pixel (x, y) of the first panel and release there, or at pixel `to`
    (a drag), through the figure's own event machinery, as a mouse would (events land on
    whole screen pixels, so the point the demo receives is within a screen pixel of (x, y))."""
    ax, canvas = demo.axes[0], demo.fig.canvas
    start = ax.transData.transform((x, y))
    end = start if to is None else ax.transData.transform(to)
    for name, (px, py) in (("button_press_event", start), ("motion_notify_event", end),
                           ("button_release_event", end)):
        canvas.callbacks.process(name, MouseEvent(name, canvas, round(px), round(py), button))


def send_key(demo: ClickDemo, key: str) -> None:
    """A key press, as matplotlib names keys ("a", " ", "enter", "escape", "backspace")."""
    canvas = demo.fig.canvas
    canvas.callbacks.process("key_press_event", KeyEvent("key_press_event", canvas, key))


def headless_figure() -> Figure:
    """A figure drawn by Agg into memory: no display needed, and what it draws and how long it
    takes are what an interactive window's Agg-based canvas does."""
    fig = Figure(figsize=FIGSIZE)
    FigureCanvasAgg(fig)
    return fig


def benchmark(demo: ClickDemo, clicks: int = 20) -> dict:
    """Medians over `clicks` clicks at random pixels, each on cleared prompts so that every
    one returns three masks (one click first, as a warm-up): a click's round trip (the event,
    the prompt encoder and decoder, and the redraw) in wall-clock seconds and in this
    process's CPU seconds (which other programs on a busy machine inflate far less), and its
    decoder and drawing parts."""
    H, W = demo.image.shape[:2]
    xy = np.random.default_rng(0).uniform(0, 1, (clicks + 1, 2)) * (W - 1, H - 1)
    times = {"round_trip": [], "round_trip_cpu": [], "decoder": [], "drawing": []}
    for x, y in xy:
        send_key(demo, "escape")
        wall, cpu = time.perf_counter(), time.process_time()
        send_click(demo, x, y)
        times["round_trip"].append(time.perf_counter() - wall)
        times["round_trip_cpu"].append(time.process_time() - cpu)
        times["decoder"].append(demo.timings["decoder"])
        times["drawing"].append(demo.timings["drawing"])
    return {"encoder": demo.timings["encoder"],
            **{name: float(np.median(t[1:])) for name, t in times.items()}}


# -----------------------------------------------------------------------------
# The command


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Click on an image and see SAM's masks.")
    p.add_argument("--image", type=Path, help="a PNG or JPEG of any size (default: held-out "
                   "toy images, drawn at the model's input size; n shows the next)")
    p.add_argument("--config", default="toy", choices=list(minisam.CONFIGS))
    p.add_argument("--checkpoint", type=Path, help="the model's weights: an official SAM .pth "
                   "or a train_toy.py checkpoint (default for toy: lessons/toy_sam.pt; other "
                   "configs without one get random weights, good for timing only)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--save", type=Path, metavar="OUT.png",
                      help="no window: make one scripted click and save what the window shows")
    mode.add_argument("--benchmark", action="store_true",
                      help="no window: time the encoder and 20 clicks' round trips")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.save and not args.save.parent.is_dir():  # say so now, not after the encoder
        sys.exit(f"click_demo.py: --save {str(args.save)!r}: no folder {str(args.save.parent)!r}")
    if args.save or args.benchmark:
        fig = headless_figure()
    else:
        import matplotlib.pyplot as plt
        fig = plt.figure(figsize=FIGSIZE)
        # a backend that can open a window brings its own figure manager; with no display
        # matplotlib falls back to Agg, whose base manager can only save files
        if type(fig.canvas.manager) is FigureManagerBase:
            plt.close(fig)
            sys.exit(f"click_demo.py: no display: matplotlib's {matplotlib.get_backend()!r} "
                     "backend cannot open a window. Run it where there is a display, or use "
                     "--save OUT.png for a picture of a scripted session.")
    checkpoint = args.checkpoint or (TOY_CHECKPOINT if args.config == "toy" else None)
    try:
        image = None if args.image is None else load_image(args.image)
        model = minisam.build_sam(args.config, checkpoint=checkpoint)
    except (ValueError, TypeError) as e:
        sys.exit(f"click_demo.py: {e}")
    next_sample = truth = None
    if image is None:  # the toy world at the model's input size, one held-out seed after another
        seeds = itertools.cycle(EVAL_SEEDS)

        def next_sample():
            return make_sample(next(seeds), model.config.image_size)

        image, truth = next_sample()
    automatic = minisam.SamAutomaticMaskGenerator(
        model, **(TOY_AMG_SETTINGS if args.config == "toy" else {}))
    print(f"{args.config} ({checkpoint or 'random weights'}), image {image.shape[1]}x"
          f"{image.shape[0]}: running the image encoder")
    captions = None
    if args.config == "toy" and args.checkpoint is None:  # the encoder the text weights read
        from text_prompts import CaptionPredictor
        captions = CaptionPredictor()
    demo = ClickDemo(minisam.SamPredictor(model), image, fig, truth, automatic, next_sample,
                     captions)
    if args.benchmark:
        t = benchmark(demo)
        print(f"image encoder {t['encoder'] * 1000:.0f} ms (once per image); a click's round "
              f"trip, median of 20: {t['round_trip'] * 1000:.1f} ms wall clock, "
              f"{t['round_trip_cpu'] * 1000:.1f} ms CPU (decoder {t['decoder'] * 1000:.1f} "
              f"ms, drawing {t['drawing'] * 1000:.1f} ms); {torch.get_num_threads()} torch "
              "threads")
    elif args.save:
        # a click in the smallest of the world's masks (often a subpart: three nested
        # answers), or in the middle of a photo
        H, W = image.shape[:2]
        if demo.truth is not None:
            smallest = torch.from_numpy(truth[truth.sum((1, 2)).argmin()])[None]
            x, y = interior_point(smallest)[0].tolist()
        else:
            x, y = (W - 1) / 2, (H - 1) / 2
        send_click(demo, x, y)  # the first click also pays for torch's warm-up: clear, again
        send_key(demo, "escape")
        send_click(demo, x, y)
        matplotlib.image.imsave(args.save, np.asarray(fig.canvas.buffer_rgba()))  # the frame
        print(f"saved {args.save}")
    else:
        fig.canvas.manager.set_window_title("minisam: click and see")
        plt.show()


if __name__ == "__main__":
    main()
