"""Zero-shot CLIP classifiers (issue 21 item 2): open_clip and transformers CLIP
models built offline (random weights, tiny configs), turned into classifiers
whose logits are CLIP's own image-text similarities.

Tokenizers: open_clip's own SimpleTokenizer (its BPE vocabulary ships in the
package); for transformers, a real ``PreTrainedTokenizerFast`` built here from
a tiny word-level vocabulary (no tokenizer files ship offline).

Known truth: an open_clip image tower whose class token reads only the
top-left quadrant's patches (its attention selects them by position), so its
zero-shot logits depend on that quadrant alone; HiResCAM maps must put all
their energy there, through CamEngine and through compute_cams + score_cams.
"""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

from gradcam_engine import CamEngine, compute_cams, score_cams
from gradcam_engine.sources.models import load_model
from gradcam_engine.sources.zero_shot import CLIP_MEAN, CLIP_STD, zero_shot_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["cat", "dog", "bird"]
SIZE, PATCH = 32, 8  # a 4x4 patch grid
REGION = {0, 1, 4, 5}  # the top-left 2x2 patches (row-major)


def _open_clip_model() -> open_clip.CLIP:
    torch.manual_seed(0)
    vision = dict(
        image_size=SIZE, patch_size=PATCH, width=32, head_width=32, layers=1,
        no_ln_pre=True,
    )  # fmt: skip
    text = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
    return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()


@torch.no_grad()
def _read_only_region(model: open_clip.CLIP) -> open_clip.CLIP:
    """Weights under which the class token attends only to REGION's patches.

    The patch embedding writes the content into the first half of the width,
    the positional embeddings +/-50 into the second half (+ for REGION); the
    attention's queries and keys read the second half (the class token's
    query points at +), its values the first half; the MLP is off. The
    pooled class token, hence every logit, then depends on REGION alone.
    """
    visual = model.visual
    width = visual.class_embedding.shape[0]
    half = width // 2
    visual.conv1.weight[half:] = 0
    visual.class_embedding.zero_()
    pos = torch.zeros_like(visual.positional_embedding)
    for token in range(pos.shape[0]):
        inside = token >= 1 and token - 1 in REGION
        pos[token, half:] = 50.0 if inside else -50.0
    visual.positional_embedding.copy_(pos)
    block = visual.transformer.resblocks[0]
    w = block.attn.in_proj_weight
    w.zero_()
    block.attn.in_proj_bias.zero_()
    eye = torch.eye(half)
    w[half:width, half:] = -10 * eye  # query: the class token's "-" side -> "+"
    w[width + half : 2 * width, half:] = eye  # key: the position sign
    # value: the content, scaled back up (the layer norm divided it by ~25)
    w[2 * width : 2 * width + half, :half] = 50 * eye
    block.attn.out_proj.weight.copy_(torch.eye(width))
    block.attn.out_proj.bias.zero_()
    block.mlp.c_proj.weight.zero_()
    block.mlp.c_proj.bias.zero_()
    return model


