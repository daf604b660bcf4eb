//! Token sampling from logits: penalties, truncation, temperature and a seeded draw.
//!
//! Works on token ids only (no text). The chain follows llama.cpp's default
//! sampler order (`common/sampling.cpp`): penalties → top-k → top-p → min-p →
//! temperature → softmax → draw, with llama.cpp's semantics:
//!
//! - repeat penalty (CTRL, Keskar et al. 2019, as llama.cpp applies it): a
//!   token seen in the last `repeat_last_n` tokens has its logit divided by
//!   `repeat_penalty` when positive, multiplied when `<= 0`; then the OpenAI
//!   presence/frequency penalties subtract `count * frequency + presence`;
//! - top-k keeps the `k` largest logits (0 = off);
//! - top-p (nucleus, Holtzman et al. 2019) keeps the smallest prefix of the
//!   sorted tokens whose softmax mass reaches `p` (1 = off);
//! - min-p keeps tokens with `p >= min_p * p_max`, i.e. logit `>= max + ln(min_p)`
//!   (0 = off);
//! - temperature `<= 0` is greedy: argmax, ties to the lowest id.
//!
//! Truncation never drops the most likely token. Ties in sorting go to the
//! lower id, so a seed fully determines the draws. The sampler keeps its
//! scratch buffers: after the first call, `sample` does not allocate.
//! The RNG is xoshiro256** (Blackman & Vigna 2018) seeded through splitmix64.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest absolute presence/frequency penalty, as in the OpenAI API.
pub const MAX_OPENAI_PENALTY: f32 = 2.0;

/// Sampling settings. Defaults follow llama.cpp's `common_params_sampling`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `<= 0` means greedy. Default 0.8.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 disables. Default 40.
    pub top_k: usize,
    /// Nucleus mass in `[0, 1]`; 1 disables. Default 0.95.
    pub top_p: f32,
    /// Minimum probability relative to the most likely token, `[0, 1]`; 0 disables. Default 0.05.
    pub min_p: f32,
    /// Repeat penalty `> 0`; 1 disables. Default 1.0.
    pub repeat_penalty: f32,
    /// How many of the last tokens the penalties look at: 0 disables them,
    /// -1 means the whole history. Default 64.
    pub repeat_last_n: i32,
    /// OpenAI presence penalty in `[-2, 2]`. Default 0.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty in `[-2, 2]`. Default 0.
    pub frequency_penalty: f32,
    /// RNG seed; `None` seeds from time and process entropy.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

/// Why a [`SamplingParams`] value was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid sampling parameter {name} = {value}: expected {expected}")]
pub struct SamplingParamsError {
    pub name: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl SamplingParams {
    /// Greedy decoding: argmax of the logits, no penalties, no truncation.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }

    /// Checks every field is finite and in range (see the field docs).
    pub fn validate(&self) -> Result<(), SamplingParamsError> {
        fn check(
            name: &'static str,
            value: f32,
            ok: bool,
            expected: &'static str,
        ) -> Result<(), SamplingParamsError> {
            if value.is_finite() && ok {
                Ok(())
            } else {
                Err(SamplingParamsError {
                    name,
                    value: value.to_string(),
                    expected,
                })
            }
        }
        let t = self.temperature;
        check("temperature", t, t >= 0.0, "a finite number >= 0")?;
        let p = self.top_p;
        check("top_p", p, (0.0..=1.0).contains(&p), "a number in [0, 1]")?;
        let m = self.min_p;
        check("min_p", m, (0.0..=1.0).contains(&m), "a number in [0, 1]")?;
        let r = self.repeat_penalty;
        check("repeat_penalty", r, r > 0.0, "a finite number > 0")?;
        let range = -MAX_OPENAI_PENALTY..=MAX_OPENAI_PENALTY;
        let pp = self.presence_penalty;
        check(
            "presence_penalty",
            pp,
            range.contains(&pp),
            "a number in [-2, 2]",
        )?;
        let fp = self.frequency_penalty;
        check(
            "frequency_penalty",
            fp,
            range.contains(&fp),
            "a number in [-2, 2]",
        )?;
        if self.repeat_last_n < -1 {
            return Err(SamplingParamsError {
                name: "repeat_last_n",
                value: self.repeat_last_n.to_string(),
                expected: "-1 (whole history), 0 (off) or a positive count",
            });
        }
        Ok(())
    }

    /// Whether the penalties can change any logit.
    fn penalties_active(&self) -> bool {
        self.repeat_last_n != 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// xoshiro256**: a small, fast, seedable PRNG (not cryptographic).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// Expands `seed` into the 256-bit state with splitmix64 (never all zero).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seed from the clock and the process's randomly keyed hasher.
fn entropy_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.write_usize(&h as *const _ as usize);
    h.finish()
}

/// One token's log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
}

/// Log-probabilities for OpenAI `logprobs`/`top_logprobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    /// The chosen token.
    pub chosen: TokenLogprob,
    /// The `top_n` most likely tokens, most likely first (ties: lower id first).
    pub top: Vec<TokenLogprob>,
}

