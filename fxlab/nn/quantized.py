"""Quantized Linear modules (int8 dynamic / weight-only / static, bf16, fp16)."""

from __future__ import annotations

__all__: list[str] = []
