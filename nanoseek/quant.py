"""Weight quantization: int8 and int4 weight-only with symmetric scales, FP8 (e4m3) in 128x128 blocks, bf16.

DeepSeek-V3 trains and ships its matrices in FP8 (V3 report §3.3.2): e4m3 values with one scale per 128x128 block
of weights, stored beside each weight as `<name>_scale_inv`, the factor to multiply by (w = q * s). The integer
formats are ours, weight-only and symmetric (w = q * s, no zero point):

  int8  one scale per output row, s = max|w_row| / 127, q in [-127, 127]. A row has 255 levels for its range,
        and per-row scales are what torch's int8 CPU kernel takes (y = (x @ q^T) * s), so the matmul reads one
        byte per weight. Stored: `<name>` int8 (N, K), `<name>_scale` bf16 (N,).
  int4  one scale per group of G input columns of a row (G = 64 by default), s = max|w_group| / 7, q in
        [-7, 7], packed two per byte. Stored: `<name>` uint8 (N, K/2), column 2j in the low nibble and 2j+1 in
        the high one, each as q + 8 (0..15); `<name>_scale` bf16 (N, K/G). A matrix whose K the group size does
        not divide gets half the size, down to 32 (the kernel's smallest); when not even 32 divides K, int8.

How q is chosen: to nearest, or, given the inputs' X^T X from a calibration run, by GPTQ (nanoseek/gptq.py), which
keeps the same scales and layout and moves integers so that the layer's outputs stay closer; the bounds below are
round-to-nearest's. Every scale is rounded to its storage dtype before q is computed, so the bound holds for the
stored scale: |w - q s| <= s/2 for int8 and int4 (round to nearest, never clamped: max|w|/s <= qmax (1 + 2^-8) <
qmax + 1/2).
For FP8 it is e4m3's rounding: |w - q s| <= 2^-4 |w| for normal values, and <= 2^-10 s below 2^-6 s
(subnormals, spaced 2^-9 s).

Why G = 64 for int4: torch's int4 CPU kernel holds a (scale, zero) pair per group in the activation dtype (bf16),
so in memory G = 32 costs 4 + 32/32 = 5 bits per weight, 0.31x of bf16; G = 64 costs 4.5 bits (0.28x), G = 128
4.25 bits. Its error is barely larger: the largest of 64 Gaussian values is ~10% above the largest of 32.

`Int8Linear` and `Int4Linear` hold the quantized weight and compute x @ dequant(W)^T with torch's packed CPU
kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) on bf16 activations, on the CPU only. Measured on
an AVX2 CPU, one token through a 2048x2048 matrix: 0.55 ms (int8) and 1.1 ms (int4) against 0.9 ms for float32,
where dequantizing to float32 and multiplying took 36 and 57 ms; with float32 activations the kernels take 6-13 ms.
The int4 kernel's weight layout is private to torch and cannot be read back cheaply, so a matrix used directly
rather than through a matmul with the activations, MLA's `kv_b_proj` (W_uk and W_uv, absorbed into the query and
the output at decode, V2 §2.1.2), is kept in int8 in the int4 format.
The routed experts' stacked matrices (model/moe.py `Experts`) stay in the stored layout instead, one
`QuantizedStack` per projection, and dequantize just the experts a forward picks: a decoding step reads its tokens'
top-k experts, not all of them.

What is quantized: the attention and FFN matrices of every block, MTP blocks included, as in DeepSeek's FP8
release. The embedding, the output head (it sets the logits directly, and DeepSeek keeps it in bf16 too), the MTP
projection `eh_proj` (bf16 in DeepSeek's release), the norms and the router stay in bf16, the routing bias in
float32.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.errors import ConfigError
from nanoseek.gptq import gptq
from nanoseek.model.moe import Experts, expert_weight_name

FORMATS = ("bf16", "int8", "int4", "fp8")
INT8_MAX = 127
INT4_MAX = 7
FP8_MAX = 448.0                       # the largest finite float8_e4m3fn
FP8_BLOCK = (128, 128)
INT4_GROUP_SIZES = (32, 64, 128, 256)  # the group sizes torch's int4 CPU kernel runs
INT4_GROUP_SIZE = 64
# torch 2.13's int8 CPU kernel (_weight_int8pack_mm) returns garbage, or crashes, on an AVX-512 CPU when K is not a
# multiple of 16 (K = 8, 20, 24, 40: values of 1e19 and NaN; tests/test_quant.py): Int8Linear pads K with zeros
INT8_K_MULTIPLE = 16
SCALE_DTYPE = torch.bfloat16          # int8 / int4 scales; the FP8 ones are float32, as DeepSeek stores them
SCALE = "_scale"                      # int8 / int4: `<weight>_scale`
SCALE_INV = "_scale_inv"              # FP8: `<weight>_scale_inv`, DeepSeek's name for the factor to multiply by
# the attention and FFN matrices of a block or MTP module, in our tensor names
_QUANTIZED = re.compile(r"(layers|mtp)\.\d+\.(self_attn|mlp)\..*_proj(_with_mqa)?\.weight")


# ---- which tensor becomes what ----------------------------------------------------------------------------------
def check_format(fmt: str, group_size: int = INT4_GROUP_SIZE) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown quantization format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ConfigError(f"int4 group size must be one of {INT4_GROUP_SIZES} (torch's int4 kernel), "
                          f"got {group_size!r}")


def stored_as(name: str, shape: tuple[int, ...], fmt: str, group_size: int = INT4_GROUP_SIZE) -> tuple[str | None, int]:
    """How the tensor `name` (our name) of `shape` is stored when a checkpoint is quantized to `fmt`:
    ("int8" | "int4" | "fp8", int4 group size or 0), or (None, 0) when it stays in higher precision."""
    if fmt == "bf16" or not _QUANTIZED.fullmatch(name):
        return None, 0
    if fmt != "int4":
        return fmt, 0
    if name.endswith("self_attn.kv_b_proj.weight"):
        return "int8", 0  # read as a matrix by the absorbed decode, see the module docstring
    G = group_size
    while shape[1] % G and G > INT4_GROUP_SIZES[0]:
        G //= 2
    return ("int4", G) if shape[1] % G == 0 else ("int8", 0)


def stored_layout(kind: str, shape: tuple[int, int], group_size: int) -> dict[str, tuple[tuple, torch.dtype]]:
    """Suffix ("" for the weight itself, SCALE) -> (shape, dtype) of an int8 or int4 weight of `shape` on disk."""
    N, K = shape
    if kind == "int8":
        return {"": ((N, K), torch.int8), SCALE: ((N,), SCALE_DTYPE)}
    return {"": ((N, K // 2), torch.uint8), SCALE: ((N, K // group_size), SCALE_DTYPE)}


def quantize_tensor(name: str, t: torch.Tensor, fmt: str, group_size: int = INT4_GROUP_SIZE,
                    hessian: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One tensor of a float checkpoint -> the tensors stored for it in format `fmt`: the quantized weight and its
    scale, or the tensor in bf16 (the routing bias in float32). An int8 or int4 weight with the `hessian` of its
    inputs (nanoseek.gptq) is rounded by GPTQ, otherwise to nearest."""
    kind, G = stored_as(name, tuple(t.shape), fmt, group_size)
    if kind == "int8":
        q, scale = quantize_int8(t, hessian)
        return {name: q, name + SCALE: scale}
    if kind == "int4":
        packed, scale = quantize_int4(t, G, hessian)
        return {name: packed, name + SCALE: scale}
    if kind == "fp8":
        q, scale_inv = quantize_fp8(t)
        return {name: q, name + SCALE_INV: scale_inv}
    # V3 §2.1.2: the routing bias only chooses experts; float32 keeps small updates and near ties
    return {name: t.float() if name.endswith("e_score_correction_bias") else t.to(torch.bfloat16)}


