"""Byte-level BPE tokenizer, DeepSeek special tokens and the R1 chat template.

DeepSeek-V3 report (arXiv 2412.19437) §4.1: byte-level BPE, trained here with Hugging Face
`tokenizers`. Every UTF-8 string round-trips exactly, since every byte has a token of its own.
The special tokens are DeepSeek-R1's own strings; each encodes to a single id, and a nanoseek
tokenizer puts them first in the vocabulary (bos = 0, eos = 1, ...).

Ten more special tokens are DeepSeek's too, and optional (a tokenizer made before them lacks them, and then
their strings are plain text): the three of Fill-in-Middle (V3 §4.1) and the seven of tool calls and tool results
(DeepSeek-V3.1's chat template). They come last: the shipped tokenizer gave them the ids of its ten last merges.

The chat template exists twice, side by side and tested equal: `render_chat` in Python (the
training stages use it, and `chat_ids` builds the SFT loss mask from its pieces) and
`CHAT_TEMPLATE` in Jinja, saved into tokenizer_config.json for transformers' apply_chat_template.
In `chat_ids` only the template emits control tokens: message text that spells one (a user
writing `<｜end▁of▁sentence｜><｜Assistant｜>` to close their turn and write the assistant's) is
encoded as the plain text it is (`encode_text`).
"""
from __future__ import annotations

import functools
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from nanoseek.atomic import write_atomic
from nanoseek.errors import DataError, TokenizerError

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"  # also the end-of-document separator and the pad token
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK = "<think>"
END_THINK = "</think>"
SPECIAL_TOKENS = (BOS, EOS, USER, ASSISTANT, THINK, END_THINK)
FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, CALL_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
OUTPUT_BEGIN, OUTPUT_END = "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"
EXTRA_TOKENS = (FIM_BEGIN, FIM_HOLE, FIM_END, CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, CALL_SEP, OUTPUT_BEGIN,
                OUTPUT_END)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + len(EXTRA_TOKENS)  # every byte, plus the special tokens

# Same output as render_chat; HF renders it with trim_blocks and lstrip_blocks, so every tag trims
# whitespace explicitly. {% generation %} marks the tokens the SFT loss is taken on (chat_ids).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(last_user=-1, system='') %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{%- if messages and messages[0].role == 'system' %}{%- set ns.system = messages[0].content %}{%- endif %}"
    "{%- if tools %}"
    "{%- if ns.system %}{%- set ns.system = ns.system + '\\n\\n' %}{%- endif %}"
    "{%- set ns.system = ns.system + '## Tools\\nYou have access to the following tools:\\n' %}"
    "{%- for tool in tools %}"
    "{%- set ns.system = ns.system + '\\n### ' + tool.function.name + '\\nDescription: ' "
    "+ (tool.function.description or '') + '\\n\\nParameters: ' + (tool.function.parameters or {}) | tojson "
    "+ '\\n' %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- ns.system }}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- if not loop.first %}{{- raise_exception('a system message may only come first') }}{%- endif %}"
    "{%- elif message.role == 'user' %}"
    "{{- '<｜User｜>' + message.content }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<｜Assistant｜>' }}"
    "{%- generation %}"
    "{%- if message.reasoning_content and loop.index0 > ns.last_user %}"
    "{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- message.content }}"
    "{%- if message.tool_calls %}"
    "{{- '<｜tool▁calls▁begin｜>' }}"
    "{%- for call in message.tool_calls %}"
    "{{- '<｜tool▁call▁begin｜>' + call.function.name + '<｜tool▁sep｜>' + call.function.arguments "
    "+ '<｜tool▁call▁end｜>' }}"
    "{%- endfor %}"
    "{{- '<｜tool▁calls▁end｜>' }}"
    "{%- endif %}"
    "{{- eos_token }}"
    "{%- endgeneration %}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<｜tool▁output▁begin｜>' + message.content + '<｜tool▁output▁end｜>' }}"
    "{%- else %}"
    "{{- raise_exception('unknown role ' + message.role) }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<｜Assistant｜>' }}{%- endif %}"
)


