//! The collective of ranks that are processes (one per GPU, on one or several
//! machines), over TCP through rank 0: what the launcher environment describes
//! ([`LaunchEnv`]: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`, as torchrun sets them).
//!
//! Rank 0 listens on `MASTER_PORT`; every other rank connects (retrying until the
//! timeout: the master may start later) and says who it is. Each operation: every
//! rank sends its buffer to rank 0, which adds them in rank order (the bits of the
//! threads' collective) and sends the result back. It carries only small host
//! values on GPUs (the loss's sums, the stop flags, the learning rate, NCCL's unique
//! id); the CPU backend's gradients go through it too.
//!
//! A rank that dies closes its connection; one that stops on an error sends why.
//! Either way rank 0 tells the others and every rank returns
//! [`Error::Collective`](crate::Error::Collective) naming the rank, at once; a rank
//! that hangs is reported when the timeout runs out.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{error, sum_in_order, Collective};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"LSG1";
const OP_DATA: u8 = 1;
const OP_ABORT: u8 = 0xff;

/// The launcher's description of this process's place in the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchEnv {
    /// `RANK`: this process, 0-based over every machine.
    pub rank: usize,
    /// `WORLD_SIZE`: processes in all.
    pub world: usize,
    /// `LOCAL_RANK`: this process on its machine (its GPU); `RANK` when unset.
    pub local_rank: usize,
    /// `MASTER_ADDR:MASTER_PORT`, where rank 0 listens.
    pub master: String,
}

impl LaunchEnv {
    /// The launcher's variables, when `WORLD_SIZE` is set (`None` otherwise: no
    /// launcher); an error names a variable that is missing or malformed.
    pub fn from_env() -> Result<Option<Self>> {
        let var = |name: &str| std::env::var(name).ok();
        let Some(world) = var("WORLD_SIZE") else { return Ok(None) };
        let num = |name: &str, v: Option<String>| -> Result<usize> {
            let v =
                v.ok_or_else(|| Error::argument(name, "not set, but WORLD_SIZE is (set both, as torchrun does)"))?;
            v.trim().parse().map_err(|_| Error::argument(name, format!("`{v}` is not a number")))
        };
        let world = num("WORLD_SIZE", Some(world))?;
        let rank = num("RANK", var("RANK"))?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        if world == 0 || rank >= world {
            return Err(Error::argument("RANK", format!("{rank} is not a rank of WORLD_SIZE {world}")));
        }
        let addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = num("MASTER_PORT", var("MASTER_PORT"))?;
        if port == 0 || port > 65535 {
            return Err(Error::argument("MASTER_PORT", format!("{port} is not a TCP port")));
        }
        Ok(Some(LaunchEnv { rank, world, local_rank, master: format!("{addr}:{port}") }))
    }
}

/// One process's handle on the group.
pub struct TcpCollective {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Rank 0: the other ranks' connections, index = rank − 1. Others: rank 0's.
    peers: Vec<TcpStream>,
    /// Set once an operation failed: the group is gone, later operations fail at once.
    broken: Option<String>,
}

fn io_context(e: std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {:.0} s, --replica-timeout", timeout.as_secs_f64())
        }
        std::io::ErrorKind::UnexpectedEof => "connection closed (the process ended)".into(),
        _ => e.to_string(),
    }
}

