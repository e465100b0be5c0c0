"""`eval.batch_size`: images of one size go through the model together; the scores are the one-at-a-time scores."""
import numpy as np
import torch

from segbench.engine.scoring import _same_size_runs, evaluate
from segbench.models import create_model


class Frames(torch.utils.data.Dataset):
    """Normalised images of two sizes, in an order that interleaves them, with random labels (some ignored)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        sizes = [(32, 48), (32, 48), (40, 40), (32, 48), (40, 40), (40, 40), (32, 48)]
        self.items = []
        for h, w in sizes:
            label = torch.randint(0, 19, (h, w), generator=g)
            label[0] = 255
            self.items.append((torch.randn(3, h, w, generator=g), label))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_batched_evaluation_gives_the_one_at_a_time_matrices_image_by_image(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18_ibn_a", "fcn", output_stride=8)  # BatchNorm and InstanceNorm, in eval mode
    data, cpu = Frames(), torch.device("cpu")
    one = evaluate(model, data, device=cpu, workers=0, batch_size=1, per_image_path=tmp_path / "one.npz")
    four = evaluate(model, data, device=cpu, workers=0, batch_size=4, per_image_path=tmp_path / "four.npz")
    assert one == four
    a, b = np.load(tmp_path / "one.npz")["counts"], np.load(tmp_path / "four.npz")["counts"]
    np.testing.assert_array_equal(a, b)
    assert a.sum() == sum(int((label != 255).sum()) for _, label in data.items)


def test_a_loader_batch_splits_where_the_size_changes():
    items = [(i, torch.zeros(3, *size), torch.zeros(size)) for i, size in enumerate([(2, 3), (2, 3), (4, 4), (2, 3)])]
    assert [[i for i, _, _ in run] for run in _same_size_runs(items)] == [[0, 1], [2], [3]]


def test_the_progress_bar_counts_images_not_batches_times_the_batch_size(monkeypatch):
    """7 frames in batches of 4 are 7 images (the old bar scaled 2 batches by 4 and reached 8)."""
    import segbench.engine.scoring as scoring

    bars = []

    class Recorded(scoring.tqdm):
        def close(self):
            bars.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(scoring, "tqdm", Recorded)
    model = create_model("resnet18", "fcn", output_stride=8)
    evaluate(model, Frames(), device=torch.device("cpu"), workers=0, batch_size=4)
    assert bars[0] == (7, 7)  # images done, images in all
