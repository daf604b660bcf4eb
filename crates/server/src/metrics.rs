//! Prometheus metrics, written by hand in the text exposition format (a few
//! counters and histograms do not justify a metrics framework).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use troupe_engine::scheduler::SchedulerStats;

/// Latency buckets in seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket histogram of seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, secs: f64) {
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {n}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by (route, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_insert(0) += 1;
        }
    }

    pub fn render(&self, s: &SchedulerStats, in_flight: usize) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP troupe_requests_total HTTP requests by route and status.\n\
             # TYPE troupe_requests_total counter\n",
        );
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "troupe_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "troupe_prompt_tokens_total",
            "Prompt tokens of finished requests.",
            self.prompt_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "troupe_generation_tokens_total",
            "Tokens generated for finished requests.",
            self.completion_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "troupe_prefix_cache_hit_tokens_total",
            "Prompt tokens served from the prefix cache instead of computed.",
            s.prefix_hit_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "troupe_prefill_tokens_total",
            "Prompt tokens computed by the engine.",
            s.prompt_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "troupe_cancelled_requests_total",
            "Requests cancelled because the client went away.",
            s.cancelled.load(Relaxed),
        );
        counter(
            &mut out,
            "troupe_engine_steps_total",
            "Forward passes run by the engine loop.",
            s.steps.load(Relaxed),
        );
        gauge(
            &mut out,
            "troupe_queue_depth",
            "Requests waiting for admission.",
            s.waiting.load(Relaxed),
        );
        gauge(
            &mut out,
            "troupe_running_sequences",
            "Sequences being generated.",
            s.running.load(Relaxed),
        );
        gauge(
            &mut out,
            "troupe_requests_in_flight",
            "Generation requests accepted and not finished.",
            in_flight as u64,
        );
        let _ = writeln!(
            out,
            "# HELP troupe_kv_blocks KV cache blocks by state: used (held by running sequences), pinned (held only by pinned persona prefixes), cached (idle, holding a reusable prefix), free; they add up to the total.\n# TYPE troupe_kv_blocks gauge\n\
             troupe_kv_blocks{{state=\"used\"}} {}\ntroupe_kv_blocks{{state=\"pinned\"}} {}\n\
             troupe_kv_blocks{{state=\"free\"}} {}\ntroupe_kv_blocks{{state=\"cached\"}} {}",
            s.kv_blocks_used.load(Relaxed),
            s.kv_blocks_pinned.load(Relaxed),
            s.kv_blocks_free.load(Relaxed),
            s.kv_blocks_cached.load(Relaxed),
        );
        gauge(
            &mut out,
            "troupe_kv_blocks_total",
            "KV cache blocks in all.",
            s.kv_blocks_total.load(Relaxed),
        );
        gauge(
            &mut out,
            "troupe_pinned_prefixes",
            "Persona prefixes pinned in the KV cache.",
            s.pinned_prefixes.load(Relaxed),
        );
        self.ttft.render(
            &mut out,
            "troupe_time_to_first_token_seconds",
            "Time from request arrival to the first generated token.",
        );
        self.itl.render(
            &mut out,
            "troupe_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request.",
        );
        self.e2e.render(
            &mut out,
            "troupe_request_duration_seconds",
            "Time from arrival to the end of a generation request.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(0.02);
        h.observe(0.3);
        h.observe(100.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.025\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.5\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"30\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
    }
}
