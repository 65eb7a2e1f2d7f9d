"""Tests of lessons/text_prompts.py and the captions it reads from train_toy.make_world."""

import hashlib
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

# the lesson scripts live one level below the package's two modules
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_prompts  # noqa: E402
import train_toy  # noqa: E402

# sha256 of make_world's (image, masks, parents) for every world, sizes 32 and 64 and six seeds,
# computed with train_toy.py as it was before captions existed (commit b928007)
WORLDS_BEFORE_CAPTIONS = "ce3d08211693a403246888f7dd7d0a386b7aa08c1e6f37d8f88b2e795d0a8669"


def test_captions_leave_every_world_unchanged():
    digest = hashlib.sha256()
    for name in sorted(train_toy.WORLDS):
        for size in (32, 64):
            for seed in (0, 1, 2, 3, 10**6, 10**6 + 1):
                plain = train_toy.make_world(seed, size, train_toy.WORLDS[name])
                captioned = train_toy.make_world(seed, size, train_toy.WORLDS[name], captions=True)
                for a, b in zip(plain, captioned):
                    assert (a == b).all()
                assert len(captioned[3]) == len(plain[1])
                for a in plain:
                    digest.update(a.tobytes())
    assert digest.hexdigest() == WORLDS_BEFORE_CAPTIONS


def test_captions_name_colour_object_and_part():
    _, _, parents, captions = train_toy.make_world(0, captions=True)
    assert captions == ["magenta house", "magenta house walls", "cyan house roof",
                        "magenta house window", "white polygon"]
    assert parents.tolist() == [-1, 0, 0, 1, -1]
    for seed in range(20):  # every SHAPES caption is in the text tower's vocabulary
        text_prompts.word_ids(train_toy.make_world(seed, captions=True)[3])


def test_info_nce_counts_identical_captions_as_positives():
    one_hot = torch.eye(2)[[0, 0, 1]]  # rows 0 and 1: the same caption, the same embedding
    scale = torch.tensor(math.log(100.0))
    same = text_prompts.info_nce(one_hot, one_hot, ["red ring", "red ring", "blue ring"], scale)
    assert same < 0.01
    # were the duplicate a negative, rows 0 and 1 would each put half their mass on it
    apart = text_prompts.info_nce(one_hot, one_hot, ["red ring", "green ring", "blue ring"], scale)
    assert apart > 0.4
    with pytest.raises(ValueError, match="captions"):
        text_prompts.info_nce(one_hot, one_hot, ["red ring"], scale)


def test_word_ids_names_bad_input():
    with pytest.raises(TypeError, match="captions"):
        text_prompts.word_ids("red ring")
    with pytest.raises(ValueError, match="captions"):
        text_prompts.word_ids(["red ring", ""])


def test_mask_crops_keep_the_mask_in_the_middle():
    image = torch.zeros(1, 3, 64, 64)
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:20, 30:40] = True
    image[0, :, 10:20, 30:40] = 255
    crop = text_prompts.mask_crops(image, masks, torch.tensor([0]))  # factor 1.5: 15 px shown
    C = text_prompts.CROP
    assert crop.shape == (1, 3, C, C)
    assert crop[0, :, C // 2, C // 2].min() > 0.9 and crop[0, :, 1, 1].max() < -0.9
    with pytest.raises(TypeError, match="masks"):
        text_prompts.mask_crops(image, masks.float(), torch.tensor([0]))
    with pytest.raises(ValueError, match="index"):
        text_prompts.mask_crops(image, masks, torch.tensor([0, 0]))


def test_shipped_weights_reproduce_the_json(tmp_path):
    recorded = json.loads(text_prompts.RESULTS.read_text())["metrics_first_4_images"]
    first = train_toy.EVAL_SEEDS[0]
    text_prompts.main(["--eval-only", "--seeds", str(first), str(first + 4), "--out", str(tmp_path)])
    measured = json.loads((tmp_path / "metrics.json").read_text())
    assert measured.keys() == recorded.keys()
    for key, value in recorded.items():
        assert measured[key] == pytest.approx(value, abs=1e-5), key


def test_lesson_table_is_the_json():
    metrics = json.loads(text_prompts.RESULTS.read_text())["metrics"]
    lesson = (Path(text_prompts.__file__).parent / "12_text_prompts.md").read_text()
    rows = re.findall(r"^\|[^|]*\| (\w+) \| ([0-9.]+) \|$", lesson, flags=re.M)
    assert len(rows) >= 10
    for key, value in rows:
        assert f"{metrics[key]:.3f}" == value, key
