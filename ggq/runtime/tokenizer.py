"""The tokenizer embedded in a .ggq file (metadata `tokenizer.huggingface.json`).

Encoding and decoding go through the `tokenizers` library, so they are exactly the Hugging Face
tokenizer's; special tokens written in the text (e.g. "<|im_start|>") are recognised. The chat
template is rendered with jinja2 the way transformers' apply_chat_template does."""
from __future__ import annotations

import json
import threading
from datetime import datetime

from ..errors import GGQError, TokenizerError, UsageError

# Tokens that end generation besides eos when present as special tokens (as llama.cpp's EOG set).
_EOG_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>", "</s>")

# Gemma 3's chat template, verbatim from the instruction-tuned models' tokenizer_config.json
# (google/gemma-3-*-it): BOS first, a system message is prepended to the first user turn,
# "assistant" is called "model", each turn is <start_of_turn>role\n...<end_of_turn>\n.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)


# A tokenizer JSON at least this long (a real model's: SmolLM2's is 1.4 MB, Gemma 3's 13 MB) is
# parsed at its first use rather than when the model loads: `tokenizers` holds the GIL while it
# parses (0.8 s for Gemma 3), so a thread would overlap nothing, and a caller that never
# tokenizes never pays. Smaller ones (tests' toy vocabularies) are parsed at once. Either way the
# same TokenizerError, only later for a big one: at its first use.
DEFERRED_MIN_CHARS = 1 << 16


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing).
    `tokenizers` builds a big vocabulary through ~3x its final size in transient allocations
    (Gemma 3: ~270 MB for a ~100 MB tokenizer); freed, they would stay resident for the whole
    run, under the weights' pages that come next."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


