"""The prompt-ensemble text classifier, built fast and cached.

One column per prompt: encode every template filled with the prompt, L2-normalise each, average,
L2-normalise again (the reference's encode_text_with_prompt_ensemble). Speed without changing results:
CLIP's text tower is causal and pools at the end-of-text token, so nothing after that token reaches
the output; we run each forward only up to its longest text instead of the full 77-token context.

One prompt per forward (its templates are the batch, as the reference encodes one class at a time), and each
column saved to disk as soon as it is built: a build that is interrupted (a job timeout, a killed worker) keeps
what it did and resumes where it stopped, and a column never depends on which other prompts were built with it,
so a resumed build equals a cold one bit for bit. Columns are cached in memory and on disk per (model,
templates, precision, prompt).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from .config import TextConfig


def encode_token_batch(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """Text embeddings [B, E] (not normalised) of token ids [B, L], L <= context length, causal."""
    length = tokens.shape[1]
    x = model.token_embedding(tokens).to(model.positional_embedding.dtype)
    x = x + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # EOT has the highest id
    return pooled @ model.text_projection


def encode_prompts(model: CLIP, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """L2-normalised embeddings [P, E] of tokenised prompts [P, 77], in input order.

    Prompts are sorted by length and each batch is cut after its longest prompt's EOT token.
    """
    lengths = tokens.argmax(dim=-1) + 1
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(tokens.shape[0], model.text_projection.shape[1], dtype=torch.float32, device=tokens.device)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        width = int(lengths[index].max())
        out[index] = encode_token_batch(model, tokens[index, :width]).float()
    return F.normalize(out, dim=-1)


def ensemble_columns(embeddings: torch.Tensor, num_templates: int) -> torch.Tensor:
    """[P*T, E] normalised template embeddings, grouped by prompt -> [P, E] ensembled classifier columns."""
    grouped = embeddings.reshape(-1, num_templates, embeddings.shape[-1])
    mean = grouped.mean(dim=1)
    return mean / mean.norm(dim=-1, keepdim=True)


class TextClassifierCache:
    """Builds classifier columns for prompts, remembering them in memory and (optionally) on disk."""

    def __init__(self, model: CLIP, tokenizer, model_id: str, config: TextConfig, cache_dir: Path | None):
        self._model = model
        self._tokenizer = tokenizer
        self._config = config
        templates_key = hashlib.sha256("\n".join(config.templates).encode()).hexdigest()[:16]
        # Columns computed in bf16/fp16 differ from fp32 ones: the precision is part of the key.
        precision = str(model.positional_embedding.dtype).removeprefix("torch.")
        key_dir = Path("text") / model_id / f"{templates_key}-{precision}"
        self._disk_dir = cache_dir / key_dir if cache_dir and config.disk_cache else None
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    def columns(self, prompts: Sequence[str]) -> torch.Tensor:
        """Classifier matrix [len(prompts), E] (float32, on the model's device) for the prompts, in order."""
        for prompt in self.uncached(prompts):
            self.build(prompt)
        for prompt in prompts:
            self._memory.move_to_end(prompt)
        matrix = torch.stack([self._memory[p] for p in prompts])
        self._forget_least_used()
        return matrix

    def _forget_least_used(self) -> None:
        """Keep at most max_cached_prompts columns (the ones just used are the most recent: they stay)."""
        while len(self._memory) > self._config.max_cached_prompts:
            self._memory.popitem(last=False)

    def uncached(self, prompts: Sequence[str]) -> list[str]:
        """The prompts (deduplicated, in order) whose columns are neither in memory nor on disk; the ones found on
        disk are loaded into memory."""
        return [p for p in dict.fromkeys(prompts) if p not in self._memory and not self._load_from_disk(p)]

    def is_cached(self, prompt: str) -> bool:
        """True when the prompt's column is in memory or on disk (a file test: nothing is read)."""
        path = self._disk_path(prompt)
        return prompt in self._memory or (path is not None and path.is_file())

    def build(self, prompt: str) -> torch.Tensor:
        """Encode one prompt's templates in one forward, ensemble them into its column, keep it in memory and save
        it to disk at once. Call under torch.inference_mode()."""
        texts = [template.format(prompt) for template in self._config.templates]
        tokens = self._tokenizer(texts).to(self._model.positional_embedding.device)
        embeddings = encode_prompts(self._model, tokens, self._config.batch_size)
        column = ensemble_columns(embeddings, len(self._config.templates))[0]
        self._memory[prompt] = column
        self._save_to_disk(prompt, column)
        return column

    def _disk_path(self, prompt: str) -> Path | None:
        if self._disk_dir is None:
            return None
        return self._disk_dir / f"{hashlib.sha256(prompt.encode()).hexdigest()[:32]}.pt"

    def _load_from_disk(self, prompt: str) -> bool:
        path = self._disk_path(prompt)
        if path is None or not path.is_file():
            return False
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return False  # a torn or foreign file: rebuild it
        if entry.get("prompt") != prompt:
            return False
        self._memory[prompt] = entry["column"].to(self._model.positional_embedding.device)
        return True

    def _save_to_disk(self, prompt: str, column: torch.Tensor) -> None:
        path = self._disk_path(prompt)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so concurrent workers never read half a file.
        handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(handle)
        torch.save({"prompt": prompt, "column": column.detach().cpu()}, temp)
        os.replace(temp, path)
