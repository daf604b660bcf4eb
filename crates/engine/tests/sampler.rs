//! Sampler behaviour on handcrafted logits: greedy and ties, truncation sets,
//! penalties, seeding, logprobs, validation, and a chi-square check that
//! draws follow the softmax distribution.

use troupe_engine::sampler::{logprobs, Rng, Sampler, SamplingParams};

/// Chi-square critical values at significance 0.001 (upper tail) for the
/// degrees of freedom used below; a correct sampler exceeds them with
/// probability 0.1% (and the seeds are fixed, so the tests are deterministic).
const CHI2_P001_DF7: f64 = 24.322;
const CHI2_P001_DF2: f64 = 13.816;
/// Draws per distribution check.
const DRAWS: usize = 100_000;
/// Tolerance on log-probabilities computed in f64 and stored as f32.
const LOGPROB_TOL: f32 = 1e-5;

fn sampler(params: SamplingParams) -> Sampler {
    Sampler::new(params).unwrap_or_else(|e| panic!("{e}"))
}

fn at_temperature(t: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: t,
        seed: Some(seed),
        ..SamplingParams::greedy()
    }
}

fn random_logits(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| (rng.next_f64() * 10.0 - 5.0) as f32)
        .collect()
}

/// Pearson's chi-square statistic of `counts` against probabilities `want`.
fn chi_square(counts: &[usize], want: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(want)
        .map(|(&c, &p)| {
            let e = p * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

fn histogram(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<usize> {
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..draws {
        counts[s.sample(logits, &[]) as usize] += 1;
    }
    counts
}

fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let w: Vec<f64> = logits
        .iter()
        .map(|&v| ((f64::from(v) - f64::from(max)) / t).exp())
        .collect();
    let z: f64 = w.iter().sum();
    w.iter().map(|x| x / z).collect()
}

#[test]
fn greedy_is_argmax_with_ties_to_lowest_id() {
    let mut s = sampler(SamplingParams::greedy());
    assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9], &[]), 1);
    assert_eq!(s.sample(&[1.0, 3.0, 3.0, 3.0], &[]), 1);
    assert_eq!(s.sample(&[f32::NEG_INFINITY, -7.0, -7.0], &[]), 1);
    assert_eq!(s.sample(&[f32::NAN, 0.5, f32::NAN], &[]), 1);
    assert_eq!(s.sample(&[f32::NEG_INFINITY; 4], &[]), 0);
    // non-finite logits at temperature 1: NaN is never drawn, +inf always is
    let mut t = sampler(at_temperature(1.0, 4));
    for _ in 0..20 {
        assert_eq!(t.sample(&[f32::NAN, 0.0, f32::INFINITY, 1.0], &[]), 2);
        assert_eq!(t.sample(&[f32::NAN, f32::NEG_INFINITY, 0.0], &[]), 2);
    }
    assert_eq!(t.sample(&[f32::NEG_INFINITY, f32::NAN], &[]), 0);
    assert_eq!(s.sample(&[], &[]), 0);
    // temperature 0 with the default truncation settings is greedy too
    let mut d = sampler(SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    });
    let logits = random_logits(1000, 3);
    let best =
        logits.iter().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        );
    for _ in 0..5 {
        assert_eq!(d.sample(&logits, &[]) as usize, best.0);
    }
}

#[test]
fn top_k_one_equals_greedy() {
    for seed in 0..50 {
        let logits = random_logits(500, seed);
        let mut g = sampler(SamplingParams::greedy());
        let mut k1 = sampler(SamplingParams {
            temperature: 1.5,
            top_k: 1,
            seed: Some(seed),
            ..SamplingParams::default()
        });
        assert_eq!(
            k1.sample(&logits, &[]),
            g.sample(&logits, &[]),
            "seed {seed}"
        );
    }
    // ties under top-k 1 also go to the lowest id
    let mut k1 = sampler(SamplingParams {
        top_k: 1,
        seed: Some(9),
        ..at_temperature(1.0, 9)
    });
    assert_eq!(k1.sample(&[0.0, 5.0, 5.0], &[]), 1);
}

/// Draws from `params` many times and returns the set of ids seen.
fn drawn_set(params: SamplingParams, logits: &[f32]) -> Vec<u32> {
    let mut s = sampler(params);
    let counts = histogram(&mut s, logits, 5_000);
    (0..logits.len() as u32)
        .filter(|&i| counts[i as usize] > 0)
        .collect()
}

