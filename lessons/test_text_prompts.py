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
import minisam  # noqa: E402
import text_prompts  # noqa: E402
import train_toy  # noqa: E402

# sha256 of make_world's (image, masks, parents) for every world, sizes 32 and 64 and six seeds,
# computed with train_toy.py as it was before captions existed (commit b928007)
WORLDS_BEFORE_CAPTIONS = "ce3d08211693a403246888f7dd7d0a386b7aa08c1e6f37d8f88b2e795d0a8669"
# the shipped run's JSON, seed 1's (the same command with --seed 1) and lesson 12's text
RECORD = json.loads(text_prompts.RESULTS.read_text())
RECORD_SEED_1 = json.loads((text_prompts.HERE / "figures" / "text_prompts_seed_1.json").read_text())
LESSON = (text_prompts.HERE / "12_text_prompts.md").read_text()


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
    with pytest.raises(ValueError, match="no 'purple'"):
        text_prompts.word_ids(["red ring", "purple ring"])


def test_a_caption_alone_gives_three_masks_and_with_clicks_one():
    """The embedding alone is one ambiguous prompt, like a click: three outputs; clicks after
    it (and the head's choice fed back) leave one."""
    torch.manual_seed(0)
    model = minisam.build_sam("toy").eval()
    token, clip = text_prompts.PromptToken(text_prompts.CLIP_DIM, 64), text_prompts.ToyClip()
    embeddings = torch.randn(2, 64, 16, 16)
    clip_emb = clip.embed_texts(["red ring", "blue house roof"])
    with torch.no_grad():
        three, iou = text_prompts.decode_with_token(model, token, embeddings, clip_emb)
        chosen = text_prompts.head_choice(three, iou)
        one, _ = text_prompts.decode_with_token(model, token, embeddings, clip_emb,
                                                torch.full((2, 1, 2), 30.0),
                                                torch.ones(2, 1, dtype=torch.long), chosen)
    assert three.shape == (2, 3, 16 * 4, 16 * 4) and iou.shape == (2, 3)
    assert one.shape == (2, 1, 64, 64)
    for row in range(2):
        assert torch.equal(chosen[row, 0], three[row, iou[row].argmax()])


def test_caption_predictor_names_a_predictor_of_another_model():
    captions = text_prompts.CaptionPredictor()
    other = minisam.SamPredictor(minisam.Sam(minisam.SamConfig(prompt_embed_dim=32)))
    with pytest.raises(ValueError, match="predictor"):
        captions.predict(other, "red ring")
    with pytest.raises(RuntimeError, match="set_image"):
        captions.predict(minisam.SamPredictor(captions.model), "red ring")


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
    recorded = RECORD["metrics_first_4_images"]
    first = train_toy.EVAL_SEEDS[0]
    text_prompts.main(["--eval-only", "--seeds", str(first), str(first + 4), "--out", str(tmp_path)])
    measured = json.loads((tmp_path / "metrics.json").read_text())
    assert measured.keys() == recorded.keys()
    for key, value in recorded.items():
        assert measured[key] == pytest.approx(value, abs=1e-5), key


def test_lesson_table_is_the_two_seeds_jsons():
    # the second seed is the same command but for --seed
    assert RECORD_SEED_1["command"].replace(" --seed 1", "").split(" --out")[0] == RECORD["command"]
    rows = re.findall(r"^\|[^|]*\| (\w+) \| ([0-9.]+) \| ([0-9.]+) \|$", LESSON, flags=re.M)
    assert len(rows) >= 12
    for key, value, value_1 in rows:
        measured = (f"{RECORD['metrics'][key]:.3f}", f"{RECORD_SEED_1['metrics'][key]:.3f}")
        assert measured == (value, value_1), key


