//! The `demo` command. For now: a width-¼ model with random weights, one forward
//! and backward pass on a random 256x256 batch, timed. (The end-to-end demo —
//! synthetic data, training, prediction, scoring — replaces it.)

use std::time::Instant;

use rand::{Rng, SeedableRng};

use crate::backend::Backend;
use crate::error::Result;
use crate::model::{init::default_init, ParamTable, UNet16, UNetConfig};

/// Runs the demo on `be`, printing what it did.
pub fn run<B: Backend>(be: &B) -> Result<()> {
    let cfg = UNetConfig::scaled(0.25)?;
    let table = ParamTable::new(&cfg);
    let model = UNet16::new(be, cfg, &default_init(&table, 0))?;
    let (n, h, w) = (1, 256, 256);
    let ws = model.workspace(be, n, h, w)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let input: Vec<f32> = (0..n * h * w * 3).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let target: Vec<f32> = (0..n * h * w * cfg.classes).map(|i| ((i / 997) % 3 == 0) as u8 as f32).collect();
    be.upload(&ws.acts, ws.plan.input.off, &input)?;
    be.upload(&ws.target, 0, &target)?;
    println!("lesionseg demo on {}: UNet16 at width 0.25 ({} parameters), batch {n}x3x{h}x{w}", be.name(), table.len);
    for step in 0..3 {
        let t0 = Instant::now();
        model.forward(be, &ws)?;
        let t1 = Instant::now();
        let loss = model.backward(be, &ws, false)?;
        let t2 = Instant::now();
        println!(
            "pass {step}: forward {:.3} s, loss + backward {:.3} s, loss {:.5}",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            loss.loss
        );
    }
    Ok(())
}
