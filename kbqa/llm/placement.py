"""Where and how a model's weights are loaded: machine detection, then device, dtype and quantization."""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kbqa.errors import ConfigError, ModelUnavailable
from kbqa.llm.chatglm.checkpoint import read_json
from kbqa.settings import LLMSettings

log = logging.getLogger(__name__)

_GIB = 1 << 30
#: Bytes per parameter by dtype / quantization (bitsandbytes keeps embeddings and norms in 16 bits).
_PARAM_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "8bit": 1.1, "4bit": 0.6}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Machine:
    """What this machine offers the backend (``detect_machine``; tests build their own)."""

    cuda: bool = False
    mps: bool = False
    cuda_bf16: bool = False
    bitsandbytes: bool = False
    #: CUDA GPUs torch sees (``cuda:0`` ... ``cuda:N-1``), when ``cuda``.
    cuda_count: int = 1
    #: Free memory in bytes per device ("cpu", "mps", "cuda" for the first GPU, "cuda:N"); absent = unknown.
    free_memory: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """Where and how the weights are loaded."""

    device: str
    dtype: str
    quantization: str = "none"

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


def detect_machine() -> Machine:
    """Probe CUDA, MPS, bitsandbytes and free memory."""
    free: dict[str, int] = {}
    cuda = torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda else 0
    for index in range(count):
        free[f"cuda:{index}"] = int(torch.cuda.mem_get_info(index)[0])
    if count:
        free["cuda"] = free["cuda:0"]
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    ram = _available_ram()
    if ram is not None:
        free["cpu"] = free["mps"] = ram
    # bf16 only where every GPU has it (a card before Ampere has none), so auto never picks it for one.
    bf16 = cuda and all(torch.cuda.get_device_capability(index)[0] >= 8 for index in range(count))
    return Machine(cuda=cuda, mps=mps, cuda_bf16=bf16, cuda_count=count,
                   bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None, free_memory=free)


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def choose_placement(llm: LLMSettings, machine: Machine, n_params: int) -> Placement:
    """Device, dtype and quantization for ``n_params`` weights, as the settings ask and the machine allows.

    Raises:
        ConfigError: the choice cannot work here (no such device, 4-bit without CUDA, fp16 on a CPU,
            not enough memory), saying what to set instead.
    """
    device = llm.device
    if device == "auto":
        device = "cuda" if machine.cuda else "mps" if machine.mps else "cpu"
    elif device.startswith("cuda") and not machine.cuda:
        raise ConfigError(f"llm.device = '{device}', but torch sees no CUDA GPU here (a CPU-only torch build, "
                          "or no driver). Set llm.device (KBQA_LLM__DEVICE) = 'auto' or 'cpu'.")
    elif device.startswith("cuda:") and int(device[5:]) >= machine.cuda_count:
        seen = "cuda:0" if machine.cuda_count == 1 else f"cuda:0 to cuda:{machine.cuda_count - 1}"
        raise ConfigError(f"llm.device = '{device}', but torch sees {machine.cuda_count} CUDA GPU"
                          f"{'s' if machine.cuda_count != 1 else ''} here ({seen}; CUDA_VISIBLE_DEVICES "
                          "renumbers them). Set llm.device (KBQA_LLM__DEVICE) to one of those, or 'auto'.")
    elif device == "mps" and not machine.mps:
        raise ConfigError("llm.device = 'mps', but Apple's MPS is not available here. "
                          "Set llm.device (KBQA_LLM__DEVICE) = 'auto'.")
    quant = llm.quantization
    gpu = device.startswith("cuda")
    if quant != "none" and not gpu:
        raise ConfigError(f"llm.quantization = '{quant}' needs a CUDA GPU (bitsandbytes); this machine "
                          f"runs the model on {device}. Set llm.quantization (KBQA_LLM__QUANTIZATION) = 'none'"
                          + (" (and llm.dtype = 'bf16' to halve memory on a CPU)." if device == "cpu" else "."))
    if quant != "none" and not machine.bitsandbytes:
        raise ConfigError(f"llm.quantization = '{quant}' needs bitsandbytes: install kbqa's gpu extra "
                          "(.venv/bin/pip install -e '.[gpu]' in kbqa's folder).")
    dtype: str = llm.dtype
    free = machine.free_memory.get(device)
    if dtype == "auto":
        dtype = ("bf16" if machine.cuda_bf16 else "fp16") if gpu else {"mps": "fp16", "cpu": "fp32"}[device]
        if device == "cpu" and free is not None and n_params * 4.2 > free:
            dtype = "bf16"  # fp32 would not fit (a 6B model needs ~25 GB in fp32)
            log.info("loading in bf16: fp32 weights would not fit in the free memory")
    if dtype == "fp16" and device == "cpu":
        raise ConfigError("llm.dtype = 'fp16' is not usable on a CPU (many fp16 kernels are missing or very "
                          "slow there). Set llm.dtype (KBQA_LLM__DTYPE) = 'bf16' (half the memory) or 'fp32'.")
    if dtype == "bf16" and gpu and not machine.cuda_bf16:
        raise ConfigError("This GPU has no bf16 support (it predates Ampere). Set llm.dtype (KBQA_LLM__DTYPE) = "
                          "'fp16'.")
    needed = n_params * _PARAM_BYTES[quant if quant != "none" else dtype] * 1.05
    if free is not None and needed > free:
        if gpu and quant != "4bit":
            hint = "use llm.quantization = '8bit' or '4bit'"
        elif dtype == "fp32":
            hint = "set llm.dtype = 'bf16' (half the memory), use a GPU, or a smaller model"
        elif device == "cpu":
            hint = "free some memory, use a GPU, or a smaller model"
        else:
            hint = f"free some {device} memory (other programs on it), or use a smaller model"
        raise ConfigError(f"The model needs about {needed / _GIB:.1f} GiB of {device} memory for its "
                          f"weights ({dtype if quant == 'none' else quant}), but only {free / _GIB:.1f} GiB "
                          f"is free: {hint}.")
    return Placement(device=device, dtype=dtype, quantization=quant)


def count_parameters(folder: Path) -> int:
    """Parameters stored in a model folder (read from safetensors headers; estimated for ``.bin``).

    Raises:
        ModelUnavailable: a safetensors file whose header cannot be read (cut short, damaged).
    """
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                    total += math.prod(handle.get_slice(key).get_shape())
        except Exception as exc:  # safetensors' own error class, or an OSError
            raise ModelUnavailable(f"Cannot read {path} ({exc}): it is damaged or was cut short; copy or "
                                   "download it again.") from exc
    if total:
        return total
    config_file = folder / "config.json"
    config = read_json(config_file) if config_file.is_file() else {}
    width = 4 if str(config.get("torch_dtype") or config.get("dtype")) == "float32" else 2
    return sum(p.stat().st_size for p in folder.glob("*.bin")) // width
