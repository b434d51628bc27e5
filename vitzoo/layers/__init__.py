"""Building blocks shared by the zoo's families (token mixers, the MetaFormer block, stems, ...)."""
from .downsample import ConvNormDownsample, ConvStem
from .metaformer_block import MetaFormerBlock, Scale
from .stage import Stage

__all__ = ["ConvNormDownsample", "ConvStem", "MetaFormerBlock", "Scale", "Stage"]
