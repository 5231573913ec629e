"""ChatGLM2-6B / ChatGLM3-6B without remote code: converter, tokenizer, prompt formats, adapters.

``convert_chatglm`` turns a published checkpoint into a native transformers ``GlmForCausalLM`` folder;
the ``transformers`` backend (``kbqa.llm.transformers_backend``) loads that folder with ChatGLM's own
tokenizer and prompt format, plus a LoRA or P-tuning v2 adapter when one is configured.
"""

from kbqa.llm.chatglm.checkpoint import is_chatglm_checkpoint, read_source
from kbqa.llm.chatglm.convert import (
    CONVERTER_VERSION,
    MARKER_FILE,
    attention_dims,
    convert_chatglm,
    is_converted_chatglm,
    read_marker,
)
from kbqa.llm.chatglm.lora import convert_lora, is_chatglm_lora, is_lora, lora_layers
from kbqa.llm.chatglm.prompt import ChatGLMCodec, chatglm2_text, chatglm3_ids
from kbqa.llm.chatglm.ptuning import attach_prefix, is_ptuning_checkpoint, load_prefix
from kbqa.llm.chatglm.tokenizer import ChatGLMTokenizer

__all__ = [
    "CONVERTER_VERSION", "MARKER_FILE", "ChatGLMCodec", "ChatGLMTokenizer", "attach_prefix", "attention_dims",
    "chatglm2_text", "chatglm3_ids", "convert_chatglm", "convert_lora", "is_chatglm_checkpoint",
    "is_chatglm_lora", "is_converted_chatglm", "is_lora", "is_ptuning_checkpoint", "load_prefix", "lora_layers",
    "read_marker", "read_source",
]
