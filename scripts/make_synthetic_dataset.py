"""Generate the synthetic dataset of the demo and the tests (see ``datasets/synthetic.py``).

Usage, from the repository root::

    python -m scripts.make_synthetic_dataset --root data/synthetic
    python -m scripts.make_synthetic_dataset --root /tmp/synthetic_video \\
        --opts DATA.SYNTHETIC.FORMAT video DATA.SYNTHETIC.TRAIN_PER_CLASS 50

The settings come from the ``DATA.SYNTHETIC`` defaults, a config file (``--config``) and ``--opts``.
The dataset is always regenerated (``ensure_synthetic_dataset`` in the training code only generates
when the files are missing or the settings changed).
"""
import argparse
import logging
import sys

from datasets.synthetic import CLASSES, FILES, generate_synthetic_dataset
from utils.config import ConfigError, get_default_config, merge_config_file, merge_opts
from utils.errors import USER_ERROR_EXIT_STATUS, run_command

logger = logging.getLogger(__name__)


def parse_args(argv=None):
    """Parse the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(prog='python -m scripts.make_synthetic_dataset',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--root', required=True, help='output folder (becomes DATA.ROOT)')
    parser.add_argument('--config', default='', help='YAML config whose DATA.SYNTHETIC settings to use')
    parser.add_argument('--opts', default=None, nargs='+',
                        help="override settings: 'KEY VALUE' pairs, e.g. DATA.SYNTHETIC.SEED 3")
    return parser.parse_args(argv)


def main(argv=None):
    """Generate the dataset and print the config keys that use it; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = parse_args(argv)
    config = get_default_config()
    try:
        if args.config:
            merge_config_file(config, args.config)
        merge_opts(config, args.opts)
        counts = generate_synthetic_dataset(args.root, config.DATA.SYNTHETIC)
    except (ConfigError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return USER_ERROR_EXIT_STATUS
    print(f"wrote {counts['train']} training and {counts['test']} test clips to {args.root}; use them "
          f"with\n  DATA.ROOT {args.root} DATA.TRAIN_FILE {args.root}/{FILES['train']} "
          f"DATA.VAL_FILE {args.root}/{FILES['test']} DATA.LABEL_LIST {args.root}/{FILES['labels']} "
          f"DATA.NUM_CLASSES {len(CLASSES)}")
    return 0


if __name__ == '__main__':
    sys.exit(run_command(main))
