"""
Tests of lessons/click_demo.py (the click demo, driven headless by synthetic events).
They sit beside the script; pytest collects them from the repository root, and
`python -m pytest -q lessons/test_click_demo.py` runs them alone.
"""

import sys
from pathlib import Path

import matplotlib
import matplotlib.colors
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the root's modules, as the lesson scripts find them
import click_demo as demo_module  # noqa: E402
import minisam  # noqa: E402
import train_toy  # noqa: E402
from minisam import CONFIGS, Sam  # noqa: E402

# -----------------------------------------------------------------------------
# The click demo (lessons/click_demo.py), driven headless by synthetic events

@pytest.fixture
def click_demo():
    return demo_module


def toy_demo(click_demo, image=None, **kwargs):
    """A ClickDemo on an Agg canvas with a fresh toy model, on a non-square held-out image
    unless one is given."""
    torch.manual_seed(0)
    model = Sam(CONFIGS["toy"]).eval()
    if image is None:
        image = train_toy.make_sample(train_toy.EVAL_SEEDS[0], 80)[0][:, 10:70]  # 80 x 60
    return click_demo.ClickDemo(minisam.SamPredictor(model), image,
                                click_demo.headless_figure(), **kwargs)


def near(xy):
    """Equal within a screen pixel (a panel shows this 80 x 60 image about 4 times enlarged):
    mouse events land on whole screen pixels."""
    return pytest.approx(xy, abs=0.2)


def shows(panel, image, masks) -> bool:
    """The panel's picture is its image the way train_toy's figures draw it, opaque: grey
    (train_toy.show: the luminance from -106 black to 319 white, so 0.25 to 0.85 of white),
    and under these masks a model's blue (train_toy.fill: PREDICTED at opacity 0.6), with no
    outline. Within 2 of 255: the grey colour map has 256 steps."""
    grey = (train_toy.grey(panel.resize(image)) + 106) / 425 * 255  # (h, w) in [64, 217]
    grey = np.repeat(grey[..., None], 3, -1)
    blue = 0.4 * grey + 0.6 * 255 * np.array(train_toy.PREDICTED)
    inside = np.logical_or.reduce([panel.resize(m) for m in masks]) if masks else False
    expected = np.where(np.asarray(inside)[..., None], blue, grey)
    picture = panel.picture.rgba
    return bool((picture[..., 3] == 255).all() and np.abs(picture[..., :3] - expected).max() <= 2)


def test_click_demo_left_click_adds_a_point_and_draws_three_masks_of_the_images_shape(click_demo):
    demo = toy_demo(click_demo)
    H, W = demo.image.shape[:2]
    click_demo.send_click(demo, 20.0, 33.0)
    assert demo.points == [near((20.0, 33.0))] and demo.labels == [1]
    assert demo.masks.shape == (3, H, W) and demo.ious.shape == (3,)
    # the same masks as asking the predictor directly: one ambiguous click, three answers
    masks, ious, _ = demo.predictor.predict(np.array(demo.points), np.array([1]))
    assert np.array_equal(demo.masks, masks) and np.allclose(demo.ious, ious)
    # each mask panel shows its mask in blue on the grey image; the first panel, the best one
    prompt, *panels = demo.panels
    for panel, mask in zip(panels, demo.masks):
        assert shows(panel, demo.image, [mask])
        picture = panel.picture.rgba[..., :3].astype(int)
        inside, outside = picture[panel.resize(mask)], picture[~panel.resize(mask)]
        assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all()
        assert (inside[:, 2] > inside[:, 1] + 50).all() and (inside[:, 1] > inside[:, 0]).all()
    assert shows(prompt, demo.image, [demo.masks[ious.argmax()]])
    for panel in demo.panels:  # the click is drawn on every panel, as a foreground point
        assert panel.positives.get_xydata().tolist() == [list(demo.points[0])]
        assert len(panel.negatives.get_xydata()) == 0
        # in the figures' style: a green plus for the foreground, a red cross for the
        # background, both edged in black
        for line, label in ((panel.positives, 1), (panel.negatives, 0)):
            assert line.get_marker() == train_toy.CLICKS[label]["marker"]
            assert line.get_color() == train_toy.CLICKS[label]["color"]
            assert line.get_markeredgecolor() == "black" and line.get_linestyle() == "None"
    assert "predicted IoU" in panels[0].ax.get_title()  # and the number under the picture:
    assert [p.note.get_text() for p in panels] == [f"{iou:.2f}" for iou in ious]
    assert [p.note.get_fontweight() for p in panels] == [
        "bold" if k == ious.argmax() else "normal" for k in range(3)]


