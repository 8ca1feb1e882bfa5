"""Sign checkpoints so they may be unpickled in full (see docs/compatibility.md).

Training checkpoints are signed when the Runner saves them, with the key of their folder; this is
for a training checkpoint from elsewhere that you trust (e.g. one you copied from a colleague's
run): it signs the file with the key of the folder it is in now.

    python tools/misc/trust_checkpoint.py FILE [FILE ...]
"""
import argparse
import os.path as osp
import sys

from crossformer_mm.compat.checkpoint import sign_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('files', nargs='+', help='checkpoint files to sign')
    args = parser.parse_args()
    for path in args.files:
        if not osp.isfile(path):
            print(f'error: {path} does not exist', file=sys.stderr)
            return 1
        print(f'signed {path} ({sign_checkpoint(path)})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
