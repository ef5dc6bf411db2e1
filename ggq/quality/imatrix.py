"""Importance matrices: activation statistics of every linear layer's input, and llama.cpp's
imatrix GGUF files (the format `llama-imatrix` writes by default; spec/IMATRIX.md).

For a weight W (out, in) used as y = W x, the statistics are, per input column j, the sum over
the calibration tokens of x_j^2 (`in_sum2`), and the number of tokens (`counts`). A quantizer
weighs column j's error by in_sum2_j / count (llama-quantize's normalisation), which is the
diagonal of the layer's Hessian X^T X / n.

collect() runs a loaded ggq model over text windows with taps on its layers' matrices (the
model's Matrix / Stacked objects are wrapped from outside and restored afterwards), in exact
float mode, summing in float64.
"""
from __future__ import annotations

import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..format.atomic import discard, publish, temp_beside

SUM_SUFFIX = ".in_sum2"
COUNT_SUFFIX = ".counts"
COV_SUFFIX = ".in_cov"   # ggq's extension (llama.cpp's loaders skip other tensors): X^T X
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
GGUF_ALIGN = 32
MAX_COLS = 1 << 24      # per-entry sanity limits checked before allocating
MAX_MATS = 1 << 16


class IMatrixError(UsageError):
    """A bad importance-matrix file or entry (one line, naming the file and the field)."""


@dataclass
class IMatrix:
    """sums[name]: float64 (n_mat, cols) sums of squared inputs; counts[name]: int64 (n_mat,)
    tokens seen (n_mat = 1 for a dense matrix; experts would have one row each)."""
    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    datasets: list = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    cov: dict = field(default_factory=dict)   # name -> float64 (cols, cols) sum of x x^T (optional)

    def hessian(self, name: str) -> np.ndarray | None:
        """X^T X / n of a matrix's input (float64 (cols, cols)), or None if not recorded."""
        if name not in self.cov:
            return None
        c = max(1, int(self.counts[name][0]))
        return self.cov[name] / c

    def names(self) -> list[str]:
        return sorted(self.sums)

    def weights(self, name: str) -> np.ndarray:
        """Per-column importance of a dense matrix as llama-quantize computes it: sum / count,
        float32 (cols,); all ones for an entry with no tokens."""
        s, c = self.sums[name], self.counts[name]
        if s.shape[0] != 1:
            raise IMatrixError(f"imatrix entry {name!r} has {s.shape[0]} matrices (experts); ggq quantizes dense ones")
        if c[0] <= 0:
            return np.ones(s.shape[1], np.float32)
        return (s[0] / float(c[0])).astype(np.float32)

    def as_weights(self) -> dict[str, np.ndarray]:
        return {n: self.weights(n) for n in self.names()}


# ---------------------------------------------------------------------------------------------
# collection

class _Stats:
    def __init__(self, full: bool = False):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.full = full
        self.cov: dict[str, np.ndarray] = {}   # members of a Stacked share one array

    def add(self, names, x) -> None:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] == 0:
            return
        x64 = x.astype(np.float64)
        sq = np.einsum("ij,ij->j", x64, x64)
        for n in names:
            if n in self.sums:
                self.sums[n] += sq
            else:
                self.sums[n] = sq.copy()
            self.counts[n] = self.counts.get(n, 0) + x.shape[0]
        if self.full:
            xtx = x64.T @ x64
            c = self.cov.get(names[0])
            if c is None:
                for n in names:
                    self.cov[n] = xtx
            else:
                c += xtx


class _Tap:
    """Records the input of one matrix (or of every member of a Stacked) and calls it."""
    __slots__ = ("inner", "stats", "names")

    def __init__(self, inner, stats: _Stats, names):
        self.inner, self.stats, self.names = inner, stats, names

    def __call__(self, x):
        self.stats.add(self.names, x)
        return self.inner(x)

    def __getattr__(self, k):
        return getattr(self.inner, k)


# The layer attributes the forward passes call: Stacked (qkv, gate_up) and Matrix (wq ... down).
STACKED_FIELDS = ("qkv", "gate_up")


