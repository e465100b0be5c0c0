"""The GPU path, which CPU CI cannot see: marked `cuda`, skipped without a CUDA device.
`python benchmarks/gpu_check.py` runs them (`pytest -m cuda tests/test_cuda.py`).

References are fp32 with TF32 off (the `gpu` fixture), so a difference comes from the path under test.

Gradient tolerances: at random initialisation, with BatchNorm and InstanceNorm in training mode, the gradient is
ill-conditioned: rounding only the weights and the input to bf16, everything else in fp32, already turns it by
1 - cos = 0.03-0.04 (ResNet-18-IBN-a + FCN, batch 2 at 64x64, measured on CPU; normalisation backward subtracts nearly
equal terms), and a whole bf16 step by 0.06 (CPU autocast). So a reduced-precision step is held to a few times that
rounding floor, measured on the same batch, and to cos > 0.99 where normalisation uses running statistics (eval mode)
and the gradient is well conditioned (1 - cos = 0.001 there on CPU).
"""
import contextlib
import copy
import csv
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from segbench import distributed as dist_utils
from segbench.config import EvalSettings, TrainSettings
from segbench.engine import scoring
from segbench.engine.inference import predict
from segbench.engine.train import autocast_for, segmentation_loss, train
from segbench.models import create_model
from tiny_models import PixelModel

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BACKBONE = "resnet18_ibn_a"  # IBN-a: InstanceNorm and BatchNorm side by side, the layers this benchmark is about
#: a reduced-precision gradient may turn at most this many times further from fp32 than the rounding floor does
FLOOR_FACTOR = 5.0