# ---- int8 and int4 ----------------------------------------------------------------------------------------------
def _symmetric(w: torch.Tensor, qmax: int, hessian: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, n) or (N, groups, n) -> q = round(w / s) and s = max|w| / qmax over the last dim, s rounded to
    SCALE_DTYPE first; with the `hessian` of the row's inputs, q is GPTQ's instead (same s). An all-zero group gets
    s = 0 and q = 0."""
    scale = (w.abs().amax(-1) / qmax).to(SCALE_DTYPE)
    if hessian is not None:
        N = w.shape[0]
        return gptq(w.reshape(N, -1), hessian, scale.float().reshape(N, -1), qmax).view(w.shape), scale
    s = scale.float().unsqueeze(-1)
    q = torch.where(s > 0, w.float() / s, 0.0).round().clamp(-qmax, qmax)
    return q.to(torch.int8), scale


def quantize_int8(w: torch.Tensor, hessian: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) -> q int8 (N, K), scale bf16 (N,): one scale per output row."""
    return _symmetric(w, INT8_MAX, hessian)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q (..., N, K), scale (..., N) -> float32 (..., N, K)."""
    return q.float() * scale.float().unsqueeze(-1)


def quantize_int4(w: torch.Tensor, group_size: int = INT4_GROUP_SIZE,
                  hessian: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) -> packed uint8 (N, K/2), scale bf16 (N, K/G): one scale per group of G input columns."""
    N, K = w.shape
    q, scale = _symmetric(w.reshape(N, K // group_size, group_size), INT4_MAX, hessian)
    return pack_int4(q.view(N, K)), scale


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """packed (..., N, K/2), scale (..., N, K/G) -> float32 (..., N, K)."""
    q = unpack_int4(packed).float().unflatten(-1, (scale.shape[-1], -1))
    return (q * scale.float().unsqueeze(-1)).flatten(-2)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q (N, K) in [-8, 7], K even -> uint8 (N, K/2): column 2j in the low nibble, 2j+1 in the high, each q + 8."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (..., K/2) -> int8 (..., K) in [-8, 7]; the inverse of pack_int4."""
    nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)
    return nibbles.to(torch.int8) - 8


# ---- FP8 e4m3 in 128x128 blocks (V3 §3.3.2) ---------------------------------------------------------------------
def _blocks(rows: int, cols: int, block: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(rows / block[0]), math.ceil(cols / block[1])


def _expand(scale: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """One value per block -> one per element; the last block of a row or column may be partial."""
    rows, cols = shape
    return scale.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]


def quantize_fp8(w: torch.Tensor, block: tuple[int, int] = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) -> q float8_e4m3fn (N, K), scale_inv float32 (ceil(N/128), ceil(K/128)): per block
    s = max|w| / 448 (e4m3's largest value), q = w / s; dequantized as q * s."""
    rows, cols = w.shape
    R, C = _blocks(rows, cols, block)
    padded = F.pad(w.float(), (0, C * block[1] - cols, 0, R * block[0] - rows))
    amax = padded.view(R, block[0], C, block[1]).abs().amax(dim=(1, 3))
    scale_inv = amax / FP8_MAX
    s = _expand(scale_inv, (rows, cols), block)
    q = torch.where(s > 0, w.float() / s, 0.0).clamp(-FP8_MAX, FP8_MAX)
    return q.to(torch.float8_e4m3fn), scale_inv


def dequantize_fp8(q: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = FP8_BLOCK) -> torch.Tensor:
    """w = q * s with one scale s per block (V3 §3.3.2); scale_inv: (ceil(rows/b0), ceil(cols/b1))."""
    return q.float() * _expand(scale_inv.float(), tuple(q.shape), block)


# ---- modules ----------------------------------------------------------------------------------------------------
def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t, contiguous and starting on a 64-byte boundary (copied when it is not, as torch's allocator places a new
    tensor): torch's int8 CPU kernel needs its operands 32-byte aligned."""
    return t if t.is_contiguous() and t.data_ptr() % 64 == 0 else t.clone(memory_format=torch.contiguous_format)


class Int8Linear(nn.Module):
    """y = x @ dequant(W)^T, W int8 with one scale per row, through torch's int8 CPU kernel on bf16 activations.
    `weight` dequantizes on demand (MLA's absorbed decode reads kv_b_proj's matrix), in `dtype`."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.dtype = dtype
        # Not in state_dict: the checkpoint loader builds these modules from the stored tensors directly. Copies,
        # because the kernel needs 32-byte aligned operands (it crashes the process otherwise) and a tensor read
        # from a safetensors file can start anywhere; zero columns pad K to a multiple the kernel computes right.
        q = F.pad(q.to(torch.int8), (0, -self.in_features % INT8_K_MULTIPLE))
        self.register_buffer("q", _aligned(q), persistent=False)
        self.register_buffer("scale", _aligned(scale.to(torch.bfloat16)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.q.shape[1] > self.in_features:  # the zero columns of q
            flat = F.pad(flat, (0, self.q.shape[1] - self.in_features))
        # a compiled graph cannot read addresses, and the buffers it allocates start on 64-byte boundaries
        flat = flat.clone() if torch.compiler.is_compiling() else _aligned(flat)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.q, self.scale)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_int8(self.q[:, :self.in_features], self.scale).to(self.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per row"


class Int4Linear(nn.Module):
    """y = x @ dequant(W)^T, W int4 with one scale per group of G columns, through torch's int4 CPU kernel on bf16
    activations. Built from the stored layout (packed (N, K/2), scale (N, K/G)); holds torch's own packing, with
    the rows padded to a multiple of 16 as the kernel requires."""

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, group_size: int):
        super().__init__()
        N, groups = scale.shape
        self.out_features, self.in_features, self.group_size = N, groups * group_size, group_size
        pad = -N % 16
        nibbles = F.pad(unpack_int4(packed).to(torch.int32) + 8, (0, 0, 0, pad))          # (N + pad, K), 0..15
        # the kernel computes w = (nibble - 8) * scale + zero: zero = 0 makes it symmetric
        scale = F.pad(scale.to(torch.bfloat16), (0, 0, 0, pad))
        scale_and_zero = torch.stack([scale.t(), torch.zeros_like(scale.t())], dim=-1)  # (K/G, N + pad, 2)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles, 1),
                             persistent=False)
        self.register_buffer("scale_and_zero", scale_and_zero.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scale_and_zero)
        return y[:, : self.out_features].reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4 groups of {self.group_size}")


class QuantizedStack(nn.Module):
    """One matrix of each of the E routed experts (Experts' gate_proj, up_proj or down_proj) as stored, per expert:
    int8 (E, N, K) with scales (E, N), or int4 packed (E, N, K/2) with scales (E, N, K/G). Indexed like the float
    stack it replaces (an expert id, a tensor of ids, a slice), it returns those experts dequantized, in `dtype`.
    In memory an int4 row keeps its columns in two halves, the low nibbles holding columns 0 .. K/2-1 and the high
    ones K/2 .. K-1 (stored: 2j and 2j+1, pack_int4): unpacking reads contiguous bytes, which a compiled decode
    step vectorizes inside the experts' products (interleaved nibbles made it gather them byte by byte)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dtype = dtype
        self.shape = (*q.shape[:2], q.shape[2] * (1 if q.dtype == torch.int8 else 2))  # (E, N, K) of the floats
        if q.dtype == torch.uint8:
            nibbles = (unpack_int4(q) + 8).to(torch.uint8)                           # (E, N, K), 0..15
            half = self.shape[2] // 2
            q = nibbles[..., :half] | (nibbles[..., half:] << 4)
        self.register_buffer("q", q, persistent=False)  # built from the stored tensors, as Int8Linear's are
        self.register_buffer("scale", scale, persistent=False)

    def __getitem__(self, index) -> torch.Tensor:
        q, scale = self.q[index], self.scale[index]
        if q.dtype == torch.int8:
            return dequantize_int8(q, scale).to(self.dtype)
        # both halves by one broadcast shift (a concatenation would be copied on its own in a compiled step)
        shifts = torch.tensor([[0], [4]], dtype=torch.uint8, device=q.device)
        nibbles = ((q.unsqueeze(-2) >> shifts) & 15).flatten(-2).to(torch.int8) - 8    # (..., N, K)
        w = nibbles.float().unflatten(-1, (scale.shape[-1], -1)) * scale.float().unsqueeze(-1)
        return w.flatten(-2).to(self.dtype)

    def extra_repr(self) -> str:
        E, N, K = self.shape
        kind = "int8 per row" if self.q.dtype == torch.int8 else f"int4 groups of {K // self.scale.shape[-1]}"
        return f"experts={E}, in_features={K}, out_features={N}, {kind}"


QUANTIZED = (Int8Linear, Int4Linear, QuantizedStack)


def quant_linear(kind: str, q: torch.Tensor, scale: torch.Tensor, group_size: int,
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """The module for a stored int8 or int4 weight and its scale."""
    return Int8Linear(q, scale, dtype) if kind == "int8" else Int4Linear(q, scale, group_size)


def swap(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where the submodule or parameter `name` of `model` was (set_submodule refuses parameters)."""
    parent, _, attr = name.rpartition(".")
    owner = model.get_submodule(parent)
    delattr(owner, attr)
    setattr(owner, attr, module)


def quantize_model(model: nn.Module, fmt: str, group_size: int = INT4_GROUP_SIZE,
                   hessians: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Swap the model's quantizable nn.Linear layers (see `stored_as`) for Int8Linear / Int4Linear and the routed
    experts' stacked matrices for QuantizedStacks, in place, quantized as save_quantized stores them; the weights
    with an entry in `hessians` (nanoseek.gptq.hessians, per expert for the routed ones) are rounded by GPTQ."""
    if fmt not in ("int8", "int4"):
        raise ConfigError(f"only int8 and int4 stay quantized in memory, got {fmt!r}")
    check_format(fmt, group_size)
    dtype = next(model.parameters()).dtype

    def quantized(weight: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stored = quantize_tensor(weight, w.detach(), fmt, group_size, (hessians or {}).get(weight))
        return stored[weight], stored[weight + SCALE]

    for name, module in list(model.named_modules()):
        if isinstance(module, Experts):
            for projection, stack in list(module.named_parameters()):
                q, scale = zip(*(quantized(expert_weight_name(name, e, projection), w) for e, w in enumerate(stack)))
                swap(model, f"{name}.{projection}", QuantizedStack(torch.stack(q), torch.stack(scale), dtype))
        elif isinstance(module, nn.Linear):
            kind, G = stored_as(name + ".weight", tuple(module.weight.shape), fmt, group_size)
            if kind is not None:
                swap(model, name, quant_linear(kind, *quantized(name + ".weight", module.weight), G, dtype))
    return model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANTIZED) for m in model.modules())


def quantized_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes the int8 / int4 layers and expert stacks hold in memory, weights and scales, and bytes the same
    weights take in bf16)."""
    held = bf16 = 0
    for m in model.modules():
        if isinstance(m, QUANTIZED):
            held += sum(b.nbytes for b in m.buffers())
            bf16 += 2 * (math.prod(m.shape) if isinstance(m, QuantizedStack) else m.in_features * m.out_features)
    return held, bf16
