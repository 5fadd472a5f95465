"""Token counts: the prompt estimate reserved against token limits, and the count used when a
provider reports no usage.

tiktoken with the two encodings shipped in `gateway/encodings/` (SEMANTICS.md §6). Invariants:

- Loading reads the package's own files and nothing else: no network, no environment variable
  set or read, nothing written to tiktoken's cache. Each file is checked against its sha256
  before use, so a missing or corrupted install fails at boot (`EncodingFileError`).
- Models tiktoken does not know (aliases, `claude-*`, ...) are counted with o200k_base.
  Counts of non-OpenAI models, images, tool schemas and response formats are estimates;
  the billed numbers are the provider's usage.
- `estimate` never blocks the event loop: a request with more than `OFFLOAD_CHARS` characters
  is counted in the Tokenizer's own small thread pool (tiktoken's Rust core releases the GIL).
- Every request costs bounded work: past `EXACT_CHARS` characters a request is not counted
  exactly but at `CHARS_PER_TOKEN` characters per token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import importlib.resources
import math
import re
import types
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib.resources.abc import Traversable
from typing import Any, Final

import orjson
import tiktoken
import tiktoken.model
from tiktoken_ext import openai_public  # type: ignore[import-untyped]

# sha256 of the rank files, as tiktoken publishes them (/work/shared/tiktoken/README.md).
ENCODINGS: Final = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
DEFAULT_ENCODING: Final = "o200k_base"

# openai-cookbook "How to count tokens with tiktoken" (gpt-3.5-turbo-0613, gpt-4*, gpt-4o*).
TOKENS_PER_MESSAGE: Final = 3
TOKENS_PER_NAME: Final = 1
REPLY_PRIMING: Final = 3  # <|start|>assistant<|message|>
# A fixed guess per image part: OpenAI bills an image at `detail: low` as 85 tokens and more for
# high detail (tiles), which needs the image's size. The provider's usage corrects it.
IMAGE_TOKENS: Final = 85

# Measured on this machine (2 cores, tiktoken 0.14.0), count_request of a chat request with one
# long message: 0.5 ms is reached at about 3,000 characters of mixed Unicode and 4,000 of CJK
# (6 to 7 million characters a second, the slowest text found), 8,000 to 12,000 of English
# (cl100k, o200k) and 10,000 to 14,000 of code. Clients choose the text, so the slowest sets
# the threshold: up to 2,500 characters a count takes at most 0.45 ms on the event loop; a larger
# one goes to a thread, a hop measured at 0.03 ms.
OFFLOAD_CHARS: Final = 2_500
# Past this many characters in one request, the rest is estimated, not encoded. Encoding a
# million characters takes a pool thread 50 ms (English) to 250 ms (CJK, mixed Unicode, runs of
# spaces); a 32 MiB body would hold it for seconds. 4 characters a token is OpenAI's rule of
# thumb for English (3.4 to 5.2 measured for prose, code and JSON); CJK is denser (about 0.5).
# Each separate text also uses TEXT_CHARS of the budget: a body of many tiny messages costs an
# encode call per text more than per character (200,000 messages of "hi": 0.5 s counted
# exactly, 0.19 s with this, most of it reading the body).
EXACT_CHARS: Final = 1_000_000
TEXT_CHARS: Final = 16
CHARS_PER_TOKEN: Final = 4
# tiktoken panics (a BaseException, openai/tiktoken#15) on a run of about a million
# horizontal whitespace characters with o200k_base (measured: 999,999 spaces, tabs or no-break
# spaces fail). Texts are encoded in pieces of at most this many characters, cut before a space
# that follows a letter or digit: both patterns always end a pre-token there, so the count stays
# exact for ordinary text.
_PIECE_CHARS: Final = 100_000
# Matches up to the last letter or digit followed by a space.
_LAST_CUT: Final = re.compile(r".*[^\W_](?= )", re.DOTALL)
_POOL_THREADS: Final = 2

_IMAGE_PARTS: Final = frozenset({"image_url", "input_image"})


class EncodingFileError(Exception):
    """A shipped encoding file is missing, unreadable or not the expected file."""


class Tokenizer:
    """Counts tokens with the shipped encodings. Made once at start (`load`), closed at exit.

    `count_text`, `count_request` and `output_cap` are synchronous and pure CPU; `estimate` is
    the one to call on the event loop.
    """

    def __init__(self, encodings: Mapping[str, tiktoken.Encoding]):
        self._encodings = dict(encodings)
        self._pool = ThreadPoolExecutor(_POOL_THREADS, thread_name_prefix="savepoint-tokens")

    @classmethod
    def load(
        cls, directory: Traversable | None = None, models: Iterable[str] | None = None
    ) -> Tokenizer:
        """Load and verify the encodings in `ENCODINGS` that `models` use (default: all, and
        always `DEFAULT_ENCODING`) from `directory` (default: the files shipped in the
        package): each costs about 40 MB of memory, so a policy whose models all use o200k
        never holds cl100k. Raises `EncodingFileError` naming the file and its expected
        sha256. Takes about half a second of CPU: call it before serving, or in a thread."""
        if directory is None:
            directory = importlib.resources.files("gateway").joinpath("encodings")
        names = set(ENCODINGS) if models is None else {DEFAULT_ENCODING, *map(_encoding, models)}
        return cls({name: _load(directory, name, sha256) for name, sha256 in ENCODINGS.items()
                    if name in names})  # fmt: skip

    def close(self) -> None:
        """Stop the counting threads; a count under way finishes, queued ones are dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def encoding_for(self, model: str) -> str:
        """The encoding tiktoken's model table gives `model`, or o200k_base when it has none
        or names one not shipped or loaded (o200k_harmony uses o200k_base's ranks; p50k/r50k
        models are retired)."""
        name = _encoding(model)
        return name if name in self._encodings else DEFAULT_ENCODING

    def count_text(self, model: str, text: str) -> int:
        """The exact number of tokens in `text`, special tokens counted as plain text. Costs
        0.04 (English) to 0.2 ms (CJK) per thousand characters: keep long texts off the loop."""
        return _length(self._encodings[self.encoding_for(model)], text)

    def count_request(self, endpoint_path: str, model: str, body: Mapping[str, Any]) -> int:
        """The prompt tokens a request body will cost, estimated (see the module docstring).

        `endpoint_path` is `/v1/chat/completions`, `/v1/completions`, `/v1/responses` or
        `/v1/embeddings`, with or without the `/v1` (`Endpoint.path` works)."""
        prompt = _Prompt()
        _READERS[_endpoint(endpoint_path)](body, prompt)
        encoding = self._encodings[self.encoding_for(model)]
        left = EXACT_CHARS
        tokens = prompt.tokens
        for text in prompt.texts:
            left -= TEXT_CHARS
            exact = text[: max(left, 0)]
            left -= len(exact)
            tokens += _length(encoding, exact) if exact else 0
            tokens += _approximate(len(text) - len(exact))
        return tokens

    def output_cap(self, endpoint_path: str, body: Mapping[str, Any]) -> int | None:
        """The most output tokens the request asks for per answer; None if it sets no cap."""
        endpoint = _endpoint(endpoint_path)
        if endpoint == "/embeddings":
            return 0
        names = ("max_output_tokens",) if endpoint == "/responses" else _CHAT_CAPS
        for name in names:
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    async def estimate(
        self, endpoint_path: str, model: str, body: Mapping[str, Any], default_output: int
    ) -> int:
        """The tokens to reserve for a request: its prompt plus, for each answer it asks for
        (`n`; each prompt of a completions batch), its output cap or `default_output`.

        The body must not change until this returns: a large one is read in a pool thread."""
        if _at_most(body, OFFLOAD_CHARS):
            prompt = self.count_request(endpoint_path, model, body)
        else:
            loop = asyncio.get_running_loop()
            prompt = await loop.run_in_executor(
                self._pool, self.count_request, endpoint_path, model, body
            )
        cap = self.output_cap(endpoint_path, body)
        output = default_output if cap is None else cap
        return prompt + _answers(_endpoint(endpoint_path), body) * output


