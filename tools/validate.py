#!/usr/bin/env python3
"""Evaluate a timm / vitzoo model or a training checkpoint on an ImageFolder split.

A thin wrapper of `vitzoo.cli.validate` (also installed as `vitzoo-validate`):

    python tools/validate.py /data/imagenet --model vitzoo_swin_tiny_patch4_window7_224 --pretrained
    python tools/validate.py data/digits --checkpoint output/demo/<run>/model_best.pth.tar
"""
import sys

from vitzoo.cli.validate import build_parser, main, validate  # noqa: F401

if __name__ == '__main__':
    sys.exit(main())