/// A token id with its current logit (or weight, after temperature).
/// Ordered by rank: higher logit first, then lower id (a total order, so
/// results never depend on the sort or heap algorithm).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    logit: f32,
    id: u32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .logit
            .total_cmp(&self.logit)
            .then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// NaN (a broken logit) becomes `-inf` (never chosen) and `+inf` becomes
/// `f32::MAX`, so that `logit - max` stays finite.
fn sanitize(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v.min(f32::MAX)
    }
}

/// Index of the largest value, the lowest index among equals (0 when empty).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// `logits` → log-softmax value of `token` and the `top_n` best tokens.
/// NaN logits count as `-inf`, `+inf` as `f32::MAX`. `None` when `token` is out of range.
pub fn logprobs(logits: &[f32], token: u32, top_n: usize) -> Option<Logprobs> {
    let chosen_logit = sanitize(*logits.get(token as usize)?);
    let max = logits
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(sanitize(v)));
    let sum: f64 = logits
        .iter()
        .map(|&v| f64::from(sanitize(v) - max).exp())
        .sum();
    // All masked: every log-probability is -inf.
    let log_z = if max == f32::NEG_INFINITY {
        f64::INFINITY
    } else {
        f64::from(max) + sum.ln()
    };
    let lp = |v: f32| (f64::from(v) - log_z) as f32;
    let mut top: Vec<Candidate> = Vec::with_capacity(top_n + 1);
    if top_n > 0 {
        for (i, &v) in logits.iter().enumerate() {
            let c = Candidate {
                logit: sanitize(v),
                id: i as u32,
            };
            if top.len() == top_n && c >= top[top_n - 1] {
                continue;
            }
            let pos = top.partition_point(|t| *t < c);
            top.insert(pos, c);
            top.truncate(top_n);
        }
    }
    Some(Logprobs {
        chosen: TokenLogprob {
            token,
            logprob: lp(chosen_logit),
        },
        top: top
            .iter()
            .map(|c| TokenLogprob {
                token: c.id,
                logprob: lp(c.logit),
            })
            .collect(),
    })
}

/// Picks the next token from logits, holding its RNG and scratch buffers.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: Rng,
    /// (vocab,) logits after penalties, before temperature, of the last call.
    penalized: Vec<f32>,
    /// (≤ vocab,) surviving candidates of the last call.
    candidates: Vec<Candidate>,
    /// (≤ repeat window,) sorted copy of the penalty window.
    window: Vec<u32>,
}

