"""``hf``: a Hugging Face causal LM (``AutoModelForCausalLM`` + its tokenizer) as the language model.

Two ways to get one:

- ``path:`` a local folder with model and tokenizer saved by ``save_pretrained`` (Qwen2.5 is the
  reference); loaded with ``local_files_only=True``. The tokenizer's own chat template is used.
- ``config:`` inline Qwen2 config keywords for a randomly initialised model, with a word-level
  tokenizer built in-project (:func:`build_word_tokenizer`) from ``vocabulary`` or loaded from a
  ``tokenizer:`` folder.

Visual positions never go through the tokenizer: the prompt builder marks them with a sentinel
id and the model splices projected visual embeddings there, so real tokenizers need no new tokens.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dynvlm import hookimpl
from dynvlm.interfaces import LanguageModel

DEFAULT_SYSTEM_PROMPT = "You are a helpful visual assistant."
IM_START, IM_END, END_OF_TEXT, IMAGE, UNK = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>", "<unk>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, IMAGE, UNK)
GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")  # tokenizer.json used as it is

#: Qwen-style ChatML template: an optional system turn, then ``<|im_start|>role\ncontent<|im_end|>\n`` per turn.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

#: symbols every word-level vocabulary holds: digits and punctuation (split one per token),
#: option letters, role names and the default system prompt's words
_BASE_SYMBOLS = [*"0123456789", *".,:;?!'\"()-/+=%", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "s", "system", "user", "assistant"]


def word_split(text: str) -> list[str]:
    """How the word-level tokenizer splits text (whitespace, then punctuation and digits one by one)."""
    return re.findall(r"[^\W\d_]+|\d|[^\w\s]|_", text)


_JOIN_LEFT = set(".,:;?!)%")  # attach to the previous token
_JOIN_BOTH = set("-'/")  # attach to both neighbours (top-left, option's)


def join_words(tokens: list[str]) -> str:
    """Text from word-level tokens: spaces between words, none inside numbers (``1 2`` -> ``12``),
    before closing punctuation or around ``-``, ``'`` and ``/`` -- the inverse of :func:`word_split`
    for text written that way."""
    out = ""
    prev = ""
    for tok in tokens:
        glue = (not out or (tok.isdigit() and prev.isdigit()) or tok in _JOIN_LEFT or tok in _JOIN_BOTH
                or prev in _JOIN_BOTH or prev == "(")
        out += tok if glue else " " + tok
        prev = tok
    return out


def build_word_tokenizer(words: Iterable[str], system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> Any:
    """A ``save_pretrained``-able word-level tokenizer over a closed word list, with a ChatML chat template.

    Args:
        words: the task's words; each is split like text is (:func:`word_split`) so e.g.
            ``"top-left"`` adds ``top``, ``-``, ``left``.
        system_prompt: its words are added so the default system turn has no unknown tokens.

    Returns:
        A ``PreTrainedTokenizerFast`` with special tokens ``<|endoftext|>`` (pad), ``<|im_start|>``,
        ``<|im_end|>`` (eos), ``<image>`` and ``<unk>``; ids 0-4 are the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in [*_BASE_SYMBOLS, *word_split(system_prompt), *(p for w in words for p in word_split(str(w)))]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated"), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=END_OF_TEXT,
        eos_token=IM_END,
        additional_special_tokens=[IM_START, IMAGE],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


