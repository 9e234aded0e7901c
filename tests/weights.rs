//! Weight files: safetensors round trips, the PyTorch ↔ internal repacks checked
//! element by element against their index formulas, the name aliases found in real
//! checkpoints, and every way a file can be wrong (each an error naming the tensor,
//! never a panic).

pub mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use lesionseg::model::{ParamKind, ParamTable, UNetConfig};
use lesionseg::tensor::Tensor;
use lesionseg::weights::{self, PackMode};
use safetensors::tensor::{Dtype, TensorView};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("lesionseg-weights-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tiny model used throughout: every width of the paper's model / 16.
fn tiny() -> (UNetConfig, ParamTable) {
    let cfg = UNetConfig::scaled(1.0 / 16.0).unwrap();
    (cfg, ParamTable::new(&cfg))
}

/// A random flat buffer and the canonical PyTorch-layout map it unpacks to.
fn random_model(table: &ParamTable) -> (Vec<f32>, BTreeMap<String, Tensor>) {
    let flat = common::uniform(&mut common::rng(), table.len);
    let map = table.specs().into_iter().map(|s| (s.name.clone(), weights::unpack(s, &flat))).collect();
    (flat, map)
}

/// The message of an error, failing the test on `Ok`.
fn err_msg<T>(what: &str, r: lesionseg::Result<T>) -> String {
    match r {
        Ok(_) => panic!("{what}: expected an error, got Ok"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not mention {p:?}");
    }
}

/// Writes `tensors` with the safetensors crate directly in `dtype` (f32, f16, bf16
/// or i64), bypassing our writer, the way PyTorch tooling would.
fn write_raw(path: &Path, tensors: &[(String, Tensor)], dtype: Dtype) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let b: Vec<u8> = match dtype {
                Dtype::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::F16 => t.data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                Dtype::BF16 => t.data.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
                Dtype::I64 => t.data.iter().flat_map(|v| (*v as i64).to_le_bytes()).collect(),
                _ => unreachable!(),
            };
            (n.clone(), t.shape.clone(), b)
        })
        .collect();
    let views: Vec<(String, TensorView)> =
        bytes.iter().map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

/// `t` with every value rounded through `dtype`.
fn rounded(t: &Tensor, dtype: Dtype) -> Tensor {
    let data = t
        .data
        .iter()
        .map(|&v| match dtype {
            Dtype::F16 => half::f16::from_f32(v).to_f32(),
            Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
            _ => v,
        })
        .collect();
    Tensor { shape: t.shape.clone(), data }
}

/// The paper's `convB.J` alias of each encoder index.
const ALIASES: [(&str, usize); 13] = [
    ("conv1.0", 0),
    ("conv1.2", 2),
    ("conv2.0", 5),
    ("conv2.2", 7),
    ("conv3.0", 10),
    ("conv3.2", 12),
    ("conv3.4", 14),
    ("conv4.0", 17),
    ("conv4.2", 19),
    ("conv4.4", 21),
    ("conv5.0", 24),
    ("conv5.2", 26),
    ("conv5.4", 28),
];

#[test]
fn save_read_pack_round_trip_is_exact() {
    let (cfg, table) = tiny();
    let (flat, _) = random_model(&table);
    let dir = TempDir::new("round-trip");
    let path = dir.path("model.safetensors");
    let loss = ("loss".to_string(), Tensor::new(vec![], vec![0.625]).unwrap());
    weights::save_params(&path, &table, &flat, &[loss]).unwrap();

    let mut tensors = weights::read_tensors(&path).unwrap();
    let loss = tensors.remove("loss").expect("the 0-d extra tensor is read back");
    assert_eq!((loss.shape.as_slice(), loss.data.as_slice()), (&[][..], &[0.625f32][..]));
    assert_eq!(UNetConfig::from_shapes(&weights::shapes(&tensors)).unwrap(), cfg);
    let packed = weights::pack(&table, &tensors, &path, PackMode::Full).unwrap();
    assert!(packed.iter().zip(&flat).all(|(a, b)| a.to_bits() == b.to_bits()), "round trip changed values");

    // Only the final file is left: the temporary name was renamed away.
    let names: Vec<_> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.safetensors")]);
}