impl TcpCollective {
    /// Joins the group `env` describes, waiting at most `timeout` for it to form.
    pub fn connect(env: &LaunchEnv, timeout: Duration) -> Result<Self> {
        let (rank, world) = (env.rank, env.world);
        let deadline = Instant::now() + timeout;
        let fail = |why: String| error(rank, why);
        let mut peers = Vec::new();
        if rank == 0 {
            let port = env.master.rsplit(':').next().unwrap_or("0");
            let listener = TcpListener::bind(format!("0.0.0.0:{port}"))
                .map_err(|e| fail(format!("cannot listen on port {port} (MASTER_PORT): {e}")))?;
            listener.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
            let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
            while slots.iter().any(Option::is_none) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).map_err(|e| fail(e.to_string()))?;
                        s.set_read_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
                        let mut hello = [0u8; 12];
                        (&s).read_exact(&mut hello)
                            .map_err(|e| fail(format!("a rank's greeting: {}", io_context(e, timeout))))?;
                        let word = |i: usize| u32::from_le_bytes(hello[i..i + 4].try_into().expect("4 bytes")) as usize;
                        let (r, w) = (word(4), word(8));
                        if &hello[..4] != MAGIC || w != world || r == 0 || r >= world || slots[r - 1].is_some() {
                            return Err(fail(format!(
                                "a connection as rank {r} of {w} does not fit this group of {world}"
                            )));
                        }
                        slots[r - 1] = Some(s);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            let missing: Vec<String> =
                                (1..world).filter(|r| slots[r - 1].is_none()).map(|r| r.to_string()).collect();
                            let why = format!(
                                "rank(s) {} of {world} did not connect to port {port} within {:.0} s",
                                missing.join(", "),
                                timeout.as_secs_f64()
                            );
                            // The ranks that did connect learn why the group never formed.
                            for s in slots.iter().flatten() {
                                let _ = Self::send(s, OP_ABORT, format!("rank 0: {why}").as_bytes());
                            }
                            return Err(fail(why));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(fail(format!("accepting a rank: {e}"))),
                }
            }
            peers = slots.into_iter().flatten().collect();
        } else {
            let stream = loop {
                let addrs =
                    env.master.to_socket_addrs().map_err(|e| fail(format!("MASTER_ADDR {}: {e}", env.master)))?;
                if let Some(s) =
                    addrs.filter_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok()).next()
                {
                    break s;
                }
                if Instant::now() >= deadline {
                    return Err(fail(format!(
                        "rank 0 is not listening at {} (MASTER_ADDR:MASTER_PORT) after {:.0} s",
                        env.master,
                        timeout.as_secs_f64()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            stream.set_read_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
            let mut hello = MAGIC.to_vec();
            hello.extend((rank as u32).to_le_bytes());
            hello.extend((world as u32).to_le_bytes());
            (&stream).write_all(&hello).map_err(|e| fail(format!("greeting rank 0: {e}")))?;
            peers.push(stream);
        }
        for s in &peers {
            let _ = s.set_nodelay(true);
        }
        Ok(TcpCollective { rank, world, timeout, peers, broken: None })
    }

    /// Sends a frame: op, payload length, payload.
    fn send(s: &TcpStream, op: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.push(op);
        frame.extend((payload.len() as u64).to_le_bytes());
        frame.extend_from_slice(payload);
        (&*s).write_all(&frame)
    }

    /// Receives a frame; an abort frame is `Err(reason)`.
    fn recv(s: &TcpStream, expect: usize, timeout: Duration) -> std::result::Result<Vec<u8>, String> {
        let io_context = |e| io_context(e, timeout);
        let mut head = [0u8; 9];
        (&*s).read_exact(&mut head).map_err(io_context)?;
        let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes")) as usize;
        if head[0] == OP_ABORT && len <= 4096 {
            let mut why = vec![0u8; len];
            (&*s).read_exact(&mut why).map_err(io_context)?;
            return Err(String::from_utf8_lossy(&why).into_owned());
        }
        if head[0] != OP_DATA || len != expect {
            return Err(format!("a frame of {len} bytes where {expect} were expected (out of step)"));
        }
        let mut buf = vec![0u8; len];
        (&*s).read_exact(&mut buf).map_err(io_context)?;
        Ok(buf)
    }

    /// Every rank's `mine` (rank order) on rank 0; on the others, rank 0's answer.
    fn exchange(&mut self, mine: &[u8], answer: impl FnOnce(&[Vec<u8>]) -> Vec<u8>) -> Result<Vec<u8>> {
        if let Some(why) = &self.broken {
            return Err(error(self.rank, format!("the group is gone ({why})")));
        }
        let out = if self.rank == 0 {
            let mut all = vec![mine.to_vec()];
            for (i, s) in self.peers.iter().enumerate() {
                match Self::recv(s, mine.len(), self.timeout) {
                    Ok(b) => all.push(b),
                    Err(why) => return Err(self.fail(format!("rank {} of {} stopped ({why})", i + 1, self.world))),
                }
            }
            let result = answer(&all);
            for (i, s) in self.peers.iter().enumerate() {
                if let Err(e) = Self::send(s, OP_DATA, &result) {
                    return Err(self.fail(format!("rank {} of {} stopped ({e})", i + 1, self.world)));
                }
            }
            result
        } else {
            let s = &self.peers[0];
            if let Err(e) = Self::send(s, OP_DATA, mine) {
                return Err(self.fail(format!("rank 0 stopped ({e})")));
            }
            match Self::recv(s, mine.len(), self.timeout) {
                Ok(b) => b,
                Err(why) => return Err(self.fail(format!("rank 0 stopped ({why})"))),
            }
        };
        Ok(out)
    }

    /// Marks the group gone, tells the others why (rank 0 tells everyone), and
    /// returns the error for this rank.
    fn fail(&mut self, why: String) -> Error {
        self.abort(&why);
        error(self.rank, format!("{why}; stopping too"))
    }

    /// `root`'s bytes on every rank.
    pub fn broadcast_bytes(&mut self, buf: &mut [u8], root: usize) -> Result<()> {
        let out = self.exchange(buf, |all| all[root].clone())?;
        buf.copy_from_slice(&out);
        Ok(())
    }
}

fn f64s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}
fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        let mine: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = self.exchange(&mine, |all| {
            let vals: Vec<Vec<f64>> = all.iter().map(|b| f64s(b)).collect();
            let refs: Vec<&[f64]> = vals.iter().map(Vec::as_slice).collect();
            let mut sum = vec![0.0; vals[0].len()];
            sum_in_order(&mut sum, &refs);
            sum.iter().flat_map(|v| v.to_le_bytes()).collect()
        })?;
        buf.copy_from_slice(&f64s(&out));
        Ok(())
    }
    fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        let mine: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = self.exchange(&mine, |all| {
            let vals: Vec<Vec<f32>> = all.iter().map(|b| f32s(b)).collect();
            let refs: Vec<&[f32]> = vals.iter().map(Vec::as_slice).collect();
            let mut sum = vec![0.0; vals[0].len()];
            sum_in_order(&mut sum, &refs);
            sum.iter().flat_map(|v| v.to_le_bytes()).collect()
        })?;
        buf.copy_from_slice(&f32s(&out));
        Ok(())
    }
    fn broadcast_f64(&mut self, buf: &mut [f64], root: usize) -> Result<()> {
        if root >= self.world {
            return Err(error(self.rank, format!("broadcast from rank {root} of {}", self.world)));
        }
        let mine: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = self.exchange(&mine, |all| all[root].clone())?;
        buf.copy_from_slice(&f64s(&out));
        Ok(())
    }
    fn abort(&mut self, reason: &str) {
        if self.broken.is_some() {
            return;
        }
        self.broken = Some(reason.to_string());
        let why = format!("rank {}: {reason}", self.rank);
        for s in &self.peers {
            let _ = Self::send(s, OP_ABORT, &why.as_bytes()[..why.len().min(4096)]);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for TcpCollective {
    fn drop(&mut self) {
        self.abort("it stopped");
    }
}
