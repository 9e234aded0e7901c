use lesionseg::backend::cuda::driver::KernelSources;
use lesionseg::backend::cuda::{nvrtc, probe, sass};
#[test]
fn dump() {
    let ks = KernelSources::builtin();
    let px = probe::find_ptxas().unwrap();
    let nd = sass::find_nvdisasm().unwrap();
    let src = ks.get("conv2d_bf16").unwrap();
    let (ptx, _) = nvrtc::compile_ptx_with("conv2d_bf16", src, ks.common, "sm_90").unwrap();
    let (text, stats) = sass::sass(&px, &nd, &ptx, "sm_90").unwrap();
    std::fs::write("/tmp/conv2d_bf16.sass", &text).unwrap();
    let s = sass::summarize(&text, &stats);
    let rows: Vec<_> = s.into_iter().map(|k| ("conv2d_bf16".to_string(), "sm_90".to_string(), k)).collect();
    println!("{}", sass::table(&rows));
}
