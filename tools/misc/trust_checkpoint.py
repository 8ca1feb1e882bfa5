"""Mark checkpoints as trusted so they may be unpickled in full (see docs/compatibility.md).

Training checkpoints written on this machine are trusted automatically; use this for a training
checkpoint copied from another machine (e.g. to resume there).

    python tools/misc/trust_checkpoint.py FILE [FILE ...]
"""
import argparse

from crossformer_mm.compat.checkpoint import trust_checkpoint, trust_store_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('files', nargs='+', help='checkpoint files to trust')
    args = parser.parse_args()
    for path in args.files:
        print(f'trusted {path} (sha256 {trust_checkpoint(path)}) in {trust_store_dir()}')


if __name__ == '__main__':
    main()
