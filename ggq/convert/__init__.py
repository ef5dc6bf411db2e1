"""Checkpoint conversion: sources (safetensors file, HF folder, GGUF), presets, converter,
GGUF -> HF export. See DESIGN.md for the conventions every source answers in."""
from .converter import ConvertReport, PlanEntry, convert_model, default_output
from .permute import gguf_to_hf_rows, hf_to_gguf_rows
from .presets import PRESETS, plan_types
from .sources import ModelConfig, Source, open_source

__all__ = ["convert_model", "ConvertReport", "PlanEntry", "default_output", "open_source", "Source",
           "ModelConfig", "PRESETS", "plan_types", "hf_to_gguf_rows", "gguf_to_hf_rows"]
