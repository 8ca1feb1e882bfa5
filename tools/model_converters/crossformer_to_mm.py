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
from typing import List, Mapping, Optional

from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _converter_cli import run_converter_cli  # noqa: E402
from crossformer_mm.models.backbones.crossformer import \
    convert_crossformer_checkpoint  # noqa: E402


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--mmpretrain', action='store_true',
                        help='write backbone.* / head.fc.* keys of an mmpretrain ImageClassifier')


def post(args: argparse.Namespace, state_dict: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    if not state_dict:
        raise ValueError('no tensors found')
    if args.mmpretrain:
        return {(f'head.fc.{k[5:]}' if k.startswith('head.') else f'backbone.{k}'): v
                for k, v in state_dict.items()}
    return state_dict


def main(argv: Optional[List[str]] = None) -> int:
    return run_converter_cli(convert_crossformer_checkpoint, 'crossformer_to_mm', __doc__, argv,
                             post=post, add_args=add_args)


if __name__ == '__main__':
    sys.exit(main())
