"""CLIP's BPE tokenizer through open_clip's implementation and vocabulary (the tokens equal
``open_clip.tokenize``)."""
from functools import lru_cache

import torch

START_OF_TEXT = 49406
END_OF_TEXT = 49407


@lru_cache(maxsize=1)
def _bpe():
    # Imported lazily: open_clip's imports are slow, and most code paths never need them.
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(texts, context_length=77, truncate=False):
    """Text(s) -> int64 [N, context_length]: start token, BPE tokens, end token, zeros. A text that does
    not fit raises ValueError quoting it, unless ``truncate`` cuts it (end token kept last)."""
    if isinstance(texts, str):
        texts = [texts]
    rows = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [START_OF_TEXT] + _bpe().encode(text) + [END_OF_TEXT]
        if len(tokens) > context_length:
            if not truncate:
                raise ValueError(f'text is {len(tokens)} tokens long, more than the context length '
                                 f'{context_length} (pass truncate=True to cut it): {text!r}')
            tokens = tokens[:context_length - 1] + [END_OF_TEXT]
        rows[row, :len(tokens)] = torch.tensor(tokens)
    return rows