#[test]
fn truncation_keeps_the_expected_candidates() {
    // probabilities 0.05, 0.5, 0.15, 0.3
    let logits: Vec<f32> = [0.05f32, 0.5, 0.15, 0.3].iter().map(|p| p.ln()).collect();
    let base = at_temperature(1.0, 11);
    let with = |top_k, top_p, min_p| SamplingParams {
        top_k,
        top_p,
        min_p,
        ..base
    };
    assert_eq!(drawn_set(base, &logits), [0, 1, 2, 3]);
    assert_eq!(drawn_set(with(2, 1.0, 0.0), &logits), [1, 3]);
    assert_eq!(drawn_set(with(0, 0.75, 0.0), &logits), [1, 3]);
    assert_eq!(drawn_set(with(0, 0.85, 0.0), &logits), [1, 2, 3]);
    assert_eq!(drawn_set(with(0, 0.4, 0.0), &logits), [1]);
    // min-p 0.2 of p_max 0.5: p >= 0.1 stays
    assert_eq!(drawn_set(with(0, 1.0, 0.2), &logits), [1, 2, 3]);
    assert_eq!(drawn_set(with(0, 1.0, 0.61), &logits), [1]);
    // top-p is measured on the top-k set: 0.5 / 0.8 = 0.625 >= 0.6
    assert_eq!(drawn_set(with(2, 0.6, 0.0), &logits), [1]);
    // temperature comes after truncation: a hot sampler still only sees {1, 3}
    let hot = SamplingParams {
        temperature: 5.0,
        ..with(0, 0.75, 0.0)
    };
    assert_eq!(drawn_set(hot, &logits), [1, 3]);
}

#[test]
fn penalties_change_the_right_logits() {
    let greedy_with = |repeat_penalty, presence_penalty, frequency_penalty| {
        sampler(SamplingParams {
            repeat_penalty,
            repeat_last_n: 64,
            presence_penalty,
            frequency_penalty,
            ..SamplingParams::greedy()
        })
    };
    // positive logit divided: 2.0 / 1.1 = 1.82 < 1.9
    let mut s = greedy_with(1.1, 0.0, 0.0);
    assert_eq!(s.sample(&[2.0, 1.9, 0.0], &[0]), 1);
    assert_eq!(s.sample(&[2.0, 1.9, 0.0], &[2, 2, 2]), 0);
    // negative logit multiplied: -1.0 * 1.1 = -1.1 < -1.05
    assert_eq!(s.sample(&[-1.0, -1.05], &[0]), 1);
    // presence: once per token; frequency: per occurrence
    let mut p = greedy_with(1.0, 0.5, 0.0);
    assert_eq!(p.sample(&[2.0, 1.6], &[0, 0, 0]), 1);
    let mut f = greedy_with(1.0, 0.0, 0.15);
    assert_eq!(f.sample(&[2.0, 1.6], &[0, 0]), 0); // 2.0 - 0.3 = 1.7
    assert_eq!(f.sample(&[2.0, 1.6], &[0, 0, 0]), 1); // 2.0 - 0.45 = 1.55
                                                      // negative penalties encourage repeats
    let mut n = greedy_with(1.0, -1.0, 0.0);
    assert_eq!(n.sample(&[2.0, 1.6], &[1]), 1);
    // the window is only the last repeat_last_n tokens
    let mut w = sampler(SamplingParams {
        repeat_penalty: 2.0,
        repeat_last_n: 2,
        ..SamplingParams::greedy()
    });
    assert_eq!(w.sample(&[2.0, 1.5], &[0, 1, 1]), 0);
    assert_eq!(w.sample(&[2.0, 1.5, 1.2], &[1, 2, 0]), 1);
    // repeat_last_n 0 turns penalties off
    let mut off = sampler(SamplingParams {
        repeat_penalty: 2.0,
        repeat_last_n: 0,
        ..SamplingParams::greedy()
    });
    assert_eq!(off.sample(&[2.0, 1.5], &[0, 0]), 0);
    // ids beyond the vocabulary in the history are ignored
    assert_eq!(s.sample(&[2.0, 1.9], &[7, u32::MAX]), 0);
    // logprobs see the penalised logits
    let lp = s.logprobs(0, 2).unwrap_or_else(|| panic!("no logprobs"));
    let want = logprobs(&[2.0 / 1.1, 1.9], 0, 2).unwrap_or_else(|| panic!("no logprobs"));
    s.sample(&[2.0, 1.9], &[0]);
    let got = s.logprobs(0, 2).unwrap_or_else(|| panic!("no logprobs"));
    assert!((got.chosen.logprob - want.chosen.logprob).abs() < LOGPROB_TOL);
    assert_ne!(lp.chosen.logprob, got.chosen.logprob);
}

