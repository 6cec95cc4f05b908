//! Request load: synthetic (Poisson or bursty arrivals, log-normal lengths), a
//! replayed trace, or a list. Each `[[load]]` yields its requests lazily and in time
//! order, so a million-request run never holds them all.
//!
//! Every source draws from its own seeded generator (the scenario seed and its index),
//! so every policy of a run sees exactly the same requests.

use crate::duration::Micros;
use crate::scenario::{Arrival, LengthDist, LoadDef, LoadSource};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::{Distribution, Exp1, StandardNormal};

/// One inference request as it reaches a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub at: Micros,
    /// Index into the scenario's models.
    pub model: u32,
    /// Index into the scenario's regions: where the client is.
    pub origin: u32,
    pub prompt: u32,
    pub output: u32,
}

/// A seed for stream `stream` of a scenario: SplitMix64 of both, so that nearby
/// seeds give unrelated streams.
pub(crate) fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Picks from cumulative weights.
pub(crate) fn pick_weighted<R: Rng>(rng: &mut R, items: &[(usize, f64)]) -> usize {
    if items.len() == 1 {
        return items[0].0;
    }
    let total: f64 = items.iter().map(|x| x.1).sum();
    let mut x = rng.random::<f64>() * total;
    for &(item, w) in items {
        if x < w {
            return item;
        }
        x -= w;
    }
    items[items.len() - 1].0
}

fn length<R: Rng>(rng: &mut R, d: LengthDist) -> u32 {
    let z: f64 = StandardNormal.sample(rng);
    let v = (d.median * (d.sigma * z).exp()).round();
    v.clamp(1.0, f64::from(d.max)) as u32
}

/// The requests of one `[[load]]`, in time order.
#[derive(Debug)]
pub(crate) struct Generator {
    rng: Xoshiro256PlusPlus,
    /// Next arrival time (µs, fractional) for synthetic sources.
    t: f64,
    in_burst: bool,
    phase_end: f64,
    /// Next index for trace and list sources.
    index: usize,
}

impl Generator {
    pub(crate) fn new(seed: u64, stream: u64, def: &LoadDef) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(derive_seed(seed, stream));
        let mut g = Generator {
            t: def.start as f64,
            in_burst: false,
            phase_end: f64::INFINITY,
            index: 0,
            rng: Xoshiro256PlusPlus::seed_from_u64(0),
        };
        if let LoadSource::Synthetic {
            arrival: Arrival::Bursty,
            burst_every,
            ..
        } = def.source
        {
            let e: f64 = Exp1.sample(&mut rng);
            g.phase_end = def.start as f64 + e * burst_every as f64;
        }
        g.rng = rng;
        g
    }

    /// The next request (its `id` left 0 for the caller to set), or `None` when done.
    pub(crate) fn next(&mut self, def: &LoadDef) -> Option<Request> {
        let (at, prompt, output, origin, model) = match &def.source {
            LoadSource::Synthetic {
                rate,
                arrival,
                burst_factor,
                burst_duration,
                burst_every,
                prompt,
                output,
            } => {
                loop {
                    let r = if self.in_burst {
                        rate * burst_factor
                    } else {
                        *rate
                    };
                    let e: f64 = Exp1.sample(&mut self.rng);
                    let candidate = self.t + e / r * 1e6;
                    if *arrival == Arrival::Bursty && candidate >= self.phase_end {
                        // Memoryless: restart the draw at the phase change.
                        self.t = self.phase_end;
                        self.in_burst = !self.in_burst;
                        let mean = if self.in_burst {
                            burst_duration
                        } else {
                            burst_every
                        };
                        let e: f64 = Exp1.sample(&mut self.rng);
                        self.phase_end = self.t + e * *mean as f64;
                        continue;
                    }
                    self.t = candidate;
                    break;
                }
                let at = self.t.floor() as Micros;
                if at >= def.end {
                    return None;
                }
                let p = length(&mut self.rng, *prompt);
                let o = length(&mut self.rng, *output);
                (at, p, o, None, None)
            }
            LoadSource::Trace {
                requests,
                rate_scale,
                ..
            } => {
                let r = requests.get(self.index)?;
                self.index += 1;
                let at = def.start + (r.at as f64 / rate_scale).floor() as Micros;
                if at >= def.end {
                    return None;
                }
                (at, r.context_tokens, r.generated_tokens, None, None)
            }
            LoadSource::List(list) => {
                let &(at, p, o, origin, model) = list.get(self.index)?;
                self.index += 1;
                (at, p, o, Some(origin), model)
            }
        };
        let model = model.unwrap_or_else(|| pick_weighted(&mut self.rng, &def.models));
        let origin = origin.unwrap_or_else(|| pick_weighted(&mut self.rng, &def.origins));
        Some(Request {
            id: 0,
            at,
            model: model as u32,
            origin: origin as u32,
            prompt,
            output,
        })
    }
}

/// A uniform draw in [0, 1) for the engine's routing choices.
pub(crate) fn unit<R: Rng>(rng: &mut R) -> f64 {
    rng.random::<f64>()
}
