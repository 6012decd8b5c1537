//! Data files: `.npy` arrays, `.npz` archives, MNIST IDX and image
//! folders, and [`load_feeds`], which turns `[INPUT=]PATH` specs into one
//! tensor per model input (calibration, evaluation and training data).

pub mod idx;
pub mod images;
pub mod npy;
pub mod npz;

use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::{InputShape, Tensor};

/// Loads a data file by its content: `.npy`, or IDX (optionally gzipped).
/// IDX images become f32 `[N, 1, rows, cols]` = pixel/255; IDX label files
/// (1-D) become i64 `[N]`.
pub fn load_tensor(path: &Path) -> Result<Tensor> {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".npy") {
        return npy::read(path);
    }
    if name.ends_with(".npz") {
        let mut arrays = npz::read(path)?;
        if arrays.len() != 1 {
            return Err(Error::Data {
                path: path.to_path_buf(),
                detail: format!(
                    "holds {} arrays {:?}; here one is expected (use a .npy, or an .npz with one array)",
                    arrays.len(),
                    arrays.iter().map(|(k, _)| k).collect::<Vec<_>>()
                ),
            });
        }
        return Ok(arrays.remove(0).1);
    }
    if name.contains("idx") || name.ends_with(".gz") || name.contains("ubyte") {
        let (dims, _) = idx::read_u8(path)?;
        return if dims.len() == 1 {
            idx::read_labels(path)
        } else {
            idx::read_images(path)
        };
    }
    Err(Error::Data {
        path: path.to_path_buf(),
        detail: "unknown data format: use a .npy or .npz file, an MNIST IDX file (e.g. t10k-images-idx3-ubyte.gz) or a folder of images".into(),
    })
}

/// How [`load_feeds`] reads its files.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// At most this many samples (`None`: all); for an image folder, how
    /// many views to make (more than the photos: random views).
    pub samples: Option<usize>,
    /// Preprocessing for image folders.
    pub images: images::ImageSpec,
    /// Seed and kind of image views.
    pub views: images::Views,
}

/// Loads data for the model inputs `inputs` from specs `[INPUT=]PATH`,
/// where PATH is a `.npy`, an MNIST IDX file, a folder of images, or an
/// `.npz` whose arrays are named after the inputs. A model with one input
/// takes a bare PATH; an `.npz` covers every input it names.
pub fn load_feeds(inputs: &[InputShape], specs: &[String], opts: &LoadOptions) -> Result<Feeds> {
    let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let mut feeds: Vec<(String, Tensor)> = Vec::new();
    let put = |name: &str, t: Tensor, feeds: &mut Vec<(String, Tensor)>| {
        feeds.retain(|(k, _)| k != name);
        feeds.push((name.to_string(), t));
    };
    for spec in specs {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) if names.contains(&n) => (Some(n), f),
            Some((n, _)) if !Path::new(spec).exists() => {
                return Err(Error::Usage(format!(
                    "data '{spec}': the model has no input '{n}'; its inputs are {names:?}"
                )))
            }
            _ => (None, spec.as_str()),
        };
        let path = Path::new(file);
        let lower = file.to_lowercase();
        if lower.ends_with(".npz") {
            let arrays = npz::read(path)?;
            if let Some(n) = name {
                let t = match arrays.iter().find(|(k, _)| k == n) {
                    Some((_, t)) => t.clone(),
                    None if arrays.len() == 1 => arrays[0].1.clone(),
                    None => {
                        return Err(Error::Data {
                            path: path.to_path_buf(),
                            detail: format!(
                                "no array named '{n}' (it holds {:?})",
                                arrays.iter().map(|(k, _)| k).collect::<Vec<_>>()
                            ),
                        })
                    }
                };
                put(n, t, &mut feeds);
            } else if arrays.len() == 1 && names.len() == 1 {
                put(names[0], arrays[0].1.clone(), &mut feeds);
            } else {
                let mut used = 0;
                for (k, t) in arrays.iter() {
                    if names.contains(&k.as_str()) {
                        put(k, t.clone(), &mut feeds);
                        used += 1;
                    }
                }
                if used == 0 {
                    return Err(Error::Data {
                        path: path.to_path_buf(),
                        detail: format!(
                            "none of its arrays {:?} is named after a model input {names:?}; save them with numpy.savez(file, INPUT=array, ...)",
                            arrays.iter().map(|(k, _)| k).collect::<Vec<_>>()
                        ),
                    });
                }
            }
            continue;
        }
        let name = match name {
            Some(n) => n,
            None if names.len() == 1 => names[0],
            None => {
                return Err(Error::Usage(format!(
                    "data '{spec}': the model has inputs {names:?}; name each: INPUT=PATH (or give one .npz holding all)"
                )))
            }
        };
        let t = if path.is_dir() {
            let shape = &inputs
                .iter()
                .find(|i| i.name == name)
                .map(|i| i.shape.clone())
                .unwrap_or_default();
            let mut views = opts.views;
            views.count = opts.samples.or(views.count);
            images::load(path, shape, &opts.images, &views)?
        } else {
            load_tensor(path)?
        };
        put(name, t, &mut feeds);
    }
    for n in &names {
        if !feeds.iter().any(|(k, _)| k == n) {
            return Err(Error::Usage(format!(
                "no data for input '{n}'; give {n}=PATH"
            )));
        }
    }
    // Graph order.
    feeds.sort_by_key(|(k, _)| names.iter().position(|n| n == k));
    let f = Feeds::new(feeds)?;
    match opts.samples {
        Some(n) => f.take(n),
        None => Ok(f),
    }
}

