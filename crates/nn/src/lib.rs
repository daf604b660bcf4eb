//! Shared transformer building blocks. Every architecture in `troupe-models`
//! is written only in terms of these, so a kernel or cache improvement (or,
//! later, LoRA inside [`Linear`]) reaches all models at once.

mod attention;
mod batch;
mod kv;
mod linear;
mod tensor;

pub use attention::{attention, attention_scratch_len, store_kv, AttentionParams};
pub use batch::{Batch, BatchError, SeqSlice};
pub use kv::{KvCache, KvLayout};
pub use linear::{Embedding, Linear, QuantizedInput, RmsNorm};
pub use tensor::{LoadError, WeightSource};
pub use troupe_kernels::ops::RopeStyle;
pub use troupe_kernels::pool::ThreadPool;