@pytest.fixture
def gpu():
    """cuda:0 with TF32 off, so fp32 on the GPU is fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def seeded_model(backbone: str = BACKBONE, head: str = "fcn") -> nn.Module:
    """The same network every call, dropout off so that two runs of it see the same function."""
    torch.manual_seed(0)
    model = create_model(backbone, head)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def block_batch(n: int = 2, h: int = 64, w: int = 64, seed: int = 0):
    """Images of flat class-coloured rectangles plus noise, with their labels (and an ignored band): a batch a model
    can learn from, unlike noise labelled at random."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.rand(19, 3, generator=g) * 4 - 2
    labels = torch.zeros(n, h, w, dtype=torch.long)
    for i in range(n):
        for _ in range(12):
            y0, x0 = (int(v) for v in torch.randint(0, min(h, w), (2,), generator=g))
            bh, bw = (int(v) for v in torch.randint(8, max(9, min(h, w) // 2), (2,), generator=g))
            labels[i, y0:y0 + bh, x0:x0 + bw] = int(torch.randint(0, 19, (1,), generator=g))
    images = palette[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(n, 3, h, w, generator=g)
    labels[:, :2] = 255
    return images.contiguous(), labels


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten() for p in model.parameters() if p.grad is not None])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def fp32_step(model: nn.Module, x, y):
    """Loss and flat gradient of one fp32 step (gradients zeroed first)."""
    model.zero_grad(set_to_none=True)
    loss = segmentation_loss(model(x), y, 0.4)
    loss.backward()
    return loss.detach().float(), flat_grad(model)


def rounding_floor(model: nn.Module, x, y, dtype: torch.dtype) -> float:
    """1 - cos between the fp32 gradient and the fp32 gradient of the same model with weights and input rounded to
    `dtype`: how far the gradient turns from rounding alone, whatever arithmetic follows."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(dtype).float())
    _, exact = fp32_step(copy.deepcopy(model), x, y)
    _, after_rounding = fp32_step(rounded, x.to(dtype).float(), y)
    return 1 - cosine(exact, after_rounding)


# ------------------------------------------------------------------------------------------------ mixed precision
def test_bf16_autocast_step_matches_fp32(gpu):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU: training takes the fp16 + GradScaler path (its own test)")
    amp_ctx, scaler = autocast_for(gpu, True)
    assert scaler is None and amp_ctx.fast_dtype == torch.bfloat16
    x, y = (t.to(gpu) for t in block_batch())
    for training, check in ((True, "floor"), (False, "cos")):
        model = seeded_model().to(gpu).train(training)
        ref_loss, ref_grad = fp32_step(copy.deepcopy(model), x, y)
        with amp_ctx:
            loss = segmentation_loss(model(x), y, 0.4)
        loss.backward()
        grad = flat_grad(model)
        assert torch.isfinite(grad).all()
        assert abs(loss.item() - ref_loss.item()) <= 2e-2 * abs(ref_loss.item()), (training, loss, ref_loss)
        gap = 1 - cosine(grad, ref_grad)
        if check == "floor":
            floor = rounding_floor(seeded_model().to(gpu).train(), x, y, torch.bfloat16)
            assert gap <= FLOOR_FACTOR * floor + 1e-3, f"bf16 gradient 1-cos {gap:.4f}, rounding floor {floor:.4f}"
        else:
            assert gap < 0.01, f"bf16 gradient with running-statistics normalisation: 1-cos {gap:.4f}"


def test_fp16_with_grad_scaler_where_bf16_is_missing(gpu, monkeypatch):
    """The path of pre-Ampere cards, forced here: fp16 autocast and a GradScaler whose unscaled gradients match fp32
    and whose step is taken (a first step that overflows is skipped and retried at half the scale, as it should)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    amp_ctx, scaler = autocast_for(gpu, True)
    assert amp_ctx.fast_dtype == torch.float16 and isinstance(scaler, torch.amp.GradScaler)
    x, y = (t.to(gpu) for t in block_batch())
    model = seeded_model().to(gpu).train()
    ref_loss, ref_grad = fp32_step(copy.deepcopy(model), x, y)
    floor = rounding_floor(model, x, y, torch.float16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for _ in range(4):
        optimizer.zero_grad(set_to_none=True)
        with amp_ctx:
            loss = segmentation_loss(model(x), y, 0.4)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad = flat_grad(model)
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if torch.isfinite(grad).all():
            break
        assert scaler.get_scale() == scale / 2  # overflow: step skipped, scale halved
    else:
        pytest.fail("every fp16 step overflowed, even at 1/8 of the initial scale")
    assert scaler.get_scale() == scale, "a finite step must not change the scale"
    assert abs(loss.item() - ref_loss.item()) <= 2e-2 * abs(ref_loss.item())
    gap = 1 - cosine(grad, ref_grad)
    assert gap <= FLOOR_FACTOR * floor + 1e-3, f"fp16 gradient 1-cos {gap:.4f}, rounding floor {floor:.4f}"
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[name], after[name]) for name in before), "the step was not taken"
    assert all(torch.isfinite(p).all() for p in after.values())


# ---------------------------------------------------------------------------------------- memory format, compile
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_channels_last_gives_the_same_logits(gpu, precision):
    """Training on CUDA converts model and batches to channels_last; the logits must not change (IN included)."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    model = seeded_model().to(gpu).train()  # normalisation on batch statistics, as in a training step
    x, _ = block_batch()
    x = x.to(gpu)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    with torch.no_grad():
        exact = copy.deepcopy(model)(x)["out"].float()
        with amp():
            standard = model(x)["out"].float()
        model.to(memory_format=torch.channels_last)
        with amp():
            channels_last = model(x.contiguous(memory_format=torch.channels_last))["out"].float()
    scale = exact.abs().max().item()
    gap = (channels_last - standard).abs().max().item() / scale
    if precision == "fp32":
        assert gap < 1e-4, f"fp32 logits differ by {gap:.2e} of their range between memory formats"
    else:  # two bf16 evaluations: at most a few times the error bf16 itself makes
        bf16_error = (standard - exact).abs().max().item() / scale
        assert gap <= 3 * bf16_error + 1e-3, f"channels_last {gap:.2e} vs bf16 error {bf16_error:.2e}"
        flips = (channels_last.argmax(1) != standard.argmax(1)).float().mean().item()
        bf16_flips = (standard.argmax(1) != exact.argmax(1)).float().mean().item()  # near-ties of a random model
        assert flips <= 3 * bf16_flips + 1e-3, f"channels_last changes {flips:.2%} of the classes, bf16 {bf16_flips:.2%}"


class BatchSource:
    """Pre-made tensors behind the adapter interface train() reads (`len`, `load_pair`)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def load_pair(self, i):
        return self.images[i], self.labels[i]


class NoAugmentation:
    def __call__(self, image, mask):
        return {"image": image, "mask": mask}


def test_compiled_training_step_matches_eager(gpu, tmp_path):
    """segbench's own loop with train.compile=true: finite loss, and the same two steps as without compile."""
    images, labels = block_batch(n=4)
    source = BatchSource(list(images), list(labels))
    results = {}
    for compiled in (False, True):
        model = seeded_model()
        start = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        settings = TrainSettings(iters=2, batch_size=2, workers=0, ckpt_every=0, amp=False, compile=compiled)
        log = tmp_path / f"log_{compiled}.csv"
        train(model, source, NoAugmentation(), settings, seed=0, device=gpu, ckpt_dir=tmp_path / f"ckpt_{compiled}",
              identity={}, log_path=log)
        with open(log, newline="") as f:
            loss = float(list(csv.DictReader(f))[-1]["loss"])
        end = torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()
        results[compiled] = loss, end - start
    (eager_loss, eager_delta), (compiled_loss, compiled_delta) = results[False], results[True]
    assert torch.isfinite(torch.tensor(compiled_loss)) and torch.isfinite(compiled_delta).all()
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-3)
    assert cosine(compiled_delta, eager_delta) > 0.99