def test_click_demo_right_click_is_a_background_point_and_two_clicks_give_one_mask(click_demo):
    demo = toy_demo(click_demo)
    H, W = demo.image.shape[:2]
    click_demo.send_click(demo, 40.0, 10.0, button=click_demo.MouseButton.RIGHT)
    assert demo.labels == [0] and demo.points == [near((40.0, 10.0))]
    first_best = demo.predictor.predict(np.array(demo.points), np.array([0]))[2][
        demo.ious.argmax()]
    click_demo.send_click(demo, 15.0, 50.0)
    assert demo.labels == [0, 1] and demo.masks.shape == (1, H, W)
    # no longer ambiguous: the single-output head, refining the first click's best mask
    masks, _, _ = demo.predictor.predict(np.array(demo.points), np.array([0, 1]),
                                         mask_input=first_best[None], multimask_output=False)
    assert np.array_equal(demo.masks, masks)
    assert demo.panels[0].negatives.get_xydata().tolist() == [list(demo.points[0])]
    assert demo.panels[3].note.get_text() == ""  # the third mask panel has nothing to show


def test_click_demo_drag_is_a_box_prompt_clipped_to_the_image(click_demo):
    demo = toy_demo(click_demo)
    H, W = demo.image.shape[:2]
    click_demo.send_click(demo, 50.0, 60.0, to=(10.0, 20.0))  # dragged up and to the left
    assert demo.box == near([10.0, 20.0, 50.0, 60.0]) and demo.points == []
    masks, _, _ = demo.predictor.predict(box=np.array(demo.box), multimask_output=False)
    assert demo.masks.shape == (1, H, W) and np.array_equal(demo.masks, masks)
    x, y = demo.panels[1].box.get_xy()
    assert demo.panels[1].box.get_visible() and [x, y] == demo.box[:2]
    # the figures' box: a yellow frame edged in black
    frame = demo.panels[1].box
    assert frame.get_edgecolor() == matplotlib.colors.to_rgba(train_toy.BOX)
    assert frame.get_path_effects() == train_toy.EDGED and not frame.get_fill()
    click_demo.send_click(demo, 5.0, 5.0, to=(W + 30.0, H + 30.0))  # ends outside the axes
    assert demo.box == near([5.0, 5.0, W - 1, H - 1])


@pytest.mark.slow
def test_click_demo_automatic_key_draws_the_records_and_escape_clears(click_demo):
    torch.manual_seed(0)
    model = Sam(CONFIGS["toy"]).eval()
    # no thresholds: a random model's masks pass, so there is something to draw
    automatic = minisam.SamAutomaticMaskGenerator(model, points_per_side=3, pred_iou_thresh=0,
                                                  stability_score_thresh=0)
    image = train_toy.make_sample(train_toy.EVAL_SEEDS[1])[0]
    demo = click_demo.ClickDemo(minisam.SamPredictor(model), image,
                                click_demo.headless_figure(), automatic=automatic)
    click_demo.send_click(demo, 30.0, 30.0)
    click_demo.send_key(demo, "a")
    records = automatic.generate(image)
    assert len(demo.records) == len(records) > 0
    assert all(np.array_equal(a["segmentation"], b["segmentation"])
               for a, b in zip(demo.records, records))
    # as the figures draw automatic masks: each in a tab10 colour of its own at opacity 0.75
    # over the grey image (almost every pixel under a mask changes), the smallest on top, and
    # the grey image untouched elsewhere
    prompt = demo.panels[0]
    shown = [prompt.resize(r["segmentation"]) for r in records]
    union = np.logical_or.reduce(shown)
    picture = prompt.picture.rgba[..., :3]
    changed = (picture != prompt.shown).any(-1)
    assert not changed[~union].any() and changed[union].mean() > 0.99
    by_area = sorted(range(len(records)), key=lambda k: -records[k]["area"])
    top = shown[by_area[-1]]  # the smallest mask: its own colour over whatever lies below
    below = prompt.shown.astype(float)
    for n, k in enumerate(by_area):
        colour = np.array(matplotlib.colormaps["tab10"](n % 10)[:3])
        below = np.where(shown[k][..., None], 0.25 * below + 0.75 * 255 * colour, below)
    assert np.abs(picture[top] - below[top]).max() <= 2
    assert demo.points == [] and demo.masks is None  # the prompts made way
    assert str(len(records)) in demo.status.get_text()
    click_demo.send_key(demo, "escape")
    assert demo.records is None
    for panel in demo.panels:
        assert shows(panel, image, [])