#[test]
fn repacks_follow_the_index_formulas() {
    let (_, table) = tiny();
    let (flat, map) = random_model(&table);
    let packed = weights::pack(&table, &map, Path::new("mem"), PackMode::Full).unwrap();
    assert_eq!(packed, flat);

    // A conv with C != K: PyTorch [K][C][R][R] → internal [R][R][C][K].
    let conv = &table.encoder[2].weight;
    let ParamKind::Conv { r, c, k } = conv.kind else { panic!("{} is not a conv", conv.name) };
    assert!(c != k && r == 3);
    let pt = &map[&conv.name];
    assert_eq!(pt.shape, vec![k, c, r, r]);
    for ry in 0..r {
        for rx in 0..r {
            for ci in 0..c {
                for ki in 0..k {
                    let internal = conv.off + ((ry * r + rx) * c + ci) * k + ki;
                    let pytorch = ((ki * c + ci) * r + ry) * r + rx;
                    assert_eq!(packed[internal], pt.data[pytorch], "{} at k{ki} c{ci} r{ry} s{rx}", conv.name);
                }
            }
        }
    }

    // A deconv with C != K: PyTorch [C][K][4][4] → internal [a][b][ty][tx][C][K].
    let deconv = &table.decoder[3].1.weight;
    let ParamKind::Deconv { c, k } = deconv.kind else { panic!("{} is not a deconv", deconv.name) };
    assert!(c != k);
    let pt = &map[&deconv.name];
    assert_eq!(pt.shape, vec![c, k, 4, 4]);
    for a in 0..2 {
        for b in 0..2 {
            for ty in 0..2 {
                for tx in 0..2 {
                    for ci in 0..c {
                        for ki in 0..k {
                            let internal = deconv.off + (((((a * 2 + b) * 2 + ty) * 2 + tx) * c + ci) * k + ki);
                            let pytorch = ((ci * k + ki) * 4 + (3 - a - 2 * ty)) * 4 + (3 - b - 2 * tx);
                            assert_eq!(packed[internal], pt.data[pytorch], "{} a{a} b{b} ty{ty} tx{tx}", deconv.name);
                        }
                    }
                }
            }
        }
    }

    // Biases are copied as they are.
    let bias = &table.decoder[3].1.bias;
    assert_eq!(&packed[bias.off..bias.off + bias.len()], map[&bias.name].data.as_slice());
}

#[test]
fn module_prefix_and_block_aliases_load_to_canonical_names() {
    let (_, table) = tiny();
    let (_, canonical) = random_model(&table);
    let dir = TempDir::new("aliases");
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let want: BTreeMap<String, Tensor> = canonical.iter().map(|(n, t)| (n.clone(), rounded(t, dtype))).collect();
        // As a DataParallel state_dict of the paper's model: `module.` everywhere,
        // and each encoder conv both as `encoder.N` and as its `convB.J` alias.
        let mut both = Vec::new();
        // Only the aliases (a file written from `conv1`…`conv5` alone).
        let mut aliases_only = Vec::new();
        for (name, t) in &want {
            both.push((format!("module.{name}"), t.clone()));
            match ALIASES.iter().find(|(_, i)| name.starts_with(&format!("encoder.{i}."))) {
                Some((alias, i)) => {
                    let renamed = name.replacen(&format!("encoder.{i}"), alias, 1);
                    both.push((format!("module.{renamed}"), t.clone()));
                    aliases_only.push((renamed, t.clone()));
                }
                None => aliases_only.push((name.clone(), t.clone())),
            }
        }
        for (tag, tensors) in [("both", &both), ("aliases", &aliases_only)] {
            let path = dir.path(&format!("{tag}-{dtype:?}.safetensors"));
            write_raw(&path, tensors, dtype);
            let got = weights::read_tensors(&path).unwrap();
            assert_eq!(got, want, "{tag} in {dtype:?}");
            weights::pack(&table, &got, &path, PackMode::Full).unwrap();
            // read_plain maps nothing: the file's own names come back.
            let plain = weights::read_plain(&path).unwrap();
            assert_eq!(plain.len(), tensors.len());
            assert!(tensors.iter().all(|(n, t)| plain[n] == *t), "read_plain renamed or changed a tensor");
        }
    }
}

