//! Run-time CPU feature detection, decided once per process.

use std::sync::OnceLock;

/// The instruction set a kernel is written for, best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, the reference every fast path is tested against.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL/DQ (no VNNI).
    Avx512,
    /// AVX-512 F/BW/VL/DQ plus AVX512-VNNI.
    Avx512Vnni,
}

impl Isa {
    /// Whether this CPU can run code written for `self`.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = || {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            };
            let avx512 = || {
                avx2()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
            };
            match self {
                Isa::Scalar => true,
                Isa::Avx2 => avx2(),
                Isa::Avx512 => avx512(),
                Isa::Avx512Vnni => avx512() && std::arch::is_x86_feature_detected!("avx512vnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Scalar
        }
    }

    /// Every ISA this CPU supports, for parity tests.
    pub fn all_supported() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// The best ISA of this CPU, capped by `TROUPE_ISA=scalar|avx2|avx512` (for
/// testing the slower paths end to end).
pub fn best() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(|| {
        let cap = match std::env::var("TROUPE_ISA").ok().as_deref() {
            Some("scalar") => Isa::Scalar,
            Some("avx2") => Isa::Avx2,
            Some("avx512") => Isa::Avx512,
            _ => Isa::Avx512Vnni,
        };
        [Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2, Isa::Scalar]
            .into_iter()
            .find(|i| *i <= cap && i.supported())
            .unwrap_or(Isa::Scalar)
    })
}

/// Asks for every cache line of `bytes` to be brought into L1 (a hint; does
/// nothing where unsupported). Matmuls call it a few rows ahead, since the
/// hardware prefetcher alone leaves them waiting at the start of each row.
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: SSE is baseline on x86_64; the pointer is in bounds and a
        // prefetch has no side effects.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
