"""Adapters for the model being protected: anything that answers (query, image) with text."""

from .adapters import MLLM, CallableMLLM, HFLocalMLLM, OpenAIMLLM, image_data_url, load_image

__all__ = ["MLLM", "CallableMLLM", "HFLocalMLLM", "OpenAIMLLM", "image_data_url", "load_image"]
