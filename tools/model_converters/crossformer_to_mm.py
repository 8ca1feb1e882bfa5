"""Convert an official CrossFormer / CrossFormer++ checkpoint into a crossformer_mm weights file.

Accepts classification checkpoints (``model`` key), detection / segmentation checkpoints
(``state_dict`` key, ``backbone.`` prefixes) and bare state dicts; writes
``{'state_dict': ..., 'meta': ...}`` holding only tensors, loadable with
``init_cfg=dict(type='Pretrained', checkpoint=DST)`` on ``CrossFormer``.

Usage:
    python tools/model_converters/crossformer_to_mm.py SRC DST [--unsafe-pickle] [--mmpretrain]

``--mmpretrain`` writes a whole ``ImageClassifier`` state dict instead (``backbone.*`` and the
official ``head.*`` as ``head.fc.*``), for ``load_from`` with configs/crossformer/.
"""
import argparse
import os
import sys

import torch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='output weights file')
    parser.add_argument('--unsafe-pickle', action='store_true',
                        help='load SRC with weights_only=False (official training checkpoints '
                        'pickle their config objects); only for files you trust')
    parser.add_argument('--mmpretrain', action='store_true',
                        help='write backbone.* / head.fc.* keys of an mmpretrain ImageClassifier')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if repo_root not in sys.path:  # run from a source checkout without installing
        sys.path.insert(0, repo_root)
    from crossformer_mm.models.backbones.crossformer import convert_crossformer_checkpoint
    try:
        ckpt = torch.load(args.src, map_location='cpu', weights_only=not args.unsafe_pickle)
    except Exception as err:
        if args.unsafe_pickle:
            raise
        print(f'error: {args.src} holds more than weights ({err.__class__.__name__}: {err}); '
              f'rerun with --unsafe-pickle if you trust the file', file=sys.stderr)
        return 1
    state_dict = convert_crossformer_checkpoint(ckpt)
    if not state_dict:
        print(f'error: no tensors found in {args.src}', file=sys.stderr)
        return 1
    if args.mmpretrain:
        state_dict = {(f'head.fc.{k[5:]}' if k.startswith('head.') else f'backbone.{k}'): v
                      for k, v in state_dict.items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    meta = {'source': os.path.basename(args.src), 'converter': 'crossformer_to_mm'}
    torch.save({'state_dict': state_dict, 'meta': meta}, args.dst)
    n = sum(v.numel() for v in state_dict.values())
    print(f'wrote {len(state_dict)} tensors ({n:,} values) to {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
