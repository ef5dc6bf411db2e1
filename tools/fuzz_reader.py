#!/usr/bin/env python3
"""Fuzz the .ggq container reader (ggq/format/reader.py): open, validate, verify, read and
decode every tensor. The only acceptable failure is a one-line FormatError naming the file
and a rule of spec/FORMAT.md section 9; anything else (another exception, a hang, a large
allocation) is a bug.

Two engines, one target (`run_one`):

    # coverage-guided, with atheris (pip install atheris); libFuzzer flags pass through
    python tools/fuzz_reader.py --atheris CORPUS_DIR [SEED_DIR ...] -runs=100000 -rss_limit_mb=2048

    # plain mutation fuzzer (no extra dependency): N inputs from the seeds, deterministic
    python tools/fuzz_reader.py --plain N [--seed S] [--seconds T] [--crashes DIR]

Seeds: spec/vectors/*.ggq (and tests/fuzz/corpus/*). Both engines mutate bytes and then,
for most inputs, re-compute the header CRC-32 so that the fuzzer reaches the metadata and
table parsers (the reader checks that checksum first, rule 6); inputs whose checksum is
wrong are also opened with check_header_crc=False, which parses everything as `ggq verify`
does. Crashing inputs are written to the crash directory (plain) or by libFuzzer
(crash-<sha1>); each one becomes a file in tests/fuzz/corpus/, replayed by
tests/test_fuzz_reader.py.
"""
from __future__ import annotations

import os
import random
import re
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SEED_DIRS = [ROOT / "spec" / "vectors", ROOT / "tests" / "fuzz" / "corpus"]
MAX_INPUT = 1 << 20          # inputs above 1 MiB are cut: bigger files only cost time
_RULE = re.compile(r" \[rule (1[0-3]|[1-9])\]$")


def seeds() -> list[bytes]:
    out = []
    for d in SEED_DIRS:
        if d.is_dir():
            out += [p.read_bytes() for p in sorted(d.iterdir()) if p.suffix == ".ggq" or p.parent.name == "corpus"]
    return out


def fix_crc(b: bytearray) -> bytearray:
    """Re-compute header_crc32 (bytes [0, data_offset) with the field zeroed) when the
    header's data_offset lies inside the input."""
    if len(b) >= 64:
        doff = struct.unpack_from("<Q", b, 40)[0]
        if 60 <= doff <= len(b):
            struct.pack_into("<I", b, 56, 0)
            struct.pack_into("<I", b, 56, zlib.crc32(bytes(b[:doff])))
    return b


def fix_layout(b: bytearray) -> bytearray:
    """Make data_offset and data_size agree with the section sizes and the input length
    (rule 5) when that is possible, so that edits that move bytes still reach the parsers."""
    if len(b) >= 64:
        align = struct.unpack_from("<I", b, 12)[0]
        ms, ts = struct.unpack_from("<QQ", b, 24)
        if 32 <= align <= 65536 and align & (align - 1) == 0 and 64 + ms + ts <= len(b):
            doff = (64 + ms + ts + align - 1) // align * align
            if doff <= len(b):
                struct.pack_into("<QQ", b, 40, doff, len(b) - doff)
    return b


