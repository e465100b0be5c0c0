"""Engine: inference presets, prediction-directory scoring, non-finite losses, checkpoint identity."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from segbench import evaluate as evaluate_cli
from segbench.config import ConfigError, EvalSettings, TrainSettings, apply_overrides, load_config, validate
from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.data.transforms import build_train_transform
from segbench.engine import scoring
from segbench.engine.checkpoint import CheckpointMismatch, list_checkpoints, load_checkpoint
from segbench.engine.inference import predict, slide_logits
from segbench.engine.train import NonFiniteLoss, train
from segbench.labels import CITYSCAPES_ID_TO_TRAINID
from segbench.models import create_model
import minitrees as mt
from tiny_models import PixelModel


def test_sliding_window_equals_whole_image_for_a_local_model():
    torch.manual_seed(0)
    model, image = PixelModel(), torch.randn(1, 3, 37, 53)
    whole = model(image)["out"]
    for window, stride in [((16, 16), (8, 8)), ((20, 30), (20, 30)), ((16, 24), None), ((64, 64), None)]:
        torch.testing.assert_close(slide_logits(model, image, window, stride), whole)


def test_sliding_window_with_one_window_equals_whole_for_a_real_model():
    torch.manual_seed(0)
    model = create_model("resnet18_ibn_b", "fcn").eval()
    image = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        whole = predict(model, image, (48, 64))
        slid = predict(model, image, (48, 64), EvalSettings(mode="slide", window=(48, 64)))
        overlapped = predict(model, image, (48, 64), EvalSettings(mode="slide", window=(32, 32), stride=(16, 16)))
    torch.testing.assert_close(slid, whole)
    assert overlapped.shape == whole.shape and torch.isfinite(overlapped).all()


def test_tta_averages_probabilities_at_label_size():
    torch.manual_seed(0)
    model, image = PixelModel(), torch.randn(1, 3, 20, 30)
    probs = predict(model, image, (40, 60), EvalSettings(flip=True, scales=(0.5, 1.0, 1.5)))
    assert probs.shape == (1, 19, 40, 60)
    torch.testing.assert_close(probs.sum(1), torch.full((1, 40, 60), 6.0))  # 3 scales x 2 flips


class RampModel(PixelModel):
    """A 1x1 conv plus a fixed per-class ramp along the width: its answer depends on x, so a mirrored view gives
    mirrored scores only if they are flipped back."""

    def forward(self, x):
        ramp = torch.linspace(-2.0, 2.0, x.shape[-1]).view(1, 1, 1, -1)
        slopes = torch.linspace(-1.0, 1.0, self.conv.out_channels).view(1, -1, 1, 1)
        return {"out": self.conv(x) + slopes * ramp}


def test_flip_tta_flips_the_mirrored_view_back():
    """flip=True: softmax(f(x)) + flip(softmax(f(flip(x)))), written out here in plain torch."""
    torch.manual_seed(0)
    model, image = RampModel().eval(), torch.randn(1, 3, 12, 20)
    with torch.no_grad():
        plain = model(image)["out"].softmax(1)
        mirrored = model(image.flip(-1))["out"].softmax(1)
        got = predict(model, image, (12, 20), EvalSettings(flip=True))
    expected = plain + mirrored.flip(-1)
    torch.testing.assert_close(got, expected)
    # the model really is position dependent: forgetting the flip-back would give a different answer
    assert (expected - (plain + mirrored)).abs().max() > 0.1


def test_bad_inference_settings_say_what_to_set():
    """Checked once, with the rest of the configuration (config.py), before anything is built from them."""
    with pytest.raises(ConfigError, match="eval.window"):
        validate(apply_overrides(load_config(None), ["eval.mode=slide"]))
    with pytest.raises(ConfigError, match="'whole', 'slide'"):
        validate(apply_overrides(load_config(None), ["eval.mode=tiles"]))


# -- scoring prediction PNGs from another framework -------------------------------------------------------------------
@pytest.fixture
def tiny_photo(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 2, "val": 3})
    return build_dataset("photo", "val", root=tmp_path / "data")


def _write_preds(ds, out, encode=lambda lab: lab, suffix=""):
    out.mkdir(parents=True)
    for image_path, _ in ds.pairs:
        _, label = ds.load_pair(ds.pairs.index((image_path, _)))
        cv2.imwrite(str(out / f"{image_path.stem}{suffix}.png"), encode(label))


def test_perfect_trainid_predictions_score_100(tiny_photo, tmp_path, capsys):
    _write_preds(tiny_photo, tmp_path / "preds", suffix="_pred")
    code = evaluate_cli.main(["--preds", str(tmp_path / "preds"), "--dataset", "photo",
                              "--data-root", str(tmp_path / "data"), "--output", str(tmp_path / "out.json")])
    assert code == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["miou"] == pytest.approx(100.0) and result["images"] == 3
    assert result["per_class_iou"]["road"] == pytest.approx(100.0)


def test_cityscapes_id_predictions_are_mapped(tiny_photo, tmp_path):
    train_to_id = np.zeros(256, np.uint8)  # ignore -> id 0 (unlabeled)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        train_to_id[train_id] = label_id
    _write_preds(tiny_photo, tmp_path / "preds", encode=lambda lab: train_to_id[lab])
    result = scoring.score_prediction_dir(tiny_photo, tmp_path / "preds", "cityscapes")
    assert result["miou"] == pytest.approx(100.0)


def test_wrong_predictions_lower_the_score(tiny_photo, tmp_path):
    _write_preds(tiny_photo, tmp_path / "preds", encode=lambda lab: np.where(lab == 0, 1, lab).astype(np.uint8))
    result = scoring.score_prediction_dir(tiny_photo, tmp_path / "preds", "trainid")
    assert result["per_class_iou"]["road"] == 0.0 and result["miou"] < 100


def test_missing_and_misshapen_predictions_are_named(tiny_photo, tmp_path, capsys):
    preds = tmp_path / "preds"
    _write_preds(tiny_photo, preds)
    first = sorted(preds.glob("*.png"))[0]
    cv2.imwrite(str(first), np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=rf"{first.name}.*label resolution"):
        scoring.score_prediction_dir(tiny_photo, preds, "trainid")
    first.unlink()
    code = evaluate_cli.main(["--preds", str(preds), "--dataset", "photo", "--data-root", str(tmp_path / "data")])
    assert code == 2 and "1 of 3 images have no prediction" in capsys.readouterr().err


def test_predictions_named_like_cityscapes_label_files_are_found(tmp_path):
    """`CITY_SEQ_FRAME_gtFine_labelIds.png`, cityscapesScripts' name for a label-id image (its evaluation finds a
    prediction by CITY_SEQ_FRAME alone: cityscapesscripts/evaluation/evalPixelLevelSemanticLabeling.py getPrediction),
    is one of PRED_SUFFIXES: the ground truth's own files, scored as predictions, must be found and score 100."""
    mt.make_cityscapes(tmp_path / "cityscapes", n={"val": 2})
    preds = tmp_path / "preds"
    preds.mkdir()
    for label in (tmp_path / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"):
        shutil.copy(label, preds / label.name)
    result = scoring.score_prediction_dir(build_dataset("cityscapes", "val", root=tmp_path), preds, "cityscapes")
    assert result["miou"] == pytest.approx(100.0)


def test_preds_refuse_a_protocol_that_resizes_the_label(tmp_path, capsys):
    """--preds scores each PNG against the label as stored; under `robustnet` Mapillary's scored label is resized and
    cropped (data/eval_protocols.py), so the result would record a protocol that was never applied."""
    truth = mt.make_mapillary(tmp_path / "mapillary", n={"validation": 1})
    preds = tmp_path / "preds"
    preds.mkdir()
    for image, tids in truth.items():
        cv2.imwrite(str(preds / f"{image.stem}.png"), tids)
    base = ["--preds", str(preds), "--dataset", "mapillary", "--data-root", str(tmp_path)]
    assert evaluate_cli.main(base + ["--set", "eval.protocol=robustnet"]) == 2
    assert "eval.protocol='robustnet'" in capsys.readouterr().err
    assert evaluate_cli.main(base) == 0  # native: the label as stored
    assert json.loads(capsys.readouterr().out)["miou"] == pytest.approx(100.0)


def test_a_prediction_that_cannot_be_written_is_an_error(tmp_path):
    """cv2.imwrite reports failure by returning False: a lost --save-preds file must not pass silently."""
    (tmp_path / "taken.png").mkdir()  # a directory where the PNG should go
    with pytest.raises(OSError, match="taken.png"):
        scoring.save_prediction(tmp_path / "taken.png", np.zeros((4, 4), np.uint8))
    scoring.save_prediction(tmp_path / "ok.png", np.full((4, 4), 7, np.uint8))
    assert (cv2.imread(str(tmp_path / "ok.png"), cv2.IMREAD_UNCHANGED) == 7).all()


# -- training loop safety -------------------------------------------------------------------------------------------
class NaNAfter(torch.nn.Module):
    """Wraps a model and returns NaN logits from the given forward call on."""

    def __init__(self, model, after):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x):
        self.calls += 1
        out = self.model(x)
        if self.calls > self.after:
            out = {"out": out["out"] * float("nan")}
        return out