class HFCausalLM(LanguageModel):
    """A causal LM taking input embeddings: ``[B, L, D]`` -> logits ``[B, L, V]`` (+ loss).

    Args:
        path: local folder with model + tokenizer (``save_pretrained``); exclusive with ``config``.
        config: inline ``Qwen2Config`` keywords for random init (``vocab_size`` is set from the
            tokenizer; ``initializer_range`` defaults to ``1/sqrt(hidden_size)``, which lets tiny
            models leave the answer-prior plateau).
        tokenizer: local tokenizer folder for an inline model (default: a word-level tokenizer).
        vocabulary: words for the built word-level tokenizer of an inline model (required unless
            ``tokenizer`` is given; in a dynvlm run config ``synthetic`` names the synthetic task's
            word list, which the model builder puts here).
        system_prompt: the system turn of every conversation; ``None`` or ``""`` leaves it out.
        trust_remote_code: allow code shipped in ``path`` to run (off by default).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        attn_implementation: passed to ``transformers``; ``None`` = its default.
        gradient_checkpointing: recompute layer activations in backward (long visual sequences).
    """

    def __init__(
        self,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        vocabulary: list[str] | str | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        trust_remote_code: bool = False,
        dtype: str = "float32",
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if (path is None) == (config is None):
            raise ValueError("llm 'hf': give exactly one of 'path' (a local model folder) or 'config' "
                             f"(inline Qwen2 config for random init); got path={path!r}, config={config!r}")
        torch_dtype = _dtype(dtype)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        if path is not None:
            if tokenizer is not None or vocabulary is not None:
                raise ValueError("llm 'hf': 'tokenizer' and 'vocabulary' apply to inline configs only; "
                                 "a 'path' model uses the tokenizer saved in its folder")
            folder = _folder(path, "model")
            self.tokenizer = _load_tokenizer(folder, trust_remote_code)
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=trust_remote_code, dtype=torch_dtype, **extra)
        else:
            if tokenizer is not None and vocabulary is not None:
                raise ValueError("llm 'hf': give 'tokenizer' (a folder) or 'vocabulary' (a word list), not both")
            if tokenizer is not None:
                self.tokenizer = _load_tokenizer(_folder(tokenizer, "tokenizer"), False)
            else:
                if vocabulary is None or isinstance(vocabulary, str):
                    raise ValueError(
                        "llm 'hf': an inline config needs 'vocabulary' (a list of words; 'synthetic' in a dynvlm "
                        f"run config) or 'tokenizer' (a folder); got vocabulary={vocabulary!r}")
                self.tokenizer = build_word_tokenizer(vocabulary, system_prompt or DEFAULT_SYSTEM_PROMPT)
            kwargs = dict(config)
            if "vocab_size" in kwargs and kwargs["vocab_size"] < len(self.tokenizer):
                raise ValueError(f"llm 'hf': config vocab_size={kwargs['vocab_size']} is smaller than the tokenizer's "
                                 f"{len(self.tokenizer)} tokens")
            kwargs.setdefault("vocab_size", len(self.tokenizer))
            if "hidden_size" in kwargs:
                kwargs.setdefault("initializer_range", 1.0 / math.sqrt(kwargs["hidden_size"]))
            kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
            kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
            from transformers import Qwen2Config, Qwen2ForCausalLM

            self.model = Qwen2ForCausalLM(Qwen2Config(**kwargs, **extra)).to(torch_dtype)
        if self.tokenizer.chat_template is None:
            raise ValueError("llm 'hf': the tokenizer has no chat template; save one with the tokenizer "
                             "(tokenizer.chat_template = ...) so prompts follow the model's own format")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # e.g. Llama-style tokenizers ship without one
        self.system_prompt = system_prompt or None
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self.word_level = backend is not None and type(backend.model).__name__ == "WordLevel"
        if gradient_checkpointing:
            enable_checkpointing(self.model)
        self.width = int(self.model.get_input_embeddings().embedding_dim)
        self.stop_ids = sorted({i for i in (self.tokenizer.convert_tokens_to_ids(IM_END), self.tokenizer.eos_token_id)
                                if isinstance(i, int) and i != self.tokenizer.unk_token_id})

    def embed(self, ids: Tensor) -> Tensor:
        """Token ids ``[B, L]`` -> input embeddings ``[B, L, D]``."""
        return self.model.get_input_embeddings()(ids)

    def forward(self, embeds: Tensor, attention_mask: Tensor, labels: Tensor | None = None) -> Any:
        """Embeddings ``[B, L, D]``, mask ``[B, L]``, labels ``[B, L]`` (-100 ignored) -> ``CausalLMOutputWithPast``."""
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False)

    def answer_loss(self, embeds: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        """The causal-LM loss of :meth:`forward` with the LM head run on the label positions only.

        Mean cross-entropy (fp32) over the positions whose next token is labelled (``labels != -100``),
        the same value as ``forward(...).loss``, but the logits are ``[answer tokens, V]`` instead of
        ``[B, L, V]``: memory follows the answers, not the prompt length times the vocabulary. ``labels``
        may stay on the host (the positions are found there, without a device sync).
        """
        hidden = self.model.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                          use_cache=False).last_hidden_state  # [B, L, D]
        targets = labels[:, 1:]  # position t predicts token t + 1
        rows, cols = (targets != -100).nonzero(as_tuple=True)  # on the labels' device (the host: no sync)
        picked = hidden[rows.to(hidden.device), cols.to(hidden.device)]  # [answer tokens, D]
        logits = self.model.get_output_embeddings()(picked).float()  # [answer tokens, V]
        return torch.nn.functional.cross_entropy(logits, targets[rows, cols].to(hidden.device))

    @torch.no_grad()
    def generate(self, embeds: Tensor, attention_mask: Tensor, max_new_tokens: int = 16, **kw: Any) -> Tensor:
        """Greedy generation from left-padded embeddings ``[B, L, D]`` -> new token ids ``[B, L_new]``."""
        kw.setdefault("do_sample", False)
        return self.model.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **kw,
        )


    def decode(self, ids: Tensor | list[list[int]]) -> list[str]:
        """Token ids ``[B, L]`` -> texts without special tokens. Word-level tokenizers are joined with
        :func:`join_words` (their own decoder would write ``12`` as ``1 2``)."""
        rows = ids.tolist() if isinstance(ids, Tensor) else [list(r) for r in ids]
        if not self.word_level:
            return self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        special = set(self.tokenizer.all_special_ids)
        return [join_words(self.tokenizer.convert_ids_to_tokens([i for i in r if i not in special])) for r in rows]

    @torch.no_grad()
    def continuation_logprobs(self, embeds: Tensor, attention_mask: Tensor,
                              continuations: list[list[list[int]]]) -> list[list[float]]:
        """Summed log-probability of each candidate continuation of each prompt, sharing the prompt's KV cache.

        The prompt runs once; its cache is repeated per candidate and only the candidates' tokens
        run again, with the positions they would have in the full sequence.

        Args:
            embeds: ``[B, L, D]`` left-padded prompt embeddings.
            attention_mask: ``[B, L]`` (1 = real token).
            continuations: per prompt, a list of non-empty token-id lists.

        Returns:
            per prompt, per continuation, ``sum_j log p(c_j | prompt, c_<j)``.
        """
        mask = attention_mask.long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V]: the first continuation token
        rows = [(i, c) for i, conts in enumerate(continuations) for c in conts]
        if any(not c for _, c in rows):
            raise ValueError("llm 'hf': empty continuation")
        scores = [float(first[i, c[0]]) for i, c in rows]
        longest = max(len(c) for _, c in rows)
        if longest > 1:
            device = embeds.device
            idx = torch.tensor([i for i, _ in rows], device=device)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values  # renamed in transformers 5.x
            cache.reorder_cache(idx)  # repeats each prompt's cache once per candidate
            pad = self.tokenizer.pad_token_id
            feed = torch.tensor([c[:-1] + [pad] * (longest - len(c)) for _, c in rows], device=device)
            feed_mask = torch.tensor([[1] * (len(c) - 1) + [0] * (longest - len(c)) for _, c in rows], device=device)
            feed_pos = mask.sum(-1)[idx, None] + torch.arange(longest - 1, device=device)
            key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
            out2 = self.model(inputs_embeds=self.embed(feed), attention_mask=torch.cat([mask[idx], feed_mask], 1),
                              position_ids=feed_pos, use_cache=True, **{key: cache})
            logp = torch.log_softmax(out2.logits.float(), dim=-1)  # [R, longest - 1, V]
            for r, (_, c) in enumerate(rows):
                scores[r] += float(sum(logp[r, j - 1, c[j]] for j in range(1, len(c))))
        per_prompt: list[list[float]] = [[] for _ in continuations]
        for (i, _), score in zip(rows, scores):
            per_prompt[i].append(score)
        return per_prompt

