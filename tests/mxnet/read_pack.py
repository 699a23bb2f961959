"""Read a RecordIO pack with MXNet's own reader and print what it holds as JSON.

Usage: python read_pack.py PATH.rec   (the index is PATH.idx)

crates/data/tests/mxnet_compat.rs runs this on a pack written by lgaf-data and
compares the output with what it wrote.
"""

import hashlib
import json
import os
import sys

import mxnet as mx


def read_indexed(rec_path):
    """Every record through MXIndexedRecordIO, in .idx order."""
    idx_path = os.path.splitext(rec_path)[0] + ".idx"
    reader = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "r")
    records = []
    for key in reader.keys:
        header, data = mx.recordio.unpack(reader.read_idx(key))
        if header.flag > 0:
            label = [float(value) for value in header.label]
        else:
            label = float(header.label)
        records.append(
            {
                "key": key,
                "flag": header.flag,
                "label": label,
                "id": header.id,
                "id2": header.id2,
                "len": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    reader.close()
    return records


def count_sequential(rec_path):
    """Records seen by a plain sequential MXRecordIO pass, which checks the
    framing of the whole file rather than only the indexed offsets."""
    reader = mx.recordio.MXRecordIO(rec_path, "r")
    count = 0
    while reader.read() is not None:
        count += 1
    reader.close()
    return count


def rewrite_digest(rec_path):
    """sha256 of the file MXNet's writer makes from the same payloads in the
    same file order: equal to the input's digest iff the input's framing
    (splits at the magic, padding) is byte-for-byte what MXNet writes."""
    idx_path = os.path.splitext(rec_path)[0] + ".idx"
    reader = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "r")
    in_file_order = sorted(reader.keys, key=lambda key: reader.idx[key])
    copy_path = rec_path + ".mxnet-copy"
    writer = mx.recordio.MXRecordIO(copy_path, "w")
    for key in in_file_order:
        writer.write(reader.read_idx(key))
    writer.close()
    reader.close()
    with open(copy_path, "rb") as copy:
        digest = hashlib.sha256(copy.read()).hexdigest()
    os.remove(copy_path)
    return digest


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rec_path = sys.argv[1]
    json.dump(
        {
            "records": read_indexed(rec_path),
            "sequential_count": count_sequential(rec_path),
            "rewrite_sha256": rewrite_digest(rec_path),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