def _tiny_train(tmp_path, model, iters=4, identity=None, monkeypatch=None):
    ds = build_dataset("sim", "train", root=tmp_path / "data")
    settings = TrainSettings(iters=iters, batch_size=2, workers=0, ckpt_every=2, keep_ckpts=5)
    return train(model, ds, build_train_transform((32, 32), (0.5, 1.0)), settings, seed=0, device=torch.device("cpu"),
                 ckpt_dir=tmp_path / "ckpt", identity=identity or {"a": 1})


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 4, "val": 1})
    torch.manual_seed(0)
    model = NaNAfter(PixelModel(), after=2)
    with pytest.raises(NonFiniteLoss, match="at iteration 2;.*last good checkpoint"):
        _tiny_train(tmp_path, model, iters=6)
    (it, path), = list_checkpoints(tmp_path / "ckpt")
    assert it == 2
    state = load_checkpoint(path)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resuming_under_another_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 4, "val": 1})
    torch.manual_seed(0)
    _tiny_train(tmp_path, PixelModel(), iters=2, identity={"lr": 0.01, "backbone": "x"})
    with pytest.raises(CheckpointMismatch, match=r"lr: checkpoint has 0.01, this run has 0.02"):
        _tiny_train(tmp_path, PixelModel(), iters=4, identity={"lr": 0.02, "backbone": "x"})