class Tokenizer:
    def __init__(self, metadata: dict, source: str = "model"):
        key = "tokenizer.huggingface.json"
        # a .ggq reader's metadata gives the JSON's UTF-8 bytes as stored: no str of it is made
        # (4 bytes a character for a vocabulary with characters beyond U+FFFF)
        raw_string = getattr(metadata, "raw_string", None)
        try:
            js = raw_string(key) if raw_string is not None and key in metadata else metadata.get(key)
        except GGQError as e:  # not a string: unusable, as `tokenizers` would say of it
            raise TokenizerError(f"{source}: embedded tokenizer is unusable: {e}") from None
        if not js:
            raise TokenizerError(f"{source}: no embedded tokenizer (metadata tokenizer.huggingface.json)")
        self.source = source
        bos = int(metadata.get("tokenizer.bos_token_id", -1))
        eos = int(metadata.get("tokenizer.eos_token_id", -1))
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = eos if eos >= 0 else None
        self.add_bos = bool(metadata.get("tokenizer.add_bos_token", False)) and self.bos_id is not None
        self._template = metadata.get("tokenizer.chat_template") or None
        self._state = None  # (HF tokenizer, vocab_size, special_ids, eog_ids, template, template source)
        self._json = js  # until built
        self._error = None  # a failed build's message, raised again at each use
        self._lock = threading.Lock()  # one build, whichever thread asks first
        if not (isinstance(js, (str, bytes)) and len(js) >= DEFERRED_MIN_CHARS):
            self._ready()

    def _build(self):
        from tokenizers import Tokenizer as HFTokenizer

        js = self._json
        try:
            return HFTokenizer.from_buffer(js) if isinstance(js, bytes) else HFTokenizer.from_str(js)
        except Exception as e:  # noqa: BLE001 - one line, below
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            msg = msg.removeprefix("Cannot instantiate Tokenizer from buffer: ")  # as from_str says
            raise TokenizerError(f"{self.source}: embedded tokenizer is unusable: {msg}") from None
        finally:
            if isinstance(js, (str, bytes)) and len(js) >= DEFERRED_MIN_CHARS:
                release_free_heap()

    def _ready(self) -> tuple:
        """Build the tokenizer (once; a failed build says so again at every use) and derive what
        needs it."""
        if self._state is not None:
            return self._state
        with self._lock:
            if self._state is not None:
                return self._state
            if self._error is not None:
                raise TokenizerError(self._error) from None
            try:
                tok = self._build()
            except TokenizerError as e:
                self._error, self._json = str(e), None
                raise
            state = self._derive(tok)
            self._json = None  # the JSON's bytes are not needed again
            return state

    def _derive(self, tok) -> tuple:
        specials = set()
        try:
            specials = {int(k) for k, t in tok.get_added_tokens_decoder().items() if t.special}
        except AttributeError:
            pass
        special_ids = frozenset(specials)
        eog = {self.eos_id} if self.eos_id is not None else set()
        for text in _EOG_TEXTS:
            i = tok.token_to_id(text)
            if i is not None and i in specials:
                eog.add(i)
        # "file": the model's own template; "<family> (built-in)": ours; None: no template
        template, template_source = self._template, ("file" if self._template else None)

        def is_special(text):
            i = tok.token_to_id(text)
            return i is not None and i in special_ids

        if template is None and is_special("<start_of_turn>") and is_special("<end_of_turn>"):
            template, template_source = GEMMA_CHAT_TEMPLATE, "gemma (built-in)"
        self._state = (tok, tok.get_vocab_size(with_added_tokens=True), special_ids, frozenset(eog),
                       template, template_source)
        return self._state

    @property
    def _tok(self):
        return self._ready()[0]

    @property
    def vocab_size(self) -> int:
        return self._ready()[1]

    @property
    def special_ids(self) -> frozenset:
        return self._ready()[2]

    @property
    def eog_ids(self) -> frozenset:
        return self._ready()[3]

    @property
    def chat_template(self):
        return self._ready()[4]

    @property
    def chat_template_source(self):
        return self._ready()[5]

    def _is_special(self, text: str) -> bool:
        i = self._tok.token_to_id(text)
        return i is not None and i in self.special_ids

    # -- encode / decode -----------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of text; special tokens in the text are recognised. BOS prepended when the
        model asks for it (add_bos None) or when add_bos is True."""
        if not isinstance(text, str):
            raise UsageError("text to encode must be a string")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, text: str):
        return self._tok.token_to_id(text)

    def id_to_token(self, i: int):
        return self._tok.id_to_token(int(i))

    def token_text(self, i: int) -> str:
        return self.id_to_token(i) or ""

    def stream(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens)

    # -- chat ------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render messages [{"role", "content"}] with the model's template (as transformers)."""
        if not self.chat_template:
            raise UsageError(f"{self.source}: the model has no chat template (tokenizer.chat_template) "
                             "and its vocabulary matches no model family with a known one; "
                             "prompt it without chat formatting")
        tmpl = _compile_template(self.chat_template)

        def tok(i):
            return self.id_to_token(i) if i is not None else None

        try:
            return tmpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=tok(self.bos_id) or "", eos_token=tok(self.eos_id) or "")
        except TokenizerError:
            raise
        except Exception as e:
            raise TokenizerError(f"{self.source}: chat template failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def chat_ids(self, prompt: str, system: str | None = None) -> list[int]:
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        return self.messages_ids(messages, True)

    def messages_ids(self, messages, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a whole conversation [{"role": str, "content": str}, ...] rendered with
        the chat template (multi-turn; add_generation_prompt opens the assistant's turn)."""
        check_messages(messages)
        # transformers tokenizes the rendered chat with add_special_tokens=False
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), add_bos=False)


def check_messages(messages) -> None:
    """A conversation is a non-empty list of {"role": str, "content": str} (one line naming the
    first message that is not)."""
    if not isinstance(messages, list) or not messages:
        raise UsageError("messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise UsageError(f"messages[{i}] must be an object with role and content")
        if not isinstance(m.get("role"), str) or not m["role"]:
            raise UsageError(f"messages[{i}].role must be a non-empty string")
        if not isinstance(m.get("content"), str):
            raise UsageError(f"messages[{i}].content must be a string")


_TEMPLATES: dict = {}


def _compile_template(source: str):
    """jinja2 environment configured like transformers' _compile_jinja_template."""
    t = _TEMPLATES.get(source)
    if t is not None:
        return t
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TokenizerError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        t = env.from_string(source)
    except jinja2.TemplateError as e:
        raise TokenizerError(f"chat template does not compile: {e}") from None
    _TEMPLATES[source] = t
    return t


class StreamDecoder:
    """Incremental detokenization that never emits a broken UTF-8 sequence.

    Decodes a short window of recent tokens twice (without and with the new token) and emits the
    difference once it no longer ends in U+FFFD (an incomplete byte sequence). Decoding a window
    that starts a few tokens back keeps decoders that strip a leading space (SentencePiece)
    correct; the concatenation of all pieces equals decode(all ids)."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0   # window start
        self.read = 0     # tokens up to here have been emitted

    def put(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prev = self.tok.decode(self.ids[self.prefix:self.read], self.skip)
        new = self.tok.decode(self.ids[self.prefix:], self.skip)
        if len(new) > len(prev) and not new.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new[len(prev):]
        return ""

    def flush(self) -> str:
        """Whatever is left (an unfinished byte sequence decodes to U+FFFD)."""
        prev = self.tok.decode(self.ids[self.prefix:self.read], self.skip)
        new = self.tok.decode(self.ids[self.prefix:], self.skip)
        self.prefix = self.read = len(self.ids)
        return new[len(prev):] if len(new) > len(prev) else ""