# ------------------------------------------------------------------------------------------------ scoring, inference
class TinySplit(torch.utils.data.Dataset):
    """Normalised image tensors and trainId masks, as an eval preset gives them; one frame of another size."""

    def __init__(self):
        self.items = []
        for seed, (h, w) in enumerate([(64, 96), (64, 96), (80, 80)]):
            images, labels = block_batch(n=1, h=h, w=w, seed=seed)
            self.items.append((images[0], labels[0]))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_evaluate_on_cuda_gives_the_cpu_confusion_matrix(gpu, monkeypatch):
    """Every pixel whose CPU logits have a clear winner (top-2 margin above 1e-3 of the logit range; fp32 CPU and GPU
    differ by ~1e-6) must get the same class on the GPU; only near-ties may move, and there are few or none."""
    matrices = []

    class Recording(scoring.ConfusionMatrix):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            matrices.append(self)

    monkeypatch.setattr(scoring, "ConfusionMatrix", Recording)
    model = seeded_model().eval()
    data = TinySplit()
    cpu = torch.device("cpu")
    on_cpu = scoring.evaluate(copy.deepcopy(model), data, device=cpu, workers=0)
    on_gpu = scoring.evaluate(copy.deepcopy(model), data, device=gpu, workers=0)
    cm_cpu, cm_gpu = (m.counts.cpu() for m in matrices)
    assert matrices[1].counts.device.type == "cuda"

    near_ties = 0
    gpu_model = copy.deepcopy(model).to(gpu).eval()
    for image, mask in data:
        logits = predict(model, image[None], tuple(mask.shape))
        top2 = logits.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-3 * logits.abs().max()
        near_ties += int((~clear).sum())
        gpu_pred = predict(gpu_model, image[None].to(gpu), tuple(mask.shape)).argmax(1).cpu()
        assert torch.equal(gpu_pred[clear], logits.argmax(1)[clear])
    assert near_ties <= 0.02 * sum(mask.numel() for _, mask in data), "the fixed model has too many near-ties"
    moved = int((cm_gpu - cm_cpu).abs().sum()) // 2
    assert cm_gpu.sum() == cm_cpu.sum() and moved <= near_ties
    if moved == 0:
        assert torch.equal(cm_gpu, cm_cpu) and on_gpu == on_cpu