class Target:
    """Writes each input to one file (the reader works on paths: it mmaps) and reads it."""

    def __init__(self, workdir: str | None = None):
        d = workdir or ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)
        self._dir = tempfile.TemporaryDirectory(prefix="ggq-fuzz-", dir=d)
        self.path = os.path.join(self._dir.name, "input.ggq")
        import numpy as np  # noqa: F401  (imported once, outside the timed loop)
        from ggq.errors import FormatError
        from ggq.format import GGQReader
        self.FormatError, self.GGQReader = FormatError, GGQReader

    def close(self):
        self._dir.cleanup()

    def run_one(self, data: bytes) -> None:
        """Raises only on a bug (AssertionError or any non-FormatError exception)."""
        import numpy as np

        with open(self.path, "wb") as f:
            f.write(data)
        for check_crc in (True, False):
            try:
                r = self.GGQReader(self.path, check_header_crc=check_crc)
            except self.FormatError as e:
                msg = str(e)
                assert "\n" not in msg and msg.startswith(self.path + ": "), msg
                assert _RULE.search(msg), f"error without a rule number: {msg}"
                if check_crc and msg.endswith("[rule 6]"):
                    continue  # parse the rest anyway, as `ggq verify` does
                return
            with r:
                for k, v in r.metadata.items():
                    assert isinstance(k, str) and k in r.metadata_types
                bad = r.verify()
                assert (not r.header_ok) == ("<header>" in bad)
                for name, t in r.tensors.items():
                    raw = r.raw(name)
                    assert raw.size == t.nbytes and raw.dtype == np.uint8
                    if t.qtype is None:
                        try:
                            r.dequantize(name)
                        except self.FormatError:
                            pass
                        else:
                            raise AssertionError("dequantize of an unknown type did not refuse")
                        continue
                    with np.errstate(all="ignore"):
                        x = r.dequantize(name)
                    assert x.shape == t.shape and x.dtype == np.float32
            return


# --------------------------------------------------------------------------- mutations

_INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 13, 16, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 257,
                4095, 4096, 65535, 65536, 65537, (1 << 24), (1 << 24) + 1, (1 << 26) + 1,
                (1 << 28), (1 << 28) + 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
                (1 << 40), (1 << 40) + 1, 1 << 48, (1 << 63), (1 << 64) - 1, (1 << 64) - 64]
_HEADER_FIELDS = [(8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"), (20, "<I"), (24, "<Q"), (32, "<Q"),
                  (40, "<Q"), (48, "<Q"), (60, "<I")]


def mutate(rnd: random.Random, data: bytes, pool: list[bytes], max_size: int = MAX_INPUT) -> bytes:
    """A few random edits: bit flips, byte sets, interesting integers at random or header
    positions, block insert / delete / duplicate, truncation, splicing with another seed."""
    b = bytearray(data)
    for _ in range(rnd.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        op = rnd.randrange(10)
        n = len(b)
        if op == 0 and n:
            i = rnd.randrange(n)
            b[i] ^= 1 << rnd.randrange(8)
        elif op == 1 and n:
            b[rnd.randrange(n)] = rnd.choice((0, 1, 2, 0x7F, 0x80, 0xFF, rnd.randrange(256)))
        elif op in (2, 3) and n >= 8:
            fmt = rnd.choice(("<B", "<H", "<I", "<Q"))
            size = struct.calcsize(fmt)
            v = rnd.choice(_INTERESTING) % (1 << (8 * size))
            if rnd.random() < 0.3:
                v = (v + rnd.choice((-1, 1))) % (1 << (8 * size))
            if op == 2 and n >= 64:
                pos, fmt = rnd.choice(_HEADER_FIELDS)
                v = rnd.choice(_INTERESTING) % (1 << (8 * struct.calcsize(fmt)))
            else:
                pos = rnd.randrange(max(1, n - size))
            if pos + struct.calcsize(fmt) <= n:
                struct.pack_into(fmt, b, pos, v)
        elif op == 4 and n:
            i = rnd.randrange(n)
            del b[i:i + rnd.choice((1, 2, 4, 8, rnd.randrange(1, 64)))]
        elif op == 5:
            i = rnd.randrange(n + 1)
            b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.choice((1, 2, 4, 8))))
        elif op == 6 and n:
            i = rnd.randrange(n)
            j = min(n, i + rnd.randrange(1, 64))
            b[i:i] = b[i:j]
        elif op == 7 and n:
            del b[rnd.randrange(n):]
        elif op == 8 and pool:
            other = rnd.choice(pool)
            if other:
                i, j = rnd.randrange(n + 1), rnd.randrange(len(other))
                b = b[:i] + other[j:j + rnd.randrange(1, 256)] + b[i:]
        elif op == 9 and n:
            i = rnd.randrange(n)
            b[i:i + 4] = rnd.choice((b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"\0", b"\xf4\x90\x80\x80"))
    del b[max_size:]
    if rnd.random() < 0.7:
        fix_layout(b)
    if rnd.random() < 0.9:
        fix_crc(b)
    return bytes(b)