#[test]
fn torchvision_features_initialise_the_encoder_only() {
    let (_, table) = tiny();
    let (_, canonical) = random_model(&table);
    let mut vgg: Vec<(String, Tensor)> = canonical
        .iter()
        .filter_map(|(n, t)| n.strip_prefix("encoder.").map(|rest| (format!("features.{rest}"), t.clone())))
        .collect();
    vgg.push(("classifier.0.weight".into(), Tensor::zeros(vec![7, 3])));
    vgg.push(("classifier.6.bias".into(), Tensor::zeros(vec![10])));
    let dir = TempDir::new("vgg");
    let path = dir.path("vgg16.safetensors");
    weights::write_safetensors(&path, &vgg, None).unwrap();

    let got = weights::read_tensors(&path).unwrap();
    assert_eq!(got.len(), 26, "classifier.* dropped: {:?}", got.keys());
    assert!(got.keys().all(|n| n.starts_with("encoder.")));

    let base: Vec<f32> = (0..table.len).map(|i| i as f32).collect();
    let packed = weights::pack(&table, &got, &path, PackMode::EncoderOnly { into: &base }).unwrap();
    for spec in table.specs() {
        let got = weights::unpack(spec, &packed);
        if spec.name.starts_with("encoder.") {
            assert_eq!(got, canonical[&spec.name], "{} from the file", spec.name);
        } else {
            assert_eq!(
                &packed[spec.off..spec.off + spec.len()],
                &base[spec.off..spec.off + spec.len()],
                "{}",
                spec.name
            );
        }
    }

    // The same file given as a whole model: the error says what it is.
    let msg = err_msg("VGG16 as a full model", weights::pack(&table, &got, &path, PackMode::Full));
    assert_mentions(&msg, &["center.block.0.conv.weight", "--init"]);
}

