"""The Mask2Former heads: the transformers configuration pinned field by field against Rein's mmdet config
(w1oves/Rein configs/_base_/models/rein_dinov2_mask2former.py), the matcher and each loss term against mmdet's
formulas typed in here (mmdet 3.x models/task_modules/assigners/match_cost.py ClassificationCost,
CrossEntropyLossCost, DiceCost; models/dense_heads/mask2former_head.py _get_targets_single and
maskformer_head.py / mask2former_head.py loss_by_feat_single; models/utils/point_sample.py
get_uncertain_point_coords_with_randomness) on the same random point draws, and semantic inference on known outputs
(mmseg Mask2FormerHead.predict)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

pytest.importorskip("transformers")  # the vfm extra (CI installs it)
from segbench.models.mask2former import M2F_CONFIG, Mask2FormerHead, semantic_scores, semantic_targets  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: Rein's decode_head (rein_dinov2_mask2former.py), in transformers' field names (see the head's docstring table)
REIN = {"num_queries": 100, "hidden_dim": 256, "mask_feature_size": 256, "feature_size": 256, "encoder_layers": 6,
        "encoder_feedforward_dim": 1024, "decoder_layers": 9 + 1, "dim_feedforward": 2048, "num_attention_heads": 8,
        "dropout": 0.0, "pre_norm": False, "enforce_input_projection": False, "class_weight": 2.0, "mask_weight": 5.0,
        "dice_weight": 5.0, "no_object_weight": 0.1, "train_num_points": 12544, "oversample_ratio": 3.0,
        "importance_sample_ratio": 0.75, "use_auxiliary_loss": True, "feature_strides": [4, 8, 16, 32],
        "common_stride": 4}


def test_the_configuration_is_reins_field_by_field():
    with torch.device("meta"):
        head = Mask2FormerHead([1024] * 4, 19)
    for field, value in REIN.items():
        assert getattr(head.config, field) == value, field
        assert M2F_CONFIG[field] == value, field
    assert head.config.num_labels == 19 and head.class_predictor.out_features == 20
    assert len(head.transformer.decoder.layers) == 9
    layer = head.pixel_decoder.encoder.layers[0].self_attn
    assert (layer.n_heads, layer.n_levels, layer.n_points) == (8, 3, 4)
    assert head.pixel_decoder.input_projections[0][1].num_groups == 32
    assert not any("criterion" in k for k in head.state_dict())  # the loss's class weights are not trained weights


def point_sample(x, coords):
    """mmcv point_sample (align_corners False): grid_sample at 2 * coords - 1."""
    return F.grid_sample(x, 2.0 * coords.unsqueeze(2) - 1.0, align_corners=False).squeeze(3)


class Replay:
    """torch.rand that hands back, in order, the draws another run made (and checks each shape)."""

    def __init__(self, draws):
        self.draws = list(draws)

    def __call__(self, *shape, device=None, **kwargs):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)
        draw = self.draws.pop(0)
        assert tuple(draw.shape) == shape, (tuple(draw.shape), shape)
        return draw


def mmdet_reference(cls_score, mask_pred, gt_labels, gt_masks, rand, num_points, num_classes):
    """Match (per image) and the three losses of one decoder output, mmdet's way."""
    batch, num_queries = cls_score.shape[:2]
    indices = []
    for i in range(batch):  # Mask2FormerHead._get_targets_single + HungarianAssigner
        coords = rand((1, num_points, 2))
        pred_points = point_sample(mask_pred[i].unsqueeze(1), coords.repeat(num_queries, 1, 1)).squeeze(1)
        gt_points = point_sample(gt_masks[i].unsqueeze(1).float(), coords.repeat(len(gt_labels[i]), 1, 1)).squeeze(1)
        cls_cost = -cls_score[i].softmax(-1)[:, gt_labels[i]] * 2.0  # ClassificationCost
        pos = F.binary_cross_entropy_with_logits(pred_points, torch.ones_like(pred_points), reduction="none")
        neg = F.binary_cross_entropy_with_logits(pred_points, torch.zeros_like(pred_points), reduction="none")
        ce_cost = (pos @ gt_points.T + neg @ (1 - gt_points).T) / num_points * 5.0  # CrossEntropyLossCost
        p = pred_points.sigmoid()
        dice_cost = (1 - (2 * p @ gt_points.T + 1) / (p.sum(-1)[:, None] + gt_points.sum(-1)[None] + 1)) * 5.0
        rows, cols = linear_sum_assignment((cls_cost + ce_cost + dice_cost).detach().numpy())
        indices.append((torch.as_tensor(rows), torch.as_tensor(cols)))
    # loss_by_feat_single: class CE with weights [1 .. 1, 0.1], averaged by the weights of the labels
    labels = torch.full((batch, num_queries), num_classes, dtype=torch.long)
    for i, (rows, cols) in enumerate(indices):
        labels[i, rows] = gt_labels[i][cols]
    class_weight = torch.ones(num_classes + 1)
    class_weight[-1] = 0.1
    flat = labels.flatten()
    loss_cls = F.cross_entropy(cls_score.flatten(0, 1), flat, weight=class_weight, reduction="sum") / \
        class_weight[flat].sum()
    preds = torch.cat([mask_pred[i][rows] for i, (rows, _) in enumerate(indices)])
    targets = torch.cat([gt_masks[i][cols] for i, (_, cols) in enumerate(indices)]).float()
    num_total_masks = max(float(sum(len(g) for g in gt_labels)), 1.0)
    # get_uncertain_point_coords_with_randomness(mask_preds.unsqueeze(1), None, num_points, 3.0, 0.75)
    sampled = int(num_points * 3.0)
    coords = rand((preds.shape[0], sampled, 2))
    logits = point_sample(preds.unsqueeze(1), coords)
    uncertainty = -torch.abs(logits)
    k = int(0.75 * num_points)
    idx = torch.topk(uncertainty[:, 0, :], k=k, dim=1)[1]
    chosen = coords.reshape(-1, 2)[(idx + sampled * torch.arange(preds.shape[0])[:, None]).view(-1)]
    coords = torch.cat([chosen.view(preds.shape[0], k, 2), rand((preds.shape[0], num_points - k, 2))], dim=1)
    point_targets = point_sample(targets.unsqueeze(1), coords).squeeze(1)
    point_preds = point_sample(preds.unsqueeze(1), coords).squeeze(1)
    loss_mask = F.binary_cross_entropy_with_logits(point_preds, point_targets, reduction="none").mean(1).sum() / \
        num_total_masks  # CrossEntropyLoss(use_sigmoid) on points, avg_factor num_total_masks * num_points
    p = point_preds.sigmoid()
    loss_dice = (1 - (2 * (p * point_targets).sum(1) + 1) / (p.sum(1) + point_targets.sum(1) + 1)).sum() / \
        num_total_masks  # DiceLoss(naive_dice, eps 1)
    return indices, {"loss_cross_entropy": 2.0 * loss_cls, "loss_mask": 5.0 * loss_mask, "loss_dice": 5.0 * loss_dice}


