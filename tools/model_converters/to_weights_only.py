"""Write a weights-only copy of a whole-model checkpoint (detector, segmentor or classifier).

A training checkpoint the Runner saves (``state_dict``, ``meta``, ``optimizer``,
``param_schedulers``, ``message_hub``, ...) pickles Python objects beyond tensors, so outside the
work dir that signed it (see docs/compatibility.md) it is refused by weights-only loading. This
tool keeps what testing and fine-tuning need: the whole ``state_dict`` (every module, not just the
backbone) and the plain part of ``meta`` (``dataset_meta`` with the class names, epoch, iter,
config text...), in a file that loads with ``weights_only=True`` wherever it goes: ``load_from``,
``tools/test.py``, ``tools/infer.py``, or a backbone's ``init_cfg`` (its ``backbone.`` entries).

    python tools/model_converters/to_weights_only.py SRC DST [--unsafe-pickle]

SRC is read in full when its signature verifies (a checkpoint inside the work dir that wrote it),
or with ``--unsafe-pickle`` (only for a file you trust: unpickling runs code); otherwise
weights-only. The ``*_to_mm.py`` converters beside this tool are for backbone checkpoints only.
Exit status 0, or 1 with one ``error:`` line.
"""
import argparse
import numbers
import os
import os.path as osp
import sys
import uuid
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from crossformer_mm.compat.checkpoint import (CheckpointLoadError,  # noqa: E402
                                              load_local_checkpoint, load_trusted_file)

NAME = 'to_weights_only'


def plain(value: Any) -> Tuple[bool, Any]:
    """``(True, copy)`` when ``value`` is built of str / numbers / bool / None / lists / tuples /
    str-keyed dicts, with numpy scalars and other subclasses made builtins (weights-only loading
    refuses them); ``(False, None)`` otherwise."""
    if value is None or type(value) in (str, bool, int, float):
        return True, value
    for kind, cast in ((str, str), (bool, bool), (numbers.Integral, int), (numbers.Real, float)):
        if isinstance(value, kind):
            return True, cast(value)
    if isinstance(value, (list, tuple)):
        items = [plain(v) for v in value]
        copy = [v for _, v in items]
        return all(ok for ok, _ in items), tuple(copy) if isinstance(value, tuple) else copy
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        items = {k: plain(v) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    return False, None


def weights_only_copy(checkpoint: Any, source: str) -> Tuple[Dict[str, Any], List[str]]:
    """``({'state_dict': tensors, 'meta': plain metadata}, names of what was left out)``.

    Raises:
        ValueError: ``checkpoint`` has no ``state_dict`` of tensors (and is not a bare one).
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'{source} holds a {type(checkpoint).__name__}, not a checkpoint dict; '
                         'expected a whole-model checkpoint with a state_dict')
    sd = checkpoint.get('state_dict', checkpoint)
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f'{source} has no state_dict of tensors (keys: {list(checkpoint)[:5]}); '
                         'expected a whole-model checkpoint (for a backbone checkpoint use '
                         'tools/model_converters/<family>_to_mm.py)')
    state_dict = OrderedDict((k, v) for k, v in sd.items() if isinstance(v, torch.Tensor))
    left_out = [f'state_dict.{k}' for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    meta: Dict[str, Any] = {}
    raw_meta = checkpoint.get('meta') if sd is not checkpoint else None
    if isinstance(raw_meta, Mapping):
        for k, v in raw_meta.items():
            ok, value = plain(v)
            if ok and isinstance(k, str):
                meta[k] = value
            else:
                left_out.append(f'meta.{k}')
    if sd is not checkpoint:
        left_out += [k for k in checkpoint if k not in ('state_dict', 'meta')]
    meta.update(weights_only_of=osp.basename(source), converter=NAME)
    return {'state_dict': state_dict, 'meta': meta}, left_out


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('src', help='whole-model checkpoint (.pth), e.g. work_dirs/x/epoch_12.pth')
    parser.add_argument('dst', help='output weights file')
    parser.add_argument('--unsafe-pickle', action='store_true',
                        help='read SRC with weights_only=False; only for files you trust')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.unsafe_pickle:
            checkpoint = load_trusted_file(args.src, map_location='cpu')
        else:
            checkpoint = load_local_checkpoint(args.src, map_location='cpu')
        out, left_out = weights_only_copy(checkpoint, args.src)
    except (CheckpointLoadError, FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    folder = osp.dirname(osp.abspath(args.dst))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(args.dst)}.{uuid.uuid4().hex}.tmp')
    try:
        torch.save(out, tmp)
        torch.load(tmp, map_location='cpu', weights_only=True)  # what every loader will do
        os.replace(tmp, args.dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    n = sum(v.numel() for v in out['state_dict'].values())
    print(f"wrote {len(out['state_dict'])} tensors ({n:,} values) and meta "
          f"{sorted(out['meta'])} to {args.dst}")
    if left_out:
        print(f'left out: {", ".join(left_out)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
