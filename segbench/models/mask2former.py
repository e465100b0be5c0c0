"""Mask2Former heads (Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation", CVPR 2022)
from the `transformers` package's modules, fed with segbench's four-level feature pyramid: `mask2former` (learned
queries) and `rein-mask2former` (Rein's queries, w1oves/Rein `rein/models/heads/rein_mask2former.py`).

Built from `transformers.models.mask2former` (pure PyTorch: deformable attention by `grid_sample`, the Hungarian
matcher by scipy): `Mask2FormerPixelDecoder` (multi-scale deformable attention encoder over the strides 8/16/32 levels
plus the stride-4 FPN level), `Mask2FormerTransformerModule` (the masked-attention decoder), `Mask2FormerLoss` (the
matcher and the three losses with deep supervision). What segbench adds: the class predictor (transformers keeps it
in Mask2FormerForUniversalSegmentation), the weighting of the losses, the ground-truth masks from a semantic label,
semantic inference, the queries Rein supplies, and the number of target masks averaged over processes as mmdet does.

Rein's mmdet head (`configs/_base_/models/rein_dinov2_mask2former.py`) against the configuration built here, field by
field (`M2F_CONFIG`; tests/test_mask2former.py pins each):

| Rein / mmdet | value | transformers field | value |
|---|---|---|---|
| num_queries | 100 | num_queries | 100 |
| feat_channels / out_channels | 256 | hidden_dim, mask_feature_size, feature_size | 256 |
| pixel_decoder encoder num_layers | 6 | encoder_layers | 6 |
| encoder MSDA num_heads, num_levels, num_points | 8, 3, 4 | num_attention_heads; levels and points fixed in the module | 8, 3, 4 |
| encoder FFN feedforward_channels | 1024 | encoder_feedforward_dim | 1024 |
| pixel_decoder norm_cfg | GN(32) | fixed in the module | GroupNorm(32) |
| positional_encoding num_feats, normalize | 128, True | fixed (hidden_dim // 2, normalize) | 128, True |
| transformer_decoder num_layers | 9 | decoder_layers | 10 (transformers counts the query-only prediction too) |
| decoder FFN feedforward_channels | 2048 | dim_feedforward | 2048 |
| decoder num_heads, dropout | 8, 0.0 | num_attention_heads, dropout | 8, 0.0 |
| decoder pre-norm | post-norm | pre_norm | False |
| enforce_decoder_input_project | False | enforce_input_projection | False |
| loss_cls weight, class_weight[-1] | 2.0, 0.1 | class_weight, no_object_weight | 2.0, 0.1 |
| loss_mask (BCE) weight | 5.0 | mask_weight | 5.0 |
| loss_dice weight | 5.0 | dice_weight | 5.0 |
| train_cfg num_points, oversample_ratio, importance_sample_ratio | 12544, 3.0, 0.75 | train_num_points, oversample_ratio, importance_sample_ratio | 12544, 3.0, 0.75 |
| assigner costs: ClassificationCost, CrossEntropyLossCost, DiceCost | 2.0, 5.0, 5.0 | the matcher takes class_weight, mask_weight, dice_weight | 2.0, 5.0, 5.0 |
| deep supervision | every decoder output | use_auxiliary_loss | True |
| strides | 4, 8, 16, 32 | feature_strides, common_stride | [4, 8, 16, 32], 4 |

Where it differs: the initialisation is transformers' (`init_weights`: its Mask2FormerPreTrainedModel._init_weights
for the module types it names, PyTorch's defaults elsewhere), not mmdet's (xavier_normal for the decoder,
caffe2_xavier for the pixel decoder's convolutions); transformers returns the losses unweighted, so `loss` weights
them (2 / 5 / 5); its `post_process_semantic_segmentation` first resizes masks to 384 x 384, so semantic inference is
mmseg's instead (Mask2FormerHead.predict: mask logits upsampled bilinearly to the input size, then
softmax(classes)[..., :-1] x sigmoid(masks) summed over queries).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import IGNORE_INDEX
from .registries import HEADS
from .segmenter import HeadSpec, Segmenter

#: the transformers configuration of Rein's head (the field table above), num_labels set per model
M2F_CONFIG = dict(num_queries=100, hidden_dim=256, mask_feature_size=256, feature_size=256, encoder_layers=6,
                  encoder_feedforward_dim=1024, decoder_layers=10, dim_feedforward=2048, num_attention_heads=8,
                  dropout=0.0, pre_norm=False, enforce_input_projection=False, class_weight=2.0, mask_weight=5.0,
                  dice_weight=5.0, no_object_weight=0.1, train_num_points=12544, oversample_ratio=3.0,
                  importance_sample_ratio=0.75, use_auxiliary_loss=True, feature_strides=[4, 8, 16, 32],
                  common_stride=4, ignore_value=IGNORE_INDEX)


def _transformers():
    try:
        from transformers import Mask2FormerConfig
        from transformers.models.mask2former import modeling_mask2former as m2f
    except ImportError:
        raise ImportError("the mask2former heads need the transformers package: pip install 'segbench[vfm]'") from None
    return Mask2FormerConfig, m2f


def init_weights(module: nn.Module) -> None:
    """transformers' Mask2FormerPreTrainedModel._init_weights for the module types it names (standalone modules are
    not initialised by transformers: the pixel decoder's level embedding is left as uninitialised memory)."""
    _, m2f = _transformers()
    for m in module.modules():
        if isinstance(m, m2f.Mask2FormerTransformerModule):
            for projection in m.input_projections:
                if isinstance(projection, nn.Conv2d):
                    nn.init.xavier_uniform_(projection.weight)
                    nn.init.zeros_(projection.bias)
        elif isinstance(m, m2f.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
            nn.init.zeros_(m.sampling_offsets.weight)
            thetas = torch.arange(m.n_heads, dtype=torch.int64).float() * (2.0 * math.pi / m.n_heads)
            grid = torch.stack([thetas.cos(), thetas.sin()], -1)
            grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(m.n_heads, 1, 1, 2)
            grid = grid.repeat(1, m.n_levels, m.n_points, 1)
            for i in range(m.n_points):
                grid[:, :, i, :] *= i + 1
            with torch.no_grad():
                m.sampling_offsets.bias.copy_(grid.view(-1))
            nn.init.zeros_(m.attention_weights.weight)
            nn.init.zeros_(m.attention_weights.bias)
            for linear in (m.value_proj, m.output_proj):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)
        elif isinstance(m, m2f.Mask2FormerMaskedAttentionDecoderLayer):
            for p in m.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            nn.init.zeros_(m.cross_attn.in_proj_bias)
        elif isinstance(m, m2f.Mask2FormerPixelDecoder):
            nn.init.normal_(m.level_embed, std=1.0)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=1.0)


