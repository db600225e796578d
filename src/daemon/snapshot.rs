//! Snapshots: the frame that starts a match, saved as a JPEG in the state folder.
//!
//! Files are named `{event id}_{pipeline}.jpg`; event ids are UUIDv7, so names sort by time and
//! the oldest files are the first in name order. The folder is bounded by a number of files and a
//! number of bytes: after each save the oldest files are deleted until both bounds hold. Files are
//! written under a temporary name and renamed, so a file an event names is always complete.
//!
//! Events come before snapshots on a disk that fills up: a snapshot is not saved when it would
//! leave less than [`RESERVE_BYTES`] free on its disk, after deleting older snapshots to make
//! room. Skipping is logged once when it starts and once when it ends.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gst_video::VideoFrameExt;

use crate::daemon::config::SnapshotConfig;
use crate::daemon::paths;
use clipfilter::crops::Rect;
use clipfilter::error::{Error, Result};
use clipfilter::preprocess::{PixelBox, frame_to_rgb8};
use gstclipfilter::video_frame;

/// A snapshot is not saved when it would leave less than this free on the disk: the room is
/// kept for the event outbox.
pub const RESERVE_BYTES: u64 = 512 * 1024;

#[derive(Debug, Default)]
struct Files {
    /// Oldest first: (path, bytes).
    list: VecDeque<(PathBuf, u64)>,
    bytes: u64,
}

/// The snapshot folder with its bounds. Shared by every pipeline.
#[derive(Debug)]
pub struct SnapshotStore {
    config: SnapshotConfig,
    files: Mutex<Files>,
    /// Snapshots are being skipped for lack of space (logged when this changes).
    skipping: std::sync::atomic::AtomicBool,
}

fn is_snapshot_name(name: &str) -> bool {
    name.ends_with(".jpg")
        && name
            .split('_')
            .next()
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
}

impl SnapshotStore {
    /// Opens (creating) the folder and takes stock of the snapshots already there.
    pub fn open(config: &SnapshotConfig) -> Result<SnapshotStore> {
        let dir = &config.dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut found: Vec<(PathBuf, u64)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                // Left by a crash in the middle of a save.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if !is_snapshot_name(name) {
                continue;
            }
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            found.push((entry.path(), len));
        }
        found.sort();
        let bytes = found.iter().map(|(_, n)| n).sum();
        let store = SnapshotStore {
            config: config.clone(),
            files: Mutex::new(Files {
                list: found.into(),
                bytes,
            }),
            skipping: std::sync::atomic::AtomicBool::new(false),
        };
        store.evict();
        Ok(store)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// (files, bytes) currently kept.
    pub fn usage(&self) -> (usize, u64) {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        (files.list.len(), files.bytes)
    }

    /// Encodes `sample` (a raw video frame with its caps) as a JPEG named after the event and
    /// the pipeline, with `place` (the crop that matched, in fractions of the frame) outlined
    /// when `draw_box` is on; returns its path, or `None` when the disk has no room to spare
    /// for it (see [`RESERVE_BYTES`]).
    pub fn save(
        &self,
        event: uuid::Uuid,
        pipeline: &str,
        sample: &gst::Sample,
        place: Option<Rect>,
    ) -> Result<Option<PathBuf>> {
        let _span = tracing::debug_span!("snapshot", pipeline, %event).entered();
        let (mut rgb, width, height) = sample_to_rgb8(sample)?;
        if let Some(rect) = place.filter(|_| self.config.draw_box) {
            outline(&mut rgb, width, height, rect.to_pixels(width, height));
        }
        let path = self.config.dir.join(format!("{event}_{pipeline}.jpg"));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, self.config.quality)
            .encode(&rgb, width, height, image::ExtendedColorType::Rgb8)
            .map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
        let len = jpeg.len() as u64;
        if !self.make_room(len) {
            if !self
                .skipping
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    dir = %self.config.dir.display(),
                    reserve = RESERVE_BYTES,
                    "the disk is nearly full: snapshots are not saved (the room is kept for events)"
                );
            }
            return Ok(None);
        }
        if self
            .skipping
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!(dir = %self.config.dir.display(), "snapshots are saved again");
        }
        let tmp = self.config.dir.join(format!(".{event}_{pipeline}.jpg.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&jpeg)?;
            drop(file);
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&path, e)
        })?;
        {
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files.list.push_back((path.clone(), len));
            files.bytes += len;
        }
        self.evict();
        Ok(Some(path))
    }

    /// Deletes the oldest snapshots until `len` more bytes leave [`RESERVE_BYTES`] free; false
    /// when that cannot be reached.
    fn make_room(&self, len: u64) -> bool {
        let Some(mut free) = paths::free_bytes(&self.config.dir) else {
            return true;
        };
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        while free < len + RESERVE_BYTES {
            let Some((path, bytes)) = files.list.pop_front() else {
                return false;
            };
            files.bytes = files.bytes.saturating_sub(bytes);
            if std::fs::remove_file(&path).is_ok() {
                free += bytes;
            }
        }
        true
    }

    /// Deletes the oldest files until both bounds hold (the newest file always stays).
    fn evict(&self) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        while files.list.len() > 1
            && (files.list.len() as u64 > self.config.max_files
                || files.bytes > self.config.max_bytes)
        {
            let Some((path, len)) = files.list.pop_front() else {
                break;
            };
            files.bytes = files.bytes.saturating_sub(len);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an old snapshot");
            }
        }
    }
}

/// Outline colour of the matched crop on snapshots.
const BOX_RGB: [u8; 3] = [255, 220, 0];

