//! One file per model architecture (llama, qwen2, gemma3), each built from the shared nn blocks.