#[test]
fn pack_errors_name_the_tensor() {
    let (_, table) = tiny();
    let (_, good) = random_model(&table);
    let p = Path::new("ckpt.safetensors");
    let full = |m: &BTreeMap<String, Tensor>| weights::pack(&table, m, p, PackMode::Full);

    let mut m = good.clone();
    m.remove("dec3.block.1.bias");
    assert_mentions(&err_msg("missing", full(&m)), &["dec3.block.1.bias", "missing", "ckpt.safetensors"]);

    let mut m = good.clone();
    let gone = [
        "dec2.block.1.weight",
        "dec1.conv.bias",
        "final.weight",
        "final.bias",
        "dec4.block.0.conv.bias",
        "encoder.28.bias",
    ];
    gone.iter().for_each(|n| drop(m.remove(*n)));
    let msg = err_msg("several missing", full(&m));
    assert_mentions(&msg, &["6 of the 52", "and 2 more", "`dec1.conv.bias`"]);

    let mut m = good.clone();
    m.insert("final.weight".into(), Tensor::zeros(vec![5, 3, 1, 1]));
    assert_mentions(&err_msg("wrong shape", full(&m)), &["final.weight", "[5, 2, 1, 1]", "[5, 3, 1, 1]"]);

    let mut m = good.clone();
    m.insert("center.block.1.weight".into(), Tensor::zeros(vec![16, 32, 4, 4]));
    assert_mentions(&err_msg("deconv transposed", full(&m)), &["center.block.1.weight", "[32, 16, 4, 4]"]);

    let mut m = good.clone();
    m.insert("foo".into(), Tensor::zeros(vec![1]));
    m.insert("optimizer.step".into(), Tensor::zeros(vec![]));
    assert_mentions(&err_msg("extra", full(&m)), &["`foo`", "not a parameter of UNet16", "2 unexpected"]);

    // A Tensor whose data does not fill its (right) shape is caught, not indexed.
    let mut m = good.clone();
    m.get_mut("final.bias").unwrap().data.pop();
    assert_mentions(&err_msg("short data", full(&m)), &["final.bias"]);

    // Encoder-only: every encoder tensor with its shape, others ignored.
    let base = vec![0.0; table.len];
    let enc = |m: &BTreeMap<String, Tensor>| weights::pack(&table, m, p, PackMode::EncoderOnly { into: &base });
    let mut m = good.clone();
    m.insert("foo".into(), Tensor::zeros(vec![1]));
    enc(&m).unwrap();
    m.remove("encoder.7.weight");
    assert_mentions(&err_msg("encoder missing", enc(&m)), &["encoder.7.weight"]);
    let mut m = good.clone();
    m.insert("encoder.0.weight".into(), Tensor::zeros(vec![64, 3, 3, 3]));
    assert_mentions(&err_msg("encoder wrong width", enc(&m)), &["encoder.0.weight", "[4, 3, 3, 3]", "[64, 3, 3, 3]"]);
    let short = vec![0.0; table.len - 1];
    err_msg("short base", weights::pack(&table, &good, p, PackMode::EncoderOnly { into: &short }));

    // On error pack_into leaves the buffer alone.
    let mut dst = vec![7.0; table.len];
    let mut m = good.clone();
    m.remove("final.bias");
    err_msg("pack_into", weights::pack_into(&table, &m, p, &mut dst, false));
    assert!(dst.iter().all(|&v| v == 7.0));
}

#[test]
fn disagreeing_alias_is_an_error_naming_both() {
    let dir = TempDir::new("disagree");
    let path = dir.path("bad.safetensors");
    let a = Tensor::new(vec![2], vec![1.0, 2.0]).unwrap();
    let b = Tensor::new(vec![2], vec![1.0, 2.5]).unwrap();
    weights::write_safetensors(&path, &[("encoder.0.bias".into(), a.clone()), ("conv1.0.bias".into(), b)], None)
        .unwrap();
    assert_mentions(&err_msg("alias", weights::read_tensors(&path)), &["encoder.0.bias", "conv1.0.bias"]);

    weights::write_safetensors(&path, &[("module.final.bias".into(), a.clone()), ("final.bias".into(), a)], None)
        .unwrap();
    assert_eq!(weights::read_tensors(&path).unwrap().len(), 1, "equal duplicates are merged");
}

