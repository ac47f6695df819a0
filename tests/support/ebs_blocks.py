#!/usr/bin/env python3
"""Prints {block index: sha256 hex} of an EBS snapshot read back through moto's EBS direct API.

boto3 is used because moto returns BlockIndex as a JSON string, which the Rust SDK (correctly) refuses to parse.
Usage: ebs_blocks.py ENDPOINT REGION SNAPSHOT_ID
"""
import hashlib
import json
import sys

import boto3

endpoint, region, snapshot = sys.argv[1:4]
ebs = boto3.client("ebs", endpoint_url=endpoint, region_name=region,
                   aws_access_key_id="testing", aws_secret_access_key="testing")
listed = ebs.list_snapshot_blocks(SnapshotId=snapshot)
out = {"volume_size": int(listed["VolumeSize"]), "blocks": {}}
for block in listed["Blocks"]:
    index = int(block["BlockIndex"])
    data = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=index, BlockToken=block["BlockToken"])["BlockData"].read()
    out["blocks"][str(index)] = hashlib.sha256(data).hexdigest()
json.dump(out, sys.stdout)
