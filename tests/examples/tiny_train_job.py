"""The tiny synthetic examples/train.py job the example tests share (seconds on one CPU core)."""

import json
from pathlib import Path

TINY_DATA = '{"num_sequences": 96, "seq_len": 8, "num_noise_modalities": 0}'
TINY_MODEL = json.dumps({"d_model": 16, "num_blocks": 1, "num_moe_blocks": 1, "num_encoder_layers": 1, "ffn_dim": 32,
                         "expert_hidden_dim": 32, "num_attention_heads": 2, "num_feedforward_experts": 2,
                         "num_synergy_experts": 1, "router_hidden_dim": 16, "router_gru_dim": 16,
                         "router_attention_dim": 8, "dropout": 0.0})


def tiny_arguments(output_dir: Path, sidecar: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(output_dir), "--rus_sidecar", str(sidecar), "--dataset_options", TINY_DATA,
            "--model_options", TINY_MODEL, "--batch_size", "16", "--num_epochs", "2", "--rus_estimator", "quantized_exact",
            "--report_to", "none", "--cpu", *extra]