def plain(n: int, seed: int = 0, seconds: float | None = None, crash_dir: str | None = None,
          log=print) -> dict:
    """The plain mutation fuzzer: n inputs (or until `seconds` pass). Returns counts and the
    crashes as (input, repr(exception))."""
    import traceback

    pool = seeds()
    rnd = random.Random(seed)
    tgt = Target()
    crashes, t0, done = [], time.monotonic(), 0
    try:
        for s in pool:  # the seeds themselves first
            try:
                tgt.run_one(s)
            except Exception as e:  # noqa: BLE001
                crashes.append((s, "".join(traceback.format_exception_only(e)).strip()))
            done += 1
        while done < n and (seconds is None or time.monotonic() - t0 < seconds):
            data = mutate(rnd, rnd.choice(pool), pool)
            try:
                tgt.run_one(data)
            except Exception as e:  # noqa: BLE001
                crashes.append((data, "".join(traceback.format_exception_only(e)).strip()))
                if crash_dir:
                    os.makedirs(crash_dir, exist_ok=True)
                    Path(crash_dir, f"crash-{zlib.crc32(data):08x}.ggq").write_bytes(data)
                if rnd.random() < 0.5:
                    pool.append(data)
            else:
                if rnd.random() < 0.02 and len(pool) < 2000:
                    pool.append(data)  # keep some survivors: mutations of mutations
            done += 1
            if done % 10000 == 0:
                log(f"{done} inputs, {len(crashes)} crashes, {time.monotonic() - t0:.0f} s")
    finally:
        tgt.close()
    return {"inputs": done, "crashes": crashes, "seconds": time.monotonic() - t0}


def run_atheris(argv: list[str]) -> None:
    import atheris

    # Instrument the container reader only: ggq.quants' Numba kernels cannot be compiled
    # from instrumented bytecode, so they (and ggq, ggq.errors) are imported first, plainly.
    import ggq.errors  # noqa: F401
    import ggq.quants  # noqa: F401
    for m in [m for m in sys.modules if m == "ggq.format" or m.startswith("ggq.format.")]:
        del sys.modules[m]
    with atheris.instrument_imports(include=["ggq.format"]):
        import ggq.format.reader  # noqa: F401
    tgt = Target()
    pool = seeds()
    rnd = random.Random(0)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rnd.seed(seed)
        if rnd.random() < 0.5:
            b = bytearray(atheris.Mutate(data, max_size))
            if rnd.random() < 0.7:
                fix_layout(b)
            if rnd.random() < 0.9:
                fix_crc(b)
            return bytes(b[:max_size])
        return mutate(rnd, data, pool, max_size)

    # "--atheris" stays in the command line that libFuzzer re-runs for -merge / -fork / -jobs
    atheris.Setup([sys.argv[0], "--atheris"] + argv, tgt.run_one, custom_mutator=custom_mutator)
    atheris.Fuzz()


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--atheris":
        run_atheris(args[1:])
        return
    if args and args[0] == "--plain":
        import argparse
        ap = argparse.ArgumentParser()
        ap.add_argument("--plain", type=int, required=True)
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--seconds", type=float)
        ap.add_argument("--crashes", default="fuzz-crashes")
        a = ap.parse_args(args)
        res = plain(a.plain, a.seed, a.seconds, a.crashes)
        print(f"{res['inputs']} inputs in {res['seconds']:.0f} s, {len(res['crashes'])} crashes")
        for data, err in res["crashes"][:20]:
            print(f"  {len(data)} bytes: {err}")
        sys.exit(1 if res["crashes"] else 0)
    print(__doc__)
    sys.exit(2)


if __name__ == "__main__":
    main()