@contextmanager
def tapped(llama, stats: _Stats, process_output: bool = False):
    """Wrap every layer matrix of a loaded model (ggq.Model.llama) so that its inputs are
    recorded; restores the original objects on exit."""
    saved = []
    try:
        for L in llama.layers:
            fields = [f for f in STACKED_FIELDS if hasattr(L, f)] + list(llama.MATRIX_FIELDS)
            for f in fields:
                obj = getattr(L, f, None)
                if obj is None:
                    continue
                names = [m.name for m in obj.mats] if hasattr(obj, "mats") else [obj.name]
                saved.append((L, f, obj))
                setattr(L, f, _Tap(obj, stats, names))
        # the attribute the forward pass calls for the logits ("head" where the model has one)
        head = "head" if getattr(llama, "head", None) is not None else "output"
        if process_output and getattr(llama, head, None) is not None:
            # tied embeddings: the output product is recorded under token_embd.weight (ggq's
            # extension; llama-imatrix records only a separate output.weight)
            obj = getattr(llama, head)
            saved.append((llama, head, obj))
            setattr(llama, head, _Tap(obj, stats, [obj.name]))
        yield
    finally:
        for obj, f, orig in reversed(saved):
            setattr(obj, f, orig)


def collect(model, windows, process_output: bool = False, dataset: str | None = None,
            on_window=None, hessian: bool = False) -> IMatrix:
    """Run a loaded ggq.Model over token windows (each from an empty cache, float activations)
    and return the statistics of every layer matrix's input. on_window(i, n) after each.
    hessian: also the full X^T X of every input (for GPTQ)."""
    stats = _Stats(full=hessian)
    llama = model.llama
    exact_before = [m.exact for m in llama.matrices()]
    llama.set_exact(True)
    try:
        with tapped(llama, stats, process_output):
            for i, win in enumerate(windows):
                model.logits(win)
                if on_window:
                    on_window(i, len(windows))
    finally:
        for m, e in zip(llama.matrices(), exact_before):
            m.exact = e
    if not stats.sums:
        raise UsageError("no layer matrix saw any input (is this a model ggq can run?)")
    ctx = len(windows[0]) if windows else 0
    im = IMatrix({n: s.reshape(1, -1) for n, s in stats.sums.items()},
                 {n: np.array([c], np.int64) for n, c in stats.counts.items()},
                 [dataset] if dataset else [], len(windows), ctx, stats.cov)
    return im


# ---------------------------------------------------------------------------------------------
# llama.cpp imatrix GGUF: write (by hand, the bytes llama-imatrix writes) and read

_GGUF_U32, _GGUF_STRING, _GGUF_ARRAY = 4, 8, 9
_GGML_F32 = 0


