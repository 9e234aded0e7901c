//! `train --replicas N` / `--gpus` on a device: the backends each rank opens and
//! the collective they share. cpu and emu ranks are threads with their own backend
//! and the threads' collective; cuda ranks are threads, one GPU each, whose
//! gradients are summed by NCCL (loaded here, and only here: a single-replica run
//! never loads it) and whose small host values go through the threads' collective.
//! Under a launcher (`WORLD_SIZE` set, as torchrun does) this process is one rank
//! of the group the environment describes, joined over TCP ([`LaunchEnv`]); on
//! cuda its GPU is `LOCAL_RANK` and NCCL's unique id is sent by rank 0 over TCP.

use super::replicas::{run_group, run_replicas};
use super::{TrainOptions, TrainSummary};
use crate::backend::cpu::Cpu;
use crate::backend::cuda::driver::Cuda;
use crate::backend::cuda::{Kernels, Precision};
use crate::backend::emu::Emu;
use crate::collective::nccl::{self, NcclCollective};
use crate::collective::tcp::{LaunchEnv, TcpCollective};
use crate::collective::{local, Collective};
use crate::device::{self, Device};
use crate::error::{Error, Result};

/// Trains `o` with `o.replicas` ranks (or one per GPU of `gpus`) on `device`.
pub fn run_parallel(
    device: Device,
    precision: Precision,
    gpus: Option<&[usize]>,
    o: &TrainOptions,
) -> Result<TrainSummary> {
    if let Some(env) = LaunchEnv::from_env()? {
        return run_launched(device, precision, gpus, &env, o);
    }
    let mut o = o.clone();
    if let Some(g) = gpus {
        if o.replicas > 1 && o.replicas != g.len() {
            return Err(Error::argument(
                "--gpus",
                format!("{} GPUs for {} replicas: give one GPU per replica (or drop --replicas)", g.len(), o.replicas),
            ));
        }
        o.replicas = g.len();
        let mut sorted = g.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != g.len() {
            return Err(Error::argument("--gpus", "a GPU is listed twice: one replica per GPU"));
        }
    }
    let cuda = match device {
        Device::Cuda => true,
        Device::Auto => {
            let usable = device::open_cuda().is_ok();
            if !o.quiet {
                eprintln!("device auto: {} replicas on {}", o.replicas, if usable { "cuda" } else { "cpu" });
            }
            usable
        }
        Device::Cpu | Device::Emu => false,
    };
    if gpus.is_some() && !cuda {
        return Err(Error::argument(
            "--gpus",
            "chooses GPUs for --device cuda; the replicas of cpu and emu are threads",
        ));
    }
    if cuda {
        return run_cuda(precision, gpus, &o);
    }
    match device {
        Device::Emu => run_replicas(
            |_| {
                let mut k = Kernels::new(Emu::new());
                k.precision = precision;
                Ok(k)
            },
            &o,
        ),
        _ if precision != Precision::F32 => Err(Error::argument(
            format!("--precision {precision}"),
            "the cpu backend computes in f32 only; use --device cuda (or emu to check the kernels)",
        )),
        _ => run_replicas(|_| Ok(Cpu), &o),
    }
}

/// One thread per GPU, NCCL for the gradients.
fn run_cuda(precision: Precision, gpus: Option<&[usize]>, o: &TrainOptions) -> Result<TrainSummary> {
    let n = o.replicas;
    let lib = nccl::nccl().map_err(|why| Error::Device(format!("--device cuda --replicas {n} needs NCCL: {why}")))?;
    let visible = crate::backend::cuda::driver::devices()
        .map_err(|e| Error::Device(format!("--device cuda --replicas {n}: no usable GPU: {e}")))?
        .len();
    let gpus: Vec<usize> = gpus.map_or_else(|| (0..n).collect(), <[usize]>::to_vec);
    if let Some(&bad) = gpus.iter().find(|&&g| g >= visible) {
        let what = if o.replicas > visible { "--replicas" } else { "--gpus" };
        return Err(Error::argument(what, format!("GPU {bad} asked for, {visible} visible (CUDA_VISIBLE_DEVICES)")));
    }
    let id = lib.unique_id()?;
    let hosts: Vec<Box<dyn Collective>> =
        local::group(n, o.replica_timeout).into_iter().map(|h| Box::new(h) as Box<dyn Collective>).collect();
    let open = |rank: usize| -> Result<Kernels<Cuda>> {
        let mut k = Kernels::new(Cuda::new(gpus[rank])?);
        if precision == Precision::Bf16 {
            k.exec.check_tensor_cores()?;
        }
        k.precision = precision;
        Ok(k)
    };
    let join = |be: &Kernels<Cuda>, host: Box<dyn Collective>| -> Result<Box<dyn Collective>> {
        be.exec.bind_stream()?;
        Ok(Box::new(NcclCollective::new(lib, id, host)?))
    };
    run_group(&open, o, hosts, &join)
}

/// This process as rank `env.rank` of a launched group.
fn run_launched(
    device: Device,
    precision: Precision,
    gpus: Option<&[usize]>,
    env: &LaunchEnv,
    o: &TrainOptions,
) -> Result<TrainSummary> {
    if o.replicas > 1 || gpus.is_some() {
        let flag = if gpus.is_some() { "--gpus" } else { "--replicas" };
        return Err(Error::argument(
            flag,
            format!("under a launcher (WORLD_SIZE={}) each process is one replica: drop {flag}", env.world),
        ));
    }
    let cuda = match device {
        Device::Cuda => true,
        Device::Auto => device::open_cuda().is_ok(),
        Device::Cpu | Device::Emu => false,
    };
    if precision != Precision::F32 && !cuda && device != Device::Emu {
        return Err(Error::argument(format!("--precision {precision}"), "the cpu backend computes in f32 only"));
    }
    // NCCL first: a process that cannot load it says so before the group forms.
    let lib = if cuda {
        Some(nccl::nccl().map_err(|why| Error::Device(format!("rank {} needs NCCL on cuda: {why}", env.rank)))?)
    } else {
        None
    };
    let mut tcp = TcpCollective::connect(env, o.replica_timeout)?;
    let Some(lib) = lib else {
        let open = |_: usize| -> Result<Kernels<Emu>> {
            let mut k = Kernels::new(Emu::new());
            k.precision = precision;
            Ok(k)
        };
        let hosts: Vec<Box<dyn Collective>> = vec![Box::new(tcp)];
        return match device {
            Device::Emu => run_group(&open, o, hosts, &|_, h| Ok(h)),
            _ => run_group(&|_| Ok(Cpu), o, hosts, &|_, h| Ok(h)),
        };
    };
    let mut id = nccl::UniqueId { internal: [0; 128] };
    if env.rank == 0 {
        id = lib.unique_id()?;
    }
    tcp.broadcast_bytes(&mut id.internal, 0)?;
    let gpu = env.local_rank;
    let open = |_: usize| -> Result<Kernels<Cuda>> {
        let mut k = Kernels::new(Cuda::new(gpu)?);
        k.precision = precision;
        Ok(k)
    };
    let join = |be: &Kernels<Cuda>, host: Box<dyn Collective>| -> Result<Box<dyn Collective>> {
        be.exec.bind_stream()?;
        Ok(Box::new(NcclCollective::new(lib, id, host)?))
    };
    run_group(&open, o, vec![Box::new(tcp)], &join)
}