def test_sliding_window_inference_on_cuda(gpu):
    image = torch.randn(1, 3, 100, 150, generator=torch.Generator().manual_seed(0))
    out_size = (200, 300)  # labels at twice the resolution: logits are upsampled to them
    # a per-pixel model: windows cannot change any pixel, so sliding windows equal the whole image
    torch.manual_seed(0)
    pixel = PixelModel().to(gpu).eval()
    slide = EvalSettings(mode="slide", window=(64, 64), stride=(40, 40))
    whole = predict(pixel, image.to(gpu), out_size)
    windows = predict(pixel, image.to(gpu), out_size, slide)
    assert windows.device.type == "cuda" and windows.shape == (1, 19, *out_size)
    torch.testing.assert_close(windows, whole, rtol=1e-5, atol=1e-5)
    # a real model with flip and two scales: the GPU gives what the CPU gives
    model = seeded_model().eval()
    tta = EvalSettings(mode="slide", window=(64, 64), stride=(40, 40), flip=True, scales=(0.75, 1.0))
    on_gpu = predict(copy.deepcopy(model).to(gpu), image.to(gpu), out_size, tta).cpu()
    on_cpu = predict(model, image, out_size, tta)
    assert on_gpu.shape == on_cpu.shape == (1, 19, *out_size)
    assert (on_gpu - on_cpu).abs().max() < 5e-4  # sums of softmax probabilities: a broken path differs by ~0.1


# ------------------------------------------------------------------------------------------------ distributed
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_syncbatchnorm_in_a_one_process_nccl_group(gpu, monkeypatch):
    """segbench's distributed helpers on NCCL: join a 1-process group, convert BatchNorm to SyncBatchNorm (IN left
    alone: it is per-sample), wrap in DDP, and train a step that matches the plain model's."""
    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    device = dist_utils.init_from_env("cuda")
    try:
        assert dist.get_backend() == "nccl" and dist_utils.world_size() == 1 and device == gpu
        ones = torch.ones(3, device=device)
        dist.all_reduce(ones)
        assert ones.tolist() == [1.0, 1.0, 1.0]

        model = seeded_model().to(device).train()
        reference = copy.deepcopy(model)
        instance_norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
        batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert instance_norms and batch_norms
        with monkeypatch.context() as patch:  # wrap_ddp converts only when several processes train
            patch.setattr(dist_utils, "world_size", lambda: 2)
            wrapped = dist_utils.wrap_ddp(model, device)
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel)
        inner = wrapped.module
        norms = [m for m in inner.modules() if isinstance(m, _BatchNorm)]
        assert len(norms) == batch_norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
        assert [m for m in inner.modules() if isinstance(m, nn.InstanceNorm2d)] == instance_norms  # the same objects

        x, y = (t.to(device) for t in block_batch())
        loss = segmentation_loss(wrapped(x), y, 0.4)
        loss.backward()
        ref_loss, ref_grad = fp32_step(reference, x, y)
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
        assert cosine(flat_grad(inner), ref_grad) > 0.9999
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["iw", "irw", "isw", "sw", "mixstyle", "dsu", "np"])
def test_every_feature_method_trains_under_bf16_autocast_on_the_gpu_like_fp32_on_the_cpu(gpu, name):
    """A method's modules and loss terms on CUDA under autocast: a finite loss and gradients, and then the eval-mode
    output on the GPU matches the same weights on the CPU (the perturbations vanish in eval; SW's running statistics
    and the IN layers run on both devices alike)."""
    from segbench.methods import Batch, build_method

    method = build_method(name, {"p": 1.0} if name in ("mixstyle", "dsu", "np") else {})
    model = seeded_model("resnet18")
    method.build(model)
    image, target = block_batch()
    model = model.to(gpu).train()
    amp, _ = autocast_for(gpu, True)
    with amp:
        outputs = model(image.to(gpu))
        loss = segmentation_loss(outputs, target.to(gpu), 0.4)
        for term in method.losses(model, outputs, Batch(image.to(gpu), target.to(gpu)), 0).values():
            loss = loss + term
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        gpu_out = model(image.to(gpu))["out"].cpu()
        reference = copy.deepcopy(model).cpu()(image)["out"]
    torch.testing.assert_close(gpu_out, reference, rtol=1e-3, atol=1e-3)
