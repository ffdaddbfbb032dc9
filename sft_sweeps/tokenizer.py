"""Tokenizers: the embedded offline one, or any Hugging Face tokenizer by id or path.

The embedded tokenizer is byte-level (every string round-trips, emoji included) with no learned merges,
so it is built deterministically from code alone. The role names are single tokens, so a ChatML header
costs three tokens and the tiny default trains fast on CPU.

Example:
    >>> tok = build_embedded_tokenizer()
    >>> text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    >>> text
    '<|im_start|>user\\nhi<|im_end|>\\n'
"""

from __future__ import annotations

from tokenizers import AddedToken as RawAddedToken
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from sft_sweeps.config import ConfigError
from sft_sweeps.pretrained import LOAD_ERRORS, TOKENIZER_FILES, check_local, load_error

PAD, EOT, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant", "tool")

# ChatML with `{% generation %}` markers around what the assistant says, its end-of-turn token included,
# so TRL's `assistant_only_loss` works on it too (the benchmarks compare against that). Tools are rendered
# Qwen-style, but compact (every byte is a token here):
# - `tools=` go into the system block, one JSON line each:
#   `<|im_start|>system\n{system}\n\n<tools>\n{tool JSON}\n...</tools><|im_end|>\n`
#   (without a system message the block holds the tools alone);
# - an assistant's tool calls follow its text, each
#   `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (a `\n` before each but a leading
#   one), inside the generation block: the model learns to write them;
# - a tool result is its own block,
#   `<|im_start|>tool\n<tool_response>\n{result}\n</tool_response><|im_end|>\n`.
#   Its own role, not Qwen 2.5's user-wrapped run of results: each result is then one prefix-stable block,
#   the model is never taught that a user speaks in tool results, and a model that writes a result itself
#   (instead of stopping at `<|im_end|>`) shows it by `<tool_response>` in its own message.
# A conversation without tools, tool calls and tool messages renders exactly as the plain ChatML before.
CHATML_TEMPLATE = (
    "{%- if tools -%}"
    "{{ '<|im_start|>system\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ messages[0]['content'] + '\n\n' }}"
    "{%- endif -%}"
    "{{ '<tools>\n' }}{%- for tool in tools -%}{{ tool | tojson }}{{ '\n' }}{%- endfor -%}"
    "{{ '</tools><|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (tools and loop.first and message['role'] == 'system') -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] if message['content'] is string else '' -%}"
    "{% generation %}{{ content }}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- set call = call['function'] if call['function'] is defined else call -%}"
    "{%- if content or not loop.first -%}{{ '\n' }}{%- endif -%}"
    "{{ '<tool_call>\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{%- if call['arguments'] is string -%}{{ call['arguments'] }}"
    "{%- else -%}{{ call['arguments'] | tojson }}{%- endif -%}"
    "{{ '}\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{ '<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{%- else -%}"
    "{{ message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# The template before tools were rendered: conversations without tools must render byte-identically.
PLAIN_CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}"
    "{{ message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def build_embedded_tokenizer() -> PreTrainedTokenizerFast:
    """Build the project's own tokenizer: 256 byte tokens, 4 special tokens, 4 role tokens, ChatML template.

    Deterministic: the same ids on every machine, with nothing downloaded or trained.
    """
    byte_alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(byte_alphabet)}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(
        [RawAddedToken(t, special=True, normalized=False) for t in (PAD, EOT, IM_START, IM_END)]
    )
    raw.add_tokens([RawAddedToken(role, special=False, normalized=False) for role in ROLES])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token=PAD,
        eos_token=IM_END,  # generation stops at the end of the assistant's turn
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[EOT, IM_START],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def load_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, key: str = "model.tokenizer"
) -> PreTrainedTokenizerBase:
    """`embedded` builds the offline tokenizer; anything else goes to `AutoTokenizer.from_pretrained`.

    A tokenizer without a pad token gets its end-of-sequence token as pad, as TRL does.

    Args:
        name_or_path: `embedded`, a hub id or a local directory.
        trust_remote_code: passed to `from_pretrained`.
        key: the config key `name_or_path` came from, named in errors.

    Raises:
        ConfigError: no tokenizer at `name_or_path`, or it has no chat template (names `key` and the path).
    """
    if name_or_path == "embedded":
        return build_embedded_tokenizer()
    tokenizer = load_pretrained_tokenizer(name_or_path, trust_remote_code, key)
    if tokenizer.chat_template is None:
        raise ConfigError(
            f"{key}: tokenizer '{name_or_path}' has no chat template; multi-turn masking needs one"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, key: str = "model.tokenizer"
) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained`, with errors that name `key` and the path (a `ConfigError`)."""
    check_local(name_or_path, key, "tokenizer", TOKENIZER_FILES)
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as e:
        raise load_error(name_or_path, key, "tokenizer", e) from e
