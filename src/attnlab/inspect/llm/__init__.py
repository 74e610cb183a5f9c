"""Decoder LLMs: the one decode loop, attention recorded while decoding, steering (knockout,
PASTA), the prompt experiments (one run, the controlled design, its report), streaming
attention, Gemma 3's local/global layout, the logit lens and activation patching.

Nothing is imported here: ``from attnlab.inspect.llm.prompt_experiment import run`` loads what
that module needs and nothing else.
"""