#[test]
fn same_seed_same_tokens_different_seeds_differ() {
    let logits = random_logits(2_000, 42);
    let run = |seed: Option<u64>| {
        let mut s = sampler(SamplingParams {
            seed,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.5,
            ..SamplingParams::default()
        });
        let mut history = Vec::new();
        for _ in 0..200 {
            let t = s.sample(&logits, &history);
            history.push(t);
        }
        (history, s.seed())
    };
    let (a, seed_a) = run(Some(7));
    let (b, _) = run(Some(7));
    let (c, _) = run(Some(8));
    assert_eq!(seed_a, 7);
    assert_eq!(a, b);
    assert_ne!(a, c);
    // without a seed, each sampler draws its own
    let (d, seed_d) = run(None);
    let (e, seed_e) = run(None);
    assert_ne!(seed_d, seed_e);
    assert_ne!(d, e);
    // and a reported seed reproduces the run
    assert_eq!(run(Some(seed_d)).0, d);
}

#[test]
fn draws_follow_softmax_at_temperature_one() {
    let probs = [0.30, 0.20, 0.15, 0.12, 0.10, 0.07, 0.04, 0.02];
    // shifted logits: only differences matter
    let logits: Vec<f32> = probs.iter().map(|p: &f64| (p.ln() + 3.0) as f32).collect();
    let mut s = sampler(at_temperature(1.0, 2024));
    let counts = histogram(&mut s, &logits, DRAWS);
    let chi2 = chi_square(&counts, &probs);
    assert!(chi2 < CHI2_P001_DF7, "chi2 {chi2:.2} counts {counts:?}");
}

#[test]
fn draws_follow_softmax_at_other_temperatures_and_after_top_k() {
    let logits = [1.0f32, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0];
    for (t, seed) in [(0.5f32, 1u64), (2.0, 2)] {
        let mut s = sampler(at_temperature(t, seed));
        let counts = histogram(&mut s, &logits, DRAWS);
        let chi2 = chi_square(&counts, &softmax(&logits, f64::from(t)));
        assert!(
            chi2 < CHI2_P001_DF7,
            "T={t}: chi2 {chi2:.2} counts {counts:?}"
        );
    }
    // top-k 3 renormalises over the three best
    let mut s = sampler(SamplingParams {
        top_k: 3,
        ..at_temperature(1.0, 3)
    });
    let counts = histogram(&mut s, &logits, DRAWS);
    assert!(counts[3..].iter().all(|&c| c == 0), "{counts:?}");
    let chi2 = chi_square(&counts[..3], &softmax(&logits[..3], 1.0));
    assert!(
        chi2 < CHI2_P001_DF2,
        "top-k 3: chi2 {chi2:.2} counts {counts:?}"
    );
}

