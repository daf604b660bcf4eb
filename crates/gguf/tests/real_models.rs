//! The reader on the catalog's real models (fetched with `troupe pull NAME`,
//! or found in `$TROUPE_TEST_MODELS`): tensor counts, a few keys, and every
//! tensor's bytes lying inside the file without overlaps.

use troupe_gguf::{GgmlType, GgufFile};
use troupe_hub::test_model;

struct Expect {
    name: &'static str,
    tensors: usize,
    arch: &'static str,
    vocab: usize,
    blocks: u64,
    embd: u64,
    embd_type: GgmlType,
}

const MODELS: [Expect; 3] = [
    Expect {
        name: "smollm2-135m",
        tensors: 272,
        arch: "llama",
        vocab: 49152,
        blocks: 30,
        embd: 576,
        embd_type: GgmlType::Q8_0,
    },
    Expect {
        name: "qwen2.5-coder-0.5b",
        tensors: 291,
        arch: "qwen2",
        vocab: 151936,
        blocks: 24,
        embd: 896,
        embd_type: GgmlType::Q5_0,
    },
    Expect {
        name: "gemma3-270m",
        tensors: 236,
        arch: "gemma3",
        vocab: 262144,
        blocks: 18,
        embd: 640,
        embd_type: GgmlType::Q8_0,
    },
];

fn check(e: &Expect) {
    let f = GgufFile::open(test_model(e.name)).expect("the catalog's file parses");
    assert_eq!(f.version, 3, "{}", e.name);
    assert_eq!(f.tensors().len(), e.tensors, "{}", e.name);
    assert_eq!(f.str("general.architecture").ok(), Some(e.arch));
    assert_eq!(
        f.u64(&format!("{}.block_count", e.arch)).ok(),
        Some(e.blocks)
    );
    assert_eq!(
        f.u64(&format!("{}.embedding_length", e.arch)).ok(),
        Some(e.embd)
    );
    assert_eq!(
        f.str_array("tokenizer.ggml.tokens")
            .map(<[String]>::len)
            .ok(),
        Some(e.vocab)
    );
    let embd = f.tensor("token_embd.weight").expect("token embeddings");
    assert_eq!(embd.shape, [e.embd, e.vocab as u64], "{}", e.name);
    assert_eq!(embd.ty, e.embd_type, "{}", e.name);
    let mut end = 0u64;
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.size);
        end = end.max(t.offset + t.size);
    }
    assert!(f.data_offset as u64 + end <= f.bytes().len() as u64);
    assert!(f.tensor("blk.0.attn_q.weight").is_some(), "{}", e.name);
}

#[test]
fn smollm2_135m() {
    check(&MODELS[0]);
}

#[test]
fn qwen2_5_coder_0_5b() {
    check(&MODELS[1]);
}

#[test]
fn gemma3_270m() {
    check(&MODELS[2]);
}
