#!/usr/bin/env python3
"""Train any timm-registered model (the vitzoo ones included) on an ImageFolder dataset.

A thin wrapper of `vitzoo.cli.train` (also installed as the `vitzoo-train` command):

    python train_imagenet.py /data/imagenet --config swin_tiny_in1k
    torchrun --nproc_per_node=8 train_imagenet.py /data/imagenet --config swin/swin_tiny_patch4_window7_224

`main(argv)` here returns the run's result dict (as before); the command line exits with the
codes listed in `vitzoo.cli.errors`.
"""
import sys

from vitzoo.cli.train import (  # noqa: F401  (re-exported for scripts and tests)
    CorruptImageError, build_parser, check_model_name, evaluate, find_split_dir, keep_rate_schedule,
    load_config, main as cli_main, parse_args, train)
from vitzoo.cli.train import create_optimizer_v2  # noqa: F401

main = train  # the Python API of the first release: main(argv) -> result dict

if __name__ == '__main__':
    sys.exit(cli_main())
