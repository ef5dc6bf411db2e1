"""TorchOps: the calls of a forward pass (ggq.models.base.CpuOps) answered with torch on a device.

Offloaded layers keep their weights quantized on the device: each matrix's GGML bytes are
uploaded as they are (uint8 (rows, row_bytes)). One-token steps on CUDA multiply with the
Triton kernels of ggq.torch_backend.triton_mv, which decode the blocks inside the product;
batches (and every product on torch's CPU device) decode a tile of rows at a time (Triton's
tile decode on CUDA, ggq.torch_backend.dequant elsewhere) and multiply it in the backend's
prompt_dtype (float16 on CUDA; float32 for matrices set exact, and on torch's CPU device), so no
float copy of a whole matrix ever exists. Activations, norms and the KV cache are float32; on
CUDA the norms, activations, rope and one-token attention are fused Triton kernels
(ggq.torch_backend.triton_fused); prompt attention is
torch.nn.functional.scaled_dot_product_attention.

One-token steps are "static" on CUDA: the position is a device tensor, attention runs over the
whole cache with a mask, so every tensor has the same shape at every step and the run of
offloaded layers is captured once in a CUDA graph and replayed (a few hundred kernel launches
become one). static=True on torch's CPU device runs the same static code without a graph
(tests compare it with the Numba engine).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..models.base import KVCache, Rope, Step, window_start
from .dequant import dequantize_rows, supported

# elements per dequantized tile: 16 MiB of float32 on the CPU; on CUDA fewer, larger launches
TILE_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 24}
PROMPT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TorchMatrix:
    """A weight matrix as stored, on the device: y = x W^T with W decoded tile by tile."""
    __slots__ = ("name", "qtype", "rows", "cols", "exact", "raw", "data", "ops", "_tile_rows")

    def __init__(self, ops: "TorchOps", name, qtype, rows: int, cols: int, data: torch.Tensor, raw=None):
        """data: bytes of a type the torch side decodes (upload() checks it before allocating)."""
        self.name, self.qtype, self.rows, self.cols = name, qtype, int(rows), int(cols)
        self.exact = False  # set_exact: prompts multiply in float32 instead of ops.prompt_dtype
        self.raw = raw      # the host bytes (file view) it came from, for tools
        self.data = data
        self.ops = ops
        self._tile_rows = max(1, min(self.rows, ops.tile_elements // max(self.cols, 1)))

    @classmethod
    def upload(cls, ops: "TorchOps", m) -> "TorchMatrix":
        if not supported(m.qtype.name.upper()):
            raise ModelError(f"{m.name}: type {m.qtype.name} has no torch dequantizer (keep it on the CPU: smaller -ngl)")
        ops.check_room(m.raw.nbytes, f"tensor {m.name}")
        data = torch.from_numpy(np.array(m.raw, dtype=np.uint8, copy=True)).to(ops.device)
        return cls(ops, m.name, m.qtype, m.rows, m.cols, data, raw=m.raw)

    def dequantize(self, r0: int = 0, r1: int | None = None, dtype=torch.float32) -> torch.Tensor:
        """Rows r0..r1 as dtype (float32: the exact values; through the Triton decode where the
        backend has it: one launch, where the torch ops take a dozen)."""
        r1 = self.rows if r1 is None else r1
        name = self.qtype.name.upper()
        tri = self.ops.triton
        if tri is not None and tri.supported(name):
            return tri.dequantize(name, self.data[r0:r1], self.cols, dtype)
        return dequantize_rows(name, self.data[r0:r1], self.cols, dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1 and self.ops.triton is not None and self.ops.triton.supported(self.qtype.name.upper()):
            return self.ops.triton.matvec(self.qtype.name.upper(), self.data, x, self.cols)
        # batches: tiles decoded to the prompt dtype (float16 on CUDA: the tensor cores), x likewise
        dt = self.ops.prompt_dtype if x.shape[0] > 1 and not self.exact else torch.float32
        xt = x.to(dt)
        if self._tile_rows >= self.rows:
            return (xt @ self.dequantize(dtype=dt).T).float()
        out = torch.empty((x.shape[0], self.rows), dtype=torch.float32, device=x.device)
        for r0 in range(0, self.rows, self._tile_rows):
            r1 = min(self.rows, r0 + self._tile_rows)
            out[:, r0:r1] = xt @ self.dequantize(r0, r1, dt).T
        return out


class TorchStacked:
    """Matrices that read the same input (q, k, v; gate, up): members of one type and width are
    joined into one device tensor at load (their own tensors become views of it) and multiplied
    in one product; returns the tuple of their products."""
    __slots__ = ("mats", "joint", "spans")

    def __init__(self, ops: "TorchOps", mats):
        self.mats = tuple(mats)
        self.joint, self.spans = None, None
        if len(mats) > 1 and len({m.qtype.name for m in mats}) == 1 and len({m.cols for m in mats}) == 1:
            data = torch.cat([m.data for m in mats], dim=0)
            spans, r = [], 0
            for m in mats:
                spans.append((r, r + m.rows))
                m.data = data[r:r + m.rows]
                r += m.rows
            first = mats[0]
            self.joint = TorchMatrix(ops, "+".join(m.name for m in mats), first.qtype, r, first.cols, data)
            self.spans = spans

    def __call__(self, x):
        if self.joint is None:
            return tuple(m(x) for m in self.mats)
        self.joint.exact = self.mats[0].exact  # set_exact reaches the members
        y = self.joint(x)
        return tuple(y[:, r0:r1] for r0, r1 in self.spans)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, HF split-half pairs (j, j + head_dim/2): x (n, heads, head_dim)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


class StaticStep:
    """A one-token step whose position is the device tensor pos (1,): what a CUDA graph of the
    step reads, so that one capture serves every position."""
    __slots__ = ("pos", "n", "memo")

    def __init__(self, pos: torch.Tensor):
        self.pos, self.n, self.memo = pos, 1, {}


class TorchOps:
    """The torch backend on one device ("cpu", "cuda", "cuda:1"): activations are float32
    tensors (n, features) on that device.

    static: one-token steps by the static code (default: on CUDA); graphs: capture them in a
    CUDA graph (default: on CUDA); triton: the module of the Triton matvec kernels, or None
    (default: triton_mv on CUDA where triton imports; the tile path otherwise); prompt_dtype:
    what batches multiply in, "float32", "float16" or "bfloat16" (default: float16 on CUDA, as
    llama.cpp's CUDA prompt path; float32 elsewhere). One-token steps are always float32."""
    is_cpu = False

    def __init__(self, device="cpu", static: bool | None = None, graphs: bool | None = None, triton=...,
                 prompt_dtype: str | None = None, fused=...):
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        pd = prompt_dtype or ("float16" if cuda else "float32")
        if pd not in PROMPT_DTYPES:
            raise ValueError(f"prompt_dtype must be one of {', '.join(PROMPT_DTYPES)} (got {prompt_dtype!r})")
        self.prompt_dtype = PROMPT_DTYPES[pd]
        self.name = f"torch:{self.device}"
        self.tile_elements = TILE_ELEMENTS["cuda" if cuda else "cpu"]
        self.static = cuda if static is None else bool(static)
        self.graphs = (cuda and self.static) if graphs is None else bool(graphs)
        if self.graphs and not (cuda and self.static):
            raise ValueError("CUDA graphs need a CUDA device and static steps")
        if triton is ...:
            triton = None
            if cuda:
                try:
                    from . import triton_mv as triton
                except ImportError:  # a torch build without triton: the tile path
                    triton = None
        if fused is ...:
            fused = None
            if triton is not None:
                from . import triton_fused as fused
        self.triton = triton
        self.fused = fused  # ggq.torch_backend.triton_fused (norms, activations, one-token attention) or None
        self._tables = {}  # id(Rope) -> (cos, sin) on the device
        self._graphs = {}  # run of layers -> (graph, static x, static h in, h out, pos)

    def __repr__(self) -> str:
        return f"<TorchOps {self.device}>"

    # -- weights and tensors ---------------------------------------------------------------------
    def check_room(self, nbytes: int, what: str) -> None:
        """A one-line ModelError, before allocating, when the device has not nbytes free."""
        if self.device.type != "cuda":
            return
        free, _ = torch.cuda.mem_get_info(self.device)
        if nbytes > free:
            raise ModelError(f"{what} needs {nbytes / 2**20:.0f} MiB on {self.device}, which has "
                             f"{free / 2**20:.0f} MiB free (use fewer -ngl layers or a smaller -c)")

    def adopt(self, m):
        return m if isinstance(m, TorchMatrix) else TorchMatrix.upload(self, m)

    def stacked(self, *mats):
        return TorchStacked(self, mats)

    def vector(self, a) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32, copy=True)).to(self.device)

    def take(self, x) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.array(x, dtype=np.float32, copy=True)).to(self.device)
        return x.to(self.device, torch.float32)

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().to("cpu", torch.float32).numpy()

    # -- element-wise (one fused Triton kernel each where self.fused is set) ------------------------
    def rmsnorm(self, x, w, eps):
        if self.fused is not None and x.is_contiguous():
            return self.fused.rmsnorm(x.reshape(-1, x.shape[-1]), w, eps).reshape(x.shape)
        return w * (x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps))

    def add_rmsnorm(self, x, y, w, eps, y_norm=None):
        """x += y in place (y first normed with y_norm: Gemma's post-norms); returns rmsnorm(x, w)."""
        if self.fused is not None and x.is_contiguous():
            return self.fused.add_rmsnorm(x, y, w, eps, y_norm)
        if y_norm is not None:
            y = self.rmsnorm(y, y_norm, eps)
        x += y
        return self.rmsnorm(x, w, eps)

    def head_rmsnorm(self, y, w, eps, head_dim):
        n = y.shape[0]
        return self.rmsnorm(y.contiguous().reshape(n, -1, head_dim), w, eps).reshape(n, -1)

    def silu_mul(self, g, u):
        if self.fused is not None:
            return self.fused.act_mul(g, u, gelu=False)
        return F.silu(g) * u

    def gelu_tanh_mul(self, g, u):
        if self.fused is not None:
            return self.fused.act_mul(g, u, gelu=True)
        return F.gelu(g, approximate="tanh") * u

    # -- attention -------------------------------------------------------------------------------
    def kv_cache(self, n_layers: int, n_heads: int, n_kv_heads: int, n_ctx: int, head_dim: int) -> list:
        shape = (n_kv_heads, n_ctx, head_dim)
        self.check_room(2 * n_layers * n_kv_heads * n_ctx * head_dim * 4,
                        f"the KV cache of {n_layers} layers x {n_ctx} positions")
        return [KVCache(torch.zeros(shape, dtype=torch.float32, device=self.device),
                        torch.zeros(shape, dtype=torch.float32, device=self.device),
                        n_heads, n_kv_heads, head_dim) for _ in range(n_layers)]

    # -- running layers --------------------------------------------------------------------------
    def run_layers(self, layer, layers, x, h, step: Step):
        """h after layer(L, x, h, step) for each L in turn (x updated in place). One-token steps
        run statically where self.static says so, replaying a CUDA graph where self.graphs does."""
        if step.n != 1 or not self.static:
            for L in layers:
                h = layer(L, x, h, step)
            return h
        if not self.graphs:
            pos = torch.empty(1, dtype=torch.long, device=self.device)
            pos.fill_(step.start)  # a fill kernel with the position as its argument: no host copy
            sstep = StaticStep(pos)
            for L in layers:
                h = layer(L, x, h, sstep)
            return h
        return self._replay(layer, layers, x, h, step.start)

    def _replay(self, layer, layers, x, h, start: int):
        key = (layer.__func__ if hasattr(layer, "__func__") else layer, tuple(id(L) for L in layers))
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = self._capture(layer, layers, x, h, start)
        graph, sx, sh, out, spos = g
        sx.copy_(x)
        sh.copy_(h)
        spos.fill_(start)
        graph.replay()
        x.copy_(sx)
        return out.clone()

    def _capture(self, layer, layers, x, h, start: int):
        """A CUDA graph of the run for static steps. Warm-up runs on a side stream first (Triton
        compiles, cuBLAS picks its kernels); each writes this step's K/V, the same values."""
        sx, sh = x.clone(), h.clone()
        spos = torch.full((1,), start, dtype=torch.long, device=self.device)
        sstep = StaticStep(spos)

        def run():
            hh = sh
            for L in layers:
                hh = layer(L, sx, hh, sstep)
            return hh

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                sx.copy_(x)
                run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        # the warm-up memoised rope rows and masks for its position: the graph must compute them
        # from spos itself, or every replay would reuse the warm-up's
        sstep.memo.clear()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        return graph, sx, sh, out, spos

    def _table(self, rope: Rope):
        tab = self._tables.get(id(rope))
        if tab is None or tab[2] is not rope:
            tab = self._tables[id(rope)] = (torch.from_numpy(rope.cos).to(self.device),
                                            torch.from_numpy(rope.sin).to(self.device), rope)
        return tab

    def _rope(self, rope: Rope, step):
        key = ("rope", id(rope), self.name)
        cs = step.memo.get(key)
        if cs is None:
            tab = self._table(rope)
            if isinstance(step, StaticStep):
                cs = (tab[0].index_select(0, step.pos), tab[1].index_select(0, step.pos))
            else:
                at = slice(step.start, step.start + step.n)
                cs = (tab[0][at], tab[1][at])
            step.memo[key] = cs
        return cs

    def _mask(self, step: Step, window: int):
        """bool (n, keys) for the queries of step over keys window_start(start, window)..: True
        where a query sees the key; None when every query sees every key (one query)."""
        if step.n == 1:
            return None
        key = ("mask", window, self.name)
        m = step.memo.get(key)
        if m is None:
            lo = window_start(step.start, window)
            t = torch.arange(lo, step.start + step.n, device=self.device)[None, :]
            p = torch.arange(step.start, step.start + step.n, device=self.device)[:, None]
            m = t <= p
            if window > 0:
                m &= p - t < window
            m = step.memo[key] = m
        return m

    def _static_mask(self, step: StaticStep, n_ctx: int, window: int):
        """bool (1, n_ctx): the cache positions the query at step.pos sees."""
        key = ("smask", window, n_ctx, self.name)
        m = step.memo.get(key)
        if m is None:
            t = torch.arange(n_ctx, device=self.device)
            m = t <= step.pos
            if window > 0:
                m &= step.pos - t < window
            m = step.memo[key] = m[None, :]
        return m

    def attend(self, kv: KVCache, q, k, v, step, rope: Rope, scale, window: int = 0):
        """As CpuOps.attend. The query heads that share a kv head are stacked as one batch entry
        of group * n queries (no copy of the cache per head)."""
        nh, nkv, hd = kv.n_heads, kv.n_kv_heads, kv.head_dim
        n, group = step.n, nh // nkv
        if isinstance(step, StaticStep) and self.fused is not None and self.fused.attention_fits(hd):
            cos, sin, _ = self._table(rope)  # two kernels: rope + cache write, attention
            q = self.fused.rope_store(q, k, v, step.pos, cos, sin, kv.k, kv.v, nh, nkv, hd)
            return self.fused.attend_one(q, kv.k, kv.v, step.pos, scale, window, nh)
        cos, sin = self._rope(rope, step)
        q = _rotate(q.reshape(n, nh, hd), cos, sin)
        k = _rotate(k.reshape(n, nkv, hd), cos, sin).transpose(0, 1)
        v = v.reshape(n, nkv, hd).transpose(0, 1)
        if isinstance(step, StaticStep):
            kv.k.index_copy_(1, step.pos, k)
            kv.v.index_copy_(1, step.pos, v)
            keys, values, mask = kv.k, kv.v, self._static_mask(step, kv.k.shape[1], window)
        else:
            start = step.start
            kv.k[:, start:start + n] = k
            kv.v[:, start:start + n] = v
            lo = window_start(start, window)
            keys, values, mask = kv.k[:, lo:start + n], kv.v[:, lo:start + n], self._mask(step, window)
            if mask is not None and group > 1:
                mask = mask.repeat(group, 1)
        # head h = g * group + j reads kv head g: queries (j, i) of batch entry g
        qg = q.permute(1, 0, 2).reshape(nkv, group * n, hd)
        o = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask, scale=float(scale))
        return o.reshape(nh, n, hd).transpose(0, 1).reshape(n, nh * hd)
