//! libvirt storage pools: the image becomes a volume of the pool, as `virsh vol-create-as` and
//! `virsh vol-upload --sparse` make one, through libvirt's client library (the `virt` crate), so `qemu:///system`,
//! `qemu+ssh://host/system` and every other connection URI work as they do for virsh.
//!
//! The volume is created with the format (`qcow2`, `raw`) and capacity asked for, and the converted stream goes in
//! through a sparse upload stream: zero runs travel as holes (`virStreamSendHole`), so a raw volume stays sparse and
//! nothing is written to disk first. The pool is refreshed and the volume read back (format, capacity, allocation).
//! The reference is the volume's path; the manifest also holds its key. A failed or interrupted upload deletes the
//! volume it created.

pub mod error;

use std::sync::Arc;
use std::time::Duration;

pub use error::LibvirtError;

use crate::cancel::Cancel;
use crate::config::{LibvirtConfig, VariantConfig};
use crate::format::{self, Layout, Piece};
use crate::image::{ExtentMap, ImageData, ImageError, SourceImage, read_zero_padded_at};
use crate::progress::Progress;
use crate::provider::{Reference, Stored, UploadOptions};
use crate::transfer::RetryPolicy;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

/// Bytes read and sent at a time.
const PIECE: usize = 4 << 20;

/// A connection that is closed when dropped (the `virt` crate leaves that to the caller).
struct Connection {
    conn: Connect,
    uri: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.conn.close();
    }
}

fn call(uri: &str, what: &str) -> impl FnOnce(virt::error::Error) -> LibvirtError {
    let (uri, what) = (uri.to_string(), what.to_string());
    move |e| LibvirtError::Call { uri, what, message: e.message().to_string() }
}

impl Connection {
    fn open(uri: &str) -> Result<Self, LibvirtError> {
        // libvirt prints every error to stderr unless told not to; uplosi reports them itself.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri))
            .map_err(|e| LibvirtError::Connect { uri: uri.to_string(), message: e.message().to_string() })?;
        Ok(Self { conn, uri: uri.to_string() })
    }

    fn pool(&self, name: &str) -> Result<StoragePool, LibvirtError> {
        let pool = StoragePool::lookup_by_name(&self.conn, name).map_err(|e| LibvirtError::Pool {
            uri: self.uri.clone(),
            pool: name.to_string(),
            problem: format!(
                "cannot be found ({}); define and start it (virsh pool-define-as, pool-start)",
                e.message()
            ),
        })?;
        if !pool.is_active().unwrap_or(false) {
            return Err(LibvirtError::Pool {
                uri: self.uri.clone(),
                pool: name.to_string(),
                problem: format!("is not running; start it with `virsh pool-start {name}`"),
            });
        }
        pool.refresh(0).map_err(call(&self.uri, &format!("refreshing pool {name}")))?;
        Ok(pool)
    }
}

/// The volume named `name` in `pool`, if there is one.
fn find(pool: &StoragePool, name: &str) -> Option<StorageVol> {
    StorageVol::lookup_by_name(pool, name).ok()
}

/// The capacity of the volume: `capacity`, else the image's virtual size.
fn capacity(l: &LibvirtConfig, image: &SourceImage) -> Result<u64, LibvirtError> {
    match crate::config::registry::parse_capacity(&l.capacity) {
        Some(asked) if asked < image.size => Err(LibvirtError::Capacity { capacity: asked, image: image.size }),
        Some(asked) => Ok(asked),
        None => Ok(image.size),
    }
}

fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, LibvirtError> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, LibvirtError>> {
    let what = what.to_string();
    async move {
        tokio::task::spawn_blocking(f).await.map_err(|e| LibvirtError::Unexpected { what, message: e.to_string() })?
    }
}