def test_click_demo_next_image_key_encodes_it_and_clears_the_prompts(click_demo):
    sample = train_toy.make_sample(train_toy.EVAL_SEEDS[2], 48)
    demo = toy_demo(click_demo, next_sample=lambda: sample)
    click_demo.send_click(demo, 20.0, 20.0)
    click_demo.send_key(demo, "n")
    assert demo.image is sample[0] and demo.truth is sample[1]
    assert demo.predictor.original_size == (48, 48) and demo.points == []
    assert demo.axes[0].get_xlim() == (-0.5, 47.5)
    click_demo.send_click(demo, 20.0, 20.0)  # true IoUs against the new image's masks
    assert demo.masks.shape == (3, 48, 48) and "true IoU" in demo.panels[1].ax.get_title()
    assert len(demo.panels[1].note.get_text().split(", ")) == 2  # predicted, true


def test_click_demo_draws_a_mask_as_the_figures_do(click_demo):
    """One drawing convention (train_toy.py, "4. Pictures"): a panel of the demo with a mask
    puts on screen what train_toy.mask_panel draws of the same image and mask, the grey image
    with a blue fill, within a 255th (the two round differently)."""
    demo = toy_demo(click_demo)
    H, W = demo.image.shape[:2]
    mask = np.zeros((H, W), bool)
    mask[10:50, 5:30] = True
    panel = demo.panels[1]
    panel.show_masks([mask])
    drawn = []
    for fast in (True, False):
        fig = click_demo.headless_figure()
        ax = fig.add_axes((0.1, 0.1, 0.33, 0.8))
        if fast:
            click_demo.ScreenPicture(ax, panel.rgba, panel.picture.extent)
        else:
            train_toy.mask_panel(ax, demo.image, mask)
        ax.set(xlim=(-0.5, W - 0.5), ylim=(H - 0.5, -0.5), aspect="equal")
        ax.set_axis_off()
        fig.canvas.draw()
        drawn.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int))
    figure = drawn[1]
    inside = (figure != 255).any(-1)  # the axes' picture, not the white figure around it
    # imshow resamples a little differently: a screen pixel at a border between two image
    # pixels may take the other's colour, so only the screen pixels whose 4 neighbours have
    # their colour in the figure are compared
    border = np.zeros(inside.shape, bool)
    for axis in (0, 1):
        for shift in (1, -1):
            border |= (np.roll(figure, shift, axis) != figure).any(-1)
    compared = inside & ~border
    assert compared.sum() > 10000
    assert np.abs(drawn[0] - figure)[compared].max() <= 1


def test_click_demo_pictures_keep_the_images_pixel_frame(click_demo):
    for shape, side in (((64, 64, 3), 64), ((1000, 700, 3), 250)):  # a photo: every 4th pixel
        demo = toy_demo(click_demo, image=np.zeros(shape, np.uint8))
        panel = demo.panels[1]
        assert max(panel.shown.shape[:2]) == side <= click_demo.DISPLAY_SIDE
        width, height = panel.picture.extent  # image pixels, from (-0.5, -0.5)
        assert width >= shape[1] and height >= shape[0]
        assert demo.axes[1].get_xlim() == (-0.5, shape[1] - 0.5)


