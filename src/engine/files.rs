//! Writing a file so that a crash leaves the old one or the new one, whole.

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, whole:
/// a temporary file, synced, renamed over, and the folder synced.
pub(in crate::engine) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