def test_auxiliary_loss_is_added_with_its_weight():
    from segbench.engine.train import segmentation_loss

    torch.manual_seed(0)
    target = torch.randint(0, 19, (2, 8, 8))
    target[0, 0, 0] = 255
    main, aux = torch.randn(2, 19, 8, 8), torch.randn(2, 19, 8, 8)
    plain = segmentation_loss({"out": main}, target, aux_weight=0.4)
    both = segmentation_loss({"out": main, "aux": aux}, target, aux_weight=0.4)
    expected = torch.nn.functional.cross_entropy(aux, target, ignore_index=255)
    torch.testing.assert_close(both - plain, 0.4 * expected)


def _official_ce_and_grads(logits, target, weight=1.0):
    """shachoi/RobustNet loss.py get_loss: nn.CrossEntropyLoss(reduction='mean', ignore_index=255), and its gradient."""
    x = logits.detach().clone().requires_grad_(True)
    value = torch.nn.CrossEntropyLoss(reduction="mean", ignore_index=255)(x, target)
    (weight * value).backward()
    return value.detach(), x.grad


def test_a_batch_without_labelled_pixels_adds_nothing_and_is_not_nan():
    """The official criterion over zero labelled pixels is 0/0 = NaN with a zero gradient, and RobustNet's train.py
    steps on; here the term is 0 with that same zero gradient, so the NaN guard does not stop a healthy run."""
    from segbench.engine.train import segmentation_loss

    torch.manual_seed(0)
    main = torch.randn(2, 19, 8, 8, requires_grad=True)
    empty = torch.full((2, 8, 8), 255)
    loss = segmentation_loss({"out": main}, empty, aux_weight=0.4)
    loss.backward()
    value, official_grad = _official_ce_and_grads(main, empty)
    assert value.isnan() and torch.isfinite(loss) and loss.item() == 0.0
    torch.testing.assert_close(main.grad, official_grad, rtol=0, atol=0)

    # labelled pixels in the main label, none left in the aux label at 1/4 (nearest keeps rows/cols 0 and 4)
    target = torch.full((2, 8, 8), 255)
    target[:, 1:4, 1:4] = 3
    main = torch.randn(2, 19, 8, 8, requires_grad=True)
    aux = torch.randn(2, 19, 2, 2, requires_grad=True)
    loss = segmentation_loss({"out": main, "aux": aux}, target, aux_weight=0.4)
    loss.backward()
    main_value, main_grad = _official_ce_and_grads(main, target)
    aux_value, aux_grad = _official_ce_and_grads(aux, target[:, ::4, ::4], weight=0.4)
    assert aux_value.isnan() and loss.item() == main_value.item()
    torch.testing.assert_close(main.grad, main_grad, rtol=0, atol=0)
    torch.testing.assert_close(aux.grad, aux_grad, rtol=0, atol=0)


