//! Choosing the next token from logits: greedy, or sampling after the usual
//! filters, in llama.cpp's order (repetition penalty → top-k → top-p → min-p →
//! temperature → draw). A seed makes sampling reproducible.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Sampling settings; `temperature == 0` means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0 = off).
    pub top_p: f32,
    /// Drop tokens below min_p × the best token's probability (0 = off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of tokens already seen
    /// by this (1.0 = off), over the last `repeat_last_n` tokens.
    pub repetition_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// Invalid sampling settings (the serving layer maps this to INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid sampling parameter {name} = {value}: {rule}")]
pub struct InvalidParam {
    pub name: &'static str,
    pub value: String,
    pub rule: &'static str,
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), InvalidParam> {
        let bad = |name, value: f32, rule| InvalidParam {
            name,
            value: value.to_string(),
            rule,
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(bad("temperature", self.temperature, "must be >= 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", self.top_p, "must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad("min_p", self.min_p, "must be in [0, 1]"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(bad(
                "repetition_penalty",
                self.repetition_penalty,
                "must be > 0",
            ));
        }
        Ok(())
    }
}

/// A sampler with its own random stream.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler, InvalidParam> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token given `logits` (vocab,) and the tokens so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        // The penalty needs a modified copy; without it the logits are used
        // as they are (greedy decoding allocates nothing here).
        let penalized;
        let logits = if p.repetition_penalty != 1.0 {
            let mut l = logits.to_vec();
            let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in recent {
                if seen.insert(t)
                    && let Some(v) = l.get_mut(t as usize)
                {
                    // CTRL's penalty (Keskar et al., 2019), as llama.cpp applies it.
                    *v = if *v > 0.0 {
                        *v / p.repetition_penalty
                    } else {
                        *v * p.repetition_penalty
                    };
                }
            }
            penalized = l;
            &penalized[..]
        } else {
            logits
        };
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        // Sort once by logit, descending (ties by id, so results are stable).
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k.max(1));
        }
        let probs = softmax(&cand, 1.0);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&q| {
                    acc += q;
                    acc >= f64::from(p.top_p)
                })
                .map_or(cand.len(), |i| i + 1);
            cand.truncate(keep);
        }
        if p.min_p > 0.0 {
            let probs = softmax(&cand, 1.0);
            let floor = probs[0] * f64::from(p.min_p);
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            cand.truncate(keep);
        }
        let probs = softmax(&cand, p.temperature);
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        for (c, &q) in cand.iter().zip(&probs) {
            acc += q;
            if r < acc {
                return c.0;
            }
        }
        cand.last().expect("at least one candidate").0
    }
}

/// Greedy decoding's pick; the CUDA engine's on-device argmax is checked
/// against the same function.
pub use kernels::ops::argmax;

/// Probabilities of sorted candidates at a temperature, in f64.
fn softmax(cand: &[(u32, f32)], temperature: f32) -> Vec<f64> {
    let t = f64::from(temperature);
    let max = f64::from(cand[0].1);
    let e: Vec<f64> = cand
        .iter()
        .map(|c| ((f64::from(c.1) - max) / t).exp())
        .collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_picks_the_argmax_and_the_penalty_can_move_it() {
        let logits = [1.0, 3.0, 2.9, -1.0];
        let mut s = Sampler::new(params(0.0)).expect("valid");
        assert_eq!(s.sample(&logits, &[]), 1);
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 1.5,
            ..params(0.0)
        })
        .expect("valid");
        // 3.0 / 1.5 = 2.0 < 2.9: the repeated token loses.
        assert_eq!(s.sample(&logits, &[1]), 2);
    }

    #[test]
    fn filters_restrict_the_draw_and_the_seed_reproduces_it() {
        let logits: Vec<f32> = (0..50).map(|i| -(i as f32) * 0.1).collect();
        for (p, allowed) in [
            (
                SamplingParams {
                    top_k: 3,
                    ..params(1.0)
                },
                3,
            ),
            (
                SamplingParams {
                    min_p: 0.8,
                    ..params(1.0)
                },
                3, // e^-0.1 = 0.905, e^-0.2 = 0.819, e^-0.3 = 0.741 < 0.8
            ),
        ] {
            let mut s = Sampler::new(p.clone()).expect("valid");
            let draws: Vec<u32> = (0..400).map(|_| s.sample(&logits, &[])).collect();
            assert!(
                draws.iter().all(|&t| (t as usize) < allowed),
                "{p:?}: {draws:?}"
            );
            assert!(
                (0..allowed as u32).all(|t| draws.contains(&t)),
                "{p:?} never drew some token"
            );
            let mut again = Sampler::new(p).expect("valid");
            let redo: Vec<u32> = (0..400).map(|_| again.sample(&logits, &[])).collect();
            assert_eq!(draws, redo, "same seed, same draws");
        }
        // top_p: token 0 alone holds 90% here.
        let logits = [5.0, 2.8, 0.0];
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.5,
            ..params(1.0)
        })
        .expect("valid");
        assert!((0..200).all(|_| s.sample(&logits, &[]) == 0));
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = [1.0, 0.0];
        let count = |t: f32| {
            let mut s = Sampler::new(SamplingParams {
                seed: 7,
                ..params(t)
            })
            .expect("valid");
            (0..4000).filter(|_| s.sample(&logits, &[]) == 0).count()
        };
        // P(token 0) = 1/(1+e^(-1/T)): T=0.25 → 0.982, T=1 → 0.731, T=4 → 0.562.
        let (cold, warm, hot) = (count(0.25), count(1.0), count(4.0));
        assert!(
            cold > 3800 && (2750..3100).contains(&warm) && (2100..2400).contains(&hot),
            "{cold} {warm} {hot}"
        );
    }

    #[test]
    fn invalid_settings_are_refused_with_the_rule() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                min_p: 1.5,
                ..SamplingParams::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..SamplingParams::default()
            },
        ] {
            let e = Sampler::new(p).expect_err("invalid");
            assert!(e.to_string().contains("must be"), "{e}");
        }
    }
}
