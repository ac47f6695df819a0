#!/usr/bin/env python3
"""moto's server, with the BlockSize its EBS direct StartSnapshot answers set as real EBS sets it.

Stock moto answers BlockSize 512; EBS answers 524288 (and uplosi writes in the size StartSnapshot answers).
UPLOSI_TEST_EBS_BLOCK_SIZE sets another size, to test what uplosi does with one. Everything else is moto as it is.

Usage: moto_ebs.py -H HOST -p PORT   (moto_server's arguments)
"""
import os
import sys

from moto.ebs import models

BLOCK_SIZE = int(os.environ.get("UPLOSI_TEST_EBS_BLOCK_SIZE", "524288"))
_init = models.EBSSnapshot.__init__


def _init_with_block_size(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.block_size = BLOCK_SIZE


models.EBSSnapshot.__init__ = _init_with_block_size

from moto.server import main  # noqa: E402  (after the patch, so the server's backends use it)

sys.exit(main(sys.argv[1:]))
