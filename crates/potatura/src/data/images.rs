//! Image folders: PNG and JPEG files turned into a model input tensor by a
//! preprocessing spec (resize the short side, center crop, scale, mean/std,
//! RGB or BGR, NCHW or NHWC), as torchvision-style transforms do, plus
//! seeded random views (random resized crops and flips) to make many
//! calibration or distillation samples out of a few photos.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::Tensor;
use crate::rng::Rng;

/// Tensor layout of an image input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[N, C, H, W]` (PyTorch, ONNX default).
    Nchw,
    /// `[N, H, W, C]` (TensorFlow, TFLite).
    Nhwc,
}

/// How image files become a model input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Resize so the short side has this many pixels before cropping
    /// (`None`: the crop size scaled by 256/224, torchvision's habit).
    pub resize: Option<usize>,
    /// Crop `(height, width)`; `None`: the model input's spatial size.
    pub crop: Option<(usize, usize)>,
    /// Pixel values are multiplied by this first (1/255 maps to [0, 1]).
    pub scale: f32,
    /// Subtracted per channel after scaling (in the channel order fed).
    pub mean: [f32; 3],
    /// Divided per channel after the mean.
    pub std: [f32; 3],
    /// Feed channels as BGR (OpenCV-trained models) instead of RGB.
    pub bgr: bool,
    /// `None`: read from the model input (channels of 1 or 3 at axis 1
    /// mean NCHW, at axis 3 NHWC).
    pub layout: Option<Layout>,
}

impl Default for ImageSpec {
    /// Pixels scaled to [0, 1], no normalisation.
    fn default() -> ImageSpec {
        ImageSpec {
            resize: None,
            crop: None,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            bgr: false,
            layout: None,
        }
    }
}

impl ImageSpec {
    /// torchvision's ImageNet evaluation transform: short side 256, center
    /// crop 224 (or the model's size), [0, 1], ImageNet mean and std, RGB.
    pub fn imagenet() -> ImageSpec {
        ImageSpec {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            ..ImageSpec::default()
        }
    }
}

/// Which views of the photos to produce.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Views {
    /// How many samples to produce (`None`: one center crop per image).
    pub count: Option<usize>,
    /// Seed of the random views.
    pub seed: u64,
    /// The first pass over the photos takes center crops; later samples
    /// are random views. Without it every sample is a random view (for a
    /// held-out set of "other crops").
    pub center_first: bool,
}

impl Default for Views {
    fn default() -> Views {
        Views {
            count: None,
            seed: 0,
            center_first: true,
        }
    }
}

/// The image files of a folder (`.png`, `.jpg`, `.jpeg`), sorted by name.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        error: e,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .is_some_and(|e| matches!(e.as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Data {
            path: dir.to_path_buf(),
            detail: "the folder holds no .png, .jpg or .jpeg files".into(),
        });
    }
    Ok(files)
}

