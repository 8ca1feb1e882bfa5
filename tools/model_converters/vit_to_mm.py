"""Convert a public Vision Transformer checkpoint into backbone weights for crossformer_mm.

Reads timm / DeiT / MAE (``blocks.i.attn.qkv``, ``patch_embed.proj``), MMSegmentation
(``layers.i.attn.attn.in_proj_weight``) and MMPretrain (``layers.i.attn.qkv``) checkpoints,
whole-model files (``backbone.`` prefixes) and bare state dicts;
writes ``{'state_dict': ..., 'meta': ...}`` holding only tensors in the layout of
``CFVisionTransformer``, loadable with ``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
Position tables of another size are adapted when the file is loaded into a model.

Only the backbone is kept: a detector or segmentor tested with the output would have untrained
necks and heads. For a whole-model checkpoint (to test it or to fine-tune it with ``load_from``)
use ``tools/model_converters/to_weights_only.py``.

Usage:
    python tools/model_converters/vit_to_mm.py SRC DST [--unsafe-pickle]
"""
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _converter_cli import run_converter_cli  # noqa: E402
from crossformer_mm.models.backbones.vit import convert_vit_checkpoint  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    return run_converter_cli(convert_vit_checkpoint, 'vit_to_mm', __doc__, argv)


if __name__ == '__main__':
    sys.exit(main())