def test_the_matcher_and_each_loss_term_equal_mmdets_on_the_same_draws(monkeypatch):
    torch.manual_seed(0)
    num_points, classes = 64, 4
    head = Mask2FormerHead([8] * 4, classes, num_queries=6, hidden_dim=32, mask_feature_size=32, feature_size=32,
                           dim_feedforward=32, encoder_feedforward_dim=32, decoder_layers=2, num_attention_heads=2,
                           train_num_points=num_points)
    cls_score = torch.randn(2, 6, classes + 1)
    mask_pred = torch.randn(2, 6, 8, 8)
    target = torch.randint(0, classes, (2, 32, 32))
    target[0, :4] = 255
    gt_labels, gt_masks = semantic_targets(target)
    draws, real = [], torch.rand

    def recording(*args, **kwargs):
        draws.append(real(*args, **kwargs))
        return draws[-1]

    monkeypatch.setattr(torch, "rand", recording)
    ours = head.loss({"class_logits": [cls_score], "mask_logits": [mask_pred]}, target)
    assert [tuple(d.shape) for d in draws][:2] == [(1, num_points, 2)] * 2  # the matcher's, one per image
    monkeypatch.setattr(torch, "rand", Replay(draws[:2]))  # the matching the loss made, again, to read it
    matched = head.criterion.matcher(mask_pred, cls_score, gt_masks, gt_labels)
    monkeypatch.setattr(torch, "rand", real)
    replay = Replay(draws)
    indices, theirs = mmdet_reference(cls_score, mask_pred, gt_labels, gt_masks, replay, num_points, classes)
    assert not replay.draws  # every draw consumed, in the same order and shapes
    for (r, c), (mr, mc) in zip(indices, matched):
        assert sorted(zip(r.tolist(), c.tolist())) == sorted(zip(mr.tolist(), mc.tolist()))
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)


def test_semantic_targets_are_one_mask_per_present_class():
    target = torch.tensor([[[0, 0, 3], [255, 3, 3]]])
    classes, masks = semantic_targets(target)
    assert classes[0].tolist() == [0, 3]
    assert masks[0].tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 1]]]


def test_semantic_inference_is_the_class_weighted_sum_of_sigmoid_masks():
    """Two queries, two classes + no-object: scores at each pixel = sum_q p(c|q) sigmoid(m_q), computed by hand."""
    class_logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
    mask_logits = torch.tensor([[[[0.0, 2.0]], [[-1.0, 1.0]]]])  # 2 queries x 1 x 2
    scores = semantic_scores(class_logits, mask_logits, (1, 2))
    s = torch.sigmoid
    expected = torch.tensor([[[[0.7 * s(torch.tensor(0.0)) + 0.1 * s(torch.tensor(-1.0)),
                                0.7 * s(torch.tensor(2.0)) + 0.1 * s(torch.tensor(1.0))]],
                              [[0.2 * s(torch.tensor(0.0)) + 0.1 * s(torch.tensor(-1.0)),
                                0.2 * s(torch.tensor(2.0)) + 0.1 * s(torch.tensor(1.0))]]]])
    torch.testing.assert_close(scores, expected)


def test_the_rein_head_takes_its_queries_and_refuses_to_run_without_them():
    head = Mask2FormerHead([8] * 4, 3, takes_queries=True, num_queries=5, hidden_dim=32, mask_feature_size=32,
                           feature_size=32, dim_feedforward=32, encoder_feedforward_dim=32, decoder_layers=2,
                           num_attention_heads=2, train_num_points=16).eval()
    assert not hasattr(head.transformer, "queries_embedder") and head.querys2feat.in_features == 32
    feats = [torch.randn(1, 8, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    with pytest.raises(ValueError, match="rein method"):
        head(feats)
    with torch.no_grad():
        a = head(feats, out_size=(64, 64), queries=torch.randn(5, 32))
        b = head(feats, out_size=(64, 64), queries=torch.randn(5, 32))
    assert a.shape == (1, 3, 64, 64) and not torch.allclose(a, b)