def test_lesson_prose_quotes_the_json():
    record, m, m1 = RECORD, RECORD["metrics"], RECORD_SEED_1["metrics"]
    lesson = " ".join(LESSON.split())  # the prose's line breaks fall anywhere
    for text in (f"falls from {record['clip_curve'][0][1]:.2f} to {record['clip_curve'][-1][1]:.2f}",
                 f"{record['train_minutes']:.1f} minutes of training on two threads",
                 f"Text alone reaches {m['text_alone']:.3f} (seed 1: {m1['text_alone']:.3f}), "
                 f"{m['text_alone'] / m['shuffled']:.1f}x (seed 1: "
                 f"{m1['text_alone'] / m1['shuffled']:.1f}x) the shuffled",
                 f"the best of its three masks {m['text_alone_oracle']:.3f}",
                 f"Text + 1 click reaches {m['text_plus_click']:.3f} (seed 1: "
                 f"{m1['text_plus_click']:.3f}), {m['click_alone_choice'] - m['text_plus_click']:.3f}"
                 f" below",
                 f"Clicks (the head's choice) lost "
                 f"{m['one_click_choice_before'] - m['one_click_choice_after']:.3f} and boxes "
                 f"{m['box_before'] - m['box_after']:.3f} (seed 1: "
                 f"{m1['one_click_choice_before'] - m1['one_click_choice_after']:.3f} and "
                 f"{m1['box_before'] - m1['box_after']:.3f})",
                 f"noun alone ({m['noun_alone']:.3f})",
                 f"where both words are needed text scores {m['text_alone_both_words_needed']:.3f}",
                 f"name the mask it reaches only {m['text_alone_noun_enough']:.3f}",
                 f"the crop's own embedding, {m['image_embedding']:.3f}",
                 f"(`text_centred`: {m['text_centred']:.3f})",
                 f"the nouns alone name the mask ({m['noun_enough_targets']})",
                 f"where both words are needed ({m['both_words_needed_targets']})",
                 f"held-out compositions ({m['held_out_targets']})",
                 f"the {m['images']} held-out images whose caption is unique in its image: "
                 f"{m['targets']} masks",
                 f"means lie {m['gap_between_means']:.3f} apart",
                 f"cosine is {m['matched_cosine']:.3f}",
                 f"(unmatched: {m['unmatched_cosine']:.3f})"):
        assert text in lesson, text


def test_lesson_states_the_commands_defaults():
    args = text_prompts.parse_args([])
    lesson = " ".join(LESSON.split())
    assert (f"`python lessons/text_prompts.py` ({args.train_images} images, {args.clip_steps} "
            f"toy-CLIP steps, {args.sam_steps} prompting steps") in lesson
    assert RECORD["command"] == "python lessons/text_prompts.py"


def test_lesson_probe_table_is_the_json():
    for name, probe in RECORD["linear_probes"].items():
        row = (f"| `{name}` | {probe['colour']['accuracy']:.3f} | {probe['colour']['commonest']:.3f} "
               f"| {probe['noun']['accuracy']:.3f} | {probe['noun']['commonest']:.3f} |")
        assert row in LESSON, row


@pytest.mark.slow
def test_linear_probe_reads_what_the_embedding_holds():
    """A patch's colour is linear in a random encoder's embedding (its patch embedding is a
    linear map of the pixels), so the probe must read it well above always guessing."""
    torch.manual_seed(0)
    model = minisam.build_sam("toy").eval()
    probe = text_prompts.linear_probe(model, train_toy.TRAIN_SEEDS[:40], train_toy.EVAL_SEEDS[:8],
                                      steps=200)["colour"]
    assert probe["accuracy"] > probe["commonest"] + 0.3


def test_train_prompting_trains_token_and_decoder_only():
    torch.manual_seed(0)
    model = minisam.build_sam("toy")
    images, masks, index, captions = text_prompts.captioned_images(train_toy.TRAIN_SEEDS[:4], 64)
    with torch.no_grad():
        embeddings = model.image_encoder(model.preprocess(images))
    data = dict(embeddings=embeddings, images=images, masks=masks, index=index,
                promptable=~text_prompts.shared_in_image(captions, index))
    token, clip = text_prompts.PromptToken(text_prompts.CLIP_DIM, 64), text_prompts.ToyClip()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    token_before = token.projection.weight.clone()
    curve = text_prompts.train_prompting(model, token, clip, data, steps=2,
                                         generator=torch.Generator().manual_seed(0), text_rows=8,
                                         replay_rows=4)
    assert [c[0] for c in curve] == [0, 1] and all(math.isfinite(c[1]) for c in curve)
    assert not torch.equal(token.projection.weight, token_before)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("mask_decoder.") for k in moved), moved  # encoders frozen


def test_shared_in_image_counts_within_each_image():
    index = torch.tensor([0, 0, 1, 1, 1])
    words = ["red ring", "red ring", "red ring", "blue ring", "blue star"]
    assert text_prompts.shared_in_image(words, index).tolist() == [True, True, False, False, False]


@pytest.mark.slow
def test_the_shipped_models_probe_is_what_the_json_says():
    recorded = RECORD["linear_probes"]["shipped"]
    model = minisam.build_sam("toy", checkpoint=text_prompts.TOY_CHECKPOINT).eval()
    measured = text_prompts.linear_probe(model)
    for word in ("colour", "noun"):
        for key in ("accuracy", "commonest"):
            assert measured[word][key] == pytest.approx(recorded[word][key], abs=1e-4), (word, key)