def test_one_labelled_pixel_is_the_official_mean_over_the_whole_batch():
    """The mean is over the labelled pixels of the whole batch (not per image): one image with 1 labelled pixel and
    one with 63 weigh their pixels, not themselves, equally."""
    from segbench.engine.train import segmentation_loss

    torch.manual_seed(1)
    target = torch.randint(0, 19, (2, 8, 8))
    target[0] = 255
    target[0, 5, 2] = 7
    target[1, 0, 0] = 255
    main = torch.randn(2, 19, 8, 8, requires_grad=True)
    loss = segmentation_loss({"out": main}, target, aux_weight=0.4)
    loss.backward()
    value, grad = _official_ce_and_grads(main, target)
    logp = torch.log_softmax(main.detach(), 1).permute(0, 2, 3, 1)[target != 255]
    by_hand = -logp[torch.arange(len(logp)), target[target != 255]].sum() / 64
    torch.testing.assert_close(loss.detach(), value, rtol=0, atol=0)
    torch.testing.assert_close(loss.detach(), by_hand)
    torch.testing.assert_close(main.grad, grad, rtol=0, atol=0)


class UnlabelledSource:
    """One 16x16 frame whose every pixel is ignored (255): `len` and `load_pair` are all `train()` reads."""

    def __len__(self):
        return 1

    def load_pair(self, index):
        return np.full((16, 16, 3), 128, np.uint8), np.full((16, 16), 255, np.uint8)


def test_training_steps_on_over_a_frame_without_labels(tmp_path, one_thread):
    """Such a step is weight decay and momentum only (torch.optim.SGD, dampening 0: d = g + wd p, buf = momentum buf
    + d, p -= lr buf, here with g = 0), as in RobustNet's train.py: not a NaN loss that stops the run."""
    torch.manual_seed(0)
    model = PixelModel()
    p0 = [p.detach().clone() for p in model.parameters()]
    settings = TrainSettings(iters=2, batch_size=1, lr=0.05, momentum=0.5, weight_decay=0.1, power=0.9, workers=0,
                             ckpt_every=0, crop=(16, 16), scale_range=(1.0, 1.0), amp=False)
    train(model, UnlabelledSource(), build_train_transform((16, 16), (1.0, 1.0)), settings, seed=0,
          device=torch.device("cpu"), ckpt_dir=tmp_path / "ckpt", identity={})
    for p, final in zip(p0, model.parameters()):
        buf = 0.1 * p
        p1 = p - 0.05 * buf
        buf = 0.5 * buf + 0.1 * p1
        p2 = p1 - 0.05 * (1 / 2) ** 0.9 * buf
        torch.testing.assert_close(final.detach(), p2)


# -- scoring a model end to end against a known answer ---------------------------------------------------------------
KNOWN_YAML = """\
segbench_dataset: 1
name: engine-known-answer
root: known
splits: [val]
images: {dir: "img/{split}", suffix: ".png"}
labels: {dir: "gt/{split}", suffix: "_gt.png"}
encoding: trainid
eval_classes: [0, 2, 8, 10, 11, 13, 18]
"""
BLOCK_CLASSES = (0, 1, 2, 8, 10, 13)  # what the images show
NOISE_CLASS = 11  # single label pixels the images do not show: no model can get them right


