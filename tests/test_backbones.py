import hashlib
import http.server
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vaegen.errors import CheckpointError, ConfigError
from vaegen.evaluation import backbones
from vaegen.evaluation.backbones import (
    BACKBONES,
    INCEPTION_ENV,
    INCEPTION_FILE,
    efficientnet_lite0_state_dict,
    inception_weights_path,
    load_backbone,
    resolve_backbone_name,
)

APPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "apples"
FRUIT = {948, 957, 952, 951}  # ImageNet: Granny Smith, pomegranate, fig, lemon


@pytest.fixture
def no_inception(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def fake_inception_weights(tmp_path_factory):
    """Randomly initialised weights in the real file format: exercises the code path, not the values."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        net = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return path


def test_registry_names_are_the_ones_configs_accept():
    from vaegen.config import NETWORK_NAMES

    assert set(BACKBONES) == set(NETWORK_NAMES) == {"inception", "inception-64", "efficientnet-lite0", "dinov2"}


def test_efficientnet_features_shape_dtype_and_attributes(lite0):
    assert (lite0.name, lite0.num_features, lite0.input_size) == ("efficientnet-lite0", 1280, 224)
    assert "224" in lite0.resize
    features = lite0(torch.rand(3, 3, 64, 64))
    assert features.shape == (3, 1280) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and features.std() > 0


def test_efficientnet_grayscale_and_odd_sizes(lite0):
    gray = torch.rand(2, 1, 32, 32)
    assert lite0(gray).shape == (2, 1280)
    torch.testing.assert_close(lite0(gray), lite0(gray.repeat(1, 3, 1, 1)))
    assert lite0(torch.rand(2, 3, 96, 64)).shape == (2, 1280)
    assert lite0(torch.rand(1, 3, 224, 224, dtype=torch.float64)).dtype == torch.float32
    as_bytes = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8)
    torch.testing.assert_close(lite0(as_bytes), lite0(as_bytes / 255))
    with pytest.raises(ValueError, match="1 or 3"):
        lite0(torch.rand(2, 4, 32, 32))


@pytest.mark.parametrize("height, width", [(96, 64), (320, 256)])  # antialiasing only shows when shrinking
def test_efficientnet_resizes_antialiased_and_scales_to_minus_one_one(lite0, height, width):
    images = torch.rand(1, 3, height, width)
    resized = F.interpolate(images, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        expected = lite0.model((resized * 2 - 1).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(lite0(images), expected)


def test_efficientnet_is_frozen_deterministic_and_stays_in_eval(lite0):
    params = list(lite0.parameters())
    assert params and not any(p.requires_grad for p in params)
    lite0.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    images = torch.rand(2, 3, 48, 48, requires_grad=True)
    first = lite0(images)
    assert not first.requires_grad
    assert torch.equal(first, lite0(images))
    # BatchNorm on running statistics: an image's features do not depend on its batch
    torch.testing.assert_close(lite0(images[:1]), first[:1], atol=1e-4, rtol=1e-4)


def _load_images(folder: Path, count: int) -> torch.Tensor:
    from PIL import Image

    files = sorted(folder.iterdir())
    files = files[:: len(files) // count][:count]
    arrays = [np.array(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.skipif(not APPLES.is_dir(), reason="../shared/data/apples is absent")
def test_efficientnet_weights_classify_apples_as_fruit(lite0):
    timm = pytest.importorskip("timm")
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    classifier.load_state_dict(efficientnet_lite0_state_dict(), strict=True)
    # red-yellow apples: the plain golden ones look like spaghetti squash (940) to ImageNet nets
    images = _load_images(APPLES / "Golden-Red", 8)
    x = F.interpolate(images, size=(224, 224), mode="bilinear", antialias=True, align_corners=False) * 2 - 1
    with torch.no_grad():
        pooled = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        top5 = classifier.classifier(pooled).topk(5).indices.tolist()
    for row in top5:
        assert row[0] in FRUIT or 948 in row, top5
    # the backbone's features are exactly the classifier's input, and its logits (the offline Inception Score's) the output
    torch.testing.assert_close(lite0(images), pooled, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lite0.logits(lite0(images)), classifier.classifier(pooled), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("name, size", [("inception", 2048), ("inception-64", 64)])
def test_inception_features_with_weights_file(fake_inception_weights, name, size):
    backbone = load_backbone(name, inception_weights=fake_inception_weights)
    assert (backbone.name, backbone.num_features, backbone.input_size) == (name, size, 299)
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training
    # one grayscale image of an odd size: the 2048-d network costs about a second per image on CPU
    images = torch.rand(1, 1, 96, 64)
    features = backbone(images)
    assert features.shape == (1, size) and features.dtype == torch.float32
    assert torch.equal(features, backbone(images))
    if size == 64:  # the 64-d features come from the stem, cheap enough to check the uint8 input too
        torch.testing.assert_close(backbone(images), backbone((images * 255).round() / 255))
        assert backbone.logits(features) is None
    else:  # the Inception Score's logits are torch-fidelity's "logits_unbiased" of the same image
        from torchmetrics.image.fid import NoTrainInceptionV3

        reference = NoTrainInceptionV3("inception-v3-compat", ["logits_unbiased"], str(fake_inception_weights))
        expected = reference((images.expand(-1, 3, -1, -1) * 255).round().to(torch.uint8))
        torch.testing.assert_close(backbone.logits(features).float(), expected, atol=1e-3, rtol=1e-4)


@pytest.mark.skipif(inception_weights_path() is None, reason=f"{INCEPTION_FILE} is not on this machine")
def test_inception_with_the_real_weights():
    backbone = load_backbone("inception")
    features = backbone(torch.rand(2, 3, 64, 64))
    assert features.shape == (2, 2048) and features.dtype == torch.float32 and (features >= 0).all()


def test_auto_without_inception_weights_warns_once_and_picks_efficientnet(no_inception):
    with pytest.warns(UserWarning) as caught:
        assert resolve_backbone_name("auto") == "efficientnet-lite0"
    assert len(caught) == 1 and INCEPTION_FILE in str(caught[0].message)


def test_auto_finds_weights_in_torch_home_then_env_then_explicit(no_inception, monkeypatch, tmp_path):
    cached = no_inception / INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backbone_name("auto") == "inception"
    assert inception_weights_path() == cached
    from_env = tmp_path / "env.pth"
    from_env.write_bytes(b"")
    monkeypatch.setenv(INCEPTION_ENV, str(from_env))
    assert inception_weights_path() == from_env
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    (explicit / INCEPTION_FILE).write_bytes(b"")
    assert inception_weights_path(explicit) == explicit / INCEPTION_FILE
    with pytest.raises(ConfigError, match="does not exist"):
        inception_weights_path(tmp_path / "typo.pth")


def test_other_names_pass_through_and_unknown_names_list_the_valid_ones():
    assert resolve_backbone_name("inception-64") == "inception-64"
    for call in (lambda: resolve_backbone_name("resnet50"), lambda: load_backbone("resnet50")):
        with pytest.raises(ConfigError) as raised:
            call()
        assert all(name in str(raised.value) for name in ["auto", *BACKBONES])


def test_inception_url_is_torch_fidelitys():
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    assert backbones.INCEPTION_URL == fidelity.URL_INCEPTION_V3


def test_inception_without_weights_fails_fast_with_instructions(no_inception, monkeypatch):
    # an unresolvable host (RFC 2606) keeps the test offline even where the real URL would answer
    monkeypatch.setattr(backbones, "INCEPTION_URL", f"https://weights.invalid/{INCEPTION_FILE}")
    start = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        load_backbone("inception")
    assert time.monotonic() - start < 30
    message = str(raised.value)
    assert INCEPTION_FILE in message and str(no_inception) in message
    assert INCEPTION_ENV in message and "--set eval.inception_weights=PATH" in message  # a training config's keys
    assert "--set eval.backbone=efficientnet-lite0" in message
    assert list(no_inception.iterdir()) == []  # no partial download left behind


class _WeightsServer(http.server.BaseHTTPRequestHandler):
    body = b"not really inception weights"

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(3)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WeightsServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_inception_download_checks_hash_times_out_and_lands_atomically(no_inception, monkeypatch, local_server):
    monkeypatch.setattr(backbones, "INCEPTION_URL", f"{local_server}/weights")
    with pytest.raises(ConfigError, match="sha256"):
        backbones._download_inception()
    assert list(no_inception.iterdir()) == []

    monkeypatch.setattr(backbones, "DOWNLOAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(backbones, "INCEPTION_URL", f"{local_server}/slow")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="timed out"):
        backbones._download_inception()
    assert time.monotonic() - start < 2.5

    monkeypatch.setattr(backbones, "INCEPTION_URL", f"{local_server}/weights")
    monkeypatch.setattr(backbones, "INCEPTION_SHA256_PREFIX", hashlib.sha256(_WeightsServer.body).hexdigest()[:8])
    assert backbones._download_inception() == no_inception / INCEPTION_FILE
    assert [p.name for p in no_inception.iterdir()] == [INCEPTION_FILE]
    assert (no_inception / INCEPTION_FILE).read_bytes() == _WeightsServer.body


def test_inception_weights_carrying_a_pickle_payload_are_refused(tmp_path, pickle_bomb):
    from vaegen.errors import CheckpointError

    evil = pickle_bomb(tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="not a plain tensor file"):
        load_backbone("inception", inception_weights=evil)
    assert not pickle_bomb.marker.exists()


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory) -> Path:
    """Random weights in the published file's layout (518 px position embedding, timm key names)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("dinov2") / "model.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def test_dinov2_loads_a_local_safetensors_file_and_gives_384_features(dinov2_file, monkeypatch):
    from vaegen.evaluation.backbones import DINOV2_ENV, load_backbone

    monkeypatch.setenv(DINOV2_ENV, str(dinov2_file))
    network = load_backbone("dinov2")
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features = network(images)
    assert features.shape == (3, 384) and torch.isfinite(features).all()
    assert torch.equal(features, network(images))  # frozen, eval mode: the same images give the same features
    assert not torch.allclose(features[0], features[1])
    # the 518 px embedding was resampled to 224 px (16 x 16 patches and the class token)
    assert network.model.pos_embed.shape[1] == 16 * 16 + 1


def test_dinov2_weights_that_are_missing_or_not_safetensors_are_refused(tmp_path, monkeypatch):
    from vaegen.evaluation.backbones import DINOV2_ENV, load_backbone

    monkeypatch.setenv(DINOV2_ENV, str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(ConfigError, match=f"{DINOV2_ENV} points to .*nowhere.safetensors, which does not exist"):
        load_backbone("dinov2")
    pickled = tmp_path / "model.pth"
    torch.save({"weights": torch.zeros(2)}, pickled)
    monkeypatch.setenv(DINOV2_ENV, str(pickled))
    with pytest.raises(CheckpointError, match="is not the safetensors file of timm/vit_small_patch14_dinov2.lvd142m"):
        load_backbone("dinov2")