/// Checks before any data moves that the connection opens, the pool runs, the capacity fits and an existing
/// volume does not stop the run.
pub async fn preflight(cfg: &VariantConfig) -> Result<(), LibvirtError> {
    let l = cfg.libvirt.clone();
    blocking("checking libvirt", move || {
        let connection = Connection::open(&l.uri)?;
        let pool = connection.pool(&l.pool)?;
        if let Some(vol) = find(&pool, &l.volume_name)
            && !l.replace
        {
            return Err(LibvirtError::Exists {
                uri: l.uri.clone(),
                pool: l.pool.clone(),
                volume: l.volume_name.clone(),
                path: vol.get_path().unwrap_or_default(),
            });
        }
        Ok(())
    })
    .await
}

/// The volume's XML, as `virsh vol-create-as NAME CAPACITY --allocation 0 --format FORMAT` makes it.
fn volume_xml(name: &str, capacity: u64, format: &str) -> String {
    let escaped = name.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<volume><name>{escaped}</name><capacity unit='bytes'>{capacity}</capacity>\
         <allocation unit='bytes'>0</allocation><target><format type='{format}'/></target></volume>"
    )
}

/// The stream that goes into the volume: a qcow2 whose virtual size is the capacity, or the raw image followed by
/// a hole up to the capacity.
fn layout(image: &SourceImage, format: &str, capacity: u64, cancel: &Cancel) -> Result<Layout, ImageError> {
    let io_threads = std::thread::available_parallelism().map(usize::from).unwrap_or(1).clamp(2, 4);
    if format == "qcow2" {
        let map = image.extents(format::qcow2::CLUSTER, io_threads, &|| cancel.is_cancelled())?;
        return Ok(format::qcow2::layout(&ExtentMap::from_extents(capacity, map.extents)));
    }
    let mut layout = format::raw::layout(&image.allocated()?);
    layout.zeros(capacity - layout.len().min(capacity));
    Ok(layout)
}

/// Sends `layout` over `stream`: data as data, zero runs as holes.
fn send(
    stream: &Stream,
    layout: &Layout,
    data: &ImageData,
    progress: &Progress,
    cancel: &Cancel,
    uri: &str,
) -> Result<(), LibvirtError> {
    let mut buffer = vec![0u8; PIECE];
    let push = |bytes: &[u8]| -> Result<(), LibvirtError> {
        let mut at = 0;
        while at < bytes.len() {
            at += stream.send(&bytes[at..]).map_err(call(uri, "sending volume data"))?;
        }
        Ok(())
    };
    for piece in layout.pieces() {
        if cancel.is_cancelled() {
            return Err(LibvirtError::Interrupted);
        }
        match piece {
            Piece::Zero(len) => {
                // SAFETY: the stream pointer is valid while `stream` lives; virStreamSendHole only reads it.
                let ret = unsafe { virt::sys::virStreamSendHole(stream.as_ptr(), *len as i64, 0) };
                if ret < 0 {
                    return Err(call(uri, "sending a hole")(virt::error::Error::last_error()));
                }
                progress.inc(*len);
            }
            Piece::Bytes(bytes) => {
                push(bytes)?;
                progress.inc(bytes.len() as u64);
            }
            Piece::Source { offset, len } => {
                let mut done = 0u64;
                while done < *len {
                    if cancel.is_cancelled() {
                        return Err(LibvirtError::Interrupted);
                    }
                    let n = (*len - done).min(PIECE as u64) as usize;
                    read_zero_padded_at(data, &mut buffer[..n], offset + done).map_err(|source| {
                        LibvirtError::Format(format::FormatError::Read { offset: offset + done, source })
                    })?;
                    push(&buffer[..n])?;
                    done += n as u64;
                    progress.inc(n as u64);
                }
            }
        }
    }
    Ok(())
}

/// What the volume reads back as.
#[derive(Debug)]
struct ReadBack {
    path: String,
    key: String,
    capacity: u64,
    allocation: u64,
    format: String,
}

fn read_back(vol: &StorageVol, uri: &str) -> Result<ReadBack, LibvirtError> {
    let info = vol.get_info().map_err(call(uri, "reading the volume's info"))?;
    let xml = vol.get_xml_desc(0).map_err(call(uri, "reading the volume's XML"))?;
    let format = xml
        .split("<format type='")
        .nth(1)
        .or_else(|| xml.split("<format type=\"").nth(1))
        .and_then(|rest| rest.split(['\'', '"']).next())
        .unwrap_or_default()
        .to_string();
    Ok(ReadBack {
        path: vol.get_path().map_err(call(uri, "reading the volume's path"))?,
        key: vol.get_key().map_err(call(uri, "reading the volume's key"))?,
        capacity: info.capacity,
        allocation: info.allocation,
        format,
    })
}

