"""
Tests of lessons/make_figures.py (the figures of the README and the lessons).
They sit beside the script; pytest collects them from the repository root, and
`python -m pytest -q lessons/test_make_figures.py` runs them alone.
"""

import dataclasses
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the root's modules, as the lesson scripts find them
import finetune  # noqa: E402
import make_figures  # noqa: E402
import train_toy  # noqa: E402
from test_minisam import random_sam  # noqa: E402
from minisam import CONFIGS  # noqa: E402

# -----------------------------------------------------------------------------
# The figures (lessons/make_figures.py)

# the figures that draw a trained model: each must come from the checkpoint it is given
TRAINED_MODEL_FIGURES = ("hero", "one_click_three_masks", "decoder_attention",
                         "simulated_annotation", "miou_vs_clicks", "stability_score",
                         "automatic_masks")


@pytest.fixture
def figures(tmp_path, monkeypatch):
    """make_figures, writing into tmp_path/figures, on a few held-out images; the models it
    loaded are forgotten afterwards."""
    # the first six held-out images hold three objects of three levels (the hero's choice)
    monkeypatch.setattr(train_toy, "EVAL_SEEDS", range(10**6, 10**6 + 6))
    monkeypatch.setattr(train_toy, "AMG_EVAL_IMAGES", 2)
    monkeypatch.setattr(train_toy, "FIGURE_DPI", 30)  # small pictures save faster
    monkeypatch.setattr(make_figures, "FIGURES_DIR", tmp_path / "figures")
    yield make_figures
    make_figures.trained_model.cache_clear()


def test_main_hands_every_figure_the_checkpoints_it_is_given(figures, monkeypatch):
    """No module state steers the figures: main() passes --checkpoint (the shipped model by
    default) and --default-run to each figure it draws."""
    given = []
    monkeypatch.setitem(figures.FIGURES, "spy", lambda path, checkpoints: given.append(
        checkpoints))
    figures.main(["--only", "spy"])
    figures.main(["--only", "spy", "--checkpoint", "mine.pt", "--default-run", "default.pt"])
    assert figures.SHIPPED == ROOT / "lessons" / "toy_sam.pt"
    assert given == [figures.Checkpoints(figures.SHIPPED, None),
                     figures.Checkpoints(Path("mine.pt"), Path("default.pt"))]


@pytest.mark.slow
def test_every_figure_of_a_trained_model_is_drawn_from_the_checkpoint_given(figures, tmp_path,
                                                                            capsys):
    # a random toy model (O(1) weights, so its masks are not empty) saved as train_toy saves
    model = random_sam(CONFIGS["toy"], seed=0)
    checkpoint = tmp_path / "toy.pt"
    train_toy.save_checkpoint(checkpoint, {"model": model.state_dict(),
                                           "config": dataclasses.asdict(model.config),
                                           "step": 7, "seed": 0, "history": []})
    assert set(TRAINED_MODEL_FIGURES) <= set(figures.FIGURES)
    only = [arg for name in TRAINED_MODEL_FIGURES for arg in ("--only", name)]
    figures.main(["--checkpoint", str(checkpoint), *only])
    for name in TRAINED_MODEL_FIGURES:
        picture = plt.imread(tmp_path / "figures" / f"{name}.png")
        assert picture.ndim == 3 and min(picture.shape[:2]) > 60, name
    assert f"{checkpoint} (7 steps)" in capsys.readouterr().out  # loaded once, from there
    assert figures.trained_model(checkpoint)[1] == "toy.pt, 7 training steps"  # the titles'


@pytest.mark.slow
def test_the_figures_say_clearly_when_their_checkpoint_is_missing(figures, tmp_path):
    missing = tmp_path / "nowhere" / "toy_sam.pt"
    with pytest.raises(SystemExit) as err:
        figures.main(["--checkpoint", str(missing), "--only", "hero"])
    assert str(missing) in str(err.value) and "lessons/toy_sam.pt" in str(err.value)
    assert not (tmp_path / "figures" / "hero.png").exists()
    # a figure with no trained model in it needs no checkpoint
    figures.main(["--checkpoint", str(missing), "--only", "window_attention"])
    assert (tmp_path / "figures" / "window_attention.png").stat().st_size > 0



@pytest.mark.slow
def test_the_finetuning_figure_fine_tunes_the_checkpoint_given(figures, tmp_path, monkeypatch,
                                                                capsys):
    """The figure runs lesson 10's command itself (here on 10 images for 2 steps of 2 images)
    from the checkpoint make_figures is given, and draws its held-out images."""
    model = random_sam(CONFIGS["toy"], seed=0)
    checkpoint = tmp_path / "toy.pt"
    train_toy.save_checkpoint(checkpoint, {"model": model.state_dict(),
                                           "config": dataclasses.asdict(model.config),
                                           "step": 7, "seed": 0, "history": []})
    monkeypatch.setattr(figures, "FINETUNE_IMAGES", 10)
    monkeypatch.setattr(finetune, "SETTINGS",
                        dataclasses.replace(finetune.SETTINGS, images_per_step=2))
    run = finetune.main
    monkeypatch.setattr(finetune, "main", lambda argv: run(argv + ["--steps", "2"]
                                                           if "--data" in argv else argv))
    figures.main(["--checkpoint", str(checkpoint), "--only", "finetuning"])
    picture = plt.imread(tmp_path / "figures" / "finetuning.png")
    assert picture.ndim == 3 and min(picture.shape[:2]) > 100
    printed = capsys.readouterr().out
    assert f"{checkpoint} (7 steps)" in printed  # the "before" model
    assert "step 2/2" in printed and "held out: 2 images" in printed  # the run it fine-tuned