def _gstr(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _ne(shape_np: tuple) -> list[int]:
    """numpy shape -> GGUF dims (ne[0] first), with trailing 1s dropped as ggml_n_dims does."""
    ne = list(reversed(shape_np))
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    return ne


def write_imatrix(path, im: IMatrix) -> Path:
    """Write llama-imatrix's GGUF layout: keys general.type = "imatrix", imatrix.datasets,
    imatrix.chunk_count, imatrix.chunk_size; per entry, in sorted name order, `<name>.in_sum2`
    F32 (ne = [cols, n_mat]) and `<name>.counts` F32 (ne = [1, n_mat]). Atomic (temp + rename)."""
    path = Path(path)
    kv = [("general.type", _GGUF_STRING, _gstr("imatrix")),
          (KEY_DATASETS, _GGUF_ARRAY, struct.pack("<IQ", _GGUF_STRING, len(im.datasets))
           + b"".join(_gstr(str(d)) for d in im.datasets)),
          (KEY_CHUNK_COUNT, _GGUF_U32, struct.pack("<I", int(im.chunk_count))),
          (KEY_CHUNK_SIZE, _GGUF_U32, struct.pack("<I", int(im.chunk_size)))]
    tensors = []
    for name in im.names():
        s = np.asarray(im.sums[name], dtype=np.float64)
        c = np.asarray(im.counts[name], dtype=np.int64).reshape(-1)
        if s.ndim != 2 or s.shape[0] != c.shape[0]:
            raise IMatrixError(f"imatrix entry {name!r}: sums {s.shape} and counts {c.shape} disagree")
        tensors.append((name + SUM_SUFFIX, s.astype("<f4")))
        tensors.append((name + COUNT_SUFFIX, c.astype("<f4").reshape(-1, 1)))
        if name in im.cov:
            cv = np.asarray(im.cov[name])
            if cv.shape != (s.shape[1], s.shape[1]):
                raise IMatrixError(f"imatrix entry {name!r}: covariance {cv.shape} does not match {s.shape[1]} columns")
            tensors.append((name + COV_SUFFIX, cv.astype("<f4")))
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    head += b"".join(_gstr(k) + struct.pack("<I", t) + v for k, t, v in kv)
    off = 0
    infos = []
    for name, a in tensors:
        ne = _ne(a.shape)
        infos.append(_gstr(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                     + struct.pack("<IQ", _GGML_F32, off))
        off += (a.nbytes + GGUF_ALIGN - 1) // GGUF_ALIGN * GGUF_ALIGN
    head += b"".join(infos)
    head += b"\0" * ((-len(head)) % GGUF_ALIGN)
    f, tmp = temp_beside(path)
    try:
        f.write(head)
        for _, a in tensors:
            f.write(a.tobytes())
            f.write(b"\0" * ((-a.nbytes) % GGUF_ALIGN))
        publish(f, tmp, path)
    except BaseException:
        discard(f, tmp)
        raise
    return path


def _read_legacy(path: Path, data: bytes) -> IMatrix:
    """llama.cpp's older .dat layout: i32 n_entries, then per entry i32 name length, name, i32
    ncall, i32 nval, f32 values (already divided by the token count, times ncall); optional
    trailer i32 chunk count, i32 length, dataset name."""
    name = path.name
    pos = 0

    def take(n, what):
        nonlocal pos
        if pos + n > len(data):
            raise IMatrixError(f"{name}: truncated at {what} (byte {pos})")
        b = data[pos:pos + n]
        pos += n
        return b

    (n,) = struct.unpack("<i", take(4, "the entry count"))
    if not 1 <= n <= 1 << 20:
        raise IMatrixError(f"{name}: neither an imatrix GGUF nor a legacy imatrix (entry count {n})")
    im = IMatrix()
    for i in range(n):
        (ln,) = struct.unpack("<i", take(4, f"entry {i} name length"))
        if not 1 <= ln <= 4096:
            raise IMatrixError(f"{name}: entry {i} name length {ln} out of range")
        try:
            ename = take(ln, f"entry {i} name").decode("utf-8")
        except UnicodeDecodeError:
            raise IMatrixError(f"{name}: entry {i} name is not UTF-8") from None
        ncall, nval = struct.unpack("<ii", take(8, f"entry {ename!r} counts"))
        if not 1 <= nval <= MAX_COLS:
            raise IMatrixError(f"{name}: entry {ename!r} has {nval} values")
        vals = np.frombuffer(take(4 * nval, f"entry {ename!r} values"), dtype="<f4").astype(np.float64)
        # legacy sums are (sum / tokens) * ncall; keep weights() = sums / counts equal to that / ncall
        im.sums[ename] = vals.reshape(1, -1)
        im.counts[ename] = np.array([max(ncall, 0)], np.int64)
    if pos + 4 <= len(data):
        (im.chunk_count,) = struct.unpack("<i", take(4, "the chunk count"))
        if pos + 4 <= len(data):
            (ln,) = struct.unpack("<i", take(4, "the dataset name length"))
            if 0 < ln <= len(data) - pos:
                im.datasets = [take(ln, "the dataset name").decode("utf-8", "replace")]
    for k, c in im.counts.items():
        if c[0] == 0:  # llama-quantize uses the values as they are then
            im.counts[k] = np.array([1], np.int64)
    return im


def read_imatrix(path) -> IMatrix:
    """Read an imatrix file: llama.cpp's GGUF format (what llama-imatrix and `ggq calibrate`
    write) or its legacy .dat format. Bad files raise IMatrixError naming the file and field."""
    path = Path(path)
    name = path.name
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise IMatrixError(f"{name}: cannot read ({e.strerror or e})") from None
    if magic != b"GGUF":
        try:
            data = path.read_bytes()
        except OSError as e:
            raise IMatrixError(f"{name}: cannot read ({e.strerror or e})") from None
        return _read_legacy(path, data)
    try:
        from gguf import GGUFReader

        r = GGUFReader(str(path), "r")
    except Exception as e:  # gguf raises ValueError / struct errors on a damaged file
        raise IMatrixError(f"{name}: not a readable GGUF file ({e})") from None

    def field_value(key):
        f = r.fields.get(key)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:
            raise IMatrixError(f"{name}: cannot decode key {key}") from None

    gtype = field_value("general.type")
    if gtype is not None and gtype != "imatrix":
        raise IMatrixError(f"{name}: general.type is {gtype!r}, not 'imatrix' (a model file?)")
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in r.fields]
    if missing:  # llama-quantize refuses such a file too
        raise IMatrixError(f"{name}: missing imatrix metadata {', '.join(missing)}")
    ds = field_value(KEY_DATASETS)
    im = IMatrix(datasets=[str(d) for d in (ds if isinstance(ds, list) else [ds])],
                 chunk_count=int(field_value(KEY_CHUNK_COUNT)), chunk_size=int(field_value(KEY_CHUNK_SIZE)))
    pairs: dict[str, list] = {}
    covs = {}
    for t in r.tensors:
        tname = t.name
        if tname.endswith(COV_SUFFIX):
            covs[tname[:-len(COV_SUFFIX)]] = t
        for k, suf in enumerate((SUM_SUFFIX, COUNT_SUFFIX)):
            if tname.endswith(suf):
                pairs.setdefault(tname[:-len(suf)], [None, None])[k] = t
    if not pairs:
        raise IMatrixError(f"{name}: no imatrix entries (*{SUM_SUFFIX} / *{COUNT_SUFFIX} tensors)")
    for ename, (ts, tc) in sorted(pairs.items()):
        if ts is None or tc is None:
            raise IMatrixError(f"{name}: entry {ename!r} has {'no sums' if ts is None else 'no counts'}")
        for t in (ts, tc):
            if int(t.tensor_type) != _GGML_F32:
                raise IMatrixError(f"{name}: tensor {t.name!r} is type {t.tensor_type.name}, expected F32")
        ne_s = [int(v) for v in ts.shape]
        ne_c = [int(v) for v in tc.shape]
        cols = ne_s[0]
        n_mat = int(np.prod(ne_s[1:])) if len(ne_s) > 1 else 1
        if not (1 <= cols <= MAX_COLS and 1 <= n_mat <= MAX_MATS) or int(np.prod(ne_c)) != n_mat:
            raise IMatrixError(f"{name}: entry {ename!r}: sums {ne_s} and counts {ne_c} do not pair up")
        s = np.asarray(ts.data, dtype=np.float64).reshape(n_mat, cols)
        c = np.asarray(tc.data, dtype=np.float64).reshape(n_mat)
        if not (np.all(np.isfinite(s)) and np.all(s >= 0) and np.all(np.isfinite(c)) and np.all(c >= 0)):
            raise IMatrixError(f"{name}: entry {ename!r} has negative or non-finite values")
        im.sums[ename] = s
        im.counts[ename] = np.rint(c).astype(np.int64)
    for ename, t in covs.items():
        cols = im.sums[ename].shape[1] if ename in im.sums else -1
        if [int(v) for v in t.shape] != [cols, cols] or int(t.tensor_type) != _GGML_F32:
            raise IMatrixError(f"{name}: tensor {t.name!r} is not an F32 [{cols}, {cols}] matrix for a recorded entry")
        cv = np.asarray(t.data, dtype=np.float64).reshape(cols, cols)
        if not np.all(np.isfinite(cv)):
            raise IMatrixError(f"{name}: tensor {t.name!r} has non-finite values")
        im.cov[ename] = cv
    return im
