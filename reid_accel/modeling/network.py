"""The training network: the encoder plus the source classifier, over one [source | target] batch."""

from torch import Tensor, nn

from reid_accel.modeling.encoder import ReIDEncoder

SOURCE_NECKS = ("batch", "train")


class CrossDomainNetwork(nn.Module):
    """Encoder + bias-free source classifier; the module `accelerate.prepare` wraps (the memory stays outside).

    One backbone forward runs over the whole batch, so the backbone's BatchNorm layers see source and target images
    together; only the BNNeck treats the halves apart (METHOD.md, "Network").

    Args:
        encoder: the re-ID encoder to train.
        num_classes: number of source identities.
    """

    def __init__(self, encoder: ReIDEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.feature_dim, num_classes, bias=False)

    def forward(self, pixel_values: Tensor, *, num_source: int, source_neck: str = "batch") -> dict[str, Tensor]:
        """Features and source logits of a [source | target] batch.

        Args:
            pixel_values: (B, 3, H, W), the `num_source` source images first; `num_source == B` means no target half.
            num_source: number of source images B_s.
            source_neck: "batch" normalises the source half with its own batch statistics and leaves the BNNeck's
                running statistics to the target half (cross-domain training); "train" runs the BNNeck normally on
                the source half (the single-domain baseline).

        Returns:
            `source_features` (B_s, D), `target_features` (B_t, D) from the BNNeck in its module mode (in training
            its running statistics are updated by the target half only), and `source_logits` (B_s, C).
        """
        if source_neck not in SOURCE_NECKS:
            raise ValueError(f"source_neck must be one of {SOURCE_NECKS}, got {source_neck!r}")
        if not 0 < num_source <= pixel_values.shape[0]:
            raise ValueError(f"num_source must lie in [1, {pixel_values.shape[0]}], got {num_source}")
        fmap = self.encoder.forward_features(pixel_values)  # (B, ...): a CNN's (B, C, h, w) map, a ViT's tokens
        source = self.encoder.forward_head(fmap[:num_source], neck_batch_stats=source_neck == "batch")
        if num_source < pixel_values.shape[0]:
            target = self.encoder.forward_head(fmap[num_source:])
        else:
            target = source.new_zeros(0, source.shape[1])
        return {"source_features": source, "target_features": target, "source_logits": self.classifier(source)}


class FeatureNetwork(nn.Module):
    """The training network of clustering methods: the encoder alone, giving its BNNeck features (B, D) in its
    module mode; the proxy memory stays outside, as the exemplar memory does for `CrossDomainNetwork`."""

    def __init__(self, encoder: ReIDEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) BNNeck features (not normalised)."""
        return self.encoder(pixel_values)