def semantic_targets(target: torch.Tensor, ignore_index: int = IGNORE_INDEX):
    """Per image, the classes present (ignore left out) and one binary mask each: mmseg's Mask2FormerHead
    _seg_data_to_instance_data for semantic segmentation."""
    classes, masks = [], []
    for label in target:
        present = torch.unique(label)
        present = present[present != ignore_index]
        classes.append(present.long())
        masks.append((label[None] == present[:, None, None]).float() if len(present)
                     else label.new_zeros((0, *label.shape), dtype=torch.float))
    return classes, masks


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor, size) -> torch.Tensor:
    """mmseg Mask2FormerHead.predict: mask logits upsampled bilinearly (align_corners False) to `size`, then
    sum over queries of softmax(classes) without the no-object column times sigmoid(masks): B x K x H x W."""
    masks = F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.einsum("bqc,bqhw->bchw", F.softmax(class_logits, dim=-1)[..., :-1], masks.sigmoid())


class Mask2FormerHead(nn.Module):
    """Pixel decoder + masked-attention decoder + class predictor on [stride 4, 8, 16, 32] features.

    Training: `forward` returns {"class_logits": [B x Q x (K+1)] x 10, "mask_logits": [B x Q x h x w] x 10} (the
    query-only prediction and each decoder layer's, for deep supervision) and `loss(outputs, target)` the weighted
    terms. Evaluation: semantic scores at `out_size` (segbench's Segmenter passes the padded input size).
    `takes_queries`: the queries come from the model (Rein's tokens) instead of learned embeddings."""

    mask_classification = True

    def __init__(self, in_channels, num_classes: int, takes_queries: bool = False, **overrides):
        super().__init__()
        Mask2FormerConfig, m2f = _transformers()
        self.config = Mask2FormerConfig(num_labels=num_classes, **{**M2F_CONFIG, **overrides})
        self.pixel_decoder = m2f.Mask2FormerPixelDecoder(self.config, feature_channels=list(in_channels))
        self.transformer = m2f.Mask2FormerTransformerModule(in_features=self.config.feature_size, config=self.config)
        hidden = self.config.hidden_dim
        self.takes_queries = False
        if takes_queries:
            self.link_queries()
        self.class_predictor = nn.Linear(hidden, num_classes + 1)
        weights = {"loss_cross_entropy": self.config.class_weight, "loss_mask": self.config.mask_weight,
                   "loss_dice": self.config.dice_weight}
        self.criterion = m2f.Mask2FormerLoss(self.config, weight_dict=weights)
        self.criterion._non_persistent_buffers_set.add("empty_weight")  # a constant, not a trained weight
        self.criterion.get_num_masks = self._num_masks
        init_weights(self)

    def link_queries(self) -> None:
        """Take the queries from the model (Rein's tokens) instead of learned embeddings: rein_mask2former.py deletes
        query_embed and replaces query_feat by a linear map of the queries (`replace_query_feat=True`)."""
        del self.transformer.queries_embedder, self.transformer.queries_features
        hidden = self.config.hidden_dim
        self.querys2feat = nn.Linear(hidden, hidden)
        self.takes_queries = True

    @staticmethod
    def _num_masks(class_labels, device) -> torch.Tensor:
        """Target masks per process, averaged over the processes (mmdet reduce_mean), at least 1."""
        n = torch.as_tensor(float(sum(len(c) for c in class_labels)), device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(n)
            n = n / torch.distributed.get_world_size()
        return torch.clamp(n, min=1)

    def _decode(self, multi_scale, mask_features, queries):
        t = self.transformer
        positions, features, sizes = [], [], []
        for i in range(t.num_feature_levels):
            f = multi_scale[i]
            sizes.append(f.shape[-2:])
            positions.append(t.position_embedder(f.shape, f.device, f.dtype, None).flatten(2).permute(2, 0, 1))
            features.append((t.input_projections[i](f).flatten(2) + t.level_embed.weight[i][None, :, None])
                            .permute(2, 0, 1))
        batch = features[0].shape[1]
        if queries is None:
            query_pos = t.queries_embedder.weight.unsqueeze(1).repeat(1, batch, 1)
            query_feat = t.queries_features.weight.unsqueeze(1).repeat(1, batch, 1)
        else:
            queries = queries.unsqueeze(0).expand(batch, -1, -1) if queries.dim() == 2 else queries
            query_pos, query_feat = queries.transpose(0, 1), self.querys2feat(queries).transpose(0, 1)
        return t.decoder(inputs_embeds=query_feat, multi_stage_positional_embeddings=positions,
                         pixel_embeddings=mask_features, encoder_hidden_states=features,
                         query_position_embeddings=query_pos, feature_size_list=sizes, return_dict=True)

    def forward(self, feats, out_size=None, queries=None):
        if self.takes_queries and queries is None:
            raise ValueError("rein-mask2former takes its queries from Rein's tokens: train it with the rein method "
                             "(--methods rein), or use the mask2former head")
        pixel = self.pixel_decoder(list(feats), return_dict=True)
        decoded = self._decode(list(pixel.multi_scale_features), pixel.mask_features, queries)
        class_logits = [self.class_predictor(h.transpose(0, 1)) for h in decoded.intermediate_hidden_states]
        mask_logits = list(decoded.masks_queries_logits)
        if self.training:
            return {"class_logits": class_logits, "mask_logits": mask_logits}
        size = out_size if out_size is not None else [4 * n for n in mask_logits[-1].shape[-2:]]
        return semantic_scores(class_logits[-1], mask_logits[-1], size)

    def loss(self, outputs: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted terms of every output (the last one's keys bare, the others' suffixed _0.._8), on the
        semantic label `target` (B x H x W, ignore 255)."""
        classes, masks = semantic_targets(target)
        *aux_masks, last_masks = outputs["mask_logits"]
        *aux_classes, last_classes = outputs["class_logits"]
        auxiliary = [{"masks_queries_logits": m, "class_queries_logits": c} for m, c in zip(aux_masks, aux_classes)]
        with torch.autocast(device_type=target.device.type, enabled=False):
            raw = self.criterion(last_masks.float(), last_classes.float(), [m.float() for m in masks], classes,
                                 auxiliary_predictions=[{k: v.float() for k, v in a.items()} for a in auxiliary])
        weight = self.criterion.weight_dict
        return {key: value * weight[key.rsplit("_", 1)[0] if key[-1].isdigit() else key] for key, value in raw.items()}


def _builder(takes_queries: bool):
    def build(backbone: nn.Module, num_classes: int, aux) -> Segmenter:
        if aux:
            raise ValueError("a mask2former head supervises every decoder layer itself: set model.aux false")
        return Segmenter(backbone, Mask2FormerHead(backbone.out_channels, num_classes, takes_queries),
                         size_divisor=getattr(backbone, "size_divisor", 1))

    return build


HEADS.add("mask2former", HeadSpec(_builder(False), None, None,
                                  "Mask2Former (transformers' modules): 100 learned queries, deformable pixel decoder, "
                                  "9 masked-attention layers; at the backbone's own output stride"))
HEADS.add("rein-mask2former", HeadSpec(_builder(True), None, None,
                                       "Rein's Mask2Former: its queries from Rein's tokens (needs --methods rein)"))
