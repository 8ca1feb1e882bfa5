"""Generate the embedded demo datasets (COCO-format shapes, ADE20K-format scenes and an
ImageNet-style shape classification set).

    python tools/make_demo_data.py [--out data] [--num-train 400] [--num-val 100] [--size 256]
                                   [--seed 0] [--only coco|ade|cls] [--force]

Writes ``OUT/demo_coco``, ``OUT/demo_ade`` and ``OUT/demo_cls``. Deterministic for given
arguments; a dataset already generated with the same arguments is left alone unless ``--force``.
"""
import argparse
import time

from crossformer_mm.datasets.demo_data import DEMO_DATASETS, make_demo_data


def main() -> None:
    parser = argparse.ArgumentParser(description='Generate the embedded demo datasets')
    parser.add_argument('--out', default='data', help='parent folder (default: data)')
    parser.add_argument('--num-train', type=int, default=400, help='training images per dataset')
    parser.add_argument('--num-val', type=int, default=100, help='validation images per dataset')
    parser.add_argument('--size', type=int, default=256, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--only', choices=DEMO_DATASETS, help='generate only one dataset')
    parser.add_argument('--force', action='store_true', help='regenerate even if up to date')
    args = parser.parse_args()
    start = time.time()
    which = (args.only, ) if args.only else DEMO_DATASETS
    result = make_demo_data(args.out, args.num_train, args.num_val, args.size, args.seed,
                            args.force, which)
    for name, counts in result.items():
        state = ', '.join(f'{k}={v}' for k, v in counts.items()) if counts else 'up to date'
        print(f'{args.out}/demo_{name}: {state}')
    print(f'done in {time.time() - start:.1f}s')


if __name__ == '__main__':
    main()
