//! Which frames are sampled.

/// Decides which frames are sampled: one per `interval` of stream time, on a grid anchored at
/// the first sample (so that frames at 0, 0.5 s, 1 s... are taken, not 0, 0.52, 1.04...).
#[derive(Debug, Default)]
pub(super) struct Sampler {
    anchor: Option<u64>,
    untimed: u64,
}

impl Sampler {
    pub(super) fn reset(&mut self) {
        *self = Sampler::default();
    }

    /// Whether the frame at stream time `t` is sampled. Frames without a time are sampled
    /// every `untimed_every` frames.
    pub(super) fn due(&mut self, t: Option<u64>, interval: u64, untimed_every: u64) -> bool {
        if interval == 0 {
            return true;
        }
        let Some(t) = t else {
            self.untimed += 1;
            if self.untimed >= untimed_every.max(1) || self.anchor.is_none() {
                self.untimed = 0;
                self.anchor = Some(0);
                return true;
            }
            return false;
        };
        match self.anchor {
            None => {
                self.anchor = Some(t);
                true
            }
            Some(a) => {
                let d = t.abs_diff(a);
                if d < interval {
                    return false;
                }
                let step = d - d % interval;
                self.anchor = Some(if t >= a { a + step } else { a - step });
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_follow_a_grid_in_stream_time() {
        let ms = 1_000_000u64;
        let mut s = Sampler::default();
        let taken: Vec<u64> = (0..60u64)
            .map(|i| i * 40 * ms)
            .filter(|t| s.due(Some(*t), 500 * ms, 1))
            .collect();
        assert_eq!(taken, [0, 520, 1000, 1520, 2000].map(|x| x * ms));
        // Going backwards (reverse playback) samples on the same grid.
        assert!(s.due(Some(1400 * ms), 500 * ms, 1));
        assert!(!s.due(Some(1100 * ms), 500 * ms, 1));
        assert!(s.due(Some(900 * ms), 500 * ms, 1));
        // Every frame at interval 0; untimed frames by count.
        assert!(s.due(Some(900 * ms), 0, 1));
        let mut u = Sampler::default();
        let hits = (0..10).filter(|_| u.due(None, 500 * ms, 4)).count();
        assert_eq!(hits, 3);
    }
}
