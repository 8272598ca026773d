"""ConvVAE: shapes, the reference architecture, conditioning, sampling and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vaegen.config import Config, ModelConfig, load_config
from vaegen.pipeline import Pipeline
from vaegen.errors import ConfigError
from vaegen.models import MODELS, build_model, count_parameters
from vaegen.models.vae import ConvVAE

SMALL = (8, 16, 32, 64)


def make(image_size=(32, 32), channels=3, num_classes=1, latent_dim=8, widths=SMALL, conditional="none"):
    """A fresh model as vaegen.load gives one: the module in a Pipeline, with class names c0, c1, ..."""
    cfg = ModelConfig(latent_dim=latent_dim, widths=widths, conditional=conditional)
    model = build_model(cfg, image_size=image_size, channels=channels, num_classes=num_classes)
    config = Config(data={"root": "unused", "image_size": list(image_size), "channels": channels}, model=cfg)
    return Pipeline(model, config, [f"c{i}" for i in range(num_classes)], {})


def conv_params(in_ch, out_ch, k=4, bias=True):
    # a conv that feeds a BatchNorm has no bias (the BatchNorm shift makes it redundant)
    return in_ch * out_ch * k * k + (out_ch if bias else 0)


def linear_params(in_f, out_f):
    return in_f * out_f + out_f


def bn_params(ch):
    return 2 * ch


# --- shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 96, (64, 48)])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shapes(size, channels):
    image_size = (size, size) if isinstance(size, int) else size
    torch.manual_seed(0)
    model = make(image_size=image_size, channels=channels, latent_dim=12)
    x = torch.rand(2, channels, *image_size)
    logits, mu, logvar = model(x)
    assert logits.shape == x.shape
    assert mu.shape == (2, 12)
    assert logvar.shape == (2, 12)
    assert model.bottleneck_shape == (SMALL[-1], image_size[0] // 16, image_size[1] // 16)


def test_two_width_model_downsamples_by_four():
    model = make(image_size=(12, 20), widths=(4, 8))
    logits, mu, _ = model(torch.rand(2, 3, 12, 20))
    assert logits.shape == (2, 3, 12, 20)
    assert model.bottleneck_shape == (8, 3, 5)


def test_indivisible_image_size_rejected():
    with pytest.raises(ValueError, match="not divisible by 16"):
        make(image_size=(40, 40))


# --- the reference architecture ----------------------------------------------------------


def test_default_widths_are_reference_architecture():
    model = make(image_size=(64, 64), channels=3, latent_dim=128, widths=(64, 128, 256, 512)).model
    assert isinstance(model, ConvVAE)

    blocks = [b for b in model.encoder if isinstance(b, nn.Sequential)]
    assert isinstance(model.encoder[-1], nn.Flatten)
    assert len(blocks) == 4
    expected = [(3, 64, False), (64, 128, True), (128, 256, True), (256, 512, True)]
    for block, (cin, cout, has_bn) in zip(blocks, expected):
        conv = block[0]
        assert isinstance(conv, nn.Conv2d)
        assert (conv.in_channels, conv.out_channels) == (cin, cout)
        assert (conv.bias is not None) == (not has_bn)
        assert conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
        bns = [m for m in block if isinstance(m, nn.BatchNorm2d)]
        if has_bn:
            assert len(bns) == 1 and bns[0].num_features == cout
            assert isinstance(block[1], nn.BatchNorm2d)
        else:
            assert bns == []
        assert isinstance(block[-1], nn.ReLU)

    flat = 512 * 4 * 4
    assert (model.to_mu.in_features, model.to_mu.out_features) == (flat, 128)
    assert (model.to_logvar.in_features, model.to_logvar.out_features) == (flat, 128)
    assert (model.from_latent.in_features, model.from_latent.out_features) == (128, flat)
    assert model.label_embedding is None

    up = list(model.decoder)
    assert len(up) == 4
    for block, (cin, cout) in zip(up[:3], [(512, 256), (256, 128), (128, 64)]):
        convt, bn, act = block
        assert isinstance(convt, nn.ConvTranspose2d)
        assert (convt.in_channels, convt.out_channels) == (cin, cout)
        assert convt.bias is None
        assert convt.kernel_size == (4, 4) and convt.stride == (2, 2) and convt.padding == (1, 1)
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == cout
        assert isinstance(act, nn.ReLU)
    last = up[3]
    assert isinstance(last, nn.ConvTranspose2d)
    assert (last.in_channels, last.out_channels) == (64, 3)
    assert last.bias is not None
    assert last.kernel_size == (4, 4) and last.stride == (2, 2) and last.padding == (1, 1)


def test_reference_parameter_count_at_96px():
    model = make(image_size=(96, 96), channels=3, latent_dim=128, widths=(64, 128, 256, 512))
    latent, flat = 128, 512 * (96 // 16) * (96 // 16)
    encoder = (
        conv_params(3, 64)
        + conv_params(64, 128, bias=False) + bn_params(128)
        + conv_params(128, 256, bias=False) + bn_params(256)
        + conv_params(256, 512, bias=False) + bn_params(512)
    )
    heads = 2 * linear_params(flat, latent)
    decoder = (
        linear_params(latent, flat)
        + conv_params(512, 256, bias=False) + bn_params(256)
        + conv_params(256, 128, bias=False) + bn_params(128)
        + conv_params(128, 64, bias=False) + bn_params(64)
        + conv_params(64, 3)
    )
    assert count_parameters(model) == encoder + heads + decoder


# --- conditioning -------------------------------------------------------------------------


def test_onehot_adds_label_planes_and_decoder_inputs():
    plain = make(channels=3, latent_dim=8)
    cond = make(channels=3, latent_dim=8, num_classes=5, conditional="onehot")
    assert plain.encoder[0][0].in_channels == 3
    assert cond.encoder[0][0].in_channels == 3 + 5
    assert plain.from_latent.in_features == 8
    assert cond.from_latent.in_features == 8 + 5
    assert cond.label_embedding is None
    x = torch.rand(3, 3, 32, 32)
    logits, mu, logvar = cond(x, torch.tensor([0, 4, 2]))
    assert logits.shape == x.shape and mu.shape == (3, 8)


@pytest.mark.parametrize("conditional", ["onehot", "embedding"])
def test_label_changes_decoding(conditional):
    torch.manual_seed(0)
    cond = make(num_classes=4, conditional=conditional).eval()
    z = torch.zeros(1, 8)
    assert not torch.allclose(cond.decode(z, torch.tensor([0])), cond.decode(z, torch.tensor([3])))


def test_embedding_has_per_class_vectors():
    cond = make(channels=3, latent_dim=8, num_classes=6, conditional="embedding")
    assert isinstance(cond.label_embedding, nn.Embedding)
    assert cond.label_embedding.num_embeddings == 6
    assert cond.label_embedding.embedding_dim == 8
    assert cond.encoder[0][0].in_channels == 3
    assert cond.from_latent.in_features == 8
    x = torch.rand(2, 3, 32, 32)
    logits, mu, _ = cond(x, torch.tensor([5, 0]))
    assert logits.shape == x.shape and mu.shape == (2, 8)


@pytest.mark.parametrize("conditional", ["onehot", "embedding"])
def test_conditional_requires_labels(conditional):
    cond = make(num_classes=3, conditional=conditional)
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="pass labels"):
        cond(x)
    with pytest.raises(ValueError, match="pass labels"):
        cond.sample(2, seed=0)


@pytest.mark.parametrize("conditional", ["onehot", "embedding"])
@pytest.mark.parametrize("bad", [[0, 3], [-1, 0]])
def test_conditional_rejects_out_of_range_labels(conditional, bad):
    cond = make(num_classes=3, conditional=conditional)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        cond.encode(torch.rand(2, 3, 32, 32), torch.tensor(bad))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        cond.decode(torch.randn(2, cond.latent_dim), torch.tensor(bad))
    # the training step does not read the labels' values (a host sync on a GPU): torch's own indexing refuses them
    with pytest.raises((RuntimeError, IndexError)):
        cond(torch.rand(2, 3, 32, 32), torch.tensor(bad))


def test_conditional_rejects_label_count_mismatch():
    cond = make(num_classes=3, conditional="onehot")
    with pytest.raises(ValueError, match="3 labels for a batch of 2"):
        cond(torch.rand(2, 3, 32, 32), torch.tensor([0, 1, 2]))


def test_single_label_is_broadcast_for_sampling():
    torch.manual_seed(0)
    cond = make(num_classes=3, conditional="onehot").eval()
    a = cond.sample(4, labels=2, seed=1)
    b = cond.sample(4, labels=[2, 2, 2, 2], seed=1)
    assert a.shape == (4, 3, 32, 32)
    assert torch.equal(a, b)


def _with_mixture(model, groups: int):
    from vaegen.samplers.mixture import LatentGMM

    model.latent_density = LatentGMM(torch.full((groups, 2), 0.5), torch.randn(groups, 2, 8), torch.eye(8).repeat(groups, 2, 1, 1), "full")
    return model


@pytest.mark.parametrize("mixture", [False, True], ids=["prior", "mixture"])
def test_sample_checks_labels_the_same_way_from_the_prior_and_from_a_mixture(mixture):
    cond = make(num_classes=3, conditional="onehot").eval()
    cond.classes = ["Golden", "Golden-Red", "Red"]
    if mixture:
        _with_mixture(cond, groups=3)
    with pytest.raises(ValueError, match="got 3 labels for a batch of 1"):  # a mixture once returned 3 images
        cond.sample(1, labels=[0, 1, 2], seed=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):  # a mixture once raised IndexError
        cond.sample(4, labels=3, seed=0)
    with pytest.raises(ValueError, match="'Nope' is not a class of this model \\(Golden, Golden-Red, Red\\)"):
        cond.sample(2, labels=["Red", "Nope"], seed=0)
    # class names work where indices do; an empty request gives an empty batch
    assert torch.equal(cond.sample(3, labels="Red", seed=5), cond.sample(3, labels=2, seed=5))
    assert cond.sample(0, labels=[], seed=0).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("conditional", ["onehot", "embedding"])
def test_encode_decode_and_reconstruct_take_class_names_as_sample_does(conditional):
    """The error for missing labels offers names, so every method that takes labels takes them."""
    torch.manual_seed(0)
    cond = make(num_classes=3, conditional=conditional).eval()
    cond.classes = ["Golden", "Golden-Red", "Red"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(cond.encode(x, "Red")[0], cond.encode(x, 2)[0])
        assert torch.equal(cond.reconstruct(x, ["Red", "Golden"]), cond.reconstruct(x, torch.tensor([2, 0])))
        z = torch.randn(2, 8)
        assert torch.equal(cond.decode(z, "Golden-Red"), cond.decode(z, [1, 1]))
    with pytest.raises(ValueError, match="'Green' is not a class of this model"):
        cond.encode(x, "Green")


def test_images_or_codes_of_the_wrong_shape_are_named():
    model = make().eval()
    with pytest.raises(ValueError, match=r"takes images of shape \[N, 3, 32, 32\] in \[0, 1\]; got \[2, 3, 64, 64\]; resize them to 32x32"):
        model.reconstruct(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"got \[3, 32, 32\]; one image without its batch dimension: add one \(x\[None\] or x.unsqueeze\(0\)\)$"):
        model.encode(torch.rand(3, 32, 32))  # once "resize them to 32x32 first"
    with pytest.raises(ValueError, match=r"got \[2, 32, 32, 3\]; channels last; move them to dimension 1 \(x.permute\(0, 3, 1, 2\)\)"):
        model.encode(torch.rand(2, 32, 32, 3))
    with pytest.raises(ValueError, match=r"got \[2, 1, 32, 32\]; convert them to 3 channel\(s\)"):
        model.reconstruct(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"decodes latent codes of shape \[N, 8\]; got \[2, 16\]"):
        model.decode(torch.randn(2, 16))


@pytest.mark.parametrize("mixture", [False, True], ids=["prior", "mixture"])
def test_sample_refuses_labels_for_an_unconditional_model_and_bad_counts_or_temperatures(mixture):
    model = make().eval()
    if mixture:
        _with_mixture(model, groups=1)
    for labels in (1, [0, 1], "Red"):  # once ignored from the prior, and counted (or a TypeError) from a mixture
        with pytest.raises(ValueError, match="this model is not conditional, so it takes no labels"):
            model.sample(2, labels=labels, seed=0)
    for temperature in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="temperature scales the spread"):
            model.sample(2, temperature=temperature, seed=0)
    for n in (-1, 2.5, True):
        with pytest.raises(ValueError, match="a whole number >= 0"):
            model.sample(n, seed=0)
    assert model.sample(0, seed=0).shape == (0, 3, 32, 32)


def test_a_single_label_applies_to_any_number_of_images_none_included():
    cond = make(num_classes=3, conditional="embedding").eval()
    cond.classes = ["Golden", "Golden-Red", "Red"]
    assert cond.sample(0, labels="Red", seed=0).shape == (0, 3, 32, 32)  # once "got 1 labels for a batch of 0"
    assert cond.sample(0, labels=2, seed=0).shape == (0, 3, 32, 32)


@pytest.mark.parametrize(("labels", "what"), [
    (True, "got True, a yes/no value; pass the class's index or name"),
    ([True, 0], "got [True, 0], which holds yes/no values"),
    (1.0, "got 1.0, a float; pass whole numbers, e.g. 1 (labels.long() converts a float tensor)"),
    ([1, 1.5], "got [1, 1.5], which holds floats"),
    (torch.tensor([0.0, 1.0]), "a tensor of floats"),
    (["Red", 1], "got ['Red', 1], which is neither; pass all indices or all names"),
])
def test_labels_that_are_not_indices_or_names_are_refused(labels, what):
    cond = make(num_classes=3, conditional="onehot").eval()
    cond.classes = ["Golden", "Golden-Red", "Red"]
    start = "labels are class indices (whole numbers from 0 to 2) or class names (Golden, Golden-Red, Red); "
    with pytest.raises(ValueError) as info:  # True and 1.0 were once read as class 1, 1.5 too
        cond.sample(2, labels=labels, seed=0)
    assert str(info.value).startswith(start) and what in str(info.value)


def test_images_outside_the_unit_interval_are_refused_and_uint8_images_are_converted():
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]; these range from .* to .*; they look like 0-255 pixel values: divide uint8 images by 255"):
        model.reconstruct(x * 255)  # once encoded without a word
    with pytest.raises(ValueError, match=r"they look normalized to \[-1, 1\]: map them back with \(x \+ 1\) / 2"):
        model.encode(x * 2 - 1)
    with pytest.raises(ValueError, match="hold NaN or infinite values"):
        model.encode(x + float("nan"))
    with pytest.raises(ValueError, match="takes float images in \\[0, 1\\] \\(or uint8 images in 0-255\\); got a torch.int64 tensor"):
        model.encode(x.long())
    pixels = (x * 255).round().to(torch.uint8)
    assert torch.equal(model.reconstruct(pixels), model.reconstruct(pixels.float() / 255))
    model.encode(x * 1.2 - 0.1)  # a little outside, as augmentations and float noise leave images, is fine


def test_numpy_images_codes_and_labels_go_where_tensors_go():
    torch.manual_seed(0)
    cond = make(num_classes=3, conditional="onehot").eval()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    labels = np.array([2, 0])
    with torch.no_grad():  # each once an AttributeError ('numpy.ndarray' object has no attribute 'dim')
        assert torch.equal(cond.encode(pixels, labels)[0], cond.encode(torch.from_numpy(pixels), torch.tensor([2, 0]))[0])
        floats = pixels.astype(np.float32) / 255
        assert cond._as_tensor(floats, "images").data_ptr() == floats.ctypes.data  # shared on the CPU, not copied
        assert torch.equal(cond.reconstruct(floats, labels), cond.reconstruct(torch.from_numpy(floats), [2, 0]))
        assert torch.equal(cond.reconstruct(floats[..., ::-1], labels), cond.reconstruct(torch.from_numpy(floats).flip(-1), labels))
        z = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
        assert torch.equal(cond.decode(z, labels), cond.decode(torch.from_numpy(z), torch.tensor([2, 0])))
        assert torch.equal(cond.sample(2, labels=labels, seed=0), cond.sample(2, labels=[2, 0], seed=0))
        # numpy's default float64: once torch's "Input type (double) and bias type (float) should be the same"
        assert torch.allclose(cond.reconstruct(floats.astype(np.float64), labels), cond.reconstruct(floats, labels))
        assert torch.allclose(cond.decode(z.astype(np.float64), labels), cond.decode(z, labels))


def test_numpy_arrays_meet_the_same_checks_as_tensors():
    cond = make(num_classes=3, conditional="onehot").eval()
    x = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match=r"got \[2, 32, 32, 3\]; channels last; move them to dimension 1"):
        cond.encode(x.transpose(0, 2, 3, 1), [0, 1])
    with pytest.raises(ValueError, match=r"got \[3, 32, 32\]; one image without its batch dimension"):
        cond.encode(x[0], 0)
    with pytest.raises(ValueError, match="they look like 0-255 pixel values"):
        cond.encode(x * 255, [0, 1])
    with pytest.raises(ValueError, match=r"takes float images in \[0, 1\] \(or uint8 images in 0-255\); got a torch.int64 tensor"):
        cond.encode((x * 255).astype(np.int64), [0, 1])
    with pytest.raises(ValueError, match=r"decodes latent codes of shape \[N, 8\]; got \[2, 16\]"):
        cond.decode(np.zeros((2, 16), np.float32), [0, 1])
    with pytest.raises(ValueError, match=r"decodes float latent codes; got a torch.int64 tensor; convert it with z.float\(\)"):
        cond.decode(np.zeros((2, 8), np.int64), [0, 1])
    with pytest.raises(ValueError, match=r"got array\(\[0\., 1\.\]\), an array of floats; pass whole numbers"):  # once "a float"
        cond.encode(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"an array of yes/no values"):
        cond.encode(x, np.array([True, False]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        cond.encode(x, np.array([0, 3]))
    with pytest.raises(TypeError, match="^this model takes images as a torch tensor or a numpy array; got list$"):
        cond.encode(x.tolist(), [0, 1])


def test_load_says_what_it_takes():
    import vaegen

    with pytest.raises(TypeError, match=r"^vaegen.load takes the path of a model folder that `vaegen train` wrote \(best_models/<run>\), "
                                        r"as a str or pathlib.Path; got None.$"):
        vaegen.load(None)  # once a bare TypeError from pathlib


# --- decoding and sampling ----------------------------------------------------------------


def test_decode_is_in_unit_interval():
    torch.manual_seed(0)
    model = make().eval()
    images = model.decode(torch.randn(4, 8) * 10)
    assert images.shape == (4, 3, 32, 32)
    assert images.min() >= 0.0 and images.max() <= 1.0
    # extreme latents saturate but never leave [0, 1]
    extreme = model.decode(torch.randn(4, 8) * 1e4)
    assert extreme.min() >= 0.0 and extreme.max() <= 1.0


def test_decode_is_sigmoid_of_logits():
    torch.manual_seed(0)
    model = make().eval()
    z = torch.randn(3, 8) * 5
    assert torch.allclose(model.decode(z), torch.sigmoid(model.decode_logits(z)))


def test_sample_is_reproducible_by_seed():
    torch.manual_seed(0)
    model = make().eval()
    a = model.sample(4, seed=123)
    b = model.sample(4, seed=123)
    c = model.sample(4, seed=124)
    assert a.shape == (4, 3, 32, 32)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the images within one batch differ from each other
    assert not torch.allclose(a[0], a[1])


def test_sample_temperature_zero_gives_identical_images():
    torch.manual_seed(0)
    model = make().eval()
    images = model.sample(5, temperature=0.0, seed=7)
    assert images.shape == (5, 3, 32, 32)
    for image in images[1:]:
        assert torch.equal(image, images[0])
    # temperature 0 decodes z = 0 regardless of the seed
    assert torch.equal(images, model.sample(5, temperature=0.0, seed=8))
    assert torch.allclose(images[0], model.decode(torch.zeros(1, 8))[0])


def test_reconstruct_returns_input_shaped_mean_decoding():
    torch.manual_seed(0)
    model = make(image_size=(64, 48), channels=1).eval()
    x = torch.rand(3, 1, 64, 48)
    out = model.reconstruct(x)
    assert out.shape == x.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    mu, _ = model.encode(x)
    assert torch.allclose(out, model.decode(mu))
    assert torch.equal(out, model.reconstruct(x))  # deterministic: decodes the mean


def test_forward_noise_follows_generator():
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(2, 3, 32, 32)
    a = model(x, generator=torch.Generator().manual_seed(1))[0]
    b = model(x, generator=torch.Generator().manual_seed(1))[0]
    c = model(x, generator=torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# --- registry -----------------------------------------------------------------------------


def test_registry_contains_conv_vae():
    assert "conv_vae" in MODELS
    assert MODELS["conv_vae"] is ConvVAE
    assert isinstance(make().model, ConvVAE)


def test_unknown_model_name_rejected_with_registered_list(tmp_path):
    with pytest.raises(ValueError, match="registered models: .*conv_vae"):
        ModelConfig(name="resnet_vae")
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  root: x\nmodel:\n  name: resnet_vae\n")
    with pytest.raises(ConfigError, match="registered models: .*conv_vae"):
        load_config(path)


def test_residual_blocks_start_as_the_identity():
    from vaegen.models.vae import ResidualBlock

    block = ResidualBlock(8).train()
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("conditional", ["none", "onehot", "embedding"])
def test_res_vae_keeps_the_interface_and_adds_depth(conditional):
    from vaegen.config import ModelConfig
    from vaegen.models import build_model, count_parameters
    from vaegen.models.vae import ResVAE

    cfg = ModelConfig(name="res_vae", latent_dim=8, widths=(8, 16), blocks=2, conditional=conditional)
    model = build_model(cfg, (16, 24), 3, 3)
    assert isinstance(model, ResVAE)
    plain = build_model(cfg.model_copy(update={"name": "conv_vae"}), (16, 24), 3, 3)
    # a block is a bottleneck at a quarter of the width h: 1x1 (w->h), two 3x3 (h->h), 1x1 (h->w), a BatchNorm
    # before each; each width gets 2 blocks in the encoder and 2 in the decoder
    per_block = {w: 2 * w * (w // 4) + 2 * 9 * (w // 4) ** 2 + 2 * w + 3 * 2 * (w // 4) for w in (8, 16)}
    assert count_parameters(model) - count_parameters(plain) == 2 * 2 * (per_block[8] + per_block[16])
    labels = None if conditional == "none" else torch.tensor([0, 2])
    logits, mu, logvar = model(torch.rand(2, 3, 16, 24), labels)
    assert logits.shape == (2, 3, 16, 24) and mu.shape == logvar.shape == (2, 8)
    drawn = Pipeline(model, Config(data={"root": "unused", "image_size": [16, 24]}, model=cfg), ["a", "b", "c"], {})
    assert drawn.sample(3, labels=None if conditional == "none" else 1, seed=0).shape == (3, 3, 16, 24)
