//! Next-token choice: greedy at temperature 0, else temperature, top-k and top-p over a seeded generator of
//! the sequence's own, so a sample depends on its seed and nothing else (not on what it was batched with).

/// Sampling settings of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSettings {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
}

/// xoshiro256** seeded through splitmix64: small, fast and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
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

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Picks the next token from `logits`.
pub fn sample(logits: &[f32], settings: &SamplerSettings, rng: &mut Rng) -> u32 {
    if settings.temperature <= 0.0 || settings.top_k == 1 {
        return argmax(logits);
    }
    let (candidates, probabilities) = distribution(logits, settings);
    let kept: f32 = probabilities.iter().sum();
    let mut target = rng.next_f32() * kept;
    for (i, p) in probabilities.iter().enumerate() {
        if target < *p {
            return candidates[i].0;
        }
        target -= p;
    }
    candidates[candidates.len() - 1].0
}

/// Picks the next token among those `fits` accepts (guided decoding). The draw is the one [`sample`] makes;
/// a draw that does not fit is taken out and the rest renormalized, without sorting again. After a few
/// misses, or when the sampling candidates (top-k, top-p) hold no fitting token, the most likely fitting
/// token of the whole vocabulary is taken. `None`: no token fits.
pub fn sample_where(
    logits: &[f32],
    settings: &SamplerSettings,
    rng: &mut Rng,
    mut fits: impl FnMut(u32) -> bool,
) -> Option<u32> {
    let greedy = settings.temperature <= 0.0 || settings.top_k == 1;
    if greedy {
        let best = argmax(logits);
        if fits(best) {
            return Some(best);
        }
    } else {
        let (candidates, mut probabilities) = distribution(logits, settings);
        for _ in 0..16 {
            let total: f32 = probabilities.iter().sum();
            if total <= 0.0 || !total.is_finite() {
                break;
            }
            let mut target = rng.next_f32() * total;
            let mut pick = probabilities.iter().rposition(|p| *p > 0.0).unwrap_or(0);
            for (i, p) in probabilities.iter().enumerate() {
                if target < *p {
                    pick = i;
                    break;
                }
                target -= p;
            }
            if fits(candidates[pick].0) {
                return Some(candidates[pick].0);
            }
            probabilities[pick] = 0.0;
        }
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    order.into_iter().find(|&token| fits(token))
}

/// The candidates [`sample`] draws from, best first, and their probabilities (top-k, temperature, top-p).
fn distribution(logits: &[f32], settings: &SamplerSettings) -> (Vec<(u32, f32)>, Vec<f32>) {
    let mut candidates: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if settings.top_k > 0 && settings.top_k < candidates.len() {
        candidates.select_nth_unstable_by(settings.top_k - 1, by_logit);
        candidates.truncate(settings.top_k);
    }
    candidates.sort_unstable_by(by_logit);
    let max = candidates[0].1;
    let mut probabilities: Vec<f32> =
        candidates.iter().map(|(_, l)| ((l - max) / settings.temperature).exp()).collect();
    let total: f32 = probabilities.iter().sum();
    probabilities.iter_mut().for_each(|p| *p /= total);
    if settings.top_p > 0.0 && settings.top_p < 1.0 {
        let mut mass = 0.0;
        for (i, p) in probabilities.iter().enumerate() {
            mass += p;
            if mass >= settings.top_p {
                candidates.truncate(i + 1);
                probabilities.truncate(i + 1);
                break;
            }
        }
    }
    (candidates, probabilities)
}

fn argmax(logits: &[f32]) -> u32 {
    super::simd::argmax(logits) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_largest_and_skips_nans() {
        let mut logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 101) as f32).collect();
        let largest = logits.iter().cloned().fold(f32::MIN, f32::max);
        let first = logits.iter().position(|&l| l == largest).unwrap();
        assert_eq!(argmax(&logits), first as u32);
        // A tie later on, in the remainder after the 16-wide chunks, and NaNs: the first largest still wins.
        logits[97] = largest;
        logits[3] = f32::NAN;
        logits[98] = f32::NAN;
        assert_eq!(argmax(&logits), first as u32);
        logits[99] = largest + 1.0;
        assert_eq!(argmax(&logits), 99);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    fn settings(temperature: f32, top_k: usize, top_p: f32) -> SamplerSettings {
        SamplerSettings { temperature, top_k, top_p, seed: 7 }
    }

    #[test]
    fn zero_temperature_is_argmax_and_ties_go_to_the_lowest_id() {
        let mut rng = Rng::new(1);
        assert_eq!(sample(&[0.1, 3.0, 3.0, -1.0], &settings(0.0, 0, 1.0), &mut rng), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [5.0, 4.9, 0.0, -1.0, 4.8];
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let token = sample(&logits, &settings(1.0, 2, 1.0), &mut rng);
            assert!(token == 0 || token == 1, "{token}");
            // The top token alone holds less than 0.5 of the mass, so top_p 0.5 keeps two.
            let token = sample(&logits, &settings(1.0, 0, 0.5), &mut rng);
            assert!(token == 0 || token == 1, "{token}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_draws_and_high_temperature_spreads_them() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.1).collect();
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..64).map(|_| sample(&logits, &settings(2.0, 0, 1.0), &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(11), draw(11));
        assert_ne!(draw(11), draw(12));
        let distinct: std::collections::BTreeSet<_> = draw(11).into_iter().collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }

    #[test]
    fn guided_draws_only_take_fitting_tokens_and_keep_the_distribution_otherwise() {
        let logits = [5.0, 4.9, 0.0, -1.0, 4.8];
        let mut rng = Rng::new(3);
        // Greedy: the best fitting token.
        assert_eq!(sample_where(&logits, &settings(0.0, 0, 1.0), &mut rng, |t| t != 0), Some(1));
        assert_eq!(sample_where(&logits, &settings(0.0, 0, 1.0), &mut rng, |_| false), None);
        // Sampled: never an unfitting token; a token outside top-k is reached through the fallback.
        for _ in 0..200 {
            let token = sample_where(&logits, &settings(1.0, 0, 1.0), &mut rng, |t| t % 2 == 0).unwrap();
            assert!(token % 2 == 0, "{token}");
            assert_eq!(sample_where(&logits, &settings(1.0, 2, 1.0), &mut rng, |t| t == 3), Some(3));
        }
        // When everything fits, the draws are the unguided ones.
        let mut a = Rng::new(9);
        let mut b = Rng::new(9);
        for _ in 0..100 {
            let settings = settings(0.8, 0, 0.95);
            assert_eq!(sample_where(&logits, &settings, &mut a, |_| true), Some(sample(&logits, &settings, &mut b)));
        }
    }

    #[test]
    fn uniform_draws_stay_in_range() {
        let mut rng = Rng::new(0);
        let draws: Vec<f32> = (0..10_000).map(|_| rng.next_f32()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = draws.iter().sum::<f32>() / draws.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
