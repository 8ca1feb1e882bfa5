"""Convert a public Swin Transformer checkpoint into a crossformer_mm weights file.

Reads official (microsoft/Swin-Transformer, ``model`` key), timm, MMDetection and MMPretrain
(``stages.i.blocks.j.attn.w_msa.*``, merging weights in ``nn.Unfold`` order) checkpoints,
whole-model files (``backbone.`` prefixes) and bare state dicts;
writes ``{'state_dict': ..., 'meta': ...}`` holding only tensors in the layout of
``CFSwinTransformer``, loadable with ``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
Position tables of another size are adapted when the file is loaded into a model.

Usage:
    python tools/model_converters/swin_to_mm.py SRC DST [--unsafe-pickle]
"""
import argparse
import os
import sys
from typing import List, Optional

import torch


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='public checkpoint (.pth)')
    parser.add_argument('dst', help='output weights file')
    parser.add_argument('--unsafe-pickle', action='store_true',
                        help='load SRC with weights_only=False (training checkpoints pickle '
                        'more than tensors); only for files you trust')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from crossformer_mm.models.backbones.swin import convert_swin_checkpoint
    try:
        ckpt = torch.load(args.src, map_location='cpu', weights_only=not args.unsafe_pickle)
    except Exception as err:
        if args.unsafe_pickle:
            raise
        print(f'error: {args.src} holds more than weights ({err.__class__.__name__}: {err}); '
              f'rerun with --unsafe-pickle if you trust the file', file=sys.stderr)
        return 1
    try:
        state_dict = convert_swin_checkpoint(ckpt)
    except (TypeError, ValueError) as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    meta = {'source': os.path.basename(args.src), 'converter': 'swin_to_mm'}
    torch.save({'state_dict': state_dict, 'meta': meta}, args.dst)
    n = sum(v.numel() for v in state_dict.values())
    print(f'wrote {len(state_dict)} tensors ({n:,} values) to {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