#[test]
fn logprobs_are_log_softmax_with_sorted_alternatives() {
    let logits = [1.0f32, 3.0, 3.0, -2.0, 0.5];
    let lp = logprobs(&logits, 4, 3).unwrap_or_else(|| panic!("no logprobs"));
    let want = softmax(&logits, 1.0);
    assert!((lp.chosen.logprob - want[4].ln() as f32).abs() < LOGPROB_TOL);
    let ids: Vec<u32> = lp.top.iter().map(|t| t.token).collect();
    assert_eq!(ids, [1, 2, 0]);
    for t in &lp.top {
        assert!((t.logprob - want[t.token as usize].ln() as f32).abs() < LOGPROB_TOL);
    }
    let all = logprobs(&logits, 0, 100).unwrap_or_else(|| panic!("no logprobs"));
    assert_eq!(all.top.len(), logits.len());
    let mass: f64 = all.top.iter().map(|t| f64::from(t.logprob).exp()).sum();
    assert!((mass - 1.0).abs() < 1e-5, "{mass}");
    assert!(logprobs(&logits, 5, 1).is_none());
    let masked = logprobs(&[f32::NEG_INFINITY; 3], 1, 1).unwrap_or_else(|| panic!("none"));
    assert_eq!(masked.chosen.logprob, f32::NEG_INFINITY);
    assert_eq!(logprobs(&logits, 0, 0).map(|l| l.top.len()), Some(0));

    // the sampler reports pre-temperature log-probabilities
    let mut s = sampler(at_temperature(0.3, 5));
    assert!(s.logprobs(0, 1).is_none());
    let token = s.sample(&logits, &[]);
    let from_sampler = s
        .logprobs(token, 2)
        .unwrap_or_else(|| panic!("no logprobs"));
    assert_eq!(Some(from_sampler), logprobs(&logits, token, 2));
}

#[test]
fn validation_names_the_bad_field() {
    assert!(SamplingParams::default().validate().is_ok());
    assert!(SamplingParams::greedy().validate().is_ok());
    let bad = [
        (
            "temperature",
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
        ),
        (
            "temperature",
            SamplingParams {
                temperature: -0.1,
                ..Default::default()
            },
        ),
        (
            "temperature",
            SamplingParams {
                temperature: f32::INFINITY,
                ..Default::default()
            },
        ),
        (
            "top_p",
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
        ),
        (
            "top_p",
            SamplingParams {
                top_p: -0.01,
                ..Default::default()
            },
        ),
        (
            "min_p",
            SamplingParams {
                min_p: f32::NAN,
                ..Default::default()
            },
        ),
        (
            "min_p",
            SamplingParams {
                min_p: 1.01,
                ..Default::default()
            },
        ),
        (
            "repeat_penalty",
            SamplingParams {
                repeat_penalty: 0.0,
                ..Default::default()
            },
        ),
        (
            "repeat_penalty",
            SamplingParams {
                repeat_penalty: -1.0,
                ..Default::default()
            },
        ),
        (
            "repeat_last_n",
            SamplingParams {
                repeat_last_n: -2,
                ..Default::default()
            },
        ),
        (
            "presence_penalty",
            SamplingParams {
                presence_penalty: 2.5,
                ..Default::default()
            },
        ),
        (
            "frequency_penalty",
            SamplingParams {
                frequency_penalty: f32::NAN,
                ..Default::default()
            },
        ),
    ];
    for (name, params) in bad {
        let err = params
            .validate()
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"));
        assert_eq!(err.name, name);
        assert!(err.to_string().contains(name), "{err}");
        assert!(Sampler::new(params).is_err());
    }
    let err = SamplingParams {
        top_p: 2.0,
        ..Default::default()
    }
    .validate()
    .err();
    assert_eq!(
        err.map(|e| e.to_string()).as_deref(),
        Some("invalid sampling parameter top_p = 2: expected a number in [0, 1]")
    );
}

#[test]
fn large_vocabulary_default_chain() {
    const VOCAB: usize = 262_144;
    let logits = random_logits(VOCAB, 77);
    let history: Vec<u32> = (0..128).map(|i| (i * 2_047) as u32).collect();
    for params in [
        SamplingParams {
            seed: Some(1),
            ..Default::default()
        },
        SamplingParams {
            seed: Some(1),
            top_k: 0,
            min_p: 0.0,
            ..Default::default()
        },
        SamplingParams {
            seed: Some(1),
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        },
    ] {
        let mut s = sampler(params);
        let start = std::time::Instant::now();
        let n = 20;
        for _ in 0..n {
            let t = s.sample(&logits, &history) as usize;
            assert!(t < VOCAB);
            // the draw came from the top of the distribution for the truncating chains
            if params.top_k == 40 {
                let better = logits.iter().filter(|&&v| v > logits[t]).count();
                assert!(better < 40, "token ranked {better}");
            }
        }
        eprintln!(
            "vocab {VOCAB} top_k {} top_p {} min_p {}: {:.3} ms/token",
            params.top_k,
            params.top_p,
            params.min_p,
            start.elapsed().as_secs_f64() * 1e3 / f64::from(n)
        );
    }
}