#[test]
fn broken_files_are_errors_not_panics() {
    let (_, table) = tiny();
    let (flat, _) = random_model(&table);
    let dir = TempDir::new("broken");
    let good = dir.path("good.safetensors");
    weights::save_params(&good, &table, &flat, &[]).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let bad = dir.path("bad.safetensors");

    let cuts =
        [0, 1, 7, 8, 9, header / 2, header - 1, header, header + 1, header + 4, bytes.len() / 2, bytes.len() - 1];
    for cut in cuts {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        let msg = err_msg(&format!("cut at {cut}"), weights::read_tensors(&bad));
        assert_mentions(&msg, &["bad.safetensors", "truncated", "save_file"]);
    }
    // Trailing bytes after the data also mean the header does not describe the file.
    std::fs::write(&bad, [&bytes[..], &[0u8; 4]].concat()).unwrap();
    err_msg("trailing bytes", weights::read_tensors(&bad));

    // Headers that lie: data shorter than the shape says, a shape that overflows,
    // offsets with a gap, a header length far past the end.
    let lies = [
        r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
        r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}"#,
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        r#"{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#,
        r#"["not", "a", "map"]"#,
    ];
    for header in lies {
        let file = [&(header.len() as u64).to_le_bytes()[..], header.as_bytes(), &[0u8; 8]].concat();
        std::fs::write(&bad, file).unwrap();
        err_msg(header, weights::read_tensors(&bad));
    }
    for len in [u64::MAX, 1 << 40, 200_000_000] {
        std::fs::write(&bad, [&len.to_le_bytes()[..], b"{}"].concat()).unwrap();
        err_msg(&format!("header length {len}"), weights::read_tensors(&bad));
    }

    use rand::{Rng, RngCore};
    let mut rng = common::rng();
    for i in 0..200 {
        let mut noise = vec![0u8; rng.gen_range(0..300)];
        rng.fill_bytes(&mut noise);
        if i % 2 == 0 && noise.len() >= 8 {
            // A plausible header length, so the parser gets as far as the JSON.
            let n = rng.gen_range(0..noise.len() as u64);
            noise[..8].copy_from_slice(&n.to_le_bytes());
        }
        std::fs::write(&bad, &noise).unwrap();
        err_msg("random bytes", weights::read_tensors(&bad));
    }

    std::fs::write(&bad, b"PK\x03\x04 the rest of a torch.save zip").unwrap();
    assert_mentions(&err_msg("torch.save", weights::read_tensors(&bad)), &["torch.save", "save_file"]);

    let missing = dir.path("does-not-exist.safetensors");
    assert_mentions(&err_msg("no file", weights::read_tensors(&missing)), &["does-not-exist.safetensors"]);
    err_msg("a directory", weights::read_tensors(&dir.0));
}

#[test]
fn unsupported_dtype_names_the_tensor() {
    let dir = TempDir::new("dtype");
    let path = dir.path("i64.safetensors");
    let t = Tensor::new(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
    write_raw(&path, &[("num_batches_tracked".into(), t)], Dtype::I64);
    assert_mentions(&err_msg("i64", weights::read_tensors(&path)), &["num_batches_tracked", "I64"]);
}

#[test]
fn write_safetensors_checks_and_replaces_atomically() {
    let dir = TempDir::new("write");
    let path = dir.path("out.safetensors");
    let scalar = Tensor::new(vec![], vec![3.5]).unwrap();
    let meta = HashMap::from([("epoch".to_string(), "7".to_string())]);
    weights::write_safetensors(&path, &[("loss".into(), scalar.clone())], Some(meta)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(header.metadata().as_ref().unwrap()["epoch"], "7");
    assert_eq!(weights::read_tensors(&path).unwrap()["loss"], scalar);

    // Overwriting replaces the file whole.
    let v = Tensor::new(vec![2, 1], vec![1.0, -1.0]).unwrap();
    weights::write_safetensors(&path, &[("v".into(), v.clone())], None).unwrap();
    assert_eq!(weights::read_tensors(&path).unwrap(), BTreeMap::from([("v".to_string(), v.clone())]));

    // Bad input leaves the old file untouched and no temporary behind.
    let dup = [("v".to_string(), v.clone()), ("v".to_string(), v.clone())];
    assert_mentions(&err_msg("duplicate", weights::write_safetensors(&path, &dup, None)), &["`v`", "twice"]);
    let ragged = Tensor { shape: vec![3], data: vec![1.0] };
    assert_mentions(&err_msg("ragged", weights::write_safetensors(&path, &[("r".into(), ragged)], None)), &["`r`"]);
    let into_missing_dir = dir.path("no/such/dir.safetensors");
    err_msg("no directory", weights::write_safetensors(&into_missing_dir, &[("v".into(), v.clone())], None));
    assert_eq!(weights::read_tensors(&path).unwrap()["v"], v);
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
}