def test_click_demo_draws_its_pictures_pixel_for_pixel_as_imshow_does(click_demo):
    """ScreenPicture is imshow(interpolation="none") made fast: on the same axes, the two
    must put the same screen pixels, also for a picture spanning more than the axes show
    (as a large image's does) and when zoomed in off-centre."""
    rgba = np.random.default_rng(0).integers(0, 256, (37, 51, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    extent = (51 * 3.1, 37 * 3.1)  # a picture pixel covers 3.1 image pixels
    for xlim, ylim in (((-0.5, 149.5), (109.5, -0.5)), ((20.3, 70.8), (90.2, 41.7))):
        drawn = []
        for fast in (True, False):
            fig = click_demo.headless_figure()
            ax = fig.add_axes((0.1, 0.1, 0.33, 0.8))
            if fast:
                click_demo.ScreenPicture(ax, rgba, extent)
            else:
                ax.imshow(rgba, interpolation="none",
                          extent=(-0.5, extent[0] - 0.5, extent[1] - 0.5, -0.5))
            ax.set(xlim=xlim, ylim=ylim, aspect="equal")
            ax.set_axis_off()
            fig.canvas.draw()
            drawn.append(np.asarray(fig.canvas.buffer_rgba()).copy())
        assert (drawn[1] != 255).any()  # imshow drew something there
        assert np.array_equal(drawn[0], drawn[1])


def test_click_demo_reads_png_and_jpeg_and_rejects_bad_files(click_demo, tmp_path):
    import matplotlib.image
    rgb = train_toy.make_sample(3, 40)[0][:, :30]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    for name, data in (("rgb.png", rgb), ("rgba.png", rgba)):
        matplotlib.image.imsave(tmp_path / name, data)
        assert np.array_equal(click_demo.load_image(tmp_path / name), rgb)
    from PIL import Image  # matplotlib's own image library: grey PNGs, 8 and 16 bits deep
    grey = rgb[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    for name in ("grey.png", "grey16.png"):
        assert np.array_equal(click_demo.load_image(tmp_path / name), np.dstack([grey] * 3))
    matplotlib.image.imsave(tmp_path / "photo.jpg", rgb, pil_kwargs={"quality": 95})
    photo = click_demo.load_image(tmp_path / "photo.jpg")
    assert photo.dtype == np.uint8 and photo.shape == (40, 30, 3)
    assert np.abs(photo.astype(int) - rgb).mean() < 10  # JPEG is lossy
    (tmp_path / "notes.png").write_text("not an image")
    for path, words in ((tmp_path / "missing.png", "no such file"),
                        (tmp_path, "no such file"),
                        (tmp_path / "notes.png", "not a readable image")):
        with pytest.raises(ValueError, match=words) as e:
            click_demo.load_image(path)
        assert str(path) in str(e.value)


def test_click_demo_command_saves_a_session_and_names_bad_paths(click_demo, tmp_path):
    torch.manual_seed(0)
    torch.save(Sam(CONFIGS["toy"]).state_dict(), tmp_path / "toy.pt")
    picture = tmp_path / "session.png"
    click_demo.main(["--checkpoint", str(tmp_path / "toy.pt"), "--save", str(picture)])
    assert picture.stat().st_size > 0
    for flags, words in ((["--image", str(tmp_path / "nope.jpg")], "nope.jpg"),
                         (["--checkpoint", str(tmp_path / "nope.pt")], "nope.pt"),
                         (["--save", str(tmp_path / "no" / "x.png")], "no folder")):
        with pytest.raises(SystemExit) as e:
            click_demo.main(["--save", str(tmp_path / "x.png"), *flags])
        assert words in str(e.value.code)
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit) as e:  # --save and --benchmark are two ways to run
        click_demo.parse_args(["--save", "x.png", "--benchmark"])
    assert e.value.code == 2
    import matplotlib.pyplot as plt
    plt.switch_backend("agg")  # what matplotlib falls back to when there is no display
    with pytest.raises(SystemExit) as e:  # a window was asked for, on a machine without one
        click_demo.main(["--checkpoint", str(tmp_path / "toy.pt")])
    assert "no display" in str(e.value.code) and "--save" in str(e.value.code)


def test_click_demo_benchmark_times_the_round_trip_around_the_decoder(click_demo):
    demo = toy_demo(click_demo)
    t = click_demo.benchmark(demo, clicks=1)
    # one click's round trip encloses its decoder run and its drawing (no speed is asserted)
    assert t["round_trip"] >= t["decoder"] + t["drawing"] > 0 and t["encoder"] > 0
    assert demo.masks.shape[0] == 3  # every benchmarked click starts from cleared prompts


def type_caption(click_demo, demo, keys: str) -> None:
    click_demo.send_key(demo, "t")
    for key in keys:
        click_demo.send_key(demo, key)


def test_click_demo_caption_key_prompts_the_text_model_and_clicks_correct_it(click_demo):
    """Typed text reaches lesson 12's model as text_prompts' own batch code gives it."""
    import text_prompts

    captions = text_prompts.CaptionPredictor()
    model = minisam.build_sam("toy", checkpoint=text_prompts.TOY_CHECKPOINT).eval()
    images, masks, _, words = text_prompts.captioned_images(train_toy.EVAL_SEEDS[:1], 64)
    caption = next(c for c in words if words.count(c) == 1)
    image = images[0].permute(1, 2, 0).numpy().astype(np.uint8)
    demo = click_demo.ClickDemo(minisam.SamPredictor(model), image, click_demo.headless_figure(),
                                captions=captions)
    type_caption(click_demo, demo, caption.upper()[:-1] + "x")
    click_demo.send_key(demo, "backspace")
    click_demo.send_key(demo, caption[-1])
    assert demo.caption is None and demo.typing == caption  # "n", "a", "t" are letters here
    click_demo.send_key(demo, "enter")
    assert demo.caption == caption and demo.typing is None
    assert demo.masks.shape == (3, 64, 64)  # a caption alone is ambiguous: three masks
    assert demo.status.get_text().startswith(f'"{caption}"')

    text_model, token, clip = captions.model, captions.token, captions.clip
    with torch.no_grad():
        embedding = text_model.image_encoder(text_model.preprocess(images))
        three, iou = text_prompts.decode_with_token(text_model, token, embedding,
                                                    clip.embed_texts([caption]))
        for k in range(3):
            assert np.array_equal(demo.masks[k], text_prompts.upsample(text_model, three[:, [k]])[0])
        logits = text_prompts.head_choice(three, iou)
        click_demo.send_click(demo, 30.0, 12.0, button=click_demo.MouseButton.RIGHT)
        assert demo.caption == caption and demo.masks.shape == (1, 64, 64)
        clicked, _ = text_prompts.decode_with_token(
            text_model, token, embedding, clip.embed_texts([caption]),
            torch.tensor([[demo.points[0]]]), torch.tensor([[0]]), logits)
    assert np.array_equal(demo.masks, text_prompts.upsample(text_model, clicked).numpy())

    click_demo.send_click(demo, 10.0, 10.0, to=(40.0, 40.0))  # a box drops the caption
    assert demo.caption is None and demo.masks.shape == (1, 64, 64)
    type_caption(click_demo, demo, "purple house")
    click_demo.send_key(demo, "enter")
    assert demo.caption is None and demo.masks is None
    assert "no 'purple'" in demo.status.get_text()


def test_click_demo_escape_gives_up_a_caption_and_no_key_t_without_text_weights(click_demo):
    demo = toy_demo(click_demo)
    click_demo.send_key(demo, "t")
    assert demo.typing is None  # no CaptionPredictor given: t is not a key of this demo
    demo.captions = object()  # never called: the caption is given up before enter
    type_caption(click_demo, demo, "red")
    click_demo.send_key(demo, "escape")
    assert demo.typing is None and demo.caption is None and demo.masks is None