def enable_checkpointing(model: Any) -> None:
    """Turn on activation (gradient) checkpointing under either ``transformers`` name (5.x renamed it)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _load_tokenizer(folder: Path, trust_remote_code: bool) -> Any:
    """The tokenizer saved in ``folder``, as the class its ``tokenizer_config.json`` names.

    A generic fast tokenizer (``TokenizersBackend`` / ``PreTrainedTokenizerFast``, e.g. the word-level
    one of :func:`build_word_tokenizer`) saved beside a Qwen2 model would otherwise be loaded by
    ``AutoTokenizer`` as ``Qwen2Tokenizer``, which rebuilds a byte-level BPE pipeline and maps
    every word to nothing.
    """
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        raise FileNotFoundError(f"llm 'hf': no tokenizer in {str(folder)!r} (expected tokenizer.json or "
                                "tokenizer_config.json saved with save_pretrained)")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config_file = folder / "tokenizer_config.json"
    if config_file.is_file() and (folder / "tokenizer.json").is_file():
        try:
            cls = json.loads(config_file.read_text()).get("tokenizer_class")
        except json.JSONDecodeError as exc:
            raise ValueError(f"llm 'hf': cannot parse {config_file}: {exc}") from None
        if cls in GENERIC_TOKENIZERS:
            return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)


def _folder(path: str, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"llm 'hf': {what} folder {str(folder)!r} does not exist")
    return folder


def _dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"llm 'hf': dtype must be one of {', '.join(table)}, got {name!r}")
    return table[name]


@hookimpl
def register_llms(register):
    register("hf", HFCausalLM)