/// Draws the outline of `b` (2 pixels wide, inside the box) on packed RGB pixels.
fn outline(rgb: &mut [u8], width: u32, height: u32, b: PixelBox) {
    let (w, h) = (width as usize, height as usize);
    let (x0, y0) = ((b.x as usize).min(w), (b.y as usize).min(h));
    let (x1, y1) = ((b.right() as usize).min(w), (b.bottom() as usize).min(h));
    for y in y0..y1 {
        for x in x0..x1 {
            let edge = x < x0 + 2 || x + 2 >= x1 || y < y0 + 2 || y + 2 >= y1;
            if edge && let Some(px) = rgb.get_mut((y * w + x) * 3..(y * w + x) * 3 + 3) {
                px.copy_from_slice(&BOX_RGB);
            }
        }
    }
}

/// A raw video sample as tightly packed 8-bit RGB: (pixels, width, height).
pub fn sample_to_rgb8(sample: &gst::Sample) -> Result<(Vec<u8>, u32, u32)> {
    let bad = |m: String| Error::invalid("snapshot", m);
    let caps = sample
        .caps()
        .ok_or_else(|| bad("the sample has no caps".into()))?;
    let buffer = sample
        .buffer()
        .ok_or_else(|| bad("the sample has no buffer".into()))?;
    let info = gst_video::VideoInfo::from_caps(caps)
        .map_err(|e| bad(format!("not raw video ({caps}): {e}")))?;
    let (format, color) = video_frame::format_of(&info)
        .ok_or_else(|| bad(format!("unsupported format {}", info.format().to_str())))?;
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|e| bad(format!("cannot map the frame: {e}")))?;
    let frame_ref = video_frame::frame_ref(&frame, format, color)?;
    let rgb = frame_to_rgb8(&frame_ref)?;
    Ok((rgb, frame.width(), frame.height()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn red_sample(w: u32, h: u32) -> gst::Sample {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, w, h)
            .build()
            .unwrap();
        let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(b, &info).unwrap();
            // BT.601 studio-range red: Y 81, U 90, V 240.
            for (plane, value) in [(0u32, 81u8), (1, 90), (2, 240)] {
                frame.plane_data_mut(plane).unwrap().fill(value);
            }
        }
        gst::Sample::builder()
            .buffer(&buffer)
            .caps(&info.to_caps().unwrap())
            .build()
    }

    #[test]
    fn saves_jpegs_and_keeps_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let config = SnapshotConfig {
            dir: dir.path().join("snaps"),
            max_files: 3,
            max_bytes: 1 << 20,
            quality: 90,
            draw_box: true,
        };
        let store = SnapshotStore::open(&config).unwrap();
        let sample = red_sample(64, 48);
        let mut paths = Vec::new();
        for _ in 0..5 {
            paths.push(
                store
                    .save(uuid::Uuid::now_v7(), "cam-1", &sample, None)
                    .unwrap()
                    .expect("room on the disk"),
            );
        }
        assert_eq!(store.usage().0, 3);
        assert!(!paths[0].exists() && !paths[1].exists());
        let img = image::open(&paths[4]).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (64, 48));
        let px = img.get_pixel(10, 10);
        assert!(px[0] > 200 && px[1] < 60 && px[2] < 60, "{px:?}");

        // Reopening takes stock; a tighter byte bound deletes the oldest.
        let one = std::fs::metadata(&paths[4]).unwrap().len();
        let tight = SnapshotConfig {
            max_bytes: one * 2 + one / 2,
            ..config.clone()
        };
        std::fs::write(config.dir.join(".stale.jpg.tmp"), b"x").unwrap();
        std::fs::write(config.dir.join("notes.txt"), b"keep me").unwrap();
        let store = SnapshotStore::open(&tight).unwrap();
        assert_eq!(store.usage().0, 2);
        assert!(!paths[2].exists() && paths[3].exists() && paths[4].exists());
        assert!(!config.dir.join(".stale.jpg.tmp").exists());
        assert!(config.dir.join("notes.txt").exists());
    }

    #[test]
    fn the_matched_crop_is_outlined_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let config = SnapshotConfig {
            dir: dir.path().join("snaps"),
            max_files: 10,
            max_bytes: 1 << 20,
            quality: 95,
            draw_box: true,
        };
        let store = SnapshotStore::open(&config).unwrap();
        let sample = red_sample(64, 48);
        // The right half matched.
        let right = Rect::new(0.5, 0.0, 0.5, 1.0).unwrap();
        let boxed = store
            .save(uuid::Uuid::now_v7(), "cam-1", &sample, Some(right))
            .unwrap()
            .expect("room on the disk");
        let img = image::open(&boxed).unwrap().to_rgb8();
        let yellow = |img: &image::RgbImage, x, y| {
            let p = img.get_pixel(x, y);
            p[0] > 200 && p[1] > 160 && p[2] < 90
        };
        assert!(yellow(&img, 32, 20) && yellow(&img, 63, 20));
        assert!(yellow(&img, 48, 0) && yellow(&img, 48, 47));
        assert!(
            !yellow(&img, 20, 20) && !yellow(&img, 48, 24),
            "only the outline is drawn"
        );

        let plain = SnapshotStore::open(&SnapshotConfig {
            draw_box: false,
            ..config
        })
        .unwrap()
        .save(uuid::Uuid::now_v7(), "cam-1", &sample, Some(right))
        .unwrap()
        .expect("room on the disk");
        let img = image::open(&plain).unwrap().to_rgb8();
        assert!(
            !yellow(&img, 32, 20),
            "draw_box = false leaves the frame as it was"
        );
    }
}