/// Loads a folder of images as the tensor for an input of `shape`
/// (`[N, C, H, W]` or `[N, H, W, C]`, C of 1 or 3; N is the sample axis).
pub fn load(dir: &Path, shape: &[usize], spec: &ImageSpec, views: &Views) -> Result<Tensor> {
    let bad = |detail: String| Error::Data {
        path: dir.to_path_buf(),
        detail,
    };
    if shape.len() != 4 {
        return Err(bad(format!(
            "an image folder feeds a 4-D input, but this input has shape {shape:?}"
        )));
    }
    let layout = match spec.layout {
        Some(l) => l,
        None if matches!(shape[1], 1 | 3) => Layout::Nchw,
        None if matches!(shape[3], 1 | 3) => Layout::Nhwc,
        None => {
            return Err(bad(format!(
                "cannot tell the channel axis of input shape {shape:?} (no axis of 1 or 3 channels); give the layout"
            )))
        }
    };
    let (c, h, w) = match layout {
        Layout::Nchw => (shape[1], shape[2], shape[3]),
        Layout::Nhwc => (shape[3], shape[1], shape[2]),
    };
    if !matches!(c, 1 | 3) {
        return Err(bad(format!(
            "the input has {c} channels; images feed 1 (grey) or 3 (colour)"
        )));
    }
    let (ch, cw) = spec.crop.unwrap_or((h, w));
    if (ch, cw) != (h, w) {
        return Err(bad(format!(
            "the crop is {ch}x{cw} but the model input takes {h}x{w}"
        )));
    }
    let files = list(dir)?;
    let photos: Vec<RgbImage> = files
        .par_iter()
        .map(|f| {
            image::open(f)
                .map(|i| i.to_rgb8())
                .map_err(|e| Error::Data {
                    path: f.clone(),
                    detail: format!("cannot decode the image: {e}"),
                })
        })
        .collect::<Result<_>>()?;
    let count = views.count.unwrap_or(photos.len()).max(1);
    // Each sample's view, drawn in order from one generator.
    let mut rng = Rng::new(views.seed);
    let plan: Vec<(usize, Option<View>)> = (0..count)
        .map(|i| {
            let k = i % photos.len();
            if views.center_first && i < photos.len() {
                (k, None)
            } else {
                let (pw, ph) = photos[k].dimensions();
                (k, Some(View::random(&mut rng, pw as usize, ph as usize)))
            }
        })
        .collect();
    let resize = spec
        .resize
        .unwrap_or_else(|| ((ch.min(cw) as f64) * 256.0 / 224.0).round() as usize);
    let per = c * h * w;
    let mut out = vec![0.0f32; count * per];
    out.par_chunks_mut(per)
        .zip(&plan)
        .for_each(|(dst, (k, view))| {
            let img = match view {
                None => center(&photos[*k], resize, ch, cw),
                Some(v) => v.apply(&photos[*k], ch, cw),
            };
            write_pixels(&img, spec, c, layout, dst);
        });
    let mut dims = shape.to_vec();
    dims[0] = count;
    Ok(Tensor::from_f32(dims, out))
}

/// A random resized crop (area 25-100% of the photo, aspect 3/4-4/3) with
/// an optional horizontal flip.
#[derive(Clone, Copy, Debug)]
struct View {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    flip: bool,
}

impl View {
    fn random(rng: &mut Rng, pw: usize, ph: usize) -> View {
        let area = (pw * ph) as f64;
        for _ in 0..10 {
            let a = area * (0.25 + 0.75 * rng.next_f64());
            let ratio = ((3.0f64 / 4.0).ln() + rng.next_f64() * ((4.0f64 / 3.0).ln() * 2.0)).exp();
            let w = (a * ratio).sqrt().round() as usize;
            let h = (a / ratio).sqrt().round() as usize;
            if w >= 1 && h >= 1 && w <= pw && h <= ph {
                let x = rng.below(pw - w + 1);
                let y = rng.below(ph - h + 1);
                return View {
                    x: x as u32,
                    y: y as u32,
                    w: w as u32,
                    h: h as u32,
                    flip: rng.next_f64() < 0.5,
                };
            }
        }
        // Fall back to the largest centred square.
        let s = pw.min(ph);
        View {
            x: ((pw - s) / 2) as u32,
            y: ((ph - s) / 2) as u32,
            w: s as u32,
            h: s as u32,
            flip: rng.next_f64() < 0.5,
        }
    }

    fn apply(&self, img: &RgbImage, ch: usize, cw: usize) -> RgbImage {
        let part = image::imageops::crop_imm(img, self.x, self.y, self.w, self.h).to_image();
        let mut out = image::imageops::resize(&part, cw as u32, ch as u32, FilterType::Triangle);
        if self.flip {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        out
    }
}

/// Short side to `resize` (bilinear, antialiased), then the center
/// `ch x cw`.
fn center(img: &RgbImage, resize: usize, ch: usize, cw: usize) -> RgbImage {
    let (w, h) = img.dimensions();
    let s = resize.max(ch).max(cw) as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * s).round() as u32).max(cw as u32),
        ((h as f64 * s).round() as u32).max(ch as u32),
    );
    let r = image::imageops::resize(img, nw, nh, FilterType::Triangle);
    let (x, y) = ((nw - cw as u32) / 2, (nh - ch as u32) / 2);
    image::imageops::crop_imm(&r, x, y, cw as u32, ch as u32).to_image()
}