class Tokenizer:
    """A `tokenizers.Tokenizer` that holds the DeepSeek special tokens, each as one id."""

    def __init__(self, backend: Backend, source: str = "tokenizer"):
        self._backend = backend
        ids = {token: backend.token_to_id(token) for token in SPECIAL_TOKENS}
        missing = [token for token, i in ids.items() if i is None]
        if missing:
            raise TokenizerError(f"{source} lacks the special tokens {missing}")
        self._ids = ids

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load `path`/tokenizer.json (a nanoseek tokenizer or DeepSeek-R1's own)."""
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise TokenizerError(f"no tokenizer file at {file}")
        try:
            backend = Backend.from_file(str(file))
        except Exception as e:  # tokenizers reports a malformed file as a bare Exception
            raise TokenizerError(f"{file} is not a valid tokenizer.json: {e}") from e
        return cls(backend, source=str(file))

    @property
    def bos_id(self) -> int:
        return self._ids[BOS]

    @property
    def eos_id(self) -> int:
        return self._ids[EOS]

    @property
    def user_id(self) -> int:
        return self._ids[USER]

    @property
    def assistant_id(self) -> int:
        return self._ids[ASSISTANT]

    @property
    def think_id(self) -> int:
        return self._ids[THINK]

    @property
    def end_think_id(self) -> int:
        return self._ids[END_THINK]

    def special_id(self, token: str) -> int | None:
        """The id of one of the optional special tokens (EXTRA_TOKENS), None when this tokenizer lacks it."""
        return self._backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def json(self) -> str:
        """The whole tokenizer as tokenizer.json text (what other libraries, the grammar engine among them, read)."""
        return self._backend.to_str()

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings inside it become their single ids."""
        ids = self._backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids of `text` as plain text: a special-token string inside it is spelled out, byte by byte."""
        return self._plain_text.encode(text, add_special_tokens=False).ids

    @functools.cached_property
    def _plain_text(self) -> Backend:
        """The backend with every added token (DeepSeek's own tokenizer.json leaves <think> unspecial) marked
        special and special tokens not split out of text."""
        spec = json.loads(self._backend.to_str())
        for token in spec.get("added_tokens", []):
            token["special"] = True
        backend = Backend.from_str(json.dumps(spec))
        backend.encode_special_tokens = True
        return backend

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special)

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json and a tokenizer_config.json that transformers' AutoTokenizer reads."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": EOS,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        }
        write_atomic(out / "tokenizer.json", self._backend.to_str())
        write_atomic(out / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2))


def train_tokenizer(files: Sequence[str | os.PathLike], vocab_size: int,
                    out_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Train a byte-level BPE of at most `vocab_size` tokens (special tokens included) on UTF-8
    text files, streamed line by line; save it to `out_dir` when given."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(f"vocab_size {vocab_size} is too small: need at least {MIN_VOCAB_SIZE} "
                             f"(256 bytes + {len(SPECIAL_TOKENS) + len(EXTRA_TOKENS)} special tokens)")
    paths = [Path(f) for f in files]
    if not paths:
        raise DataError("no text files to train the tokenizer on")
    for p in paths:
        _check_text_file(p)
    backend = Backend(models.BPE())
    # DeepSeek LLM (arXiv 2401.02954) §2.1: numbers split into single digits, so arithmetic sees
    # every digit on its own; then GPT-2's byte-level pre-tokenization.
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    backend.decoder = decoders.ByteLevel()
    # as in DeepSeek's tokenizer.json: transformers' tokenizer(text) starts with bos by default
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(EXTRA_TOKENS),
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    backend.train_from_iterator(_lines(paths), trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in EXTRA_TOKENS])
    tokenizer = Tokenizer(backend)
    if out_dir is not None:
        tokenizer.save(out_dir)
    return tokenizer


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = False, tools: Sequence[dict] = ()) -> str:
    """The conversation as one string in DeepSeek-R1's format:
    bos, system text (and the tools' definitions), then `<｜User｜>content` and
    `<｜Assistant｜>[<think>\\n…\\n</think>\\n\\n]content[tool calls]<eos>`, and tool results, as DeepSeek-V3.1's
    template writes them: `<｜tool▁calls▁begin｜>` then per call `<｜tool▁call▁begin｜>name<｜tool▁sep｜>arguments
    <｜tool▁call▁end｜>`, then `<｜tool▁calls▁end｜>`; a result is `<｜tool▁output▁begin｜>content<｜tool▁output▁end｜>`.
    `tools` are OpenAI's: `{"type": "function", "function": {"name", "description", "parameters"}}`."""
    return "".join(text for text, _, _ in _chat_pieces(messages, add_generation_prompt, tools))


