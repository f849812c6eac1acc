"""Writes the small PyTorch checkpoints of tests/data/pytorch/ that test_convert_pytorch reads.

Run from the repository root with the venv's Python (it needs torch):
    .venv/bin/python tests/tools/make_pytorch_fixtures.py
The values are fixed formulas, not random, so the C++ test can recompute them. Besides real
torch.save output it writes hostile files: pickles calling os.system, bad memo indices, a
truncated zip, a deflated entry and a tensor larger than its storage. Each must fail cleanly.
"""

import collections
import io
import os
import pickle
import struct
import zipfile

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "pytorch")


def ramp(rows, cols, dtype):
    # value(r, c) = (r * cols + c) / 8 - 1: exact in f16 and bf16 for these small sizes.
    return ((torch.arange(rows * cols, dtype=torch.float32) / 8) - 1).reshape(rows, cols).to(dtype)


def save(name, obj):
    torch.save(obj, os.path.join(OUT, name))


def write_dtypes():
    state = collections.OrderedDict()
    state["f32"] = ramp(3, 4, torch.float32)
    state["f16"] = ramp(2, 5, torch.float16)
    state["bf16"] = ramp(4, 2, torch.bfloat16)
    state["vector"] = torch.tensor([0.5, -2.0, 3.25], dtype=torch.float32)
    state["scalar"] = torch.tensor(1.5, dtype=torch.float32)
    state["param"] = torch.nn.Parameter(ramp(2, 2, torch.float32))  # _rebuild_parameter
    state["ids"] = torch.arange(4, dtype=torch.int64)  # a buffer: listed, not convertible
    save("dtypes.bin", state)


def write_shared():
    # Tied weights share one storage; slices and a transpose are views into it at an offset.
    base = ramp(6, 4, torch.float32)
    state = collections.OrderedDict()
    state["embed.weight"] = base
    state["lm_head.weight"] = base  # the same tensor object twice (tied)
    state["rows_2_to_4"] = base[2:5]  # contiguous, storage offset 8
    state["column_1"] = base[:, 1]  # stride 4, offset 1
    state["transposed"] = base.t()  # strides [1, 4]
    state["other"] = ramp(2, 3, torch.float16)
    save("shared.bin", state)


def torch_pickle(payload_bytes, storages):
    """A torch.save-style zip whose data.pkl is payload_bytes, with raw storages {key: bytes}."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", payload_bytes)
        for key, data in storages.items():
            archive.writestr("archive/data/" + key, data)
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


class SystemCall:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def write_hostile():
    write("hostile_os_system.bin", torch_pickle(pickle.dumps({"w": SystemCall()}, protocol=2), {}))
    # BINGET 7 with nothing ever stored at 7.
    write("hostile_bad_memo.bin", torch_pickle(b"\x80\x02}q\x00X\x01\x00\x00\x00wh\x07s.", {}))
    # A tensor claiming 1000 x 1000 elements over a 16-byte storage.
    four_floats = struct.pack("<4f", 1, 2, 3, 4)
    huge = (
        b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n("
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
        b"K\x00M\xe8\x03M\xe8\x03\x86M\xe8\x03K\x01\x86\x89ccollections\nOrderedDict\n)RtRs."
    )
    write("hostile_huge_size.bin", torch_pickle(huge, {"0": four_floats}))
    # The real dtypes.bin cut in half: the end of central directory record is gone.
    with open(os.path.join(OUT, "dtypes.bin"), "rb") as f:
        whole = f.read()
    write("hostile_truncated.bin", whole[: len(whole) // 2])
    # A deflated data.pkl: torch never compresses, and mapping it in place is impossible.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
    write("hostile_compressed.bin", buffer.getvalue())


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    write_dtypes()
    write_shared()
    write_hostile()