/// Writes one image into `dst` in the model's layout and normalisation.
fn write_pixels(img: &RgbImage, spec: &ImageSpec, c: usize, layout: Layout, dst: &mut [f32]) {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    for (i, p) in img.pixels().enumerate() {
        let rgb = [p[0] as f32, p[1] as f32, p[2] as f32];
        let vals: [f32; 3] = if c == 1 {
            // ITU-R 601 luma, as PIL's "L" mode.
            [0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], 0.0, 0.0]
        } else if spec.bgr {
            [rgb[2], rgb[1], rgb[0]]
        } else {
            rgb
        };
        for (k, &val) in vals.iter().enumerate().take(c) {
            let v = (val * spec.scale - spec.mean[k]) / spec.std[k];
            let at = match layout {
                Layout::Nchw => k * h * w + i,
                Layout::Nhwc => i * c + k,
            };
            dst[at] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("potatura-img-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 40x20: left half red, right half blue.
        let img = RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        img.save(dir.join("a.png")).unwrap();
        let grey = RgbImage::from_pixel(30, 30, image::Rgb([51, 51, 51]));
        grey.save(dir.join("b.png")).unwrap();
        std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
        dir
    }

    #[test]
    fn center_crops_with_normalisation_in_both_layouts() {
        let dir = folder("center");
        let spec = ImageSpec {
            resize: Some(10),
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.5, 0.5],
            ..ImageSpec::default()
        };
        let t = load(&dir, &[1, 3, 10, 10], &spec, &Views::default()).unwrap();
        assert_eq!(t.shape(), &[2, 3, 10, 10]);
        let v = t.f32s().unwrap();
        // Image a resized to 20x10, center 10x10 = columns 5..15: red on
        // the left half, blue on the right; (1 - 0.5) / 0.5 = 1.
        assert!((v[0] - 1.0).abs() < 1e-6); // R at (0, 0)
        assert!((v[2 * 100] + 1.0).abs() < 1e-6); // B at (0, 0)
        assert!((v[2 * 100 + 9] - 1.0).abs() < 1e-6); // B at (0, 9)
                                                      // Grey 51: 0.2 → (0.2 − 0.5) / 0.5 = −0.6 everywhere.
        assert!(v[300..].iter().all(|&x| (x + 0.6).abs() < 1e-5));
        // NHWC, BGR: the first pixel's channels come blue first.
        let spec = ImageSpec {
            resize: Some(10),
            bgr: true,
            ..ImageSpec::default()
        };
        let t = load(&dir, &[1, 10, 10, 3], &spec, &Views::default()).unwrap();
        assert_eq!(t.shape(), &[2, 10, 10, 3]);
        assert_eq!(&t.f32s().unwrap()[..3], &[0.0, 0.0, 1.0]);
        // One channel: grey.
        let t = load(
            &dir,
            &[1, 1, 8, 8],
            &ImageSpec::default(),
            &Views::default(),
        )
        .unwrap();
        assert!((t.f32s().unwrap()[64] - 0.2).abs() < 1e-3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn random_views_are_seeded_and_distinct() {
        let dir = folder("views");
        let s = ImageSpec::default();
        let v = |seed, center_first| Views {
            count: Some(6),
            seed,
            center_first,
        };
        let a = load(&dir, &[1, 3, 8, 8], &s, &v(1, true)).unwrap();
        let b = load(&dir, &[1, 3, 8, 8], &s, &v(1, true)).unwrap();
        let c = load(&dir, &[1, 3, 8, 8], &s, &v(2, false)).unwrap();
        assert_eq!(a.shape(), &[6, 3, 8, 8]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_name_the_folder() {
        let dir = folder("errors");
        let e = load(
            &dir,
            &[1, 5, 8, 8],
            &ImageSpec::default(),
            &Views::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("potatura-img") && e.contains("channel"), "{e}");
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let e = list(&empty).unwrap_err().to_string();
        assert!(e.contains("no .png"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