def tools_text(tools: Sequence[dict]) -> str:
    """The tools' definitions, as the system prompt carries them."""
    out = "## Tools\nYou have access to the following tools:\n"
    for tool in tools:
        f = tool["function"]
        out += (f"\n### {f['name']}\nDescription: {f.get('description') or ''}\n\n"
                f"Parameters: {json.dumps(f.get('parameters') or {}, ensure_ascii=False)}\n")
    return out


def split_tool_calls(text: str) -> tuple[str, list[dict]]:
    """A reply's text -> (its content, its tool calls in OpenAI's shape)."""
    content, found, rest = text.partition(CALLS_BEGIN)
    if not found:
        return text, []
    calls = []
    for piece in rest.split(CALLS_END)[0].split(CALL_BEGIN)[1:]:
        name, _, arguments = piece.partition(CALL_END)[0].partition(CALL_SEP)
        calls.append({"id": f"call_{secrets.token_hex(12)}", "type": "function",
                      "function": {"name": name, "arguments": arguments}})
    return content, calls


def chat_ids(tokenizer: Tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False,
             tools: Sequence[dict] = ()) -> tuple[list[int], list[int]]:
    """Token ids of render_chat(messages) and a loss mask: 1 on each assistant turn's reasoning,
    think tags, content and closing eos; 0 on bos, system, user turns and `<｜Assistant｜>` itself.
    Message text is encoded as text: a control token it spells costs what any text does."""
    ids: list[int] = []
    mask: list[int] = []
    # Every boundary between pieces sits next to a special token, and BPE never merges across one,
    # so encoding piece by piece gives the same ids as encoding the whole string.
    for text, trained, control in _chat_pieces(messages, add_generation_prompt, tools):
        piece = tokenizer.encode(text) if control else tokenizer.encode_text(text)
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask


def _chat_pieces(messages: Sequence[dict], add_generation_prompt: bool,
                 tools: Sequence[dict]) -> list[tuple[str, bool, bool]]:
    """render_chat as (text, is_assistant_output, is_control_token) pieces."""
    pieces = [(BOS, False, True)]
    system = messages[0].get("content") if messages and messages[0].get("role") == "system" else ""
    if tools:
        system = (system + "\n\n" if system else "") + tools_text(tools)
    if system:
        pieces.append((system, False, False))
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if not isinstance(content, str):
            raise TokenizerError(f"message {i} has content {content!r}; expected a string")
        if role == "system":
            if i != 0:
                raise TokenizerError(f"message {i} is a system message; a system message may only come first")
        elif role == "user":
            pieces += [(USER, False, True), (content, False, False)]
        elif role == "assistant":
            # DeepSeek convention: earlier turns' reasoning is not fed back; only the assistant messages after the
            # last user message (the SFT target, the tool calls of the turn still running) keep it.
            # R1 (arXiv 2501.12948) §2.3.1: <think> then the answer.
            reasoning = m.get("reasoning_content") if i > last_user else None
            pieces.append((ASSISTANT, False, True))
            if reasoning:
                pieces += [(THINK, True, True), (f"\n{reasoning}\n", True, False), (END_THINK, True, True)]
                content = "\n\n" + content
            pieces.append((content, True, False))
            if m.get("tool_calls"):
                pieces.append((CALLS_BEGIN, True, True))
                for call in m["tool_calls"]:
                    f = call["function"]
                    pieces += [(CALL_BEGIN, True, True), (f["name"], True, False), (CALL_SEP, True, True),
                               (f["arguments"], True, False), (CALL_END, True, True)]
                pieces.append((CALLS_END, True, True))
            pieces.append((EOS, True, True))
        elif role == "tool":
            pieces += [(OUTPUT_BEGIN, False, True), (content, False, False), (OUTPUT_END, False, True)]
        else:
            raise TokenizerError(f"message {i} has role {role!r}; expected 'system', 'user', 'assistant' or 'tool'")
    if add_generation_prompt:
        pieces.append((ASSISTANT, False, True))
    return pieces


def _check_text_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"no text file at {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        if not any(line.strip() for line in f):
            raise DataError(f"{path} is empty: nothing to train the tokenizer on")


def _lines(paths: Sequence[Path]) -> Iterator[str]:
    for path in paths:
        with open(path, encoding="utf-8") as f:
            try:
                yield from f
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text: {e}") from e
