"""The command line shared by the converters in this folder: ``SRC DST [--unsafe-pickle]``.

Each ``*_to_mm.py`` passes its family's ``convert_*_checkpoint`` (checkpoint dict → state dict,
from :mod:`crossformer_mm.models.backbones`) to :func:`run_converter_cli`.
"""
import argparse
import os
import sys
from typing import Any, Callable, List, Mapping, Optional

import torch
from torch import Tensor


def run_converter_cli(convert: Callable[[Mapping[str, Any]], Mapping[str, Tensor]], name: str,
                      doc: str, argv: Optional[List[str]] = None,
                      post: Optional[Callable[[argparse.Namespace, Mapping[str, Tensor]],
                                              Mapping[str, Tensor]]] = None,
                      add_args: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> int:
    """``SRC DST [--unsafe-pickle]``: convert a public checkpoint into a weights-only file.

    Args:
        convert: The family's converter (checkpoint dict → state dict).
        name: The tool's name (``crossformer_to_mm``), recorded in the output's ``meta``.
        doc: The tool's module docstring (its first line is the description).
        argv: Arguments (default ``sys.argv[1:]``).
        post: Optional transformation of the converted state dict given the parsed arguments.
        add_args: Adds tool-specific options to the parser.

    Returns:
        The exit status (1 with an ``error:`` line on a bad input file).
    """
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument('src', help='public checkpoint (.pth)')
    parser.add_argument('dst', help='output weights file')
    parser.add_argument('--unsafe-pickle', action='store_true',
                        help='load SRC with weights_only=False (training checkpoints pickle more '
                        'than tensors); only for files you trust')
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.src):
        print(f'error: {args.src} does not exist', file=sys.stderr)
        return 1
    try:
        ckpt = torch.load(args.src, map_location='cpu', weights_only=not args.unsafe_pickle)
    except Exception as err:
        hint = '' if args.unsafe_pickle else '; rerun with --unsafe-pickle if you trust the file'
        print(f'error: cannot read {args.src} ({err.__class__.__name__}: '
              f'{str(err).strip().splitlines()[0] if str(err).strip() else ""}){hint}',
              file=sys.stderr)
        return 1
    try:
        state_dict = convert(ckpt)
        if post is not None:
            state_dict = post(args, state_dict)
    except (TypeError, ValueError, KeyError) as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    meta = {'source': os.path.basename(args.src), 'converter': name}
    torch.save({'state_dict': state_dict, 'meta': meta}, args.dst)
    n = sum(v.numel() for v in state_dict.values())
    print(f'wrote {len(state_dict)} tensors ({n:,} values) to {args.dst}')
    return 0