# Loading ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)  # tiktoken scans its prefix table and raises for most names
def _encoding(model: str) -> str:
    try:
        return str(tiktoken.model.encoding_name_for_model(model))
    except KeyError:
        return DEFAULT_ENCODING


def _load(root: Traversable, name: str, sha256: str) -> tiktoken.Encoding:
    file = root.joinpath(f"{name}.tiktoken")
    try:
        data = file.read_bytes()
    except OSError as e:
        raise EncodingFileError(
            f"cannot read the {name} encoding {file}: {e.strerror or e}; expected a file "
            f"with sha256 {sha256} (reinstall savepoint)"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise EncodingFileError(
            f"the {name} encoding {file} is corrupted: its sha256 is {actual}, expected "
            f"{sha256} (reinstall savepoint)"
        )
    # The same format tiktoken.load.load_tiktoken_bpe parses. That function is not used: it
    # goes through tiktoken's cache, which it reads first (a stale good copy there would hide
    # a corrupted file), writes a copy into (/tmp/data-gym-cache, or the user's
    # TIKTOKEN_CACHE_DIR), and skips the hash check when TIKTOKEN_CACHE_DIR is empty.
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    pattern, special_tokens = _definition(name, sha256)
    encoding = tiktoken.Encoding(
        name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens
    )
    # The Encoding keeps its Python dict of ranks only to be pickled, which we never do; its
    # Rust core has its own copy. Dropping it gives back about 27 MB per encoding.
    with contextlib.suppress(AttributeError):
        del encoding._mergeable_ranks
    return encoding


def _definition(name: str, sha256: str) -> tuple[str, dict[str, int]]:
    """The split pattern and special tokens of encoding `name`, from tiktoken itself.

    They are defined only inside tiktoken_ext.openai_public's constructor functions (no module
    constant holds the o200k or cl100k pattern), which fetch the ranks through the module-level
    name `load_tiktoken_bpe` (a download, or tiktoken's cache). So the constructor's code is run
    against a copy of its module's globals in which that name returns no ranks: the pattern
    always matches the installed tiktoken instead of a hand-copied regex, no module is patched
    (other code in the process may use tiktoken meanwhile), nothing is read or fetched, and the
    hash tiktoken asks for shows that its pattern belongs to the ranks shipped here.
    """
    constructor = openai_public.ENCODING_CONSTRUCTORS[name]
    asked: list[str | None] = []

    def no_ranks(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        asked.append(expected_hash)
        return {}

    isolated = types.FunctionType(
        constructor.__code__,
        {**constructor.__globals__, "load_tiktoken_bpe": no_ranks},
        name,
        constructor.__defaults__,
        constructor.__closure__,
    )
    spec = isolated()
    if asked != [sha256]:
        raise EncodingFileError(
            f"tiktoken {tiktoken.__version__} defines {name} for the ranks file with sha256 "
            f"{asked}, not the shipped one ({sha256}); ship its file with this tiktoken"
        )
    return spec["pat_str"], dict(spec["special_tokens"])


# Counting -----------------------------------------------------------------------------------


def _length(encoding: tiktoken.Encoding, text: str) -> int:
    tokens = 0
    for piece in _pieces(text) if len(text) > _PIECE_CHARS else (text,):
        try:
            tokens += len(encoding.encode_ordinary(piece))
        except BaseException as e:  # a Rust panic is a BaseException (openai/tiktoken#15)
            if type(e).__name__ != "PanicException":
                raise
            tokens += _approximate(len(piece))  # an input shape still too much for the regex
    return tokens


def _pieces(text: str) -> Iterator[str]:
    start = 0
    while len(text) - start > _PIECE_CHARS:
        end = start + _PIECE_CHARS
        found = _LAST_CUT.match(text, start + _PIECE_CHARS // 2, end)
        cut = found.end() if found else end  # else at most 1 token off (long runs of spaces)
        yield text[start:cut]
        start = cut
    yield text[start:]


def _approximate(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _at_most(value: object, limit: int) -> bool:
    """Whether a JSON value holds at most `limit` characters of strings (each array item or
    object member counts one more), found without looking at more than that."""
    left = limit
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            left -= len(item)
        elif isinstance(item, dict | list):
            left -= len(item)
            if left >= 0:
                stack.extend(item.values() if isinstance(item, dict) else item)
        else:
            left -= 1
        if left < 0:
            return False
    return True


# What a request asks the model to read ------------------------------------------------------


class _Prompt:
    """Texts to encode, plus the tokens known without encoding (overheads, images, token ids)."""

    __slots__ = ("texts", "tokens")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.tokens = 0

    def add(self, value: object) -> None:
        if isinstance(value, str):
            self.texts.append(value)

    def add_json(self, value: object) -> None:
        """A schema the provider renders into the prompt in its own (unpublished) format: its
        compact JSON is the estimate."""
        if value is not None:
            self.texts.append(orjson.dumps(value).decode())


_CHAT_CAPS: Final = ("max_completion_tokens", "max_tokens")


def _endpoint(path: str) -> str:
    endpoint = path.removeprefix("/v1")
    if endpoint not in _READERS:
        raise ValueError(f"no token count for {path}; expected one of {sorted(_READERS)}")
    return endpoint


def _answers(endpoint: str, body: Mapping[str, Any]) -> int:
    """How many answers a request asks for, each with its own output cap."""
    if endpoint not in ("/chat/completions", "/completions"):
        return 1
    n = body.get("n")
    answers = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    if endpoint == "/completions":
        best_of = body.get("best_of")  # generated (and billed) server-side, n of them returned
        if isinstance(best_of, int) and not isinstance(best_of, bool) and best_of > answers:
            answers = best_of
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            answers *= len(prompt)  # a batch: every prompt gets its own answers
    return answers


def _chat(body: Mapping[str, Any], prompt: _Prompt) -> None:
    for message in _items(body.get("messages")):
        prompt.tokens += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                _content(value, prompt)
            elif key == "tool_calls":
                for call in _items(value):
                    _function(call.get("function"), prompt)
            elif key == "function_call":
                _function(value, prompt)
            else:  # role, name, tool_call_id, refusal: every string, as the cookbook counts
                prompt.add(value)
                if key == "name":
                    prompt.tokens += TOKENS_PER_NAME
    prompt.tokens += REPLY_PRIMING
    prompt.add_json(body.get("tools"))
    prompt.add_json(body.get("functions"))
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        prompt.add_json(response_format.get("json_schema"))


def _responses(body: Mapping[str, Any], prompt: _Prompt) -> None:
    """`instructions` and message items count as chat messages do (a string `input` is one
    user message); function calls by name and arguments; a call's output as its text. Other
    items (reasoning, references, built-in tool calls) are not counted."""
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        items = [{"role": "developer", "content": instructions}, *_items(items)]
    for item in _items(items):
        kind = item.get("type", "message")
        if kind == "message":
            prompt.tokens += TOKENS_PER_MESSAGE
            prompt.add(item.get("role"))
            _content(item.get("content"), prompt)
        elif kind == "function_call":
            _function(item, prompt)
        elif kind == "function_call_output":
            _content(item.get("output"), prompt)
    prompt.tokens += REPLY_PRIMING
    prompt.add_json(body.get("tools"))
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        prompt.add_json(fmt)


def _completions(body: Mapping[str, Any], prompt: _Prompt) -> None:
    _inputs(body.get("prompt"), prompt)
    prompt.add(body.get("suffix"))


def _embeddings(body: Mapping[str, Any], prompt: _Prompt) -> None:
    _inputs(body.get("input"), prompt)


def _inputs(value: object, prompt: _Prompt) -> None:
    """A string, a list of strings, a list of token ids, or a list of token id lists."""
    if isinstance(value, str):
        prompt.add(value)
    elif isinstance(value, list):
        for entry in value:
            if isinstance(entry, str):
                prompt.add(entry)
            elif isinstance(entry, int):
                prompt.tokens += 1
            elif isinstance(entry, list):
                prompt.tokens += len(entry)


def _content(value: object, prompt: _Prompt) -> None:
    """A string, or a list of parts: text parts are counted, an image part is IMAGE_TOKENS,
    other parts (audio, files) are not counted."""
    if isinstance(value, str):
        prompt.add(value)
        return
    for part in _items(value):
        if part.get("type") in _IMAGE_PARTS:
            prompt.tokens += IMAGE_TOKENS
        else:
            prompt.add(part.get("text", part.get("refusal")))


def _function(call: object, prompt: _Prompt) -> None:
    if isinstance(call, dict):
        prompt.add(call.get("name"))
        prompt.add(call.get("arguments"))


def _items(value: object) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


_READERS: Final = {
    "/chat/completions": _chat,
    "/completions": _completions,
    "/responses": _responses,
    "/embeddings": _embeddings,
}