def _red_of(train_id):
    """The image encodes a block's class in its red channel."""
    return 20 + 10 * train_id


class RedChannelModel(torch.nn.Module):
    """Predicts, at each pixel, the class whose red level is nearest to the pixel's (undoing ImageNet normalisation,
    mean 0.485 / std 0.229 on red); one-hot logits."""

    def forward(self, x):
        red = (x[:, 0] * 0.229 + 0.485) * 255
        cls = ((red - 20) / 10).round().clamp(0, 18).long()
        return {"out": torch.nn.functional.one_hot(cls, 19).permute(0, 3, 1, 2).float()}


def _known_frame(seed, h=32, w=64, block=8):
    """(block map the image shows, label): 8x8 class blocks; the label adds NOISE_CLASS on a sparse grid of odd pixels
    and an ignored odd row, detail that only exists at the label's native resolution."""
    rng = np.random.default_rng(seed)
    shown = rng.choice(BLOCK_CLASSES, (h // block, w // block)).repeat(block, 0).repeat(block, 1).astype(np.uint8)
    label = shown.copy()
    label[1::4, 1::4] = NOISE_CLASS
    label[5, :] = 255
    return shown, label


def test_evaluation_of_a_known_model_through_a_dataset_adapter(tmp_path, one_thread):
    """YAML dataset on disk -> eval transform at half resolution -> logits upsampled to the label -> one confusion
    matrix over the split; the expected IoUs are counted here with numpy."""
    import minitrees as mt
    from segbench.data.transforms import eval_transform_for
    from segbench.data.yaml_dataset import register_yaml
    from segbench.engine.scoring import evaluate

    frames = [_known_frame(seed) for seed in range(2)]
    root = tmp_path / "data" / "known"
    for i, (shown, label) in enumerate(frames):
        rgb = np.stack([_red_of(shown), np.full_like(shown, 128), np.zeros_like(shown)], -1).astype(np.uint8)
        mt.write_rgb(root / "img/val" / f"f{i}.png", rgb)
        mt.write_gray(root / "gt/val" / f"f{i}_gt.png", label)
    spec = tmp_path / "known.yaml"
    spec.write_text(KNOWN_YAML)
    name = register_yaml(spec)  # unregistered after the test (conftest's scoped_datasets)
    ds = build_dataset(name, "val", root=tmp_path / "data")
    ds.transform = eval_transform_for(ds, (16, 32))  # the model sees a quarter of the pixels
    result = evaluate(RedChannelModel(), ds, device=torch.device("cpu"), eval_classes=ds.eval_classes, workers=0,
                      dump_dir=tmp_path / "preds", dump_count=2)

    # the upsampled prediction is the block map at the label's resolution
    for i, (shown, _) in enumerate(frames):
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "preds" / f"f{i}.png"), cv2.IMREAD_GRAYSCALE), shown)

    pred = np.concatenate([s.ravel() for s, _ in frames]).astype(np.int64)
    gt = np.concatenate([lab.ravel() for _, lab in frames]).astype(np.int64)
    keep = gt != 255
    pred, gt = pred[keep], gt[keep]
    # trainId -> name as in cityscapesScripts `helpers/labels.py`
    names = {0: "road", 2: "building", 8: "vegetation", 10: "sky", 11: "person", 13: "car", 18: "bicycle"}
    expected = {}
    for c in names:
        tp = np.sum((gt == c) & (pred == c))
        union = np.sum((gt == c) | (pred == c))
        expected[names[c]] = None if union == 0 else 100.0 * tp / union
    assert expected["person"] == 0.0 and expected["bicycle"] is None  # noise never predicted; bicycle nowhere
    assert result["per_class_iou"].keys() == expected.keys()
    for cls, iou in expected.items():
        assert result["per_class_iou"][cls] == (None if iou is None else pytest.approx(iou, abs=1e-9)), cls
    present = [v for v in expected.values() if v is not None]
    assert result["miou"] == pytest.approx(sum(present) / len(present), abs=1e-9)
    assert result["num_classes_scored"] == len(present)