def _noise(seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_open_clip_logits_are_clips_own_similarities():
    model = _open_clip_model()
    tokenizer = open_clip.SimpleTokenizer(context_length=16)
    classifier = zero_shot_classifier(model, tokenizer, CLASSES)
    x = _noise(1)
    with torch.no_grad():
        image = model.encode_image(x, normalize=True)
        text = model.encode_text(
            tokenizer([f"a photo of a {c}" for c in CLASSES]), normalize=True
        )
        expected = model.logit_scale.exp() * image @ text.T
        assert torch.allclose(classifier(x), expected, atol=1e-5)
    loaded = load_model(classifier)
    assert loaded.classes == CLASSES and loaded.module is classifier
    assert "template 'a photo of a {}'" in loaded.description
    # another template gives other text features, hence another fingerprint
    other = zero_shot_classifier(model, tokenizer, CLASSES, template="a {} photo")
    assert not torch.equal(other.text_features, classifier.text_features)


def test_zero_shot_maps_land_on_the_only_region_the_tower_reads():
    model = _read_only_region(_open_clip_model())
    classifier = zero_shot_classifier(
        model, open_clip.SimpleTokenizer(context_length=16), CLASSES
    )
    x = _noise(2)
    with torch.no_grad():  # the logits do not change when outside REGION does
        outside = x.clone()
        outside[:, :, SIZE // 2 :, :] = 0
        outside[:, :, :, SIZE // 2 :] = 0
        assert torch.allclose(classifier(x), classifier(outside), atol=1e-4)
        inside = x.clone()
        inside[:, :, : SIZE // 2, : SIZE // 2] = 0
        assert not torch.allclose(classifier(x), classifier(inside), atol=1e-2)
    with CamEngine(classifier, method="hirescam") as engine:
        assert engine.layer_names == ["visual.transformer.resblocks.0.ln_1"]
        maps = engine(x, [0, 2])[:, 0]
    # zero beyond the bilinear upsampling's half-patch bleed around REGION
    bleed = SIZE // 2 + PATCH // 2
    assert maps[:, bleed:, :].abs().max() < 1e-3
    assert maps[:, :, bleed:].abs().max() < 1e-3
    assert maps[:, : SIZE // 2, : SIZE // 2].amax(dim=(1, 2)).min() > 0.5


def test_zero_shot_run_on_a_dataset_focuses_on_the_region(tmp_path):
    model = _read_only_region(_open_clip_model())
    classifier = zero_shot_classifier(
        model, open_clip.SimpleTokenizer(context_length=16), CLASSES
    )
    rng = np.random.default_rng(3)
    dataset = fo.Dataset()
    for i in range(4):
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
        box = fo.Detection(label="region", bounding_box=[0, 0, 0.5, 0.5])
        dataset.add_sample(
            fo.Sample(
                filepath=path,
                ground_truth=fo.Detections(detections=[box]),
                label=fo.Classification(label=CLASSES[i % 3]),
            )
        )
    summary = compute_cams(
        dataset,
        classifier,
        method="hirescam",
        run_key="clip",
        target="label",
        label_field="label",
        progress=False,
    )
    assert summary.num_computed == 4 and summary.num_errors == 0
    assert dataset.values("clip_target.label") == [CLASSES[i % 3] for i in range(4)]
    assert set(dataset.values("clip_prediction.label")) <= set(CLASSES)
    score_cams(dataset, run_key="clip", gt_field="ground_truth", progress=False)
    field = summary.fields["visual.transformer.resblocks.0.ln_1"]
    # (15/16)^2 of a map that is 0 beyond REGION stays in it after the
    # bilinear upsampling from the 4x4 grid
    assert min(dataset.values(f"{field}_focus")) > 0.8
    dataset.delete()


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A real fast tokenizer over a word-level vocabulary: the prompts' words,
    padding and end of text (CLIP's text model pools the end token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<pad>", "<eot>", "a", "photo", "of", *CLASSES]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A <eot>", special_tokens=[("<eot>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eot>"
    )


def test_transformers_clip_logits_are_clips_own_and_a_run_works(tmp_path):
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=16, eos_token_id=1,
            pad_token_id=0,
        ),
        vision_config=dict(
            image_size=SIZE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=2,
        ),
        projection_dim=16,
    )  # fmt: skip
    model = CLIPModel(config).eval()
    tokenizer = _tiny_tokenizer()
    classifier = zero_shot_classifier(model, tokenizer, CLASSES)
    x = _noise(4)
    prompts = tokenizer(
        [f"a photo of a {c}" for c in CLASSES], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model(
            pixel_values=x,
            input_ids=prompts["input_ids"],
            attention_mask=prompts["attention_mask"],
        ).logits_per_image
        assert torch.allclose(classifier(x), expected, atol=1e-4)
    loaded = load_model(classifier)
    assert loaded.classes == CLASSES
    assert loaded.transforms.size == (SIZE, SIZE)
    assert (loaded.transforms.mean, loaded.transforms.std) == (CLIP_MEAN, CLIP_STD)
    with CamEngine(classifier) as engine:  # the grid comes from the config: 4x4
        assert engine.layer_names == ["vision_model.encoder.layers.1.layer_norm1"]
        maps = engine(x)
    assert maps.shape == (2, 1, SIZE, SIZE) and torch.isfinite(maps).all()

    dataset = fo.Dataset()
    for i in range(2):
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(np.full((40, 40, 3), 60 * i + 30, dtype=np.uint8)).save(path)
        dataset.add_sample(fo.Sample(filepath=path))
    summary = compute_cams(dataset, classifier, run_key="hfclip", progress=False)
    assert summary.num_computed == 2
    assert set(dataset.values("hfclip_prediction.label")) <= set(CLASSES)
    dataset.delete()


def test_zero_shot_arguments_are_checked():
    model = _open_clip_model()
    tokenizer = open_clip.SimpleTokenizer(context_length=16)
    with pytest.raises(ValueError, match=r"template must be a str with one '\{\}'"):
        zero_shot_classifier(model, tokenizer, CLASSES, template="a photo")
    with pytest.raises(
        ValueError, match=r"classes must be distinct; repeated: \['cat'\]"
    ):
        zero_shot_classifier(model, tokenizer, ["cat", "cat"])
    with pytest.raises(ValueError, match="classes must be a non-empty list"):
        zero_shot_classifier(model, tokenizer, "cat")
    with pytest.raises(TypeError, match="open_clip CLIP model .* got Linear"):
        zero_shot_classifier(torch.nn.Linear(2, 2), tokenizer, CLASSES)