/// One attempt: create the volume, stream into it, check it. The volume is deleted again on failure.
fn attempt(
    l: &LibvirtConfig,
    image: &SourceImage,
    layout: &Layout,
    capacity: u64,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<ReadBack, LibvirtError> {
    let connection = Connection::open(&l.uri)?;
    let uri = &l.uri;
    let pool = connection.pool(&l.pool)?;
    if let Some(old) = find(&pool, &l.volume_name) {
        if !l.replace {
            return Err(LibvirtError::Exists {
                uri: uri.clone(),
                pool: l.pool.clone(),
                volume: l.volume_name.clone(),
                path: old.get_path().unwrap_or_default(),
            });
        }
        tracing::info!("libvirt: replacing volume \"{}\" in pool \"{}\"", l.volume_name, l.pool);
        old.delete(0).map_err(call(uri, &format!("deleting the old volume {}", l.volume_name)))?;
    }
    let vol = StorageVol::create_xml(&pool, &volume_xml(&l.volume_name, capacity, &l.format), 0)
        .map_err(call(uri, &format!("creating volume {} in pool {}", l.volume_name, l.pool)))?;
    let leftover = crate::cancel::track(format!(
        "libvirt volume {} in pool {} at {uri}: virsh -c {uri} vol-delete --pool {} {}",
        l.volume_name, l.pool, l.pool, l.volume_name
    ));
    let result = (|| {
        let stream = Stream::new(&connection.conn, 0).map_err(call(uri, "opening a stream"))?;
        vol.upload(&stream, 0, layout.len(), virt::sys::VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            .map_err(call(uri, "starting the upload"))?;
        match send(&stream, layout, &image.data, progress, cancel, uri) {
            Ok(()) => stream.finish().map_err(call(uri, "finishing the upload"))?,
            Err(e) => {
                let _ = stream.abort();
                return Err(e);
            }
        }
        pool.refresh(0).map_err(call(uri, "refreshing the pool"))?;
        let vol = find(&pool, &l.volume_name).unwrap_or_else(|| vol.clone());
        let back = read_back(&vol, uri)?;
        let mismatch = |problem: String| LibvirtError::Mismatch {
            uri: uri.clone(),
            pool: l.pool.clone(),
            volume: l.volume_name.clone(),
            problem,
        };
        if back.format != l.format {
            return Err(mismatch(format!("its format is \"{}\", not \"{}\"", back.format, l.format)));
        }
        if back.capacity != capacity {
            return Err(mismatch(format!("its capacity is {} bytes, not {capacity}", back.capacity)));
        }
        Ok(back)
    })();
    if result.is_err() {
        match vol.delete(0) {
            Ok(()) => tracing::info!("libvirt: deleted the unfinished volume \"{}\"", l.volume_name),
            Err(e) => tracing::error!(
                "libvirt: could not delete the unfinished volume \"{}\" ({}); delete it with `virsh -c {uri} \
                 vol-delete --pool {} {}`",
                l.volume_name,
                e.message(),
                l.pool,
                l.volume_name
            ),
        }
    }
    drop(leftover);
    result
}

/// Uploads `image` as configured by `cfg`; returns the volume's path.
pub async fn upload(
    cfg: &VariantConfig,
    image: &SourceImage,
    options: &UploadOptions,
) -> Result<Vec<Reference>, LibvirtError> {
    let l = cfg.libvirt.clone();
    let capacity = capacity(&l, image)?;
    let (img, cancel, format) = (image.clone(), options.cancel.clone(), l.format.clone());
    let layout = blocking("laying out the image", move || {
        layout(&img, &format, capacity, &cancel).map_err(|e| match e {
            ImageError::Interrupted => LibvirtError::Interrupted,
            e => LibvirtError::Image(e),
        })
    })
    .await?;
    let layout = Arc::new(layout);
    let progress = Progress::bytes(layout.len(), "libvirt");
    let policy = RetryPolicy::default();
    let mut tries = 1;
    let back = loop {
        progress.reset();
        let (l2, img, layout2, bar, cancel) =
            (l.clone(), image.clone(), Arc::clone(&layout), progress.clone(), options.cancel.clone());
        let result =
            blocking("uploading the volume", move || attempt(&l2, &img, &layout2, capacity, &bar, &cancel)).await;
        match result {
            Ok(back) => break back,
            // A dropped connection or a daemon restart: the volume was removed, so the upload starts over.
            Err(LibvirtError::Call { .. } | LibvirtError::Connect { .. })
                if tries < policy.max_attempts.min(3) && !options.cancel.is_cancelled() =>
            {
                let error = result.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!("libvirt: {error}; starting the upload over (attempt {})", tries + 1);
                tokio::time::sleep(policy.delay(tries).max(Duration::from_millis(200))).await;
                tries += 1;
            }
            Err(e) => {
                progress.finish();
                return Err(e);
            }
        }
    };
    progress.finish();
    tracing::info!(
        "libvirt: volume {} ({}, capacity {} bytes, allocation {} bytes) in pool \"{}\"",
        back.path,
        back.format,
        back.capacity,
        back.allocation,
        l.pool
    );
    let details = serde_json::json!({
        "uri": l.uri,
        "pool": l.pool,
        "name": l.volume_name,
        "key": back.key,
        "path": back.path,
        "format": back.format,
        "capacity": back.capacity,
        "allocation": back.allocation,
    });
    Ok(vec![Reference { region: None, value: back.path, details: Some(details) }])
}

/// The volumes of the variant in its pool at any version (`uplosi delete`, `uplosi prune`).
pub async fn list_stored(cfg: &VariantConfig) -> Result<Vec<Stored>, LibvirtError> {
    use crate::config::names::NamePattern;
    let pattern = NamePattern::of(cfg, crate::config::schema::Section::Libvirt, "volumeName")
        .map_err(|e| LibvirtError::Lifecycle(e.to_string()))?;
    let l = cfg.libvirt.clone();
    blocking("listing volumes", move || {
        let connection = Connection::open(&l.uri)?;
        let pool = connection.pool(&l.pool)?;
        let volumes = pool.list_all_volumes(0).map_err(call(&l.uri, &format!("listing pool {}", l.pool)))?;
        let mut out = Vec::new();
        for vol in volumes {
            let Ok(name) = vol.get_name() else { continue };
            let Some(version) = pattern.version_of(&name) else { continue };
            let key = vol.get_key().unwrap_or_else(|_| name.clone());
            let mut item = Stored::new(version, "volume", key);
            item.region = Some(l.pool.clone());
            item.created = vol.get_path().ok().and_then(|p| std::fs::metadata(p).ok()).and_then(|m| m.modified().ok());
            out.push(item);
        }
        Ok(out)
    })
    .await
}

/// Deletes a volume by its key; one already gone counts as deleted.
pub async fn delete_stored(cfg: &VariantConfig, item: &Stored) -> Result<(), LibvirtError> {
    let (uri, key) = (cfg.libvirt.uri.clone(), item.id.clone());
    blocking("deleting a volume", move || {
        let connection = Connection::open(&uri)?;
        match StorageVol::lookup_by_key(&connection.conn, &key) {
            Ok(vol) => vol.delete(0).map_err(call(&uri, &format!("deleting volume {key}"))),
            Err(_) => Ok(()),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_xml_is_what_vol_create_as_makes() {
        let xml = volume_xml("podvm-1.2.3.qcow2", 20 << 30, "qcow2");
        assert!(xml.contains("<name>podvm-1.2.3.qcow2</name>"));
        assert!(xml.contains("<capacity unit='bytes'>21474836480</capacity>"));
        assert!(xml.contains("<format type='qcow2'/>"));
        assert!(volume_xml("a<b", 1, "raw").contains("a&lt;b"));
    }
}