impl Sampler {
    /// A sampler for `params` (validated), seeded from `params.seed` or entropy.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingParamsError> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(entropy_seed);
        Ok(Self {
            params,
            seed,
            rng: Rng::new(seed),
            penalized: Vec::new(),
            candidates: Vec::new(),
            window: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The seed in use (drawn from entropy when the params had none), to
    /// report or reproduce a run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Chooses the next token from `logits` (vocab,) given the `history` of
    /// token ids so far (prompt and generated), which the penalties read.
    /// Empty `logits` give 0; history ids outside the vocabulary are ignored.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.penalized.clear();
        self.penalized.extend(logits.iter().map(|&v| sanitize(v)));
        if self.params.penalties_active() {
            self.apply_penalties(history);
        }
        if self.params.temperature <= 0.0 {
            return argmax(&self.penalized) as u32;
        }
        let max = self
            .penalized
            .iter()
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        if max == f32::NEG_INFINITY {
            // Everything is masked (or empty): the lowest id, as argmax gives.
            return 0;
        }
        let mass = self.collect_candidates(max);
        if self.params.top_p < 1.0 {
            cut_at_mass(
                &mut self.candidates,
                max,
                f64::from(self.params.top_p) * mass,
            );
        }
        self.draw(max)
    }

    /// Log-probabilities (log-softmax of the penalised logits, before
    /// temperature and truncation) from the last [`sample`](Self::sample)
    /// call, for `token` and the `top_n` most likely tokens. `None` before
    /// any call or when `token` is out of range.
    pub fn logprobs(&self, token: u32, top_n: usize) -> Option<Logprobs> {
        logprobs(&self.penalized, token, top_n)
    }

    /// Repeat, presence and frequency penalties over the last
    /// `repeat_last_n` tokens of `history`, on `self.penalized`.
    fn apply_penalties(&mut self, history: &[u32]) {
        let p = &self.params;
        let n = match usize::try_from(p.repeat_last_n) {
            Ok(n) => n.min(history.len()),
            Err(_) => history.len(), // -1: whole history
        };
        self.window.clear();
        self.window.extend_from_slice(&history[history.len() - n..]);
        self.window.sort_unstable();
        let mut i = 0;
        while i < self.window.len() {
            let id = self.window[i];
            let run = self.window[i..].iter().take_while(|&&t| t == id).count();
            i += run;
            let Some(logit) = self.penalized.get_mut(id as usize) else {
                continue;
            };
            if *logit <= 0.0 {
                *logit *= p.repeat_penalty;
            } else {
                *logit /= p.repeat_penalty;
            }
            *logit -= run as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// Fills `self.candidates` with the top-k set filtered by min-p, and
    /// returns the softmax mass `sum exp(logit - max)` of the top-k set (what
    /// top-p measures against; 0 when top-p is off).
    ///
    /// Top-p and min-p each keep a prefix of the ranked tokens, and min-p's
    /// threshold `max + ln(min_p)` depends only on the maximum (which top-p
    /// always keeps), so filtering by min-p first and cutting at the top-p mass
    /// afterwards keeps the same set as llama.cpp's top-p → min-p order.
    fn collect_candidates(&mut self, max: f32) -> f64 {
        let p = self.params;
        let need_mass = p.top_p < 1.0;
        let threshold = if p.min_p > 0.0 {
            max + p.min_p.ln()
        } else {
            f32::NEG_INFINITY
        };
        let keep = |logit: f32| logit > f32::NEG_INFINITY && logit >= threshold;
        let weight = |logit: f32| f64::from((logit - max).exp());
        self.candidates.clear();
        let n = self.penalized.len();
        if p.top_k > 0 && p.top_k < n {
            // One pass with a k-sized heap whose root is the worst kept token;
            // reuses the candidates buffer, so nothing is allocated.
            let mut heap = BinaryHeap::from(std::mem::take(&mut self.candidates));
            for (i, &logit) in self.penalized.iter().enumerate() {
                let c = Candidate {
                    logit,
                    id: i as u32,
                };
                if heap.len() < p.top_k {
                    heap.push(c);
                } else if let Some(mut worst) = heap.peek_mut() {
                    if c < *worst {
                        *worst = c;
                    }
                }
            }
            self.candidates = heap.into_vec();
            let mass = if need_mass {
                self.candidates.iter().map(|c| weight(c.logit)).sum()
            } else {
                0.0
            };
            self.candidates.retain(|c| keep(c.logit));
            mass
        } else {
            let mut mass = 0.0f64;
            for (i, &logit) in self.penalized.iter().enumerate() {
                if need_mass {
                    mass += weight(logit);
                }
                if keep(logit) {
                    self.candidates.push(Candidate {
                        logit,
                        id: i as u32,
                    });
                }
            }
            mass
        }
    }

    /// Softmax at the temperature over the candidates, then one draw.
    fn draw(&mut self, max: f32) -> u32 {
        let inv_t = 1.0 / self.params.temperature;
        let mut total = 0.0f64;
        for c in self.candidates.iter_mut() {
            c.logit = ((c.logit - max) * inv_t).exp(); // now a weight in (0, 1]
            total += f64::from(c.logit);
        }
        let target = self.rng.next_f64() * total;
        let mut acc = 0.0f64;
        for c in &self.candidates {
            acc += f64::from(c.logit);
            if target < acc {
                return c.id;
            }
        }
        // Rounding left `target` at the very end: the last token with weight.
        self.candidates
            .iter()
            .rev()
            .find(|c| c.logit > 0.0)
            .map_or(0, |c| c.id)
    }
}

/// Keeps the shortest prefix of the ranked candidates whose weight
/// `exp(logit - max)` reaches `target`, or all of them; the kept tokens end up
/// in any order (the draw does not need them sorted).
///
/// Small sets are sorted. Large ones (flat distributions over a big
/// vocabulary with top-k off) are bucketed by logit in one pass: buckets above
/// the one where the running mass crosses `target` are kept whole, and only
/// that bucket is sorted to find the exact cut, so the cost stays O(n).
fn cut_at_mass(cands: &mut Vec<Candidate>, max: f32, target: f64) {
    /// Below this many candidates a plain sort is cheaper than bucketing.
    const SORT_ALL_BELOW: usize = 4096;
    /// Logit buckets for large sets (a 4 KiB array of masses on the stack).
    const BUCKETS: usize = 512;
    /// Logits more than this below the maximum weigh < 1e-17 and share the last bucket.
    const SPAN_LIMIT: f32 = 40.0;
    let weight = |logit: f32| f64::from((logit - max).exp());

    let walk = |cands: &mut Vec<Candidate>, from: usize, to: usize, mut acc: f64| {
        cands[from..to].sort_unstable();
        for i in from..to {
            acc += weight(cands[i].logit);
            if acc >= target {
                cands.truncate(i + 1);
                return;
            }
        }
        cands.truncate(to); // rounding kept the mass just short: keep the slice
    };

    let lowest = cands.iter().fold(max, |m, c| m.min(c.logit));
    let span = (max - lowest).min(SPAN_LIMIT);
    if cands.len() < SORT_ALL_BELOW || span <= 0.0 {
        let len = cands.len();
        walk(cands, 0, len, 0.0);
        return;
    }
    let scale = BUCKETS as f32 / span;
    // 0 is the top bucket; monotone in the logit, so buckets never interleave.
    let bucket = |logit: f32| (((max - logit) * scale) as usize).min(BUCKETS - 1);
    let mut masses = [0.0f64; BUCKETS];
    for c in cands.iter() {
        masses[bucket(c.logit)] += weight(c.logit);
    }
    let mut above = 0.0f64;
    let mut crossing = None;
    for (b, &m) in masses.iter().enumerate() {
        if above + m >= target {
            crossing = Some(b);
            break;
        }
        above += m;
    }
    let Some(crossing) = crossing else {
        return; // rounding: the whole set is needed
    };
    // Move the buckets above `crossing` to the front, then `crossing` itself.
    let mut front = 0;
    for i in 0..cands.len() {
        if bucket(cands[i].logit) < crossing {
            cands.swap(front, i);
            front += 1;
        }
    }
    let mut end = front;
    for i in front..cands.len() {
        if bucket(cands[i].logit) == crossing {
            cands.swap(end, i);
            end += 1;
        }
    }
    walk(cands, front, end, above);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ln_probs(p: &[f32]) -> Vec<f32> {
        p.iter().map(|x| x.ln()).collect()
    }

    fn kept(params: SamplingParams, logits: &[f32]) -> Vec<u32> {
        let mut s = Sampler::new(SamplingParams {
            seed: Some(1),
            ..params
        })
        .unwrap_or_else(|e| panic!("{e}"));
        s.sample(logits, &[]);
        let mut ids: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    }

    fn only(top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k,
            top_p,
            min_p,
            ..SamplingParams::greedy()
        }
    }

    #[test]
    fn candidate_sets() {
        // probabilities 0.05, 0.5, 0.15, 0.3 (ids shuffled against order)
        let logits = ln_probs(&[0.05, 0.5, 0.15, 0.3]);
        assert_eq!(kept(only(0, 1.0, 0.0), &logits), [0, 1, 2, 3]);
        assert_eq!(kept(only(2, 1.0, 0.0), &logits), [1, 3]);
        assert_eq!(kept(only(0, 0.75, 0.0), &logits), [1, 3]);
        assert_eq!(kept(only(0, 0.85, 0.0), &logits), [1, 2, 3]);
        assert_eq!(kept(only(0, 0.4, 0.0), &logits), [1]);
        // min_p 0.2: p >= 0.1 survives
        assert_eq!(kept(only(0, 1.0, 0.2), &logits), [1, 2, 3]);
        assert_eq!(kept(only(0, 1.0, 0.7), &logits), [1]);
        // both prefixes: the shorter wins
        assert_eq!(kept(only(0, 0.75, 0.2), &logits), [1, 3]);
        assert_eq!(kept(only(0, 0.99, 0.5), &logits), [1, 3]);
        // top-p mass is measured after top-k: of {0.5, 0.3}, 0.5/0.8 = 0.625
        assert_eq!(kept(only(2, 0.6, 0.0), &logits), [1]);
        assert_eq!(kept(only(2, 0.7, 0.0), &logits), [1, 3]);
    }

    #[test]
    fn top_p_on_equal_logits_keeps_the_lowest_ids() {
        let logits = vec![0.0f32; 5000];
        let ids = kept(only(0, 0.5, 0.0), &logits);
        assert_eq!(ids.len(), 2500);
        assert_eq!(ids.last(), Some(&2499));
    }

    /// Top-p by sorting everything and summing in rank order.
    fn reference_top_p(logits: &[f32], top_p: f32) -> Vec<u32> {
        let mut ranked: Vec<Candidate> = logits
            .iter()
            .enumerate()
            .map(|(i, &logit)| Candidate {
                logit,
                id: i as u32,
            })
            .collect();
        ranked.sort_unstable();
        let max = ranked[0].logit;
        let z: f64 = ranked
            .iter()
            .map(|c| f64::from((c.logit - max).exp()))
            .sum();
        let mut acc = 0.0;
        let mut ids = Vec::new();
        for c in ranked {
            acc += f64::from((c.logit - max).exp());
            ids.push(c.id);
            if acc >= f64::from(top_p) * z {
                break;
            }
        }
        ids.sort_unstable();
        ids
    }

    #[test]
    fn bucketed_top_p_matches_a_full_sort() {
        for (n, spread, seed) in [(5_000, 12.0, 1), (50_000, 40.0, 2), (262_144, 8.0, 3)] {
            let mut rng = Rng::new(seed);
            let logits: Vec<f32> = (0..n)
                .map(|_| ((rng.next_f64() - 0.5) * spread) as f32)
                .collect();
            for top_p in [0.05, 0.5, 0.9, 0.99] {
                let got = kept(only(0, top_p, 0.0), &logits);
                assert_eq!(got, reference_top_p(&logits, top_p), "n {n} top_p {top_p}");
            }
        }
    }

    #[test]
    fn penalties_touch_only_window_tokens() {
        let params = SamplingParams {
            repeat_penalty: 2.0,
            repeat_last_n: 4,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params).unwrap_or_else(|e| panic!("{e}"));
        let logits = [4.0, -2.0, 1.0, 3.0, 0.0];
        // token 3 is outside the window of the last 4; 1 twice, 0 once, 9 is out of vocab
        s.sample(&logits, &[3, 1, 0, 1, 9]);
        let want = [
            4.0 / 2.0 - (0.25 + 0.5),
            -2.0 * 2.0 - (2.0 * 0.25 + 0.5),
            1.0,
            3.0,
            0.0,
        ];
        assert_eq!(s.penalized, want);
        // -1: the whole history
        let mut s = Sampler::new(SamplingParams {
            repeat_last_n: -1,
            ..params
        })
        .unwrap_or_else(|e| panic!("{e}"));
        s.sample(&logits, &[3, 1, 0, 1]);
        assert_eq!(s.penalized[3], 3.0 / 2.0 - 0.75);
    }

    #[test]
    fn rng_reference_values() {
        // xoshiro256** reference: state [1, 2, 3, 4] gives 11520, 0, 1509978240.
        let mut rng = Rng { s: [1, 2, 3, 4] };
        assert_eq!(
            [rng.next_u64(), rng.next_u64(), rng.next_u64()],
            [11520, 0, 1_509_978_240]
        );
        // splitmix64 from seed 0 starts with 0xe220a8397b1dcdaf.
        assert_eq!(Rng::new(0).s[0], 0xE220_A839_7B1D_CDAF);
    }
}
