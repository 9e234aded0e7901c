//! PyTorch's default initialisation of Conv2d and ConvTranspose2d, for training
//! from scratch: every weight and bias uniform in ±1/sqrt(fan_in).

use rand::{Rng, SeedableRng};

use super::params::ParamTable;

/// A flat parameter buffer for `table`, drawn with `seed`.
pub fn default_init(table: &ParamTable, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut flat = vec![0.0; table.len];
    for layer in table.layers() {
        let bound = layer.init_bound() as f32;
        for spec in [&layer.weight, &layer.bias] {
            for v in &mut flat[spec.off..spec.off + spec.len()] {
                *v = rng.gen_range(-bound..bound);
            }
        }
    }
    flat
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UNetConfig;

    #[test]
    fn paper_model_has_32_2m_parameters_and_bounded_init() {
        let table = ParamTable::new(&UNetConfig::paper());
        assert_eq!(table.specs().len(), 2 * (13 + 10 + 3));
        assert!((32_100_000..32_300_000).contains(&table.len), "{} parameters", table.len);
        let flat = default_init(&table, 1);
        let first = &table.encoder[0].weight;
        let bound = 1.0 / (27f32).sqrt();
        let w = &flat[first.off..first.off + first.len()];
        assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > 0.9 * bound));
    }
}