/// Data for a model with one tensor per input, all holding the same number
/// of samples along axis 0 (calibration sets, evaluation sets).
#[derive(Clone, Debug, PartialEq)]
pub struct Feeds(pub Vec<(String, Tensor)>);

impl Feeds {
    /// Checks that every tensor has the same number of samples.
    pub fn new(inputs: Vec<(String, Tensor)>) -> Result<Feeds> {
        let n = inputs.first().and_then(|(_, t)| t.shape().first().copied());
        for (name, t) in &inputs {
            if t.shape().first().copied() != n {
                return Err(Error::Input {
                    name: name.clone(),
                    detail: format!(
                        "has {:?} samples but the other inputs have {:?}; every input needs the same number of samples",
                        t.shape().first(),
                        n
                    ),
                });
            }
        }
        Ok(Feeds(inputs))
    }

    /// Number of samples.
    pub fn samples(&self) -> usize {
        self.0
            .first()
            .and_then(|(_, t)| t.shape().first().copied())
            .unwrap_or(0)
    }

    /// The first `n` samples.
    pub fn take(&self, n: usize) -> Result<Feeds> {
        let n = n.clamp(1, self.samples().max(1));
        Ok(Feeds(
            self.0
                .iter()
                .map(|(k, t)| {
                    Ok((
                        k.clone(),
                        crate::eval::batches(t, n)?
                            .into_iter()
                            .next()
                            .unwrap_or_else(|| t.clone()),
                    ))
                })
                .collect::<Result<_>>()?,
        ))
    }

    /// Batches of at most `size` samples, each with every input.
    pub fn batches(&self, size: usize) -> Result<Vec<Vec<(String, Tensor)>>> {
        let per: Vec<Vec<Tensor>> = self
            .0
            .iter()
            .map(|(_, t)| crate::eval::batches(t, size))
            .collect::<Result<_>>()?;
        let nb = per.first().map(Vec::len).unwrap_or(0);
        Ok((0..nb)
            .map(|b| {
                self.0
                    .iter()
                    .zip(&per)
                    .map(|((k, _), v)| (k.clone(), v[b].clone()))
                    .collect()
            })
            .collect())
    }

    /// The tensor fed to input `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DType;
    use std::io::Write;

    fn input(name: &str, shape: &[usize]) -> InputShape {
        InputShape {
            name: name.into(),
            dtype: DType::I64,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn feeds_come_from_npz_by_input_name_or_per_input_files() {
        let dir = std::env::temp_dir().join(format!("potatura-feeds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ids = Tensor::from_i64(vec![3, 2], vec![1, 2, 3, 4, 5, 6]);
        let mask = Tensor::from_i64(vec![3, 2], vec![1, 1, 1, 0, 1, 1]);
        let npz = dir.join("calib.npz");
        let mut w = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
        for (k, t) in [
            ("attention_mask", &mask),
            ("input_ids", &ids),
            ("other", &ids),
        ] {
            w.start_file(format!("{k}.npy"), zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(&npy::to_bytes(t).unwrap()).unwrap();
        }
        w.finish().unwrap();
        let inputs = [
            input("input_ids", &[1, 2]),
            input("attention_mask", &[1, 2]),
        ];
        let spec = [npz.display().to_string()];
        let f = load_feeds(&inputs, &spec, &LoadOptions::default()).unwrap();
        // Graph order, extra arrays ignored.
        assert_eq!(f.0[0], ("input_ids".to_string(), ids.clone()));
        assert_eq!(f.0[1], ("attention_mask".to_string(), mask.clone()));
        // Per-input files, and a sample limit.
        let a = dir.join("ids.npy");
        npy::write(&a, &ids).unwrap();
        let specs = [
            format!("input_ids={}", a.display()),
            format!("attention_mask={}", npz.display()),
        ];
        let opts = LoadOptions {
            samples: Some(2),
            ..LoadOptions::default()
        };
        let f = load_feeds(&inputs, &specs, &opts).unwrap();
        assert_eq!(f.samples(), 2);
        assert_eq!(
            f.get("attention_mask").unwrap().to_i64_vec(),
            vec![1, 1, 1, 0]
        );
        // Errors say what to do.
        let e = load_feeds(&inputs, &[a.display().to_string()], &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("INPUT=PATH"), "{e}");
        let e = load_feeds(&inputs, &[format!("nope={}", a.display())], &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no input 'nope'"), "{e}");
        let e = load_feeds(&inputs, &[format!("input_ids={}", a.display())], &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no data for input 'attention_mask'"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
