"""The transformers configs of edge-eval's synthetic architectures that the PyTorch baselines
build (`crates/runtime/src/synthetic.rs`: keep the two in step)."""

SHAPES = {
    "smollm2-135m": dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192,
        rms_norm_eps=1e-5,
    ),
    "llama-3.2-1b": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=131072,
        rms_norm_eps=1e-5,
    ),
}
