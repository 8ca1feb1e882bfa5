"""Convert a public Vision Transformer checkpoint into a crossformer_mm weights file.

Reads timm / DeiT / MAE (``blocks.i.attn.qkv``, ``patch_embed.proj``), MMSegmentation
(``layers.i.attn.attn.in_proj_weight``) and MMPretrain (``layers.i.attn.qkv``) checkpoints,
whole-model files (``backbone.`` prefixes) and bare state dicts;
writes ``{'state_dict': ..., 'meta': ...}`` holding only tensors in the layout of
``CFVisionTransformer``, loadable with ``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
Position tables of another size are adapted when the file is loaded into a model.

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
